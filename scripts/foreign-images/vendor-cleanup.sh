#!/bin/sh
# mmdebstrap --customize-hook ($1 = the root filesystem): the last steps of a
# typical vendor pipeline before the image is sealed: cloud settings, then
# the clean-up every marketplace asks for. Deliberately not the project's own
# clean-up (scripts/build-debian-image.sh): a vendor's list, shorter, in
# shell, which the foreign images must pass as they are.
set -eu
r=$1

# cloud-init: the datasources of an OpenStack cloud, networking by cloud-init
cat >"$r/etc/cloud/cloud.cfg.d/90_vendor_datasources.cfg" <<'CFG'
datasource_list: [ ConfigDrive, OpenStack, NoCloud, None ]
CFG
# the build host's name and resolver must not ship (mmdebstrap copies them in)
echo localhost >"$r/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
rm -f "$r/etc/resolv.conf"
ln -s ../run/systemd/resolve/stub-resolv.conf "$r/etc/resolv.conf" 2>/dev/null || :
# root stays locked ('*'); buyers log in with cloud-init's default user

# clean-up
chroot "$r" cloud-init clean --logs --seed
rm -f "$r"/etc/ssh/ssh_host_*
: >"$r/etc/machine-id"
rm -f "$r/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$r/var/lib/dbus/machine-id"
rm -f "$r/var/lib/systemd/random-seed" "$r/var/lib/systemd/credential.secret"
rm -f "$r"/var/lib/dhcp/*.leases
rm -f "$r"/root/.bash_history "$r"/root/.lesshst "$r"/root/.viminfo
find "$r/var/log" -type f -exec truncate -s 0 {} +
find "$r/tmp" "$r/var/tmp" -mindepth 1 -delete

#!/usr/bin/env bash
# Builds (or finds cached) a throwaway Debian 12 root for the package
# install/purge test (crates/ibkit/tests/debs.rs): bookworm minbase plus
# systemd (systemd-analyze verify, and an init for systemd-nspawn --boot).
# Prints the root's tarball (tar.zst) on stdout; the test unpacks a fresh
# copy for each run, so the cached one is never modified.
#
# Cached by content: the key hashes this script (its package list and
# mmdebstrap options), so editing it builds a new root. The cache lives in
# ${IBKIT_CACHE_DIR:-/var/cache/ibkit}/deb-root/ROOT-KEY.tar.zst; older keys
# are deleted after a build. Building needs root, mmdebstrap and network
# access to deb.debian.org (about a minute and 40 MB of downloads); the
# cached path needs neither.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${IBKIT_CACHE_DIR:-/var/cache/ibkit}/deb-root"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
# systemd-sysv: /sbin/init for systemd-nspawn --boot; dbus: systemctl talks
# to PID 1 through it in a booted container.
INCLUDE=systemd,systemd-sysv,dbus

key=$(sha256sum "$0" | cut -c1-16)
out="$dir/root-$key.tar.zst"
if [ -f "$out" ]; then
  echo "build-deb-root: cached $out" >&2
  echo "$out"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "build-deb-root: building needs root" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "build-deb-root: mmdebstrap is missing (scripts/setup.sh test)" >&2; exit 1; }
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ -f "$out" ]; then echo "$out"; exit 0; fi
tmp=$(mktemp "$dir/.partial.XXXXXX")
trap 'rm -f "$tmp"' EXIT
echo "build-deb-root: mmdebstrap $SUITE minbase + $INCLUDE" >&2
if ! mmdebstrap --mode=root --variant=minbase --arch=amd64 --components=main \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --include="$INCLUDE" \
  --format=tar \
  "$SUITE" - \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main" \
  2>"$tmp.log" | zstd -q -T0 -o "$tmp" -f; then
  tail -n 40 "$tmp.log" >&2
  rm -f "$tmp.log"
  echo "build-deb-root: mmdebstrap failed" >&2
  exit 1
fi
rm -f "$tmp.log"
mv "$tmp" "$out"
find "$dir" -maxdepth 1 -name 'root-*.tar.zst' ! -path "$out" -delete
echo "build-deb-root: built $out ($(du -h "$out" | cut -f1))" >&2
echo "$out"

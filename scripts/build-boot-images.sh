#!/usr/bin/env bash
# build-boot-images.sh — the test images of `ibkit boot-test`: the clean Debian
# 12 image of scripts/build-debian-image.sh plus broken variants, each of which
# breaks exactly one behaviour boot-test checks. Cached by content.
#
# Usage:
#   scripts/build-boot-images.sh [--only NAME]
#       Build the images (or find them cached) and print on stdout, one per
#       line and nothing else, NAME<TAB>PATH (qcow2 v3, compat 1.1):
#         clean          the base image itself (build-debian-image.sh's qcow2)
#         noautostart    ibkit-example.service not enabled; a cloud-init
#                        per-instance script starts it, so the app is healthy
#                        after the first boot of an instance, not after a
#                        reboot or a reset (a new instance-id starts it again)
#         console-tty0   kernel command line `console=tty0` only (grub.cfg and
#                        /etc/default/grub): no kernel log on the serial
#                        console (GRUB's own serial terminal stays)
#         extra-port     ibkit-extra.service (enabled) listens on 0.0.0.0:9090/tcp
#         fixed-mac      NIC pinned to MAC 52:54:00:12:34:56 the classic way
#                        (70-persistent-net.rules naming it eth0, ifupdown
#                        config for eth0 only, cloud-init networking off): any
#                        other MAC leaves the NIC unconfigured (no DHCP at all)
#         root-password  root has the well-known password `toor` ($6$ hash in
#                        /etc/shadow); sshd keeps PermitRootLogin prohibit-password
#       Variants are DIR/boot-<NAME>-<key>.qcow2, DIR =
#       ${IBKIT_CACHE_DIR:-/var/cache/ibkit}/images. --only NAME builds and
#       prints just that one. Progress goes to stderr.
#   scripts/build-boot-images.sh --print-key
#       Print <key> and exit.
#
# How a variant is made: the base RAW image is copied sparsely into a
# temporary directory next to the output, its root partition (p1, offset
# from the base .info file) is attached with `losetup --offset` and mounted
# inside a private mount namespace (unshare -m; this machine has no partition
# nodes or device-mapper), the variant's edit is applied, then umount,
# `e2fsck -f -n`, detach and `qemu-img convert` to qcow2. Filesystem UUIDs and
# GPT GUIDs stay those of the base image (it is a copy). A variant's edit is
# the files under scripts/boot-images/<NAME>/rootfs/ (copied in as root:root,
# modes from the tree) followed by the shell function edit_<NAME> below (if
# any; dashes become underscores).
# <key> = first 12 hex digits of sha256 over the base image key
# (build-debian-image.sh --print-key), this script and every file under
# scripts/boot-images/ (path, executable bit, content or symlink target).
# Every artefact is written under a temporary name and renamed when complete;
# concurrent builds are serialised with flock on DIR/.boot-images.lock. The
# cached fast path needs no root; building needs root, losetup/unshare
# (util-linux), e2fsck (e2fsprogs), qemu-img (qemu-utils) and openssl.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
CONF_DIR="$HERE/boot-images"
BASE_SCRIPT="$HERE/build-debian-image.sh"
OUT_DIR="${IBKIT_CACHE_DIR:-/var/cache/ibkit}/images"

VARIANTS=(clean noautostart console-tty0 extra-port fixed-mac root-password)

# emit LINE...: the only writes to the real stdout (fd 3, see the end).
emit() { printf '%s\n' "$@" >&3; }

log() { printf '[build-boot-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'build-boot-images: error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,/^set -euo pipefail/p' "$SELF" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

# --------------------------------------------------------------------------
# the variants' edits (run inside the private mount namespace; $1 = the
# mounted root filesystem). Files come from scripts/boot-images/<NAME>/rootfs/.

edit_noautostart() {
	local r=$1
	rm -f "$r/etc/systemd/system/multi-user.target.wants/ibkit-example.service"
	chmod 0755 "$r/var/lib/cloud/scripts/per-instance/ibkit-start-app"
	[ ! -e "$r/etc/systemd/system/multi-user.target.wants/ibkit-example.service" ] &&
		[ -f "$r/etc/systemd/system/ibkit-example.service" ]
}

edit_console_tty0() {
	local r=$1 f
	for f in boot/grub/grub.cfg etc/default/grub; do
		grep -q 'console=tty0 console=ttyS0,115200' "$r/$f" || die "$f: no 'console=tty0 console=ttyS0,115200'"
		sed -i 's/console=tty0 console=ttyS0,115200/console=tty0/g' "$r/$f"
		if grep -q 'console=ttyS' "$r/$f"; then die "$f: still has console=ttyS"; fi
	done
	grep -q '^GRUB_CMDLINE_LINUX="console=tty0"$' "$r/etc/default/grub" ||
		die "GRUB_CMDLINE_LINUX is not \"console=tty0\""
	# GRUB's own serial terminal stays.
	grep -q '^terminal_output.*serial' "$r/boot/grub/grub.cfg" || die "grub.cfg lost its serial terminal"
}

edit_extra_port() {
	local r=$1
	mkdir -p "$r/var/empty"
	chmod 0755 "$r/var/empty"
	mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
	ln -sfn /etc/systemd/system/ibkit-extra.service \
		"$r/etc/systemd/system/multi-user.target.wants/ibkit-extra.service"
	[ -f "$r/etc/systemd/system/ibkit-extra.service" ]
}

edit_fixed_mac() {
	local r=$1
	# The base image must not name NICs the old way already (that would make
	# eth0 exist whatever the MAC).
	if grep -q 'net.ifnames=0' "$r/boot/grub/grub.cfg"; then die "base image boots with net.ifnames=0"; fi
	[ -f "$r/etc/udev/rules.d/70-persistent-net.rules" ] && [ -f "$r/etc/network/interfaces.d/eth0" ] &&
		[ -f "$r/etc/cloud/cloud.cfg.d/99-ibkit-fixed-mac.cfg" ]
}

# The well-known password `toor` as sha512crypt with a fixed salt, so the
# same key always gives the same image.
ROOT_PASSWORD=toor
ROOT_SALT=ibkitboottest
edit_root_password() {
	local r=$1 hash
	hash=$(openssl passwd -6 -salt "$ROOT_SALT" "$ROOT_PASSWORD")
	case $hash in \$6\$*) ;; *) die "openssl passwd -6 gave '$hash'" ;; esac
	awk -F: -v OFS=: -v h="$hash" '$1 == "root" { $2 = h } { print }' "$r/etc/shadow" >"$r/etc/shadow.ibkit-new"
	# Rewrite in place: keeps the owner (root:shadow) and mode (0640).
	cat "$r/etc/shadow.ibkit-new" >"$r/etc/shadow"
	rm -f "$r/etc/shadow.ibkit-new"
	grep -qF "root:$hash:" "$r/etc/shadow" || die "could not set root's password hash"
}

# --------------------------------------------------------------------------
# keys

# Digest of every file and symlink under scripts/boot-images/: relative path,
# executable bit, content (symlinks: target).
conf_digest() {
	local f
	[ -d "$CONF_DIR" ] || { echo none; return; }
	(
		cd "$CONF_DIR"
		LC_ALL=C find . ! -type d -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
			if [ -L "$f" ]; then
				printf '%s l %s\n' "$f" "$(readlink "$f")"
			else
				if [ -x "$f" ]; then printf '%s x\n' "$f"; else printf '%s -\n' "$f"; fi
				sha256sum <"$f"
			fi
		done
	) | sha256sum | cut -c1-64
}

boot_key() { # boot_key BASE_KEY
	{ echo "base $1"; cat "$SELF"; conf_digest; } | sha256sum | cut -c1-12
}

# --------------------------------------------------------------------------
# cleanup bookkeeping (loop devices we attached, directories we created)

CLEAN_LOOPS=()
CLEAN_DIRS=()
cleanup() {
	local rc=$? l d
	set +e
	for l in "${CLEAN_LOOPS[@]}"; do
		[ -n "$l" ] && losetup -d "$l" 2>/dev/null
	done
	for d in "${CLEAN_DIRS[@]}"; do
		if [ -z "$d" ] || [ ! -d "$d" ]; then continue; fi
		# A signal can land between `losetup --show` and the bookkeeping.
		detach_loops_of "$d/disk.raw"
		rm -rf --one-file-system "$d"
	done
	return "$rc"
}

# detach_loops_of FILE: detach every loop device backed by FILE.
detach_loops_of() {
	local l
	[ -e "$1" ] || return 0
	for l in $(losetup -n -O NAME -j "$1"); do losetup -d "$l" 2>/dev/null || true; done
}

forget_loop() {
	local i
	for i in "${!CLEAN_LOOPS[@]}"; do
		[ "${CLEAN_LOOPS[$i]}" = "$1" ] && CLEAN_LOOPS[i]=""
	done
	return 0
}

need_root() {
	[ "$(id -u)" -eq 0 ] || die "building needs root (the cached images do not exist yet)"
	local t
	for t in losetup unshare mount umount e2fsck qemu-img openssl flock; do
		command -v "$t" >/dev/null || die "missing tool: $t (run scripts/setup.sh)"
	done
}

# Serialise builds sharing DIR (fd 9 stays open until exit).
LOCKED=0
take_lock() {
	[ "$LOCKED" = 1 ] && return 0
	exec 9>"$OUT_DIR/.boot-images.lock"
	if ! flock -n 9; then
		log "another build holds $OUT_DIR/.boot-images.lock; waiting"
		flock 9
	fi
	LOCKED=1
	clean_stale
}

# clean_stale: under the lock nobody else builds boot images, so temporary
# directories and loop devices left by a SIGKILLed build can go.
clean_stale() {
	local d l f
	for d in "$OUT_DIR"/.boot-build-*; do
		[ -d "$d" ] || continue
		log "removing stale $d"
		detach_loops_of "$d/disk.raw"
		rm -rf --one-file-system "$d"
	done
	# Loop devices whose temporary backing file is already gone.
	while read -r l f; do
		case $f in "$OUT_DIR"/.boot-build-*"/disk.raw (deleted)")
			log "detaching stale $l ($f)"
			losetup -d "$l" || true
			;;
		esac
	done < <(losetup -n -l -O NAME,BACK-FILE 2>/dev/null)
}

# --------------------------------------------------------------------------
# building

# Runs inside `unshare --mount`: mount, overlay, edit function, umount.
edit_inner() { # NAME ROOT_LOOP MNT
	local name=$1 loop=$2 mnt=$3 fn
	fn="edit_${name//-/_}"
	mount -t ext4 "$loop" "$mnt"
	if [ -d "$CONF_DIR/$name/rootfs" ]; then
		tar --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' -C "$CONF_DIR/$name/rootfs" -cf - . |
			tar -C "$mnt" --no-overwrite-dir -xpf -
	fi
	if declare -F "$fn" >/dev/null; then
		"$fn" "$mnt"
	fi
	sync -f "$mnt/etc"
	umount "$mnt"
}

# build_variant NAME KEY BASE_RAW ROOT_START ROOT_END: writes DIR/boot-NAME-KEY.qcow2.
build_variant() {
	local name=$1 key=$2 raw=$3 start=$4 end=$5 tmp loop out t0=$SECONDS
	out="$OUT_DIR/boot-$name-$key.qcow2"
	tmp=$(mktemp -d "$OUT_DIR/.boot-build-$name.XXXXXX")
	CLEAN_DIRS+=("$tmp")
	log "$name: copying $(basename "$raw")"
	cp --sparse=always "$raw" "$tmp/disk.raw"
	loop=$(losetup --find --show --offset=$((start * 512)) --sizelimit=$(((end - start + 1) * 512)) "$tmp/disk.raw")
	CLEAN_LOOPS+=("$loop")
	mkdir "$tmp/mnt"
	log "$name: editing the root filesystem"
	unshare --mount --propagation private -- "$SELF" __edit "$name" "$loop" "$tmp/mnt" >&2 ||
		die "$name: editing the root filesystem failed"
	e2fsck -f -n "$loop" >/dev/null 2>&1 || {
		e2fsck -f -n "$loop" >&2 || true
		die "$name: e2fsck found problems in the root filesystem"
	}
	losetup -d "$loop"
	forget_loop "$loop"
	log "$name: converting to qcow2"
	qemu-img convert -f raw -O qcow2 -o compat=1.1 "$tmp/disk.raw" "$tmp/disk.qcow2"
	mv -f "$tmp/disk.qcow2" "$out"
	rm -rf --one-file-system "$tmp"
	log "$name: $out ($((SECONDS - t0)) s)"
}

# --------------------------------------------------------------------------
# main

main() {
	local only="" print_key=0 base_key key base_out base_qcow2 base_raw info
	local start end name missing=() want=() v
	while [ $# -gt 0 ]; do
		case $1 in
		--only) [ $# -ge 2 ] || die "--only needs a value"; only=$2; shift 2 ;;
		--only=*) only=${1#*=}; shift ;;
		--print-key) print_key=1; shift ;;
		-h | --help) usage; exit 0 ;;
		*) usage; die "unknown argument: $1" ;;
		esac
	done
	if [ -n "$only" ]; then
		for v in "${VARIANTS[@]}"; do [ "$v" = "$only" ] && want=("$v"); done
		[ ${#want[@]} = 1 ] || die "unknown image '$only' (one of: ${VARIANTS[*]})"
	else
		want=("${VARIANTS[@]}")
	fi

	base_key=$("$BASE_SCRIPT" --print-key)
	key=$(boot_key "$base_key")
	if [ "$print_key" = 1 ]; then emit "$key"; return; fi

	base_out=$("$BASE_SCRIPT")
	base_qcow2=$(sed -n 1p <<<"$base_out")
	base_raw=$(sed -n 3p <<<"$base_out")
	if [ ! -s "$base_qcow2" ] || [ ! -s "$base_raw" ]; then
		die "build-debian-image.sh gave no image"
	fi

	# The fast path: no root, no lock.
	for name in "${want[@]}"; do
		[ "$name" = clean ] && continue
		[ -s "$OUT_DIR/boot-$name-$key.qcow2" ] || missing+=("$name")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		need_root
		mkdir -p "$OUT_DIR"
		take_lock
		info="${base_qcow2%.qcow2}.info"
		[ -s "$info" ] || die "no $info"
		start=$(sed -n 's/^p1=root start=\([0-9]*\) .*/\1/p' "$info")
		end=$(sed -n 's/^p1=root start=[0-9]* end=\([0-9]*\) .*/\1/p' "$info")
		if [ -z "$start" ] || [ -z "$end" ]; then
			die "$info: no 'p1=root start=... end=...' line"
		fi
		for name in "${missing[@]}"; do
			# Another build may have made it while we waited for the lock.
			[ -s "$OUT_DIR/boot-$name-$key.qcow2" ] || build_variant "$name" "$key" "$base_raw" "$start" "$end"
		done
	fi

	for name in "${want[@]}"; do
		if [ "$name" = clean ]; then
			emit "$(printf 'clean\t%s' "$base_qcow2")"
		else
			emit "$(printf '%s\t%s' "$name" "$OUT_DIR/boot-$name-$key.qcow2")"
		fi
	done
}

# Internal entry point, re-executed inside `unshare --mount`.
if [ "${1:-}" = __edit ]; then
	shift
	edit_inner "$@"
	exit 0
fi

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Only NAME<TAB>PATH lines go to stdout; everything else goes to stderr.
exec 3>&1 1>&2
main "$@"

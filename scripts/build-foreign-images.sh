#!/usr/bin/env bash
# build-foreign-images.sh — a corpus of "foreign" Debian 12 cloud images:
# made by other people's tools, not by scripts/build-debian-image.sh, each in
# a layout our builder never produces, plus one-change variants of them for
# the rule families of `ibkit check`. Cached by content.
#
# Usage:
#   scripts/build-foreign-images.sh [--prune]
#       Build the corpus (or find it cached) and print its directory on
#       stdout (one line, nothing else). The directory holds:
#         guestfs-mbr.qcow2    base image 1 (below)
#         genimage-gpt.qcow2   base image 2 (below)
#         VARIANT.qcow2        one per scripts/foreign-images/variants/VARIANT/:
#                              a qcow2 overlay whose backing file is its base
#                              (relative name, same directory) and which holds
#                              only the variant's one change
#         images.tsv           NAME<TAB>BASE<TAB>RULE<TAB>FILE, one line per image
#       Progress goes to stderr. --prune first deletes cached corpora and
#       stages of other keys.
#   scripts/build-foreign-images.sh --print-key
#       Print the corpus key and exit.
#
# The images (both Debian 12 cloud images: linux-image-cloud-amd64,
# cloud-init, openssh-server, curl, systemd, cleaned up the way a vendor
# pipeline does it):
#   guestfs-mbr   libguestfs (guestfish, one appliance under TCG): MBR table,
#                 p1 = /boot ext4 (bootable flag), p2 = LVM PV -> vg0/root XFS;
#                 extlinux in /boot/extlinux and its MBR code; fstab names root
#                 /dev/mapper/vg0-root the way debian-installer does.
#                 Config: scripts/foreign-images/guestfs-mbr/.
#   genimage-gpt  genimage (Buildroot's image tool; mkdosfs + mcopy, mke2fs -d,
#                 no mounts): GPT, p1 = ESP FAT32 with a GRUB EFI image built by
#                 the image's own grub-mkimage (removable path), p2 = root ext4
#                 (last, x86-64 root type); hand-written grub.cfg and
#                 /etc/default/grub. UEFI boot only. Config:
#                 scripts/foreign-images/genimage-gpt/.
# Both start from one root filesystem made by mmdebstrap (--variant=important,
# not debootstrap's minbase) with scripts/foreign-images/packages.txt and the
# vendor clean-up hook scripts/foreign-images/vendor-cleanup.sh.
#
# Variants: scripts/foreign-images/variants/NAME/edit.gfs names its base
# (`# base: ...`) and the rule it targets (`# rule: ...`) and holds guestfish
# commands run with the variant's filesystems mounted (/, /boot or /boot/efi)
# and the local directory set to a scratch directory with gdb (a binary),
# gdbserver.deb and an id_ed25519 key pair; files under
# scripts/foreign-images/variants/NAME/rootfs/ are copied in first (as
# root:root). All variants are edited in ONE guestfish appliance (each
# overlay is a drive; the copies of the LVM image share their PV and VG
# UUIDs, so LVM's device filter shows one at a time).
#
# Stages and caching (everything is written under a temporary name and
# renamed when complete; builds are serialised with flock on
# $FI_DIR/.lock, FI_DIR = ${IBKIT_CACHE_DIR:-/var/cache/ibkit}/foreign-images):
#   1. rootfs:  $FI_DIR/stages/rootfs-<k1>/ (rootfs.tar.zst, rootfs.info, the
#               image's kernel for libguestfs's appliance, the gdb/gdbserver
#               .debs the variants use). k1 = packages.txt +
#               vendor-cleanup.sh + the stage-1 code.
#   2. bases:   $FI_DIR/stages/BASE-<k2>.qcow2, one per base image.
#               k2 = k1 + that base's config directory + its stage-2 code.
#   3. corpus:  $FI_DIR/<key>/ (hard links to the bases, the overlays).
#               key = both k2 + this script + everything under
#               scripts/foreign-images/, so editing a variant redoes only
#               stage 3 (about a minute).
# The appliance itself is cached by libguestfs under $FI_DIR/libguestfs.
# The cached fast path needs no root. Building needs root, network access to
# deb.debian.org, mmdebstrap, guestfish (with libguestfs-xfs), genimage,
# mtools + dosfstools, qemu-img, zstd, ssh-keygen and dpkg-deb.
set -euo pipefail
# bash 5.2 would put the match in place of & in ${var//pat/repl} (fill).
shopt -u patsub_replacement 2>/dev/null || :

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
CONF_DIR="$HERE/foreign-images"
FI_DIR="${IBKIT_CACHE_DIR:-/var/cache/ibkit}/foreign-images"
STAGE_DIR="$FI_DIR/stages"

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY_MIRROR=http://deb.debian.org/debian-security
BASES=(guestfs-mbr genimage-gpt)

# emit LINE...: the only writes to the real stdout (fd 3, see the end).
emit() { printf '%s\n' "$@" >&3; }

log() { printf '[build-foreign-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'build-foreign-images: error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,/^set -euo pipefail/p' "$SELF" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
}

# --------------------------------------------------------------------------
# keys and small helpers

# digest PATH...: relative path, kind and content of every file and symlink
# under the given directories or files (relative to CONF_DIR).
digest() {
	local f
	(
		cd "$CONF_DIR"
		LC_ALL=C find "$@" ! -type d -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
			if [ -L "$f" ]; then
				printf '%s l %s\n' "$f" "$(readlink "$f")"
			else
				if [ -x "$f" ]; then printf '%s x\n' "$f"; else printf '%s -\n' "$f"; fi
				sha256sum <"$f"
			fi
		done
	) | sha256sum | cut -c1-64
}

stage1_key() {
	{
		echo "stage1 v1 $SUITE $MIRROR $SECURITY_MIRROR"
		digest packages.txt vendor-cleanup.sh
		declare -f stage1_build
	} | sha256sum | cut -c1-16
}

stage2_key() { # stage2_key BASE K1
	{
		echo "stage2 v1 $1 $2"
		digest "$1"
		declare -f stage2_build "build_${1//-/_}" guestfs_env fill uuid_from
	} | sha256sum | cut -c1-16
}

corpus_key() { # corpus_key BASE_KEY...
	{
		echo "corpus v1 $*"
		cat "$SELF"
		digest .
	} | sha256sum | cut -c1-12
}

# uuid_from SEED: a deterministic, well-formed (version 4 layout) UUID.
uuid_from() {
	local h
	h=$(printf '%s' "$1" | sha256sum | cut -c1-32)
	printf '%s-%s-4%s-%s%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" \
		"$(printf '%x' $(((0x${h:16:1} & 0x3) | 0x8)))" "${h:17:3}" "${h:20:12}"
}

# fill TEMPLATE NAME=VALUE...: the template with every @NAME@ replaced;
# fails if a placeholder is left.
fill() {
	local tpl=$1 kv text
	shift
	text=$(cat "$tpl")
	for kv in "$@"; do
		text=${text//@${kv%%=*}@/${kv#*=}}
	done
	if grep -q '@[A-Z_][A-Z_]*@' <<<"$text"; then
		die "$tpl: placeholder left: $(grep -o '@[A-Z_][A-Z_]*@' <<<"$text" | head -n 1)"
	fi
	printf '%s\n' "$text"
}

# variant_field DIR FIELD: the value of the `# FIELD: value` header line.
variant_field() {
	sed -n "s/^# $2: *//p" "$1/edit.gfs" | head -n 1
}

# The variants, in name order (bash glob order).
VARIANT_NAMES=()
list_variants() {
	local d name base rule
	VARIANT_NAMES=()
	for d in "$CONF_DIR"/variants/*/; do
		d=${d%/}
		name=$(basename "$d")
		[ -f "$d/edit.gfs" ] || die "variant $name has no edit.gfs"
		base=$(variant_field "$d" base)
		rule=$(variant_field "$d" rule)
		case " ${BASES[*]} " in *" $base "*) ;; *) die "variant $name: unknown base '$base'" ;; esac
		[ -n "$rule" ] || die "variant $name: no '# rule:' line"
		VARIANT_NAMES+=("$name")
	done
	[ ${#VARIANT_NAMES[@]} -gt 0 ] || die "no variants under $CONF_DIR/variants"
}

# --------------------------------------------------------------------------
# cleanup bookkeeping

CLEAN_DIRS=()
ZSTD_PID=""
cleanup() {
	local rc=$? d
	set +e
	# A writer blocked on a FIFO nobody opened.
	[ -n "$ZSTD_PID" ] && kill "$ZSTD_PID" 2>/dev/null
	for d in "${CLEAN_DIRS[@]}"; do
		[ -n "$d" ] && [ -d "$d" ] && rm -rf --one-file-system "$d"
	done
	return "$rc"
}

need_root() {
	[ "$(id -u)" -eq 0 ] || die "building needs root (the cached images do not exist yet)"
	local t
	for t in mmdebstrap guestfish genimage mkdosfs mcopy mke2fs qemu-img zstd unshare flock ssh-keygen dpkg-deb; do
		command -v "$t" >/dev/null || die "missing tool: $t (run scripts/setup.sh test)"
	done
	[ -f /usr/lib/x86_64-linux-gnu/guestfs/supermin.d/packages-xfs ] ||
		die "libguestfs has no XFS support (apt package libguestfs-xfs; run scripts/setup.sh test)"
}

LOCKED=0
take_lock() {
	[ "$LOCKED" = 1 ] && return 0
	mkdir -p "$STAGE_DIR"
	exec 9>"$FI_DIR/.lock"
	if ! flock -n 9; then
		log "another build holds $FI_DIR/.lock; waiting"
		flock 9
	fi
	LOCKED=1
	# Nobody else builds now: work directories of a killed build can go.
	local d
	for d in "$STAGE_DIR"/.work-* "$FI_DIR"/.build-*; do
		[ -d "$d" ] || continue
		log "removing stale $d"
		rm -rf --one-file-system "$d"
	done
}

prune() { # prune KEEP...: stage and corpus entries not named
	local d keep
	for d in "$STAGE_DIR"/* "$FI_DIR"/*; do
		case $(basename "$d") in stages | libguestfs) continue ;; esac
		for keep in "$@"; do
			[ "$(basename "$d")" = "$keep" ] && continue 2
		done
		log "prune: $d"
		rm -rf --one-file-system "$d"
	done
}

# --------------------------------------------------------------------------
# stage 1: the shared root filesystem (mmdebstrap)

stage1_build() { # stage1_build OUT_DIR
	local out=$1 work includes kver
	work=$(mktemp -d "$STAGE_DIR/.work-rootfs.XXXXXX")
	CLEAN_DIRS+=("$work")
	mkdir "$work/debs" "$work/tmp" "$work/appliance"
	includes=$(grep -v '^[[:space:]]*#' "$CONF_DIR/packages.txt" | grep -v '^[[:space:]]*$' | paste -sd, -)
	log "stage 1: mmdebstrap $SUITE --variant=important + $(tr ',' '\n' <<<"$includes" | wc -l) packages"
	# The first two hooks fetch the debugger packages the variants install
	# (from the same archive state as the image); they leave the rootfs as it was.
	# shellcheck disable=SC2016 # "$1" in a hook is mmdebstrap's argument (the rootfs)
	if ! TMPDIR="$work/tmp" unshare --mount --propagation private -- \
		mmdebstrap --mode=root --variant=important --arch=amd64 --components=main \
		--aptopt='Acquire::Languages "none"' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
		--include="$includes" \
		--customize-hook='chroot "$1" sh -c "cd /tmp && apt-get -q download gdb gdbserver"' \
		--customize-hook="mv \"\$1\"/tmp/gdb_*.deb \"\$1\"/tmp/gdbserver_*.deb '$work/debs/'" \
		--customize-hook="$CONF_DIR/vendor-cleanup.sh" \
		"$SUITE" "$work/rootfs.tar.zst" \
		"deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main" \
		>"$work/mmdebstrap.log" 2>&1; then
		tail -n 40 "$work/mmdebstrap.log" >&2
		die "mmdebstrap failed"
	fi
	# tar reads the tarball itself: fed by a pipe, it may stop before the
	# end-of-archive padding and zstd would die of SIGPIPE.
	kver=$(tar --zstd -tf "$work/rootfs.tar.zst" | sed -n 's|^\./boot/vmlinuz-||p')
	[ "$(wc -w <<<"$kver")" = 1 ] || die "expected one kernel in the rootfs, found: ${kver:-none}"
	# libguestfs's appliance boots the image's own kernel (the host may have none).
	tar --zstd -C "$work/appliance" -xf "$work/rootfs.tar.zst" "./boot/vmlinuz-$kver" "./usr/lib/modules/$kver"
	printf 'kver=%s\n' "$kver" >"$work/rootfs.info"
	rm -rf "$work/tmp"
	log "stage 1: rootfs $(du -h "$work/rootfs.tar.zst" | cut -f1) (zstd), kernel $kver"
	mv -T "$work" "$out"
}

# --------------------------------------------------------------------------
# stage 2: the base images

# guestfs_env ROOTFS_DIR: libguestfs's settings for this machine.
guestfs_env() {
	local kver
	kver=$(sed -n 's/^kver=//p' "$1/rootfs.info")
	export LIBGUESTFS_BACKEND=direct
	# /dev/kvm opens here but nested guests hang: TCG unless told otherwise.
	export LIBGUESTFS_BACKEND_SETTINGS="${LIBGUESTFS_BACKEND_SETTINGS:-force_tcg}"
	export LIBGUESTFS_CACHEDIR="$FI_DIR/libguestfs"
	export SUPERMIN_KERNEL="$1/appliance/boot/vmlinuz-$kver"
	export SUPERMIN_MODULES="$1/appliance/usr/lib/modules/$kver"
	export SUPERMIN_KERNEL_VERSION="$kver"
	mkdir -p "$LIBGUESTFS_CACHEDIR"
	# supermin lstat()s the host's /lib/modules even with SUPERMIN_MODULES set.
	[ -d /lib/modules ] || mkdir -p /lib/modules
}

build_guestfs_mbr() { # build_guestfs_mbr ROOTFS_DIR WORK SEED
	local rootfs=$1 work=$2 seed=$3 files kver boot_uuid root_uuid t0=$SECONDS
	files="$work/guestfs-mbr.files"
	mkdir "$files"
	kver=$(sed -n 's/^kver=//p' "$rootfs/rootfs.info")
	boot_uuid=$(uuid_from "$seed:guestfs-mbr:boot")
	root_uuid=$(uuid_from "$seed:guestfs-mbr:root")
	fill "$CONF_DIR/guestfs-mbr/fstab.in" "BOOT_UUID=$boot_uuid" >"$files/fstab"
	fill "$CONF_DIR/guestfs-mbr/extlinux.conf.in" "KVER=$kver" >"$files/extlinux.conf"
	fill "$CONF_DIR/guestfs-mbr/build.gfs.in" "DISK=$work/guestfs-mbr.qcow2" "FILES=$files" \
		"BOOT_UUID=$boot_uuid" "ROOT_UUID=$root_uuid" >"$files/build.gfs"
	log "stage 2: guestfs-mbr: guestfish (MBR, /boot ext4, LVM vg0/root XFS, extlinux)"
	guestfs_env "$rootfs"
	# The tarball goes in through a FIFO, not stdin: the appliance's
	# processes inherit guestfish's stdin and would eat part of it.
	mkfifo "$files/rootfs.tar"
	zstd -q -dc "$rootfs/rootfs.tar.zst" >"$files/rootfs.tar" &
	ZSTD_PID=$!
	if ! guestfish --no-progress-bars -x -f "$files/build.gfs" </dev/null >&2; then
		kill "$ZSTD_PID" 2>/dev/null || :
		die "guestfs-mbr: guestfish failed"
	fi
	wait "$ZSTD_PID" || die "guestfs-mbr: zstd failed"
	ZSTD_PID=""
	rm -rf "$files"
	log "stage 2: guestfs-mbr done ($((SECONDS - t0)) s)"
}

build_genimage_gpt() { # build_genimage_gpt ROOTFS_DIR WORK SEED
	local rootfs=$1 work=$2 seed=$3 root gi kver root_uuid esp_id t0=$SECONDS
	gi="$work/genimage-gpt.work"
	root="$gi/root"
	mkdir -p "$root" "$gi/out"
	kver=$(sed -n 's/^kver=//p' "$rootfs/rootfs.info")
	root_uuid=$(uuid_from "$seed:genimage-gpt:root")
	esp_id=$(printf '%s' "$seed:genimage-gpt:esp" | sha256sum | cut -c1-8 | tr a-f A-F)
	log "stage 2: genimage-gpt: unpacking the rootfs, boot files"
	tar --zstd --numeric-owner --xattrs --xattrs-include='*' --acls -C "$root" -xpf "$rootfs/rootfs.tar.zst"
	fill "$CONF_DIR/genimage-gpt/fstab.in" "ROOT_UUID=$root_uuid" "ESP_UUID=${esp_id:0:4}-${esp_id:4:4}" >"$root/etc/fstab"
	mkdir -p "$root/boot/grub" "$root/boot/efi/EFI/BOOT" "$root/boot/efi/EFI/debian"
	fill "$CONF_DIR/genimage-gpt/grub.cfg.in" "ROOT_UUID=$root_uuid" "KVER=$kver" >"$root/boot/grub/grub.cfg"
	fill "$CONF_DIR/genimage-gpt/esp-grub.cfg.in" "ROOT_UUID=$root_uuid" >"$root/boot/efi/EFI/debian/grub.cfg"
	# /etc/default/grub: the packaged default, edited the way the menu above is.
	sed -e 's|^GRUB_TIMEOUT=.*|GRUB_TIMEOUT=1|' \
		-e 's|^GRUB_CMDLINE_LINUX_DEFAULT=.*|GRUB_CMDLINE_LINUX_DEFAULT=""|' \
		-e 's|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"|' \
		"$root/usr/share/grub/default/grub" >"$root/etc/default/grub"
	cat >>"$root/etc/default/grub" <<-'EOF'
		GRUB_TERMINAL="console serial"
		GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
	EOF
	grep -q '^GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"$' "$root/etc/default/grub" ||
		die "genimage-gpt: could not set GRUB_CMDLINE_LINUX"
	# The image's own grub-mkimage (needs neither /dev nor /proc).
	chroot "$root" grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -p /EFI/debian \
		-o /boot/efi/EFI/BOOT/BOOTX64.EFI \
		part_gpt fat ext2 normal linux search search_fs_uuid configfile echo test gzio all_video serial terminal
	fill "$CONF_DIR/genimage-gpt/genimage.cfg.in" "ROOT_UUID=$root_uuid" "ESP_SERIAL=$esp_id" \
		"DISK_UUID=$(uuid_from "$seed:genimage-gpt:disk")" \
		"ESP_PART_UUID=$(uuid_from "$seed:genimage-gpt:p1")" \
		"ROOT_PART_UUID=$(uuid_from "$seed:genimage-gpt:p2")" >"$gi/genimage.cfg"
	log "stage 2: genimage-gpt: genimage (GPT, ESP FAT32, root ext4)"
	genimage --config "$gi/genimage.cfg" --rootpath "$root" --tmppath "$gi/tmp" \
		--inputpath "$gi/out" --outputpath "$gi/out" >"$gi/genimage.log" 2>&1 || {
		tail -n 40 "$gi/genimage.log" >&2
		die "genimage-gpt: genimage failed"
	}
	qemu-img convert -f raw -O qcow2 -o compat=1.1 "$gi/out/disk.img" "$work/genimage-gpt.qcow2"
	rm -rf --one-file-system "$gi"
	log "stage 2: genimage-gpt done ($((SECONDS - t0)) s)"
}

stage2_build() { # stage2_build BASE ROOTFS_DIR OUT_FILE SEED
	local base=$1 rootfs=$2 out=$3 seed=$4 work
	work=$(mktemp -d "$STAGE_DIR/.work-$base.XXXXXX")
	CLEAN_DIRS+=("$work")
	"build_${base//-/_}" "$rootfs" "$work" "$seed"
	[ -s "$work/$base.qcow2" ] || die "$base: no image"
	mv -f "$work/$base.qcow2" "$out"
	rm -rf --one-file-system "$work"
}

# --------------------------------------------------------------------------
# stage 3: the corpus (variants as overlays, edited in one appliance)

# drive_name INDEX: sda, sdb, ..., sdz, sdaa, ... (libguestfs's naming).
drive_name() {
	local i=$1 s="" letters=abcdefghijklmnopqrstuvwxyz
	while :; do
		s="${letters:$((i % 26)):1}$s"
		i=$((i / 26 - 1))
		[ "$i" -ge 0 ] || break
	done
	printf 'sd%s\n' "$s"
}

mount_cmds() { # mount_cmds BASE DEV
	case $1 in
	guestfs-mbr)
		printf 'lvm-set-filter /dev/%s\nvg-activate-all true\nmount /dev/vg0/root /\nmount /dev/%s1 /boot\n' "$2" "$2"
		;;
	genimage-gpt)
		printf 'mount /dev/%s2 /\nmount /dev/%s1 /boot/efi\n' "$2" "$2"
		;;
	esac
}

umount_cmds() { # umount_cmds BASE
	echo umount-all
	if [ "$1" = guestfs-mbr ]; then echo 'vg-activate-all false'; fi
}

stage3_build() { # stage3_build ROOTFS_DIR OUT_DIR BASE_FILE...
	local rootfs=$1 out=$2 work share script b name base rule i=0 vdir t0=$SECONDS
	work=$(mktemp -d "$FI_DIR/.build-XXXXXX")
	CLEAN_DIRS+=("$work")
	share="$work/.share"
	mkdir "$share"
	shift 2
	for b in "${BASES[@]}"; do
		ln "$1" "$work/$b.qcow2" 2>/dev/null || cp --sparse=always "$1" "$work/$b.qcow2"
		shift
	done
	# What the variants' edits upload (relative names: guestfish's lcd is $share).
	dpkg-deb --fsys-tarfile "$(ls "$rootfs"/debs/gdb_*.deb)" | tar -xOf - ./usr/bin/gdb >"$share/gdb"
	[ -s "$share/gdb" ] || die "no usr/bin/gdb in the gdb package"
	cp "$(ls "$rootfs"/debs/gdbserver_*.deb)" "$share/gdbserver.deb"
	ssh-keygen -q -t ed25519 -N '' -C packer@build-host -f "$share/id_ed25519"

	script="$work/.variants.gfs"
	{
		for name in "${VARIANT_NAMES[@]}"; do
			base=$(variant_field "$CONF_DIR/variants/$name" base)
			qemu-img create -q -f qcow2 -o compat=1.1 -F qcow2 -b "$base.qcow2" "$work/$name.qcow2" >&2
			printf 'add-drive %s format:qcow2\n' "$work/$name.qcow2"
		done
		echo run
		# The LVM copies all carry vg0: none active until the filter picks one.
		echo 'vg-activate-all false'
		for name in "${VARIANT_NAMES[@]}"; do
			vdir="$CONF_DIR/variants/$name"
			base=$(variant_field "$vdir" base)
			printf 'echo "variant %s (%s)"\n' "$name" "$base"
			mount_cmds "$base" "$(drive_name "$i")"
			if [ -d "$vdir/rootfs" ]; then
				(cd "$vdir/rootfs" && find . ! -type d -print0 | LC_ALL=C sort -z |
					tar --owner=0 --group=0 --numeric-owner --mode='u+rw,go+r,go-w' \
						--null --no-recursion -T - -cf "$share/$name.tar")
				printf 'tar-in %s /\n' "$share/$name.tar"
			fi
			printf 'lcd %s\n' "$share"
			cat "$vdir/edit.gfs"
			umount_cmds "$base"
			i=$((i + 1))
		done
	} >"$script"
	log "stage 3: ${#VARIANT_NAMES[@]} variants in one guestfish appliance"
	guestfs_env "$rootfs"
	guestfish --no-progress-bars -f "$script" >&2 </dev/null || die "editing the variants failed"

	{
		for b in "${BASES[@]}"; do printf '%s\t%s\t-\t%s\n' "$b" "$b" "$b.qcow2"; done
		for name in "${VARIANT_NAMES[@]}"; do
			vdir="$CONF_DIR/variants/$name"
			printf '%s\t%s\t%s\t%s\n' "$name" "$(variant_field "$vdir" base)" "$(variant_field "$vdir" rule)" "$name.qcow2"
		done
	} >"$work/images.tsv"
	rm -rf --one-file-system "$share" "$script"
	chmod 0755 "$work"
	mv -T "$work" "$out"
	log "stage 3: done ($((SECONDS - t0)) s)"
}

# --------------------------------------------------------------------------
# main

main() {
	local print_key=0 do_prune=0 k1 key rootfs out b t0=$SECONDS
	local base_keys=() base_files=() keep=() i
	while [ $# -gt 0 ]; do
		case $1 in
		--print-key) print_key=1; shift ;;
		--prune) do_prune=1; shift ;;
		-h | --help) usage; exit 0 ;;
		*) usage; die "unknown argument: $1" ;;
		esac
	done
	list_variants
	k1=$(stage1_key)
	rootfs="$STAGE_DIR/rootfs-$k1"
	keep=("rootfs-$k1")
	for b in "${BASES[@]}"; do
		base_keys+=("$(stage2_key "$b" "$k1")")
		base_files+=("$STAGE_DIR/$b-${base_keys[-1]}.qcow2")
		keep+=("$b-${base_keys[-1]}.qcow2")
	done
	key=$(corpus_key "${base_keys[@]}")
	if [ "$print_key" = 1 ]; then emit "$key"; return; fi
	out="$FI_DIR/$key"
	keep+=("$key")

	if [ "$do_prune" = 1 ]; then
		need_root
		take_lock
		prune "${keep[@]}"
	fi
	# The fast path: no root, no lock.
	if [ ! -s "$out/images.tsv" ]; then
		need_root
		take_lock
		if [ ! -s "$out/images.tsv" ]; then
			# The variants need the rootfs stage too (its .debs and kernel).
			if [ ! -s "$rootfs/rootfs.info" ]; then stage1_build "$rootfs"; fi
			log "stage 1: $rootfs"
			for i in "${!BASES[@]}"; do
				if [ ! -s "${base_files[$i]}" ]; then
					stage2_build "${BASES[$i]}" "$rootfs" "${base_files[$i]}" "${base_keys[$i]}"
				fi
				log "stage 2: ${base_files[$i]}"
			done
			stage3_build "$rootfs" "$out" "${base_files[@]}"
			log "built in $((SECONDS - t0)) s"
		fi
	fi
	emit "$out"
}

trap cleanup EXIT
# set -e stops silently: say where.
set -E
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# Only the corpus directory goes to stdout; everything else goes to stderr.
exec 3>&1 1>&2
main "$@"

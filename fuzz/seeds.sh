#!/usr/bin/env bash
# fuzz/seeds.sh [CORPUS_DIR]: (re)generate the seed inputs of every fuzz
# target into CORPUS_DIR/<target>/seed-* (default fuzz/corpus), from real
# artefacts made by the real tools: mkfs.ext4/mkfs.xfs/sfdisk/qemu-img/cpio,
# and ibkit-test-utils (fuzz/seedgen) for whole disks with LVM, XFS and vfat.
#
# Seeds are small (< 1 MiB each) and deterministic, and nothing here is
# committed: fuzz/corpus is gitignored. Inputs the fuzzer found in earlier
# runs stay beside the seeds. A missing tool skips its seeds with a warning.
#
# Environment: IBKIT_FUZZ_TARGET_DIR (cargo target dir for seedgen and the
# fixture cache; default fuzz/target).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
corpus=${1:-$here/corpus}
target_dir=${IBKIT_FUZZ_TARGET_DIR:-$here/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/ibkit-seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT

export E2FSPROGS_FAKE_TIME=1700000000
UUID=0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11
MAX_SEED=$((1024 * 1024 - 1))

warn() { echo "seeds: warning: $*" >&2; }
have() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || { warn "$t not found; skipping seeds that need it"; return 1; }
  done
}

for t in qcow2 partition ext4 xfs initramfs inspect check text_formats report; do
  mkdir -p "$corpus/$t"
  rm -f "$corpus/$t"/seed-*
done

# put TARGET NAME FILE: install FILE as a seed, cut to MAX_SEED bytes.
put() {
  local dest="$corpus/$1/seed-$2"
  head -c "$MAX_SEED" "$3" >"$dest"
}

# ---------------------------------------------------------------- a guest tree
tree=$work/tree
mkdir -p "$tree"/{etc/systemd/system/multi-user.target.wants,lib/systemd/system,home/alice,var/lib/dpkg,big,usr/bin}
cat >"$tree/etc/os-release" <<'EOF'
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
EOF
echo "UUID=$UUID / ext4 errors=remount-ro 0 1" >"$tree/etc/fstab"
printf 'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n' >"$tree/etc/passwd"
printf 'root:*:19000:0:99999:7:::\nalice:!:19000::::::\n' >"$tree/etc/shadow"
printf '[Unit]\nDescription=ssh\n[Service]\nExecStart=/usr/sbin/sshd -D\n[Install]\nWantedBy=multi-user.target\n' \
  >"$tree/lib/systemd/system/ssh.service"
ln -s /lib/systemd/system/ssh.service "$tree/etc/systemd/system/multi-user.target.wants/ssh.service"
printf 'Package: openssh-server\nStatus: install ok installed\nVersion: 1:9.2p1-2\n' >"$tree/var/lib/dpkg/status"
ln -s /etc/os-release "$tree/etc/abs-link"
ln -s "$(printf 'x%.0s' {1..100})" "$tree/etc/slow-link" # > 60 bytes: not a fast symlink
ln -s loop-b "$tree/etc/loop-a"
ln -s loop-a "$tree/etc/loop-b"
python3 -c 'import random,sys; r=random.Random(1); sys.stdout.buffer.write(bytes(r.randrange(256) for _ in range(30000)))' \
  >"$tree/home/alice/data"
truncate -s 20000 "$tree/home/alice/sparse"
for i in $(seq 1 120); do echo "$i" >"$tree/big/file-with-a-longish-name-$i"; done
printf '\x7fELF\x02\x01\x01' >"$tree/usr/bin/true"

# ------------------------------------------------------------------------ ext4
# mkfs.ext4 -d images of 512 KiB-1 MiB, one per on-disk feature our reader has
# a code path for. 1 KiB blocks keep them small and make /big an htree
# directory after e2fsck -D.
if have mkfs.ext4 e2fsck debugfs; then
  mkext() {
    local name=$1 size=$2
    shift 2
    rm -f "$work/$name.img"
    mkfs.ext4 -q -F -N 256 -U "$UUID" -E "hash_seed=$UUID" "$@" -d "$tree" "$work/$name.img" "$size" >/dev/null
  }
  mkext e1k 512k -b 1024 -O ^has_journal
  e2fsck -fyD "$work/e1k.img" >/dev/null 2>&1 || true # index the big directory (htree)
  mkext e4k 1020k -b 4096 -O ^has_journal
  mkext ext2 512k -t ext2 -b 1024
  mkext inline 512k -b 1024 -O ^has_journal,inline_data -I 256
  mkext blockmap 512k -b 1024 -O ^has_journal,^extent,^64bit
  mkext metabg 1020k -b 1024 -O ^has_journal,meta_bg,^resize_inode
  mkext nocsum 512k -b 1024 -O ^has_journal,^metadata_csum,^64bit,^flex_bg
  # A journal with committed transactions and needs_recovery set: the
  # reader replays it in memory.
  mkext journal 3m -b 1024 -J size=1
  dd if="$work/journal.img" of="$work/jblk" bs=1024 skip=2 count=1 status=none # group descriptors, unchanged
  printf 'replayed content\n' >"$work/jdata"
  debugfs -w -f - "$work/journal.img" >/dev/null 2>&1 <<EOF || warn "debugfs could not write the journal"
jo
jw -b 2 $work/jblk
jw -b 600,601 $work/jdata
jc
EOF
  for n in e1k e4k ext2 inline blockmap metabg nocsum; do
    put ext4 "$n" "$work/$n.img"
  done
  # The journal needs a 3 MiB filesystem, and a cut one is refused (blocks
  # past the device): as a qcow2 with 4 KiB clusters it is small, for the
  # whole-pipeline targets.
  if have qemu-img; then
    qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$work/journal.img" "$work/journal.qcow2"
    put inspect ext4-journal.qcow2 "$work/journal.qcow2"
  fi
  # Whole-disk ext4 with os-release: a root for inspect, a volume for partition.
  put inspect bare-ext4.raw "$work/e1k.img"
  put partition bare-ext4 "$work/e1k.img"
  # Directories hard-linked to themselves, to an ancestor and to the root
  # (debugfs ln links directories, link(2) refuses): every walk must list
  # each directory once and end (issue 12: `check` walked /etc 16^12 times).
  # For inspect and check too (check copies the inspect seeds).
  cp "$work/e1k.img" "$work/loops.img"
  {
    for i in $(seq 1 16); do echo "ln /etc /etc/self$i"; done
    echo "ln /etc /home/alice/up"
    echo "ln / /etc/systemd/root"
    echo "ln /home /home/alice/home"
  } | debugfs -w -f - "$work/loops.img" >/dev/null 2>&1 || warn "debugfs could not link directories"
  put ext4 loops "$work/loops.img"
  put inspect bare-ext4-loops.raw "$work/loops.img"
fi


# ------------------------------------------------------------------------ xfs
# As sparse records (fuzz/src/lib.rs: SparseDisk): the non-zero 4 KiB blocks
# of a 16 MiB filesystem, each behind its block number.
cat >"$work/sparse.py" <<'EOF'
import struct, sys
src, dst = sys.argv[1:]
out = bytearray()
with open(src, "rb") as f:
    i = 0
    while i < 16384:
        blk = f.read(4096)
        if not blk:
            break
        if any(blk):
            out += struct.pack("<H", i) + blk.ljust(4096, b"\0")
        i += 1
open(dst, "wb").write(out[:1024 * 1024 - 1])
EOF
# mkfs.xfs -p takes a protofile, not a directory.
python3 - "$tree" >"$work/xfs.proto" <<'EOF'
import os, stat, sys
out = ["/dev/null", "0 0", "d--755 0 0"]
def walk(d):
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        st = os.lstat(p)
        mode = "%03o" % (st.st_mode & 0o777)
        if stat.S_ISLNK(st.st_mode):
            out.append(f"{name} l--{mode} 0 0 {os.readlink(p)}")
        elif stat.S_ISDIR(st.st_mode):
            out.append(f"{name} d--{mode} 0 0")
            walk(p)
            out.append("$")
        elif stat.S_ISREG(st.st_mode):
            out.append(f"{name} ---{mode} 0 0 {p}")
walk(sys.argv[1])
out.append("$")
print("\n".join(out))
EOF
if have mkfs.xfs; then
  mkxfs() { # mkxfs NAME MKFS-OPTIONS...: 16 MiB, below mkfs.xfs's 300 MiB floor
    local n=$1
    shift
    rm -f "$work/$n.xfs"
    truncate -s 16m "$work/$n.xfs"
    # xfsprogs' escape hatch for its own test suite allows small filesystems.
    if TEST_DIR=1 TEST_DEV=1 QA_CHECK_FS=1 mkfs.xfs -q -f -m uuid="$UUID" "$@" -p "$work/xfs.proto" "$work/$n.xfs" >/dev/null 2>&1; then
      python3 "$work/sparse.py" "$work/$n.xfs" "$corpus/xfs/seed-$n"
    else
      warn "mkfs.xfs $n failed"
    fi
  }
  mkxfs v5-1k -b size=1024
  mkxfs v4 -m crc=0 -n ftype=0
  mkxfs v4-512 -m crc=0 -b size=512
fi
# ---------------------------------------------------------- partition tables
# Compact tables on 64 KiB disks (partitions a few sectors long), with fixed
# identifiers.
if have sfdisk; then
  truncate -s 64k "$work/gpt.img"
  sfdisk -q --no-reread --no-tell-kernel "$work/gpt.img" >/dev/null <<'EOF'
label: gpt
label-id: 1B1C0DE5-0000-4000-8000-1B1C0DE50000
first-lba: 34
start=34, size=16, type=21686148-6449-6E6F-744E-656564454649, uuid=1B1C0DE5-0001-4000-8000-1B1C0DE50001, name="bios"
start=50, size=16, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=1B1C0DE5-0002-4000-8000-1B1C0DE50002, name="EFI System", attrs="RequiredPartition"
start=66, size=8, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, uuid=1B1C0DE5-0003-4000-8000-1B1C0DE50003, name="lvm"
start=74, size=12, type=0FC63DAF-8483-4772-8E3C-3D69D8477DE4, uuid=1B1C0DE5-0004-4000-8000-1B1C0DE50004, name="root"
EOF
  put partition gpt "$work/gpt.img"
  truncate -s 64k "$work/mbr.img"
  sfdisk -q --no-reread --no-tell-kernel "$work/mbr.img" >/dev/null <<'EOF'
label: dos
label-id: 0x1b1c0de5
start=1, size=15, type=83, bootable
start=16, size=100, type=5
start=18, size=10, type=83
start=30, size=10, type=8e
start=42, size=20, type=82
EOF
  put partition mbr-extended "$work/mbr.img"
  truncate -s 64k "$work/mbr4.img"
  sfdisk -q --no-reread --no-tell-kernel "$work/mbr4.img" >/dev/null <<'EOF'
label: dos
label-id: 0x1b1c0de5
start=1, size=20, type=ef
start=21, size=20, type=83, bootable
start=41, size=20, type=fd
start=61, size=60, type=f
EOF
  put partition mbr-primary "$work/mbr4.img"

  # GPT on a tiny disk whose p1 holds the 1 KiB-block ext4 with os-release:
  # a raw image under 1 MiB that inspect can assemble a guest from.
  if [ -f "$work/e1k.img" ]; then
    truncate -s 600k "$work/gptfs.img"
    sfdisk -q --no-reread --no-tell-kernel "$work/gptfs.img" >/dev/null <<'EOF'
label: gpt
label-id: 1B1C0DE5-0000-4000-8000-1B1C0DE50000
first-lba: 34
start=40, size=1024, type=0FC63DAF-8483-4772-8E3C-3D69D8477DE4, uuid=1B1C0DE5-0004-4000-8000-1B1C0DE50004, name="root"
EOF
    dd if="$work/e1k.img" of="$work/gptfs.img" bs=512 seek=40 conv=notrunc status=none
    put inspect gpt-ext4.raw "$work/gptfs.img"
    put partition gpt-ext4 "$work/gptfs.img"
  fi
fi

# GPT with 4096-byte sectors (this sfdisk cannot make one from a file), written
# by hand with valid CRCs: protective MBR, header at LBA 1, entries at LBA 2.
python3 - "$work/gpt4k.img" <<'EOF'
import struct, sys, uuid, zlib
ss, lbas = 4096, 64
disk = bytearray(ss * lbas)
mbr = bytearray(512)
mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\2\0", 0xEE, b"\xff\xff\xff", 1, 0xFFFFFFFF)
mbr[510:512] = b"\x55\xaa"
disk[0:512] = mbr
def guid(s): return uuid.UUID(s).bytes_le
parts = [
    ("0FC63DAF-8483-4772-8E3C-3D69D8477DE4", "1B1C0DE5-0004-4000-8000-1B1C0DE50004", 8, 20, "root"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "1B1C0DE5-0003-4000-8000-1B1C0DE50003", 21, 40, "lvm"),
]
entries = bytearray(128 * 128)
for i, (t, u, first, last, name) in enumerate(parts):
    entries[i*128:(i+1)*128] = guid(t) + guid(u) + struct.pack("<QQQ", first, last, 0) + name.encode("utf-16-le").ljust(72, b"\0")
def header(my, alt, ent):
    h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my, alt, 6, lbas - 7,
                              guid("1B1C0DE5-0000-4000-8000-1B1C0DE50000"), ent, 128, 128, zlib.crc32(entries)))
    h[16:20] = struct.pack("<I", zlib.crc32(h))
    return h
disk[ss:ss+92] = header(1, lbas - 1, 2)
disk[2*ss:2*ss+len(entries)] = entries
disk[(lbas-5)*ss:(lbas-5)*ss+len(entries)] = entries
disk[(lbas-1)*ss:(lbas-1)*ss+92] = header(lbas - 1, 1, lbas - 5)
open(sys.argv[1], "wb").write(disk)
EOF
put partition gpt-4k-sectors "$work/gpt4k.img"

# ------------------------------------------------------------------ initramfs
# What Debian and RHEL ship: cpio newc archives, compressed or not, and an
# uncompressed early-microcode archive in front of the compressed main one.
if have cpio gzip; then
  ird=$work/initramfs
  mkdir -p "$ird"/{kernel/x86/microcode,usr/lib/modules/6.1.0-13-amd64/kernel/drivers/block,usr/bin,etc,dev}
  printf 'GenuineIntel microcode' >"$ird/kernel/x86/microcode/GenuineIntel.bin"
  printf 'kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n' \
    >"$ird/usr/lib/modules/6.1.0-13-amd64/modules.builtin"
  printf 'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko\n' \
    >"$ird/usr/lib/modules/6.1.0-13-amd64/modules.dep"
  printf '\x7fELF module' >"$ird/usr/lib/modules/6.1.0-13-amd64/kernel/drivers/block/virtio_blk.ko"
  printf '\x7fELF module' >"$ird/usr/lib/modules/6.1.0-13-amd64/kernel/drivers/block/nvme.ko.zst"
  printf '#!/bin/sh\nexec /sbin/init\n' >"$ird/init"
  ln -s usr/lib "$ird/lib"
  ln -s busybox "$ird/usr/bin/sh"
  printf 'root:x:0:0::/root:/bin/sh\n' >"$ird/etc/passwd"
  (cd "$ird" && find . -path ./kernel -prune -o -print | LC_ALL=C sort |
    cpio --quiet -o -H newc --reproducible >"$work/main.cpio")
  (cd "$ird" && find kernel | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible >"$work/early.cpio")
  (cd "$ird" && find . | LC_ALL=C sort | cpio --quiet -o -H crc --reproducible >"$work/crc.cpio")
  (cd "$ird" && find . | LC_ALL=C sort | cpio --quiet -o -H odc --reproducible >"$work/odc.cpio")
  put initramfs newc "$work/main.cpio"
  put initramfs crc "$work/crc.cpio"
  put initramfs odc "$work/odc.cpio"
  gzip -9n <"$work/main.cpio" >"$work/main.gz"
  put initramfs gzip "$work/main.gz"
  cat "$work/early.cpio" "$work/main.gz" >"$work/early+gz"
  put initramfs early-gzip "$work/early+gz"
  # The kernel accepts zero padding between segments.
  { cat "$work/early.cpio"; head -c 512 /dev/zero; cat "$work/main.cpio"; } >"$work/early+pad"
  put initramfs early-padded "$work/early+pad"
  if have zstd; then zstd -q -19 -c "$work/main.cpio" >"$work/main.zst"; cat "$work/early.cpio" "$work/main.zst" >"$work/e+z"; put initramfs early-zstd "$work/e+z"; fi
  if have xz; then
    xz -q --check=crc32 -c "$work/main.cpio" >"$work/main.xz"; put initramfs xz "$work/main.xz"
    xz -q --format=lzma -c "$work/main.cpio" >"$work/main.lzma"; put initramfs lzma "$work/main.lzma"
  fi
  if have lz4; then lz4 -q -l -c "$work/main.cpio" >"$work/main.lz4"; put initramfs lz4-legacy "$work/main.lz4"; fi
  if have bzip2; then bzip2 -c "$work/main.cpio" >"$work/main.bz2"; put initramfs bzip2 "$work/main.bz2"; fi
fi

# --------------------------------------------------------------- text formats
tf=$corpus/text_formats
cat >"$tf/seed-fstab" <<EOF
# /etc/fstab: static file system information.
UUID=$UUID / ext4 errors=remount-ro 0 1
UUID=5c1d7f0a-2b8e-4f3c-9d6a-1e2f3a4b5c6d /boot ext4 defaults 0 2
LABEL=EFI /boot/efi vfat umask=0077 0 1
/dev/mapper/vg0-var /var xfs defaults,nofail 0 2
/swap.img none swap sw 0 0
tmpfs /tmp tmpfs defaults 0 0
/dev/vdb /mnt/with\040space\011tab auto noauto 0 0
EOF
cat >"$tf/seed-unit" <<'EOF'
[Unit]
Description=Example app
After=network-online.target
Wants=network-online.target a.service b.service
Wants=
Wants=c.service
Requires=postgresql.service

[Service]
Type=simple
ExecStart=/usr/local/bin/app \
  --listen 0.0.0.0:8080 \
  --flag
Restart=always
; comment
# comment

[Socket]
ListenStream=8443
ListenDatagram=[::]:53

[Install]
WantedBy=multi-user.target
Alias=app@%i.service
EOF
if [ -f "$here/../examples/debian12/ibkit.toml" ]; then
  cp "$here/../examples/debian12/ibkit.toml" "$tf/seed-manifest-example"
fi
cat >"$tf/seed-manifest" <<'EOF'
[app]
name = "acme-wiki"
version = "2.4.1"
units = ["acme-wiki.service", "acme-worker@1.service"]
ports = ["8080/tcp", "8443", "53/udp"]
agent = true

[docs]
deployment_guide = "docs/deploy.md"
user_guide = "docs/user.md"
EOF
cat >"$tf/seed-waivers" <<'EOF'
[[waiver]]
rule = "IMG-NO-DEBUGGERS"
path = "/usr/bin/strace"
kind = "debugger-binary"
reason = "approved by the marketplace, ticket 123"

[[waiver]]
rule = "IMG-NO-HISTORY"
path = "/home/*/.bash_history*"
reason = "empty files"
EOF
cat >"$tf/seed-profile" <<'EOF'
name = "internal"
[rules]
"OS-FIREWALL-OFF" = "off"
"IMG-NO-DEBUGGERS" = "warning"
EOF
cp "$tree/etc/os-release" "$tf/seed-os-release"
# shellcheck disable=SC2016 # literal hashes
printf 'root:$y$j9T$abc$def:19000:0:99999:7:::\nbob::19000::::::\ncarol:$6$salt$hash:1::::::\ndave:!$1$x$y:1::::::\n' >"$tf/seed-shadow"
cat >"$tf/seed-kconfig" <<'EOF'
#
# Automatically generated file; DO NOT EDIT.
CONFIG_VIRTIO_NET=m
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_PCI=y
# CONFIG_VIRTIO_FS is not set
CONFIG_LOCALVERSION="-cloud"
CONFIG_KVM_GUEST=y
EOF
cat >"$tf/seed-modules-dep" <<'EOF'
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/virtio_net.ko.zst: kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko
kernel/fs/virtiofs/virtiofs.ko:
EOF
cat >"$tf/seed-cmdline" <<'EOF'
BOOT_IMAGE=/vmlinuz-6.1.0-13-amd64 root=UUID=0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11 ro console=tty0 console=ttyS0,115200n8 "quoted arg" mem=2G
6.1.0-13-amd64
5.10.0-9-cloud-amd64
EOF
# Real kernel images start with a bzImage header whose version string the
# kernel facts read; a minimal one: "HdrS" at 0x202, version offset at 0x20e.
python3 - "$tf/seed-bzimage" <<'EOF'
import struct, sys
b = bytearray(0x600)
b[0x1fe:0x200] = b"\x55\xaa"
b[0x202:0x206] = b"HdrS"
b[0x206:0x208] = struct.pack("<H", 0x020f)
b[0x20e:0x210] = struct.pack("<H", 0x400 - 0x200)
v = b"6.1.0-13-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\0"
b[0x400:0x400 + len(v)] = v
open(sys.argv[1], "wb").write(b)
EOF
if [ -d "$here/../scripts/debian-image/rootfs" ]; then
  find "$here/../scripts/debian-image/rootfs" -type f -size -64k | LC_ALL=C sort | while read -r f; do
    put text_formats "rootfs-$(basename "$f")" "$f"
  done
fi

# ------------------------------------------------------------- whole disks
# ibkit-test-utils builds the disks (GPT/MBR/extended/LVM, ext4/XFS/vfat,
# fstab naming the volumes). Raw images of 8-44 MiB, mostly holes; as qcow2
# with 4 KiB (or 512-byte) clusters they shrink below 1 MiB, and compressed
# below 64 KiB.
if have qemu-img cargo; then
  echo "seeds: building disk images with ibkit-test-utils (fuzz/seedgen)" >&2
  if IBKIT_FIXTURE_DIR="$target_dir/seed-fixtures" CARGO_TARGET_DIR="$target_dir/seedgen" \
    cargo run -q --manifest-path "$here/seedgen/Cargo.toml" -- "$work/disks" >"$work/disks.list"; then
    for raw in "$work"/disks/*.raw; do
      n=$(basename "$raw" .raw)
      qemu-img convert -f raw -O qcow2 -c -o cluster_size=4096 "$raw" "$work/$n-zlib.qcow2"
      qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$raw" "$work/$n.qcow2"
      if [ "$(stat -c %s "$work/$n.qcow2")" -gt "$MAX_SEED" ]; then
        qemu-img convert -f raw -O qcow2 -o cluster_size=512 "$raw" "$work/$n.qcow2"
      fi
      case $n in
        bare-xfs | gpt-pv) ;; # no root: for the xfs and partition seeds below
        *)
          put inspect "$n-zlib.qcow2" "$work/$n-zlib.qcow2"
          [ "$(stat -c %s "$work/$n.qcow2")" -gt "$MAX_SEED" ] || put inspect "$n.qcow2" "$work/$n.qcow2"
          ;;
      esac
    done
    for n in gpt-ext4 mbr-lvm bare-ext4; do
      [ -f "$work/$n.qcow2" ] && put qcow2 "$n" "$work/$n.qcow2"
      [ -f "$work/$n-zlib.qcow2" ] && put qcow2 "$n-zlib" "$work/$n-zlib.qcow2"
    done
    if qemu-img convert -f raw -O qcow2 -c -o cluster_size=65536,compression_type=zstd \
      "$work/disks/gpt-ext4.raw" "$work/zstd.qcow2" 2>/dev/null; then
      put qcow2 gpt-ext4-zstd "$work/zstd.qcow2"
      put inspect gpt-ext4-zstd.qcow2 "$work/zstd.qcow2"
    fi

    # An LVM2 PV without a partition table: label, PV header, metadata area
    # and VG text (the LVs' data, at 1 MiB and beyond, is cut off).
    if [ -f "$work/disks/gpt-pv.raw" ]; then
      dd if="$work/disks/gpt-pv.raw" of="$work/pv.img" bs=64k skip=16 count=1 status=none
      put partition lvm-pv "$work/pv.img"
    fi
    # XFS (test-utils' defaults) as sparse records.
    python3 "$work/sparse.py" "$work/disks/bare-xfs.raw" "$corpus/xfs/seed-bare-xfs"
  else
    warn "fuzz/seedgen failed; no whole-disk seeds"
  fi

  # Container variants: every header option qemu-img has, on small disks.
  q=$work/q
  mkdir -p "$q"
  qc() { # qc NAME SIZE OPTIONS...
    local n=$1 s=$2
    shift 2
    if qemu-img create -q -f qcow2 "$@" "$q/$n.qcow2" "$s" >/dev/null 2>&1; then
      put qcow2 "$n" "$q/$n.qcow2"
    else
      warn "qemu-img create $n failed"
    fi
  }
  qc v3-4k 16M -o cluster_size=4096
  qc v2 16M -o compat=0.10,cluster_size=4096
  qc v3-512 1M -o cluster_size=512
  qc refcount1 16M -o cluster_size=4096,refcount_bits=1
  qc refcount64 16M -o cluster_size=4096,refcount_bits=64,lazy_refcounts=on
  qc extended-l2 16M -o cluster_size=16384,extended_l2=on
  qc prealloc-metadata 4M -o cluster_size=4096,preallocation=metadata
  qc backing-missing 16M -o cluster_size=4096,backing_file=base.qcow2,backing_fmt=qcow2 -u
  qc backing-protocol 16M -o cluster_size=4096,backing_file=nbd:localhost:10809,backing_fmt=raw -u
  qc backing-outside 16M -o cluster_size=4096,backing_file=../../../etc/passwd,backing_fmt=raw -u
  qc data-file 16M -o cluster_size=4096,data_file="$q/external.raw"
  qc zstd-type 16M -o cluster_size=4096,compression_type=zstd
  # Written clusters in a sparse disk, and a persistent-bitmap extension.
  python3 - "$q/data.raw" <<'EOF'
import sys
with open(sys.argv[1], "wb") as f:
    f.truncate(4 << 20)
    for off in (0, 65536 - 512, 1 << 20, (2 << 20) - 2048):
        f.seek(off)
        f.write(bytes(range(256)) * 16)
EOF
  if qemu-img convert -f raw -O qcow2 -o cluster_size=4096 "$q/data.raw" "$q/data.qcow2" >/dev/null 2>&1; then
    qemu-img bitmap --add "$q/data.qcow2" dirty0 >/dev/null 2>&1 || warn "qemu-img bitmap failed"
    put qcow2 bitmap "$q/data.qcow2"
  fi
fi

# --------------------------------------------------------------------- report
# Header (budget, log and result repeat counts), then log | result |
# structured result in thirds: output that grows 6x once JSON-escaped, and
# a nested structured result.
rp=$corpus/report
{ printf '\000\377\377'; head -c 600 /dev/zero; head -c 600 /dev/zero | tr '\0' '\001'; printf '{"a":[1,2,{"b":"%0300d"}]}' 0; } >"$rp/seed-nul-ctl"
{ printf '\010\100\001'; printf 'line one\n\tline two \342\202\254 \377\n%.0s' $(seq 20); printf 'ok\n%.0s' $(seq 60); printf '{"k":"%s"}' "$(printf '\\"%.0s' $(seq 100))"; } >"$rp/seed-text-escapes"

# -------------------------------------------------------------------- summary
# check runs the rules on what inspect assembles: the same disks.
cp "$corpus"/inspect/seed-* "$corpus/check/" 2>/dev/null || true
for t in qcow2 partition ext4 xfs initramfs inspect check text_formats report; do
  n=$(find "$corpus/$t" -name 'seed-*' | wc -l)
  [ "$n" -gt 0 ] || warn "no seeds for $t"
  echo "seeds: $t: $n seeds" >&2
done

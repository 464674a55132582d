//! The description of an image: volumes, layouts and containers.

use std::path::PathBuf;

use crate::Tree;

/// A filesystem type for a [`Volume`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext4 with the system's default features (`mkfs.ext4 -b 4096`).
    Ext4,
    /// ext4 with extra `mkfs.ext4 -O` features, e.g. `"^metadata_csum"`,
    /// `"^64bit"`, `"orphan_file"`.
    Ext4With(Vec<String>),
    /// ext2 (`mke2fs -t ext2 -b 4096`).
    Ext2,
    /// XFS v5 (`mkfs.xfs`, populated from a generated protofile). Sizes below
    /// 300 MiB use xfsprogs' test-suite escape hatch (see the crate docs);
    /// 300 MiB costs nothing extra on disk, so prefer it.
    Xfs,
    /// FAT (`mkfs.vfat`, which picks FAT12/16/32 by size; 64 MiB and more
    /// gives FAT32 with the default cluster size), populated with `mcopy`.
    /// Owners, modes and symlinks have no FAT equivalent: a symlink in the
    /// tree is an error, owners and modes are dropped.
    Vfat,
    /// Linux swap (`mkswap`); the volume must have no tree.
    Swap,
}

/// One filesystem: its type, content, size and identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub fs: FsType,
    /// Directory whose content becomes the filesystem's (usually
    /// `Some(tree.path().to_owned())`); `None` = an empty filesystem.
    pub tree: Option<PathBuf>,
    /// Size of the filesystem (and of its partition or LV) in MiB.
    pub size_mib: u64,
    /// Filesystem label (ext*: ≤ 16 bytes, XFS: ≤ 12, vfat: ≤ 11).
    pub label: Option<String>,
    /// Filesystem UUID, so fstab can name it: a UUID for ext*/XFS/swap, a
    /// volume serial like `"1234-ABCD"` for vfat. `None` = derived from the
    /// layout's hash (stable across builds, but not predictable).
    pub uuid: Option<String>,
}

impl Volume {
    /// An empty filesystem of `size_mib` MiB without label or fixed UUID.
    pub fn new(fs: FsType, size_mib: u64) -> Volume {
        Volume {
            fs,
            tree: None,
            size_mib,
            label: None,
            uuid: None,
        }
    }

    /// The filesystem gets the content of `tree` (which must outlive the
    /// `build_image` call).
    pub fn with_tree(self, tree: &Tree) -> Volume {
        self.with_tree_dir(tree.path())
    }

    /// The filesystem gets the content of a host directory.
    pub fn with_tree_dir(mut self, dir: impl Into<PathBuf>) -> Volume {
        self.tree = Some(dir.into());
        self
    }

    pub fn with_label(mut self, label: &str) -> Volume {
        self.label = Some(label.to_owned());
        self
    }

    pub fn with_uuid(mut self, uuid: &str) -> Volume {
        self.uuid = Some(uuid.to_owned());
        self
    }
}

/// One GPT partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPart {
    /// The filesystem in it; `None` leaves it zeroed (a BIOS boot partition).
    pub volume: Option<Volume>,
    /// Partition size in MiB when `volume` is `None`; ignored otherwise (the
    /// partition is then exactly `volume.size_mib`).
    pub size_mib: u64,
    /// A partition type GUID, or an sgdisk-style short code: `ef02` BIOS boot,
    /// `ef00` EFI system, `8300` Linux data, `8304` Linux root x86-64, `8302`
    /// Linux home, `8200` swap, `8e00` LVM, `fd00` RAID, `0700` basic data,
    /// `ea00` XBOOTLDR.
    pub type_code: String,
    /// Partition name (no `"`).
    pub name: String,
    /// The PARTUUID; `None` = derived from the layout's hash.
    pub part_uuid: Option<String>,
}

impl GptPart {
    /// A partition holding `volume`.
    pub fn new(type_code: &str, name: &str, volume: Volume) -> GptPart {
        GptPart {
            size_mib: volume.size_mib,
            volume: Some(volume),
            type_code: type_code.to_owned(),
            name: name.to_owned(),
            part_uuid: None,
        }
    }

    /// A partition with no filesystem (all zeros), e.g.
    /// `GptPart::empty("ef02", "bios", 1)`.
    pub fn empty(type_code: &str, name: &str, size_mib: u64) -> GptPart {
        GptPart {
            volume: None,
            size_mib,
            type_code: type_code.to_owned(),
            name: name.to_owned(),
            part_uuid: None,
        }
    }

    pub fn with_part_uuid(mut self, uuid: &str) -> GptPart {
        self.part_uuid = Some(uuid.to_owned());
        self
    }

    pub(crate) fn part_size_mib(&self) -> u64 {
        self.volume.as_ref().map_or(self.size_mib, |v| v.size_mib)
    }
}

/// The partition table kind for [`Layout::Lvm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartTable {
    Mbr,
    Gpt,
}

/// How volumes are laid out on the disk. Partitions start at 1 MiB and follow
/// each other with no gaps, each exactly its volume's size; GPT disks get 1 MiB
/// more at the end for the backup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A filesystem on the whole disk, no partition table.
    Bare(Volume),
    /// An MBR (dos) table with primary partitions 1..=n (at most 4), the first
    /// one flagged bootable. Types: 0x83 Linux, 0x0c FAT32 LBA, 0x82 swap.
    /// The disk identifier is [`MBR_DISK_ID`](crate::MBR_DISK_ID).
    Mbr(Vec<Volume>),
    /// An MBR table with primaries 1..=k (at most 3), an extended partition
    /// k+1 (type 0x05) and logical partitions 5, 6, ... inside it (each
    /// preceded by a 1 MiB gap holding its EBR).
    MbrExtended {
        primary: Vec<Volume>,
        logical: Vec<Volume>,
    },
    /// A GPT with partitions 1..=n. The disk GUID is
    /// [`GPT_DISK_GUID`](crate::GPT_DISK_GUID).
    Gpt(Vec<GptPart>),
    /// Partition 1 = `boot` (if any: MBR type 0x83 / GPT `8300`, name
    /// "boot"), last partition = an LVM2 PV (MBR type 0x8e / GPT `8e00`, name
    /// "lvm") holding the volume group `vg` with the linear LVs `lvs` in order
    /// (4 MiB extents; each LV is its volume's size rounded up to whole
    /// extents). The LVM2 metadata is written by this crate, since LVM's
    /// tools need device-mapper for `lvcreate`.
    Lvm {
        boot: Option<Volume>,
        vg: String,
        lvs: Vec<(String, Volume)>,
        table: PartTable,
    },
    /// A GPT with the partitions `parts` (numbered from 1) and then one more
    /// partition (type `8e00`, name "lvm") holding an LVM2 PV with the VG `vg`
    /// and the linear LVs `lvs`, as in RHEL-family cloud images (BIOS boot +
    /// ESP + /boot + LVM).
    GptLvm {
        parts: Vec<GptPart>,
        vg: String,
        lvs: Vec<(String, Volume)>,
    },
}

/// The file format of the built image.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Container {
    /// A sparse raw image (`.raw`).
    Raw,
    /// qcow2 (`.qcow2`), uncompressed.
    Qcow2,
    /// qcow2 with zlib-compressed clusters (`qemu-img convert -c`).
    Qcow2Zlib,
    /// qcow2 with zstd-compressed clusters (`-c -o compression_type=zstd`).
    Qcow2Zstd,
    /// A qcow2 overlay (the returned path) whose backing file is the layout's
    /// [`Container::Qcow2`] image, named relatively (just its file name, in the
    /// same directory) with backing format `qcow2`. The overlay itself holds no
    /// data: every read goes through to the base.
    Qcow2Backed,
    /// As [`Container::Qcow2Backed`] but the backing file is the layout's
    /// [`Container::Raw`] image (backing format `raw`).
    Qcow2BackedRaw,
    /// Any other `qemu-img convert -O` format, e.g. `"vmdk"`, `"vpc"`,
    /// `"vhdx"`, `"vdi"` (the file extension is the format name).
    Other(String),
}

impl Container {
    pub(crate) fn ext(&self) -> &str {
        match self {
            Container::Raw => "raw",
            Container::Qcow2
            | Container::Qcow2Zlib
            | Container::Qcow2Zstd
            | Container::Qcow2Backed
            | Container::Qcow2BackedRaw => "qcow2",
            Container::Other(f) => f,
        }
    }
}

//! What is on a volume: filesystem type, UUID and label from the superblock
//! magic alone (like `blkid -p`), without opening the filesystem.

use crate::source::{ReadAt, read_vec};

/// A recognised volume content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    /// ext2/3/4.
    Ext,
    /// XFS.
    Xfs,
    /// btrfs (recognised, not read).
    Btrfs,
    /// FAT12/16/32 (an EFI system partition).
    Vfat,
    /// Linux swap.
    Swap,
    /// LVM2 physical volume.
    LvmPv,
    /// LUKS encrypted volume (cannot be read offline).
    Luks,
    /// ISO 9660.
    Iso9660,
    /// Anything else (BIOS boot partition, empty, unknown).
    Unknown,
}

impl VolumeKind {
    /// Name as `blkid` prints `TYPE=`.
    pub fn name(self) -> &'static str {
        match self {
            VolumeKind::Ext => "ext4",
            VolumeKind::Xfs => "xfs",
            VolumeKind::Btrfs => "btrfs",
            VolumeKind::Vfat => "vfat",
            VolumeKind::Swap => "swap",
            VolumeKind::LvmPv => "LVM2_member",
            VolumeKind::Luks => "crypto_LUKS",
            VolumeKind::Iso9660 => "iso9660",
            VolumeKind::Unknown => "unknown",
        }
    }
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Content type.
    pub kind: VolumeKind,
    /// UUID as `blkid` prints it (FAT: `XXXX-XXXX`).
    pub uuid: Option<String>,
    /// Label.
    pub label: Option<String>,
}

/// Format 16 UUID bytes the usual way.
pub fn format_uuid(b: &[u8]) -> String {
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// Identify the content of `src`.
pub fn probe(src: &dyn ReadAt) -> Probe {
    let unknown = Probe {
        kind: VolumeKind::Unknown,
        uuid: None,
        label: None,
    };
    let size = src.size();
    let head = match read_vec(src, 0, size.min(4096) as usize) {
        Ok(h) => h,
        Err(_) => return unknown,
    };
    if head.len() >= 0x480 && head[0x438] == 0x53 && head[0x439] == 0xef {
        return Probe {
            kind: VolumeKind::Ext,
            uuid: Some(format_uuid(&head[0x468..0x478])),
            label: text(&head[0x478..0x488]),
        };
    }
    if head.len() >= 120 && &head[0..4] == b"XFSB" {
        return Probe {
            kind: VolumeKind::Xfs,
            uuid: Some(format_uuid(&head[32..48])),
            label: text(&head[108..120]),
        };
    }
    if head.len() >= 6 && &head[0..6] == b"LUKS\xba\xbe" {
        let uuid = head.get(168..208).and_then(text);
        return Probe {
            kind: VolumeKind::Luks,
            uuid,
            label: None,
        };
    }
    if crate::lvm::probe(src) {
        return Probe {
            kind: VolumeKind::LvmPv,
            uuid: None,
            label: None,
        };
    }
    if head.len() >= 512 && head[510] == 0x55 && head[511] == 0xaa {
        // FAT32 keeps "FAT32   " at 0x52, FAT12/16 "FAT1x   " at 0x36.
        if &head[0x52..0x57] == b"FAT32" {
            return Probe {
                kind: VolumeKind::Vfat,
                uuid: Some(fat_serial(&head[0x43..0x47])),
                label: text(&head[0x47..0x52]).filter(|l| l != "NO NAME"),
            };
        }
        if &head[0x36..0x39] == b"FAT" {
            return Probe {
                kind: VolumeKind::Vfat,
                uuid: Some(fat_serial(&head[0x27..0x2b])),
                label: text(&head[0x2b..0x36]).filter(|l| l != "NO NAME"),
            };
        }
    }
    if head.len() >= 4096 && &head[4086..4096] == b"SWAPSPACE2" {
        return Probe {
            kind: VolumeKind::Swap,
            uuid: Some(format_uuid(&head[0x40c..0x41c])),
            label: text(&head[0x41c..0x42c]),
        };
    }
    if size >= 0x10100
        && let Ok(b) = read_vec(src, 0x10000, 0x200)
        && &b[0x40..0x48] == b"_BHRfS_M"
    {
        return Probe {
            kind: VolumeKind::Btrfs,
            uuid: Some(format_uuid(&b[0x20..0x30])),
            label: text(&b[0x12b..0x1ab]),
        };
    }
    if size >= 0x8006
        && let Ok(b) = read_vec(src, 0x8001, 5)
        && &b == b"CD001"
    {
        return Probe {
            kind: VolumeKind::Iso9660,
            uuid: None,
            label: None,
        };
    }
    unknown
}

fn fat_serial(b: &[u8]) -> String {
    format!("{:02X}{:02X}-{:02X}{:02X}", b[3], b[2], b[1], b[0])
}

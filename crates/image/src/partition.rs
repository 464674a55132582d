//! MBR and GPT partition tables, parsed by hand: they are small, and every
//! field of an untrusted table is bounds-checked here before it is used.

use crate::limits::{MAX_LOGICAL_PARTITIONS, MAX_PARTITIONS};
use crate::source::{ReadAt, read_vec};

/// Which table a partition came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// DOS/MBR, with extended partitions.
    Mbr,
    /// GUID partition table.
    Gpt,
}

impl TableKind {
    /// `dos` or `gpt`, as `blkid` says.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Mbr => "dos",
            TableKind::Gpt => "gpt",
        }
    }
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Kernel partition number (`vda1` is 1; MBR logicals start at 5).
    pub number: u32,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// GPT type GUID (lowercase, dashed) or MBR type as `0x83`.
    pub type_id: String,
    /// `PARTUUID` as the kernel/blkid spell it.
    pub part_uuid: Option<String>,
    /// GPT partition name (`PARTLABEL`).
    pub name: Option<String>,
    /// MBR bootable flag.
    pub bootable: bool,
}

/// A parsed table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Kind of table.
    pub kind: TableKind,
    /// Logical sector size used to interpret it.
    pub sector_size: u64,
    /// Partitions, in number order.
    pub partitions: Vec<Partition>,
    /// Problems that did not stop parsing (entries past the end, ...).
    pub warnings: Vec<String>,
}

/// GPT type GUIDs we name in reports.
pub mod gpt_types {
    /// BIOS boot partition (GRUB core image).
    pub const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
    /// EFI system partition.
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    /// Linux LVM.
    pub const LINUX_LVM: &str = "e6d6d379-f507-44c2-a23c-238f2a3df928";
    /// Linux swap.
    pub const LINUX_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";
}

/// Format a GPT GUID (mixed endian on disk).
pub fn format_guid(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn le32(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(o..o + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(o..o + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Read the partition table of `disk`, if it has one. `Ok(None)` means no
/// table (a filesystem on the whole disk, or an empty disk).
pub fn read_table(disk: &dyn ReadAt) -> std::io::Result<Option<Table>> {
    if disk.size() < 512 {
        return Ok(None);
    }
    let mbr = read_vec(disk, 0, 512)?;
    let has_mbr_sig = mbr[510] == 0x55 && mbr[511] == 0xaa;
    // GPT: "EFI PART" at LBA 1, for 512 and 4096 byte sectors.
    for sector in [512u64, 4096] {
        if disk.size() >= sector * 2 {
            let hdr = read_vec(disk, sector, 92)?;
            if &hdr[0..8] == b"EFI PART" {
                return parse_gpt(disk, sector, &hdr).map(Some);
            }
        }
    }
    if !has_mbr_sig {
        return Ok(None);
    }
    // A boot sector of a FAT/NTFS filesystem also ends in 55 aa: only treat
    // it as an MBR if the four entries are sane.
    let entries: Vec<&[u8]> = (0..4)
        .map(|i| &mbr[446 + i * 16..446 + (i + 1) * 16])
        .collect();
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    if entries.iter().all(|e| e[4] == 0) {
        return Ok(None);
    }
    parse_mbr(disk, &mbr).map(Some)
}

fn parse_mbr(disk: &dyn ReadAt, mbr: &[u8]) -> std::io::Result<Table> {
    let sector = 512u64;
    let disk_sig = le32(mbr, 440);
    let mut table = Table {
        kind: TableKind::Mbr,
        sector_size: sector,
        partitions: Vec::new(),
        warnings: Vec::new(),
    };
    let size = disk.size();
    let mut extended: Option<(u64, u64)> = None;
    for i in 0..4 {
        let e = &mbr[446 + i * 16..446 + (i + 1) * 16];
        let ptype = e[4];
        if ptype == 0 {
            continue;
        }
        let start = u64::from(le32(e, 8)) * sector;
        let len = u64::from(le32(e, 12)) * sector;
        if matches!(ptype, 0x05 | 0x0f | 0x85) {
            extended = Some((start, len));
            continue;
        }
        push_checked(
            &mut table,
            size,
            Partition {
                number: i as u32 + 1,
                offset: start,
                len,
                type_id: format!("0x{ptype:02x}"),
                part_uuid: Some(format!("{disk_sig:08x}-{:02x}", i + 1)),
                name: None,
                bootable: e[0] == 0x80,
            },
        );
    }
    if let Some((ext_start, ext_len)) = extended {
        // Logical partitions: a chain of EBRs, each pointing to the next
        // relative to the extended partition's start.
        let mut ebr_at = ext_start;
        let mut seen = Vec::new();
        let mut number = 5;
        while seen.len() < MAX_LOGICAL_PARTITIONS {
            if seen.contains(&ebr_at) || ebr_at + 512 > size {
                if seen.contains(&ebr_at) {
                    table
                        .warnings
                        .push(format!("extended partition chain loops at byte {ebr_at}"));
                }
                break;
            }
            seen.push(ebr_at);
            let ebr = read_vec(disk, ebr_at, 512)?;
            if ebr[510] != 0x55 || ebr[511] != 0xaa {
                table
                    .warnings
                    .push(format!("EBR at byte {ebr_at} has no boot signature"));
                break;
            }
            let e1 = &ebr[446..462];
            let e2 = &ebr[462..478];
            if e1[4] != 0 {
                push_checked(
                    &mut table,
                    size,
                    Partition {
                        number,
                        offset: ebr_at + u64::from(le32(e1, 8)) * sector,
                        len: u64::from(le32(e1, 12)) * sector,
                        type_id: format!("0x{:02x}", e1[4]),
                        part_uuid: Some(format!("{disk_sig:08x}-{number:02x}")),
                        name: None,
                        bootable: e1[0] == 0x80,
                    },
                );
                number += 1;
            }
            if e2[4] == 0 {
                break;
            }
            let next = ext_start + u64::from(le32(e2, 8)) * sector;
            if next >= ext_start + ext_len.max(1) && ext_len != 0 {
                table.warnings.push(format!(
                    "EBR link at byte {ebr_at} points outside the extended partition"
                ));
                break;
            }
            ebr_at = next;
        }
    }
    table.partitions.sort_by_key(|p| p.number);
    Ok(table)
}

fn push_checked(table: &mut Table, disk_size: u64, mut p: Partition) {
    if table.partitions.len() >= MAX_PARTITIONS {
        return;
    }
    if p.offset >= disk_size {
        table.warnings.push(format!(
            "partition {} starts at byte {} past the end of the disk ({disk_size} bytes); ignored",
            p.number, p.offset
        ));
        return;
    }
    if p.offset.saturating_add(p.len) > disk_size {
        table.warnings.push(format!(
            "partition {} extends past the end of the disk; truncated",
            p.number
        ));
        p.len = disk_size - p.offset;
    }
    table.partitions.push(p);
}

fn parse_gpt(disk: &dyn ReadAt, sector: u64, hdr: &[u8]) -> std::io::Result<Table> {
    let mut table = Table {
        kind: TableKind::Gpt,
        sector_size: sector,
        partitions: Vec::new(),
        warnings: Vec::new(),
    };
    let entries_lba = le64(hdr, 72);
    let count = le32(hdr, 80) as usize;
    let entry_size = le32(hdr, 84) as usize;
    if !(128..=4096).contains(&entry_size) || !entry_size.is_multiple_of(8) {
        table
            .warnings
            .push(format!("GPT entry size {entry_size} is invalid"));
        return Ok(table);
    }
    if count > MAX_PARTITIONS {
        table.warnings.push(format!(
            "GPT claims {count} entries; reading the first {MAX_PARTITIONS}"
        ));
    }
    let count = count.min(MAX_PARTITIONS);
    let Some(start) = entries_lba.checked_mul(sector) else {
        table
            .warnings
            .push("GPT entry array offset overflows".into());
        return Ok(table);
    };
    let bytes = (count * entry_size) as u64;
    if start.saturating_add(bytes) > disk.size() {
        table.warnings.push(format!(
            "GPT entry array at LBA {entries_lba} lies past the end of the disk"
        ));
        return Ok(table);
    }
    let array = read_vec(disk, start, count * entry_size)?;
    let size = disk.size();
    for i in 0..count {
        let e = &array[i * entry_size..(i + 1) * entry_size];
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[0..16]);
        let mut uniq = [0u8; 16];
        uniq.copy_from_slice(&e[16..32]);
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            table
                .warnings
                .push(format!("GPT entry {} ends before it starts", i + 1));
            continue;
        }
        let (Some(offset), Some(len)) = (
            first.checked_mul(sector),
            (last - first)
                .checked_add(1)
                .and_then(|n| n.checked_mul(sector)),
        ) else {
            table
                .warnings
                .push(format!("GPT entry {} overflows", i + 1));
            continue;
        };
        let name_units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let name = String::from_utf16_lossy(&name_units);
        push_checked(
            &mut table,
            size,
            Partition {
                number: i as u32 + 1,
                offset,
                len,
                type_id: format_guid(&type_guid),
                part_uuid: Some(format_guid(&uniq)),
                name: (!name.is_empty()).then_some(name),
                bootable: false,
            },
        );
    }
    Ok(table)
}

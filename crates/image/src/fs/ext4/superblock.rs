//! The ext2/3/4 superblock and group descriptor geometry.
//!
//! Everything here is validated once at open time so that later arithmetic
//! on these numbers (block → byte offset, group → descriptor location) cannot
//! overflow or point outside the device.

use super::{FsError, le16, le32};

/// Superblock magic (`s_magic`).
pub(super) const MAGIC: u16 = 0xEF53;
/// Byte offset of the primary superblock on the volume.
pub(super) const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock structure we read.
pub(super) const SUPERBLOCK_SIZE: usize = 1024;

// s_feature_compat
pub(super) const COMPAT_HAS_JOURNAL: u32 = 0x4;
// s_feature_incompat
pub(super) const INCOMPAT_COMPRESSION: u32 = 0x1;
pub(super) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(super) const INCOMPAT_RECOVER: u32 = 0x4;
pub(super) const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub(super) const INCOMPAT_META_BG: u32 = 0x10;
pub(super) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(super) const INCOMPAT_64BIT: u32 = 0x80;
pub(super) const INCOMPAT_MMP: u32 = 0x100;
pub(super) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(super) const INCOMPAT_EA_INODE: u32 = 0x400;
pub(super) const INCOMPAT_DIRDATA: u32 = 0x1000;
pub(super) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(super) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(super) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(super) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(super) const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// Incompat features this reader understands (everything else is refused,
/// as the kernel does: an unknown incompat feature may change the layout).
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_DIRDATA
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;
// s_feature_ro_compat
pub(super) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(super) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(super) const RO_COMPAT_BTREE_DIR: u32 = 0x4;
pub(super) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub(super) const RO_COMPAT_BIGALLOC: u32 = 0x200;
// s_feature_compat
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

/// Parsed and validated superblock.
#[derive(Clone, Debug)]
pub(super) struct Superblock {
    /// Block size in bytes (1 KiB to 64 KiB).
    pub block_size: u64,
    /// Cluster size in bytes (== block size unless bigalloc).
    pub cluster_size: u64,
    /// Total blocks; `blocks_count * block_size <= device size`.
    pub blocks_count: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    /// Number of inodes (inode numbers are `1..=inodes_count`).
    pub inodes_count: u64,
    /// On-disk inode record size (128 or a larger power of two <= block size).
    pub inode_size: u64,
    pub group_count: u64,
    /// Group descriptor size (32, or >= 64 with the 64bit feature).
    pub desc_size: u64,
    pub first_meta_bg: u64,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub journal_inum: u32,
    backup_bgs: [u64; 2],
}

fn corrupt(msg: String) -> FsError {
    FsError::Corrupt(format!("superblock: {msg}"))
}

impl Superblock {
    /// Parse the 1024-byte superblock `b` of a volume of `device_size` bytes.
    pub(super) fn parse(b: &[u8], device_size: u64) -> Result<Self, FsError> {
        if b.len() < SUPERBLOCK_SIZE || le16(b, 0x38) != MAGIC {
            return Err(corrupt("bad magic (not ext2/3/4)".into()));
        }
        let compat = le32(b, 0x5C);
        let incompat = le32(b, 0x60);
        let ro_compat = le32(b, 0x64);
        if incompat & INCOMPAT_COMPRESSION != 0 {
            return Err(FsError::Unsupported("compression".into()));
        }
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(FsError::Unsupported(
                "journal_dev (external journal device, not a filesystem)".into(),
            ));
        }
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FsError::Unsupported(format!(
                "incompat feature 0x{unknown:x}"
            )));
        }

        let log_block = le32(b, 0x18);
        if log_block > 6 {
            return Err(corrupt(format!(
                "s_log_block_size {log_block} out of range (block size must be 1 KiB to 64 KiB)"
            )));
        }
        let block_size = 1024u64 << log_block;

        let rev = le32(b, 0x4C);
        if rev > 1 {
            return Err(FsError::Unsupported(format!("superblock revision {rev}")));
        }
        let (inode_size, first_ino) = if rev == 0 {
            (128u64, 11u32)
        } else {
            (u64::from(le16(b, 0x58)), le32(b, 0x54))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            return Err(corrupt(format!("inode size {inode_size} invalid")));
        }
        if first_ino < 11 {
            return Err(corrupt(format!(
                "first non-reserved inode {first_ino} < 11"
            )));
        }

        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = u64::from(le32(b, 0x4));
        if is_64bit {
            blocks_count |= u64::from(le32(b, 0x150)) << 32;
        }
        let first_data_block = u64::from(le32(b, 0x14));
        if first_data_block > 1 || first_data_block >= blocks_count {
            return Err(corrupt(format!(
                "first data block {first_data_block} invalid for {blocks_count} blocks"
            )));
        }
        // The kernel refuses a filesystem larger than its device; so do we.
        // This also bounds every block number we will ever compute.
        match blocks_count.checked_mul(block_size) {
            Some(bytes) if bytes <= device_size => {}
            _ => {
                return Err(corrupt(format!(
                    "{blocks_count} blocks of {block_size} bytes exceed the device ({device_size} bytes)"
                )));
            }
        }

        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let blocks_per_group = u64::from(le32(b, 0x20));
        let cluster_size = if bigalloc {
            let log_cluster = le32(b, 0x1C);
            if log_cluster < log_block || log_cluster > log_block + 16 {
                return Err(corrupt(format!("cluster size log {log_cluster} invalid")));
            }
            1024u64 << log_cluster
        } else {
            block_size
        };
        let bits_per_bitmap = block_size * 8;
        let clusters_per_group = if bigalloc {
            u64::from(le32(b, 0x24))
        } else {
            blocks_per_group
        };
        if blocks_per_group == 0
            || clusters_per_group == 0
            || clusters_per_group > bits_per_bitmap
            || clusters_per_group.checked_mul(cluster_size / block_size) != Some(blocks_per_group)
        {
            return Err(corrupt(format!(
                "blocks per group {blocks_per_group} invalid"
            )));
        }
        let inodes_per_group = u64::from(le32(b, 0x28));
        if inodes_per_group == 0 || inodes_per_group > bits_per_bitmap {
            return Err(corrupt(format!(
                "inodes per group {inodes_per_group} invalid"
            )));
        }

        let group_count = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        if group_count == 0 || group_count > u64::from(u32::MAX) {
            return Err(corrupt(format!("group count {group_count} invalid")));
        }
        let inodes_count = u64::from(le32(b, 0x0));
        let max_inodes = group_count.saturating_mul(inodes_per_group);
        if inodes_count < u64::from(first_ino) || inodes_count > max_inodes {
            return Err(corrupt(format!(
                "inode count {inodes_count} invalid ({group_count} groups of {inodes_per_group})"
            )));
        }

        let desc_size = if is_64bit {
            let d = u64::from(le16(b, 0xFE));
            if !(64..=1024).contains(&d) || !d.is_power_of_two() || d > block_size {
                return Err(corrupt(format!("group descriptor size {d} invalid")));
            }
            d
        } else {
            32
        };
        let gdt_blocks = group_count.div_ceil(block_size / desc_size);
        let first_meta_bg = u64::from(le32(b, 0x104));
        if incompat & INCOMPAT_META_BG != 0 {
            if first_meta_bg > gdt_blocks {
                return Err(corrupt(format!(
                    "first meta block group {first_meta_bg} > {gdt_blocks} descriptor blocks"
                )));
            }
        } else {
            let sb_block = SUPERBLOCK_OFFSET / block_size;
            if sb_block + 1 + gdt_blocks > blocks_count {
                return Err(corrupt(format!(
                    "{gdt_blocks} group descriptor blocks do not fit in the filesystem"
                )));
            }
        }

        let mut uuid = [0u8; 16];
        let mut volume_name = [0u8; 16];
        if let (Some(u), Some(v)) = (b.get(0x68..0x78), b.get(0x78..0x88)) {
            uuid.copy_from_slice(u);
            volume_name.copy_from_slice(v);
        }
        Ok(Superblock {
            block_size,
            cluster_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inodes_count,
            inode_size,
            group_count,
            desc_size,
            first_meta_bg,
            compat,
            incompat,
            ro_compat,
            uuid,
            volume_name,
            journal_inum: le32(b, 0xE0),
            backup_bgs: [u64::from(le32(b, 0x24C)), u64::from(le32(b, 0x250))],
        })
    }

    pub(super) fn has_incompat(&self, f: u32) -> bool {
        self.incompat & f != 0
    }

    /// `blkid`'s naming rule: anything beyond the ext3 feature set is ext4,
    /// else a journal makes it ext3, else ext2.
    pub(super) fn type_name(&self) -> &'static str {
        const EXT3_INCOMPAT: u32 = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;
        const EXT3_RO_COMPAT: u32 =
            RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR;
        if self.incompat & !EXT3_INCOMPAT != 0 || self.ro_compat & !EXT3_RO_COMPAT != 0 {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }

    /// Does group `group` carry a superblock backup (and so, without
    /// meta_bg, a group descriptor table copy)? Mirrors `ext4_bg_has_super`.
    fn bg_has_super(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return group == self.backup_bgs[0] || group == self.backup_bgs[1];
        }
        if group <= 1 || self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        if group & 1 == 0 {
            return false;
        }
        is_power_of(group, 3) || is_power_of(group, 5) || is_power_of(group, 7)
    }

    /// Block number and byte offset inside it of group `group`'s descriptor.
    /// Mirrors the kernel's `descriptor_loc` (meta_bg puts each descriptor
    /// block in the first group of its meta group).
    pub(super) fn descriptor_location(&self, group: u64) -> Result<(u64, usize), FsError> {
        if group >= self.group_count {
            return Err(FsError::Corrupt(format!("group {group} out of range")));
        }
        let per_block = self.block_size / self.desc_size;
        let meta_group = group / per_block;
        let offset = (group % per_block) * self.desc_size;
        let sb_block = SUPERBLOCK_OFFSET / self.block_size;
        let block = if !self.has_incompat(INCOMPAT_META_BG) || meta_group < self.first_meta_bg {
            sb_block + 1 + meta_group
        } else {
            let first_group = meta_group * per_block;
            let mut has_super = u64::from(self.bg_has_super(first_group));
            // With 1 KiB blocks and s_first_data_block == 0 (bigalloc),
            // group 0's descriptors are at block 2, not 1.
            if self.block_size == 1024 && meta_group == 0 && self.first_data_block == 0 {
                has_super += 1;
            }
            first_group
                .checked_mul(self.blocks_per_group)
                .and_then(|b| b.checked_add(self.first_data_block + has_super))
                .ok_or_else(|| {
                    FsError::Corrupt(format!("group {group}: descriptor location overflows"))
                })?
        };
        if block >= self.blocks_count {
            return Err(FsError::Corrupt(format!(
                "group {group}: descriptor block {block} beyond the filesystem"
            )));
        }
        // offset < block_size <= 64 KiB: fits usize.
        Ok((block, offset as usize))
    }

    /// Blocks occupied by one group's inode table.
    pub(super) fn inode_table_blocks(&self) -> u64 {
        (self.inodes_per_group * self.inode_size).div_ceil(self.block_size)
    }
}

/// Is `n` a power of `base` (n >= base)?
fn is_power_of(n: u64, base: u64) -> bool {
    let mut p = base;
    while p < n {
        match p.checked_mul(base) {
            Some(next) => p = next,
            None => return false,
        }
    }
    p == n
}

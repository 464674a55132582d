//! On-disk inodes and their in-inode extended attributes (for inline data).

use super::superblock::{INCOMPAT_LARGEDIR, RO_COMPAT_HUGE_FILE, Superblock};
use super::{FileKind, FsError, Metadata, le16, le32};

/// `i_flags` bits we care about.
pub(super) const FLAG_ENCRYPT: u32 = 0x800;
pub(super) const FLAG_HUGE_FILE: u32 = 0x40000;
pub(super) const FLAG_EXTENTS: u32 = 0x80000;
pub(super) const FLAG_INLINE_DATA: u32 = 0x1000_0000;

const S_IFMT: u16 = 0xF000;
const S_IFREG: u16 = 0x8000;
const S_IFDIR: u16 = 0x4000;
const S_IFLNK: u16 = 0xA000;

/// Size of `i_block` (the extent root, block map, fast symlink or first
/// part of inline data).
pub(super) const I_BLOCK_LEN: usize = 60;
/// Offset of `i_block` in the inode.
const I_BLOCK_OFFSET: usize = 0x28;
/// The classic (revision 0) inode size; fields past it are "extra".
const GOOD_OLD_INODE_SIZE: usize = 128;
/// Magic of the in-inode extended attribute area.
const XATTR_MAGIC: u32 = 0xEA02_0000;
/// `e_name_index` of the `system.` namespace (`system.data` holds inline data).
const XATTR_INDEX_SYSTEM: u8 = 7;

/// A parsed inode. Only fields needed for reading are decoded.
#[derive(Clone, Debug)]
pub(super) struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes (untrusted: may be absurd on a hostile image).
    pub size: u64,
    pub flags: u32,
    pub links: u16,
    /// `i_blocks` in 512-byte units.
    pub blocks_512: u64,
    pub file_acl: u64,
    pub i_block: [u8; I_BLOCK_LEN],
    /// The whole on-disk record (for in-inode xattrs).
    raw: Box<[u8]>,
}

impl Inode {
    /// Decode inode `ino` from its on-disk record `raw` (`inode_size` bytes).
    pub(super) fn parse(ino: u32, raw: &[u8], sb: &Superblock) -> Result<Self, FsError> {
        if raw.len() < GOOD_OLD_INODE_SIZE {
            return Err(FsError::Corrupt(format!("inode {ino}: record too short")));
        }
        let mode = le16(raw, 0x0);
        let is_reg = mode & S_IFMT == S_IFREG;
        let size_lo = u64::from(le32(raw, 0x4));
        let size_hi = u64::from(le32(raw, 0x6C));
        // Old ext2 reused i_size_high as i_dir_acl for directories; only
        // regular files (or any inode with largedir) use the high half.
        let size = if is_reg || sb.has_incompat(INCOMPAT_LARGEDIR) {
            size_lo | (size_hi << 32)
        } else {
            size_lo
        };
        let flags = le32(raw, 0x20);
        let mut blocks = u64::from(le32(raw, 0x1C));
        if sb.ro_compat & RO_COMPAT_HUGE_FILE != 0 {
            blocks |= u64::from(le16(raw, 0x74)) << 32;
            if flags & FLAG_HUGE_FILE != 0 {
                blocks = blocks.saturating_mul(sb.block_size / 512);
            }
        }
        let mut i_block = [0u8; I_BLOCK_LEN];
        if let Some(src) = raw.get(I_BLOCK_OFFSET..I_BLOCK_OFFSET + I_BLOCK_LEN) {
            i_block.copy_from_slice(src);
        }
        Ok(Inode {
            ino,
            mode,
            uid: u32::from(le16(raw, 0x2)) | (u32::from(le16(raw, 0x78)) << 16),
            gid: u32::from(le16(raw, 0x18)) | (u32::from(le16(raw, 0x7A)) << 16),
            size,
            flags,
            links: le16(raw, 0x1A),
            blocks_512: blocks,
            file_acl: u64::from(le32(raw, 0x68)) | (u64::from(le16(raw, 0x76)) << 32),
            i_block,
            raw: raw.into(),
        })
    }

    pub(super) fn kind(&self) -> FileKind {
        match self.mode & S_IFMT {
            S_IFREG => FileKind::File,
            S_IFDIR => FileKind::Dir,
            S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }

    pub(super) fn metadata(&self) -> Metadata {
        Metadata {
            kind: self.kind(),
            size: self.size,
            mode: u32::from(self.mode & 0o7777),
            uid: self.uid,
            gid: self.gid,
            ino: u64::from(self.ino),
        }
    }

    pub(super) fn has_flag(&self, f: u32) -> bool {
        self.flags & f != 0
    }

    /// Refuse content access to encrypted inodes (we'd return ciphertext).
    pub(super) fn check_not_encrypted(&self) -> Result<(), FsError> {
        if self.has_flag(FLAG_ENCRYPT) {
            return Err(FsError::Unsupported(format!(
                "encrypt (inode {})",
                self.ino
            )));
        }
        Ok(())
    }

    /// The kernel's `ext4_inode_is_fast_symlink`: a symlink without inline
    /// data whose only blocks (if any) are its xattr block keeps its target
    /// in `i_block`.
    pub(super) fn is_fast_symlink(&self, sb: &Superblock) -> bool {
        if self.kind() != FileKind::Symlink || self.has_flag(FLAG_INLINE_DATA) {
            return false;
        }
        let ea_blocks = if self.file_acl != 0 {
            sb.cluster_size / 512
        } else {
            0
        };
        self.blocks_512.saturating_sub(ea_blocks) == 0
    }

    /// Inline data: the 60 bytes of `i_block` followed by the value of the
    /// `system.data` in-inode xattr (both possibly unused past `i_size`).
    /// Returns `(i_block part, xattr part)`.
    pub(super) fn inline_parts(&self) -> Result<(&[u8], &[u8]), FsError> {
        Ok((&self.i_block[..], self.system_data()?))
    }

    /// Value of the `system.data` xattr in the in-inode xattr area (empty if
    /// there is none).
    fn system_data(&self) -> Result<&[u8], FsError> {
        let ino = self.ino;
        let raw = &self.raw[..];
        if raw.len() <= GOOD_OLD_INODE_SIZE {
            return Ok(&[]);
        }
        let extra = usize::from(le16(raw, 0x80));
        let start = GOOD_OLD_INODE_SIZE + extra;
        if extra % 4 != 0 || start > raw.len() {
            return Err(FsError::Corrupt(format!(
                "inode {ino}: i_extra_isize {extra} invalid"
            )));
        }
        let area = &raw[start..];
        if area.len() < 4 || le32(area, 0) != XATTR_MAGIC {
            return Ok(&[]);
        }
        // Entries and value offsets are relative to the first entry.
        let entries = &area[4..];
        let mut pos = 0usize;
        // Each entry is at least 16 bytes, so this loop is bounded by the
        // area size; it ends at a 4-byte zero terminator.
        while pos + 4 <= entries.len() && le32(entries, pos) != 0 {
            let Some(head) = entries.get(pos..pos + 16) else {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: xattr entry at {pos} truncated"
                )));
            };
            let name_len = usize::from(head[0]);
            let name_index = head[1];
            let value_offs = usize::from(le16(head, 2));
            let value_inum = le32(head, 4);
            let value_size = le32(head, 8) as usize;
            let Some(name) = entries.get(pos + 16..pos + 16 + name_len) else {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: xattr name at {pos} truncated"
                )));
            };
            if name_index == XATTR_INDEX_SYSTEM && name == b"data" {
                if value_inum != 0 {
                    return Err(FsError::Unsupported(format!(
                        "ea_inode holding inline data (inode {ino})"
                    )));
                }
                return value_offs
                    .checked_add(value_size)
                    .and_then(|end| entries.get(value_offs..end))
                    .ok_or_else(|| {
                        FsError::Corrupt(format!(
                            "inode {ino}: system.data value ({value_size} bytes at {value_offs}) outside the inode"
                        ))
                    });
            }
            pos += (16 + name_len + 3) & !3;
        }
        Ok(&[])
    }
}

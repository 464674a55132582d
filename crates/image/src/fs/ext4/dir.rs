//! Directory parsing: a linear scan of every directory block, which works
//! for hashed (htree) directories too — their index blocks are disguised as
//! a deleted entry spanning the block (or, in the root block, as `..` with a
//! large `rec_len`), so they are skipped like any unused space — and for
//! inline-data directories (entries in `i_block` after the parent inode
//! number, continued in the `system.data` xattr).

use std::ops::ControlFlow;

use super::inode::{FLAG_INLINE_DATA, Inode};
use super::limits::{MAX_DIR_BYTES, MAX_DIR_ENTRIES, MAX_DIR_SIZE, MAX_DIR_STEPS};
use super::superblock::{INCOMPAT_DIRDATA, INCOMPAT_FILETYPE};
use super::{Ext4, FileKind, FsError, le16, le32};

/// Fixed part of a directory entry (inode, rec_len, name_len, file_type).
const DIRENT_HEADER: usize = 8;
/// `file_type` values of directory entries.
pub(super) fn kind_from_file_type(ft: u8) -> Option<FileKind> {
    match ft {
        1 => Some(FileKind::File),
        2 => Some(FileKind::Dir),
        3..=6 => Some(FileKind::Other),
        7 => Some(FileKind::Symlink),
        _ => None,
    }
}

/// Work counters bounding one directory scan.
#[derive(Default)]
struct Budget {
    entries: u64,
    bytes: u64,
    steps: u64,
}

impl Ext4 {
    /// Call `visit(inode, name, file_type)` for every live entry of `dir`,
    /// in on-disk order, until it breaks. `.` and `..` are included (inline
    /// directories get synthesized ones) so lookups can resolve them;
    /// listings filter them out. `file_type` is 0 when the filesystem does
    /// not record it.
    pub(super) fn walk_dir<B>(
        &self,
        dir: &Inode,
        mut visit: impl FnMut(u32, &[u8], u8) -> ControlFlow<B>,
    ) -> Result<Option<B>, FsError> {
        let ino = dir.ino;
        if dir.kind() != FileKind::Dir {
            return Err(FsError::NotADirectory);
        }
        dir.check_not_encrypted()?;
        let mut budget = Budget::default();

        if dir.has_flag(FLAG_INLINE_DATA) {
            let (iblock, xattr) = dir.inline_parts()?;
            // The first 4 bytes are the parent's inode number (the `..`).
            let parent = le32(iblock, 0);
            if u64::from(parent) > self.sb.inodes_count || parent == 0 {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: inline directory parent {parent} invalid"
                )));
            }
            for (n, name) in [(ino, &b"."[..]), (parent, &b".."[..])] {
                if let ControlFlow::Break(b) = visit(n, name, 2) {
                    return Ok(Some(b));
                }
            }
            let head = iblock.get(4..).unwrap_or(&[]);
            for (region, what) in [(head, "inline i_block"), (xattr, "inline xattr")] {
                if let ControlFlow::Break(b) =
                    self.parse_region(ino, region, what, 0, &mut budget, &mut visit)?
                {
                    return Ok(Some(b));
                }
            }
            return Ok(None);
        }

        if dir.size > MAX_DIR_SIZE {
            return Err(FsError::Limit(format!(
                "inode {ino}: directory size {} exceeds {MAX_DIR_SIZE}",
                dir.size
            )));
        }
        let bs = self.sb.block_size;
        let nblocks = dir.size.div_ceil(bs);
        let mut lblk = 0u64;
        while lblk < nblocks {
            budget.steps += 1;
            let run = self.map_block(dir, lblk)?;
            let n = run.len.min(nblocks - lblk);
            if let Some(phys) = run.phys {
                for k in 0..n {
                    budget.steps += 1;
                    budget.bytes += bs;
                    if budget.bytes > MAX_DIR_BYTES || budget.steps > MAX_DIR_STEPS {
                        return Err(FsError::Limit(format!(
                            "inode {ino}: directory scan exceeds {MAX_DIR_BYTES} bytes / {MAX_DIR_STEPS} steps"
                        )));
                    }
                    let block = self.block(phys + k)?;
                    let flow =
                        self.parse_region(ino, &block, "block", lblk + k, &mut budget, &mut visit)?;
                    if let ControlFlow::Break(b) = flow {
                        return Ok(Some(b));
                    }
                }
            } else if budget.steps > MAX_DIR_STEPS {
                return Err(FsError::Limit(format!(
                    "inode {ino}: directory scan exceeds {MAX_DIR_STEPS} steps"
                )));
            }
            // Holes in directories are skipped, as the kernel's readdir does.
            lblk += n;
        }
        Ok(None)
    }

    /// Parse the entries of one directory block (or inline region).
    fn parse_region<B>(
        &self,
        dir_ino: u32,
        region: &[u8],
        what: &str,
        lblk: u64,
        budget: &mut Budget,
        visit: &mut impl FnMut(u32, &[u8], u8) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B>, FsError> {
        let has_ft = self.sb.has_incompat(INCOMPAT_FILETYPE);
        let ft_mask = if self.sb.has_incompat(INCOMPAT_DIRDATA) {
            0x0F
        } else {
            0xFF
        };
        let big_blocks = self.sb.block_size >= 65536;
        let mut off = 0usize;
        while off + DIRENT_HEADER <= region.len() {
            let ino = le32(region, off);
            let raw_rec = le16(region, off + 4);
            // 64 KiB blocks need 17 bits of rec_len: the low two bits (always
            // zero for a 4-aligned length) carry bits 16-17.
            let rec_len = if big_blocks {
                if raw_rec == 0xFFFF || raw_rec == 0 {
                    65536
                } else {
                    usize::from(raw_rec & 0xFFFC) | (usize::from(raw_rec & 3) << 16)
                }
            } else {
                usize::from(raw_rec)
            };
            let name_len = usize::from(region.get(off + 6).copied().unwrap_or(0));
            let file_type = if has_ft {
                region.get(off + 7).copied().unwrap_or(0) & ft_mask
            } else {
                0
            };
            if rec_len < DIRENT_HEADER + name_len
                || rec_len % 4 != 0
                || rec_len > region.len() - off
            {
                return Err(FsError::Corrupt(format!(
                    "inode {dir_ino}: directory entry at {what} {lblk} offset {off}: rec_len {rec_len} invalid (name_len {name_len}, room {})",
                    region.len() - off
                )));
            }
            if ino != 0 && name_len > 0 {
                let name = region
                    .get(off + DIRENT_HEADER..off + DIRENT_HEADER + name_len)
                    .unwrap_or(&[]);
                if u64::from(ino) > self.sb.inodes_count {
                    return Err(FsError::Corrupt(format!(
                        "inode {dir_ino}: directory entry at {what} {lblk} offset {off} names inode {ino} > {}",
                        self.sb.inodes_count
                    )));
                }
                budget.entries += 1;
                if budget.entries > MAX_DIR_ENTRIES {
                    return Err(FsError::Limit(format!(
                        "inode {dir_ino}: directory has more than {MAX_DIR_ENTRIES} entries"
                    )));
                }
                if let ControlFlow::Break(b) = visit(ino, name, file_type) {
                    return Ok(ControlFlow::Break(b));
                }
            }
            off += rec_len;
        }
        Ok(ControlFlow::Continue(()))
    }
}

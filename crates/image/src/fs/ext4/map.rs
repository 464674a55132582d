//! Logical → physical block mapping: extent trees (ext4) and indirect block
//! maps (ext2/3). Both return a [`Run`] of consecutive logical blocks that
//! are either contiguous on disk or all unmapped, so readers can move in
//! large steps over holes (a hostile sparse inode claiming 2^60 bytes costs
//! a handful of lookups, not 2^48).
//!
//! Loops are bounded structurally: the extent walk requires each child's
//! depth to be exactly its parent's minus one (max depth 5), so a node that
//! points at itself or an ancestor is rejected; the indirect walk has a fixed
//! depth of at most three levels.

use std::sync::Arc;

use super::inode::{FLAG_EXTENTS, Inode};
use super::limits::MAX_EXTENT_DEPTH;
use super::{Ext4, FsError, le16, le32};

/// `eh_magic` of every extent tree node.
const EXTENT_MAGIC: u16 = 0xF30A;
/// Extent header and entry size.
const EXT_ENTRY: usize = 12;
/// `ee_len` above this marks an uninitialized (preallocated) extent.
const EXT_INIT_MAX_LEN: u64 = 32768;
/// Extent trees address 32-bit logical blocks.
const EXTENT_LBLK_LIMIT: u64 = 1 << 32;
/// Direct pointers in an indirect-mapped inode.
const DIRECT_BLOCKS: u64 = 12;

/// A run of logical blocks starting at `lblk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Run {
    /// First logical block of the run.
    pub lblk: u64,
    /// Number of blocks (>= 1).
    pub len: u64,
    /// Physical block of `lblk`, or `None` for a hole or an uninitialized
    /// extent (both read as zeros).
    pub phys: Option<u64>,
}

impl Run {
    fn hole(lblk: u64, len: u64) -> Run {
        Run {
            lblk,
            len: len.max(1),
            phys: None,
        }
    }
    /// One past the last logical block (saturating).
    pub(super) fn end(&self) -> u64 {
        self.lblk.saturating_add(self.len)
    }
}

/// Where a node of the extent tree lives (for messages).
enum NodeData {
    Root([u8; 60]),
    Block(Arc<[u8]>),
}

impl NodeData {
    fn bytes(&self) -> &[u8] {
        match self {
            NodeData::Root(b) => &b[..],
            NodeData::Block(b) => b,
        }
    }
}

impl Ext4 {
    /// Map logical block `lblk` of `inode` (which must not use inline data).
    pub(super) fn map_block(&self, inode: &Inode, lblk: u64) -> Result<Run, FsError> {
        if inode.has_flag(FLAG_EXTENTS) {
            self.map_extent(inode, lblk)
        } else {
            self.map_indirect(inode, lblk)
        }
    }

    /// Check that `len` blocks from `start` lie inside the filesystem.
    fn check_range(&self, ino: u32, what: &str, start: u64, len: u64) -> Result<(), FsError> {
        match start.checked_add(len) {
            Some(end) if start != 0 && end <= self.sb.blocks_count => Ok(()),
            _ => Err(FsError::Corrupt(format!(
                "inode {ino}: {what} block {start} (+{len}) outside the filesystem ({} blocks)",
                self.sb.blocks_count
            ))),
        }
    }

    fn map_extent(&self, inode: &Inode, lblk: u64) -> Result<Run, FsError> {
        let ino = inode.ino;
        if lblk >= EXTENT_LBLK_LIMIT {
            return Ok(Run::hole(lblk, u64::MAX - lblk));
        }
        // Exclusive upper bound of the logical range covered by the current
        // node, from the next index entry of each ancestor.
        let mut upper = EXTENT_LBLK_LIMIT;
        let mut node = NodeData::Root(inode.i_block);
        let mut expected_depth: Option<u16> = None;
        let mut node_block = 0u64;
        for _ in 0..=MAX_EXTENT_DEPTH {
            let b = node.bytes();
            let where_ = if node_block == 0 {
                "root".to_string()
            } else {
                format!("block {node_block}")
            };
            let magic = le16(b, 0);
            let entries = usize::from(le16(b, 2));
            let max = usize::from(le16(b, 4));
            let depth = le16(b, 6);
            if magic != EXTENT_MAGIC {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: extent node ({where_}) bad magic 0x{magic:04x}"
                )));
            }
            let capacity = (b.len() - EXT_ENTRY) / EXT_ENTRY;
            if max > capacity || entries > max {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: extent node ({where_}) has {entries} entries, max {max}, room for {capacity}"
                )));
            }
            if usize::from(depth) > MAX_EXTENT_DEPTH {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: extent depth {depth} exceeds {MAX_EXTENT_DEPTH}"
                )));
            }
            if let Some(want) = expected_depth
                && depth != want
            {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: extent node ({where_}) has depth {depth}, expected {want}"
                )));
            }
            let entry = |i: usize| -> &[u8] {
                let start = EXT_ENTRY * (i + 1);
                b.get(start..start + EXT_ENTRY).unwrap_or(&[])
            };

            if depth == 0 {
                return self.search_leaf(ino, &where_, entries, entry, lblk, upper);
            }

            if entries == 0 {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: empty extent index node ({where_})"
                )));
            }
            // Last index whose first block is <= lblk (the first one if none,
            // as the kernel does), with strictly ascending keys.
            let mut chosen = 0usize;
            let mut prev: Option<u64> = None;
            for i in 0..entries {
                let first = u64::from(le32(entry(i), 0));
                if prev.is_some_and(|p| first <= p) {
                    return Err(FsError::Corrupt(format!(
                        "inode {ino}: extent index ({where_}) keys not ascending at entry {i}"
                    )));
                }
                prev = Some(first);
                if first <= lblk {
                    chosen = i;
                } else {
                    upper = upper.min(first);
                    break;
                }
            }
            let e = entry(chosen);
            let child = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
            self.check_range(ino, "extent index", child, 1)?;
            node = NodeData::Block(self.block(child)?);
            node_block = child;
            expected_depth = Some(depth - 1);
        }
        // Unreachable in practice: depth strictly decreases from <= 5.
        Err(FsError::Corrupt(format!(
            "inode {ino}: extent tree too deep"
        )))
    }

    fn search_leaf<'a>(
        &self,
        ino: u32,
        where_: &str,
        entries: usize,
        entry: impl Fn(usize) -> &'a [u8],
        lblk: u64,
        upper: u64,
    ) -> Result<Run, FsError> {
        let mut prev_end = 0u64;
        for i in 0..entries {
            let e = entry(i);
            let first = u64::from(le32(e, 0));
            let raw_len = u64::from(le16(e, 4));
            let (len, uninit) = if raw_len > EXT_INIT_MAX_LEN {
                (raw_len - EXT_INIT_MAX_LEN, true)
            } else {
                (raw_len, false)
            };
            if len == 0 {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: zero-length extent ({where_}, entry {i})"
                )));
            }
            if i > 0 && first < prev_end {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: extents ({where_}) overlap or not ascending at entry {i}"
                )));
            }
            let end = first + len; // both < 2^33: no overflow
            prev_end = end;
            if lblk < first {
                return Ok(Run::hole(lblk, first.min(upper).saturating_sub(lblk)));
            }
            if lblk < end {
                let start = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
                self.check_range(ino, "extent", start, len)?;
                let run_len = end.min(upper.max(lblk + 1)) - lblk;
                let phys = if uninit {
                    None
                } else {
                    Some(start + (lblk - first))
                };
                return Ok(Run {
                    lblk,
                    len: run_len,
                    phys,
                });
            }
        }
        Ok(Run::hole(lblk, upper.saturating_sub(lblk)))
    }

    fn map_indirect(&self, inode: &Inode, lblk: u64) -> Result<Run, FsError> {
        let ino = inode.ino;
        let ptr = |bytes: &[u8], i: u64| -> u64 {
            usize::try_from(i).map_or(0, |i| u64::from(le32(bytes, i.saturating_mul(4))))
        };
        let root = &inode.i_block[..];
        if lblk < DIRECT_BLOCKS {
            return self.scan_pointers(ino, root, lblk, DIRECT_BLOCKS, lblk);
        }
        let per = self.sb.block_size / 4;
        let mut rel = lblk - DIRECT_BLOCKS;
        for level in 1..=3u32 {
            // Blocks addressable through i_block[11 + level].
            let total = per.pow(level);
            if rel >= total {
                rel -= total;
                continue;
            }
            let mut ptr_blk = ptr(root, 11 + u64::from(level));
            if ptr_blk == 0 {
                return Ok(Run::hole(lblk, total - rel));
            }
            // Walk down `level` indirect blocks; `span` is the number of
            // data blocks covered by one pointer of the current block.
            let mut span = per.pow(level - 1);
            for _ in 0..level {
                self.check_range(ino, "indirect", ptr_blk, 1)?;
                let blk = self.block(ptr_blk)?;
                let idx = rel / span;
                rel %= span;
                if span == 1 {
                    return self.scan_pointers(ino, &blk, idx, per, lblk);
                }
                let next = ptr(&blk, idx);
                if next == 0 {
                    // Consecutive null pointers: one hole covering them all.
                    let mut zeros = 1u64;
                    while idx + zeros < per && ptr(&blk, idx + zeros) == 0 {
                        zeros += 1;
                    }
                    return Ok(Run::hole(lblk, zeros * span - rel));
                }
                ptr_blk = next;
                span /= per;
            }
            // Unreachable: the last level has span 1 and returns above.
            return Err(FsError::Corrupt(format!(
                "inode {ino}: indirect walk ended early"
            )));
        }
        // Past the triple-indirect range: nothing can be mapped there.
        Ok(Run::hole(lblk, u64::MAX - lblk))
    }

    /// From pointer `idx` of the pointer array `ptrs` (with `count` valid
    /// entries), the longest run of physically contiguous blocks or of holes.
    fn scan_pointers(
        &self,
        ino: u32,
        ptrs: &[u8],
        idx: u64,
        count: u64,
        lblk: u64,
    ) -> Result<Run, FsError> {
        let get = |i: u64| -> u64 {
            usize::try_from(i).map_or(0, |i| u64::from(le32(ptrs, i.saturating_mul(4))))
        };
        let first = get(idx);
        let mut n = 1u64;
        while idx + n < count {
            let p = get(idx + n);
            let contiguous = if first == 0 { p == 0 } else { p == first + n };
            if !contiguous {
                break;
            }
            n += 1;
        }
        if first == 0 {
            return Ok(Run::hole(lblk, n));
        }
        self.check_range(ino, "data", first, n)?;
        Ok(Run {
            lblk,
            len: n,
            phys: Some(first),
        })
    }
}

//! In-memory jbd2 journal replay.
//!
//! When the superblock says `needs_recovery`, the on-disk metadata is only
//! consistent once committed journal transactions are applied. We never
//! write: instead the replay builds an overlay `fs block -> journal block`
//! that every block read consults (see [`Ext4::read_block_uncached`]).
//!
//! The algorithm is the kernel's three passes (`fs/jbd2/recovery.c`):
//! scan from `s_start` for transactions with consecutive sequence numbers
//! that end in a commit block, collect revocations, then map each tagged
//! block of each committed transaction unless a revoke record of the same
//! or a later transaction covers it. Checksums (v2/v3 tags, commit block
//! CRCs) are *not* verified; an uncommitted trailing transaction is ignored.
//! Fast-commit blocks are not replayed (the caller is told via
//! `needs_recovery`).

use std::collections::{BTreeMap, HashMap};

use super::inode::FLAG_INLINE_DATA;
use super::limits::{MAX_JOURNAL_BLOCKS, MAX_REPLAY_BLOCKS, MAX_REVOKE_RECORDS};
use super::map::Run;
use super::{Ext4, FileKind, FsError, Inode};

/// `h_magic` of every journal metadata block.
pub(super) const JBD2_MAGIC: u32 = 0xC03B_3998;
const BT_DESCRIPTOR: u32 = 1;
const BT_COMMIT: u32 = 2;
const BT_SUPERBLOCK_V1: u32 = 3;
const BT_SUPERBLOCK_V2: u32 = 4;
const BT_REVOKE: u32 = 5;

const JINCOMPAT_REVOKE: u32 = 0x1;
const JINCOMPAT_64BIT: u32 = 0x2;
const JINCOMPAT_ASYNC_COMMIT: u32 = 0x4;
const JINCOMPAT_CSUM_V2: u32 = 0x8;
const JINCOMPAT_CSUM_V3: u32 = 0x10;
const JINCOMPAT_FAST_COMMIT: u32 = 0x20;
const JINCOMPAT_KNOWN: u32 = JINCOMPAT_REVOKE
    | JINCOMPAT_64BIT
    | JINCOMPAT_ASYNC_COMMIT
    | JINCOMPAT_CSUM_V2
    | JINCOMPAT_CSUM_V3
    | JINCOMPAT_FAST_COMMIT;
/// Default fast-commit area size when `s_num_fc_blks` is 0.
const DEFAULT_FC_BLOCKS: u64 = 256;

const TAG_FLAG_ESCAPE: u16 = 1;
const TAG_FLAG_SAME_UUID: u16 = 2;
const TAG_FLAG_LAST_TAG: u16 = 8;

/// Where a replayed filesystem block's new contents live.
#[derive(Clone, Copy, Debug)]
pub(super) struct JournalBlock {
    /// Physical filesystem block holding the data (inside the journal).
    pub phys: u64,
    /// The first four bytes were escaped (they equalled the jbd2 magic) and
    /// must be restored to [`JBD2_MAGIC`].
    pub escaped: bool,
}

/// Result of a replay.
pub(super) struct Replay {
    pub overlay: BTreeMap<u64, JournalBlock>,
    pub transactions: u32,
    /// Something was left unreplayed (fast commits).
    pub incomplete: bool,
}

fn be32(b: &[u8], off: usize) -> u32 {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}
fn be16(b: &[u8], off: usize) -> u16 {
    off.checked_add(2)
        .and_then(|end| b.get(off..end))
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}
/// `tid_gt(a, b)`: sequence numbers wrap.
fn tid_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn corrupt(msg: String) -> FsError {
    FsError::Corrupt(format!("journal: {msg}"))
}

/// A committed transaction: its sequence number and the log positions of
/// its descriptor and revoke blocks.
struct Txn {
    seq: u32,
    descriptors: Vec<u64>,
    revokes: Vec<u64>,
}

/// Reads journal-relative blocks through the journal inode's mapping.
struct Log<'a> {
    fs: &'a Ext4,
    inode: Inode,
    run: Option<Run>,
    /// Log area `[first, end)`; positions wrap from `end` to `first`.
    first: u64,
    end: u64,
    incompat: u32,
    buf: Vec<u8>,
}

impl Log<'_> {
    fn phys(&mut self, jblk: u64) -> Result<u64, FsError> {
        let run = match self.run {
            Some(r) if r.lblk <= jblk && jblk < r.end() => r,
            _ => {
                let r = self.fs.map_block(&self.inode, jblk)?;
                self.run = Some(r);
                r
            }
        };
        match run.phys {
            Some(p) => Ok(p + (jblk - run.lblk)),
            None => Err(corrupt(format!("journal block {jblk} is not mapped"))),
        }
    }

    /// Read journal block `jblk` into `self.buf`.
    fn read(&mut self, jblk: u64) -> Result<(), FsError> {
        let phys = self.phys(jblk)?;
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.fs.read_raw_block(phys, &mut buf);
        self.buf = buf;
        r
    }

    /// Bring a log position past the end back into `[first, end)` (a tiny
    /// hostile log may be overrun by more than one lap).
    fn wrap(&self, pos: u64) -> u64 {
        if pos >= self.end {
            self.first + (pos - self.first) % (self.end - self.first)
        } else {
            pos
        }
    }

    fn has(&self, f: u32) -> bool {
        self.incompat & f != 0
    }

    fn tag_bytes(&self) -> usize {
        if self.has(JINCOMPAT_CSUM_V3) {
            return 16;
        }
        let mut sz = 12;
        if self.has(JINCOMPAT_CSUM_V2) {
            sz += 2;
        }
        if self.has(JINCOMPAT_64BIT) {
            sz
        } else {
            sz - 4
        }
    }

    /// Checksummed journals end descriptor/revoke blocks with a 4-byte tail.
    fn tail_bytes(&self) -> usize {
        if self.has(JINCOMPAT_CSUM_V2 | JINCOMPAT_CSUM_V3) {
            4
        } else {
            0
        }
    }

    /// Tags of the descriptor block in `self.buf`: (fs block, flags).
    fn tags(&self) -> Vec<(u64, u16)> {
        let tag_bytes = self.tag_bytes();
        let limit = self.buf.len().saturating_sub(self.tail_bytes());
        let mut out = Vec::new();
        let mut p = 12usize;
        while p + tag_bytes <= limit {
            let flags = be16(&self.buf, p + 6);
            let mut block = u64::from(be32(&self.buf, p));
            if self.has(JINCOMPAT_64BIT) {
                block |= u64::from(be32(&self.buf, p + 8)) << 32;
            }
            out.push((block, flags));
            p += tag_bytes;
            if flags & TAG_FLAG_SAME_UUID == 0 {
                p += 16;
            }
            if flags & TAG_FLAG_LAST_TAG != 0 {
                break;
            }
        }
        out
    }
}

/// Replay the journal of `fs` (opened without an overlay). `Ok(None)` when
/// the journal is clean (`s_start == 0`).
pub(super) fn replay(fs: &Ext4) -> Result<Option<Replay>, FsError> {
    let jino = fs.sb.journal_inum;
    if jino == 0 {
        return Err(FsError::Unsupported("external journal device".into()));
    }
    let inode = fs.inode(jino)?;
    if inode.kind() != FileKind::File || inode.has_flag(FLAG_INLINE_DATA) {
        return Err(corrupt(format!(
            "journal inode {jino} is not a regular file"
        )));
    }
    let bs = fs.sb.block_size;
    let inode_blocks = inode.size / bs;
    let mut log = Log {
        fs,
        inode,
        run: None,
        first: 0,
        end: 0,
        incompat: 0,
        buf: vec![0u8; bs as usize],
    };

    log.read(0)?;
    let jsb = std::mem::take(&mut log.buf);
    if be32(&jsb, 0) != JBD2_MAGIC {
        return Err(corrupt("bad superblock magic".into()));
    }
    let version = be32(&jsb, 4);
    if version != BT_SUPERBLOCK_V1 && version != BT_SUPERBLOCK_V2 {
        return Err(corrupt(format!("superblock type {version}")));
    }
    if u64::from(be32(&jsb, 0xC)) != bs {
        return Err(FsError::Unsupported(format!(
            "journal block size {} != filesystem block size {bs}",
            be32(&jsb, 0xC)
        )));
    }
    let maxlen = u64::from(be32(&jsb, 0x10));
    let first = u64::from(be32(&jsb, 0x14));
    let mut seq = be32(&jsb, 0x18);
    let start = u64::from(be32(&jsb, 0x1C));
    if version == BT_SUPERBLOCK_V2 {
        log.incompat = be32(&jsb, 0x28);
    }
    log.buf = jsb;
    if log.incompat & !JINCOMPAT_KNOWN != 0 {
        return Err(FsError::Unsupported(format!(
            "journal incompat feature 0x{:x}",
            log.incompat & !JINCOMPAT_KNOWN
        )));
    }
    if start == 0 {
        return Ok(None);
    }
    if maxlen > MAX_JOURNAL_BLOCKS {
        return Err(FsError::Limit(format!(
            "journal of {maxlen} blocks exceeds {MAX_JOURNAL_BLOCKS}"
        )));
    }
    let mut end = maxlen;
    let mut incomplete = false;
    if log.has(JINCOMPAT_FAST_COMMIT) {
        let fc = match u64::from(be32(log.buf.as_slice(), 0x54)) {
            0 => DEFAULT_FC_BLOCKS,
            n => n,
        };
        end = maxlen.saturating_sub(fc);
        incomplete = true;
    }
    if maxlen > inode_blocks || first == 0 || first >= end || start < first || start >= end {
        return Err(corrupt(format!(
            "geometry invalid: first {first}, start {start}, end {end}, maxlen {maxlen}, inode holds {inode_blocks} blocks"
        )));
    }
    log.first = first;
    log.end = end;
    let log_len = end - first;

    // Pass 1: find committed transactions.
    let mut txns: Vec<Txn> = Vec::new();
    let mut cur = Txn {
        seq,
        descriptors: Vec::new(),
        revokes: Vec::new(),
    };
    let mut pos = start;
    let mut visited = 0u64;
    while visited < log_len {
        log.read(pos)?;
        if be32(&log.buf, 0) != JBD2_MAGIC || be32(&log.buf, 8) != seq {
            break;
        }
        match be32(&log.buf, 4) {
            BT_DESCRIPTOR => {
                let n = log.tags().len() as u64;
                cur.descriptors.push(pos);
                visited += 1 + n;
                pos = log.wrap(pos + 1 + n);
            }
            BT_COMMIT => {
                let next = seq.wrapping_add(1);
                txns.push(std::mem::replace(
                    &mut cur,
                    Txn {
                        seq: next,
                        descriptors: Vec::new(),
                        revokes: Vec::new(),
                    },
                ));
                seq = next;
                visited += 1;
                pos = log.wrap(pos + 1);
            }
            BT_REVOKE => {
                cur.revokes.push(pos);
                visited += 1;
                pos = log.wrap(pos + 1);
            }
            _ => break,
        }
    }

    // Pass 2: revocations (block -> latest revoking transaction).
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let rec_len = if log.has(JINCOMPAT_64BIT) { 8 } else { 4 };
    for t in &txns {
        for &rpos in &t.revokes {
            log.read(rpos)?;
            let count = be32(&log.buf, 12) as usize;
            if count > log.buf.len() - log.tail_bytes() {
                return Err(corrupt(format!(
                    "revoke block at {rpos}: r_count {count} too large"
                )));
            }
            let mut off = 16usize;
            while off + rec_len <= count {
                let block = if rec_len == 8 {
                    (u64::from(be32(&log.buf, off)) << 32) | u64::from(be32(&log.buf, off + 4))
                } else {
                    u64::from(be32(&log.buf, off))
                };
                let e = revoked.entry(block).or_insert(t.seq);
                if tid_gt(t.seq, *e) {
                    *e = t.seq;
                }
                if revoked.len() > MAX_REVOKE_RECORDS {
                    return Err(FsError::Limit(format!(
                        "more than {MAX_REVOKE_RECORDS} revoked blocks"
                    )));
                }
                off += rec_len;
            }
        }
    }

    // Pass 3: map every tagged block of each committed transaction.
    let mut overlay = BTreeMap::new();
    for t in &txns {
        for &dpos in &t.descriptors {
            log.read(dpos)?;
            let tags = log.tags();
            for (i, (block, flags)) in tags.into_iter().enumerate() {
                let data_pos = log.wrap(dpos + 1 + i as u64);
                if revoked.get(&block).is_some_and(|&r| !tid_gt(t.seq, r)) {
                    continue;
                }
                if block >= fs.sb.blocks_count {
                    tracing::warn!(
                        block,
                        "ext4 journal: tag names a block outside the filesystem; skipped"
                    );
                    continue;
                }
                let phys = log.phys(data_pos)?;
                overlay.insert(
                    block,
                    JournalBlock {
                        phys,
                        escaped: flags & TAG_FLAG_ESCAPE != 0,
                    },
                );
                if overlay.len() > MAX_REPLAY_BLOCKS {
                    return Err(FsError::Limit(format!(
                        "journal replays more than {MAX_REPLAY_BLOCKS} blocks"
                    )));
                }
            }
        }
    }
    Ok(Some(Replay {
        overlay,
        transactions: txns.len() as u32,
        incomplete,
    }))
}

//! ext2/ext3/ext4 reader: our own, read-only, hostile-input-safe.
//!
//! Why not `ext4-view`: it refuses inline_data, meta_bg and largedir
//! filesystems, requires the filetype feature, and trusts `i_size` when
//! reading. This reader supports those features and treats every on-disk
//! number as untrusted: arithmetic is checked, block numbers are checked
//! against the filesystem size (itself checked against the device, as the
//! kernel does), tree walks are depth-bounded, and work per directory is
//! capped (see [`limits`]). Failures are [`FsError::Corrupt`],
//! [`FsError::Unsupported`] or [`FsError::Limit`], never a panic.
//!
//! Supported: block sizes 1–64 KiB, 32/64-byte group descriptors (64bit),
//! meta_bg, flex_bg, sparse_super(2), bigalloc, 128-byte and larger inodes
//! (uid/gid high halves, `i_size_high`), extent trees and indirect block
//! maps, uninitialized extents and holes (read as zeros), inline data
//! (files, directories, symlinks), fast and slow symlinks, htree and
//! largedir directories (by linear scan), casefold (exact-match lookups),
//! dirdata, filesystems without the filetype feature, and in-memory jbd2
//! journal replay when `needs_recovery` is set (see [`Ext4::open`]).
//!
//! Not supported: `compression` and `journal_dev` (refused at open),
//! contents of encrypted inodes ([`FsError::Unsupported`] per inode),
//! fast-commit replay (reported by [`Ext4::needs_recovery`]). Checksums
//! (metadata_csum, journal checksums) are not verified.
//!
//! Paths are looked up component by component from the root without
//! following symlinks. Two bounded LRU caches keep lookups fast: metadata
//! blocks ([`limits::CACHE_BYTES`]) and per-directory name indexes
//! ([`limits::DIR_CACHE_BYTES`]).

mod cache;
mod dir;
mod file;
mod inode;
mod journal;
mod map;
mod superblock;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::{DirEntry, FileKind, FileSystem, FsError, Metadata};
use crate::source::{ReadAt, Source};
use cache::{BlockCache, DirCache, DirIndex, dir_entry_weight};
pub use file::Ext4File;
use inode::{I_BLOCK_LEN, Inode};
use journal::{JBD2_MAGIC, JournalBlock};
use superblock::{
    COMPAT_HAS_JOURNAL, INCOMPAT_RECOVER, MAGIC, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, Superblock,
};

/// Hard limits bounding memory and work on hostile or absurd images.
pub mod limits {
    /// Maximum extent tree depth (the kernel's `EXT4_MAX_EXTENT_DEPTH`).
    pub const MAX_EXTENT_DEPTH: usize = 5;
    /// Largest directory `i_size` we scan (4 GiB: the largest a directory
    /// can be without largedir; even huge maildirs stay far below).
    pub const MAX_DIR_SIZE: u64 = 4 << 30;
    /// Most directory bytes actually read in one scan (holes don't count).
    /// With [`MAX_DIR_ENTRIES`] this bounds what one `read_dir` returns
    /// (names live in these bytes).
    pub const MAX_DIR_BYTES: u64 = 64 << 20;
    /// Most entries (including `.`/`..`) in one directory. Half a million is
    /// far beyond any OS image directory.
    pub const MAX_DIR_ENTRIES: u64 = 1 << 19;
    /// Most mapping steps plus blocks visited in one directory scan (bounds
    /// time on an indirect map full of pointers to zeroed blocks).
    pub const MAX_DIR_STEPS: u64 = 1 << 22;
    /// Most components in a looked-up path.
    pub const MAX_PATH_COMPONENTS: usize = 4096;
    /// Longest symlink target we return (Linux's `PATH_MAX`).
    pub const MAX_SYMLINK_LEN: u64 = 4096;
    /// Bytes of metadata blocks kept in the LRU block cache.
    pub const CACHE_BYTES: u64 = 4 << 20;
    /// Approximate bytes of directory name indexes kept for path lookups.
    pub const DIR_CACHE_BYTES: u64 = 2 << 20;
    /// Directories whose index would exceed this are searched linearly
    /// instead of indexed.
    pub const MAX_DIR_INDEX_BYTES: u64 = 512 << 10;
    /// Largest journal (in blocks) we scan for replay.
    pub const MAX_JOURNAL_BLOCKS: u64 = 1 << 22;
    /// Most distinct filesystem blocks a replay may overlay.
    pub const MAX_REPLAY_BLOCKS: usize = 1 << 18;
    /// Most distinct revoked blocks tracked during replay.
    pub const MAX_REVOKE_RECORDS: usize = 1 << 20;
}

/// Inode number of the root directory.
const ROOT_INO: u32 = 2;

/// Little-endian reads that never panic: out-of-range bytes read as 0.
/// Callers check lengths for variable offsets; for fixed structures the
/// buffer is known to be large enough.
fn le16(b: &[u8], off: usize) -> u16 {
    off.checked_add(2)
        .and_then(|end| b.get(off..end))
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn le32(b: &[u8], off: usize) -> u32 {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// An opened ext2/3/4 filesystem.
pub struct Ext4 {
    src: Source,
    sb: Superblock,
    cache: BlockCache,
    dir_cache: DirCache,
    /// Journal replay overlay: fs block -> where its committed contents are.
    overlay: BTreeMap<u64, JournalBlock>,
    needs_recovery: bool,
    replayed_transactions: u32,
}

impl std::fmt::Debug for Ext4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4")
            .field("type", &self.sb.type_name())
            .field("block_size", &self.sb.block_size)
            .field("blocks", &self.sb.blocks_count)
            .field("replayed_blocks", &self.overlay.len())
            .field("needs_recovery", &self.needs_recovery)
            .finish()
    }
}

impl Ext4 {
    /// Parse and validate the superblock (and the root inode).
    ///
    /// If the filesystem needs recovery, committed jbd2 transactions are
    /// replayed in memory (nothing is ever written to `source`): reads of
    /// journaled blocks — including the superblock and group descriptors —
    /// return their committed contents. A journal that cannot be replayed
    /// (external, corrupt) is skipped with a warning and
    /// [`Ext4::needs_recovery`] returns true.
    pub fn open(source: Source) -> Result<Self, FsError> {
        let mut raw = vec![0u8; SUPERBLOCK_SIZE];
        source.read_exact_at(&mut raw, SUPERBLOCK_OFFSET)?;
        let sb = Superblock::parse(&raw, source.size())?;
        let mut fs = Ext4::with_overlay(source.clone(), sb.clone(), BTreeMap::new());
        let wants_recovery =
            sb.has_incompat(INCOMPAT_RECOVER) && sb.compat & COMPAT_HAS_JOURNAL != 0;
        if wants_recovery {
            match journal::replay(&fs)
                .and_then(|r| r.map(|r| Ext4::replayed(&source, &sb, r)).transpose())
            {
                Ok(None) => {} // clean journal: nothing to replay
                Ok(Some(replayed)) => return Ok(replayed),
                Err(e) => {
                    // A journal we cannot replay: still offer the (possibly
                    // stale) on-disk view and let the caller warn.
                    tracing::warn!(error = %e, "ext4: journal needs recovery but cannot be replayed; reading without it");
                    fs.needs_recovery = true;
                }
            }
        }
        // A filesystem whose root cannot be read is useless; this also
        // validates group 0's descriptor.
        fs.inode(ROOT_INO)?;
        Ok(fs)
    }

    /// The filesystem seen through a journal replay overlay. The superblock
    /// and group descriptors may themselves be in the journal, so they are
    /// re-read through it.
    fn replayed(
        source: &Source,
        sb: &Superblock,
        replay: journal::Replay,
    ) -> Result<Ext4, FsError> {
        let mut fs = Ext4::with_overlay(source.clone(), sb.clone(), replay.overlay);
        let sb_block = SUPERBLOCK_OFFSET / sb.block_size;
        let sb_off = (SUPERBLOCK_OFFSET % sb.block_size) as usize;
        let block = fs.block(sb_block)?;
        let new_sb = Superblock::parse(block.get(sb_off..).unwrap_or(&[]), source.size())?;
        if new_sb.block_size != sb.block_size {
            return Err(FsError::Corrupt(
                "journal replay changes the block size".into(),
            ));
        }
        fs.sb = new_sb;
        fs.cache.clear();
        fs.dir_cache.clear();
        fs.needs_recovery = replay.incomplete;
        fs.replayed_transactions = replay.transactions;
        fs.inode(ROOT_INO)?;
        Ok(fs)
    }

    fn with_overlay(src: Source, sb: Superblock, overlay: BTreeMap<u64, JournalBlock>) -> Self {
        // At least 16 blocks even with 64 KiB blocks.
        let capacity = limits::CACHE_BYTES.max(16 * sb.block_size);
        Ext4 {
            src,
            sb,
            cache: BlockCache::new(capacity),
            dir_cache: DirCache::new(limits::DIR_CACHE_BYTES),
            overlay,
            needs_recovery: false,
            replayed_transactions: 0,
        }
    }

    /// True if `source` carries an ext2/3/4 superblock magic (cheap probe,
    /// no validation).
    pub fn probe(source: &dyn ReadAt) -> bool {
        let mut m = [0u8; 2];
        source
            .read_exact_at(&mut m, SUPERBLOCK_OFFSET + 0x38)
            .is_ok()
            && u16::from_le_bytes(m) == MAGIC
    }

    /// True if the filesystem was not cleanly unmounted and its journal
    /// could not be (fully) replayed in memory — external journal, corrupt
    /// journal, or pending fast commits. Contents may then be stale.
    pub fn needs_recovery(&self) -> bool {
        self.needs_recovery
    }

    /// Number of filesystem blocks whose contents come from the journal
    /// (0 for a clean filesystem).
    pub fn replayed_blocks(&self) -> usize {
        self.overlay.len()
    }

    /// Number of committed journal transactions replayed in memory.
    pub fn replayed_transactions(&self) -> u32 {
        self.replayed_transactions
    }

    /// Like [`FileSystem::open`], but the reader can also seek (to read the
    /// tail of a huge sparse file without streaming its holes).
    pub fn open_file(&self, path: &[u8]) -> Result<Ext4File<'_>, FsError> {
        let inode = self.lookup(path)?;
        if inode.kind() != FileKind::File {
            return Err(FsError::WrongKind);
        }
        Ext4File::new(self, inode)
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.sb.block_size
    }

    /// Read one block bypassing cache and overlay (journal blocks).
    fn read_raw_block(&self, blk: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let off = blk
            .checked_mul(self.sb.block_size)
            .ok_or_else(|| FsError::Corrupt(format!("block {blk} offset overflows")))?;
        self.src.read_exact_at(buf, off)?;
        Ok(())
    }

    /// Read one block, through the journal overlay, without caching.
    fn read_block_uncached(&self, blk: u64, buf: &mut [u8]) -> Result<(), FsError> {
        match self.overlay.get(&blk) {
            Some(j) => {
                self.read_raw_block(j.phys, buf)?;
                if j.escaped
                    && let Some(head) = buf.get_mut(..4)
                {
                    head.copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                }
                Ok(())
            }
            None => self.read_raw_block(blk, buf),
        }
    }

    /// A metadata block, cached.
    fn block(&self, blk: u64) -> Result<Arc<[u8]>, FsError> {
        if blk >= self.sb.blocks_count {
            return Err(FsError::Corrupt(format!(
                "block {blk} beyond the filesystem ({} blocks)",
                self.sb.blocks_count
            )));
        }
        if let Some(b) = self.cache.get(blk) {
            return Ok(b);
        }
        let mut buf = vec![0u8; self.sb.block_size as usize];
        self.read_block_uncached(blk, &mut buf)?;
        let data: Arc<[u8]> = buf.into();
        self.cache.insert(blk, data.clone(), self.sb.block_size);
        Ok(data)
    }

    /// File data from physical block `pblk`, `off` bytes in, filling `buf`
    /// (which may span many contiguous blocks). Not cached: file data would
    /// only evict metadata.
    fn read_data(&self, pblk: u64, off: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let bs = self.sb.block_size;
        let nblocks = (off + buf.len() as u64).div_ceil(bs);
        let journaled = !self.overlay.is_empty()
            && self
                .overlay
                .range(pblk..pblk.saturating_add(nblocks))
                .next()
                .is_some();
        if !journaled {
            let byte = pblk
                .checked_mul(bs)
                .and_then(|b| b.checked_add(off))
                .ok_or_else(|| FsError::Corrupt(format!("block {pblk} offset overflows")))?;
            self.src.read_exact_at(buf, byte)?;
            return Ok(());
        }
        // Some blocks come from the journal: go block by block.
        let mut done = 0usize;
        let mut blk = pblk;
        let mut in_blk = off as usize;
        let mut tmp = vec![0u8; bs as usize];
        while done < buf.len() {
            self.read_block_uncached(blk, &mut tmp)?;
            let n = (tmp.len() - in_blk).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&tmp[in_blk..in_blk + n]);
            done += n;
            in_blk = 0;
            blk += 1;
        }
        Ok(())
    }

    /// Read and decode inode `ino`.
    fn inode(&self, ino: u32) -> Result<Inode, FsError> {
        let sb = &self.sb;
        if ino == 0 || u64::from(ino) > sb.inodes_count {
            return Err(FsError::Corrupt(format!(
                "inode number {ino} out of range (1..={})",
                sb.inodes_count
            )));
        }
        let idx = u64::from(ino - 1);
        let group = idx / sb.inodes_per_group;
        let index = idx % sb.inodes_per_group;
        let (gd_block, gd_off) = sb.descriptor_location(group)?;
        let gd = self.block(gd_block)?;
        let mut table = u64::from(le32(&gd, gd_off + 0x8));
        if sb.desc_size >= 64 {
            table |= u64::from(le32(&gd, gd_off + 0x28)) << 32;
        }
        match table.checked_add(sb.inode_table_blocks()) {
            Some(end) if table != 0 && end <= sb.blocks_count => {}
            _ => {
                return Err(FsError::Corrupt(format!(
                    "group {group}: inode table at block {table} outside the filesystem"
                )));
            }
        }
        let byte = index * sb.inode_size;
        let blk = table + byte / sb.block_size;
        let off = (byte % sb.block_size) as usize;
        let data = self.block(blk)?;
        // inode_size divides block_size (both powers of two), so the record
        // never straddles blocks.
        let raw = data
            .get(off..off + sb.inode_size as usize)
            .ok_or_else(|| FsError::Corrupt(format!("inode {ino}: record outside its block")))?;
        let inode = Inode::parse(ino, raw, sb)?;
        if inode.mode == 0 || inode.links == 0 {
            return Err(FsError::Corrupt(format!(
                "inode {ino} is not in use (mode {:o}, links {})",
                inode.mode, inode.links
            )));
        }
        Ok(inode)
    }

    /// Inode number of `name` in directory `dir`, if present.
    ///
    /// The first lookup in a directory indexes all its names (cached, LRU,
    /// bounded), so later lookups there are hash lookups; directories too
    /// big to index are scanned linearly each time.
    fn find_entry(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>, FsError> {
        if name.len() > 255 {
            return Ok(None);
        }
        if let Some(index) = self.dir_cache.get(u64::from(dir.ino)) {
            return Ok(index.get(name).copied());
        }
        let mut index: HashMap<Box<[u8]>, u32> = HashMap::new();
        let mut weight = 0u64;
        let mut indexing = true;
        let mut found = None;
        let flow = self.walk_dir(dir, |ino, n, _| {
            if found.is_none() && n == name {
                found = Some(ino);
            }
            if indexing {
                weight += dir_entry_weight(n.len());
                if weight > limits::MAX_DIR_INDEX_BYTES {
                    indexing = false;
                    index = HashMap::new();
                } else {
                    // First occurrence wins, as in a linear scan.
                    index.entry(n.into()).or_insert(ino);
                }
            }
            if !indexing && found.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if let Err(e) = flow {
            // A damaged block after the name we want must not hide it (a
            // plain linear search would have stopped before it).
            return if found.is_some() { Ok(found) } else { Err(e) };
        }
        if indexing {
            let index: DirIndex = Arc::new(index);
            self.dir_cache
                .insert(u64::from(dir.ino), index, weight + 64);
        }
        Ok(found)
    }

    /// Resolve `path` component by component from the root, without
    /// following symlinks.
    fn lookup(&self, path: &[u8]) -> Result<Inode, FsError> {
        let mut inode = self.inode(ROOT_INO)?;
        let components = path
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty() && *c != b".");
        for (i, comp) in components.enumerate() {
            if i >= limits::MAX_PATH_COMPONENTS {
                return Err(FsError::Limit(format!(
                    "path has more than {} components",
                    limits::MAX_PATH_COMPONENTS
                )));
            }
            if inode.kind() != FileKind::Dir {
                return Err(FsError::NotADirectory);
            }
            let ino = self.find_entry(&inode, comp)?.ok_or(FsError::NotFound)?;
            inode = self.inode(ino)?;
        }
        Ok(inode)
    }

    /// Target of a symlink inode.
    fn symlink_target(&self, inode: Inode) -> Result<Vec<u8>, FsError> {
        let ino = inode.ino;
        inode.check_not_encrypted()?;
        if inode.size > limits::MAX_SYMLINK_LEN {
            return Err(FsError::Limit(format!(
                "inode {ino}: symlink of {} bytes exceeds {}",
                inode.size,
                limits::MAX_SYMLINK_LEN
            )));
        }
        let len = inode.size as usize;
        if inode.is_fast_symlink(&self.sb) {
            if len == 0 || len >= I_BLOCK_LEN {
                return Err(FsError::Corrupt(format!(
                    "inode {ino}: invalid fast symlink length {len}"
                )));
            }
            return Ok(inode.i_block[..len].to_vec());
        }
        let mut out = Vec::with_capacity(len);
        file::Ext4File::new(self, inode)?
            .take(len as u64)
            .read_to_end(&mut out)?;
        Ok(out)
    }
}

impl FileSystem for Ext4 {
    fn type_name(&self) -> &'static str {
        self.sb.type_name()
    }

    fn uuid(&self) -> Option<[u8; 16]> {
        (self.sb.uuid != [0u8; 16]).then_some(self.sb.uuid)
    }

    fn label(&self) -> Option<String> {
        let name = &self.sb.volume_name;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let label = String::from_utf8_lossy(&name[..end]).into_owned();
        (!label.is_empty()).then_some(label)
    }

    fn lstat(&self, path: &[u8]) -> Result<Option<Metadata>, FsError> {
        match self.lookup(path) {
            Ok(inode) => Ok(Some(inode.metadata())),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let dir = self.lookup(path)?;
        let mut out = Vec::new();
        // Entries without a (valid) recorded type: (index in out, inode),
        // resolved from their inodes after the scan.
        let mut unknown: Vec<(usize, u32)> = Vec::new();
        self.walk_dir(&dir, |ino, name, ft| {
            if name == b"." || name == b".." {
                return ControlFlow::Continue(());
            }
            let kind = dir::kind_from_file_type(ft).unwrap_or_else(|| {
                unknown.push((out.len(), ino));
                FileKind::Other
            });
            out.push(DirEntry {
                name: name.to_vec(),
                kind,
            });
            ControlFlow::<()>::Continue(())
        })?;
        for (idx, ino) in unknown {
            let kind = self.inode(ino)?.kind();
            if let Some(e) = out.get_mut(idx) {
                e.kind = kind;
            }
        }
        Ok(out)
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, FsError> {
        let inode = self.lookup(path)?;
        if inode.kind() != FileKind::Symlink {
            return Err(FsError::WrongKind);
        }
        self.symlink_target(inode)
    }

    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + Send + '_>, FsError> {
        let inode = self.lookup(path)?;
        if inode.kind() != FileKind::File {
            return Err(FsError::WrongKind);
        }
        Ok(Box::new(file::Ext4File::new(self, inode)?))
    }
}

/// Fuzzing entry point: open `data` as an ext2/3/4 image and walk the whole
/// tree (bounded: at most 10 000 inodes, depth 64, 64 KiB per file),
/// ignoring every error; then walk it again through the guest view with the
/// [`Walker`](crate::guest::Walker) every rule uses, where a directory entry
/// pointing back at its own directory or an ancestor (a fuzzer gets one by
/// changing an inode number) must be listed once and the budgets must hold.
/// Must never panic, hang or allocate unboundedly.
pub fn fuzz_one(data: &[u8]) {
    use crate::guest::{Guest, Visit, WalkLimits, Walker};

    let src: Source = Arc::new(data.to_vec());
    if !Ext4::probe(&*src) {
        return;
    }
    let Ok(fs) = Ext4::open(src) else { return };
    let _ = (fs.type_name(), fs.uuid(), fs.label());
    let fs = Arc::new(fs);
    walk_raw(&fs);

    let guest = Guest::new(fs, "fuzz input".into());
    let limits = WalkLimits {
        max_dirs: 2_000,
        max_entries: 10_000,
        max_depth: 64,
    };
    let mut walker = Walker::new(&guest, limits);
    walker.walk("/", |e| {
        if e.kind == FileKind::File {
            let _ = guest.read_head(e.path, 4096);
        }
        Visit::Descend
    });
    assert!(walker.dirs() <= limits.max_dirs && walker.entries() <= limits.max_entries);
    let _ = (
        walker.exhausted_note(),
        walker.revisit_note(),
        walker.too_deep_note(),
    );
}

/// The first half of [`fuzz_one`]: the reader alone, path by path, each
/// directory inode once (a loop would only burn the budget).
fn walk_raw(fs: &Ext4) {
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), 0)];
    let mut listed = std::collections::HashSet::from([u64::from(ROOT_INO)]);
    let mut budget = 10_000usize;
    let mut sink = vec![0u8; 8192];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(&dir) else {
            continue;
        };
        for e in entries {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let mut path = dir.clone();
            if path.last() != Some(&b'/') {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            let Ok(Some(meta)) = fs.lstat(&path) else {
                continue;
            };
            match meta.kind {
                FileKind::Dir if depth < 64 && listed.insert(meta.ino) => {
                    stack.push((path, depth + 1))
                }
                FileKind::File => {
                    if let Ok(r) = fs.open(&path) {
                        let mut r = r.take(64 * 1024);
                        while let Ok(n) = r.read(&mut sink) {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                }
                FileKind::Symlink => {
                    let _ = fs.read_link(&path);
                }
                _ => {}
            }
        }
    }
}

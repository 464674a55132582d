//! Our own read-only qcow2 reader: versions 2 and 3, zlib- and
//! zstd-compressed clusters, zero clusters, extended L2 entries
//! (subclusters), and a backing source for unallocated ranges.
//!
//! Why not imago: compressed images are what marketplaces ship, and reading
//! them fast needs the decompressed clusters cached by their host offset, so
//! that a cluster is inflated once per run however many small reads (4 KiB
//! filesystem blocks, from several rule threads) land in it. imago inflates
//! a compressed cluster on every read and does not show where it lives.
//!
//! Every header number and table entry is untrusted and checked before use;
//! a bad entry is an `InvalidData` error naming the guest offset, never a
//! panic. Memory is bounded: L2 tables and decompressed clusters live in
//! LRU caches of fixed byte size ([`limits`](crate::limits)).

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::cache::Lru;
use crate::limits::{
    QCOW2_CLUSTER_CACHE_BYTES, QCOW2_L2_CACHE_BYTES, QCOW2_MAX_L1_ENTRIES, QCOW2_MAX_READ_BATCH,
};
use crate::source::{RawFile, ReadAt, Source, check_bounds};

const MAGIC: &[u8; 4] = b"QFI\xfb";

/// How compressed clusters are encoded (`compression_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (the default, and the only choice for qcow2 v2).
    Zlib,
    /// One zstd frame per cluster (qcow2 v3, `compression_type=zstd`).
    Zstd,
}

/// Why a qcow2 header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The header is inconsistent.
    #[error("{0}")]
    Corrupt(String),
    /// A valid header using something we do not read.
    #[error("{0}")]
    Unsupported(String),
    /// The header asks us to open a host file it names.
    #[error("{0}")]
    Unsafe(String),
    /// Reading the file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The validated header of a qcow2 file.
#[derive(Clone, Debug)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Entries in the active L1 table.
    pub l1_entries: u64,
    /// Host offset of the active L1 table.
    pub l1_offset: u64,
    /// Encoding of compressed clusters.
    pub compression: Compression,
    /// L2 entries are 128 bits with a subcluster bitmap.
    pub extended_l2: bool,
    /// Backing file name as written in the header (untrusted).
    pub backing_name: Option<String>,
    /// Backing file format from the header extension, if any.
    pub backing_format: Option<String>,
}

fn be32(h: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
}
fn be64(h: &[u8], o: usize) -> u64 {
    (u64::from(be32(h, o)) << 32) | u64::from(be32(h, o + 4))
}

// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;

impl Header {
    /// Read and validate the header of `file`.
    pub fn read(file: &RawFile) -> Result<Header, HeaderError> {
        let corrupt = |w: String| HeaderError::Corrupt(w);
        // The header, its extensions and the backing file name live in the
        // first cluster: read 64 KiB (the usual cluster size), then exactly
        // the first cluster once its size is known.
        let head_len = file.size().min(1 << 16) as usize;
        if head_len < 72 {
            return Err(corrupt("qcow2 header is truncated".into()));
        }
        let mut h = vec![0u8; head_len];
        file.read_exact_at(&mut h, 0)?;
        if &h[0..4] != MAGIC {
            return Err(corrupt("no qcow2 magic".into()));
        }
        let version = be32(&h, 4);
        if !(2..=3).contains(&version) {
            return Err(HeaderError::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(format!(
                "cluster_bits {cluster_bits} out of range 9..=21"
            )));
        }
        let cluster = 1u64 << cluster_bits;
        let first = file.size().min(cluster) as usize;
        if first > h.len() {
            h.resize(first, 0);
            file.read_exact_at(&mut h, 0)?;
        }
        h.truncate(first);
        if h.len() < 72 {
            return Err(corrupt("qcow2 header is truncated".into()));
        }
        let size = be64(&h, 24);
        if be32(&h, 32) != 0 {
            return Err(HeaderError::Unsupported(
                "encrypted qcow2 images are not supported".into(),
            ));
        }
        let l1_entries = u64::from(be32(&h, 36));
        let l1_offset = be64(&h, 40);

        let (header_length, incompatible, compression_type) = if version == 2 {
            (72usize, 0u64, 0u8)
        } else {
            if h.len() < 104 {
                return Err(corrupt("qcow2 v3 header is truncated".into()));
            }
            let header_length = be32(&h, 100) as usize;
            if header_length < 104 || header_length > h.len() {
                return Err(corrupt(format!(
                    "qcow2 header length {header_length} is outside 104..={}",
                    h.len()
                )));
            }
            let ct = if header_length > 104 { h[104] } else { 0 };
            (header_length, be64(&h, 72), ct)
        };
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt("the image is marked corrupt".into()));
        }
        let unknown = incompatible
            & !(INCOMPAT_DIRTY | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2);
        if unknown != 0 {
            return Err(HeaderError::Unsupported(format!(
                "qcow2 incompatible features {unknown:#x}"
            )));
        }
        let compression = match (compression_type, incompatible & INCOMPAT_COMPRESSION != 0) {
            (0, _) => Compression::Zlib,
            (1, true) => Compression::Zstd,
            (1, false) => {
                return Err(corrupt(
                    "compression type is zstd but its incompatible feature bit is clear".into(),
                ));
            }
            (other, _) => {
                return Err(HeaderError::Unsupported(format!(
                    "qcow2 compression type {other}"
                )));
            }
        };
        let extended_l2 = incompatible & INCOMPAT_EXTL2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(corrupt(format!(
                "extended L2 entries need clusters of at least 16 KiB, not {cluster}"
            )));
        }

        // Backing file name: inside the first cluster, at most 1023 bytes.
        let backing_offset = be64(&h, 8);
        let backing_size = u64::from(be32(&h, 16));
        let backing_name = if backing_offset == 0 || backing_size == 0 {
            None
        } else {
            let end = backing_offset
                .checked_add(backing_size)
                .filter(|&e| e <= h.len() as u64 && backing_size <= 1023)
                .ok_or_else(|| {
                    corrupt("backing file name lies outside the header cluster".into())
                })?;
            Some(String::from_utf8_lossy(&h[backing_offset as usize..end as usize]).into_owned())
        };

        // Header extensions: (type, length, data padded to 8) until type 0.
        let mut backing_format = None;
        let mut data_file = None;
        let mut at = header_length;
        while at + 8 <= h.len() {
            let (kind, elen) = (be32(&h, at), be32(&h, at + 4) as usize);
            if kind == EXT_END {
                break;
            }
            let data = at + 8;
            let Some(end) = data.checked_add(elen).filter(|&e| e <= h.len()) else {
                return Err(corrupt(
                    "header extension runs past the header cluster".into(),
                ));
            };
            let text = || String::from_utf8_lossy(&h[data..end]).into_owned();
            match kind {
                EXT_BACKING_FORMAT => backing_format = Some(text()),
                EXT_DATA_FILE => data_file = Some(text()),
                _ => {}
            }
            at = data + elen.div_ceil(8) * 8;
        }
        // A data file name without the feature bit is ignored by QEMU
        // today; refused anyway: nothing an image names outside itself is
        // opened.
        if incompatible & INCOMPAT_DATA_FILE != 0 || data_file.is_some() {
            return Err(HeaderError::Unsafe(format!(
                "qcow2 uses an external data file ({}); refusing to read a host file the image names",
                data_file.as_deref().unwrap_or("unnamed")
            )));
        }

        let entry_bytes = if extended_l2 { 16 } else { 8 };
        let needed = size.div_ceil(cluster).div_ceil(cluster / entry_bytes);
        if l1_entries > QCOW2_MAX_L1_ENTRIES || l1_entries < needed {
            return Err(corrupt(format!(
                "L1 table of {l1_entries} entries does not fit a {size}-byte disk"
            )));
        }
        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_entries,
            l1_offset,
            compression,
            extended_l2,
            backing_name,
            backing_format,
        })
    }
}

/// Counters of a [`Qcow2`] reader's decompressed-cluster cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Compressed clusters inflated.
    pub decompressed: u64,
    /// Of these, inflated ahead of the reader by the readahead thread.
    pub prefetched: u64,
    /// Reads of a compressed cluster served from the cache (or from another
    /// thread's inflation of it).
    pub hits: u64,
    /// Clusters dropped to stay within the bound. While this is 0, no
    /// cluster was inflated twice.
    pub evicted: u64,
    /// Compressed bytes read from the file.
    pub compressed_bytes: u64,
    /// Host reads of compressed data (one read can fetch several clusters).
    pub host_reads: u64,
    /// Decompressed bytes held now.
    pub held_bytes: u64,
    /// Most decompressed bytes ever held.
    pub peak_bytes: u64,
    /// The bound on held bytes.
    pub bound_bytes: u64,
}

/// One decompressed cluster, filled by whichever thread claimed it first;
/// other readers of the same cluster wait for it instead of inflating it too.
type Slot = Arc<OnceLock<Result<Arc<[u8]>, String>>>;

/// A qcow2 image as a [`ReadAt`]. Sequential reads of compressed data
/// (a large file streamed by a rule) are helped by a background thread that
/// inflates the next clusters while the reader works on the current ones.
pub struct Qcow2 {
    image: Arc<Image>,
    ahead: Readahead,
}

/// The image proper, shared with the readahead thread.
struct Image {
    file: RawFile,
    header: Header,
    l1: Vec<u64>,
    backing: Option<Source>,
    l2_cache: Lru<Arc<[u64]>>,
    clusters: Lru<Slot>,
    decompressed: AtomicU64,
    hits: AtomicU64,
    prefetched: AtomicU64,
    compressed_bytes: AtomicU64,
    host_reads: AtomicU64,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("qcow2: {}", what.into()),
    )
}

/// Where a guest range comes from.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// Stored uncompressed at this host offset.
    Data(u64),
    /// Reads as zeros.
    Zero,
    /// Unallocated here: the backing source (or zeros).
    Backing,
    /// Inside the compressed cluster stored at `host`, `len` bytes long.
    Compressed { host: u64, len: u64 },
}

const L2E_COMPRESSED: u64 = 1 << 62;
const L2E_ZERO: u64 = 1;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

impl Qcow2 {
    /// Open `file` (whose header is `header`); `backing` supplies
    /// unallocated ranges.
    pub fn open(file: RawFile, header: Header, backing: Option<Source>) -> io::Result<Self> {
        Self::open_with_cache(file, header, backing, QCOW2_CLUSTER_CACHE_BYTES)
    }

    /// Like [`Qcow2::open`], keeping at most `cache_bytes` of decompressed
    /// clusters (at least four clusters).
    pub fn open_with_cache(
        file: RawFile,
        header: Header,
        backing: Option<Source>,
        cache_bytes: u64,
    ) -> io::Result<Self> {
        let l1_bytes = header.l1_entries * 8;
        check_bounds(header.l1_offset, l1_bytes as usize, file.size())
            .map_err(|_| bad("L1 table lies past the end of the file"))?;
        let mut raw = vec![0u8; l1_bytes as usize];
        file.read_exact_at(&mut raw, header.l1_offset)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        let cluster = 1u64 << header.cluster_bits;
        let image = Image {
            file,
            l1,
            backing,
            // At least two tables, whatever the cluster size.
            l2_cache: Lru::new(QCOW2_L2_CACHE_BYTES.max(2 * cluster)),
            clusters: Lru::new(cache_bytes.max(4 * cluster)),
            header,
            decompressed: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            compressed_bytes: AtomicU64::new(0),
            host_reads: AtomicU64::new(0),
        };
        Ok(Qcow2 {
            image: Arc::new(image),
            ahead: Readahead::default(),
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.image.header
    }

    /// Counters of the decompressed-cluster cache.
    pub fn cache_stats(&self) -> CacheStats {
        let i = &self.image;
        let c = i.clusters.counts();
        CacheStats {
            decompressed: i.decompressed.load(Ordering::Relaxed),
            prefetched: i.prefetched.load(Ordering::Relaxed),
            hits: i.hits.load(Ordering::Relaxed),
            evicted: c.evicted,
            compressed_bytes: i.compressed_bytes.load(Ordering::Relaxed),
            host_reads: i.host_reads.load(Ordering::Relaxed),
            held_bytes: c.weight,
            peak_bytes: c.peak,
            bound_bytes: i.clusters.capacity(),
        }
    }

    /// Note a read of `len` bytes at `offset`; if it continues an earlier
    /// one, have the next compressed clusters of that stream inflated in the
    /// background.
    fn read_ahead(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        let (from, to) = {
            let mut st = self.ahead.lock();
            st.tick += 1;
            let tick = st.tick;
            let Some(s) = st
                .streams
                .iter_mut()
                .find(|s| s.next == offset && s.next != 0)
            else {
                // A new stream takes the least recently used slot, sparing
                // established streams while any slot holds a short one: a
                // file streamed by one rule keeps its readahead however many
                // small reads other rules make meanwhile.
                let victim = (0..STREAMS).min_by_key(|&i| {
                    let s = st.streams[i];
                    (s.run >= READAHEAD_MIN_RUN, s.used)
                });
                if let Some(at) = victim {
                    st.streams[at] = Stream {
                        next: end,
                        until: end,
                        run: len,
                        used: tick,
                    };
                }
                return;
            };
            s.used = tick;
            s.next = end;
            s.run = s.run.saturating_add(len);
            // Like the kernel's readahead: nothing for short runs (small
            // files), then a window that grows with the run, so the end of
            // a stream wastes little.
            if s.run < READAHEAD_MIN_RUN {
                return;
            }
            let window = s.run.min(READAHEAD_BYTES);
            if s.until >= end.saturating_add(window / 2) {
                return;
            }
            let from = s.until.max(end);
            let to = end.saturating_add(window).min(self.image.header.size);
            s.until = to;
            (from, to)
        };
        let mut job = Vec::new();
        let mut pos = from;
        while pos < to {
            let Ok((piece, n)) = self.image.map(pos) else {
                break;
            };
            if let Piece::Compressed { host, len } = piece
                && !self.image.clusters.contains(host)
            {
                job.push((host, len));
            }
            pos = pos.saturating_add(n.max(1));
        }
        if !job.is_empty() {
            self.ahead.submit(&self.image, job);
        }
    }
}

impl Image {
    fn cluster(&self) -> u64 {
        1u64 << self.header.cluster_bits
    }

    fn l2_table(&self, offset: u64) -> io::Result<Arc<[u64]>> {
        if let Some(t) = self.l2_cache.get(offset) {
            return Ok(t);
        }
        let cluster = self.cluster();
        if !offset.is_multiple_of(cluster) {
            return Err(bad(format!("unaligned L2 table at {offset}")));
        }
        check_bounds(offset, cluster as usize, self.file.size()).map_err(|_| {
            bad(format!(
                "L2 table at {offset} lies past the end of the file"
            ))
        })?;
        let mut raw = vec![0u8; cluster as usize];
        self.file.read_exact_at(&mut raw, offset)?;
        let table: Arc<[u64]> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        self.l2_cache.insert(offset, table.clone(), cluster);
        Ok(table)
    }

    /// What backs guest offset `pos`, and for how many bytes from `pos`.
    fn map(&self, pos: u64) -> io::Result<(Piece, u64)> {
        let bits = self.header.cluster_bits;
        let cluster = self.cluster();
        let index = pos >> bits;
        let within = pos & (cluster - 1);
        let rest = cluster - within;
        let per_entry = if self.header.extended_l2 { 2 } else { 1 };
        let l2_entries = cluster / 8 / per_entry;
        let l1e = usize::try_from(index / l2_entries)
            .ok()
            .and_then(|i| self.l1.get(i).copied())
            .unwrap_or(0);
        let l2_offset = l1e & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok((Piece::Backing, rest));
        }
        let table = self.l2_table(l2_offset)?;
        let slot = ((index % l2_entries) * per_entry) as usize;
        let (Some(&entry), bitmap) = (table.get(slot), table.get(slot + 1).copied()) else {
            return Err(bad(format!("L2 table at {l2_offset} is short")));
        };
        if entry & L2E_COMPRESSED != 0 {
            // Compressed cluster descriptor: the host offset in the low x
            // bits, the count of extra 512-byte sectors above them.
            let x = 62 - (bits - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = ((entry & ((1u64 << 62) - 1)) >> x) + 1;
            let len = sectors * 512 - (host & 511);
            // The last compressed cluster may end before its last sector.
            let len = len.min(self.file.size().saturating_sub(host));
            if len == 0 {
                return Err(bad(format!(
                    "compressed cluster for guest offset {pos} lies past the end of the file"
                )));
            }
            return Ok((Piece::Compressed { host, len }, rest));
        }
        let host = entry & OFFSET_MASK;
        if host != 0 && !host.is_multiple_of(cluster) {
            return Err(bad(format!(
                "unaligned data cluster at {host} for guest offset {pos}"
            )));
        }
        if self.header.extended_l2 {
            // 32 subclusters: allocation bits low, reads-as-zero bits high.
            let bitmap = bitmap.unwrap_or(0);
            let sub = cluster / 32;
            let i = within / sub;
            let sub_rest = sub - within % sub;
            let (alloc, zero) = ((bitmap >> i) & 1 != 0, (bitmap >> (32 + i)) & 1 != 0);
            return match (alloc, zero) {
                (true, true) => Err(bad(format!(
                    "subcluster of guest offset {pos} is both allocated and zero"
                ))),
                (true, false) if host == 0 => Err(bad(format!(
                    "allocated subcluster of guest offset {pos} has no host cluster"
                ))),
                (true, false) => Ok((Piece::Data(host + within), sub_rest)),
                (false, true) => Ok((Piece::Zero, sub_rest)),
                (false, false) => Ok((Piece::Backing, sub_rest)),
            };
        }
        if entry & L2E_ZERO != 0 {
            return Ok((Piece::Zero, rest));
        }
        if host == 0 {
            return Ok((Piece::Backing, rest));
        }
        Ok((Piece::Data(host + within), rest))
    }

    /// The decompressed cluster stored at `host`, from the cache or inflated
    /// now. `batch` is compressed bytes already read that may cover it.
    /// `for_reader` is false for the readahead thread (not counted as hits).
    fn compressed_cluster(
        &self,
        host: u64,
        len: u64,
        batch: Option<&Batch>,
        for_reader: bool,
    ) -> io::Result<Arc<[u8]>> {
        let cluster = self.cluster();
        let (slot, _) = self
            .clusters
            .get_or_insert_with(host, cluster, || Arc::new(OnceLock::new()));
        let mut inflated_here = false;
        let result = slot.get_or_init(|| {
            inflated_here = true;
            if !for_reader {
                self.prefetched.fetch_add(1, Ordering::Relaxed);
            }
            self.inflate(host, len, batch)
        });
        if for_reader && !inflated_here {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(data) => Ok(data.clone()),
            Err(e) => {
                let e = bad(e.clone());
                // Forget the failure: a later read retries (and fails again
                // on a corrupt image, but not on a passing I/O error).
                self.clusters.remove_if(host, |s| Arc::ptr_eq(s, &slot));
                Err(e)
            }
        }
    }

    fn inflate(&self, host: u64, len: u64, batch: Option<&Batch>) -> Result<Arc<[u8]>, String> {
        self.decompressed.fetch_add(1, Ordering::Relaxed);
        let cluster = self.cluster() as usize;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let Scratch {
                input,
                output,
                zlib,
                zstd,
            } = &mut *s;
            let comp: &[u8] = match batch.and_then(|b| b.slice(host, len)) {
                Some(c) => c,
                None => {
                    input.resize(len as usize, 0);
                    self.file
                        .read_exact_at(input, host)
                        .map_err(|e| format!("compressed cluster at {host}: {e}"))?;
                    self.compressed_bytes.fetch_add(len, Ordering::Relaxed);
                    self.host_reads.fetch_add(1, Ordering::Relaxed);
                    input
                }
            };
            output.resize(cluster, 0);
            match self.header.compression {
                Compression::Zlib => inflate_zlib(zlib, comp, output),
                Compression::Zstd => inflate_zstd(zstd, comp, output),
            }
            .map_err(|e| format!("compressed cluster at {host}: {e}"))?;
            Ok(Arc::from(&output[..]))
        })
    }

    /// Read the compressed data of the uncached clusters `wanted` (host
    /// offset, length; in guest order) with one host read where they are
    /// stored back to back, as `qemu-img convert -c` writes them.
    fn read_batch(&self, wanted: &[(u64, u64)]) -> Option<Batch> {
        let &(first, _) = wanted.first()?;
        let mut end = first;
        let mut n = 0;
        for &(host, len) in wanted {
            // A small gap is read through; anything out of order ends the batch.
            if host < first || host > end.saturating_add(BATCH_GAP) {
                break;
            }
            let e = host.saturating_add(len);
            if e - first > QCOW2_MAX_READ_BATCH {
                break;
            }
            end = end.max(e);
            n += 1;
        }
        if n < 2 {
            return None;
        }
        let mut data = vec![0u8; usize::try_from(end - first).ok()?];
        // On failure each cluster is read alone, and its error reported.
        self.file.read_exact_at(&mut data, first).ok()?;
        self.compressed_bytes
            .fetch_add(end - first, Ordering::Relaxed);
        self.host_reads.fetch_add(1, Ordering::Relaxed);
        Some(Batch { start: first, data })
    }

    fn read_backing(&self, out: &mut [u8], pos: u64) -> io::Result<()> {
        match &self.backing {
            Some(b) if pos < b.size() => {
                let n = usize::try_from(b.size() - pos).map_or(out.len(), |n| n.min(out.len()));
                b.read_exact_at(&mut out[..n], pos)?;
                out[n..].fill(0);
            }
            _ => out.fill(0),
        }
        Ok(())
    }
}

/// Largest gap between two compressed clusters read through in one batch.
const BATCH_GAP: u64 = 4096;

impl ReadAt for Qcow2 {
    fn size(&self) -> u64 {
        self.image.header.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.image.header.size)?;
        self.read_ahead(offset, buf.len() as u64);
        self.image.read(buf, offset)
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        let s = self.cache_stats();
        if s.decompressed > 0 {
            tracing::debug!(
                decompressed = s.decompressed,
                prefetched = s.prefetched,
                hits = s.hits,
                evicted = s.evicted,
                compressed_mib = s.compressed_bytes as f64 / 1048576.0,
                host_reads = s.host_reads,
                peak_mib = s.peak_bytes as f64 / 1048576.0,
                bound_mib = s.bound_bytes as f64 / 1048576.0,
                "qcow2 cluster cache"
            );
        }
    }
}

impl Image {
    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // Map the whole request first, merging contiguous pieces, so that an
        // uncompressed run is one host read and the compressed clusters not
        // cached yet are fetched together.
        let mut pieces: Vec<(Piece, usize, usize)> = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let (piece, avail) = self.map(offset + done as u64)?;
            let n = usize::try_from(avail).map_or(buf.len() - done, |a| a.min(buf.len() - done));
            match (pieces.last_mut(), piece) {
                (Some((Piece::Data(h), _, l)), Piece::Data(h2)) if *h + *l as u64 == h2 => *l += n,
                (Some((Piece::Zero, _, l)), Piece::Zero) => *l += n,
                (Some((Piece::Backing, _, l)), Piece::Backing) => *l += n,
                _ => pieces.push((piece, done, n)),
            }
            done += n;
        }
        let wanted: Vec<(u64, u64)> = pieces
            .iter()
            .filter_map(|(p, _, _)| match *p {
                Piece::Compressed { host, len } if !self.clusters.contains(host) => {
                    Some((host, len))
                }
                _ => None,
            })
            .collect();
        let batch = if wanted.len() > 1 {
            self.read_batch(&wanted)
        } else {
            None
        };
        let cluster = self.cluster();
        for (piece, start, n) in pieces {
            let out = &mut buf[start..start + n];
            let pos = offset + start as u64;
            match piece {
                Piece::Data(host) => {
                    check_bounds(host, n, self.file.size()).map_err(|_| {
                        bad(format!(
                            "data for guest offset {pos} at host offset {host} lies past the end of the file"
                        ))
                    })?;
                    self.file.read_exact_at(out, host)?;
                }
                Piece::Zero => out.fill(0),
                Piece::Backing => self.read_backing(out, pos)?,
                Piece::Compressed { host, len } => {
                    let data = self.compressed_cluster(host, len, batch.as_ref(), true)?;
                    let within = (pos & (cluster - 1)) as usize;
                    let src = data.get(within..within + n).ok_or_else(|| {
                        bad(format!("compressed cluster at {host} decompressed short"))
                    })?;
                    out.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

/// Compressed bytes read at once for several clusters.
struct Batch {
    start: u64,
    data: Vec<u8>,
}

impl Batch {
    fn slice(&self, host: u64, len: u64) -> Option<&[u8]> {
        let from = usize::try_from(host.checked_sub(self.start)?).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(from..to)
    }
}

/// Per-thread buffers and decoder states, reused across clusters.
#[derive(Default)]
struct Scratch {
    input: Vec<u8>,
    output: Vec<u8>,
    zlib: Option<flate2::Decompress>,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Inflate raw deflate data (qcow2 writes it without a zlib header) until
/// `out` is full, as QEMU does: trailing bytes (the rest of the last
/// sector) are ignored, a stream that ends early is an error.
fn inflate_zlib(
    state: &mut Option<flate2::Decompress>,
    comp: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    use flate2::{Decompress, FlushDecompress, Status};
    let d = state.get_or_insert_with(|| Decompress::new(false));
    d.reset(false);
    loop {
        let (inp, outp) = (d.total_in() as usize, d.total_out() as usize);
        let (Some(src), Some(dst)) = (comp.get(inp..), out.get_mut(outp..)) else {
            return Err("deflate state out of range".into());
        };
        if dst.is_empty() {
            return Ok(());
        }
        let status = d
            .decompress(src, dst, FlushDecompress::Finish)
            .map_err(|e| format!("deflate: {e}"))?;
        let progressed = d.total_in() as usize > inp || d.total_out() as usize > outp;
        if status == Status::StreamEnd && (d.total_out() as usize) < out.len() {
            return Err(format!(
                "deflate stream ends after {} of {} bytes",
                d.total_out(),
                out.len()
            ));
        }
        if !progressed && (d.total_out() as usize) < out.len() {
            return Err(format!(
                "deflate stream is truncated after {} of {} bytes",
                d.total_out(),
                out.len()
            ));
        }
    }
}

/// Decompress zstd data until `out` is full, as QEMU does (several frames
/// are allowed; trailing bytes after `out` is full are ignored).
fn inflate_zstd(
    state: &mut Option<zstd::stream::raw::Decoder<'static>>,
    comp: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};
    let d = match state {
        Some(d) => d,
        None => {
            let mut d = Decoder::new().map_err(|e| format!("zstd: {e}"))?;
            // A cluster is at most 2 MiB: refuse frames that ask for a
            // larger window (memory on a hostile image).
            d.set_parameter(DParameter::WindowLogMax(22))
                .map_err(|e| format!("zstd: {e}"))?;
            state.insert(d)
        }
    };
    d.reinit().map_err(|e| format!("zstd: {e}"))?;
    let mut input = InBuffer::around(comp);
    let mut output = OutBuffer::around(out);
    while output.pos() < output.capacity() {
        let (inp, outp) = (input.pos(), output.pos());
        d.run(&mut input, &mut output)
            .map_err(|e| format!("zstd: {e}"))?;
        if input.pos() == inp && output.pos() == outp {
            return Err(format!(
                "zstd data ends after {} of {} bytes",
                output.pos(),
                output.capacity()
            ));
        }
    }
    Ok(())
}

/// Bytes of a sequential stream inflated ahead of its reader.
const READAHEAD_BYTES: u64 = 1 << 20;
/// Bytes a stream must have read sequentially before readahead starts.
const READAHEAD_MIN_RUN: u64 = 256 << 10;
/// Sequential streams tracked at once (one per concurrently read file).
const STREAMS: usize = 8;
/// Readahead jobs queued at most; more are dropped (the reader inflates).
const READAHEAD_QUEUE: usize = 4;

/// A run of sequential reads: where the next read is expected, and how far
/// ahead its clusters were handed to the readahead thread.
#[derive(Clone, Copy, Default)]
struct Stream {
    next: u64,
    until: u64,
    /// Bytes read sequentially so far.
    run: u64,
    /// When it was last read (a tick of [`Streams`]).
    used: u64,
}

#[derive(Default)]
struct Streams {
    streams: [Stream; STREAMS],
    tick: u64,
}

/// Compressed clusters (host offset, length) to inflate ahead.
type Job = Vec<(u64, u64)>;

/// Sequential-read detection, and the thread inflating ahead (started on
/// the first job, ended when the reader is dropped).
#[derive(Default)]
struct Readahead {
    streams: std::sync::Mutex<Streams>,
    worker: OnceLock<Option<std::sync::mpsc::SyncSender<Job>>>,
}

impl Readahead {
    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `job` (compressed clusters, host offset and length) without
    /// waiting; a full queue or a thread that could not start drops it.
    fn submit(&self, image: &Arc<Image>, job: Job) {
        let worker = self.worker.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(READAHEAD_QUEUE);
            let image = Arc::clone(image);
            std::thread::Builder::new()
                .name("qcow2-readahead".into())
                .spawn(move || {
                    for job in rx {
                        image.prefetch(&job);
                    }
                })
                .ok()
                .map(|_| tx)
        });
        if let Some(tx) = worker {
            let _ = tx.try_send(job);
        }
    }
}

impl Image {
    /// Inflate `job`'s clusters into the cache (errors are left for the
    /// reader to meet and report).
    fn prefetch(&self, job: &[(u64, u64)]) {
        let batch = self.read_batch(job);
        for &(host, len) in job {
            let _ = self.compressed_cluster(host, len, batch.as_ref(), false);
        }
    }
}

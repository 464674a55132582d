//! Initramfs contents (cpio, possibly concatenated and compressed).
//!
//! An initramfs as the kernel reads it (`init/initramfs.c`) is a sequence of
//! segments, each either an uncompressed newc cpio archive (`070701` /
//! `070702`, ending in a `TRAILER!!!` entry) or a compressed stream whose
//! content is itself one or more cpio archives; NUL bytes between them are
//! padding. Debian's initramfs-tools and dracut both write an uncompressed
//! early segment (CPU microcode) followed by one compressed segment (zstd on
//! Debian 12, gzip/xz/zstd elsewhere).
//!
//! [`scan`] streams through all of it: file data is skipped through a small
//! buffer (only `modules.builtin` and modprobe configuration files are read,
//! capped), the decompressed
//! archive is never held in memory, and every count, name and size is
//! bounded by [`Limits`]. Hostile input yields an [`InitramfsError`] naming
//! the byte offset, never a panic.
//!
//! Supported compression: gzip, zstd, xz, legacy lzma, lz4 legacy frames
//! (`lz4 -l`, what the kernel accepts). bzip2 and lzo are recognised and
//! reported as unsupported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, BufRead, Read};

use ibkit_image::Guest;

/// What an initramfs holds.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    /// Guest path.
    pub path: String,
    /// Kernel modules inside: name to path inside the archive.
    pub modules: BTreeMap<String, String>,
    /// modules.builtin inside, if present.
    pub builtin: BTreeSet<String>,
    /// Why it could not be read completely.
    pub error: Option<String>,
    /// Segments in file order: `cpio` for an uncompressed archive (consecutive
    /// ones counted once), else the compression (`gzip`, `zstd`, `xz`,
    /// `lzma`, `lz4`, `bzip2`, `lzo`; the last two are listed but not read).
    pub compression: Vec<String>,
    /// Archive members read (files, directories, symlinks, devices; not the
    /// `TRAILER!!!` entries).
    pub files: usize,
    /// Kernel versions with a `lib/modules/<version>/` directory inside.
    pub versions: BTreeSet<String>,
    /// Bytes of cpio data read (all segments decompressed).
    pub bytes: u64,
    /// The modprobe configuration inside (`etc/modprobe.d/*.conf`, ...),
    /// which decides what its udev may load before the root is mounted.
    pub modprobe: crate::facts::modprobe::Modprobe,
}

impl Initramfs {
    /// True if a module of that name (`-` and `_` alike) is inside.
    pub fn has_module(&self, module: &str) -> bool {
        self.modules.contains_key(&normalise_module(module))
    }
}

/// Read and list the initramfs at `path` in the guest. Never fails: what
/// could not be read is in [`Initramfs::error`], with everything read before
/// the problem still listed.
pub fn load(guest: &Guest, path: &str) -> Initramfs {
    load_with(guest, path, &DEFAULT_LIMITS)
}

/// [`load`] with other limits.
pub fn load_with(guest: &Guest, path: &str, limits: &Limits) -> Initramfs {
    let mut out = Initramfs {
        path: path.to_owned(),
        ..Initramfs::default()
    };
    let (reader, _meta) = match guest.open(path) {
        Ok(Some(r)) => r,
        Ok(None) => {
            out.error = Some(format!("{path}: not found or not a regular file"));
            return out;
        }
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let (listing, err) = scan_partial(reader, limits);
    out.modules = listing.modules;
    out.builtin = listing.builtin;
    out.compression = listing.compression;
    out.files = listing.files;
    out.versions = listing.versions;
    out.bytes = listing.bytes;
    out.modprobe = crate::facts::modprobe::from_files(&listing.config_files);
    if listing.config_skipped > 0 {
        out.modprobe.problems.push(format!(
            "{path}: {} modprobe configuration files inside were not read (over the size or count limit)",
            listing.config_skipped
        ));
    }
    out.error = err.map(|e| format!("{path}: {e}"));
    out
}

/// What [`scan`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Segments in order, as in [`Initramfs::compression`].
    pub compression: Vec<String>,
    /// Archive members (not counting `TRAILER!!!`).
    pub files: usize,
    /// Kernel modules: normalised name (`virtio_blk`) to the first path that
    /// holds it inside the archive (`usr/lib/modules/…/virtio_blk.ko.zst`,
    /// without a leading `./` or `/`).
    pub modules: BTreeMap<String, String>,
    /// Module names from every `lib/modules/*/modules.builtin` (or
    /// `usr/lib/modules/…`) inside.
    pub builtin: BTreeSet<String>,
    /// Kernel versions with a `lib/modules/<version>/` directory inside.
    pub versions: BTreeSet<String>,
    /// Bytes of cpio data read (decompressed size of every segment).
    pub bytes: u64,
    /// modprobe configuration files (`etc/modprobe.d/*.conf` and the other
    /// [`crate::facts::modprobe::INITRAMFS_DIRS`]): path inside the archive
    /// (no leading `/`) and content; a symlink to `/dev/null` has none.
    pub config_files: Vec<(String, Vec<u8>)>,
    /// Configuration files not read because of [`Limits::max_config`].
    pub config_skipped: usize,
}

/// Bounds on what [`scan`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most archive members (including `TRAILER!!!` entries).
    pub max_entries: usize,
    /// Longest member name, with its NUL (the kernel's `PATH_MAX`).
    pub max_name: usize,
    /// Most bytes of cpio data, all segments decompressed and added up.
    pub max_decompressed: u64,
    /// Most bytes of the file itself.
    pub max_input: u64,
    /// Most segments.
    pub max_segments: usize,
    /// Largest `modules.builtin` read (a larger one is skipped).
    pub max_builtin: u64,
    /// Bytes of modprobe configuration files read, all together (a file
    /// that does not fit is skipped and counted in
    /// [`Listing::config_skipped`]).
    pub max_config: u64,
}

/// The limits [`scan`] and [`load`] use.
pub const DEFAULT_LIMITS: Limits = Limits {
    max_entries: 1_000_000,
    max_name: 4096,
    max_decompressed: 2 << 30,
    max_input: 2 << 30,
    max_segments: 256,
    max_builtin: 4 << 20,
    max_config: 1 << 20,
};

/// Most modprobe configuration files kept from one initramfs.
const MAX_CONFIG_FILES: usize = 512;

impl Default for Limits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

/// Where in the file a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Byte offset in the file: of the problem itself in an uncompressed
    /// part, else of the start of the compressed segment.
    pub offset: u64,
    /// The compressed segment's format and the offset in its decompressed
    /// data, when the problem is inside one.
    pub inner: Option<(&'static str, u64)>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner {
            None => write!(f, "at byte {}", self.offset),
            Some((fmt, off)) => write!(
                f,
                "at byte {off} of the {fmt} data that starts at byte {}",
                self.offset
            ),
        }
    }
}

/// Why an initramfs could not be read completely.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitramfsError {
    /// Malformed data: a bad header, garbage, a truncated or corrupt stream.
    #[error("{at}: {what}")]
    Corrupt {
        /// Where.
        at: Location,
        /// What is wrong.
        what: String,
    },
    /// A compression this reader does not implement.
    #[error("{at}: {format}-compressed segment: not supported")]
    Unsupported {
        /// Where the segment starts.
        at: Location,
        /// `bzip2`, `lzo`.
        format: &'static str,
    },
    /// More data than [`Limits::max_decompressed`] or [`Limits::max_input`].
    #[error("initramfs larger than {limit} bytes ({what})")]
    TooLarge {
        /// The limit.
        limit: u64,
        /// `decompressed` or `compressed`.
        what: &'static str,
    },
    /// More members than [`Limits::max_entries`] or segments than
    /// [`Limits::max_segments`].
    #[error("{at}: more than {limit} {what}")]
    TooMany {
        /// Where.
        at: Location,
        /// The limit.
        limit: usize,
        /// `archive members`, `segments`.
        what: &'static str,
    },
    /// Reading the file itself failed.
    #[error("{at}: read error: {source}")]
    Io {
        /// Where.
        at: Location,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// List an initramfs read from `reader`, with [`DEFAULT_LIMITS`].
pub fn scan(reader: impl Read) -> Result<Listing, InitramfsError> {
    match scan_partial(reader, &DEFAULT_LIMITS) {
        (listing, None) => Ok(listing),
        (_, Some(e)) => Err(e),
    }
}

/// List an initramfs, returning what was found before any error too.
pub fn scan_partial(reader: impl Read, limits: &Limits) -> (Listing, Option<InitramfsError>) {
    let mut st = State {
        limits: *limits,
        listing: Listing::default(),
        entries: 0,
        name: Vec::new(),
        segments: 0,
    };
    let mut outer = Peek::new(reader, limits.max_input);
    let err = scan_outer(&mut outer, &mut st).err();
    (st.listing, err)
}

// ---------------------------------------------------------------------------
// Buffered reader with peeking, position and a hard limit.

const BUF: usize = 64 * 1024;

/// A buffered reader that can look ahead `n` bytes, counts what it consumed
/// (`pos`) and refuses to pull more than `limit` bytes from `inner`.
struct Peek<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes consumed: the offset of `buf[start]` in the stream.
    pos: u64,
    /// Bytes pulled from `inner`.
    pulled: u64,
    limit: u64,
    /// Set when `limit` was exceeded.
    over: bool,
}

impl<R: Read> Peek<R> {
    fn new(inner: R, limit: u64) -> Self {
        Peek {
            inner,
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            pos: 0,
            pulled: 0,
            limit,
            over: false,
        }
    }

    /// Pull more bytes into the buffer; `Ok(0)` at end of stream.
    fn pull(&mut self) -> io::Result<usize> {
        if self.start > 0 && (self.start == self.end || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = self.buf.len() - self.end;
        if room == 0 {
            return Err(io::Error::other("peek buffer full"));
        }
        // Ask for one byte past the limit, to tell "exactly at" from "over".
        let allowed = self.limit.saturating_sub(self.pulled).saturating_add(1);
        let want = room.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..self.end + want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let n = n.min(want);
        self.pulled = self.pulled.saturating_add(n as u64);
        if self.pulled > self.limit {
            self.over = true;
            return Err(io::Error::other("size limit exceeded"));
        }
        self.end += n;
        Ok(n)
    }

    /// The next `n` bytes (fewer only at end of stream), not consumed.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        let n = n.min(self.buf.len());
        while self.end - self.start < n {
            if self.pull()? == 0 {
                break;
            }
        }
        let have = (self.end - self.start).min(n);
        Ok(&self.buf[self.start..self.start + have])
    }

    /// Skip `n` bytes; returns how many could be skipped (less at EOF).
    fn skip(&mut self, mut n: u64) -> io::Result<u64> {
        let mut done = 0u64;
        while n > 0 {
            let avail = self.fill_buf()?.len();
            if avail == 0 {
                break;
            }
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(avail);
            self.consume(take);
            n -= take as u64;
            done += take as u64;
        }
        Ok(done)
    }

    /// Skip NUL bytes; returns how many.
    fn skip_zeros(&mut self) -> io::Result<u64> {
        static ZEROS: [u8; 4096] = [0; 4096];
        let mut skipped = 0u64;
        loop {
            let buf = self.fill_buf()?;
            if buf.is_empty() {
                return Ok(skipped);
            }
            // Whole zero chunks compare with memcmp, fast even unoptimised.
            let mut n = 0;
            for chunk in buf.chunks(ZEROS.len()) {
                if chunk == &ZEROS[..chunk.len()] {
                    n += chunk.len();
                } else {
                    n += chunk.iter().position(|&b| b != 0).unwrap_or(chunk.len());
                    break;
                }
            }
            let all = n == buf.len();
            self.consume(n);
            skipped += n as u64;
            if !all {
                return Ok(skipped);
            }
        }
    }

    /// Read exactly `out.len()` bytes; `Ok(false)` if the stream ended first.
    fn read_full(&mut self, out: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < out.len() {
            let buf = self.fill_buf()?;
            if buf.is_empty() {
                return Ok(false);
            }
            let n = buf.len().min(out.len() - got);
            out[got..got + n].copy_from_slice(&buf[..n]);
            self.consume(n);
            got += n;
        }
        Ok(true)
    }
}

impl<R: Read> Read for Peek<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buf = self.fill_buf()?;
        let n = buf.len().min(out.len());
        out[..n].copy_from_slice(&buf[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Peek<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.pull()?;
        }
        Ok(&self.buf[self.start..self.end])
    }
    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.end - self.start);
        self.start += amt;
        self.pos += amt as u64;
    }
}

// ---------------------------------------------------------------------------
// Segments.

struct State {
    limits: Limits,
    listing: Listing,
    /// Members including trailers.
    entries: usize,
    /// Scratch buffer for member names.
    name: Vec<u8>,
    segments: usize,
}

/// A problem inside one stream, located by the stream's own offset.
enum Fail {
    Io(u64, io::Error),
    Bad(u64, String),
    TooMany(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cpio,
    OldCpio,
    Gzip,
    Zstd,
    Xz,
    Lzma,
    Lz4,
    Bzip2,
    Lzo,
}

fn detect(head: &[u8]) -> Option<Kind> {
    let k = if head.starts_with(b"070701") || head.starts_with(b"070702") {
        Kind::Cpio
    } else if head.starts_with(b"070707") {
        Kind::OldCpio
    } else if head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x1f, 0x9e]) {
        Kind::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Kind::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Kind::Xz
    } else if head.starts_with(&[0x5d, 0, 0]) {
        Kind::Lzma
    } else if head.starts_with(&LZ4_LEGACY_MAGIC) {
        Kind::Lz4
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Kind::Bzip2
    } else if head.starts_with(b"\x89LZO") {
        Kind::Lzo
    } else {
        return None;
    };
    Some(k)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Cpio | Kind::OldCpio => "cpio",
        Kind::Gzip => "gzip",
        Kind::Zstd => "zstd",
        Kind::Xz => "xz",
        Kind::Lzma => "lzma",
        Kind::Lz4 => "lz4",
        Kind::Bzip2 => "bzip2",
        Kind::Lzo => "lzo",
    }
}

fn hex_preview(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Memory allowed to the xz/lzma decoders (xz -9 needs about 65 MiB).
const XZ_MEMLIMIT: u64 = 256 << 20;

fn scan_outer<R: Read>(outer: &mut Peek<R>, st: &mut State) -> Result<(), InitramfsError> {
    let too_large = |limit| InitramfsError::TooLarge {
        limit,
        what: "compressed",
    };
    let max_input = st.limits.max_input;
    let io_err = |outer: &Peek<R>, e: io::Error| {
        if outer.over {
            too_large(max_input)
        } else {
            InitramfsError::Io {
                at: Location {
                    offset: outer.pos,
                    inner: None,
                },
                source: e,
            }
        }
    };
    loop {
        if let Err(e) = outer.skip_zeros() {
            return Err(io_err(outer, e));
        }
        let at = outer.pos;
        let loc = Location {
            offset: at,
            inner: None,
        };
        let head = match outer.peek(8) {
            Ok(h) => h,
            Err(e) => return Err(io_err(outer, e)),
        };
        if head.is_empty() {
            return Ok(());
        }
        let Some(kind) = detect(head) else {
            return Err(InitramfsError::Corrupt {
                at: loc,
                what: format!(
                    "neither a cpio archive nor a known compression (bytes {})",
                    hex_preview(head)
                ),
            });
        };
        let name = kind_name(kind);
        if kind != Kind::Cpio || st.listing.compression.last().map(String::as_str) != Some("cpio") {
            st.segments += 1;
            if st.segments > st.limits.max_segments {
                return Err(InitramfsError::TooMany {
                    at: loc,
                    limit: st.limits.max_segments,
                    what: "segments",
                });
            }
            st.listing.compression.push(name.to_owned());
        }
        let r = match kind {
            Kind::Cpio => {
                let before = outer.pos;
                let r = archive(outer, st);
                st.listing.bytes = st.listing.bytes.saturating_add(outer.pos - before);
                r.map_err(|f| plain_error(f, st.limits.max_entries))
            }
            Kind::OldCpio => Err(InitramfsError::Corrupt {
                at: loc,
                what: "old-format (070707) cpio archive, which the kernel does not accept".into(),
            }),
            Kind::Bzip2 | Kind::Lzo => Err(InitramfsError::Unsupported {
                at: loc,
                format: name,
            }),
            Kind::Gzip => decoded(flate2::bufread::GzDecoder::new(&mut *outer), st, at, name),
            Kind::Zstd => match zstd::stream::read::Decoder::with_buffer(&mut *outer) {
                Ok(d) => decoded(d.single_frame(), st, at, name),
                Err(e) => Err(InitramfsError::Io { at: loc, source: e }),
            },
            Kind::Xz | Kind::Lzma => {
                let stream = if kind == Kind::Xz {
                    xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                } else {
                    xz2::stream::Stream::new_lzma_decoder(XZ_MEMLIMIT)
                };
                match stream {
                    Ok(stream) => {
                        let dec = XzRead {
                            inner: &mut *outer,
                            stream,
                            done: false,
                        };
                        decoded(dec, st, at, name)
                    }
                    Err(e) => Err(InitramfsError::Io {
                        at: loc,
                        source: e.into(),
                    }),
                }
            }
            Kind::Lz4 => decoded(Lz4Legacy::new(&mut *outer), st, at, name),
        };
        // Hitting the input limit surfaces as a read error in whichever
        // decoder was reading: report it as what it is.
        if outer.over {
            return Err(too_large(max_input));
        }
        r?;
        if outer.pos == at {
            // Never loop on a decoder that consumed nothing.
            return Err(InitramfsError::Corrupt {
                at: loc,
                what: format!("empty {name} segment"),
            });
        }
    }
}

/// A problem in an uncompressed segment, located in the file.
fn plain_error(f: Fail, max_entries: usize) -> InitramfsError {
    let at = |offset| Location {
        offset,
        inner: None,
    };
    match f {
        Fail::Io(off, source) => InitramfsError::Io {
            at: at(off),
            source,
        },
        Fail::Bad(off, what) => InitramfsError::Corrupt { at: at(off), what },
        Fail::TooMany(off) => InitramfsError::TooMany {
            at: at(off),
            limit: max_entries,
            what: "archive members",
        },
    }
}

/// Read one compressed segment's content: cpio archives and NUL padding.
fn decoded<D: Read>(
    dec: D,
    st: &mut State,
    at: u64,
    format: &'static str,
) -> Result<(), InitramfsError> {
    let budget = st.limits.max_decompressed.saturating_sub(st.listing.bytes);
    let mut src = Peek::new(dec, budget);
    let r = archives(&mut src, st);
    st.listing.bytes = st.listing.bytes.saturating_add(src.pos);
    let loc = |off| Location {
        offset: at,
        inner: Some((format, off)),
    };
    match r {
        Ok(()) => Ok(()),
        Err(Fail::Io(_, _)) if src.over => Err(InitramfsError::TooLarge {
            limit: st.limits.max_decompressed,
            what: "decompressed",
        }),
        Err(Fail::Io(off, e)) => Err(InitramfsError::Corrupt {
            at: loc(off),
            what: format!("{format} stream: {e}"),
        }),
        Err(Fail::Bad(off, what)) => Err(InitramfsError::Corrupt { at: loc(off), what }),
        Err(Fail::TooMany(off)) => Err(InitramfsError::TooMany {
            at: loc(off),
            limit: st.limits.max_entries,
            what: "archive members",
        }),
    }
}

/// Cpio archives separated by NUL padding, to the end of the stream.
fn archives<R: Read>(src: &mut Peek<R>, st: &mut State) -> Result<(), Fail> {
    loop {
        src.skip_zeros().map_err(|e| Fail::Io(src.pos, e))?;
        let at = src.pos;
        let head = src.peek(6).map_err(|e| Fail::Io(at, e))?;
        if head.is_empty() {
            return Ok(());
        }
        match detect(head) {
            Some(Kind::Cpio) => archive(src, st)?,
            Some(Kind::OldCpio) => {
                return Err(Fail::Bad(
                    at,
                    "old-format (070707) cpio archive, which the kernel does not accept".into(),
                ));
            }
            _ => {
                let preview = hex_preview(head);
                return Err(Fail::Bad(
                    at,
                    format!("not a cpio archive (bytes {preview})"),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// newc cpio.

const HEADER_LEN: usize = 110;
const FIELDS: [&str; 13] = [
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
];
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

fn parse_hex8(field: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for &b in field {
        let d = (b as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d)?;
    }
    Some(v)
}

fn pad4(n: u64) -> u64 {
    (4 - n % 4) % 4
}

/// One cpio archive: members up to and including `TRAILER!!!`.
fn archive<R: Read>(src: &mut Peek<R>, st: &mut State) -> Result<(), Fail> {
    loop {
        let at = src.pos;
        let mut hdr = [0u8; HEADER_LEN];
        if !src.read_full(&mut hdr).map_err(|e| Fail::Io(at, e))? {
            return Err(Fail::Bad(
                at,
                "truncated: the archive ends inside a cpio header (no TRAILER!!!)".into(),
            ));
        }
        if &hdr[..6] != b"070701" && &hdr[..6] != b"070702" {
            return Err(Fail::Bad(
                at,
                format!("expected a cpio header, found bytes {}", hex_preview(&hdr)),
            ));
        }
        let mut fields = [0u32; 13];
        for (i, slot) in fields.iter_mut().enumerate() {
            let start = 6 + 8 * i;
            let raw = &hdr[start..start + 8];
            *slot = parse_hex8(raw).ok_or_else(|| {
                Fail::Bad(
                    at + start as u64,
                    format!(
                        "cpio header field {} is not 8 hex digits ({:?})",
                        FIELDS[i],
                        String::from_utf8_lossy(raw)
                    ),
                )
            })?;
        }
        let mode = fields[1];
        let filesize = u64::from(fields[6]);
        let namesize = fields[11] as usize;
        st.entries += 1;
        if st.entries > st.limits.max_entries {
            return Err(Fail::TooMany(at));
        }
        if namesize == 0 || namesize > st.limits.max_name {
            return Err(Fail::Bad(
                at,
                format!(
                    "cpio member name size {namesize} is outside 1..={}",
                    st.limits.max_name
                ),
            ));
        }
        let name_at = src.pos;
        st.name.clear();
        st.name.resize(namesize, 0);
        if !src
            .read_full(&mut st.name)
            .map_err(|e| Fail::Io(name_at, e))?
        {
            return Err(Fail::Bad(
                name_at,
                "truncated: the archive ends inside a member name".into(),
            ));
        }
        if st.name.last() != Some(&0) {
            return Err(Fail::Bad(
                name_at,
                "cpio member name is not NUL-terminated".into(),
            ));
        }
        let name_end = st
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(st.name.len());
        st.name.truncate(name_end);
        skip_exact(
            src,
            pad4((HEADER_LEN + namesize) as u64),
            "member name padding",
        )?;
        if st.name == b"TRAILER!!!" {
            skip_exact(src, filesize.saturating_add(pad4(filesize)), "trailer data")?;
            return Ok(());
        }
        st.listing.files += 1;
        let name = String::from_utf8_lossy(&st.name).into_owned();
        let path = normalise_path(&name);
        let is_file = mode & S_IFMT == S_IFREG;
        let is_link = mode & S_IFMT == S_IFLNK;
        let data_at = src.pos;
        let mut consumed = false;
        if let Some((ver, rest)) = modules_subpath(path) {
            if !ver.is_empty() && !st.listing.versions.contains(ver) {
                st.listing.versions.insert(ver.to_owned());
            }
            if rest == "modules.builtin" && is_file && filesize <= st.limits.max_builtin {
                // `filesize` is capped just above, so this fits.
                let mut text = vec![0u8; usize::try_from(filesize).unwrap_or(0)];
                if !src.read_full(&mut text).map_err(|e| Fail::Io(data_at, e))? {
                    return Err(Fail::Bad(
                        data_at,
                        format!("truncated: the archive ends inside {path}"),
                    ));
                }
                st.listing
                    .builtin
                    .extend(parse_builtin(&String::from_utf8_lossy(&text)));
                consumed = true;
            }
        }
        if (is_file || is_link)
            && !consumed
            && crate::facts::modprobe::initramfs_config(path).is_some()
        {
            consumed = read_config(src, st, path, filesize, is_link, data_at)?;
        }
        if (is_file || is_link)
            && let Some(module) = module_name(path)
        {
            st.listing
                .modules
                .entry(module)
                .or_insert_with(|| path.to_owned());
        }
        if !consumed {
            let got = src.skip(filesize).map_err(|e| Fail::Io(data_at, e))?;
            if got < filesize {
                return Err(Fail::Bad(
                    data_at,
                    format!(
                        "truncated: {path} claims {filesize} bytes, the archive ends after {got}"
                    ),
                ));
            }
        }
        skip_exact(src, pad4(filesize), "member data padding")?;
    }
}

/// Keep a modprobe configuration file's content (a symlink counts only when
/// it points at `/dev/null`, which hides a file of the same name with
/// nothing). Returns whether the data was consumed.
fn read_config<R: Read>(
    src: &mut Peek<R>,
    st: &mut State,
    path: &str,
    filesize: u64,
    is_link: bool,
    data_at: u64,
) -> Result<bool, Fail> {
    let used: u64 = st
        .listing
        .config_files
        .iter()
        .map(|(_, d)| d.len() as u64)
        .sum();
    let fits = filesize <= st.limits.max_config.saturating_sub(used)
        && st.listing.config_files.len() < MAX_CONFIG_FILES;
    if !fits {
        st.listing.config_skipped += 1;
        return Ok(false);
    }
    // `filesize` is within `max_config` here, so this fits.
    let mut data = vec![0u8; usize::try_from(filesize).unwrap_or(0)];
    if !src.read_full(&mut data).map_err(|e| Fail::Io(data_at, e))? {
        return Err(Fail::Bad(
            data_at,
            format!("truncated: the archive ends inside {path}"),
        ));
    }
    if is_link {
        if data == b"/dev/null" {
            st.listing.config_files.push((path.to_owned(), Vec::new()));
        }
    } else {
        st.listing.config_files.push((path.to_owned(), data));
    }
    Ok(true)
}

fn skip_exact<R: Read>(src: &mut Peek<R>, n: u64, what: &str) -> Result<(), Fail> {
    let at = src.pos;
    let got = src.skip(n).map_err(|e| Fail::Io(at, e))?;
    if got < n {
        return Err(Fail::Bad(
            at,
            format!("truncated: the archive ends inside the {what}"),
        ));
    }
    Ok(())
}

/// Strip leading `./` and `/`.
fn normalise_path(name: &str) -> &str {
    let mut p = name;
    loop {
        if let Some(r) = p.strip_prefix("./") {
            p = r;
        } else if let Some(r) = p.strip_prefix('/') {
            p = r;
        } else {
            return p;
        }
    }
}

/// `(usr/)lib/modules/<version>/<rest>` → `(version, rest)`.
fn modules_subpath(path: &str) -> Option<(&str, &str)> {
    let p = path.strip_prefix("usr/").unwrap_or(path);
    let p = p.strip_prefix("lib/modules/")?;
    Some(p.split_once('/').unwrap_or((p, "")))
}

/// Suffixes of loadable module files, longest first.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// The module name of a module file path (`…/virtio-blk.ko.xz` →
/// `virtio_blk`), `None` if the name is not a module file's.
pub fn module_name(path: &str) -> Option<String> {
    let base = path.rsplit('/').next().unwrap_or(path);
    MODULE_SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .filter(|m| !m.is_empty())
        .map(normalise_module)
}

/// Module names compare with `-` and `_` alike: use `_`.
pub fn normalise_module(name: &str) -> String {
    name.replace('-', "_")
}

/// Module names listed in a `modules.builtin` file (one path a line).
pub fn parse_builtin(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(module_name)
}

// ---------------------------------------------------------------------------
// Decoders the compression crates do not provide as we need them.

/// One xz (or legacy lzma) stream; stops at its end, leaving what follows in
/// the underlying reader (`xz2::bufread::XzDecoder` errors on trailing data).
struct XzRead<B> {
    inner: B,
    stream: xz2::stream::Stream,
    done: bool,
}

impl<B: BufRead> Read for XzRead<B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            let eof = input.is_empty();
            let action = if eof {
                xz2::stream::Action::Finish
            } else {
                xz2::stream::Action::Run
            };
            let (in0, out0) = (self.stream.total_in(), self.stream.total_out());
            let status = self.stream.process(input, out, action);
            let consumed = usize::try_from(self.stream.total_in() - in0).unwrap_or(0);
            let produced = usize::try_from(self.stream.total_out() - out0).unwrap_or(0);
            self.inner.consume(consumed);
            let status = status.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if status == xz2::stream::Status::StreamEnd {
                self.done = true;
                return Ok(produced);
            }
            if produced > 0 {
                return Ok(produced);
            }
            if eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated stream",
                ));
            }
            if consumed == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "decoder made no progress",
                ));
            }
        }
    }
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Uncompressed size of every legacy block but the last.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// `LZ4_compressBound(LZ4_LEGACY_BLOCK)`.
const LZ4_LEGACY_BOUND: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;

/// lz4 legacy frames (`lz4 -l`): magic, then blocks of a little-endian `u32`
/// compressed size and the data, each decompressing to at most 8 MiB; a
/// repeated magic starts a new frame. The format has no end mark: the
/// segment ends at EOF or at a size of zero or beyond the bound (left in
/// the stream for the caller, as padding or the next segment).
struct Lz4Legacy<'a, R> {
    inner: &'a mut Peek<R>,
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    block: Vec<u8>,
    done: bool,
}

impl<'a, R: Read> Lz4Legacy<'a, R> {
    fn new(inner: &'a mut Peek<R>) -> Self {
        Lz4Legacy {
            inner,
            out: Vec::new(),
            out_pos: 0,
            out_len: 0,
            block: Vec::new(),
            done: false,
        }
    }

    /// Decode the next block into `out`; `false` at the end of the segment.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            let head = self.inner.peek(4)?;
            if head.len() < 4 {
                // At the end of the file: padding, or a cut-off block size.
                if head.iter().all(|&b| b == 0) {
                    return Ok(false);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated lz4 block size",
                ));
            }
            let head = [head[0], head[1], head[2], head[3]];
            if head == LZ4_LEGACY_MAGIC {
                self.inner.consume(4);
                continue;
            }
            let size = u32::from_le_bytes(head) as usize;
            if size == 0 || size > LZ4_LEGACY_BOUND {
                return Ok(false);
            }
            self.inner.consume(4);
            // Allocated zeroed once (calloc: cheap), never resized.
            if self.block.is_empty() {
                self.block = vec![0; LZ4_LEGACY_BOUND];
                self.out = vec![0; LZ4_LEGACY_BLOCK];
            }
            let block = &mut self.block[..size];
            if !self.inner.read_full(block)? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated lz4 block",
                ));
            }
            let n = lz4_flex::block::decompress_into(block, &mut self.out).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("lz4 block: {e}"))
            })?;
            self.out_pos = 0;
            self.out_len = n;
            if n > 0 {
                return Ok(true);
            }
        }
    }
}

impl<R: Read> Read for Lz4Legacy<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.out_pos == self.out_len {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            if !self.next_block()? {
                self.done = true;
                return Ok(0);
            }
        }
        let n = (self.out_len - self.out_pos).min(out.len());
        out[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

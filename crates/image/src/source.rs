//! Byte sources: a whole disk image (raw or qcow2) or a window onto one (a
//! partition, an LVM logical volume). Everything above this layer reads
//! through [`ReadAt`], so filesystems never know which container they sit in.

use std::io;
use std::sync::Arc;

/// Random-access, read-only bytes. Implementations must be usable from
/// several threads (`&self` reads) and must fail, not short-read, past the end.
pub trait ReadAt: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` entirely from `offset`; reading past [`ReadAt::size`] is an
    /// `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A shared byte source.
pub type Source = Arc<dyn ReadAt>;

/// Bounds-check a read of `len` bytes at `offset` against `size`.
pub(crate) fn check_bounds(offset: u64, len: usize, size: u64) -> io::Result<()> {
    let end = offset
        .checked_add(len as u64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "read offset overflows"))?;
    if end > size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read of {len} bytes at offset {offset} goes past the end ({size} bytes)"),
        ));
    }
    Ok(())
}

/// A window `[offset, offset + len)` of another source: a partition or a
/// logical volume's linear segment.
pub struct Window {
    inner: Source,
    offset: u64,
    len: u64,
}

impl Window {
    /// A window onto `inner`. The window is clamped to the inner source: a
    /// partition entry that claims to extend past the disk is cut at its end
    /// (reads beyond fail instead of returning garbage).
    pub fn new(inner: Source, offset: u64, len: u64) -> Self {
        let size = inner.size();
        let offset = offset.min(size);
        let len = len.min(size - offset);
        Window { inner, offset, len }
    }
}

impl ReadAt for Window {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len)?;
        self.inner.read_exact_at(buf, self.offset + offset)
    }
}

/// An in-memory source (tests, fuzzing).
impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// A plain file (a raw image, or a host file used as a volume).
pub struct RawFile {
    file: std::fs::File,
    size: u64,
}

impl RawFile {
    /// Open `path` read-only; only a regular file is accepted (see
    /// [`open_regular`]).
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = open_regular(path)?;
        let size = file.metadata()?.len();
        Ok(RawFile { file, size })
    }
}

/// Open `path` read-only if it is a regular file, without blocking and
/// without following a symlink in its last component. A FIFO named as an
/// image or backing file would otherwise block the open (no writer) and
/// hang `check`; a device or a symlink swapped in after the caller resolved
/// the path would be read as the disk. The type is checked on the opened
/// descriptor (fstat), so nothing can be swapped in between.
pub fn open_regular(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a symbolic link; only regular files are read",
                ),
                // A socket cannot be opened (ENXIO); say what it is.
                Some(libc::ENXIO) => match std::fs::symlink_metadata(path) {
                    Ok(m) => io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "is a {}, not a regular file; only regular files are read",
                            file_kind(&m.file_type())
                        ),
                    ),
                    Err(_) => e,
                },
                _ => e,
            }
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is a {}, not a regular file; only regular files are read",
                file_kind(&kind)
            ),
        ));
    }
    Ok(file)
}

fn file_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

impl ReadAt for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        check_bounds(offset, buf.len(), self.size)?;
        self.file.read_exact_at(buf, offset)
    }
}

/// Read a little-endian/big-endian integer helper area used by probes.
pub(crate) fn read_vec(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    src.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

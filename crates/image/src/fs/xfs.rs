//! XFS through lamxfs (v4 and v5, log replay in memory).

use std::io::Read;
use std::sync::Mutex;

use lamxfs::{BlockRead, EntryKind, Error as XfsError, Xfs};

use super::{DirEntry, FileKind, FileSystem, FsError, Metadata};
use crate::source::Source;

/// Adapter: our [`Source`] as lamxfs' block reader.
pub struct XfsDevice(Source);

impl BlockRead for XfsDevice {
    type Error = std::io::Error;
    fn read_at(&mut self, offset_bytes: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read_exact_at(buf, offset_bytes)
    }
}

/// An XFS filesystem.
pub struct XfsFs {
    inner: Mutex<Xfs<XfsDevice>>,
    uuid: [u8; 16],
    label: Option<String>,
}

fn map_err(e: XfsError) -> FsError {
    match e {
        XfsError::NotFound { .. } => FsError::NotFound,
        XfsError::NotARegularFile | XfsError::NotASymlink => FsError::WrongKind,
        XfsError::UnsupportedFeature(f) => FsError::Unsupported(format!("xfs {f}")),
        XfsError::FileTooLarge { size, max } => {
            FsError::Limit(format!("file of {size} bytes exceeds {max}"))
        }
        XfsError::Io { token, offset } => FsError::Io(std::io::Error::other(format!(
            "xfs read failed ({token}) at byte {offset}"
        ))),
        other => FsError::Corrupt(format!("xfs: {other:?}")),
    }
}

fn lock_err() -> FsError {
    FsError::Io(std::io::Error::other("xfs reader lock poisoned"))
}

impl XfsFs {
    /// Open the XFS filesystem on `source`.
    pub fn open(source: Source) -> Result<Self, FsError> {
        let size = source.size();
        let xfs = Xfs::open(XfsDevice(source), size).map_err(map_err)?;
        let uuid = xfs.uuid();
        let label = xfs.label().map(str::to_owned);
        Ok(XfsFs {
            inner: Mutex::new(xfs),
            uuid,
            label,
        })
    }
}

fn kind(k: EntryKind) -> FileKind {
    match k {
        EntryKind::Regular => FileKind::File,
        EntryKind::Directory => FileKind::Dir,
        EntryKind::Symlink => FileKind::Symlink,
        EntryKind::Other => FileKind::Other,
    }
}

fn xpath(path: &[u8]) -> lamxfs::Path<'_> {
    lamxfs::Path::new(path)
}

impl FileSystem for XfsFs {
    fn type_name(&self) -> &'static str {
        "xfs"
    }
    fn uuid(&self) -> Option<[u8; 16]> {
        Some(self.uuid)
    }
    fn label(&self) -> Option<String> {
        self.label.clone()
    }
    fn lstat(&self, path: &[u8]) -> Result<Option<Metadata>, FsError> {
        let mut fs = self.inner.lock().map_err(|_| lock_err())?;
        let ino = match fs.resolve(xpath(path)) {
            Ok(i) => i,
            Err(XfsError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(map_err(e)),
        };
        let m = fs.metadata(&ino).map_err(map_err)?;
        let k = if m.is_file() {
            FileKind::File
        } else if m.is_dir() {
            FileKind::Dir
        } else if m.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        };
        Ok(Some(Metadata {
            kind: k,
            size: m.size(),
            mode: m.mode() & 0o7777,
            uid: 0,
            gid: 0,
        }))
    }
    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let mut fs = self.inner.lock().map_err(|_| lock_err())?;
        let entries = fs.read_dir(xpath(path)).map_err(map_err)?;
        Ok(entries
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| DirEntry {
                name: e.name,
                kind: kind(e.kind),
            })
            .collect())
    }
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, FsError> {
        let mut fs = self.inner.lock().map_err(|_| lock_err())?;
        fs.read_link(xpath(path)).map_err(map_err)
    }
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + Send + '_>, FsError> {
        let (ino, size) = {
            let mut fs = self.inner.lock().map_err(|_| lock_err())?;
            let ino = fs.resolve(xpath(path)).map_err(map_err)?;
            let m = fs.metadata(&ino).map_err(map_err)?;
            if !m.is_file() {
                return Err(FsError::WrongKind);
            }
            (ino, m.size())
        };
        Ok(Box::new(XfsReader {
            fs: self,
            ino,
            pos: 0,
            size,
        }))
    }
}

struct XfsReader<'a> {
    fs: &'a XfsFs,
    ino: lamxfs::Inode,
    pos: u64,
    size: u64,
}

impl Read for XfsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.size - self.pos) as usize;
        let mut fs = self
            .fs
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("xfs reader lock poisoned"))?;
        let n = fs
            .read_file_at(&self.ino, self.pos, &mut buf[..want])
            .map_err(|e| std::io::Error::other(format!("{}", map_err(e))))?;
        if n == 0 {
            // lamxfs returns 0 at its idea of EOF; the inode size says more
            // bytes exist, so the file is inconsistent.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "xfs file shorter than its size",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

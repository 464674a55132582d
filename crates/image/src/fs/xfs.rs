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
    /// The same bytes lamxfs reads, for the inode core fields lamxfs does not
    /// expose (owner).
    source: Source,
    geometry: Option<Geometry>,
}

/// Superblock fields that locate an inode on disk.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    blocksize: u64,
    agblocks: u64,
    inodesize: u64,
    inopblog: u32,
    agblklog: u32,
}

impl Geometry {
    /// From the primary superblock (`xfs_dsb`, big-endian).
    fn parse(sb: &[u8]) -> Option<Geometry> {
        let be32 = |o: usize| -> Option<u32> {
            Some(u32::from_be_bytes(sb.get(o..o + 4)?.try_into().ok()?))
        };
        let be16 = |o: usize| -> Option<u16> {
            Some(u16::from_be_bytes(sb.get(o..o + 2)?.try_into().ok()?))
        };
        if sb.get(0..4)? != b"XFSB" {
            return None;
        }
        let g = Geometry {
            blocksize: u64::from(be32(4)?),
            agblocks: u64::from(be32(84)?),
            inodesize: u64::from(be16(104)?),
            inopblog: u32::from(*sb.get(123)?),
            agblklog: u32::from(*sb.get(124)?),
        };
        // lamxfs has validated the superblock already; these bounds only keep
        // the shifts below meaningful.
        (g.inopblog < 16 && g.agblklog < 32 && g.inodesize >= 256).then_some(g)
    }

    /// Byte offset of inode `ino` (AG number, AG block, index in block).
    fn inode_offset(&self, ino: u64) -> Option<u64> {
        let agino_bits = self.inopblog + self.agblklog;
        let agno = ino.checked_shr(agino_bits)?;
        let agbno = (ino >> self.inopblog) & ((1u64 << self.agblklog) - 1);
        let index = ino & ((1u64 << self.inopblog) - 1);
        agno.checked_mul(self.agblocks)?
            .checked_add(agbno)?
            .checked_mul(self.blocksize)?
            .checked_add(index.checked_mul(self.inodesize)?)
    }
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
        let xfs = Xfs::open(XfsDevice(source.clone()), size).map_err(map_err)?;
        let uuid = xfs.uuid();
        let label = xfs.label().map(str::to_owned);
        let mut sb = [0u8; 128];
        let geometry = source
            .read_exact_at(&mut sb, 0)
            .ok()
            .and_then(|()| Geometry::parse(&sb));
        Ok(XfsFs {
            inner: Mutex::new(xfs),
            uuid,
            label,
            source,
            geometry,
        })
    }

    /// `di_uid`/`di_gid` of inode `ino` from its on-disk inode core (bytes
    /// 8..16, big-endian, the same in v1, v2 and v3 inodes). lamxfs reads
    /// the inode through its in-memory log replay and we cannot: if the core
    /// on disk is not the one lamxfs saw (magic or mode differ, i.e. the log
    /// changed it), the owner is unknown and reported as root, as before.
    fn owner(&self, ino: u64, mode: u32) -> (u32, u32) {
        let Some(off) = self.geometry.and_then(|g| g.inode_offset(ino)) else {
            return (0, 0);
        };
        let mut core = [0u8; 16];
        if self.source.read_exact_at(&mut core, off).is_err()
            || &core[0..2] != b"IN"
            || u32::from(u16::from_be_bytes([core[2], core[3]])) != mode & 0xffff
        {
            tracing::debug!(ino, "xfs inode core not readable directly; owner unknown");
            return (0, 0);
        }
        (
            u32::from_be_bytes([core[8], core[9], core[10], core[11]]),
            u32::from_be_bytes([core[12], core[13], core[14], core[15]]),
        )
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
        drop(fs);
        let (uid, gid) = self.owner(ino.ino, m.mode());
        Ok(Some(Metadata {
            kind: k,
            size: m.size(),
            mode: m.mode() & 0o7777,
            uid,
            gid,
            ino: ino.ino,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ibkit_test_utils::{Container, FsType, Layout, Tree, Volume, build_image};

    use super::*;
    use crate::source::RawFile;

    #[test]
    fn owners_come_from_the_inode_core() {
        let mut t = Tree::new();
        t.file("etc/hostname", "x\n")
            .file("home/builder/.profile", "# profile\n")
            .owner("home/builder/.profile", 1000, 1001)
            .owner("home/builder", 1000, 1000)
            .symlink("srv/link", "/etc/hostname")
            .owner("srv/link", 3000, 3001);
        let img = build_image(
            &Layout::Bare(Volume::new(FsType::Xfs, 300).with_tree(&t)),
            Container::Raw,
        )
        .expect("build xfs image");
        let src: Source = Arc::new(RawFile::open(&img).expect("open image"));
        let fs = XfsFs::open(src).expect("open xfs");
        let owner = |p: &str| {
            let m = fs.lstat(p.as_bytes()).expect("lstat").expect("exists");
            (m.uid, m.gid)
        };
        assert_eq!(owner("/home/builder/.profile"), (1000, 1001));
        assert_eq!(owner("/home/builder"), (1000, 1000));
        assert_eq!(owner("/srv/link"), (3000, 3001));
        assert_eq!(owner("/etc/hostname"), (0, 0));
    }
}

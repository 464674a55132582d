//! A host directory (an unpacked root filesystem) as a [`FileSystem`].
//!
//! The guest layer hands us paths whose parents it has already checked to be
//! real directories, so symlinks are never followed on the host; the final
//! component is opened with `O_NOFOLLOW` as a second line of defence.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{DirEntry, FileKind, FileSystem, FsError, Metadata};

/// A directory on the host treated as a guest's root.
pub struct DirFs {
    root: PathBuf,
    /// Device of `root`, to tell inodes of other host filesystems mounted
    /// below it apart (see [`DirFs::identity`]).
    root_dev: Option<u64>,
}

impl DirFs {
    /// Use `root` as the filesystem root.
    pub fn new(root: &Path) -> Self {
        DirFs {
            root: root.to_owned(),
            root_dev: std::fs::metadata(root).ok().map(|m| m.dev()),
        }
    }

    /// [`Metadata::ino`] for a host inode: the inode number on the root's
    /// device; below another mount, a hash of (device, inode) with the top
    /// bit set, so that equal inode numbers of two filesystems never look
    /// like one directory reached twice.
    fn identity(&self, m: &std::fs::Metadata) -> u64 {
        if Some(m.dev()) == self.root_dev {
            return m.ino();
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (m.dev(), m.ino()).hash(&mut h);
        h.finish() | 1 << 63
    }

    fn host_path(&self, path: &[u8]) -> PathBuf {
        let mut p = self.root.clone();
        for comp in path.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            p.push(std::ffi::OsStr::from_bytes(comp));
        }
        p
    }
}

fn map_io(e: std::io::Error) -> FsError {
    match e.kind() {
        std::io::ErrorKind::NotFound => FsError::NotFound,
        std::io::ErrorKind::NotADirectory => FsError::NotADirectory,
        _ => FsError::Io(e),
    }
}

fn kind_of(ft: std::fs::FileType) -> FileKind {
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

impl FileSystem for DirFs {
    fn type_name(&self) -> &'static str {
        "dir"
    }
    fn uuid(&self) -> Option<[u8; 16]> {
        None
    }
    fn label(&self) -> Option<String> {
        None
    }
    fn lstat(&self, path: &[u8]) -> Result<Option<Metadata>, FsError> {
        match std::fs::symlink_metadata(self.host_path(path)) {
            Ok(m) => Ok(Some(Metadata {
                kind: kind_of(m.file_type()),
                size: m.len(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                ino: self.identity(&m),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(map_io(e)),
        }
    }
    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.host_path(path)).map_err(map_io)? {
            let entry = entry.map_err(map_io)?;
            let kind = entry.file_type().map(kind_of).unwrap_or(FileKind::Other);
            out.push(DirEntry {
                name: entry.file_name().as_bytes().to_vec(),
                kind,
            });
            if out.len() > crate::limits::MAX_DIR_ENTRIES {
                return Err(FsError::Limit(format!(
                    "directory has more than {} entries",
                    crate::limits::MAX_DIR_ENTRIES
                )));
            }
        }
        Ok(out)
    }
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, FsError> {
        let target = std::fs::read_link(self.host_path(path)).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => FsError::WrongKind,
            _ => map_io(e),
        })?;
        Ok(target.as_os_str().as_bytes().to_vec())
    }
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + Send + '_>, FsError> {
        const O_NOFOLLOW: i32 = 0o400000;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NOFOLLOW)
            .open(self.host_path(path))
            .map_err(map_io)?;
        if !file.metadata().map_err(map_io)?.is_file() {
            return Err(FsError::WrongKind);
        }
        Ok(Box::new(file))
    }
}

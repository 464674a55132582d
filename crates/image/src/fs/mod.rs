//! Filesystem readers. Each one implements [`FileSystem`]: a read-only view of
//! one volume addressed by absolute byte paths (`b"/etc/passwd"`).
//!
//! Readers do **not** need to resolve symlinks: the guest layer
//! ([`crate::guest::Guest`]) walks paths component by component, resolves
//! every symlink inside the guest's root and across mount points, and only
//! ever asks a reader about paths whose parent components are real
//! directories. A reader that follows symlinks anyway is harmless but must
//! never touch the host's filesystem.

pub mod dir;
pub mod ext4;
pub mod vfat;
pub mod xfs;

use std::io::Read;

/// What kind of inode a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device node, FIFO or socket.
    Other,
}

/// Metadata of one inode (not following a symlink at the leaf).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Inode kind.
    pub kind: FileKind,
    /// Size in bytes as recorded by the filesystem (may lie on a hostile
    /// image: never allocate by it without a cap).
    pub size: u64,
    /// Permission bits (the low 12 bits of `st_mode`).
    pub mode: u32,
    /// Owner uid (0 when the filesystem reader cannot tell).
    pub uid: u32,
    /// Owner gid (0 when the filesystem reader cannot tell).
    pub gid: u32,
    /// What identifies the inode within its filesystem: the inode number
    /// (ext4, XFS, a host directory), the first cluster (vfat). Two paths
    /// with the same `ino` on one filesystem name the same directory, which
    /// is how tree walks notice a hard-linked directory or a loop
    /// ([`crate::guest::Walker`]). 0 when the reader cannot tell.
    pub ino: u64,
}

/// One directory entry (`.` and `..` are never returned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Raw name bytes.
    pub name: Vec<u8>,
    /// Kind as recorded in the directory (or looked up in the inode).
    pub kind: FileKind,
}

/// Why a filesystem operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such file or directory.
    #[error("not found")]
    NotFound,
    /// A parent component is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// The operation needs a regular file (or a symlink, for `read_link`).
    #[error("wrong file type for this operation")]
    WrongKind,
    /// On-disk structures are inconsistent.
    #[error("corrupt filesystem: {0}")]
    Corrupt(String),
    /// The filesystem uses a feature this reader does not implement.
    #[error("unsupported filesystem feature: {0}")]
    Unsupported(String),
    /// A size or count limit was exceeded (hostile or absurd metadata).
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The underlying source failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A read-only filesystem on one volume.
pub trait FileSystem: Send + Sync {
    /// Short type name as `blkid` would say it: `ext4`, `xfs`, `dir`.
    fn type_name(&self) -> &'static str;
    /// Filesystem UUID (what `UUID=` in fstab matches), if it has one.
    fn uuid(&self) -> Option<[u8; 16]>;
    /// Volume label (what `LABEL=` matches), if set.
    fn label(&self) -> Option<String>;
    /// Metadata of `path` without following a symlink at the leaf.
    /// `Ok(None)` when it does not exist.
    fn lstat(&self, path: &[u8]) -> Result<Option<Metadata>, FsError>;
    /// Entries of the directory at `path`, without `.` and `..`.
    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError>;
    /// Target of the symlink at `path`, raw bytes.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, FsError>;
    /// A streaming reader over the regular file at `path`. The reader yields
    /// exactly the file's bytes (holes as zeros) and stops at its size.
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + Send + '_>, FsError>;
}

//! One view of the guest's files: mounts assembled from the volumes, every
//! path resolved component by component with symlinks interpreted inside the
//! guest root (an absolute target restarts at the guest's `/`, `..` never
//! climbs above it), so nothing on the host is ever reached through the image.
//! Tree walks go through [`Walker`]: each directory listed once (however many
//! hard links or loops lead to it), within budgets it names when they run out.

mod walk;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::sync::Arc;

use crate::cache::Lru;
use crate::fs::{DirEntry, FileKind, FileSystem, FsError, Metadata};
use crate::limits::{DEFAULT_READ_CAP, GUEST_LOOKUP_CACHE_BYTES, MAX_PATH_LEN, MAX_SYMLINK_HOPS};
pub use walk::{Visit, WalkBudget, WalkEntry, WalkLimits, Walker};

/// A failure to read a guest path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The filesystem under the path failed.
    #[error("{path}: {source}")]
    Fs {
        /// Guest path.
        path: String,
        /// Cause.
        #[source]
        source: FsError,
    },
    /// Too many symlinks, or a symlink loop.
    #[error("{path}: too many levels of symbolic links (> {MAX_SYMLINK_HOPS})")]
    SymlinkLoop {
        /// Guest path.
        path: String,
    },
    /// The file is larger than the caller's cap.
    #[error("{path}: file of {size} bytes exceeds the {cap}-byte read limit")]
    TooLarge {
        /// Guest path.
        path: String,
        /// Size recorded by the filesystem.
        size: u64,
        /// Cap.
        cap: u64,
    },
}

impl GuestError {
    fn fs(path: &[u8], source: FsError) -> Self {
        GuestError::Fs {
            path: lossy(path),
            source,
        }
    }
}

/// Display a guest path.
pub fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// A filesystem mounted at a guest path.
pub struct Mount {
    /// Mount point, normalised (`/`, `/boot`).
    pub point: Vec<u8>,
    /// The filesystem.
    pub fs: Arc<dyn FileSystem>,
    /// Where it came from, for reports (`partition 2 (ext4, UUID=...)`).
    pub source: String,
}

/// The guest view.
pub struct Guest {
    /// Mounts, root first.
    mounts: Vec<Mount>,
    /// lstat results by resolved path, so repeated walks stay cheap. Keyed
    /// by a hash of the path, which the value repeats (a collision is a
    /// miss); bounded, since a hostile tree has endless distinct paths.
    cache: Lru<Arc<Lookup>>,
}

/// One cached lstat: the resolved path and what it names.
struct Lookup {
    path: Box<[u8]>,
    meta: Option<Metadata>,
}

/// Memory a cached lookup holds besides its path (entry, maps, Arc).
const LOOKUP_OVERHEAD: u64 = 128;

fn path_key(path: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// A streaming reader over one guest file.
pub type FileReader<'a> = Box<dyn Read + Send + 'a>;

/// A resolved path: absolute, normalised, no symlinks in its parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The path.
    pub path: Vec<u8>,
    /// Its metadata, `None` if it does not exist.
    pub meta: Option<Metadata>,
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    if parts.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    out
}

impl Guest {
    /// A guest whose `/` is `root`.
    pub fn new(root: Arc<dyn FileSystem>, source: String) -> Self {
        Guest {
            mounts: vec![Mount {
                point: b"/".to_vec(),
                fs: root,
                source,
            }],
            cache: Lru::new(GUEST_LOOKUP_CACHE_BYTES),
        }
    }

    /// Mount `fs` at `point` (a normalised absolute path). A later mount at
    /// the same point hides the earlier one, as on Linux.
    pub fn mount(&mut self, point: &[u8], fs: Arc<dyn FileSystem>, source: String) {
        let point = join(&components(point).map(<[u8]>::to_vec).collect::<Vec<_>>());
        self.mounts.push(Mount { point, fs, source });
        self.cache.clear();
    }

    /// The mounts, root first.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The mount holding `path` and the path inside it.
    fn locate<'a>(&'a self, path: &[u8]) -> (&'a Mount, Vec<u8>) {
        let (i, rel) = self.locate_index(path);
        (&self.mounts[i], rel)
    }

    /// Like [`Guest::locate`], with the mount's index in `mounts`.
    fn locate_index(&self, path: &[u8]) -> (usize, Vec<u8>) {
        let mut best: Option<(usize, &Mount)> = None;
        for (i, m) in self.mounts.iter().enumerate().rev() {
            let inside = m.point == b"/"
                || path == m.point.as_slice()
                || (path.starts_with(&m.point) && path.get(m.point.len()) == Some(&b'/'));
            if inside && best.is_none_or(|(_, b)| m.point.len() > b.point.len()) {
                best = Some((i, m));
            }
        }
        // The root mount always matches.
        let (i, m) = best.unwrap_or((0, &self.mounts[0]));
        let rel = if m.point == b"/" {
            path.to_vec()
        } else {
            let rest = &path[m.point.len()..];
            if rest.is_empty() {
                b"/".to_vec()
            } else {
                rest.to_vec()
            }
        };
        (i, rel)
    }

    fn lstat_resolved(&self, path: &[u8]) -> Result<Option<Metadata>, GuestError> {
        let key = path_key(path);
        if let Some(hit) = self.cache.get(key)
            && *hit.path == *path
        {
            return Ok(hit.meta);
        }
        let (m, rel) = self.locate(path);
        let meta = match m.fs.lstat(&rel) {
            Ok(meta) => meta,
            Err(FsError::NotFound) | Err(FsError::NotADirectory) => None,
            Err(e) => return Err(GuestError::fs(path, e)),
        };
        let weight = path.len() as u64 + LOOKUP_OVERHEAD;
        self.cache.insert(
            key,
            Arc::new(Lookup {
                path: path.into(),
                meta,
            }),
            weight,
        );
        Ok(meta)
    }

    /// Where a resolved directory lives, for telling two paths to one
    /// directory apart: (mount index, [`Metadata::ino`]); `None` when the
    /// filesystem cannot tell.
    fn identity(&self, path: &[u8], meta: &Metadata) -> Option<(usize, u64)> {
        (meta.ino != 0).then(|| (self.locate_index(path).0, meta.ino))
    }

    /// Entries of the directory at the resolved `path`, sorted by name.
    fn list_resolved(&self, path: &[u8]) -> Result<Vec<DirEntry>, GuestError> {
        let (mnt, rel) = self.locate(path);
        let mut entries = mnt.fs.read_dir(&rel).map_err(|e| GuestError::fs(path, e))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Counters of the lookup cache: bytes held now and at most, and
    /// entries evicted (tests check that a walk stays within its bound).
    pub fn lookup_cache_counts(&self) -> (u64, u64, u64) {
        let c = self.cache.counts();
        (c.weight, c.peak, c.evicted)
    }

    /// Resolve `path`: follow every symlink in the parents, and the last
    /// component too if `follow_last`. A missing component yields
    /// `meta: None` with the path as far as it was resolved.
    pub fn resolve(
        &self,
        path: impl AsRef<[u8]>,
        follow_last: bool,
    ) -> Result<Resolved, GuestError> {
        let orig = path.as_ref();
        let mut done: Vec<Vec<u8>> = Vec::new();
        let mut todo: VecDeque<Vec<u8>> = components(orig).map(<[u8]>::to_vec).collect();
        let mut hops = 0usize;
        let mut meta = self.lstat_resolved(b"/")?;
        while let Some(comp) = todo.pop_front() {
            if comp == b".." {
                done.pop();
                meta = self.lstat_resolved(&join(&done))?;
                continue;
            }
            done.push(comp);
            let here = join(&done);
            if here.len() > MAX_PATH_LEN {
                return Err(GuestError::fs(orig, FsError::Limit("path too long".into())));
            }
            meta = self.lstat_resolved(&here)?;
            let Some(m) = meta else {
                // Missing: report what the rest of the path would have been.
                for rest in todo.drain(..) {
                    done.push(rest);
                }
                return Ok(Resolved {
                    path: join(&done),
                    meta: None,
                });
            };
            let last = todo.is_empty();
            match m.kind {
                FileKind::Symlink if !last || follow_last => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(GuestError::SymlinkLoop { path: lossy(orig) });
                    }
                    let (mnt, rel) = self.locate(&here);
                    let target = mnt
                        .fs
                        .read_link(&rel)
                        .map_err(|e| GuestError::fs(&here, e))?;
                    done.pop();
                    if target.first() == Some(&b'/') {
                        done.clear();
                    }
                    for c in components(&target).rev() {
                        todo.push_front(c.to_vec());
                    }
                    meta = self.lstat_resolved(&join(&done))?;
                }
                FileKind::Dir | FileKind::Symlink => {}
                _ if !last => {
                    return Ok(Resolved {
                        path: join(&done),
                        meta: None,
                    });
                }
                _ => {}
            }
        }
        Ok(Resolved {
            path: join(&done),
            meta,
        })
    }

    /// Metadata, following symlinks. `None` if missing or dangling.
    pub fn stat(&self, path: impl AsRef<[u8]>) -> Result<Option<Metadata>, GuestError> {
        Ok(self.resolve(path, true)?.meta)
    }

    /// Metadata of the path itself (a symlink is reported as one).
    pub fn lstat(&self, path: impl AsRef<[u8]>) -> Result<Option<Metadata>, GuestError> {
        Ok(self.resolve(path, false)?.meta)
    }

    /// True if the path exists (following symlinks); errors count as absent.
    pub fn exists(&self, path: impl AsRef<[u8]>) -> bool {
        matches!(self.stat(path), Ok(Some(_)))
    }

    /// True if the path is a regular file (following symlinks).
    pub fn is_file(&self, path: impl AsRef<[u8]>) -> bool {
        matches!(self.stat(path), Ok(Some(m)) if m.kind == FileKind::File)
    }

    /// Target of a symlink, `None` if the path is missing or not a symlink.
    pub fn read_link(&self, path: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, GuestError> {
        let r = self.resolve(path, false)?;
        match r.meta {
            Some(m) if m.kind == FileKind::Symlink => {
                let (mnt, rel) = self.locate(&r.path);
                mnt.fs
                    .read_link(&rel)
                    .map(Some)
                    .map_err(|e| GuestError::fs(&r.path, e))
            }
            _ => Ok(None),
        }
    }

    /// Entries of a directory (following symlinks), sorted by name. `None`
    /// if missing or not a directory. Mount points inside it are listed as
    /// directories even if the parent filesystem lacks the entry.
    pub fn read_dir(&self, path: impl AsRef<[u8]>) -> Result<Option<Vec<DirEntry>>, GuestError> {
        let r = self.resolve(path, true)?;
        match r.meta {
            Some(m) if m.kind == FileKind::Dir => self.list_resolved(&r.path).map(Some),
            _ => Ok(None),
        }
    }

    /// Open a regular file for streaming (following symlinks). `None` if
    /// missing or not a regular file.
    pub fn open(
        &self,
        path: impl AsRef<[u8]>,
    ) -> Result<Option<(FileReader<'_>, Metadata)>, GuestError> {
        let r = self.resolve(path, true)?;
        match r.meta {
            Some(m) if m.kind == FileKind::File => {
                let (mnt, rel) = self.locate(&r.path);
                let reader = mnt.fs.open(&rel).map_err(|e| GuestError::fs(&r.path, e))?;
                Ok(Some((reader, m)))
            }
            _ => Ok(None),
        }
    }

    /// Read a whole regular file, refusing files above `cap` bytes.
    pub fn read_capped(
        &self,
        path: impl AsRef<[u8]>,
        cap: u64,
    ) -> Result<Option<Vec<u8>>, GuestError> {
        self.read_up_to(path.as_ref(), cap, true)
    }

    /// Read at most `max` bytes from the start of a regular file.
    pub fn read_head(
        &self,
        path: impl AsRef<[u8]>,
        max: u64,
    ) -> Result<Option<Vec<u8>>, GuestError> {
        self.read_up_to(path.as_ref(), max, false)
    }

    /// Read up to `limit` bytes; a larger file is an error if `whole`, else cut.
    fn read_up_to(
        &self,
        path: &[u8],
        limit: u64,
        whole: bool,
    ) -> Result<Option<Vec<u8>>, GuestError> {
        let Some((reader, meta)) = self.open(path)? else {
            return Ok(None);
        };
        if whole && meta.size > limit {
            return Err(GuestError::TooLarge {
                path: lossy(path),
                size: meta.size,
                cap: limit,
            });
        }
        let mut buf = Vec::with_capacity(meta.size.min(limit) as usize);
        reader
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| GuestError::fs(path, FsError::Io(e)))?;
        Ok(Some(buf))
    }

    /// Read a whole regular file (up to the default 64 MiB cap).
    pub fn read(&self, path: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, GuestError> {
        self.read_capped(path, DEFAULT_READ_CAP)
    }

    /// Read a text file, replacing invalid UTF-8.
    pub fn read_text(&self, path: impl AsRef<[u8]>) -> Result<Option<String>, GuestError> {
        Ok(self
            .read(path)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }
}

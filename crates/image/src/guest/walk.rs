//! The one tree walk every reader of the guest uses: depth-first, in name
//! order, never entering a directory twice, within budgets it reports.
//!
//! A hostile filesystem can hard-link a directory to itself or to an
//! ancestor (ext4 and XFS directory entries are just inode numbers; a vfat
//! entry is just a cluster), or fan a few directories out into a DAG of
//! astronomically many paths. Path-based recursion walks such a tree
//! forever. The [`Walker`] remembers each directory it listed by (mount,
//! [`Metadata::ino`](crate::fs::Metadata::ino)), so a directory is listed at
//! most once whichever path reaches it, and counts directories and entries
//! against [`WalkLimits`]; when a budget runs out the walk stops and
//! [`Walker::exhausted`] names it, so a rule can say it stopped early.

use std::collections::HashSet;
use std::fmt;

use super::{Guest, lossy};
use crate::fs::{DirEntry, FileKind};
use crate::limits::{MAX_PATH_LEN, WALK_MAX_DEPTH, WALK_MAX_DIRS, WALK_MAX_ENTRIES};

/// Budgets of a walk (shared by every root one [`Walker`] walks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkLimits {
    /// Directories listed at most (roots included).
    pub max_dirs: usize,
    /// Entries of every kind handed to the visitor at most.
    pub max_entries: usize,
    /// Deepest directory listed: a root is at depth 0, its subdirectories
    /// at 1, and so on.
    pub max_depth: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_dirs: WALK_MAX_DIRS,
            max_entries: WALK_MAX_ENTRIES,
            max_depth: WALK_MAX_DEPTH,
        }
    }
}

/// The budget that stopped a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkBudget {
    /// [`WalkLimits::max_dirs`] directories were listed.
    Dirs(usize),
    /// [`WalkLimits::max_entries`] entries were visited.
    Entries(usize),
}

impl fmt::Display for WalkBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkBudget::Dirs(n) => write!(f, "directory budget ({n} directories)"),
            WalkBudget::Entries(n) => write!(f, "entry budget ({n} entries)"),
        }
    }
}

/// One entry handed to the visitor.
#[derive(Clone, Copy, Debug)]
pub struct WalkEntry<'a> {
    /// Guest path: the walk's root (symlinks in it resolved) joined with the
    /// names below it, so it never goes through a symlink.
    pub path: &'a [u8],
    /// The entry's name.
    pub name: &'a [u8],
    /// Its kind as the directory records it.
    pub kind: FileKind,
    /// 1 for the root's entries, 2 below them, ...
    pub depth: usize,
}

impl WalkEntry<'_> {
    /// The path as text (invalid UTF-8 replaced).
    pub fn path_lossy(&self) -> String {
        lossy(self.path)
    }
}

/// What the visitor wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// Go on (into the entry, if it is a directory).
    Descend,
    /// Go on, but not into this directory.
    Prune,
    /// End the walk (the caller's own budget ran out).
    Stop,
}

/// Errors kept for the report (the rest are counted).
const KEPT_ERRORS: usize = 8;

/// A walk over one guest, possibly from several roots: a directory reached
/// from two roots is listed once, and the budgets are shared.
pub struct Walker<'g> {
    guest: &'g Guest,
    limits: WalkLimits,
    /// (mount, inode) of every directory listed.
    visited: HashSet<(usize, u64)>,
    dirs: usize,
    entries: usize,
    exhausted: Option<WalkBudget>,
    stopped: bool,
    revisits: usize,
    first_revisit: Option<String>,
    too_deep: usize,
    first_too_deep: Option<String>,
    errors: Vec<String>,
    more_errors: usize,
}

/// A directory being listed: its path, depth and remaining entries.
struct Frame {
    path: Vec<u8>,
    depth: usize,
    entries: std::vec::IntoIter<DirEntry>,
}

fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl<'g> Walker<'g> {
    /// A walker over `guest` with `limits`.
    pub fn new(guest: &'g Guest, limits: WalkLimits) -> Self {
        Walker {
            guest,
            limits,
            visited: HashSet::new(),
            dirs: 0,
            entries: 0,
            exhausted: None,
            stopped: false,
            revisits: 0,
            first_revisit: None,
            too_deep: 0,
            first_too_deep: None,
            errors: Vec::new(),
            more_errors: 0,
        }
    }

    /// Walk the tree below `root` (symlinks in `root` itself are followed,
    /// none below it), depth-first in name order, handing every entry to
    /// `visit`. Directories already listed by this walker — through a hard
    /// link, a loop, or another root — are not listed again. Does nothing
    /// once a budget ran out or `visit` returned [`Visit::Stop`]. A missing
    /// root or one that is not a directory is not an error.
    pub fn walk(&mut self, root: impl AsRef<[u8]>, mut visit: impl FnMut(&WalkEntry<'_>) -> Visit) {
        if self.done() {
            return;
        }
        let root = root.as_ref();
        let resolved = match self.guest.resolve(root, true) {
            Ok(r) => r,
            Err(e) => {
                self.error(e.to_string());
                return;
            }
        };
        let Some(meta) = resolved.meta.filter(|m| m.kind == FileKind::Dir) else {
            return;
        };
        // A root already walked (inside an earlier root, or the same
        // directory by another path) is simply done: not a loop.
        if self
            .guest
            .identity(&resolved.path, &meta)
            .is_some_and(|id| self.visited.contains(&id))
        {
            return;
        }
        let mut stack = Vec::new();
        if let Some(frame) = self.enter(resolved.path, &meta, 0) {
            stack.push(frame);
        }
        while let Some(frame) = stack.last_mut() {
            let Some(e) = frame.entries.next() else {
                stack.pop();
                continue;
            };
            if self.entries >= self.limits.max_entries {
                self.exhausted = Some(WalkBudget::Entries(self.limits.max_entries));
                return;
            }
            self.entries += 1;
            let depth = frame.depth + 1;
            let path = child_path(&frame.path, &e.name);
            if path.len() > MAX_PATH_LEN {
                self.error(format!(
                    "{}…: path too long, not walked",
                    lossy(&path[..64])
                ));
                continue;
            }
            let entry = WalkEntry {
                path: &path,
                name: &e.name,
                kind: e.kind,
                depth,
            };
            match visit(&entry) {
                Visit::Stop => {
                    self.stopped = true;
                    return;
                }
                Visit::Prune => continue,
                Visit::Descend => {}
            }
            if e.kind != FileKind::Dir {
                continue;
            }
            if depth > self.limits.max_depth {
                self.too_deep += 1;
                self.first_too_deep.get_or_insert_with(|| lossy(&path));
                continue;
            }
            // The directory records the kind; the inode has the identity
            // (and the final word on the kind).
            let meta = match self.guest.lstat_resolved(&path) {
                Ok(Some(m)) if m.kind == FileKind::Dir => m,
                Ok(_) => continue,
                Err(e) => {
                    self.error(e.to_string());
                    continue;
                }
            };
            if let Some(frame) = self.enter(path, &meta, depth) {
                stack.push(frame);
            }
            if self.exhausted.is_some() {
                return;
            }
        }
    }

    /// List the directory at `path` unless it was listed before or the
    /// directory budget is spent.
    fn enter(&mut self, path: Vec<u8>, meta: &crate::fs::Metadata, depth: usize) -> Option<Frame> {
        if let Some(id) = self.guest.identity(&path, meta)
            && !self.visited.insert(id)
        {
            self.revisits += 1;
            self.first_revisit.get_or_insert_with(|| lossy(&path));
            return None;
        }
        if self.dirs >= self.limits.max_dirs {
            self.exhausted = Some(WalkBudget::Dirs(self.limits.max_dirs));
            return None;
        }
        self.dirs += 1;
        match self.guest.list_resolved(&path) {
            Ok(entries) => Some(Frame {
                path,
                depth,
                entries: entries.into_iter(),
            }),
            Err(e) => {
                self.error(e.to_string());
                None
            }
        }
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(e);
        } else {
            self.more_errors += 1;
        }
    }

    /// True once a budget ran out or the visitor stopped the walk.
    pub fn done(&self) -> bool {
        self.exhausted.is_some() || self.stopped
    }

    /// The budget that stopped the walk, if one did.
    pub fn exhausted(&self) -> Option<WalkBudget> {
        self.exhausted
    }

    /// Directories listed so far.
    pub fn dirs(&self) -> usize {
        self.dirs
    }

    /// Entries handed to the visitor so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Directories not listed again because they were listed already (a
    /// directory hard link, a loop, or a directory under two roots), and
    /// the first path that reached one again.
    pub fn revisits(&self) -> (usize, Option<&str>) {
        (self.revisits, self.first_revisit.as_deref())
    }

    /// Directories not listed for being deeper than
    /// [`WalkLimits::max_depth`], and the first of them.
    pub fn too_deep(&self) -> (usize, Option<&str>) {
        (self.too_deep, self.first_too_deep.as_deref())
    }

    /// Directories that could not be read (the first few messages), and how
    /// many more failed.
    pub fn errors(&self) -> (&[String], usize) {
        (&self.errors, self.more_errors)
    }

    /// If a budget stopped the walk: one sentence naming it, for a report.
    pub fn exhausted_note(&self) -> Option<String> {
        self.exhausted.map(|b| {
            format!(
                "walk stopped early at its {b}: {} directories and {} entries seen, the rest not examined",
                self.dirs, self.entries
            )
        })
    }

    /// If directories were reached again: one sentence saying so.
    pub fn revisit_note(&self) -> Option<String> {
        let first = self.first_revisit.as_deref()?;
        Some(format!(
            "{} director{} reached again through a directory hard link or loop (first: {first}) and examined only once",
            self.revisits,
            if self.revisits == 1 {
                "y was"
            } else {
                "ies were"
            }
        ))
    }

    /// If directories were too deep: one sentence saying so.
    pub fn too_deep_note(&self) -> Option<String> {
        let first = self.first_too_deep.as_deref()?;
        Some(format!(
            "{} director{} deeper than {} levels not examined (first: {first})",
            self.too_deep,
            if self.too_deep == 1 { "y" } else { "ies" },
            self.limits.max_depth
        ))
    }
}

//! Small bounded LRU caches: metadata blocks (group descriptors, inode
//! tables, extent/indirect blocks, directory blocks) so repeated lookups
//! don't go back to a possibly slow (qcow2) source, and per-directory name
//! indexes so path lookups in big directories (`/usr/bin`) don't rescan them.

use std::collections::HashMap;
use std::sync::Arc;

pub(super) use crate::cache::Lru;

/// Cached metadata blocks.
pub(super) type BlockCache = Lru<Arc<[u8]>>;

/// Name -> inode index of one directory.
pub(super) type DirIndex = Arc<HashMap<Box<[u8]>, u32>>;

/// Cached directory indexes, keyed by directory inode number.
pub(super) type DirCache = Lru<DirIndex>;

/// Approximate memory cost of one indexed name.
pub(super) fn dir_entry_weight(name_len: usize) -> u64 {
    name_len as u64 + 48
}

//! Small bounded LRU caches: metadata blocks (group descriptors, inode
//! tables, extent/indirect blocks, directory blocks) so repeated lookups
//! don't go back to a possibly slow (qcow2) source, and per-directory name
//! indexes so path lookups in big directories (`/usr/bin`) don't rescan them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// LRU map from a `u64` key to a cheaply clonable value, bounded by the sum
/// of the entries' weights.
pub(super) struct Lru<V: Clone> {
    inner: Mutex<LruInner<V>>,
    capacity: u64,
}

struct LruInner<V> {
    /// key -> (value, weight, last-use tick)
    map: HashMap<u64, (V, u64, u64)>,
    /// last-use tick -> key; the first entry is the least recently used.
    order: BTreeMap<u64, u64>,
    tick: u64,
    weight: u64,
}

impl<V: Clone> Lru<V> {
    /// A cache holding entries whose weights sum to at most `capacity`.
    pub(super) fn new(capacity: u64) -> Self {
        Lru {
            inner: Mutex::new(LruInner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                weight: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruInner<V>> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters for a cache, so ignore poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, key: u64) -> Option<V> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (value, old) = {
            let entry = lru.map.get_mut(&key)?;
            let old = entry.2;
            entry.2 = tick;
            (entry.0.clone(), old)
        };
        lru.order.remove(&old);
        lru.order.insert(tick, key);
        Some(value)
    }

    /// Insert `value` (ignored if heavier than the whole cache).
    pub(super) fn insert(&self, key: u64, value: V, weight: u64) {
        if weight > self.capacity {
            return;
        }
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((_, w, old)) = lru.map.insert(key, (value, weight, tick)) {
            lru.order.remove(&old);
            lru.weight -= w;
        }
        lru.weight += weight;
        lru.order.insert(tick, key);
        while lru.weight > self.capacity {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some((_, w, _)) = lru.map.remove(&victim) {
                lru.weight -= w;
            }
        }
    }

    /// Drop everything (after the journal overlay changes what blocks read as).
    pub(super) fn clear(&self) {
        let mut lru = self.lock();
        lru.map.clear();
        lru.order.clear();
        lru.weight = 0;
    }
}

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

//! A small bounded LRU cache of metadata blocks (group descriptors, inode
//! tables, extent/indirect blocks, directory blocks), so repeated lookups
//! don't go back to a possibly slow (qcow2) source.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// LRU map from block number to its bytes. Eviction is by least recent use.
pub(super) struct BlockCache {
    inner: Mutex<Lru>,
    capacity: usize,
}

struct Lru {
    /// block -> (data, last-use tick)
    map: HashMap<u64, (Arc<[u8]>, u64)>,
    /// last-use tick -> block; the first entry is the least recently used.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl BlockCache {
    /// A cache holding at most `capacity` blocks (at least one).
    pub(super) fn new(capacity: usize) -> Self {
        BlockCache {
            inner: Mutex::new(Lru { map: HashMap::new(), order: BTreeMap::new(), tick: 0 }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters for a cache, so ignore poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, block: u64) -> Option<Arc<[u8]>> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (data, old) = {
            let entry = lru.map.get_mut(&block)?;
            let old = entry.1;
            entry.1 = tick;
            (entry.0.clone(), old)
        };
        lru.order.remove(&old);
        lru.order.insert(tick, block);
        Some(data)
    }

    pub(super) fn insert(&self, block: u64, data: Arc<[u8]>) {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((_, old)) = lru.map.insert(block, (data, tick)) {
            lru.order.remove(&old);
        }
        lru.order.insert(tick, block);
        while lru.map.len() > self.capacity {
            let Some((_, victim)) = lru.order.pop_first() else { break };
            lru.map.remove(&victim);
        }
    }

    /// Drop everything (after the journal overlay changes what blocks read as).
    pub(super) fn clear(&self) {
        let mut lru = self.lock();
        lru.map.clear();
        lru.order.clear();
    }
}

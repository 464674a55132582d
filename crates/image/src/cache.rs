//! A small thread-safe LRU map bounded by the summed weight of its entries.
//! Used for ext4 metadata blocks and directory indexes, and for qcow2 L2
//! tables and decompressed clusters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// LRU map from a `u64` key to a cheaply clonable value, bounded by the sum
/// of the entries' weights.
pub(crate) struct Lru<V: Clone> {
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
    peak: u64,
    evicted: u64,
}

/// Counters of one [`Lru`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LruCounts {
    /// Weight held now.
    pub weight: u64,
    /// Highest weight ever held.
    pub peak: u64,
    /// Entries dropped to stay within the capacity.
    pub evicted: u64,
}

impl<V: Clone> Lru<V> {
    /// A cache holding entries whose weights sum to at most `capacity`.
    pub(crate) fn new(capacity: u64) -> Self {
        Lru {
            inner: Mutex::new(LruInner {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                weight: 0,
                peak: 0,
                evicted: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruInner<V>> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters for a cache, so ignore poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bound on the summed weights.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// True if `key` is cached (without making it more recent).
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.lock().map.contains_key(&key)
    }

    pub(crate) fn get(&self, key: u64) -> Option<V> {
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

    /// The value for `key`, or `make()` inserted first (under the lock, so
    /// two threads asking for the same missing key get the same value).
    /// Returns the value and whether it was already there.
    pub(crate) fn get_or_insert_with(
        &self,
        key: u64,
        weight: u64,
        make: impl FnOnce() -> V,
    ) -> (V, bool) {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some(entry) = lru.map.get_mut(&key) {
            let old = entry.2;
            entry.2 = tick;
            let value = entry.0.clone();
            lru.order.remove(&old);
            lru.order.insert(tick, key);
            return (value, true);
        }
        let value = make();
        if weight <= self.capacity {
            Self::put(&mut lru, self.capacity, key, value.clone(), weight, tick);
        }
        (value, false)
    }

    /// Insert `value` (ignored if heavier than the whole cache).
    pub(crate) fn insert(&self, key: u64, value: V, weight: u64) {
        if weight > self.capacity {
            return;
        }
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        Self::put(&mut lru, self.capacity, key, value, weight, tick);
    }

    fn put(lru: &mut LruInner<V>, capacity: u64, key: u64, value: V, weight: u64, tick: u64) {
        if let Some((_, w, old)) = lru.map.insert(key, (value, weight, tick)) {
            lru.order.remove(&old);
            lru.weight -= w;
        }
        lru.weight += weight;
        lru.order.insert(tick, key);
        while lru.weight > capacity {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some((_, w, _)) = lru.map.remove(&victim) {
                lru.weight -= w;
                lru.evicted += 1;
            }
        }
        lru.peak = lru.peak.max(lru.weight);
    }

    /// Drop `key` if `pred` holds for its value (a failed load, so that the
    /// next reader retries instead of seeing the same error).
    pub(crate) fn remove_if(&self, key: u64, pred: impl FnOnce(&V) -> bool) {
        let mut lru = self.lock();
        if lru.map.get(&key).is_some_and(|(v, _, _)| pred(v))
            && let Some((_, w, tick)) = lru.map.remove(&key)
        {
            lru.order.remove(&tick);
            lru.weight -= w;
        }
    }

    /// Drop everything (after the journal overlay changes what blocks read as).
    pub(crate) fn clear(&self) {
        let mut lru = self.lock();
        lru.map.clear();
        lru.order.clear();
        lru.weight = 0;
    }

    /// Weight held, peak weight and evictions so far.
    pub(crate) fn counts(&self) -> LruCounts {
        let lru = self.lock();
        LruCounts {
            weight: lru.weight,
            peak: lru.peak,
            evicted: lru.evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_capacity_and_evicts_the_least_recently_used() {
        let lru = Lru::new(3);
        for k in 0..3 {
            lru.insert(k, k * 10, 1);
        }
        assert_eq!(lru.get(0), Some(0)); // 1 is now the oldest
        lru.insert(3, 30, 1);
        assert_eq!(lru.get(1), None);
        assert_eq!(lru.get(0), Some(0));
        assert_eq!(lru.get(3), Some(30));
        let c = lru.counts();
        assert_eq!((c.weight, c.peak, c.evicted), (3, 3, 1));
        // Heavier than the whole cache: not kept, but still returned.
        let (v, hit) = lru.get_or_insert_with(9, 4, || 90);
        assert_eq!((v, hit), (90, false));
        assert_eq!(lru.get(9), None);
        let (v, hit) = lru.get_or_insert_with(0, 1, || 99);
        assert_eq!((v, hit), (0, true));
        lru.remove_if(0, |v| *v == 0);
        assert_eq!(lru.get(0), None);
        assert_eq!(lru.counts().weight, 2);
    }
}

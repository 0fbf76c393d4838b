//! Shared caches: decoded index nodes, and blocks of the write-ahead value
//! log.
//!
//! Cached things are immutable once written, so an entry is named by its
//! file and offset and never goes stale. (Every open of a file gets a new
//! file id, and a file's torn tail is cut before anything of it is cached.)
//! The caches are sharded so lookups for different vbuckets rarely meet on a
//! lock, and evict with the CLOCK second-chance rule, by weight.

use crate::node::Node;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const SHARDS: usize = 32;

/// A cache key: file id and offset.
pub type CacheKey = (u64, u64);

/// What a cached value costs in memory.
pub trait Weighted {
    /// Bytes held, roughly, including bookkeeping.
    fn weight(&self) -> usize;
}

impl Weighted for Arc<Node> {
    fn weight(&self) -> usize {
        Node::weight(self)
    }
}

impl Weighted for Bytes {
    fn weight(&self) -> usize {
        self.len() + 96
    }
}

struct Entry<V> {
    value: V,
    weight: usize,
    referenced: bool,
}

/// A hasher for the cache's integer keys: a multiply-rotate mix, far
/// cheaper than SipHash. Keys are file ids and offsets chosen by us, not by
/// clients, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

type KeyMap<V> = HashMap<CacheKey, V, std::hash::BuildHasherDefault<KeyHasher>>;

struct Shard<V> {
    map: KeyMap<Entry<V>>,
    queue: VecDeque<CacheKey>,
    weight: usize,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            map: KeyMap::default(),
            queue: VecDeque::new(),
            weight: 0,
        }
    }
}

/// A sharded CLOCK cache of immutable values.
pub struct ClockCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The cache of decoded index nodes.
pub type NodeCache = ClockCache<Arc<Node>>;

/// The cache of value-log blocks (4 KiB each, as written).
pub type BlockCache = ClockCache<Bytes>;

impl<V> std::fmt::Debug for ClockCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockCache")
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish_non_exhaustive()
    }
}

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a newly opened file.
pub fn new_file_id() -> u64 {
    NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed)
}

fn shard_of(key: CacheKey) -> usize {
    // Offsets are spread well by their block number; mix in the file id.
    let h = (key.1 >> 6) ^ key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h as usize) % SHARDS
}

impl<V: Clone + Weighted> ClockCache<V> {
    /// A cache holding about `capacity` bytes.
    #[must_use]
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(ClockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn shard(&self, key: CacheKey) -> std::sync::MutexGuard<'_, Shard<V>> {
        self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The value, if cached.
    pub fn get(&self, key: CacheKey) -> Option<V> {
        let mut s = self.shard(key);
        match s.map.get_mut(&key) {
            Some(e) => {
                e.referenced = true;
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.value.clone())
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Caches a value (an existing entry for the key is kept).
    pub fn insert(&self, key: CacheKey, value: V) {
        if self.shard_capacity == 0 {
            return;
        }
        let weight = value.weight();
        if weight > self.shard_capacity {
            return;
        }
        let mut s = self.shard(key);
        if s.map.contains_key(&key) {
            return;
        }
        s.map.insert(
            key,
            Entry {
                value,
                weight,
                referenced: false,
            },
        );
        s.queue.push_back(key);
        s.weight += weight;
        // Each entry gets at most one second chance per sweep, so this ends.
        let mut budget = s.queue.len() * 2;
        while s.weight > self.shard_capacity && budget > 0 {
            budget -= 1;
            let Some(k) = s.queue.pop_front() else { break };
            let Some(e) = s.map.get_mut(&k) else { continue };
            if e.referenced {
                e.referenced = false;
                s.queue.push_back(k);
            } else if let Some(e) = s.map.remove(&k) {
                s.weight -= e.weight;
            }
        }
    }

    /// Cache hits and misses so far.
    #[must_use]
    pub fn hit_miss(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Bytes held now.
    #[must_use]
    pub fn weight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).weight)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: usize) -> Arc<Node> {
        Arc::new(Node::Leaf(crate::node::Leaf::from_entries(&[(
            Bytes::from(vec![1u8; n]),
            Bytes::new(),
        )])))
    }

    #[test]
    fn evicts_to_capacity_and_keeps_hot_entries() {
        let c = NodeCache::new(SHARDS * 1000);
        // All in one shard: same file, offsets that hash alike.
        let keys: Vec<CacheKey> = (0..100u64).map(|i| (1, i * 64 * SHARDS as u64)).collect();
        assert!(keys.iter().all(|k| shard_of(*k) == shard_of(keys[0])));
        c.insert(keys[0], node(100));
        for k in &keys[1..] {
            assert!(c.get(keys[0]).is_some(), "the hot entry stays");
            c.insert(*k, node(100));
        }
        let s = c.shards[shard_of(keys[0])].lock().unwrap();
        assert!(s.weight <= 1000, "weight {}", s.weight);
        assert!(s.map.contains_key(&keys[0]));
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let c = NodeCache::new(0);
        c.insert((1, 1), node(1));
        assert!(c.get((1, 1)).is_none());
        let b = BlockCache::new(0);
        b.insert((1, 1), Bytes::from_static(b"x"));
        assert!(b.get((1, 1)).is_none());
    }
}

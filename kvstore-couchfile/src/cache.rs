//! A shared cache of decoded nodes.
//!
//! Nodes are immutable once written, so a node is named by its file and
//! offset and never goes stale. (A file's torn tail is truncated only when the
//! file is opened, before any node of it is cached, and every open gets a new
//! file id.) The cache is sharded so lookups for different vbuckets rarely
//! meet on a lock, and evicts with the CLOCK second-chance rule, by weight.

use crate::node::Node;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const SHARDS: usize = 32;

/// A cache key: file id and node offset.
pub type CacheKey = (u64, u64);

struct Entry {
    node: Arc<Node>,
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

#[derive(Default)]
struct Shard {
    map: KeyMap<Entry>,
    queue: VecDeque<CacheKey>,
    weight: usize,
}

/// The node cache. Cloning shares it.
pub struct NodeCache {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache")
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish_non_exhaustive()
    }
}

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a newly opened file.
pub fn new_file_id() -> u64 {
    NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed)
}

impl NodeCache {
    /// A cache holding about `capacity` bytes of decoded nodes.
    #[must_use]
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(NodeCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn shard(&self, key: CacheKey) -> &Mutex<Shard> {
        // Offsets are spread well by their block number; mix in the file id.
        let h = (key.1 >> 6) ^ key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.shards[(h as usize) % SHARDS]
    }

    /// The node, if cached.
    pub fn get(&self, key: CacheKey) -> Option<Arc<Node>> {
        let mut s = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match s.map.get_mut(&key) {
            Some(e) => {
                e.referenced = true;
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(Arc::clone(&e.node))
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Caches a node.
    pub fn insert(&self, key: CacheKey, node: Arc<Node>) {
        if self.shard_capacity == 0 {
            return;
        }
        let weight = node.weight();
        let mut s = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if s.map.contains_key(&key) {
            return;
        }
        s.map.insert(
            key,
            Entry {
                node,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
        let shard_of = |k: CacheKey| {
            let h = (k.1 >> 6) ^ k.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (h as usize) % SHARDS
        };
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
    }
}

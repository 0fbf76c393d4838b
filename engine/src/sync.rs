//! Concurrency primitives: loom's under `cfg(loom)`, std's otherwise, so the
//! loom models in `tests/loom.rs` run this crate's real code. `Arc` is
//! loom's too, so the models see every guard's reference count and the last
//! drop that queues a deletion. (Trait objects stay behind std's `Arc`:
//! loom's cannot coerce to `dyn`. Those are the backend's handles and the
//! caller's notifier, outside what the models check.)
//!
//! [`Shards`] is the cookie table's map: a sharded `DashMap` normally, one
//! loom mutex under loom (loom cannot see inside DashMap's own locks).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub(crate) use loom::thread;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::thread;

use std::hash::Hash;
use std::sync::PoisonError;

/// Locks a mutex. A panic elsewhere never leaves the engine's structures
/// half-updated (every critical section is a few assignments), so the data
/// behind a poisoned lock is still sound.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a mutex if it is free now.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Waits on a condition variable, recovering a poisoned lock likewise.
pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(PoisonError::into_inner)
}

/// A concurrent map with the few operations the cookie table needs. Every
/// closure runs under the lock of the key's shard, so it must be short and
/// must not call back into the map.
pub(crate) struct Shards<K, V> {
    #[cfg(not(loom))]
    map: dashmap::DashMap<K, V>,
    #[cfg(loom)]
    map: Mutex<std::collections::HashMap<K, V>>,
}

impl<K: Hash + Eq + Clone, V> Shards<K, V> {
    pub(crate) fn new() -> Self {
        Shards {
            #[cfg(not(loom))]
            map: dashmap::DashMap::new(),
            #[cfg(loom)]
            map: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Inserts `value` unless `key` is present; gives it back if it is.
    pub(crate) fn insert_new(&self, key: K, value: V) -> Result<(), V> {
        #[cfg(not(loom))]
        {
            match self.map.entry(key) {
                dashmap::Entry::Occupied(_) => Err(value),
                dashmap::Entry::Vacant(v) => {
                    v.insert(value);
                    Ok(())
                }
            }
        }
        #[cfg(loom)]
        {
            let mut m = lock(&self.map);
            if m.contains_key(&key) {
                return Err(value);
            }
            m.insert(key, value);
            Ok(())
        }
    }

    /// Runs `f` on the value of `key`, if present.
    pub(crate) fn update<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        #[cfg(not(loom))]
        {
            self.map.get_mut(key).map(|mut v| f(&mut v))
        }
        #[cfg(loom)]
        {
            lock(&self.map).get_mut(key).map(f)
        }
    }

    /// Removes the value of `key` when `pred` holds for it.
    pub(crate) fn remove_if(&self, key: &K, pred: impl FnOnce(&V) -> bool) -> Option<V> {
        #[cfg(not(loom))]
        {
            self.map.remove_if(key, |_, v| pred(v)).map(|(_, v)| v)
        }
        #[cfg(loom)]
        {
            let mut m = lock(&self.map);
            if m.get(key).is_some_and(pred) {
                m.remove(key)
            } else {
                None
            }
        }
    }

    /// The number of entries (not a snapshot: shards are counted in turn).
    pub(crate) fn len(&self) -> usize {
        #[cfg(not(loom))]
        {
            self.map.len()
        }
        #[cfg(loom)]
        {
            lock(&self.map).len()
        }
    }
}

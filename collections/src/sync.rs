//! Concurrency primitives: loom's under `cfg(loom)`, std's otherwise, so the
//! loom models in `tests/loom.rs` run the real update state machine.

//! `Arc` is loom's too, so a model sees the manifests the machine hands out.

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks a mutex; the machine's state is a single assignment per call, so a
/// poisoned lock still holds a valid state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

//! Concurrency primitives: loom's under `cfg(loom)`, std's otherwise, so the
//! loom models in `tests/loom.rs` run the real update state machine.

#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks a mutex; the machine's state is a single assignment per call, so a
/// poisoned lock still holds a valid state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

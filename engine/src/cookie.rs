//! The would-block protocol (memcached's `ewouldblock` and
//! `notify_io_complete`).
//!
//! A call that cannot finish now parks a [`Waiting`] state under the caller's
//! cookie and returns [`EngineError::WouldBlock`]. When the background work
//! ends (a flush, a vbucket deletion, a manifest persisted), the engine turns
//! the state into a result and calls the caller's [`Notifier`]. The caller
//! then re-issues the call with the same cookie and collects the result.
//!
//! The state lives only in this table and is removed exactly once: by the
//! collecting call, or by [`CookieTable::release`] when the caller reports
//! the cookie gone. A background step that fails stores its error as the
//! result; the re-issued call returns that error and never re-runs the
//! operation on state that no longer exists (upstream MB-43708).

use crate::error::{EngineError, EngineResult};
use crate::sync::{Mutex, lock};
use kvstore_core::{Cas, Seqno, Vbid};
use std::collections::HashMap;

/// Identifies one client request context (a connection's current command).
pub type CookieId = u64;

/// Told when a blocked call can be re-issued.
pub trait Notifier: Send + Sync {
    /// The call parked under `cookie` has a result; `status` previews it.
    fn notify(&self, cookie: CookieId, status: EngineResult<()>);
}

/// A notifier that does nothing (for callers that poll).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoNotify;

impl Notifier for NoNotify {
    fn notify(&self, _: CookieId, _: EngineResult<()>) {}
}

/// The result of a mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MutationResult {
    /// The new CAS.
    pub cas: Cas,
    /// The seqno the mutation got.
    pub seqno: Seqno,
    /// The vbucket's current failover uuid.
    pub vbucket_uuid: u64,
}

/// What a completed blocked call returns when collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A durable mutation was persisted.
    Mutation(MutationResult),
    /// The call completed with nothing to return.
    Done,
}

/// What a parked call waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// A write waiting until the flusher has persisted `seqno`.
    Persist {
        /// The vbucket.
        vbid: Vbid,
        /// The seqno to persist.
        seqno: Seqno,
        /// What to return once persisted.
        result: MutationResult,
    },
    /// A vbucket deletion waiting until its files are gone.
    VbDeletion {
        /// The vbucket.
        vbid: Vbid,
    },
    /// A collections manifest being persisted.
    Manifest,
}

#[derive(Debug)]
enum State {
    Pending(Waiting),
    Ready(EngineResult<Outcome>),
}

/// Parked calls, by cookie.
pub struct CookieTable {
    states: Mutex<HashMap<CookieId, State>>,
    // std's Arc: the notifier is the caller's, outside what loom models.
    notifier: std::sync::Arc<dyn Notifier>,
}

impl std::fmt::Debug for CookieTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieTable")
            .field("states", &lock(&self.states).len())
            .finish_non_exhaustive()
    }
}

impl CookieTable {
    /// A table that reports completions to `notifier`.
    pub fn new(notifier: std::sync::Arc<dyn Notifier>) -> Self {
        CookieTable {
            states: Mutex::new(HashMap::new()),
            notifier,
        }
    }

    /// Parks `waiting` under `cookie`. A cookie holds at most one parked call.
    pub fn park(&self, cookie: CookieId, waiting: Waiting) -> EngineResult<()> {
        let mut states = lock(&self.states);
        if states.contains_key(&cookie) {
            return Err(EngineError::InvalidArguments(format!(
                "cookie {cookie} already has a parked call"
            )));
        }
        states.insert(cookie, State::Pending(waiting));
        Ok(())
    }

    /// Turns the parked call of `cookie` into a result and notifies the
    /// caller, once. `result` maps what was waited for to the result. Returns
    /// false (and calls nothing) when the cookie has no pending call, because
    /// it was released or already completed.
    pub fn complete(
        &self,
        cookie: CookieId,
        result: impl FnOnce(&Waiting) -> EngineResult<Outcome>,
    ) -> bool {
        let status = {
            let mut states = lock(&self.states);
            let Some(state) = states.get_mut(&cookie) else {
                return false;
            };
            let State::Pending(w) = state else {
                return false;
            };
            let r = result(w);
            let status = r.as_ref().map(|_| ()).map_err(Clone::clone);
            *state = State::Ready(r);
            status
        };
        // Outside the lock: the notifier may re-issue the call at once.
        self.notifier.notify(cookie, status);
        true
    }

    /// What is parked under `cookie`. A finished result is removed and
    /// returned; a pending call stays parked.
    pub fn collect(&self, cookie: CookieId) -> Option<EngineResult<Outcome>> {
        let mut states = lock(&self.states);
        match states.get(&cookie) {
            None => None,
            Some(State::Pending(_)) => Some(Err(EngineError::WouldBlock)),
            Some(State::Ready(_)) => match states.remove(&cookie) {
                Some(State::Ready(r)) => Some(r),
                _ => None,
            },
        }
    }

    /// The caller is gone: frees whatever is parked under `cookie`. Returns
    /// true when something was freed.
    pub fn release(&self, cookie: CookieId) -> bool {
        lock(&self.states).remove(&cookie).is_some()
    }

    /// The pending call of `cookie`, if any.
    pub fn waiting(&self, cookie: CookieId) -> Option<Waiting> {
        match lock(&self.states).get(&cookie) {
            Some(State::Pending(w)) => Some(w.clone()),
            _ => None,
        }
    }

    /// Cookies with state (pending or ready, not yet collected).
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.states).len()
    }

    /// True when no cookie has state.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

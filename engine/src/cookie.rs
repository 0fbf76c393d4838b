//! The would-block protocol (memcached's `ewouldblock` and
//! `notify_io_complete`), and the in-process waits the Rust API is built on.
//!
//! A call that cannot finish now parks a [`Waiting`] state and gets a
//! [`Ticket`]: who waits (a client's cookie, or a Rust caller waiting in
//! this process), a token unique to this parking, and the kind of wait.
//! Whatever finishes the work (a flush, a vbucket deletion, a manifest
//! persisted) holds the ticket and completes it. Only the ticket that parked
//! the call can complete it: a ticket of an earlier parking of the same
//! cookie id has another token, and a ticket of another kind of wait is
//! refused, so a reused cookie id can never receive another call's result.
//!
//! A client cookie is then told through the [`Notifier`] and collects the
//! result by re-issuing the call; a Rust caller is woken directly (a
//! blocking call returns, a [`crate::Pending`] future is ready).
//!
//! The state is removed exactly once: by the collecting call, or by
//! [`CookieTable::release`] when the caller reports the cookie gone.
//! Releasing also takes the ticket out of the waiter list it was parked in
//! (a vbucket's persistence or deletion waiters). A background step that
//! fails stores its error as the result; the re-issued call returns that
//! error and never re-runs the operation on state that no longer exists
//! (upstream MB-43708).

use crate::error::{EngineError, EngineResult};
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering, Shards, lock, wait};
use kvstore_core::{Cas, Seqno, Vbid};
use std::collections::BTreeMap;
use std::task::Waker;

/// Identifies one client request context (a connection's current command).
pub type CookieId = u64;

/// Told when a blocked call of a client cookie can be re-issued.
pub trait Notifier: Send + Sync {
    /// The call parked under `cookie` has a result; `status` previews it.
    fn notify(&self, cookie: CookieId, status: EngineResult<()>);
}

/// A notifier that does nothing (for callers that use only the Rust API).
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

/// The kind of a wait. A ticket completes only a wait of its own kind, and
/// a re-issued call collects only a result of its own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitKind {
    /// A durable write waiting to be persisted.
    Persist,
    /// A vbucket deletion waiting until its files are gone.
    VbDeletion,
    /// A collections manifest being persisted.
    Manifest,
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

impl Waiting {
    /// The kind of this wait.
    #[must_use]
    pub fn kind(&self) -> WaitKind {
        match self {
            Waiting::Persist { .. } => WaitKind::Persist,
            Waiting::VbDeletion { .. } => WaitKind::VbDeletion,
            Waiting::Manifest => WaitKind::Manifest,
        }
    }
}

/// Who waits for a parked call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A client's cookie: told through the notifier, collects by re-issuing.
    Client(CookieId),
    /// A Rust caller of this process, woken directly. Its ids come from the
    /// table and never meet a client's.
    Local(u64),
}

/// One parking of one call. Only [`CookieTable`] makes tickets, each with a
/// token never used before, so a ticket completes exactly the call that
/// parked it and nothing parked later under the same cookie id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    owner: Owner,
    token: u64,
    kind: WaitKind,
}

impl Ticket {
    /// Who waits.
    #[must_use]
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// The kind of wait.
    #[must_use]
    pub fn kind(&self) -> WaitKind {
        self.kind
    }
}

/// Where a Rust caller's result is delivered, and how it is woken.
#[derive(Default)]
pub(crate) struct Mailbox {
    state: Mutex<MailboxState>,
    cv: Condvar,
}

#[derive(Default)]
struct MailboxState {
    result: Option<EngineResult<Outcome>>,
    waker: Option<Waker>,
}

impl Mailbox {
    fn fill(&self, r: EngineResult<Outcome>) {
        let waker = {
            let mut s = lock(&self.state);
            s.result = Some(r);
            s.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Blocks until the result is there and takes it.
    pub(crate) fn wait(&self) -> EngineResult<Outcome> {
        let mut s = lock(&self.state);
        loop {
            if let Some(r) = s.result.take() {
                return r;
            }
            s = wait(&self.cv, s);
        }
    }

    /// Like [`Mailbox::wait`], giving up after `timeout`.
    #[cfg(not(loom))]
    pub(crate) fn wait_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Option<EngineResult<Outcome>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut s = lock(&self.state);
        loop {
            if let Some(r) = s.result.take() {
                return Some(r);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            s = self
                .cv
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Takes the result if it is there; otherwise keeps `waker` to wake.
    pub(crate) fn poll(&self, waker: &Waker) -> Option<EngineResult<Outcome>> {
        let mut s = lock(&self.state);
        if let Some(r) = s.result.take() {
            return Some(r);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waker = Some(waker.clone());
        }
        None
    }
}

/// The tickets parked on one vbucket incarnation.
#[derive(Default)]
pub(crate) struct WaiterList {
    lists: Mutex<Lists>,
}

#[derive(Default)]
pub(crate) struct Lists {
    /// Durable writes by the seqno they wait for.
    pub(crate) persist: BTreeMap<u64, Vec<Ticket>>,
    /// Deletes waiting until the files are gone.
    pub(crate) deletion: Vec<Ticket>,
}

impl WaiterList {
    /// The persistence waiters up to and including `seqno`.
    pub(crate) fn take_persisted(&self, seqno: Seqno) -> Vec<Ticket> {
        let mut l = lock(&self.lists);
        let later = l.persist.split_off(&seqno.0.saturating_add(1));
        std::mem::replace(&mut l.persist, later)
            .into_values()
            .flatten()
            .collect()
    }

    /// Every waiter (the incarnation is going away).
    pub(crate) fn take_all(&self) -> Lists {
        std::mem::take(&mut *lock(&self.lists))
    }

    fn remove(&self, ticket: &Ticket) {
        let mut l = lock(&self.lists);
        match ticket.kind {
            WaitKind::Persist => {
                l.persist.retain(|_, v| {
                    v.retain(|t| t != ticket);
                    !v.is_empty()
                });
            }
            WaitKind::VbDeletion => l.deletion.retain(|t| t != ticket),
            WaitKind::Manifest => {}
        }
    }
}

enum State {
    Pending,
    Ready(EngineResult<Outcome>),
}

struct Entry {
    token: u64,
    waiting: Waiting,
    state: State,
    /// The waiter list the ticket sits in, so a release can take it out.
    parked_in: Option<Arc<WaiterList>>,
    /// A Rust caller's slot (owner `Local`).
    slot: Option<Arc<Mailbox>>,
}

/// Parked calls, by owner, in a sharded map: cookies of different
/// connections rarely share a lock.
pub struct CookieTable {
    entries: Shards<Owner, Entry>,
    tokens: AtomicU64,
    locals: AtomicU64,
    // std's Arc: the notifier is the caller's, outside what loom models.
    notifier: std::sync::Arc<dyn Notifier>,
}

impl std::fmt::Debug for CookieTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieTable")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl CookieTable {
    /// A table that reports completions of client cookies to `notifier`.
    pub fn new(notifier: std::sync::Arc<dyn Notifier>) -> Self {
        CookieTable {
            entries: Shards::new(),
            tokens: AtomicU64::new(1),
            locals: AtomicU64::new(1),
            notifier,
        }
    }

    /// A fresh owner id for a Rust caller.
    pub(crate) fn local_owner(&self) -> Owner {
        Owner::Local(self.locals.fetch_add(1, Ordering::Relaxed))
    }

    fn insert(
        &self,
        owner: Owner,
        waiting: Waiting,
        parked_in: Option<Arc<WaiterList>>,
        slot: Option<Arc<Mailbox>>,
    ) -> EngineResult<Ticket> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let kind = waiting.kind();
        let entry = Entry {
            token,
            waiting,
            state: State::Pending,
            parked_in,
            slot,
        };
        match self.entries.insert_new(owner, entry) {
            Ok(()) => Ok(Ticket { owner, token, kind }),
            Err(_) => Err(EngineError::InvalidArguments(match owner {
                Owner::Client(c) => format!("cookie {c} already has a parked call"),
                Owner::Local(_) => "a local wait was parked twice".into(),
            })),
        }
    }

    /// Parks `waiting` under a client cookie, in no waiter list (the caller
    /// keeps the ticket). A cookie holds at most one parked call.
    pub fn park(&self, cookie: CookieId, waiting: Waiting) -> EngineResult<Ticket> {
        self.insert(Owner::Client(cookie), waiting, None, None)
    }

    /// Parks `waiting` for `owner` and puts the ticket in `list` (a
    /// vbucket's waiters), both under the list's lock, so a completion
    /// never finds the ticket before the state and a release never misses
    /// it. `add` files the ticket in the list.
    pub(crate) fn park_in(
        &self,
        owner: Owner,
        waiting: Waiting,
        list: &Arc<WaiterList>,
        slot: Option<Arc<Mailbox>>,
        add: impl FnOnce(&mut Lists, Ticket),
    ) -> EngineResult<Ticket> {
        let mut l = lock(&list.lists);
        let ticket = self.insert(owner, waiting, Some(Arc::clone(list)), slot)?;
        add(&mut l, ticket);
        Ok(ticket)
    }

    /// Parks `waiting` for a Rust caller, in no waiter list.
    pub(crate) fn park_local(
        &self,
        owner: Owner,
        waiting: Waiting,
        slot: Arc<Mailbox>,
    ) -> EngineResult<Ticket> {
        self.insert(owner, waiting, None, Some(slot))
    }

    /// Completes the call `ticket` parked, once: `result` maps what was
    /// waited for to the result. A client is notified (and collects later);
    /// a Rust caller is woken with the result. Returns false, and does
    /// nothing, when that parking is gone: released, already completed, or
    /// replaced by a later call under the same cookie id (another token).
    pub fn complete(
        &self,
        ticket: Ticket,
        result: impl FnOnce(&Waiting) -> EngineResult<Outcome>,
    ) -> bool {
        let matches = |e: &Entry| {
            e.token == ticket.token
                && e.waiting.kind() == ticket.kind
                && matches!(e.state, State::Pending)
        };
        match ticket.owner {
            Owner::Local(_) => {
                let Some(e) = self.entries.remove_if(&ticket.owner, matches) else {
                    return false;
                };
                let r = result(&e.waiting);
                if let Some(slot) = &e.slot {
                    slot.fill(r);
                }
                true
            }
            Owner::Client(cookie) => {
                let status = self.entries.update(&ticket.owner, |e| {
                    if !matches(e) {
                        return None;
                    }
                    let r = result(&e.waiting);
                    let status = r.as_ref().map(|_| ()).map_err(Clone::clone);
                    e.state = State::Ready(r);
                    Some(status)
                });
                let Some(Some(status)) = status else {
                    return false;
                };
                // Outside the shard lock: the notifier may re-issue at once.
                self.notifier.notify(cookie, status);
                true
            }
        }
    }

    /// What a re-issued call of `kind` finds under `cookie`: `None` when
    /// nothing is parked there; `WouldBlock` while it is pending; the result
    /// (removed) once complete. A call of another kind than the one parked
    /// is refused and leaves the parked state alone.
    pub fn collect(&self, cookie: CookieId, kind: WaitKind) -> Option<EngineResult<Outcome>> {
        let owner = Owner::Client(cookie);
        if let Some(e) = self.entries.remove_if(&owner, |e| {
            e.waiting.kind() == kind && matches!(e.state, State::Ready(_))
        }) {
            return match e.state {
                State::Ready(r) => Some(r),
                State::Pending => Some(Err(EngineError::WouldBlock)),
            };
        }
        self.entries.update(&owner, |e| {
            if e.waiting.kind() == kind {
                Err(EngineError::WouldBlock)
            } else {
                Err(EngineError::InvalidArguments(format!(
                    "cookie {cookie} has a parked call of another kind ({:?})",
                    e.waiting.kind()
                )))
            }
        })
    }

    /// The caller is gone: frees whatever is parked under `cookie` and
    /// takes its ticket out of the waiter list it sat in. Returns true when
    /// something was freed.
    pub fn release(&self, cookie: CookieId) -> bool {
        self.release_owner(Owner::Client(cookie))
    }

    pub(crate) fn release_owner(&self, owner: Owner) -> bool {
        let Some(e) = self.entries.remove_if(&owner, |_| true) else {
            return false;
        };
        if let Some(list) = &e.parked_in {
            list.remove(&Ticket {
                owner,
                token: e.token,
                kind: e.waiting.kind(),
            });
        }
        true
    }

    /// The pending call of `cookie`, if any.
    pub fn waiting(&self, cookie: CookieId) -> Option<Waiting> {
        self.entries
            .update(&Owner::Client(cookie), |e| match e.state {
                State::Pending => Some(e.waiting.clone()),
                State::Ready(_) => None,
            })
            .flatten()
    }

    /// Parked calls (pending or ready, not yet collected).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is parked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn persist(vbid: u16, seqno: u64) -> Waiting {
        Waiting::Persist {
            vbid: Vbid(vbid),
            seqno: Seqno(seqno),
            result: MutationResult {
                cas: Cas(seqno),
                seqno: Seqno(seqno),
                vbucket_uuid: 0,
            },
        }
    }

    /// A ticket of an earlier parking of a cookie id (released, then the
    /// id reused) completes nothing, even where no waiter list could drop
    /// it (a deletion job holds it, say).
    #[test]
    fn a_stale_ticket_completes_nothing() {
        let t = CookieTable::new(std::sync::Arc::new(NoNotify));
        let old = t.park(7, persist(0, 1)).unwrap();
        assert!(t.release(7));
        let new = t.park(7, persist(1, 1)).unwrap();
        assert!(
            !t.complete(old, |_| Err(EngineError::NotMyVbucket(Vbid(0)))),
            "a stale ticket completed the new call"
        );
        assert!(matches!(
            t.collect(7, WaitKind::Persist),
            Some(Err(EngineError::WouldBlock))
        ));
        assert!(t.complete(new, |w| match w {
            Waiting::Persist { result, .. } => Ok(Outcome::Mutation(*result)),
            _ => Ok(Outcome::Done),
        }));
        // A re-issued call of another kind does not take the result.
        assert!(matches!(
            t.collect(7, WaitKind::Manifest),
            Some(Err(EngineError::InvalidArguments(_)))
        ));
        assert!(matches!(
            t.collect(7, WaitKind::Persist),
            Some(Ok(Outcome::Mutation(_)))
        ));
        assert!(t.is_empty());
    }
}

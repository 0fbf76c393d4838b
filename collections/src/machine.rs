//! The manifest update state machine (DESIGN §8; upstream MB-43708).
//!
//! At most one update is in flight. The engine drives it:
//!
//! 1. [`UpdateMachine::start`]: a validated successor from a cookie moves
//!    `Idle` to `Persisting`; the engine persists it in the background and
//!    answers `WouldBlock`. Another cookie meanwhile gets
//!    [`Start::Busy`]; the same cookie is told it is still in flight.
//! 2. [`UpdateMachine::finished`]: the background task reports. On success
//!    the machine waits in `Persisted` for the cookie to come back; on
//!    failure it returns to `Idle` **at once**, so no later update is refused
//!    with a stale busy, and the engine hands the error to the cookie.
//! 3. [`UpdateMachine::take`]: the cookie re-issues its call after a
//!    success; the manifest is handed over to be applied, and the machine is
//!    `Idle` again. After a failure there is nothing to take: the engine has
//!    returned the stored error and never resumes the update.
//! 4. [`UpdateMachine::disconnect`]: the cookie is gone. A persisted
//!    manifest is handed over to be applied anyway (memory must match what is
//!    on disk); one still persisting is marked orphaned and is applied when
//!    its task succeeds. Either way the machine ends `Idle`.

use crate::manifest::Manifest;
use crate::sync::{Arc, Mutex, lock};

/// Identifies the caller of an update (a connection's command). The
/// machine works with any copyable id; this is the default.
pub type Cookie = u64;

#[derive(Debug)]
enum State<C> {
    Idle,
    Persisting {
        cookie: C,
        manifest: Arc<Manifest>,
        orphaned: bool,
    },
    Persisted {
        cookie: C,
        manifest: Arc<Manifest>,
    },
}

/// What [`UpdateMachine::start`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start<C = Cookie> {
    /// The update is now in flight: persist it and answer `WouldBlock`.
    Started,
    /// This cookie's update is already in flight.
    AlreadyInFlight,
    /// Another cookie's update is in flight.
    Busy {
        /// The cookie holding the machine.
        holder: C,
    },
}

/// What [`UpdateMachine::finished`] decided.
#[derive(Debug, Clone)]
pub enum Finished {
    /// Tell the cookie it succeeded; it will come back to apply.
    NotifySuccess,
    /// Tell the cookie it failed; the machine is idle.
    NotifyFailure,
    /// The cookie left while persisting: apply this manifest now.
    ApplyOrphan(Arc<Manifest>),
    /// The cookie left and the persist failed: nothing to do.
    DropOrphan,
    /// The report does not match the update in flight (ignored).
    Stale,
}

impl PartialEq for Finished {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Finished::ApplyOrphan(a), Finished::ApplyOrphan(b)) => **a == **b,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for Finished {}

/// The update state machine, over caller ids of type `C`.
#[derive(Debug)]
pub struct UpdateMachine<C = Cookie> {
    state: Mutex<State<C>>,
}

impl<C> Default for UpdateMachine<C> {
    fn default() -> Self {
        UpdateMachine {
            state: Mutex::new(State::Idle),
        }
    }
}

impl<C: Copy + PartialEq> UpdateMachine<C> {
    /// An idle machine.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an update of `manifest` (already validated as a successor) for
    /// `cookie`.
    pub fn start(&self, cookie: C, manifest: Arc<Manifest>) -> Start<C> {
        let mut s = lock(&self.state);
        match &*s {
            State::Idle => {
                *s = State::Persisting {
                    cookie,
                    manifest,
                    orphaned: false,
                };
                Start::Started
            }
            State::Persisting {
                cookie: c,
                orphaned: true,
                ..
            } => Start::Busy { holder: *c },
            State::Persisting { cookie: c, .. } | State::Persisted { cookie: c, .. } => {
                if *c == cookie {
                    Start::AlreadyInFlight
                } else {
                    Start::Busy { holder: *c }
                }
            }
        }
    }

    /// The background task for `cookie` finished, successfully or not.
    pub fn finished(&self, cookie: C, ok: bool) -> Finished {
        let mut s = lock(&self.state);
        let State::Persisting {
            cookie: c,
            manifest,
            orphaned,
        } = &*s
        else {
            return Finished::Stale;
        };
        if *c != cookie {
            return Finished::Stale;
        }
        let (manifest, orphaned) = (Arc::clone(manifest), *orphaned);
        match (ok, orphaned) {
            (true, false) => {
                *s = State::Persisted { cookie, manifest };
                Finished::NotifySuccess
            }
            (true, true) => {
                *s = State::Idle;
                Finished::ApplyOrphan(manifest)
            }
            (false, false) => {
                *s = State::Idle;
                Finished::NotifyFailure
            }
            (false, true) => {
                *s = State::Idle;
                Finished::DropOrphan
            }
        }
    }

    /// The cookie came back after a successful persist: its manifest, to
    /// apply. `None` when there is nothing for this cookie.
    pub fn take(&self, cookie: C) -> Option<Arc<Manifest>> {
        let mut s = lock(&self.state);
        match &*s {
            State::Persisted {
                cookie: c,
                manifest,
            } if *c == cookie => {
                let m = Arc::clone(manifest);
                *s = State::Idle;
                Some(m)
            }
            _ => None,
        }
    }

    /// The cookie is gone. Returns a persisted manifest to apply now.
    pub fn disconnect(&self, cookie: C) -> Option<Arc<Manifest>> {
        let mut s = lock(&self.state);
        match &mut *s {
            State::Persisting {
                cookie: c,
                orphaned,
                ..
            } if *c == cookie => {
                *orphaned = true;
                None
            }
            State::Persisted {
                cookie: c,
                manifest,
            } if *c == cookie => {
                let m = Arc::clone(manifest);
                *s = State::Idle;
                Some(m)
            }
            _ => None,
        }
    }

    /// The cookie whose update is in flight, if any.
    #[must_use]
    pub fn in_flight(&self) -> Option<C> {
        match &*lock(&self.state) {
            State::Idle => None,
            State::Persisting { cookie, .. } | State::Persisted { cookie, .. } => Some(*cookie),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn success_failure_and_disconnect() {
        let m = Arc::new(Manifest::epoch());
        let u = UpdateMachine::new();
        assert_eq!(u.start(1, m.clone()), Start::Started);
        assert_eq!(u.start(1, m.clone()), Start::AlreadyInFlight);
        assert_eq!(u.start(2, m.clone()), Start::Busy { holder: 1 });
        assert_eq!(u.take(1), None, "nothing to take while persisting");
        assert_eq!(u.finished(2, true), Finished::Stale);
        assert_eq!(u.finished(1, true), Finished::NotifySuccess);
        assert_eq!(u.start(2, m.clone()), Start::Busy { holder: 1 });
        assert!(u.take(1).is_some());
        assert_eq!(u.in_flight(), None);
        // A failure frees the machine at once.
        assert_eq!(u.start(2, m.clone()), Start::Started);
        assert_eq!(u.finished(2, false), Finished::NotifyFailure);
        assert_eq!(u.in_flight(), None);
        assert_eq!(u.take(2), None, "a failed update is never resumed");
        assert_eq!(u.start(3, m.clone()), Start::Started);
        // Disconnect while persisting, then success: apply anyway. The
        // departed cookie's id, reused meanwhile, is busy like any other.
        assert_eq!(u.disconnect(3), None);
        assert_eq!(u.start(3, m.clone()), Start::Busy { holder: 3 });
        assert!(matches!(u.finished(3, true), Finished::ApplyOrphan(_)));
        assert_eq!(u.in_flight(), None);
        // Disconnect after success: apply now.
        assert_eq!(u.start(4, m.clone()), Start::Started);
        assert_eq!(u.finished(4, true), Finished::NotifySuccess);
        assert!(u.disconnect(4).is_some());
        assert_eq!(u.in_flight(), None);
    }
}

//! Deferred vbucket deletion.
//!
//! When the last reference to a deleted vbucket incarnation drops (the map
//! let go of it at delete time; each guard holds one), its `Drop` queues a
//! [`DeletionJob`] here. A background task runs the job: it destroys exactly
//! that `(vbid, revision)` in the backend, then tells every cookie parked on
//! the incarnation `NotMyVbucket` and every caller that asked to hear about
//! the deletion that it is done. `Drop` runs once per incarnation, so the
//! store is destroyed exactly once.

use crate::cookie::{CookieTable, Outcome, Ticket};
use crate::error::EngineError;
use crate::sync::{Arc, Condvar, Mutex, lock, wait};
use kvstore_core::{KvStore, Revision, VbStore, Vbid};
use std::collections::VecDeque;

/// One incarnation to destroy.
pub(crate) struct DeletionJob {
    pub(crate) vbid: Vbid,
    pub(crate) kv: std::sync::Arc<dyn KvStore>,
    pub(crate) store: std::sync::Arc<dyn VbStore>,
    /// Calls parked on the incarnation (durable writes waiting for a flush).
    pub(crate) parked: Vec<Ticket>,
    /// Delete calls that asked to be told when the files are gone.
    pub(crate) notify: Vec<Ticket>,
    pub(crate) cookies: Arc<CookieTable>,
}

/// A finished deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destroyed {
    /// The vbucket.
    pub vbid: Vbid,
    /// The revision destroyed.
    pub revision: Revision,
    /// The backend's error, if it failed.
    pub error: Option<String>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<DeletionJob>,
    /// Incarnations marked deleting whose deletion has not finished: those
    /// still held by guards, those queued and those running.
    awaiting: usize,
    running: usize,
    shutdown: bool,
    done: Vec<Destroyed>,
    total: u64,
}

/// The queue of deletions and the record of those done.
pub struct Deleter {
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Deleter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("Deleter")
            .field("queued", &s.jobs.len())
            .field("running", &s.running)
            .field("total", &s.total)
            .finish()
    }
}

/// How many finished deletions are remembered.
const KEEP_DONE: usize = 4096;

impl Default for Deleter {
    fn default() -> Self {
        Deleter {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }
    }
}

impl Deleter {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts an incarnation just marked deleting.
    pub(crate) fn announce(&self) {
        lock(&self.state).awaiting += 1;
    }

    pub(crate) fn push(&self, job: DeletionJob) {
        lock(&self.state).jobs.push_back(job);
        self.cv.notify_all();
    }

    fn run(&self, job: DeletionJob) {
        let revision = job.store.revision();
        let result = job.kv.destroy(job.vbid, revision);
        match &result {
            Ok(()) => tracing::info!(vbid = %job.vbid, %revision, "vbucket files removed"),
            Err(e) => {
                tracing::error!(vbid = %job.vbid, %revision, error = %e, "vbucket deletion failed");
            }
        }
        drop(job.store);
        {
            // Recorded before anyone is told, so a woken caller sees it.
            let mut s = lock(&self.state);
            s.total += 1;
            if s.done.len() == KEEP_DONE {
                s.done.remove(0);
            }
            s.done.push(Destroyed {
                vbid: job.vbid,
                revision,
                error: result.as_ref().err().map(ToString::to_string),
            });
        }
        for c in job.parked {
            job.cookies
                .complete(c, |_| Err(EngineError::NotMyVbucket(job.vbid)));
        }
        for c in job.notify {
            job.cookies.complete(c, |_| match &result {
                Ok(()) => Ok(Outcome::Done),
                Err(e) => Err(EngineError::TemporaryFailure(format!(
                    "removing the files of {} failed: {e}",
                    job.vbid
                ))),
            });
        }
        {
            let mut s = lock(&self.state);
            s.running -= 1;
            s.awaiting = s.awaiting.saturating_sub(1);
        }
        self.cv.notify_all();
    }

    /// Runs every queued job in the calling thread; returns how many ran.
    pub fn run_pending(&self) -> usize {
        let mut n = 0;
        loop {
            let job = {
                let mut s = lock(&self.state);
                let Some(job) = s.jobs.pop_front() else {
                    return n;
                };
                s.running += 1;
                job
            };
            self.run(job);
            n += 1;
        }
    }

    /// The background task: runs jobs as they come until shut down, then
    /// finishes what is queued.
    pub fn run_worker(&self) {
        loop {
            let job = {
                let mut s = lock(&self.state);
                loop {
                    if let Some(job) = s.jobs.pop_front() {
                        s.running += 1;
                        break job;
                    }
                    if s.shutdown {
                        return;
                    }
                    s = wait(&self.cv, s);
                }
            };
            self.run(job);
        }
    }

    /// Asks the background task to stop once the queue is empty.
    pub fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    /// Blocks until every deleted incarnation is destroyed: nothing held by
    /// a guard, queued or running. (It waits for guards to drop, so do not
    /// call it while holding one.)
    pub fn wait_idle(&self) {
        let mut s = lock(&self.state);
        while s.awaiting > 0 || !s.jobs.is_empty() || s.running > 0 {
            s = wait(&self.cv, s);
        }
    }

    /// Deletions finished so far (the most recent few thousand).
    #[must_use]
    pub fn destroyed(&self) -> Vec<Destroyed> {
        lock(&self.state).done.clone()
    }

    /// Deletions finished so far, in total.
    #[must_use]
    pub fn destroyed_total(&self) -> u64 {
        lock(&self.state).total
    }

    /// Deleted incarnations not yet destroyed (waiting for their guards,
    /// queued or running).
    #[must_use]
    pub fn pending(&self) -> usize {
        lock(&self.state).awaiting
    }
}

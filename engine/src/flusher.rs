//! The flusher: commits each vbucket's dirty items to its store in batches.
//!
//! A write marks its vbucket scheduled and hands one flush task to a rayon
//! pool. A task takes a guard on the vbucket and flushes it: the dirty map
//! moves to `flushing` (still readable), is committed with the vbucket
//! state in one atomic batch, and on success the persisted seqno moves up
//! and the tickets waiting for it are completed.
//!
//! On failure nothing is dropped: the items go back to the dirty map
//! (behind any newer write of the same key), waiting tickets are told the
//! flush failed, and the vbucket gets a back-off of its own: it goes into a
//! "not before T" queue, which a timer thread drains into the pool when T
//! comes. No worker ever sleeps, so the other vbuckets keep their pace. The
//! next attempt first reopens the store from its last durable commit (a
//! poisoned handle is replaced by a fresh one; a commit that may have
//! landed without its sync is rolled back), then flushes the dirty items
//! again.

use crate::cookie::{Outcome, Waiting};
use crate::engine::Shared;
use crate::error::EngineError;
use crate::sync::{Arc, Condvar, Mutex, Ordering, lock, wait};
use crate::vbucket::{VBucket, item_bytes};
use kvstore_core::{CommitBatch, Seqno, StoreResult, Vbid};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Tasks handed to the pool and not yet finished.
    pending: usize,
    /// Vbuckets waiting out a back-off, by the time they may retry.
    delayed: BTreeSet<(Instant, Vbid)>,
    shutdown: bool,
}

struct Sched {
    state: Mutex<State>,
    cv: Condvar,
}

/// The flush scheduler: the pool, the back-off queue and its timer.
pub(crate) struct Flusher {
    /// Behind its own `Arc`: a pool task reports its end after it let go
    /// of the engine, so the engine is gone when the flusher is idle.
    sched: Arc<Sched>,
    #[cfg(not(loom))]
    pool: Option<rayon::ThreadPool>,
    min_backoff: Duration,
    max_backoff: Duration,
}

/// How a flush ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Nothing was dirty.
    Clean,
    /// This many items were committed, up to this seqno.
    Committed(usize, Seqno),
    /// The commit failed; the items are dirty again.
    Failed(String),
}

impl Flusher {
    /// A scheduler with `threads` pool threads (0: flushes run only when
    /// [`crate::Engine::flush`] is called).
    pub(crate) fn new(threads: usize, min_backoff: Duration, max_backoff: Duration) -> Self {
        #[cfg(not(loom))]
        let pool = (threads > 0)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("flusher-{i}"))
                    .build()
            })
            .and_then(|r| match r {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "no flusher pool; flushes run only on demand");
                    None
                }
            });
        #[cfg(loom)]
        let _ = threads;
        Flusher {
            sched: Arc::new(Sched {
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
            }),
            #[cfg(not(loom))]
            pool,
            min_backoff,
            max_backoff,
        }
    }

    /// True when background flushes run (a pool exists).
    pub(crate) fn has_pool(&self) -> bool {
        #[cfg(not(loom))]
        {
            self.pool.is_some()
        }
        #[cfg(loom)]
        {
            false
        }
    }

    /// The back-off after `failures` failed flushes in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.min_backoff
            .saturating_mul(1 << shift)
            .min(self.max_backoff)
    }

    pub(crate) fn shutdown(&self) {
        lock(&self.sched.state).shutdown = true;
        self.sched.cv.notify_all();
    }

    /// Blocks until no flush task is queued or running. Vbuckets waiting out
    /// a back-off do not count: nothing can run for them yet.
    pub(crate) fn wait_idle(&self) {
        let mut s = lock(&self.sched.state);
        while s.pending > 0 {
            s = wait(&self.sched.cv, s);
        }
    }

    /// Vbuckets waiting out a back-off.
    pub(crate) fn delayed(&self) -> usize {
        lock(&self.sched.state).delayed.len()
    }

    /// Puts `vbid` in the back-off queue until `at`.
    fn delay(&self, at: Instant, vbid: Vbid) {
        lock(&self.sched.state).delayed.insert((at, vbid));
        self.sched.cv.notify_all();
    }
}

/// Queues a flush of `vb` unless one is queued already (or it waits out a
/// back-off: the timer queues it then).
pub(crate) fn schedule(shared: &Arc<Shared>, vb: &VBucket) {
    if vb.flush_scheduled.swap(true, Ordering::SeqCst) {
        return;
    }
    spawn(shared, vb.vbid());
}

/// Hands one flush of `vbid` to the pool.
fn spawn(shared: &Arc<Shared>, vbid: Vbid) {
    #[cfg(not(loom))]
    {
        let Some(pool) = &shared.flusher.pool else {
            return;
        };
        {
            let mut st = lock(&shared.flusher.sched.state);
            if st.shutdown {
                return;
            }
            st.pending += 1;
        }
        let s = Arc::clone(shared);
        let sched = Arc::clone(&shared.flusher.sched);
        pool.spawn(move || {
            if let Ok(vb) = s.map.get(vbid) {
                run_task(&s, &vb);
            }
            // Let go of the engine before reporting the end.
            drop(s);
            lock(&sched.state).pending -= 1;
            sched.cv.notify_all();
        });
    }
    #[cfg(loom)]
    {
        let _ = (shared, vbid);
    }
}

/// One pool task: flushes `vb` unless a flush of it is running. A worker
/// never waits for another flush of the same vbucket (that would take a
/// worker from the other vbuckets): it leaves the work to the running
/// flush, which schedules one more when it is done.
#[cfg(not(loom))]
fn run_task(shared: &Arc<Shared>, vb: &VBucket) {
    let guard = match crate::sync::try_lock(&vb.flush_lock) {
        Some(g) => g,
        None => {
            vb.flush_again.store(true, Ordering::SeqCst);
            // The holder may have finished (and looked at the flag) since.
            match crate::sync::try_lock(&vb.flush_lock) {
                Some(g) => g,
                None => return,
            }
        }
    };
    let outcome = flush_locked(vb, shared);
    drop(guard);
    after_flush(shared, vb, &outcome);
}

/// The timer: hands vbuckets whose back-off ended to the pool. It is the
/// only thread that waits on time, and it does no flushing itself.
#[cfg(not(loom))]
pub(crate) fn run_timer(shared: &Arc<Shared>) {
    let f = &shared.flusher;
    let mut s = lock(&f.sched.state);
    loop {
        if s.shutdown {
            return;
        }
        let now = Instant::now();
        let due: Vec<Vbid> = {
            let later = s.delayed.split_off(&(now, Vbid(u16::MAX)));
            std::mem::replace(&mut s.delayed, later)
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        };
        if !due.is_empty() {
            drop(s);
            for vbid in due {
                spawn(shared, vbid);
            }
            s = lock(&f.sched.state);
            continue;
        }
        s = match s.delayed.first().map(|(t, _)| *t) {
            Some(t) => {
                f.sched
                    .cv
                    .wait_timeout(s, t.saturating_duration_since(now))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
            None => wait(&f.sched.cv, s),
        };
    }
}

/// Records how a flush went: resets the back-off, or starts the next one
/// and queues the retry.
pub(crate) fn after_flush(shared: &Arc<Shared>, vb: &VBucket, outcome: &Flushed) {
    let mut h = lock(&vb.health);
    match outcome {
        Flushed::Failed(msg) => {
            h.consecutive = h.consecutive.saturating_add(1);
            let at = Instant::now() + shared.flusher.backoff(h.consecutive);
            h.retry_at = Some(at);
            h.error = Some(msg.clone());
            drop(h);
            // Scheduled until the retry runs: new writes do not bring it
            // forward, and the retry flushes them too.
            vb.flush_scheduled.store(true, Ordering::SeqCst);
            vb.flush_again.store(false, Ordering::SeqCst);
            if shared.flusher.has_pool() {
                shared.flusher.delay(at, vb.vbid());
            }
        }
        Flushed::Clean | Flushed::Committed(..) => {
            if h.error.is_some() {
                tracing::info!(vbid = %vb.vbid(), after = h.consecutive, "flushes succeed again");
            }
            h.consecutive = 0;
            h.retry_at = None;
            h.error = None;
            drop(h);
            // A task left its work to this flush: flush once more.
            if vb.flush_again.swap(false, Ordering::SeqCst) {
                vb.flush_scheduled.store(false, Ordering::SeqCst);
                schedule(shared, vb);
            }
        }
    }
}

/// Reopens a vbucket's store after a failed flush, from its last durable
/// commit: a poisoned handle is replaced by a fresh one read from the
/// backend, and a commit that reached the store although its sync failed
/// is rolled back, since the kernel may not keep its pages. The dirty items
/// are untouched and are flushed again after this.
fn reopen(vb: &VBucket) -> StoreResult<()> {
    let old = vb.store();
    let fresh = vb.kv().open(vb.vbid(), old.revision())?;
    let persisted = vb.persisted_seqno();
    let high = fresh.info()?.high_seqno;
    if high > persisted {
        let r = fresh.rollback(persisted)?;
        tracing::warn!(vbid = %vb.vbid(), from = %high, to = %r.high_seqno,
            "rolled back a commit whose sync failed; its items are flushed again");
    }
    if !std::sync::Arc::ptr_eq(&old, &fresh) {
        vb.counters.reopens.fetch_add(1, Ordering::Relaxed);
        tracing::info!(vbid = %vb.vbid(), revision = %fresh.revision(), "store reopened after a failure");
        vb.replace_store(fresh);
    }
    Ok(())
}

/// Flushes one vbucket now, in the calling thread (waiting for a flush of
/// it in progress).
pub(crate) fn flush_vbucket(vb: &VBucket, shared: &Shared) -> Flushed {
    let _one_at_a_time = lock(&vb.flush_lock);
    flush_locked(vb, shared)
}

/// Flushes one vbucket; the caller holds its flush lock.
fn flush_locked(vb: &VBucket, shared: &Shared) -> Flushed {
    vb.flush_scheduled.store(false, Ordering::SeqCst);
    let failing = {
        let h = lock(&vb.health);
        (h.error.is_some(), h.reopen)
    };
    if failing.0 {
        vb.counters.retries.fetch_add(1, Ordering::Relaxed);
    }
    if failing.1 {
        if let Err(e) = reopen(vb) {
            let msg = format!("flush of {} failed: reopening its store: {e}", vb.vbid());
            tracing::error!(vbid = %vb.vbid(), error = %e, "reopening the store failed");
            vb.counters.failures.fetch_add(1, Ordering::Relaxed);
            lock(&vb.data).flush_error = Some(msg.clone());
            // Durable writes parked meanwhile are told, as after a failed
            // commit; their items stay dirty.
            for ticket in vb.waiters.take_persisted(Seqno(u64::MAX)) {
                vb.cookies
                    .complete(ticket, |_| Err(EngineError::TemporaryFailure(msg.clone())));
            }
            return Flushed::Failed(msg);
        }
        lock(&vb.health).reopen = false;
    }
    let (items, vbstate, local, bytes) = {
        let mut d = lock(&vb.data);
        if d.dirty.is_empty() && !d.state_dirty {
            return Flushed::Clean;
        }
        let items = std::sync::Arc::new(std::mem::take(&mut d.dirty));
        let bytes: u64 = items.values().map(item_bytes).sum();
        d.flushing = Some(std::sync::Arc::clone(&items));
        d.state_dirty = false;
        // The collections state is committed with every batch, so what is on
        // disk always matches the system events and items flushed with it.
        (items, d.vbstate(), d.collections.local_docs(), bytes)
    };
    let max_seqno = items.values().map(|d| d.meta.seqno).max();
    let batch = CommitBatch {
        items: items.values().cloned().collect(),
        local,
        vbstate: Some(vbstate),
    };
    let n = batch.items.len();
    let started = Instant::now();
    let result = vb.store().commit(batch);
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    vb.counters.nanos.fetch_add(nanos, Ordering::Relaxed);
    match result {
        Ok(info) => {
            let persisted = max_seqno.unwrap_or(info.high_seqno).max(info.high_seqno);
            {
                let mut d = lock(&vb.data);
                d.flushing = None;
                d.flush_gen += 1;
                d.dirty_bytes = d.dirty_bytes.saturating_sub(bytes);
                d.flush_error = None;
                vb.set_persisted(persisted);
            }
            let waiters = vb.waiters.take_persisted(persisted);
            shared.memory.release(bytes);
            vb.counters.batches.fetch_add(1, Ordering::Relaxed);
            vb.counters.items.fetch_add(n as u64, Ordering::Relaxed);
            for ticket in waiters {
                vb.cookies.complete(ticket, |w| match w {
                    Waiting::Persist { result, .. } => Ok(Outcome::Mutation(*result)),
                    other => Err(EngineError::InvalidArguments(format!(
                        "a {:?} wait was filed as a persistence wait",
                        other.kind()
                    ))),
                });
            }
            Flushed::Committed(n, persisted)
        }
        Err(e) => {
            let msg = format!("flush of {} failed: {e}", vb.vbid());
            tracing::error!(vbid = %vb.vbid(), error = %e, items = n, "flush failed; items kept dirty");
            let released = {
                let mut d = lock(&vb.data);
                let flushed = d.flushing.take();
                d.flush_gen += 1;
                let mut released = 0;
                if let Some(flushed) = flushed {
                    for (k, doc) in flushed.iter() {
                        if d.dirty.contains_key(k) {
                            // A newer write of the key superseded it.
                            released += item_bytes(doc);
                        } else {
                            d.dirty.insert(k.clone(), doc.clone());
                        }
                    }
                }
                d.dirty_bytes = d.dirty_bytes.saturating_sub(released);
                d.state_dirty = true;
                d.flush_error = Some(msg.clone());
                released
            };
            // Reopen at once (still under the flush lock), so reads do not
            // meet a poisoned handle for the whole back-off; if that fails
            // too, the next attempt tries again.
            if let Err(e) = reopen(vb) {
                tracing::warn!(vbid = %vb.vbid(), error = %e, "reopening the store failed; retried with the flush");
                lock(&vb.health).reopen = true;
            }
            let waiters = max_seqno.map_or_else(Vec::new, |s| vb.waiters.take_persisted(s));
            shared.memory.release(released);
            vb.counters.failures.fetch_add(1, Ordering::Relaxed);
            for ticket in waiters {
                vb.cookies
                    .complete(ticket, |_| Err(EngineError::TemporaryFailure(msg.clone())));
            }
            Flushed::Failed(msg)
        }
    }
}

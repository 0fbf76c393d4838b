//! The flusher: commits each vbucket's dirty items to its store in batches.
//!
//! Writes mark their vbucket scheduled and push it on a queue; worker
//! threads take one vbucket at a time, take a guard on it, and flush it:
//! the dirty map moves to `flushing` (still readable), is committed with the
//! vbucket state in one atomic batch, and on success the persisted seqno
//! moves up and cookies waiting for it are completed. On failure nothing is
//! dropped: the items go back to the dirty map (behind any newer write of
//! the same key), waiting cookies are told the flush failed, the error is
//! kept in the vbucket's stats, and the flush is retried with back-off.

use crate::cookie::Outcome;
use crate::engine::Shared;
use crate::error::EngineError;
use crate::sync::{Condvar, Mutex, Ordering, lock, wait};
use crate::vbucket::{VBucket, item_bytes};
use kvstore_core::{CommitBatch, Seqno, Vbid};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Default)]
struct QueueState {
    queue: VecDeque<Vbid>,
    busy: usize,
    shutdown: bool,
}

/// Vbuckets waiting for a flush.
#[derive(Default)]
pub(crate) struct FlushQueue {
    state: Mutex<QueueState>,
    cv: Condvar,
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

impl FlushQueue {
    /// Queues `vb` unless it already is.
    pub(crate) fn schedule(&self, vb: &VBucket) {
        if !vb.flush_scheduled.swap(true, Ordering::AcqRel) {
            lock(&self.state).queue.push_back(vb.vbid());
            self.cv.notify_one();
        }
    }

    pub(crate) fn shutdown(&self) {
        lock(&self.state).shutdown = true;
        self.cv.notify_all();
    }

    /// Blocks until the queue is empty and no worker is busy.
    pub(crate) fn wait_idle(&self) {
        let mut s = lock(&self.state);
        while !s.queue.is_empty() || s.busy > 0 {
            s = wait(&self.cv, s);
        }
    }

    /// A worker thread's loop.
    pub(crate) fn worker(&self, shared: &Shared) {
        let mut failures: u32 = 0;
        loop {
            let vbid = {
                let mut s = lock(&self.state);
                loop {
                    if let Some(v) = s.queue.pop_front() {
                        s.busy += 1;
                        break v;
                    }
                    if s.shutdown {
                        return;
                    }
                    s = wait(&self.cv, s);
                }
            };
            let outcome = match shared.map.get(vbid) {
                Ok(vb) => {
                    let o = flush_vbucket(&vb, shared);
                    if matches!(o, Flushed::Failed(_)) {
                        failures = failures.saturating_add(1);
                        let backoff = Duration::from_millis(10 << failures.min(9));
                        std::thread::sleep(backoff);
                        self.schedule(&vb);
                    } else {
                        failures = 0;
                    }
                    Some(o)
                }
                Err(_) => None,
            };
            drop(outcome);
            let mut s = lock(&self.state);
            s.busy -= 1;
            drop(s);
            self.cv.notify_all();
        }
    }
}

/// Flushes one vbucket now, in the calling thread.
pub(crate) fn flush_vbucket(vb: &VBucket, shared: &Shared) -> Flushed {
    let _one_at_a_time = lock(&vb.flush_lock);
    vb.flush_scheduled.store(false, Ordering::Release);
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
            let waiters = {
                let mut d = lock(&vb.data);
                d.flushing = None;
                d.flush_gen += 1;
                d.dirty_bytes = d.dirty_bytes.saturating_sub(bytes);
                d.flush_error = None;
                vb.set_persisted(persisted);
                let later = d.persist_waiters.split_off(&(persisted.0 + 1));
                std::mem::replace(&mut d.persist_waiters, later)
            };
            shared.memory.release(bytes);
            vb.counters.batches.fetch_add(1, Ordering::Relaxed);
            vb.counters.items.fetch_add(n as u64, Ordering::Relaxed);
            for cookie in waiters.into_values().flatten() {
                vb.cookies.complete(cookie, |w| match w {
                    crate::cookie::Waiting::Persist { result, .. } => {
                        Ok(Outcome::Mutation(*result))
                    }
                    _ => Ok(Outcome::Done),
                });
            }
            Flushed::Committed(n, persisted)
        }
        Err(e) => {
            let msg = format!("flush of {} failed: {e}", vb.vbid());
            tracing::error!(vbid = %vb.vbid(), error = %e, items = n, "flush failed; items kept dirty");
            let (waiters, released) = {
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
                let cut = max_seqno.map_or(0, |s| s.0 + 1);
                let later = d.persist_waiters.split_off(&cut);
                (std::mem::replace(&mut d.persist_waiters, later), released)
            };
            shared.memory.release(released);
            vb.counters.failures.fetch_add(1, Ordering::Relaxed);
            for cookie in waiters.into_values().flatten() {
                vb.cookies
                    .complete(cookie, |_| Err(EngineError::TemporaryFailure(msg.clone())));
            }
            Flushed::Failed(msg)
        }
    }
}

//! The engine's calls: the Rust API (blocking calls and futures, no
//! cookies) and the cookie protocol for a network server
//! ([`Engine::cookie`]).
//!
//! # What is durable when a call returns
//!
//! | call | when it returns Ok |
//! | --- | --- |
//! | [`Engine::set`], `add`, `replace`, `delete` with `durable: false` | the mutation is in memory, readable, and queued; the flusher persists it shortly after (a crash before that loses it) |
//! | the same with `durable: true`, [`Engine::set_durable`], [`Engine::delete_durable`], and their futures | the mutation is committed and synced: it survives a crash |
//! | [`Engine::create_vbucket`] | the vbucket and its state are durable |
//! | [`Engine::delete_vbucket`] | the deletion is durable (the vbucket will not come back after a crash); its files go once the last guard drops |
//! | [`Engine::delete_vbucket_and_wait`], [`Engine::delete_vbucket_async`] | the files are gone too |
//! | [`Engine::set_collections`] and its future | the manifest is durable and applied to every active vbucket; the system events are queued like non-durable writes |
//! | [`Engine::set_vbucket_state`] | the state is in memory; the next flush persists it |
//! | [`Engine::flush`], [`Engine::shutdown`] | everything written before the call is durable |
//!
//! A durable write whose flush fails returns `TemporaryFailure`: the write
//! is applied in memory and stays queued, and the engine keeps trying to
//! persist it, but it was not acknowledged as durable.

use crate::cookie::{CookieId, Mailbox, MutationResult, Outcome, Owner, WaitKind};
use crate::engine::{
    Engine, Shared, Step, StoreMode, Via, WriteOptions, finish_manifest, outcome_mutation,
    release_owner,
};
use crate::error::{EngineError, EngineResult};
use crate::sync::Arc;
use bytes::Bytes;
use kvstore_core::{DiskKey, Vbid};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The result of a call that may have to wait: a [`Future`] for async
/// callers, or [`Pending::wait`] to block. It owns what it waits on, so it
/// may outlive the borrow of the engine. Dropping it before it is ready
/// withdraws the wait (the operation itself still happens: a write is
/// applied and persisted, a deletion proceeds).
#[must_use = "a pending call does nothing visible until waited on; drop it to stop waiting"]
pub struct Pending<T> {
    inner: Inner<T>,
}

enum Inner<T> {
    Ready(Option<EngineResult<T>>),
    Waiting {
        mailbox: Arc<Mailbox>,
        owner: Owner,
        shared: Arc<Shared>,
        finish: fn(&Arc<Shared>, Owner, Outcome) -> EngineResult<T>,
        done: bool,
    },
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.inner {
            Inner::Ready(_) => "ready",
            Inner::Waiting { done: true, .. } => "done",
            Inner::Waiting { .. } => "waiting",
        };
        f.debug_struct("Pending").field("state", &state).finish()
    }
}

impl<T> Pending<T> {
    fn ready(r: EngineResult<T>) -> Self {
        Pending {
            inner: Inner::Ready(Some(r)),
        }
    }

    /// Blocks the calling thread until the result is there.
    pub fn wait(mut self) -> EngineResult<T> {
        match &mut self.inner {
            Inner::Ready(r) => r.take().unwrap_or(Err(EngineError::InvalidArguments(
                "the result was already taken".into(),
            ))),
            Inner::Waiting {
                mailbox,
                owner,
                shared,
                finish,
                done,
            } => {
                let outcome = mailbox.wait();
                *done = true;
                outcome.and_then(|o| finish(shared, *owner, o))
            }
        }
    }
}

impl<T> Pending<T> {
    /// Blocks until the result is there or `timeout` passes; on timeout the
    /// pending call is handed back, still waiting.
    #[cfg(not(loom))]
    pub fn wait_timeout(mut self, timeout: std::time::Duration) -> Result<EngineResult<T>, Self> {
        match &mut self.inner {
            Inner::Ready(r) => Ok(r.take().unwrap_or(Err(EngineError::InvalidArguments(
                "the result was already taken".into(),
            )))),
            Inner::Waiting {
                mailbox,
                owner,
                shared,
                finish,
                done,
            } => match mailbox.wait_timeout(timeout) {
                Some(outcome) => {
                    *done = true;
                    Ok(outcome.and_then(|o| finish(shared, *owner, o)))
                }
                None => Err(self),
            },
        }
    }
}

impl<T> Unpin for Pending<T> {}

impl<T> Future for Pending<T> {
    type Output = EngineResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(EngineError::InvalidArguments(
                "polled after completion".into(),
            )))),
            Inner::Waiting {
                mailbox,
                owner,
                shared,
                finish,
                done,
            } => {
                if *done {
                    return Poll::Ready(Err(EngineError::InvalidArguments(
                        "polled after completion".into(),
                    )));
                }
                match mailbox.poll(cx.waker()) {
                    Some(outcome) => {
                        *done = true;
                        Poll::Ready(outcome.and_then(|o| finish(shared, *owner, o)))
                    }
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        if let Inner::Waiting {
            owner,
            shared,
            done: false,
            ..
        } = &self.inner
        {
            release_owner(shared, *owner);
        }
    }
}

fn finish_mutation(_: &Arc<Shared>, _: Owner, o: Outcome) -> EngineResult<MutationResult> {
    outcome_mutation(o)
}

fn finish_unit(_: &Arc<Shared>, _: Owner, _: Outcome) -> EngineResult<()> {
    Ok(())
}

fn finish_manifest_update(shared: &Arc<Shared>, owner: Owner, _: Outcome) -> EngineResult<()> {
    finish_manifest(shared, owner)
}

impl Engine {
    /// Runs a call that may wait, for a Rust caller.
    pub(crate) fn local<T>(
        &self,
        finish: fn(&Arc<Shared>, Owner, Outcome) -> EngineResult<T>,
        call: impl FnOnce(&Via) -> EngineResult<Step<T>>,
    ) -> Pending<T> {
        let owner = self.shared.cookies.local_owner();
        let mailbox = Arc::new(Mailbox::default());
        let via = Via::Local(owner, Arc::clone(&mailbox));
        match call(&via) {
            Ok(Step::Done(v)) => Pending::ready(Ok(v)),
            Err(e) => Pending::ready(Err(e)),
            Ok(Step::Parked) => Pending {
                inner: Inner::Waiting {
                    mailbox,
                    owner,
                    shared: Arc::clone(&self.shared),
                    finish,
                    done: false,
                },
            },
        }
    }

    /// Stores a document (set, add or replace), optionally CAS-checked. With
    /// `opts.durable` the future resolves once the write is persisted;
    /// otherwise it is ready at once.
    pub fn store_async(
        &self,
        vbid: Vbid,
        mode: StoreMode,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> Pending<MutationResult> {
        let value = value.into();
        self.local(finish_mutation, |via| {
            self.store_via(via, vbid, mode, key, value, opts)
        })
    }

    /// Stores a document, blocking until it is persisted when
    /// `opts.durable` is set.
    pub fn store(
        &self,
        vbid: Vbid,
        mode: StoreMode,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store_async(vbid, mode, key, value, opts).wait()
    }

    /// Upsert. Durable (blocks until persisted) when `opts.durable` is set.
    pub fn set(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store(vbid, StoreMode::Set, key, value, opts)
    }

    /// Upsert, returning once the write is persisted (whatever
    /// `opts.durable` says).
    pub fn set_durable(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        let opts = WriteOptions {
            durable: true,
            ..opts
        };
        self.store(vbid, StoreMode::Set, key, value, opts)
    }

    /// Upsert as a future (resolves once persisted when `opts.durable`).
    pub fn set_async(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> Pending<MutationResult> {
        self.store_async(vbid, StoreMode::Set, key, value, opts)
    }

    /// Insert only if absent.
    pub fn add(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store(vbid, StoreMode::Add, key, value, opts)
    }

    /// Update only if present.
    pub fn replace(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store(vbid, StoreMode::Replace, key, value, opts)
    }

    /// Deletes a document (a tombstone). It takes the same options as
    /// [`Engine::set`]: `opts.cas` checks the CAS, `opts.durable` waits
    /// until the tombstone is persisted; flags, expiry and datatype are
    /// ignored.
    pub fn delete(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.delete_async(vbid, key, opts).wait()
    }

    /// Deletes a document and waits until the tombstone is persisted.
    pub fn delete_durable(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        let opts = WriteOptions {
            durable: true,
            ..opts
        };
        self.delete(vbid, key, opts)
    }

    /// [`Engine::delete`] as a future.
    pub fn delete_async(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        opts: WriteOptions,
    ) -> Pending<MutationResult> {
        self.local(finish_mutation, |via| self.delete_via(via, vbid, key, opts))
    }

    /// Deletes a vbucket without waiting for operations in flight: new
    /// lookups get `NotMyVbucket` at once, the deletion is durable when this
    /// returns, and the files are removed after the last guard drops. It
    /// may be created again at once. When the backend cannot make the
    /// deletion durable the error is returned and the vbucket stays.
    pub fn delete_vbucket(&self, vbid: Vbid) -> EngineResult<()> {
        match self.delete_vbucket_via(None, vbid)? {
            Step::Done(()) => Ok(()),
            Step::Parked => Err(EngineError::WouldBlock),
        }
    }

    /// Deletes a vbucket and waits until its files are gone (after the last
    /// guard on it drops: do not call it while holding one).
    pub fn delete_vbucket_and_wait(&self, vbid: Vbid) -> EngineResult<()> {
        self.delete_vbucket_async(vbid).wait()
    }

    /// [`Engine::delete_vbucket_and_wait`] as a future.
    pub fn delete_vbucket_async(&self, vbid: Vbid) -> Pending<()> {
        self.local(finish_unit, |via| self.delete_vbucket_via(Some(via), vbid))
    }

    /// Applies a collections manifest and blocks until it is persisted and
    /// applied to every active vbucket (DESIGN §8). While another update is
    /// in flight it returns `Busy`; a non-successor gets
    /// `CannotApplyManifest`.
    pub fn set_collections(&self, json: &[u8]) -> EngineResult<()> {
        self.set_collections_async(json).wait()
    }

    /// [`Engine::set_collections`] as a future.
    pub fn set_collections_async(&self, json: &[u8]) -> Pending<()> {
        self.local(finish_manifest_update, |via| {
            self.set_collections_via(via, json)
        })
    }

    /// The cookie protocol, for a server that parks requests: calls made
    /// through the returned handle return `WouldBlock` when they must wait,
    /// the engine's notifier is told when the result is there, and the
    /// same call re-issued with the same cookie collects it. Only the call
    /// that parked can collect: every parking gets its own token, so a
    /// result never reaches another call made later under a reused id.
    /// [`Engine::release_cookie`] frees a cookie whose connection is gone.
    #[must_use]
    pub fn cookie(&self, cookie: CookieId) -> CookieCalls<'_> {
        CookieCalls {
            engine: self,
            cookie,
        }
    }
}

/// Engine calls made under one client cookie (see [`Engine::cookie`]).
#[derive(Debug, Clone, Copy)]
pub struct CookieCalls<'a> {
    engine: &'a Engine,
    cookie: CookieId,
}

impl CookieCalls<'_> {
    fn client<T>(&self, r: EngineResult<Step<T>>) -> EngineResult<T> {
        match r? {
            Step::Done(v) => Ok(v),
            Step::Parked => Err(EngineError::WouldBlock),
        }
    }

    /// The engine the calls go to.
    pub(crate) fn engine(&self) -> &Engine {
        self.engine
    }

    /// The cookie.
    #[must_use]
    pub fn id(&self) -> CookieId {
        self.cookie
    }

    /// Stores a document. A durable store returns `WouldBlock` until it is
    /// persisted; re-issued after the notification, it returns the result.
    pub fn store(
        &self,
        vbid: Vbid,
        mode: StoreMode,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        let via = Via::Client(self.cookie);
        self.client(
            self.engine
                .store_via(&via, vbid, mode, key, value.into(), opts),
        )
    }

    /// Upsert.
    pub fn set(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store(vbid, StoreMode::Set, key, value, opts)
    }

    /// Insert only if absent.
    pub fn add(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store(vbid, StoreMode::Add, key, value, opts)
    }

    /// Update only if present.
    pub fn replace(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        value: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.store(vbid, StoreMode::Replace, key, value, opts)
    }

    /// Deletes a document; durable like [`CookieCalls::store`].
    pub fn delete(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        let via = Via::Client(self.cookie);
        self.client(self.engine.delete_via(&via, vbid, key, opts))
    }

    /// Deletes a vbucket; returns `WouldBlock` and notifies the cookie when
    /// its files are gone; re-issued, it returns the result.
    pub fn delete_vbucket(&self, vbid: Vbid) -> EngineResult<()> {
        let via = Via::Client(self.cookie);
        self.client(self.engine.delete_vbucket_via(Some(&via), vbid))
    }

    /// Applies a collections manifest through the would-block state
    /// machine: `WouldBlock` while it is persisted, then (re-issued) the
    /// result of applying it. Calls from other cookies meanwhile get
    /// `Busy`.
    pub fn set_collections(&self, json: &[u8]) -> EngineResult<()> {
        let via = Via::Client(self.cookie);
        self.client(self.engine.set_collections_via(&via, json))
    }

    /// What is parked under this cookie for a call of `kind`, without
    /// re-issuing it: `None` when nothing is, `WouldBlock` while pending.
    pub fn collect(&self, kind: WaitKind) -> Option<EngineResult<Outcome>> {
        self.engine.shared.cookies.collect(self.cookie, kind)
    }
}

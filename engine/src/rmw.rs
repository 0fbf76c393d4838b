//! Read-modify-write operations the memcached protocol needs: increment and
//! decrement, append and prepend, touch and get-and-touch.
//!
//! Each one reads the live version of a document (an expired one counts as
//! absent and is replaced, as a read would expire it), computes the new
//! version, and queues it like any other mutation: it gets a new seqno and
//! CAS and is persisted by the flusher. What is durable when each call
//! returns is the same as for [`Engine::set`]: in memory and queued, unless
//! the call is durable (append and prepend can be), in which case it is
//! committed and synced.
//!
//! ```
//! use engine::{ArithOp, ArithOptions, CollectionId, DiskKey, Engine, EngineConfig, VbState, Vbid, WriteOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::new(dir.path()))?;
//! engine.create_vbucket(Vbid(0), VbState::Active)?;
//! let key = DiskKey::new(CollectionId::DEFAULT, b"hits")?;
//! // Missing, with an initial value: created at 5.
//! let opts = ArithOptions { delta: 1, initial: Some(5), ..ArithOptions::default() };
//! assert_eq!(engine.arithmetic(Vbid(0), &key, ArithOp::Increment, opts)?.value, 5);
//! assert_eq!(engine.arithmetic(Vbid(0), &key, ArithOp::Increment, opts)?.value, 6);
//! engine.append(Vbid(0), &key, "0", WriteOptions::default())?;
//! assert_eq!(&engine.get(Vbid(0), &key)?.value[..], b"60");
//! # Ok(())
//! # }
//! ```

use crate::cookie::{MutationResult, Outcome, Owner};
use crate::engine::Shared;
use crate::engine::{Engine, Item, Step, Via};
use crate::error::{EngineError, EngineResult};
use crate::sync::Arc;
use crate::{CookieCalls, WriteOptions};
use bytes::{Bytes, BytesMut};
use kvstore_core::{Cas, Datatype, DiskKey, DocMeta, Document, RevSeqno, Seqno, VbState, Vbid};

/// Increment or decrement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithOp {
    /// Adds the delta, wrapping at 2^64 (as memcached).
    Increment,
    /// Subtracts the delta, stopping at 0 (as memcached).
    Decrement,
}

/// Options of [`Engine::arithmetic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArithOptions {
    /// How much to add or subtract.
    pub delta: u64,
    /// The value to create a missing document with; `None`: a missing
    /// document is `KeyNotFound`.
    pub initial: Option<u64>,
    /// The expiry of a created document (memcached's rule: up to 30 days
    /// relative, else absolute). An existing document keeps its expiry.
    pub expiry: u32,
    /// Only apply if the document's CAS matches (0: no check).
    pub cas: Cas,
}

/// The result of [`Engine::arithmetic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The counter's new value.
    pub value: u64,
    /// The mutation.
    pub mutation: MutationResult,
}

/// Where append or prepend puts the new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concat {
    /// After the current value.
    Append,
    /// Before the current value.
    Prepend,
}

/// The new version of a document, as a read-modify-write computes it.
pub(crate) struct Rewrite {
    pub(crate) value: Bytes,
    pub(crate) flags: u32,
    /// Absolute expiry (0: never), before the collection's maxTTL cap.
    pub(crate) expiry: u32,
    pub(crate) datatype: Datatype,
}

/// Parses a counter value as memcached does: decimal digits, optionally
/// followed by whitespace (memcached pads shortened counters with spaces).
fn parse_counter(v: &[u8]) -> Option<u64> {
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    let digits = &v[..end];
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl Engine {
    /// The shared body of every read-modify-write: the live version of
    /// `key` (or `None`) goes to `f`, whose result is queued as the new
    /// version (its metadata as written goes to `written`). `cas` (when
    /// not 0) must match the live version.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rmw_via(
        &self,
        via: &Via,
        vbid: Vbid,
        key: &DiskKey,
        cas: Cas,
        durable: bool,
        written: &mut Option<DocMeta>,
        f: impl FnOnce(Option<&Document>) -> EngineResult<Rewrite>,
    ) -> EngineResult<Step<MutationResult>> {
        if durable
            && let Via::Client(cookie) = via
            && let Some(r) = self.collected(*cookie)
        {
            return r.map(Step::Done);
        }
        let vb = self.active(vbid)?;
        let now = self.now();
        let (d, current) = vb.current(key)?;
        if d.state != VbState::Active {
            return Err(EngineError::NotMyVbucket(vbid));
        }
        Self::check_collection(&d, key)?;
        let current = Self::visible(&d, key, current);
        let live = current
            .as_ref()
            .filter(|c| !c.is_deleted() && !self.is_expired(c, now));
        if cas != Cas(0) {
            match live {
                None => return Err(EngineError::KeyNotFound),
                Some(c) if c.meta.cas != cas => return Err(EngineError::KeyExists),
                Some(_) => {}
            }
        }
        let rw = f(live)?;
        self.validate(&rw.value, rw.datatype)?;
        let was_live = live.is_some();
        let old_bytes = live.map_or(0, Document::body_size) as i64;
        let rev_seqno = current.as_ref().map_or(1, |c| c.meta.rev_seqno.0 + 1);
        let expiry = Self::cap_expiry(&d, key, rw.expiry, now);
        let doc = Document {
            key: key.clone(),
            meta: DocMeta {
                cas: Cas(0),
                rev_seqno: RevSeqno(rev_seqno),
                seqno: Seqno(0),
                flags: rw.flags,
                expiry,
                datatype: rw.datatype,
                deleted: None,
            },
            value: rw.value,
        };
        self.write_live(
            via,
            &vb,
            d,
            doc,
            (was_live, old_bytes),
            durable,
            Some(written),
        )
    }

    fn arith_via(
        &self,
        via: &Via,
        vbid: Vbid,
        key: &DiskKey,
        op: ArithOp,
        opts: ArithOptions,
    ) -> EngineResult<Counter> {
        let mut value = 0;
        let absolute = self.absolute_expiry(opts.expiry);
        let step = self.rmw_via(
            via,
            vbid,
            key,
            opts.cas,
            false,
            &mut None,
            |live| match live {
                None => {
                    let initial = opts.initial.ok_or(EngineError::KeyNotFound)?;
                    value = initial;
                    Ok(Rewrite {
                        value: Bytes::from(initial.to_string()),
                        flags: 0,
                        expiry: absolute,
                        datatype: Datatype(Datatype::JSON),
                    })
                }
                Some(doc) => {
                    if doc.meta.datatype.has(Datatype::SNAPPY) {
                        return Err(EngineError::DeltaBadValue);
                    }
                    let current = parse_counter(&doc.value).ok_or(EngineError::DeltaBadValue)?;
                    value = match op {
                        ArithOp::Increment => current.wrapping_add(opts.delta),
                        ArithOp::Decrement => current.saturating_sub(opts.delta),
                    };
                    Ok(Rewrite {
                        value: Bytes::from(value.to_string()),
                        flags: doc.meta.flags,
                        expiry: doc.meta.expiry,
                        datatype: Datatype(doc.meta.datatype.0 | Datatype::JSON),
                    })
                }
            },
        )?;
        match step {
            Step::Done(mutation) => Ok(Counter { value, mutation }),
            Step::Parked => Err(EngineError::WouldBlock),
        }
    }

    /// Increments or decrements a counter: a document whose value is a
    /// decimal number. A value that is not one is `DeltaBadValue`; a missing
    /// document is created with `opts.initial`, or is `KeyNotFound` without
    /// one. Returns the new value.
    pub fn arithmetic(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        op: ArithOp,
        opts: ArithOptions,
    ) -> EngineResult<Counter> {
        self.local(never_parks, |via| {
            self.arith_via(via, vbid, key, op, opts).map(Step::Done)
        })
        .wait()
    }

    fn concat_via(
        &self,
        via: &Via,
        vbid: Vbid,
        key: &DiskKey,
        how: Concat,
        data: Bytes,
        opts: WriteOptions,
    ) -> EngineResult<Step<MutationResult>> {
        let max = self.shared.config.max_value_size;
        self.rmw_via(via, vbid, key, opts.cas, opts.durable, &mut None, |live| {
            let doc = live.ok_or(EngineError::NotStored)?;
            if doc.meta.datatype.has(Datatype::SNAPPY) {
                return Err(EngineError::InvalidArguments(
                    "cannot append to a compressed value".into(),
                ));
            }
            let size = doc.value.len() + data.len();
            if size > max {
                return Err(EngineError::TooBig { size, max });
            }
            let mut v = BytesMut::with_capacity(size);
            match how {
                Concat::Append => {
                    v.extend_from_slice(&doc.value);
                    v.extend_from_slice(&data);
                }
                Concat::Prepend => {
                    v.extend_from_slice(&data);
                    v.extend_from_slice(&doc.value);
                }
            }
            Ok(Rewrite {
                value: v.freeze(),
                flags: doc.meta.flags,
                expiry: doc.meta.expiry,
                // The result is no longer known to be JSON.
                datatype: Datatype(doc.meta.datatype.0 & !Datatype::JSON),
            })
        })
    }

    /// Appends `data` to a document's value, keeping its flags and expiry
    /// (`opts.flags` and `opts.expiry` are ignored). A missing document is
    /// `NotStored`. `opts.cas` checks the CAS; `opts.durable` blocks until
    /// the result is persisted.
    pub fn append(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        data: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.concat(vbid, key, Concat::Append, data, opts)
    }

    /// Prepends `data` to a document's value; otherwise as
    /// [`Engine::append`].
    pub fn prepend(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        data: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        self.concat(vbid, key, Concat::Prepend, data, opts)
    }

    /// Append or prepend.
    pub fn concat(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        how: Concat,
        data: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        let data = data.into();
        self.local(parked_mutation, |via| {
            self.concat_via(via, vbid, key, how, data, opts)
        })
        .wait()
    }

    fn touch_via(
        &self,
        via: &Via,
        vbid: Vbid,
        key: &DiskKey,
        expiry: u32,
    ) -> EngineResult<(MutationResult, Item)> {
        let absolute = self.absolute_expiry(expiry);
        let mut value = None;
        let mut written = None;
        let step = self.rmw_via(via, vbid, key, Cas(0), false, &mut written, |live| {
            let doc = live.ok_or(EngineError::KeyNotFound)?;
            value = Some(doc.value.clone());
            Ok(Rewrite {
                value: doc.value.clone(),
                flags: doc.meta.flags,
                expiry: absolute,
                datatype: doc.meta.datatype,
            })
        })?;
        let Step::Done(m) = step else {
            return Err(EngineError::WouldBlock);
        };
        let (Some(value), Some(meta)) = (value, written) else {
            return Err(EngineError::KeyNotFound);
        };
        Ok((
            m,
            Item {
                key: key.clone(),
                value,
                meta,
            },
        ))
    }

    /// Changes a document's expiry (memcached's rule: 0 never, up to 30
    /// days relative, else absolute). It is a mutation: the document gets a
    /// new CAS and seqno. A missing document is `KeyNotFound`.
    pub fn touch(&self, vbid: Vbid, key: &DiskKey, expiry: u32) -> EngineResult<MutationResult> {
        self.local(never_parks, |via| {
            self.touch_via(via, vbid, key, expiry)
                .map(|(m, _)| Step::Done(m))
        })
        .wait()
    }

    /// Reads a document and changes its expiry in one step; the item
    /// returned carries the new CAS and expiry.
    pub fn get_and_touch(&self, vbid: Vbid, key: &DiskKey, expiry: u32) -> EngineResult<Item> {
        self.local(never_parks, |via| {
            self.touch_via(via, vbid, key, expiry)
                .map(|(_, i)| Step::Done(i))
        })
        .wait()
    }
}

impl CookieCalls<'_> {
    fn via(&self) -> Via {
        Via::Client(self.id())
    }

    /// [`Engine::arithmetic`] under this cookie (it never blocks).
    pub fn arithmetic(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        op: ArithOp,
        opts: ArithOptions,
    ) -> EngineResult<Counter> {
        self.engine().arith_via(&self.via(), vbid, key, op, opts)
    }

    /// Append or prepend. A durable one returns `WouldBlock` until it is
    /// persisted; re-issued after the notification, it returns the result.
    pub fn concat(
        &self,
        vbid: Vbid,
        key: &DiskKey,
        how: Concat,
        data: impl Into<Bytes>,
        opts: WriteOptions,
    ) -> EngineResult<MutationResult> {
        match self
            .engine()
            .concat_via(&self.via(), vbid, key, how, data.into(), opts)?
        {
            Step::Done(m) => Ok(m),
            Step::Parked => Err(EngineError::WouldBlock),
        }
    }

    /// [`Engine::touch`] under this cookie (it never blocks).
    pub fn touch(&self, vbid: Vbid, key: &DiskKey, expiry: u32) -> EngineResult<MutationResult> {
        self.engine()
            .touch_via(&self.via(), vbid, key, expiry)
            .map(|(m, _)| m)
    }

    /// [`Engine::get_and_touch`] under this cookie (it never blocks).
    pub fn get_and_touch(&self, vbid: Vbid, key: &DiskKey, expiry: u32) -> EngineResult<Item> {
        self.engine()
            .touch_via(&self.via(), vbid, key, expiry)
            .map(|(_, i)| i)
    }
}

/// The finish of a call that completes at once.
fn never_parks<T>(_: &Arc<Shared>, _: Owner, _: Outcome) -> EngineResult<T> {
    Err(EngineError::InvalidArguments(
        "a call that never waits was parked".into(),
    ))
}

/// The finish of a parked durable mutation.
fn parked_mutation(_: &Arc<Shared>, _: Owner, o: Outcome) -> EngineResult<MutationResult> {
    crate::engine::outcome_mutation(o)
}

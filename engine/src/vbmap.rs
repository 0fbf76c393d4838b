//! The vbucket map: a fixed array of slots, each holding the current
//! incarnation of one vbucket or nothing.
//!
//! - [`VBucketMap::get`] is a short critical section on one slot's lock:
//!   clone the `Arc` of the incarnation, unlock. No allocation; slots are
//!   cache-line aligned, so lookups of different vbuckets share no lock and
//!   no cache line.
//! - [`VBucketMap::delete`] empties the slot (new lookups get
//!   `NotMyVbucket`), marks the incarnation deleting and returns at once. The
//!   incarnation's files are destroyed by the [`crate::Deleter`] after the
//!   last guard drops (see [`crate::vbucket::VBucket`]'s `Drop`).
//! - A vbucket may be created again at once; the new incarnation has a new
//!   revision and its own store, while guards on the old one live on.

use crate::cookie::{CookieId, CookieTable, Mailbox, Owner, Ticket, Waiting};
use crate::error::{EngineError, EngineResult};
use crate::sync::{Arc, Mutex, lock};
use crate::vbucket::VBucket;
use kvstore_core::Vbid;
use std::ops::Deref;

/// One slot, aligned so neighbouring slots never share a cache line.
#[repr(align(128))]
struct Slot(Mutex<Option<Arc<VBucket>>>);

/// Who waits for a vbucket deletion to finish.
pub(crate) struct DeleteWaiter<'a> {
    pub(crate) owner: Owner,
    pub(crate) slot: Option<Arc<Mailbox>>,
    pub(crate) cookies: &'a CookieTable,
}

/// The map of vbucket slots.
pub struct VBucketMap {
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for VBucketMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VBucketMap")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Access to one vbucket incarnation. While it lives, the incarnation and
/// its store stay usable, even if the vbucket is deleted meanwhile.
/// Dropping it is the only release.
#[derive(Debug)]
pub struct VbGuard {
    vb: Arc<VBucket>,
}

impl Deref for VbGuard {
    type Target = VBucket;

    fn deref(&self) -> &VBucket {
        &self.vb
    }
}

impl Clone for VbGuard {
    fn clone(&self) -> Self {
        VbGuard {
            vb: Arc::clone(&self.vb),
        }
    }
}

impl VBucketMap {
    /// A map of `capacity` empty slots (vbids `0..capacity`).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        VBucketMap {
            slots: (0..capacity).map(|_| Slot(Mutex::new(None))).collect(),
        }
    }

    /// The number of slots.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, vbid: Vbid) -> EngineResult<&Slot> {
        self.slots
            .get(usize::from(vbid.0))
            .ok_or(EngineError::NotMyVbucket(vbid))
    }

    /// A guard on the current incarnation of `vbid`.
    pub fn get(&self, vbid: Vbid) -> EngineResult<VbGuard> {
        let slot = self.slot(vbid)?;
        match &*lock(&slot.0) {
            Some(vb) => Ok(VbGuard { vb: Arc::clone(vb) }),
            None => Err(EngineError::NotMyVbucket(vbid)),
        }
    }

    /// Puts a new incarnation in its (empty) slot and returns a guard on it.
    /// Gives the incarnation back when the slot is taken.
    pub fn insert(&self, vb: VBucket) -> Result<VbGuard, (Box<VBucket>, EngineError)> {
        let vbid = vb.vbid();
        let slot = match self.slot(vbid) {
            Ok(s) => s,
            Err(e) => return Err((Box::new(vb), e)),
        };
        let mut s = lock(&slot.0);
        if s.is_some() {
            return Err((Box::new(vb), EngineError::VbucketExists(vbid)));
        }
        let vb = Arc::new(vb);
        *s = Some(Arc::clone(&vb));
        Ok(VbGuard { vb })
    }

    /// Deletes the current incarnation of `vbid` without waiting for its
    /// guards. With a cookie, the call parks it and returns `WouldBlock`; the
    /// cookie is told when the files are gone. Of two racing deletes, one
    /// succeeds and the other gets `NotMyVbucket`. When the backend cannot
    /// make the deletion durable, the error is returned and the vbucket
    /// stays as it was.
    pub fn delete(&self, vbid: Vbid, notify: Option<(CookieId, &CookieTable)>) -> EngineResult<()> {
        let waiter = notify.map(|(cookie, cookies)| DeleteWaiter {
            owner: Owner::Client(cookie),
            slot: None,
            cookies,
        });
        match self.delete_with(vbid, waiter)? {
            Some(_) => Err(EngineError::WouldBlock),
            None => Ok(()),
        }
    }

    /// [`VBucketMap::delete`] for any waiter; returns its ticket.
    pub(crate) fn delete_with(
        &self,
        vbid: Vbid,
        waiter: Option<DeleteWaiter<'_>>,
    ) -> EngineResult<Option<Ticket>> {
        let slot = self.slot(vbid)?;
        // The slot stays locked until the deletion is durable or refused:
        // lookups of this vbucket wait that long, and a racing delete or
        // create sees either the old incarnation or none.
        let mut s = lock(&slot.0);
        let Some(vb) = s.as_ref() else {
            return Err(EngineError::NotMyVbucket(vbid));
        };
        let ticket = match &waiter {
            Some(w) => Some(w.cookies.park_in(
                w.owner,
                Waiting::VbDeletion { vbid },
                &vb.waiters,
                w.slot.clone(),
                |l, t| l.deletion.push(t),
            )?),
            None => None,
        };
        if let Err(e) = vb.mark_deleted_durably() {
            tracing::error!(%vbid, error = %e, "could not mark the vbucket deleted; it stays");
            if let Some(w) = &waiter {
                w.cookies.release_owner(w.owner);
            }
            return Err(e.into());
        }
        let Some(vb) = s.take() else {
            return Err(EngineError::NotMyVbucket(vbid));
        };
        drop(s);
        // Our reference is still held here, so the last drop (and the
        // deletion it queues) comes after the mark.
        vb.mark_deleting();
        tracing::info!(%vbid, revision = %vb.store().revision(), "vbucket deleted; files go when the last guard drops");
        drop(vb);
        Ok(ticket)
    }

    /// The vbids that have an incarnation now.
    #[must_use]
    pub fn vbids(&self) -> Vec<Vbid> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| lock(&s.0).is_some())
            .map(|(i, _)| Vbid(i as u16))
            .collect()
    }

    /// Guards on every current incarnation.
    #[must_use]
    pub fn guards(&self) -> Vec<VbGuard> {
        self.slots
            .iter()
            .filter_map(|s| lock(&s.0).as_ref().map(|vb| VbGuard { vb: Arc::clone(vb) }))
            .collect()
    }

    /// Empties every slot without deleting anything (shutdown).
    pub(crate) fn clear(&self) -> Vec<Arc<VBucket>> {
        self.slots
            .iter()
            .filter_map(|s| lock(&s.0).take())
            .collect()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::cookie::NoNotify;
    use crate::deleter::Deleter;
    use kvstore_core::{KvStore, MemStore, VbState};

    fn setup() -> (
        VBucketMap,
        std::sync::Arc<dyn KvStore>,
        Arc<Deleter>,
        Arc<CookieTable>,
    ) {
        (
            VBucketMap::new(8),
            std::sync::Arc::new(MemStore::new()),
            Deleter::new(),
            Arc::new(CookieTable::new(std::sync::Arc::new(NoNotify))),
        )
    }

    #[test]
    fn out_of_range_vbid_is_not_my_vbucket() {
        let (map, ..) = setup();
        assert!(matches!(
            map.get(Vbid(8)),
            Err(EngineError::NotMyVbucket(_))
        ));
        assert!(matches!(
            map.delete(Vbid(100), None),
            Err(EngineError::NotMyVbucket(_))
        ));
    }

    #[test]
    fn insert_into_a_taken_slot_gives_the_vbucket_back() {
        let (map, kv, deleter, cookies) = setup();
        let mk = || {
            VBucket::create(
                Vbid(1),
                VbState::Active,
                kv.clone(),
                deleter.clone(),
                cookies.clone(),
                1,
            )
            .unwrap()
        };
        map.insert(mk()).unwrap();
        let (back, err) = map.insert(mk()).unwrap_err();
        assert!(matches!(err, EngineError::VbucketExists(_)));
        assert_eq!(back.vbid(), Vbid(1));
        assert_eq!(map.vbids(), [Vbid(1)]);
    }
}

//! Validation and normalisation of a [`CommitBatch`], shared by every backend
//! so that they all accept and reject exactly the same batches.

use crate::doc::{Document, LocalOp, MAX_LOCAL_NAME_LEN, VBSTATE_LOCAL_NAME};
use crate::error::{StoreError, StoreResult};
use crate::store::{CommitBatch, Prior, check_priors};
use crate::types::{Seqno, Vbid};
use bytes::Bytes;
use std::collections::BTreeMap;

/// A batch that passed validation.
#[derive(Debug, Clone, Default)]
pub struct PreparedBatch {
    /// One document per key, sorted by key; the highest seqno won.
    pub items: Vec<Document>,
    /// Local changes, sorted by name; the last op on a name won. `None`
    /// deletes. The vbucket state appears here as `_local/vbstate`.
    pub local: Vec<(String, Option<Bytes>)>,
    /// The highest item seqno, if the batch has items.
    pub max_seqno: Option<Seqno>,
    /// The highest seqno of a tombstone in the batch.
    pub max_deleted_seqno: Option<Seqno>,
}

impl PreparedBatch {
    /// The items sorted by seqno (a fresh vector; `items` stays key-sorted).
    #[must_use]
    pub fn items_by_seqno(&self) -> Vec<&Document> {
        let mut v: Vec<&Document> = self.items.iter().collect();
        v.sort_unstable_by_key(|d| d.meta.seqno);
        v
    }
}

/// Checks `batch` against a store whose high seqno is `high`.
///
/// Every item seqno must be above `high` and unique within the batch. When a
/// key appears twice, its highest-seqno version is kept. Local document names
/// must be 1 to [`MAX_LOCAL_NAME_LEN`] bytes.
pub fn prepare(vbid: Vbid, high: Seqno, batch: CommitBatch) -> StoreResult<PreparedBatch> {
    Ok(prepare_with_priors(vbid, high, batch, Vec::new())?.0)
}

/// [`prepare`] for [`crate::VbStore::commit_with_priors`]: also checks the
/// priors ([`check_priors`]) and returns them aligned with the prepared
/// items (key order, one per kept item), or empty when none were given.
/// When a key appears more than once, the kept item's prior is returned.
pub fn prepare_with_priors(
    vbid: Vbid,
    high: Seqno,
    batch: CommitBatch,
    priors: Vec<Prior>,
) -> StoreResult<(PreparedBatch, Vec<Prior>)> {
    let CommitBatch {
        items,
        local,
        vbstate,
    } = batch;
    check_priors(vbid, &items, &priors)?;

    let mut seqnos: Vec<Seqno> = items.iter().map(|d| d.meta.seqno).collect();
    seqnos.sort_unstable();
    if let Some(&lowest) = seqnos.first()
        && lowest <= high
    {
        return Err(StoreError::SeqnoNotIncreasing {
            vbid,
            seqno: lowest,
            high,
        });
    }
    if let Some(w) = seqnos.windows(2).find(|w| w[0] == w[1]) {
        return Err(StoreError::InvalidBatch {
            vbid,
            reason: format!("seqno {} appears twice", w[0]),
        });
    }

    // Sort by key, newest seqno first within a key, and keep the first of
    // each key: one version per key, the highest seqno winning. (Seqnos are
    // unique, so the order is total.)
    let newest_first = |a: &Document, b: &Document| {
        a.key
            .cmp(&b.key)
            .then_with(|| b.meta.seqno.cmp(&a.meta.seqno))
    };
    let (items, priors) = if priors.is_empty() {
        let mut items = items;
        items.sort_unstable_by(newest_first);
        items.dedup_by(|later, kept| later.key == kept.key);
        (items, priors)
    } else {
        let mut pairs: Vec<(Document, Prior)> = items.into_iter().zip(priors).collect();
        pairs.sort_unstable_by(|a, b| newest_first(&a.0, &b.0));
        pairs.dedup_by(|later, kept| later.0.key == kept.0.key);
        pairs.into_iter().unzip()
    };
    let max_seqno = seqnos.last().copied();
    let max_deleted_seqno = items
        .iter()
        .filter(|d| d.is_deleted())
        .map(|d| d.meta.seqno)
        .max();

    let mut locals: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    for op in local {
        let name = op.name();
        if name.is_empty() || name.len() > MAX_LOCAL_NAME_LEN {
            return Err(StoreError::InvalidBatch {
                vbid,
                reason: format!(
                    "local document name of {} bytes (must be 1 to {MAX_LOCAL_NAME_LEN})",
                    name.len()
                ),
            });
        }
        match op {
            LocalOp::Set { name, value } => locals.insert(name, Some(value)),
            LocalOp::Delete { name } => locals.insert(name, None),
        };
    }
    if let Some(state) = vbstate {
        locals.insert(VBSTATE_LOCAL_NAME.to_owned(), Some(state.encode()));
    }

    let prepared = PreparedBatch {
        items,
        local: locals.into_iter().collect(),
        max_seqno,
        max_deleted_seqno,
    };
    Ok((prepared, priors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CollectionId, DiskKey};

    fn key(k: &str) -> DiskKey {
        DiskKey::new(CollectionId::DEFAULT, k.as_bytes()).unwrap()
    }

    #[test]
    fn dedupes_by_key_keeping_highest_seqno() {
        let b = CommitBatch::new()
            .item(Document::new(key("a"), Seqno(5), "new"))
            .item(Document::new(key("a"), Seqno(3), "old"))
            .item(Document::new(key("b"), Seqno(4), "b"));
        let p = prepare(Vbid(0), Seqno(2), b).unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(&p.items[0].value[..], b"new");
        assert_eq!(p.max_seqno, Some(Seqno(5)));
    }

    #[test]
    fn rejects_low_and_duplicate_seqnos() {
        let b = CommitBatch::new().item(Document::new(key("a"), Seqno(2), "x"));
        assert!(matches!(
            prepare(Vbid(0), Seqno(2), b),
            Err(StoreError::SeqnoNotIncreasing { .. })
        ));
        let b = CommitBatch::new()
            .item(Document::new(key("a"), Seqno(3), "x"))
            .item(Document::new(key("b"), Seqno(3), "y"));
        assert!(matches!(
            prepare(Vbid(0), Seqno(2), b),
            Err(StoreError::InvalidBatch { .. })
        ));
    }

    #[test]
    fn priors_follow_their_items() {
        let old_a = Document::new(key("a"), Seqno(1), "old");
        let b = CommitBatch::new()
            .item(Document::new(key("b"), Seqno(4), "b"))
            .item(Document::new(key("a"), Seqno(3), "a-older"))
            .item(Document::new(key("a"), Seqno(5), "a-newer"));
        let priors = vec![
            Prior::Absent,
            Prior::Present(old_a.clone()),
            Prior::Present(old_a.clone()),
        ];
        let (p, priors) = prepare_with_priors(Vbid(0), Seqno(2), b.clone(), priors).unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(&p.items[0].value[..], b"a-newer");
        assert_eq!(priors, [Prior::Present(old_a), Prior::Absent]);
        let (_, none) = prepare_with_priors(Vbid(0), Seqno(2), b, Vec::new()).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn rejects_priors_that_cannot_be_right() {
        let item = || CommitBatch::new().item(Document::new(key("a"), Seqno(5), "a"));
        for priors in [
            vec![Prior::Absent, Prior::Absent],
            vec![Prior::Present(Document::new(key("b"), Seqno(1), "b"))],
            vec![Prior::Present(Document::new(key("a"), Seqno(5), "a"))],
        ] {
            assert!(matches!(
                prepare_with_priors(Vbid(0), Seqno(2), item(), priors),
                Err(StoreError::InvalidBatch { .. })
            ));
        }
    }

    #[test]
    fn rejects_bad_local_names() {
        let b = CommitBatch::new().local(LocalOp::Delete {
            name: String::new(),
        });
        assert!(matches!(
            prepare(Vbid(0), Seqno(0), b),
            Err(StoreError::InvalidBatch { .. })
        ));
    }
}

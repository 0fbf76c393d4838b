//! Validation and normalisation of a [`CommitBatch`], shared by every backend
//! so that they all accept and reject exactly the same batches.

use crate::doc::{Document, LocalOp, MAX_LOCAL_NAME_LEN, VBSTATE_LOCAL_NAME};
use crate::error::{StoreError, StoreResult};
use crate::store::CommitBatch;
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
    let CommitBatch {
        items,
        local,
        vbstate,
    } = batch;

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
    let mut items = items;
    items.sort_unstable_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then_with(|| b.meta.seqno.cmp(&a.meta.seqno))
    });
    items.dedup_by(|later, kept| later.key == kept.key);
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

    Ok(PreparedBatch {
        items,
        local: locals.into_iter().collect(),
        max_seqno,
        max_deleted_seqno,
    })
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

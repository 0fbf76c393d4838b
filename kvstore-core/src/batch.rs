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
    /// One document per key, the highest seqno having won; sorted by key
    /// ([`prepare`], [`prepare_with_priors`]) or by seqno
    /// ([`prepare_by_seqno`]).
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
    /// The items sorted by seqno (a fresh vector; `items` keeps its order).
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
/// must be 1 to [`MAX_LOCAL_NAME_LEN`] bytes. The items come out sorted by
/// key.
pub fn prepare(vbid: Vbid, high: Seqno, batch: CommitBatch) -> StoreResult<PreparedBatch> {
    Ok(prepare_in(vbid, high, batch, Vec::new(), Order::Key)?.0)
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
    prepare_in(vbid, high, batch, priors, Order::Key)
}

/// [`prepare_with_priors`] for a backend that needs no key order: the same
/// checks, errors and de-duplication, but the items (and their priors) come
/// out in seqno order. A batch already in seqno order with no key twice (a
/// hash of every key tells) is returned as it came, without a sort.
pub fn prepare_by_seqno(
    vbid: Vbid,
    high: Seqno,
    batch: CommitBatch,
    priors: Vec<Prior>,
) -> StoreResult<(PreparedBatch, Vec<Prior>)> {
    prepare_in(vbid, high, batch, priors, Order::Seqno)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    Key,
    Seqno,
}

/// `v` reordered (and thinned) to `order`, a list of distinct indices.
fn permute<T>(v: Vec<T>, order: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = v.into_iter().map(Some).collect();
    order.iter().filter_map(|&i| slots[i].take()).collect()
}

/// True when no two items share a key, told from a hash of each key (a
/// collision only sends the batch down the exact path).
fn keys_distinct(items: &[Document]) -> bool {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    let mut hashes: Vec<u64> = items.iter().map(|d| state.hash_one(&d.key)).collect();
    hashes.sort_unstable();
    hashes.windows(2).all(|w| w[0] != w[1])
}

fn prepare_in(
    vbid: Vbid,
    high: Seqno,
    batch: CommitBatch,
    priors: Vec<Prior>,
    order: Order,
) -> StoreResult<(PreparedBatch, Vec<Prior>)> {
    let CommitBatch {
        items,
        local,
        vbstate,
    } = batch;
    check_priors(vbid, &items, &priors)?;

    let in_seqno_order = items.windows(2).all(|w| w[0].meta.seqno < w[1].meta.seqno);
    let mut by_seqno: Vec<usize> = (0..items.len()).collect();
    if !in_seqno_order {
        by_seqno.sort_unstable_by_key(|&i| items[i].meta.seqno);
    }
    if let Some(&lowest) = by_seqno.first()
        && items[lowest].meta.seqno <= high
    {
        return Err(StoreError::SeqnoNotIncreasing {
            vbid,
            seqno: items[lowest].meta.seqno,
            high,
        });
    }
    if let Some(w) = by_seqno
        .windows(2)
        .find(|w| items[w[0]].meta.seqno == items[w[1]].meta.seqno)
    {
        return Err(StoreError::InvalidBatch {
            vbid,
            reason: format!("seqno {} appears twice", items[w[0]].meta.seqno),
        });
    }
    let max_seqno = by_seqno.last().map(|&i| items[i].meta.seqno);

    // One version per key, the highest seqno winning, in the order asked
    // for. (Seqnos are unique, so every order is total.)
    let perm = match order {
        Order::Key => {
            let mut idx = by_seqno;
            idx.sort_unstable_by(|&a, &b| {
                items[a]
                    .key
                    .cmp(&items[b].key)
                    .then_with(|| items[b].meta.seqno.cmp(&items[a].meta.seqno))
            });
            idx.dedup_by(|later, kept| items[*later].key == items[*kept].key);
            Some(idx)
        }
        Order::Seqno if keys_distinct(&items) => (!in_seqno_order).then_some(by_seqno),
        Order::Seqno => {
            let mut seen = std::collections::HashSet::with_capacity(items.len());
            let mut idx: Vec<usize> = by_seqno
                .into_iter()
                .rev()
                .filter(|&i| seen.insert(&items[i].key))
                .collect();
            idx.reverse();
            Some(idx)
        }
    };
    let (items, priors) = match perm {
        None => (items, priors),
        Some(idx) => {
            let priors = if priors.is_empty() {
                priors
            } else {
                permute(priors, &idx)
            };
            (permute(items, &idx), priors)
        }
    };
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
    fn by_seqno_keeps_the_newest_of_each_key_in_seqno_order() {
        let old_b = Document::new(key("b"), Seqno(1), "old");
        let b = CommitBatch::new()
            .item(Document::new(key("c"), Seqno(6), "c"))
            .item(Document::new(key("b"), Seqno(3), "b-older"))
            .item(Document::new(key("a"), Seqno(4), "a"))
            .item(Document::new(key("b"), Seqno(5), "b-newer"));
        let priors = vec![
            Prior::Absent,
            Prior::Present(old_b.clone()),
            Prior::Unknown,
            Prior::Present(old_b.clone()),
        ];
        let (p, priors) = prepare_by_seqno(Vbid(0), Seqno(2), b.clone(), priors).unwrap();
        let got: Vec<(u64, &[u8])> = p
            .items
            .iter()
            .map(|d| (d.meta.seqno.0, &d.value[..]))
            .collect();
        assert_eq!(got, [(4, &b"a"[..]), (5, b"b-newer"), (6, b"c")]);
        assert_eq!(
            priors,
            [Prior::Unknown, Prior::Present(old_b), Prior::Absent]
        );
        assert_eq!(p.max_seqno, Some(Seqno(6)));
        // In order and distinct: as it came.
        let b = CommitBatch::new()
            .item(Document::new(key("z"), Seqno(3), "z"))
            .item(Document::new(key("a"), Seqno(4), "a"));
        let (p, none) = prepare_by_seqno(Vbid(0), Seqno(2), b, Vec::new()).unwrap();
        assert_eq!(p.items[0].key, key("z"));
        assert!(none.is_empty());
        // The same errors as `prepare`.
        let low = CommitBatch::new().item(Document::new(key("a"), Seqno(2), "a"));
        assert!(matches!(
            prepare_by_seqno(Vbid(0), Seqno(2), low, Vec::new()),
            Err(StoreError::SeqnoNotIncreasing { .. })
        ));
        let twice = CommitBatch::new()
            .item(Document::new(key("a"), Seqno(3), "a"))
            .item(Document::new(key("b"), Seqno(3), "b"));
        assert!(matches!(
            prepare_by_seqno(Vbid(0), Seqno(2), twice, Vec::new()),
            Err(StoreError::InvalidBatch { .. })
        ));
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

//! The whole conformance suite against `MemStore`.

kvstore_core::conformance_tests!(kvstore_core::testkit::MemFactory::default());

/// `MemStore` refuses a batch whose priors do not describe what it holds,
/// so a caller's tests on it catch wrong priors.
#[test]
fn mem_store_refuses_wrong_priors() {
    use kvstore_core::{
        CollectionId, CommitBatch, DiskKey, Document, KvStore, MemStore, Prior, Seqno, StoreError,
        Vbid,
    };
    let store = MemStore::new();
    let vb = store.create(Vbid(0)).unwrap();
    let key = |k: &str| DiskKey::new(CollectionId::DEFAULT, k.as_bytes()).unwrap();
    let a1 = Document::new(key("a"), Seqno(1), "a1");
    vb.commit(CommitBatch::new().item(a1.clone())).unwrap();
    let next = || CommitBatch::new().item(Document::new(key("a"), Seqno(2), "a2"));
    let mut other_value = a1.clone();
    other_value.value = "not a1".into();
    for wrong in [Prior::Absent, Prior::Present(other_value)] {
        let err = vb.commit_with_priors(next(), vec![wrong]).unwrap_err();
        assert!(matches!(err, StoreError::InvalidBatch { .. }), "{err}");
    }
    let err = vb
        .commit_with_priors(
            CommitBatch::new().item(Document::new(key("new"), Seqno(2), "n")),
            vec![Prior::Present(Document::new(key("new"), Seqno(1), "n"))],
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch { .. }), "{err}");
    assert_eq!(vb.get(&key("a")).unwrap(), Some(a1.clone()));
    vb.commit_with_priors(next(), vec![Prior::Present(a1)])
        .unwrap();
    vb.commit_with_priors(
        CommitBatch::new().item(Document::new(key("b"), Seqno(3), "b")),
        vec![Prior::Absent],
    )
    .unwrap();
}

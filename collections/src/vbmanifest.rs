//! One vbucket's view of the collections: which scopes and collections are
//! open (and since which seqno), which collection generations were dropped,
//! and per-collection stats.
//!
//! Applying a manifest ([`VbManifest::update`]) emits system events, each a
//! document with its own seqno in the system collection, in the upstream
//! order: scope creates, collection drops, collection creates, scope drops.
//! A drop is a tombstone of the create's key. The state itself is persisted
//! as local documents ([`VbManifest::local_docs`]) committed with the data.
//!
//! A collection can be dropped and created again with the same id
//! (resurrection). Its new generation starts at the seqno of its create
//! event, and an item is visible only if its seqno is at or above its
//! collection's start, so nothing of an old generation ever reads back.

use crate::manifest::Manifest;
use bytes::Bytes;
use kvstore_core::{
    Cas, CollectionId, Datatype, DeleteSource, DiskKey, DocMeta, Document, DroppedCollection,
    LocalOp, RevSeqno, ScopeId, Seqno,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The local document holding the manifest uid the vbucket is at.
pub const LOCAL_MANIFEST: &str = "_local/collections/manifest";
/// The local document listing open collections.
pub const LOCAL_OPEN: &str = "_local/collections/open";
/// The local document listing open scopes.
pub const LOCAL_SCOPES: &str = "_local/scope/open";
/// The local document listing dropped collection generations.
pub const LOCAL_DROPPED: &str = "_local/collections/dropped";
/// The local document holding per-collection stats.
pub const LOCAL_STATS: &str = "_local/collections/stats";

/// Counters of one collection in one vbucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CollectionStats {
    /// Live documents.
    pub items: u64,
    /// Key and value bytes of the live documents.
    pub disk_bytes: u64,
    /// The highest seqno of a document (or the create event).
    pub high_seqno: u64,
}

/// An open scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeState {
    /// Its id.
    pub sid: u32,
    /// Its name.
    pub name: String,
    /// The seqno of its create event (0 for `_default`).
    pub start: u64,
}

/// An open collection (one generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionState {
    /// Its id.
    pub cid: u32,
    /// Its scope.
    pub sid: u32,
    /// Its name.
    pub name: String,
    /// Its maximum TTL.
    #[serde(rename = "maxTTL", default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<u32>,
    /// The seqno of its create event: items below it belong to an older,
    /// dropped generation.
    pub start: u64,
    /// Its counters.
    #[serde(skip)]
    pub stats: CollectionStats,
}

/// A dropped collection's items not yet purged: seqnos `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// The collection id.
    pub cid: u32,
    /// The start of the oldest dropped generation.
    pub start: u64,
    /// The seqno of the latest drop event.
    pub end: u64,
}

#[derive(Serialize, Deserialize)]
struct StatsEntry {
    cid: u32,
    #[serde(flatten)]
    stats: CollectionStats,
}

#[derive(Serialize, Deserialize)]
struct UidDoc {
    uid: String,
}

/// Whether an item may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Its collection is open and it belongs to the current generation.
    Visible,
    /// Its collection is not open (unknown or dropped).
    UnknownCollection,
    /// Its collection is open, but it belongs to an older generation.
    OldGeneration,
}

/// Why a vbucket could not take a manifest, or its local documents did not
/// decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VbManifestError {
    /// The manifest has the vbucket's uid but other content.
    #[error("manifest uid {uid:#x} equals the vbucket's but the content differs")]
    EqualUidWithDifferences {
        /// The uid.
        uid: u64,
    },
    /// A system event key could not be built.
    #[error("system event key: {0}")]
    Key(#[from] kvstore_core::KeyError),
    /// A local document did not decode.
    #[error("local document {doc}: {reason}")]
    BadLocalDoc {
        /// Its name.
        doc: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// What [`VbManifest::update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The vbucket is ahead of the manifest; nothing changed.
    Behind,
    /// The vbucket already had this manifest.
    Unchanged,
    /// Changes were applied; these system events must be queued, in order.
    Events(Vec<Document>),
}

/// One vbucket's collections state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbManifest {
    /// The manifest uid the vbucket is at.
    pub uid: u64,
    /// Open scopes.
    pub scopes: BTreeMap<ScopeId, ScopeState>,
    /// Open collections.
    pub collections: BTreeMap<CollectionId, CollectionState>,
    /// Dropped generations not yet purged.
    pub dropped: BTreeMap<CollectionId, Dropped>,
}

impl Default for VbManifest {
    fn default() -> Self {
        Self::epoch()
    }
}

/// The key of a system event: kind (1 scope, 0 collection), LEB128 id,
/// tag. At most 17 bytes, so always a valid key.
pub fn event_key(scope: bool, id: u32) -> Result<DiskKey, kvstore_core::KeyError> {
    let mut k = vec![u8::from(scope)];
    kvstore_core::key::encode_leb128(id, &mut k);
    k.extend_from_slice(if scope { b"_scope" } else { b"_collection" });
    DiskKey::new(CollectionId::SYSTEM, &k)
}

fn event_doc(
    key: DiskKey,
    seqno: Seqno,
    cas: Cas,
    value: serde_json::Value,
    deleted: bool,
) -> Document {
    Document {
        key,
        meta: DocMeta {
            cas,
            rev_seqno: RevSeqno(1),
            seqno,
            flags: 0,
            expiry: 0,
            datatype: Datatype(Datatype::JSON),
            deleted: deleted.then_some(DeleteSource::Explicit),
        },
        value: Bytes::from(value.to_string()),
    }
}

impl VbManifest {
    /// The state of a new vbucket: the `_default` scope and collection.
    #[must_use]
    pub fn epoch() -> Self {
        let mut v = VbManifest {
            uid: 0,
            scopes: BTreeMap::new(),
            collections: BTreeMap::new(),
            dropped: BTreeMap::new(),
        };
        v.scopes.insert(
            ScopeId::DEFAULT,
            ScopeState {
                sid: 0,
                name: "_default".into(),
                start: 0,
            },
        );
        v.collections.insert(
            CollectionId::DEFAULT,
            CollectionState {
                cid: 0,
                sid: 0,
                name: "_default".into(),
                max_ttl: None,
                start: 0,
                stats: CollectionStats::default(),
            },
        );
        v
    }

    /// Applies `m`, taking a seqno and CAS from `next` for each system event.
    pub fn update(
        &mut self,
        m: &Manifest,
        next: &mut dyn FnMut() -> (Seqno, Cas),
    ) -> Result<Applied, VbManifestError> {
        if m.uid < self.uid {
            return Ok(Applied::Behind);
        }
        let scope_creates: Vec<_> = m
            .scopes
            .values()
            .filter(|s| !self.scopes.contains_key(&s.id))
            .collect();
        let coll_drops: Vec<CollectionId> = self
            .collections
            .keys()
            .filter(|c| !m.collections.contains_key(c))
            .copied()
            .collect();
        let coll_creates: Vec<_> = m
            .collections
            .values()
            .filter(|c| !self.collections.contains_key(&c.id))
            .collect();
        let scope_drops: Vec<ScopeId> = self
            .scopes
            .keys()
            .filter(|s| !m.scopes.contains_key(s))
            .copied()
            .collect();
        let ttl_changes: Vec<_> = m
            .collections
            .values()
            .filter(|c| {
                self.collections
                    .get(&c.id)
                    .is_some_and(|cur| cur.max_ttl != c.max_ttl)
            })
            .collect();
        let changed = !(scope_creates.is_empty()
            && coll_drops.is_empty()
            && coll_creates.is_empty()
            && scope_drops.is_empty()
            && ttl_changes.is_empty());
        if m.uid == self.uid {
            return if changed {
                Err(VbManifestError::EqualUidWithDifferences { uid: m.uid })
            } else {
                Ok(Applied::Unchanged)
            };
        }
        let uid_hex = format!("{:x}", m.uid);
        let mut events = Vec::new();
        for s in scope_creates {
            let (seqno, cas) = next();
            self.scopes.insert(
                s.id,
                ScopeState {
                    sid: s.id.0,
                    name: s.name.clone(),
                    start: seqno.0,
                },
            );
            events.push(event_doc(
                event_key(true, s.id.0)?,
                seqno,
                cas,
                serde_json::json!({"manifest_uid": uid_hex, "sid": s.id.0, "name": s.name}),
                false,
            ));
        }
        for cid in coll_drops {
            let (seqno, cas) = next();
            if let Some(c) = self.collections.remove(&cid) {
                let start = self
                    .dropped
                    .get(&cid)
                    .map_or(c.start, |d| d.start.min(c.start));
                self.dropped.insert(
                    cid,
                    Dropped {
                        cid: cid.0,
                        start,
                        end: seqno.0,
                    },
                );
                events.push(event_doc(
                    event_key(false, cid.0)?,
                    seqno,
                    cas,
                    serde_json::json!({"manifest_uid": uid_hex, "sid": c.sid, "cid": cid.0}),
                    true,
                ));
            }
        }
        for c in coll_creates {
            let (seqno, cas) = next();
            self.collections.insert(
                c.id,
                CollectionState {
                    cid: c.id.0,
                    sid: c.scope.0,
                    name: c.name.clone(),
                    max_ttl: c.max_ttl,
                    start: seqno.0,
                    stats: CollectionStats {
                        high_seqno: seqno.0,
                        ..CollectionStats::default()
                    },
                },
            );
            let mut v = serde_json::json!({
                "manifest_uid": uid_hex, "sid": c.scope.0, "cid": c.id.0, "name": c.name,
            });
            if let Some(t) = c.max_ttl {
                v["maxTTL"] = t.into();
            }
            events.push(event_doc(event_key(false, c.id.0)?, seqno, cas, v, false));
        }
        for sid in scope_drops {
            let (seqno, cas) = next();
            self.scopes.remove(&sid);
            events.push(event_doc(
                event_key(true, sid.0)?,
                seqno,
                cas,
                serde_json::json!({"manifest_uid": uid_hex, "sid": sid.0}),
                true,
            ));
        }
        for c in ttl_changes {
            if let Some(cur) = self.collections.get_mut(&c.id) {
                cur.max_ttl = c.max_ttl;
            }
        }
        self.uid = m.uid;
        Ok(Applied::Events(events))
    }

    /// Whether an item of `key` at `seqno` may be read.
    #[must_use]
    pub fn visibility(&self, key: &DiskKey, seqno: Seqno) -> Visibility {
        match self.collections.get(&key.collection()) {
            None => Visibility::UnknownCollection,
            Some(c) if seqno.0 < c.start => Visibility::OldGeneration,
            Some(_) => Visibility::Visible,
        }
    }

    /// The open collection `cid`.
    #[must_use]
    pub fn collection(&self, cid: CollectionId) -> Option<&CollectionState> {
        self.collections.get(&cid)
    }

    /// Records a mutation in `cid`: `live` is the change in live items,
    /// `bytes` the change in bytes.
    pub fn note(&mut self, cid: CollectionId, seqno: Seqno, live: i64, bytes: i64) {
        if let Some(c) = self.collections.get_mut(&cid) {
            c.stats.items = c.stats.items.saturating_add_signed(live);
            c.stats.disk_bytes = c.stats.disk_bytes.saturating_add_signed(bytes);
            c.stats.high_seqno = c.stats.high_seqno.max(seqno.0);
        }
    }

    /// Live items over all open collections.
    #[must_use]
    pub fn items(&self) -> u64 {
        self.collections.values().map(|c| c.stats.items).sum()
    }

    /// The dropped generations, as compaction wants them.
    #[must_use]
    pub fn dropped_for_compaction(&self) -> Vec<DroppedCollection> {
        self.dropped
            .values()
            .map(|d| DroppedCollection {
                cid: CollectionId(d.cid),
                end_seqno: Seqno(d.end),
            })
            .collect()
    }

    /// Compaction purged these generations: forget them (unless a newer
    /// drop happened meanwhile).
    pub fn purged(&mut self, done: &[DroppedCollection]) {
        for d in done {
            if self
                .dropped
                .get(&d.cid)
                .is_some_and(|cur| cur.end <= d.end_seqno.0)
            {
                self.dropped.remove(&d.cid);
            }
        }
    }

    /// The local documents that persist this state.
    #[must_use]
    pub fn local_docs(&self) -> Vec<LocalOp> {
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        let set = |name: &str, value: Bytes| LocalOp::Set {
            name: name.to_owned(),
            value,
        };
        let stats: Vec<StatsEntry> = self
            .collections
            .values()
            .map(|c| StatsEntry {
                cid: c.cid,
                stats: c.stats,
            })
            .collect();
        vec![
            set(
                LOCAL_MANIFEST,
                json(serde_json::json!({"uid": format!("{:x}", self.uid)})),
            ),
            set(
                LOCAL_OPEN,
                json(serde_json::json!(
                    self.collections.values().collect::<Vec<_>>()
                )),
            ),
            set(
                LOCAL_SCOPES,
                json(serde_json::json!(self.scopes.values().collect::<Vec<_>>())),
            ),
            set(
                LOCAL_DROPPED,
                json(serde_json::json!(self.dropped.values().collect::<Vec<_>>())),
            ),
            set(LOCAL_STATS, json(serde_json::json!(stats))),
        ]
    }

    /// Rebuilds the state from a store's local documents (the epoch state
    /// when it has none).
    pub fn from_local(docs: &[(String, Bytes)]) -> Result<Self, VbManifestError> {
        let find = |name: &str| docs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        fn parse<T: for<'de> Deserialize<'de>>(
            doc: &'static str,
            raw: &Bytes,
        ) -> Result<T, VbManifestError> {
            serde_json::from_slice(raw).map_err(|e| VbManifestError::BadLocalDoc {
                doc,
                reason: e.to_string(),
            })
        }
        let Some(uid_doc) = find(LOCAL_MANIFEST) else {
            return Ok(Self::epoch());
        };
        let uid: UidDoc = parse(LOCAL_MANIFEST, uid_doc)?;
        let uid = u64::from_str_radix(&uid.uid, 16).map_err(|e| VbManifestError::BadLocalDoc {
            doc: LOCAL_MANIFEST,
            reason: e.to_string(),
        })?;
        let missing = |doc: &'static str| VbManifestError::BadLocalDoc {
            doc,
            reason: "missing".into(),
        };
        let open: Vec<CollectionState> = parse(
            LOCAL_OPEN,
            find(LOCAL_OPEN).ok_or_else(|| missing(LOCAL_OPEN))?,
        )?;
        let scopes: Vec<ScopeState> = parse(
            LOCAL_SCOPES,
            find(LOCAL_SCOPES).ok_or_else(|| missing(LOCAL_SCOPES))?,
        )?;
        let dropped: Vec<Dropped> = parse(
            LOCAL_DROPPED,
            find(LOCAL_DROPPED).ok_or_else(|| missing(LOCAL_DROPPED))?,
        )?;
        let stats: Vec<StatsEntry> = match find(LOCAL_STATS) {
            Some(raw) => parse(LOCAL_STATS, raw)?,
            None => Vec::new(),
        };
        let mut v = VbManifest {
            uid,
            scopes: BTreeMap::new(),
            collections: BTreeMap::new(),
            dropped: BTreeMap::new(),
        };
        for s in scopes {
            if v.scopes.insert(ScopeId(s.sid), s).is_some() {
                return Err(VbManifestError::BadLocalDoc {
                    doc: LOCAL_SCOPES,
                    reason: "a scope is listed twice".into(),
                });
            }
        }
        for c in open {
            if v.collections.insert(CollectionId(c.cid), c).is_some() {
                return Err(VbManifestError::BadLocalDoc {
                    doc: LOCAL_OPEN,
                    reason: "a collection is listed twice".into(),
                });
            }
        }
        for d in dropped {
            v.dropped.insert(CollectionId(d.cid), d);
        }
        for s in stats {
            if let Some(c) = v.collections.get_mut(&CollectionId(s.cid)) {
                c.stats = s.stats;
            }
        }
        Ok(v)
    }

    /// True when this state holds exactly the scopes and collections of `m`
    /// (names, scopes and TTLs), at its uid.
    #[must_use]
    pub fn matches(&self, m: &Manifest) -> bool {
        self.uid == m.uid
            && self.scopes.len() == m.scopes.len()
            && self.collections.len() == m.collections.len()
            && m.scopes
                .values()
                .all(|s| self.scopes.get(&s.id).is_some_and(|v| v.name == s.name))
            && m.collections.values().all(|c| {
                self.collections.get(&c.id).is_some_and(|v| {
                    v.name == c.name && v.sid == c.scope.0 && v.max_ttl == c.max_ttl
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        Manifest::from_json(json.as_bytes()).unwrap()
    }

    fn counter(start: u64) -> impl FnMut() -> (Seqno, Cas) {
        let mut s = start;
        move || {
            s += 1;
            (Seqno(s), Cas(s << 16))
        }
    }

    fn kinds(ev: &[Document]) -> Vec<(u8, bool)> {
        ev.iter()
            .map(|d| (d.key.user_key()[0], d.is_deleted()))
            .collect()
    }

    #[test]
    fn events_come_in_upstream_order() {
        let mut v = VbManifest::epoch();
        let m1 = manifest(
            r#"{"uid":"1","scopes":[{"name":"_default","uid":"0","collections":[{"name":"_default","uid":"0"},{"name":"c8","uid":"8"}]},
            {"name":"s9","uid":"9","collections":[{"name":"c9","uid":"9"}]}]}"#,
        );
        let Applied::Events(ev) = v.update(&m1, &mut counter(10)).unwrap() else {
            panic!("expected events")
        };
        // scope create, then collection creates.
        assert_eq!(kinds(&ev), [(1, false), (0, false), (0, false)]);
        assert_eq!(
            ev.iter().map(|d| d.meta.seqno.0).collect::<Vec<_>>(),
            [11, 12, 13]
        );
        assert!(v.matches(&m1));
        // Drop s9 (and c9), drop c8, add s10 with c10.
        let m2 = manifest(
            r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"_default","uid":"0"}]},
            {"name":"s10","uid":"a","collections":[{"name":"c10","uid":"a"}]}]}"#,
        );
        let Applied::Events(ev) = v.update(&m2, &mut counter(20)).unwrap() else {
            panic!("expected events")
        };
        assert_eq!(
            kinds(&ev),
            [(1, false), (0, true), (0, true), (0, false), (1, true)],
            "scope creates, collection drops, collection creates, scope drops"
        );
        assert!(v.matches(&m2));
        assert_eq!(v.dropped.len(), 2);
        assert_eq!(v.update(&m2, &mut counter(30)).unwrap(), Applied::Unchanged);
        assert_eq!(v.update(&m1, &mut counter(30)).unwrap(), Applied::Behind);
        let mut same_uid = m1.clone();
        same_uid.uid = 2;
        assert!(matches!(
            v.update(&same_uid, &mut counter(30)),
            Err(VbManifestError::EqualUidWithDifferences { uid: 2 })
        ));
    }

    #[test]
    fn resurrection_hides_old_generations_and_roundtrips() {
        let with = r#"{"uid":"UID","scopes":[{"name":"_default","uid":"0","collections":[{"name":"_default","uid":"0"},{"name":"fruit","uid":"8"}]}]}"#;
        let without = r#"{"uid":"UID","scopes":[{"name":"_default","uid":"0","collections":[{"name":"_default","uid":"0"}]}]}"#;
        let mut v = VbManifest::epoch();
        let mut next = counter(0);
        v.update(&manifest(&with.replace("UID", "1")), &mut next)
            .unwrap();
        let start1 = v.collection(CollectionId(8)).unwrap().start;
        let k = DiskKey::new(CollectionId(8), b"apple").unwrap();
        assert_eq!(v.visibility(&k, Seqno(start1 + 1)), Visibility::Visible);
        v.update(&manifest(&without.replace("UID", "2")), &mut next)
            .unwrap();
        assert_eq!(
            v.visibility(&k, Seqno(start1 + 1)),
            Visibility::UnknownCollection
        );
        v.update(&manifest(&with.replace("UID", "3")), &mut next)
            .unwrap();
        let start2 = v.collection(CollectionId(8)).unwrap().start;
        assert!(start2 > start1 + 1);
        assert_eq!(
            v.visibility(&k, Seqno(start1 + 1)),
            Visibility::OldGeneration
        );
        assert_eq!(v.visibility(&k, Seqno(start2 + 1)), Visibility::Visible);
        let d = v.dropped[&CollectionId(8)];
        assert_eq!((d.start, d.end), (start1, start1 + 1));
        v.note(CollectionId(8), Seqno(start2 + 1), 1, 10);
        // Persist and reload.
        let docs: Vec<(String, Bytes)> = v
            .local_docs()
            .into_iter()
            .map(|op| match op {
                LocalOp::Set { name, value } => (name, value),
                LocalOp::Delete { name } => (name, Bytes::new()),
            })
            .collect();
        let back = VbManifest::from_local(&docs).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.items(), 1);
        // Compaction purged the dropped generation.
        v.purged(&v.dropped_for_compaction());
        assert!(v.dropped.is_empty());
        // Damaged local documents are typed errors.
        let mut bad = docs.clone();
        bad[1].1 = Bytes::from_static(b"{");
        assert!(matches!(
            VbManifest::from_local(&bad),
            Err(VbManifestError::BadLocalDoc { .. })
        ));
    }
}

//! The bucket's collections manifest, in the upstream JSON format:
//!
//! ```json
//! {"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[
//!     {"name":"_default","uid":"0"},
//!     {"name":"fruit","uid":"8","maxTTL":3600}]}]}
//! ```
//!
//! Uids are hex strings without a prefix (at most 16 digits for the
//! manifest, 8 for scopes and collections). Names are 1 to 251 characters
//! from `[A-Za-z0-9_%-]`. The `_default` scope must exist with uid 0; the
//! `_default` collection (uid 0), when present, lives in it. Ids 1 to 7 are
//! reserved, so user scopes and collections start at 8. Ids and scope names
//! are unique; collection names are unique within their scope.

use kvstore_core::{CollectionId, ScopeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The longest scope or collection name.
pub const MAX_NAME_LEN: usize = 251;
/// The largest `maxTTL` (seconds), as upstream.
pub const MAX_TTL: u64 = i32::MAX as u64;
/// The largest manifest JSON accepted.
pub const MAX_JSON_LEN: usize = 1 << 20;
/// The largest number of scopes, and of collections, in a manifest.
pub const MAX_ENTRIES: usize = 10_000;

/// A collection in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// Its id.
    pub id: CollectionId,
    /// Its name.
    pub name: String,
    /// Its scope.
    pub scope: ScopeId,
    /// The TTL every new document of it gets at most, in seconds.
    pub max_ttl: Option<u32>,
}

/// A scope in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Its id.
    pub id: ScopeId,
    /// Its name.
    pub name: String,
}

/// A validated manifest. Scopes and collections are kept sorted by id, so
/// two manifests with the same content compare equal whatever the order of
/// their JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest uid.
    pub uid: u64,
    /// Scopes by id.
    pub scopes: BTreeMap<ScopeId, Scope>,
    /// Collections by id.
    pub collections: BTreeMap<CollectionId, Collection>,
}

/// Why a manifest is not valid. Each variant names what broke which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not JSON of the manifest's shape.
    #[error("manifest JSON: {0}")]
    Json(String),
    /// The JSON is larger than accepted.
    #[error("manifest JSON of {len} bytes exceeds {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A uid is not a hex string of the right length.
    #[error("{what}: uid {value:?} is not 1 to {max_digits} hex digits")]
    BadUid {
        /// Which scope, collection or the manifest.
        what: String,
        /// The string found.
        value: String,
        /// The longest allowed.
        max_digits: usize,
    },
    /// A name breaks the naming rule.
    #[error("{what}: name {name:?} {reason}")]
    BadName {
        /// Which scope or collection.
        what: String,
        /// The name found.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A scope or collection id is reserved.
    #[error("{what}: id {id:#x} is reserved (1 to 7)")]
    ReservedId {
        /// Which scope or collection.
        what: String,
        /// The id.
        id: u32,
    },
    /// Two scopes, or two collections, share an id.
    #[error("{what}: id {id:#x} is used twice")]
    DuplicateId {
        /// Scopes or collections.
        what: &'static str,
        /// The id.
        id: u32,
    },
    /// Two scopes, or two collections of one scope, share a name.
    #[error("{what}: name {name:?} is used twice")]
    DuplicateName {
        /// Where.
        what: String,
        /// The name.
        name: String,
    },
    /// The `_default` scope is missing or wrong.
    #[error("the _default scope: {0}")]
    DefaultScope(&'static str),
    /// The `_default` collection is misplaced or misnamed.
    #[error("the _default collection: {0}")]
    DefaultCollection(&'static str),
    /// A `maxTTL` out of range.
    #[error("collection {collection:?}: maxTTL {value} exceeds {max}")]
    MaxTtl {
        /// The collection.
        collection: String,
        /// The value found.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// Too many scopes or collections.
    #[error("more than {max} {what}")]
    TooMany {
        /// Scopes or collections.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Uid 0 is reserved for the epoch manifest.
    #[error("uid 0 is only valid for the epoch manifest (the _default scope and collection alone)")]
    EpochUid,
}

/// Why a manifest cannot follow the current one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessorError {
    /// The uid went backwards.
    #[error("uid {new:#x} is below the current uid {current:#x}")]
    UidBackwards {
        /// The current uid.
        current: u64,
        /// The proposed uid.
        new: u64,
    },
    /// The same uid with different content.
    #[error("uid {uid:#x} is the current uid but the content differs")]
    EqualUidDifferent {
        /// The uid.
        uid: u64,
    },
    /// A surviving scope changed its name.
    #[error("scope {id:#x} renamed from {old:?} to {new:?}")]
    ScopeRenamed {
        /// The scope.
        id: u32,
        /// Its name now.
        old: String,
        /// The proposed name.
        new: String,
    },
    /// A surviving collection changed its name.
    #[error("collection {id:#x} renamed from {old:?} to {new:?}")]
    CollectionRenamed {
        /// The collection.
        id: u32,
        /// Its name now.
        old: String,
        /// The proposed name.
        new: String,
    },
    /// A surviving collection moved to another scope.
    #[error("collection {id:#x} ({name:?}) moved from scope {from:#x} to scope {to:#x}")]
    CollectionMoved {
        /// The collection.
        id: u32,
        /// Its name.
        name: String,
        /// Its scope now.
        from: u32,
        /// The proposed scope.
        to: u32,
    },
}

#[derive(Deserialize)]
struct RawManifest {
    uid: String,
    scopes: Vec<RawScope>,
}

#[derive(Deserialize)]
struct RawScope {
    name: String,
    uid: String,
    collections: Vec<RawCollection>,
}

#[derive(Deserialize)]
struct RawCollection {
    name: String,
    uid: String,
    #[serde(rename = "maxTTL", default)]
    max_ttl: Option<u64>,
}

#[derive(Serialize)]
struct OutManifest<'a> {
    uid: String,
    scopes: Vec<OutScope<'a>>,
}

#[derive(Serialize)]
struct OutScope<'a> {
    name: &'a str,
    uid: String,
    collections: Vec<OutCollection<'a>>,
}

#[derive(Serialize)]
struct OutCollection<'a> {
    name: &'a str,
    uid: String,
    #[serde(rename = "maxTTL", skip_serializing_if = "Option::is_none")]
    max_ttl: Option<u32>,
}

fn parse_uid(what: impl Fn() -> String, s: &str, max_digits: usize) -> Result<u64, ManifestError> {
    let bad = || ManifestError::BadUid {
        what: what(),
        value: s.to_owned(),
        max_digits,
    };
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u64::from_str_radix(s, 16).map_err(|_| bad())
}

fn check_name(what: impl Fn() -> String, name: &str) -> Result<(), ManifestError> {
    let bad = |reason| ManifestError::BadName {
        what: what(),
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("is longer than 251 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'%' | b'-'))
    {
        return Err(bad("has a character outside [A-Za-z0-9_%-]"));
    }
    Ok(())
}

impl Manifest {
    /// The manifest every bucket starts with: uid 0, the `_default` scope
    /// and collection.
    #[must_use]
    pub fn epoch() -> Self {
        let mut m = Manifest {
            uid: 0,
            scopes: BTreeMap::new(),
            collections: BTreeMap::new(),
        };
        m.scopes.insert(
            ScopeId::DEFAULT,
            Scope {
                id: ScopeId::DEFAULT,
                name: "_default".into(),
            },
        );
        m.collections.insert(
            CollectionId::DEFAULT,
            Collection {
                id: CollectionId::DEFAULT,
                name: "_default".into(),
                scope: ScopeId::DEFAULT,
                max_ttl: None,
            },
        );
        m
    }

    /// Parses and validates manifest JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, ManifestError> {
        if json.len() > MAX_JSON_LEN {
            return Err(ManifestError::TooLarge {
                len: json.len(),
                max: MAX_JSON_LEN,
            });
        }
        let raw: RawManifest =
            serde_json::from_slice(json).map_err(|e| ManifestError::Json(e.to_string()))?;
        let uid = parse_uid(|| "the manifest".into(), &raw.uid, 16)?;
        if raw.scopes.len() > MAX_ENTRIES {
            return Err(ManifestError::TooMany {
                what: "scopes",
                max: MAX_ENTRIES,
            });
        }
        let mut m = Manifest {
            uid,
            scopes: BTreeMap::new(),
            collections: BTreeMap::new(),
        };
        let mut scope_names = BTreeSet::new();
        for rs in &raw.scopes {
            let what = || format!("scope {:?}", rs.name);
            check_name(what, &rs.name)?;
            let sid = parse_uid(what, &rs.uid, 8)? as u32;
            if (1..8).contains(&sid) {
                return Err(ManifestError::ReservedId {
                    what: what(),
                    id: sid,
                });
            }
            if sid == 0 && rs.name != "_default" {
                return Err(ManifestError::DefaultScope("uid 0 must be named _default"));
            }
            if rs.name == "_default" && sid != 0 {
                return Err(ManifestError::DefaultScope("_default must have uid 0"));
            }
            if !scope_names.insert(rs.name.as_str()) {
                return Err(ManifestError::DuplicateName {
                    what: "scopes".into(),
                    name: rs.name.clone(),
                });
            }
            let id = ScopeId(sid);
            if m.scopes.contains_key(&id) {
                return Err(ManifestError::DuplicateId {
                    what: "scopes",
                    id: sid,
                });
            }
            m.scopes.insert(
                id,
                Scope {
                    id,
                    name: rs.name.clone(),
                },
            );
            let mut names = BTreeSet::new();
            for rc in &rs.collections {
                let what = || format!("collection {:?} in scope {:?}", rc.name, rs.name);
                check_name(what, &rc.name)?;
                let cid = parse_uid(what, &rc.uid, 8)? as u32;
                if (1..8).contains(&cid) {
                    return Err(ManifestError::ReservedId {
                        what: what(),
                        id: cid,
                    });
                }
                if cid == 0 && (rc.name != "_default" || sid != 0) {
                    return Err(ManifestError::DefaultCollection(
                        "uid 0 must be named _default and live in the _default scope",
                    ));
                }
                if rc.name == "_default" && sid == 0 && cid != 0 {
                    return Err(ManifestError::DefaultCollection(
                        "_default in the _default scope must have uid 0",
                    ));
                }
                if !names.insert(rc.name.as_str()) {
                    return Err(ManifestError::DuplicateName {
                        what: format!("collections of scope {:?}", rs.name),
                        name: rc.name.clone(),
                    });
                }
                let max_ttl = match rc.max_ttl {
                    None => None,
                    Some(t) if t <= MAX_TTL => Some(t as u32),
                    Some(t) => {
                        return Err(ManifestError::MaxTtl {
                            collection: rc.name.clone(),
                            value: t,
                            max: MAX_TTL,
                        });
                    }
                };
                let id = CollectionId(cid);
                if m.collections.contains_key(&id) {
                    return Err(ManifestError::DuplicateId {
                        what: "collections",
                        id: cid,
                    });
                }
                if m.collections.len() == MAX_ENTRIES {
                    return Err(ManifestError::TooMany {
                        what: "collections",
                        max: MAX_ENTRIES,
                    });
                }
                m.collections.insert(
                    id,
                    Collection {
                        id,
                        name: rc.name.clone(),
                        scope: ScopeId(sid),
                        max_ttl,
                    },
                );
            }
        }
        if !m.scopes.contains_key(&ScopeId::DEFAULT) {
            return Err(ManifestError::DefaultScope("is missing"));
        }
        if m.uid == 0 && m != Self::epoch() {
            return Err(ManifestError::EpochUid);
        }
        Ok(m)
    }

    /// The manifest as JSON, in the upstream format.
    #[must_use]
    pub fn to_json(&self) -> String {
        let out = OutManifest {
            uid: format!("{:x}", self.uid),
            scopes: self
                .scopes
                .values()
                .map(|s| OutScope {
                    name: &s.name,
                    uid: format!("{:x}", s.id.0),
                    collections: self
                        .collections
                        .values()
                        .filter(|c| c.scope == s.id)
                        .map(|c| OutCollection {
                            name: &c.name,
                            uid: format!("{:x}", c.id.0),
                            max_ttl: c.max_ttl,
                        })
                        .collect(),
                })
                .collect(),
        };
        // Serialising strings and integers cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// Checks that `next` may follow this manifest: a greater uid, and every
    /// scope and collection that survives keeps its id, name and scope; or
    /// the same uid with the same content (a no-op).
    pub fn check_successor(&self, next: &Manifest) -> Result<(), SuccessorError> {
        if next.uid < self.uid {
            return Err(SuccessorError::UidBackwards {
                current: self.uid,
                new: next.uid,
            });
        }
        if next.uid == self.uid {
            return if next == self {
                Ok(())
            } else {
                Err(SuccessorError::EqualUidDifferent { uid: self.uid })
            };
        }
        for (id, s) in &self.scopes {
            if let Some(n) = next.scopes.get(id)
                && n.name != s.name
            {
                return Err(SuccessorError::ScopeRenamed {
                    id: id.0,
                    old: s.name.clone(),
                    new: n.name.clone(),
                });
            }
        }
        for (id, c) in &self.collections {
            if let Some(n) = next.collections.get(id) {
                if n.name != c.name {
                    return Err(SuccessorError::CollectionRenamed {
                        id: id.0,
                        old: c.name.clone(),
                        new: n.name.clone(),
                    });
                }
                if n.scope != c.scope {
                    return Err(SuccessorError::CollectionMoved {
                        id: id.0,
                        name: c.name.clone(),
                        from: c.scope.0,
                        to: n.scope.0,
                    });
                }
            }
        }
        Ok(())
    }

    /// The id of the collection at `scope.collection`.
    #[must_use]
    pub fn collection_by_path(&self, path: &str) -> Option<&Collection> {
        let (scope, coll) = path.split_once('.')?;
        let sid = self.scopes.values().find(|s| s.name == scope)?.id;
        self.collections
            .values()
            .find(|c| c.scope == sid && c.name == coll)
    }

    /// The scope named `name`.
    #[must_use]
    pub fn scope_by_name(&self, name: &str) -> Option<&Scope> {
        self.scopes.values().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Manifest, ManifestError> {
        Manifest::from_json(s.as_bytes())
    }

    const FRUIT: &str = r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[
        {"name":"_default","uid":"0"},{"name":"fruit","uid":"8","maxTTL":3600}]},
        {"name":"shop","uid":"9","collections":[{"name":"fruit","uid":"a"}]}]}"#;

    #[test]
    fn parses_and_roundtrips() {
        let m = parse(FRUIT).unwrap();
        assert_eq!(m.uid, 2);
        assert_eq!(m.collections.len(), 3);
        assert_eq!(m.collections[&CollectionId(8)].max_ttl, Some(3600));
        assert_eq!(m.collections[&CollectionId(10)].scope, ScopeId(9));
        assert_eq!(parse(&m.to_json()).unwrap(), m);
        assert_eq!(
            m.collection_by_path("shop.fruit").unwrap().id,
            CollectionId(10)
        );
        assert!(m.collection_by_path("shop.veg").is_none());
        assert_eq!(
            parse(&Manifest::epoch().to_json()).unwrap(),
            Manifest::epoch()
        );
        // Unknown keys are ignored; the default collection is optional.
        assert!(
            parse(
                r#"{"uid":"3","extra":1,"scopes":[{"name":"_default","uid":"0","collections":[]}]}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn rejections_name_what_broke_which_rule() {
        let cases: &[(&str, &str)] = &[
            ("not json", "manifest JSON"),
            (r#"{"uid":"0x2","scopes":[]}"#, "the manifest: uid \"0x2\""),
            (r#"{"uid":"12345678901234567","scopes":[]}"#, "1 to 16 hex"),
            (r#"{"uid":"2","scopes":[]}"#, "_default scope: is missing"),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"1","collections":[]}]}"#,
                "reserved",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"x","uid":"0","collections":[]}]}"#,
                "uid 0 must be named _default",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"a.b","uid":"8"}]}]}"#,
                "collection \"a.b\"",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"","uid":"8"}]}]}"#,
                "is empty",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"7"}]}]}"#,
                "id 0x7 is reserved",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"8"},{"name":"d","uid":"8"}]}]}"#,
                "collections: id 0x8 is used twice",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"8"},{"name":"c","uid":"9"}]}]}"#,
                "name \"c\" is used twice",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"8","maxTTL":-1}]}]}"#,
                "manifest JSON",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"8","maxTTL":2147483648}]}]}"#,
                "maxTTL 2147483648",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[]},{"name":"s","uid":"8","collections":[{"name":"_default","uid":"0"}]}]}"#,
                "_default collection",
            ),
            (
                r#"{"uid":"0","scopes":[{"name":"_default","uid":"0","collections":[{"name":"c","uid":"8"}]}]}"#,
                "epoch",
            ),
            (
                r#"{"uid":"2","scopes":[{"name":"_default","uid":"0","collections":[]},{"name":"s","uid":"8","collections":[]},{"name":"s","uid":"9","collections":[]}]}"#,
                "scopes: name \"s\" is used twice",
            ),
        ];
        for (json, want) in cases {
            let e = parse(json).expect_err(json).to_string();
            assert!(
                e.contains(want),
                "{json}\n  gave {e:?}, expected it to mention {want:?}"
            );
        }
        let long = "a".repeat(252);
        let j = format!(
            r#"{{"uid":"2","scopes":[{{"name":"_default","uid":"0","collections":[{{"name":"{long}","uid":"8"}}]}}]}}"#
        );
        assert!(
            parse(&j)
                .unwrap_err()
                .to_string()
                .contains("longer than 251")
        );
        assert!(matches!(
            Manifest::from_json(&vec![b' '; MAX_JSON_LEN + 1]),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn successor_rule() {
        let cur = parse(FRUIT).unwrap();
        let with = |uid: u64, f: &dyn Fn(&mut Manifest)| {
            let mut m = cur.clone();
            m.uid = uid;
            f(&mut m);
            m
        };
        assert!(
            cur.check_successor(&cur).is_ok(),
            "equal uid, equal content"
        );
        assert!(matches!(
            cur.check_successor(&with(2, &|m| {
                m.collections.remove(&CollectionId(8));
            })),
            Err(SuccessorError::EqualUidDifferent { .. })
        ));
        assert!(matches!(
            cur.check_successor(&with(1, &|_| {})),
            Err(SuccessorError::UidBackwards { .. })
        ));
        // Drops, adds, resurrection under a new name and a maxTTL change are fine.
        assert!(
            cur.check_successor(&with(3, &|m| {
                m.collections.remove(&CollectionId(8));
            }))
            .is_ok()
        );
        assert!(
            cur.check_successor(&with(3, &|_| {})).is_ok(),
            "a greater uid without changes"
        );
        assert!(
            cur.check_successor(&with(3, &|m| {
                m.collections.get_mut(&CollectionId(8)).unwrap().max_ttl = None;
            }))
            .is_ok()
        );
        assert!(matches!(
            cur.check_successor(&with(3, &|m| {
                m.collections.get_mut(&CollectionId(8)).unwrap().name = "veg".into();
            })),
            Err(SuccessorError::CollectionRenamed { id: 8, .. })
        ));
        assert!(matches!(
            cur.check_successor(&with(3, &|m| {
                m.collections.get_mut(&CollectionId(8)).unwrap().scope = ScopeId(9);
            })),
            Err(SuccessorError::CollectionMoved {
                id: 8,
                from: 0,
                to: 9,
                ..
            })
        ));
        assert!(matches!(
            cur.check_successor(&with(3, &|m| {
                m.scopes.get_mut(&ScopeId(9)).unwrap().name = "store".into();
            })),
            Err(SuccessorError::ScopeRenamed { id: 9, .. })
        ));
    }
}

//! `manifest`: the collections manifest parser and the successor rule,
//! structure-aware.
//!
//! The input (through `arbitrary`) is a pair of manifests built from small
//! pools of names and ids, so that the two often share scopes and
//! collections and the interesting cases of the successor rule (renames,
//! moves, drops, resurrections, equal uids) come up all the time; or, now
//! and then, raw JSON bytes. Properties:
//! - parsing never panics;
//! - a manifest that parses obeys every rule of DESIGN §8 (checked here
//!   independently of the parser) and survives `to_json` and a reparse;
//! - `check_successor` agrees with a reference model of the rule, and every
//!   manifest is its own successor.

use arbitrary::{Arbitrary, Unstructured};
use collections::Manifest;
use kvstore_core::{CollectionId, ScopeId};
use std::collections::BTreeSet;

/// A name, mostly from a small pool (valid and invalid ones).
#[derive(Debug, Clone, Arbitrary)]
pub enum Name {
    /// One of [`NAMES`].
    Pool(u8),
    /// Anything.
    Raw(String),
}

/// Names the fuzzer picks from: valid ones, the reserved `_default`, and a
/// few that break a rule (empty, a bad character, too long).
pub const NAMES: &[&str] = &[
    "_default", "a", "b", "fruit", "veg", "x%-_9", "", "bad name", "é",
];

/// An id, mostly small so that manifests share them.
#[derive(Debug, Clone, Arbitrary)]
pub enum Uid {
    /// 0 to 15, as hex.
    Small(u8),
    /// Any `u32`, as hex.
    Any(u32),
    /// Any text.
    Raw(String),
}

/// A collection in the JSON.
#[derive(Debug, Clone, Arbitrary)]
pub struct CollectionSpec {
    /// Its name.
    pub name: Name,
    /// Its uid.
    pub uid: Uid,
    /// Its `maxTTL`, if any.
    pub max_ttl: Option<u64>,
}

/// A scope in the JSON.
#[derive(Debug, Clone, Arbitrary)]
pub struct ScopeSpec {
    /// Its name.
    pub name: Name,
    /// Its uid.
    pub uid: Uid,
    /// Its collections.
    pub collections: Vec<CollectionSpec>,
}

/// A manifest in the JSON.
#[derive(Debug, Clone, Arbitrary)]
pub struct ManifestSpec {
    /// The manifest uid (as a `u8` it is often equal between the two).
    pub uid: Uid,
    /// Its scopes.
    pub scopes: Vec<ScopeSpec>,
}

/// One input.
#[derive(Debug, Clone, Arbitrary)]
pub enum Input {
    /// Two manifests: the current one and a proposed successor.
    Pair(ManifestSpec, ManifestSpec),
    /// A manifest and the same one edited: a structure-preserving change
    /// that the rule must judge.
    Edit(ManifestSpec, Vec<EditOp>),
    /// Raw JSON.
    Raw(Vec<u8>),
}

/// A change to a manifest's JSON form.
#[derive(Debug, Clone, Arbitrary)]
pub enum EditOp {
    /// Raise the uid by this much.
    BumpUid(u8),
    /// Drop collection `i` (mod the count).
    DropCollection(u8),
    /// Rename collection `i`.
    RenameCollection(u8, Name),
    /// Move collection `i` to scope `j`.
    MoveCollection(u8, u8),
    /// Drop scope `i`.
    DropScope(u8),
    /// Add a collection to scope `i`.
    AddCollection(u8, CollectionSpec),
}

fn name(n: &Name) -> String {
    match n {
        Name::Pool(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
        Name::Raw(s) => s.clone(),
    }
}

fn uid(u: &Uid) -> String {
    match u {
        Uid::Small(i) => format!("{:x}", i % 16),
        Uid::Any(v) => format!("{v:x}"),
        Uid::Raw(s) => s.clone(),
    }
}

/// The JSON of a spec.
#[must_use]
pub fn to_json(m: &ManifestSpec) -> Vec<u8> {
    let scopes: Vec<serde_json::Value> = m
        .scopes
        .iter()
        .map(|s| {
            let cols: Vec<serde_json::Value> = s
                .collections
                .iter()
                .map(|c| {
                    let mut o = serde_json::json!({"name": name(&c.name), "uid": uid(&c.uid)});
                    if let Some(t) = c.max_ttl {
                        o["maxTTL"] = serde_json::json!(t);
                    }
                    o
                })
                .collect();
            serde_json::json!({"name": name(&s.name), "uid": uid(&s.uid), "collections": cols})
        })
        .collect();
    serde_json::json!({"uid": uid(&m.uid), "scopes": scopes})
        .to_string()
        .into_bytes()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    run_input(&input);
}

/// Runs one structured input.
pub fn run_input(input: &Input) {
    match input {
        Input::Pair(a, b) => {
            let a = parse(&to_json(a));
            let b = parse(&to_json(b));
            if let (Some(a), Some(b)) = (a, b) {
                successor(&a, &b);
                successor(&b, &a);
            }
        }
        Input::Edit(spec, ops) => {
            let mut next = spec.clone();
            for op in ops {
                edit(&mut next, op);
            }
            if let (Some(a), Some(b)) = (parse(&to_json(spec)), parse(&to_json(&next))) {
                successor(&a, &b);
                successor(&b, &a);
            }
        }
        Input::Raw(json) => {
            parse(json);
        }
    }
}

fn edit(m: &mut ManifestSpec, op: &EditOp) {
    let ncols: usize = m.scopes.iter().map(|s| s.collections.len()).sum();
    let locate = |m: &ManifestSpec, i: u8| -> Option<(usize, usize)> {
        if ncols == 0 {
            return None;
        }
        let mut i = usize::from(i) % ncols;
        for (si, s) in m.scopes.iter().enumerate() {
            if i < s.collections.len() {
                return Some((si, i));
            }
            i -= s.collections.len();
        }
        None
    };
    match op {
        EditOp::BumpUid(d) => {
            if let Uid::Small(v) = &mut m.uid {
                *v = v.saturating_add(*d);
            }
        }
        EditOp::DropCollection(i) => {
            if let Some((s, c)) = locate(m, *i) {
                m.scopes[s].collections.remove(c);
            }
        }
        EditOp::RenameCollection(i, n) => {
            if let Some((s, c)) = locate(m, *i) {
                m.scopes[s].collections[c].name = n.clone();
            }
        }
        EditOp::MoveCollection(i, to) => {
            if let Some((s, c)) = locate(m, *i) {
                let col = m.scopes[s].collections.remove(c);
                let to = usize::from(*to) % m.scopes.len();
                m.scopes[to].collections.push(col);
            }
        }
        EditOp::DropScope(i) => {
            if !m.scopes.is_empty() {
                let i = usize::from(*i) % m.scopes.len();
                m.scopes.remove(i);
            }
        }
        EditOp::AddCollection(i, c) => {
            if !m.scopes.is_empty() {
                let i = usize::from(*i) % m.scopes.len();
                m.scopes[i].collections.push(c.clone());
            }
        }
    }
}

/// Parses, checks the rules on what parsed, and round-trips it.
pub fn parse(json: &[u8]) -> Option<Manifest> {
    let m = Manifest::from_json(json).ok()?;
    check_rules(&m);
    let text = m.to_json();
    match Manifest::from_json(text.as_bytes()) {
        Ok(back) => assert_eq!(back, m, "to_json round trip of {text}"),
        Err(e) => panic!("a valid manifest prints as JSON it refuses ({e}): {text}"),
    }
    assert!(m.check_successor(&m).is_ok(), "a manifest follows itself");
    Some(m)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 251
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'%' | b'-'))
}

/// DESIGN §8's rules, checked on a parsed manifest.
fn check_rules(m: &Manifest) {
    let default = m.scopes.get(&ScopeId::DEFAULT);
    assert!(
        default.is_some_and(|s| s.name == "_default"),
        "the _default scope with uid 0 exists"
    );
    let mut scope_names = BTreeSet::new();
    for (id, s) in &m.scopes {
        assert_eq!(*id, s.id);
        assert!(valid_name(&s.name), "scope name {:?}", s.name);
        assert!(!(1..8).contains(&id.0), "reserved scope id {id}");
        assert!(scope_names.insert(&s.name), "two scopes named {:?}", s.name);
        assert_eq!(id.0 == 0, s.name == "_default", "_default is scope 0");
    }
    let mut names = BTreeSet::new();
    for (id, c) in &m.collections {
        assert_eq!(*id, c.id);
        assert!(valid_name(&c.name), "collection name {:?}", c.name);
        assert!(!(1..8).contains(&id.0), "reserved collection id {id}");
        assert!(m.scopes.contains_key(&c.scope), "collection in no scope");
        assert!(
            names.insert((c.scope, &c.name)),
            "two collections named {:?} in one scope",
            c.name
        );
        if id.0 == 0 {
            assert!(c.name == "_default" && c.scope == ScopeId::DEFAULT);
        }
        if c.name == "_default" && c.scope == ScopeId::DEFAULT {
            assert_eq!(*id, CollectionId::DEFAULT);
        }
        assert!(c.max_ttl.is_none_or(|t| t <= i32::MAX as u32));
    }
    if m.uid == 0 {
        assert_eq!(*m, Manifest::epoch(), "uid 0 is the epoch manifest only");
    }
}

/// The successor rule, stated once more, independently of the crate.
fn model_successor(cur: &Manifest, next: &Manifest) -> bool {
    if next.uid < cur.uid {
        return false;
    }
    if next.uid == cur.uid {
        return next == cur;
    }
    cur.scopes
        .iter()
        .all(|(id, s)| next.scopes.get(id).is_none_or(|n| n.name == s.name))
        && cur.collections.iter().all(|(id, c)| {
            next.collections
                .get(id)
                .is_none_or(|n| n.name == c.name && n.scope == c.scope)
        })
}

fn successor(cur: &Manifest, next: &Manifest) {
    let got = cur.check_successor(next);
    let want = model_successor(cur, next);
    assert_eq!(
        got.is_ok(),
        want,
        "successor rule: crate says {got:?}, model says {want}\ncurrent {}\nnext {}",
        cur.to_json(),
        next.to_json()
    );
}

//! What the parent knows: every acknowledged operation since the last
//! check, and what the engine may therefore hold after a SIGKILL.
//!
//! # The rules checked after every kill
//!
//! - A vbucket whose create was acknowledged exists (active) after warmup;
//!   one whose delete was acknowledged does not. A create or delete in
//!   flight may have happened or not.
//! - The collections manifest is the last acknowledged one, or the one in
//!   flight. Keys of a closed collection read as unknown; a collection that
//!   was dropped and created again (resurrected) holds none of its old
//!   items.
//! - A key holds a state it was given, never an older one than durability
//!   allows: a durable write acknowledged at seqno `s` in a vbucket means
//!   every write of that vbucket up to `s` is on disk (the persisted seqno
//!   is a high-water mark). So a key reads as its last write at or below
//!   the vbucket's highest durable seqno, or as any later write of it, or
//!   as the write in flight on it. Values of an older incarnation of the
//!   vbucket, or of a dropped collection generation, are never allowed.
//!
//! After the check, what was found becomes the known state.

use crate::proto::{Line, Op};
use engine::{CollectionId, DiskKey, Engine, EngineError, VbState, Vbid};
use std::collections::{BTreeSet, HashMap};

/// Vbuckets the soak uses.
pub const VBS: u16 = 8;
/// User collections (collection indexes 1 to `COLLS`; 0 is `_default`).
pub const COLLS: u8 = 4;
/// Keys per collection and vbucket.
pub const KEYS: u16 = 24;

/// The collection id of collection index `c`.
#[must_use]
pub fn cid(c: u8) -> CollectionId {
    if c == 0 {
        CollectionId::DEFAULT
    } else {
        CollectionId(CollectionId::FIRST_USER - 1 + u32::from(c))
    }
}

/// Key `k` of collection index `c`.
#[must_use]
pub fn key(c: u8, k: u16) -> DiskKey {
    match DiskKey::new(cid(c), format!("key-{k}").as_bytes()) {
        Ok(k) => k,
        Err(e) => panic!("a fixed soak key is valid: {e}"),
    }
}

/// The value written by operation `i`: its number, then padding of a
/// length that varies with it (up to 2 KiB, so values span blocks).
#[must_use]
pub fn value(i: u64) -> Vec<u8> {
    let mut v = format!("{i}:").into_bytes();
    let pad = (i.wrapping_mul(7919) % 2048) as usize;
    v.extend((0..pad).map(|j| b'a' + ((i as usize + j) % 26) as u8));
    v
}

/// The operation number a value was written by.
#[must_use]
pub fn value_op(v: &[u8]) -> Option<u64> {
    let end = v.iter().position(|&b| b == b':')?;
    let n: u64 = std::str::from_utf8(&v[..end]).ok()?.parse().ok()?;
    (value(n) == v).then_some(n)
}

/// The manifest JSON with user collections `open` (bit `c - 1` for
/// collection index `c`).
#[must_use]
pub fn manifest_json(uid: u64, open: u32) -> String {
    let mut cols = vec![r#"{"name":"_default","uid":"0"}"#.to_owned()];
    for c in 1..=COLLS {
        if open & (1 << (c - 1)) != 0 {
            cols.push(format!(r#"{{"name":"c{c}","uid":"{:x}"}}"#, cid(c).0));
        }
    }
    format!(
        r#"{{"uid":"{uid:x}","scopes":[{{"name":"_default","uid":"0","collections":[{}]}}]}}"#,
        cols.join(",")
    )
}

/// The open-collection bits of a manifest.
#[must_use]
pub fn open_bits(m: &engine::Manifest) -> u32 {
    (1..=COLLS)
        .filter(|&c| m.collections.contains_key(&cid(c)))
        .fold(0, |b, c| b | 1 << (c - 1))
}

/// One key: its state at the last check, and the acknowledged writes since,
/// in order (seqno, value or `None` for a delete).
#[derive(Debug, Clone, Default)]
struct KeyModel {
    init: Option<u64>,
    writes: Vec<(u64, Option<u64>)>,
}

#[derive(Debug, Clone, Default)]
struct VbModel {
    exists: bool,
    keys: HashMap<(u8, u16), KeyModel>,
    /// The highest seqno of an acknowledged durable write.
    floor: u64,
}

/// The parent's model.
#[derive(Debug)]
pub struct Model {
    vbs: Vec<VbModel>,
    uid: u64,
    open: u32,
    in_flight: HashMap<u32, Op>,
    /// The highest operation number seen.
    pub last_op: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// Nothing exists yet.
    #[must_use]
    pub fn new() -> Self {
        Model {
            vbs: vec![VbModel::default(); usize::from(VBS)],
            uid: 0,
            open: 0,
            in_flight: HashMap::new(),
            last_op: 0,
        }
    }

    /// Takes one line of the child's output.
    pub fn line(&mut self, l: &Line) {
        match l {
            Line::Try(t, op) => {
                self.note(op);
                self.in_flight.insert(*t, *op);
            }
            Line::Ack(t, op, seqno) => {
                self.note(op);
                self.in_flight.remove(t);
                self.apply(op, *seqno);
            }
            _ => {}
        }
    }

    fn note(&mut self, op: &Op) {
        if let Op::Set { i, .. } | Op::Del { i, .. } = op {
            self.last_op = self.last_op.max(*i);
        }
    }

    fn apply(&mut self, op: &Op, seqno: u64) {
        match *op {
            Op::Set {
                vb,
                c,
                k,
                i,
                durable,
            } => self.write(vb, c, k, seqno, Some(i), durable),
            Op::Del {
                vb, c, k, durable, ..
            } => {
                if seqno != 0 {
                    self.write(vb, c, k, seqno, None, durable);
                }
            }
            Op::DropVb { vb } => self.vbs[usize::from(vb)] = VbModel::default(),
            Op::CreateVb { vb } => {
                self.vbs[usize::from(vb)] = VbModel {
                    exists: true,
                    ..VbModel::default()
                }
            }
            Op::Manifest { uid, open } => self.manifest(uid, open),
        }
    }

    fn write(&mut self, vb: u16, c: u8, k: u16, seqno: u64, v: Option<u64>, durable: bool) {
        let m = &mut self.vbs[usize::from(vb)];
        m.keys.entry((c, k)).or_default().writes.push((seqno, v));
        if durable {
            m.floor = m.floor.max(seqno);
        }
    }

    fn manifest(&mut self, uid: u64, open: u32) {
        let changed = self.open ^ open;
        for vb in &mut self.vbs {
            // A collection opened or closed holds nothing of before.
            vb.keys
                .retain(|(c, _), _| *c == 0 || changed & (1 << (c - 1)) == 0);
        }
        self.uid = uid;
        self.open = open;
    }

    fn is_open(&self, c: u8) -> bool {
        c == 0 || self.open & (1 << (c - 1)) != 0
    }

    /// Checks a warmed-up engine against the model and makes what it holds
    /// the known state. Returns the values checked and the violations.
    pub fn check(&mut self, e: &Engine) -> (u64, Vec<String>) {
        let mut bad = Vec::new();
        let mut checked = 0;
        let flying: Vec<Op> = self.in_flight.drain().map(|(_, op)| op).collect();
        let m = e.manifest();
        if m.uid != self.uid {
            match flying
                .iter()
                .find(|op| matches!(op, Op::Manifest { uid, .. } if *uid == m.uid))
            {
                Some(&Op::Manifest { uid, open }) => self.manifest(uid, open),
                _ => {
                    bad.push(format!(
                        "manifest uid {:#x} after warmup; acknowledged {:#x} (in flight: {flying:?})",
                        m.uid, self.uid
                    ));
                    self.manifest(m.uid, open_bits(&m));
                }
            }
        }
        if open_bits(&m) != self.open {
            bad.push(format!(
                "manifest {:#x} opens collections {:#b}, the model {:#b}",
                m.uid,
                open_bits(&m),
                self.open
            ));
            self.open = open_bits(&m);
        }
        for vb in 0..VBS {
            let present = match e.vbucket(Vbid(vb)) {
                Ok(g) => {
                    if g.state() != VbState::Active {
                        bad.push(format!("vb:{vb} warmed up {:?}", g.state()));
                    }
                    true
                }
                Err(EngineError::NotMyVbucket(_)) => false,
                Err(err) => {
                    bad.push(format!("vb:{vb} after warmup: {err}"));
                    false
                }
            };
            let fly = |want: &dyn Fn(&Op) -> bool| flying.iter().any(want);
            let vm = &mut self.vbs[usize::from(vb)];
            match (vm.exists, present) {
                (true, true) | (false, false) => {}
                (true, false) if fly(&|op| *op == Op::DropVb { vb }) => {
                    *vm = VbModel::default();
                }
                (false, true) if fly(&|op| *op == Op::CreateVb { vb }) => {
                    *vm = VbModel {
                        exists: true,
                        ..VbModel::default()
                    };
                }
                (true, false) => {
                    bad.push(format!("vb:{vb} was acknowledged and is gone"));
                    *vm = VbModel::default();
                }
                (false, true) => {
                    bad.push(format!("vb:{vb} was deleted and came back"));
                    *vm = VbModel {
                        exists: true,
                        ..VbModel::default()
                    };
                }
            }
            if !present {
                continue;
            }
            for c in 0..=COLLS {
                let open = self.is_open(c);
                for k in 0..KEYS {
                    let found = match e.get(Vbid(vb), &key(c, k)) {
                        Ok(item) => match value_op(&item.value) {
                            Some(i) => Some(i),
                            None => {
                                bad.push(format!(
                                    "vb:{vb} c{c} key-{k}: a value no operation wrote ({} bytes)",
                                    item.value.len()
                                ));
                                None
                            }
                        },
                        Err(EngineError::KeyNotFound) => None,
                        Err(EngineError::UnknownCollection { .. }) if !open => None,
                        Err(err) => {
                            bad.push(format!("vb:{vb} c{c} key-{k}: {err}"));
                            None
                        }
                    };
                    checked += 1;
                    let vm = &mut self.vbs[usize::from(vb)];
                    let km = vm.keys.remove(&(c, k)).unwrap_or_default();
                    let mut allowed: BTreeSet<Option<u64>> = BTreeSet::new();
                    if open {
                        let mut base = km.init;
                        for &(s, v) in &km.writes {
                            if s <= vm.floor {
                                base = v;
                            } else {
                                allowed.insert(v);
                            }
                        }
                        allowed.insert(base);
                        for op in &flying {
                            match *op {
                                Op::Set {
                                    vb: fv,
                                    c: fc,
                                    k: fk,
                                    i,
                                    ..
                                } if (fv, fc, fk) == (vb, c, k) => {
                                    allowed.insert(Some(i));
                                }
                                Op::Del {
                                    vb: fv,
                                    c: fc,
                                    k: fk,
                                    ..
                                } if (fv, fc, fk) == (vb, c, k) => {
                                    allowed.insert(None);
                                }
                                _ => {}
                            }
                        }
                    } else {
                        allowed.insert(None);
                    }
                    if !allowed.contains(&found) {
                        bad.push(format!(
                            "vb:{vb} c{c} key-{k}: found {found:?}, allowed {allowed:?} (state at the last check {:?}, acknowledged writes since {:?}, durable up to seqno {}, in flight {flying:?})",
                            km.init, km.writes, vm.floor
                        ));
                    }
                    vm.keys.insert(
                        (c, k),
                        KeyModel {
                            init: found,
                            writes: Vec::new(),
                        },
                    );
                }
            }
            self.vbs[usize::from(vb)].floor = 0;
        }
        (checked, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_name_their_operation() {
        for i in [0, 1, 77, 123_456_789] {
            assert_eq!(value_op(&value(i)), Some(i));
        }
        assert_eq!(value_op(b"12:zz"), None);
        assert_eq!(value_op(b"junk"), None);
    }

    #[test]
    fn manifest_json_parses_with_the_open_collections() {
        let m = engine::Manifest::from_json(manifest_json(5, 0b1010).as_bytes()).unwrap();
        assert_eq!(m.uid, 5);
        assert_eq!(open_bits(&m), 0b1010);
        let all = engine::Manifest::from_json(manifest_json(6, 0b1111).as_bytes()).unwrap();
        assert!(m.check_successor(&all).is_ok());
    }
}

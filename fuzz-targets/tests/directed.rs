//! Hand-written inputs for the structure-aware targets: the sequences the
//! fuzzer should find anyway, kept so that the stable suite covers them.
#![allow(clippy::unwrap_used)]

use fuzz_targets::ops::{Fault, Input, Op};
use fuzz_targets::{couchfile_open, manifest, ops};

fn set(key: u8, size: u8) -> Op {
    Op::Set {
        key,
        coll: key % 2 == 1,
        size,
    }
}

fn commit() -> Op {
    Op::Commit { hinted: false }
}

#[test]
fn ops_commits_scans_rollbacks_compactions_reopens() {
    for profile in 0..3 {
        let mut steps = Vec::new();
        for round in 0..6u8 {
            for k in 0..5 {
                steps.push(set(k + round, round % 4));
            }
            steps.push(Op::Delete {
                key: round,
                coll: false,
            });
            steps.push(Op::Local {
                name: round,
                delete: round % 3 == 0,
            });
            steps.push(Op::State(round));
            steps.push(Op::Commit {
                hinted: round % 2 == 0,
            });
        }
        steps.extend([
            Op::Scan { back: 9, every: 2 },
            Op::Rollback(3),
            Op::Rollback(12),
            set(1, 2),
            Op::ScanAcross { compact: true },
            Op::Compact {
                drop_deletes: false,
                older_than: Some(2),
                seqno_bound: Some(1),
                drop_collection: Some(4),
            },
            Op::Checkpoint,
            Op::Reopen { clean: true },
            set(3, 1),
            commit(),
            Op::Maintain,
            Op::Reopen { clean: false },
            Op::Rollback(1),
            Op::Compact {
                drop_deletes: true,
                older_than: None,
                seqno_bound: None,
                drop_collection: None,
            },
        ]);
        ops::run_input(&Input {
            profile,
            ops: steps,
        });
    }
}

#[test]
fn ops_torn_writes_and_failed_syncs_at_every_point() {
    for profile in 0..2 {
        for n in 0..6u8 {
            for fault in [Fault::Write(n), Fault::Sync(n)] {
                let steps = vec![
                    set(1, 0),
                    set(2, 2),
                    commit(),
                    set(3, 1),
                    Op::Arm(fault),
                    commit(),
                    set(4, 0),
                    Op::Delete { key: 1, coll: true },
                    commit(),
                    Op::Checkpoint,
                    Op::Rollback(2),
                    Op::Compact {
                        drop_deletes: true,
                        older_than: None,
                        seqno_bound: None,
                        drop_collection: None,
                    },
                    set(5, 3),
                    Op::TornCommit(fault),
                    set(6, 0),
                    commit(),
                    Op::Reopen { clean: false },
                ];
                ops::run_input(&Input {
                    profile,
                    ops: steps,
                });
            }
        }
    }
}

#[test]
fn manifest_edits() {
    use manifest::{CollectionSpec, EditOp, Input as M, ManifestSpec, Name, ScopeSpec, Uid};
    let base = ManifestSpec {
        uid: Uid::Small(1),
        scopes: vec![
            ScopeSpec {
                name: Name::Pool(0),
                uid: Uid::Small(0),
                collections: vec![
                    CollectionSpec {
                        name: Name::Pool(0),
                        uid: Uid::Small(0),
                        max_ttl: None,
                    },
                    CollectionSpec {
                        name: Name::Pool(3),
                        uid: Uid::Small(8),
                        max_ttl: Some(60),
                    },
                ],
            },
            ScopeSpec {
                name: Name::Pool(4),
                uid: Uid::Small(9),
                collections: vec![CollectionSpec {
                    name: Name::Pool(1),
                    uid: Uid::Small(10),
                    max_ttl: None,
                }],
            },
        ],
    };
    for ops in [
        vec![EditOp::BumpUid(1)],
        vec![EditOp::BumpUid(1), EditOp::DropCollection(1)],
        vec![
            EditOp::BumpUid(2),
            EditOp::RenameCollection(1, Name::Pool(2)),
        ],
        vec![EditOp::BumpUid(1), EditOp::MoveCollection(1, 1)],
        vec![EditOp::BumpUid(1), EditOp::DropScope(1)],
        vec![EditOp::DropCollection(2)],
    ] {
        manifest::run_input(&M::Edit(base.clone(), ops));
    }
    manifest::run_input(&M::Pair(base.clone(), base));
}

#[test]
fn couchfile_open_undamaged_and_damaged() {
    use couchfile_open::{Damage, Input as C};
    for base in 0..2 {
        couchfile_open::run_input(&C {
            base,
            damage: vec![],
        });
        for file in 0..4 {
            couchfile_open::run_input(&C {
                base,
                damage: vec![Damage::Truncate {
                    file,
                    len: 4096 * 2 + 17,
                }],
            });
            couchfile_open::run_input(&C {
                base,
                damage: vec![Damage::Flip {
                    file,
                    at: 4096 + 30,
                    bit: 3,
                }],
            });
            couchfile_open::run_input(&C {
                base,
                damage: vec![Damage::Append {
                    file,
                    bytes: vec![2; 5000],
                }],
            });
        }
    }
}

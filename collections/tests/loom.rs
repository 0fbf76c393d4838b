//! Loom models of the real manifest update state machine.
#![cfg(loom)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use collections::{Finished, Manifest, Start, UpdateMachine};
use loom::sync::Arc;
use loom::thread;

fn manifest(uid: u64) -> std::sync::Arc<Manifest> {
    let mut m = Manifest::epoch();
    m.uid = uid;
    std::sync::Arc::new(m)
}

/// Two cookies racing to start: exactly one starts, the other is busy.
#[test]
fn two_cookies_race() {
    loom::model(|| {
        let u = Arc::new(UpdateMachine::new());
        let hs: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|c| {
                let u = u.clone();
                thread::spawn(move || u.start(c, manifest(c)))
            })
            .collect();
        let r: Vec<Start> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let started = r.iter().filter(|s| **s == Start::Started).count();
        assert_eq!(started, 1, "{r:?}");
        let holder = u.in_flight().expect("one update in flight");
        for (c, s) in [1u64, 2].iter().zip(&r) {
            if *c != holder {
                assert_eq!(*s, Start::Busy { holder });
            }
        }
    });
}

/// The background task completes while the cookie disconnects: the
/// persisted manifest is applied exactly once, and the machine ends idle.
#[test]
fn completion_vs_disconnect() {
    loom::model(|| {
        let u = Arc::new(UpdateMachine::new());
        assert_eq!(u.start(1, manifest(5)), Start::Started);
        let u1 = u.clone();
        let task = thread::spawn(move || u1.finished(1, true));
        let u2 = u.clone();
        let gone = thread::spawn(move || u2.disconnect(1));
        let f = task.join().unwrap();
        let d = gone.join().unwrap();
        let applied = usize::from(matches!(f, Finished::ApplyOrphan(_))) + usize::from(d.is_some());
        assert_eq!(applied, 1, "applied once: {f:?} / {d:?}");
        assert_eq!(u.in_flight(), None, "no stale busy");
        assert_eq!(u.take(1), None);
        assert_eq!(u.start(2, manifest(6)), Start::Started);
    });
}

/// A failing background task races a new update from another cookie: the
/// newcomer is busy only while the failure is not yet recorded, the failed
/// update is never resumed, and afterwards a new update starts.
#[test]
fn failure_vs_new_update() {
    loom::model(|| {
        let u = Arc::new(UpdateMachine::new());
        assert_eq!(u.start(1, manifest(5)), Start::Started);
        let u1 = u.clone();
        let task = thread::spawn(move || u1.finished(1, false));
        let u2 = u.clone();
        let newcomer = thread::spawn(move || u2.start(2, manifest(6)));
        assert_eq!(task.join().unwrap(), Finished::NotifyFailure);
        let s = newcomer.join().unwrap();
        assert_eq!(u.take(1), None, "the failed update is never resumed");
        match s {
            Start::Started => assert_eq!(u.in_flight(), Some(2)),
            Start::Busy { holder: 1 } => {
                assert_eq!(u.in_flight(), None, "failure left no stale busy");
                assert_eq!(u.start(2, manifest(6)), Start::Started);
            }
            other => panic!("{other:?}"),
        }
    });
}

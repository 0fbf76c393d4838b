//! Loom models of the real manifest update state machine.
#![cfg(loom)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use collections::{Finished, Manifest, Start, UpdateMachine};
use loom::sync::Arc;
use loom::thread;

fn manifest(uid: u64) -> Arc<Manifest> {
    let mut m = Manifest::epoch();
    m.uid = uid;
    Arc::new(m)
}

/// Two cookies racing to start: exactly one starts, the other is busy.
#[test]
fn two_cookies_race() {
    loom::model(|| {
        let u: Arc<UpdateMachine> = Arc::new(UpdateMachine::new());
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
        let u: Arc<UpdateMachine> = Arc::new(UpdateMachine::new());
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
        assert!(u.take(1).is_none());
        assert_eq!(u.start(2, manifest(6)), Start::Started);
    });
}

/// A failing background task races a new update from another cookie: the
/// newcomer is busy only while the failure is not yet recorded, the failed
/// update is never resumed, and afterwards a new update starts.
#[test]
fn failure_vs_new_update() {
    loom::model(|| {
        let u: Arc<UpdateMachine> = Arc::new(UpdateMachine::new());
        assert_eq!(u.start(1, manifest(5)), Start::Started);
        let u1 = u.clone();
        let task = thread::spawn(move || u1.finished(1, false));
        let u2 = u.clone();
        let newcomer = thread::spawn(move || u2.start(2, manifest(6)));
        assert_eq!(task.join().unwrap(), Finished::NotifyFailure);
        let s = newcomer.join().unwrap();
        assert!(u.take(1).is_none(), "the failed update is never resumed");
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

/// The waiting cookie disconnects while the background task finishes, with
/// a failure or a success, and the engine completes the cookie: whatever
/// the order, the machine ends idle (no stale `Persisting`), a successful
/// manifest is handed over to be applied exactly once (to the orphan path
/// or to the completion), and a failed one never.
#[test]
fn disconnect_vs_failure_vs_completion() {
    for ok in [false, true] {
        loom::model(move || {
            let u: Arc<UpdateMachine> = Arc::new(UpdateMachine::new());
            assert_eq!(u.start(1, manifest(5)), Start::Started);
            let u1 = u.clone();
            // The task reports, then (as the engine does) completes the
            // cookie, which collects and takes the manifest.
            let task = thread::spawn(move || match u1.finished(1, ok) {
                Finished::NotifySuccess => usize::from(u1.take(1).is_some()),
                Finished::ApplyOrphan(_) => 1,
                Finished::NotifyFailure | Finished::DropOrphan => 0,
                Finished::Stale => panic!("stale report"),
            });
            let u2 = u.clone();
            let gone = thread::spawn(move || usize::from(u2.disconnect(1).is_some()));
            let applied = task.join().unwrap() + gone.join().unwrap();
            assert_eq!(applied, usize::from(ok), "ok={ok}: applied {applied} times");
            assert_eq!(
                u.in_flight(),
                None,
                "ok={ok}: the machine is left in flight"
            );
            assert_eq!(u.start(2, manifest(6)), Start::Started);
        });
    }
}

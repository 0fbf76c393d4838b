//! The bench driver on a tiny size, so the harness cannot rot: every store
//! runs every workload, and every store returns the same data for the same
//! reads and scans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bench::{Kind, Settings, run_store};

#[test]
fn every_store_runs_every_workload_and_returns_the_same_data() {
    let settings = Settings {
        items: 3_000,
        reads: 2_000,
        sync_items: 20,
        vbuckets: 16,
        vbucket_rounds: 2,
        batch: 500,
        durable_items: 3_000,
        durable_single: 10,
        durable_update_commits: 2,
        settle_secs: 0,
        ..Settings::full()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for kind in Kind::ALL {
        let mut done = Vec::new();
        let r = run_store(
            kind,
            &settings,
            &dir.path().join(kind.name()),
            &[],
            &mut |w| {
                done.push(w.to_owned());
            },
        );
        assert_eq!(r.error, None, "{}", kind.name());
        assert_eq!(done, bench::workloads::WORKLOADS, "{}", kind.name());
        assert!(
            r.measures.iter().all(|m| m.ops > 0 && m.secs > 0.0),
            "{r:?}"
        );
        assert!(r.disk_after_load.unwrap() > 0);
        runs.push(r);
    }
    let first = &runs[0];
    assert_eq!(first.digests.len(), 7, "{:?}", first.digests);
    assert_eq!(first.disk_after.len(), 4, "{:?}", first.disk_after);
    for r in &runs[1..] {
        assert_eq!(
            r.digests, first.digests,
            "{} and {} returned different data",
            r.store, first.store
        );
    }
    // The report renders, with a ratio for every store and a chart per workload.
    let report = bench::Report {
        settings,
        machine: bench::report::machine(),
        when: "test".into(),
        runs,
    };
    let md = bench::report::markdown(&report);
    assert!(md.contains("| fillbatch |") && md.contains("x)"), "{md}");
    let out = tempfile::tempdir().unwrap();
    bench::report::write(&report, out.path()).unwrap();
    for w in bench::workloads::WORKLOADS {
        let svg =
            std::fs::read_to_string(out.path().join("charts").join(format!("{w}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("couchfile"), "{w}");
    }
    let json: bench::Report =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json.runs.len(), 5);
}

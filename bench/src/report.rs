//! The comparison table, the JSON report, and one SVG chart (plotters) per
//! workload.

use crate::stores::Kind;
use crate::workloads::{Measure, ReclaimLatency, Settings, StoreRun, WORKLOADS, key_order};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The sizes used.
    pub settings: Settings,
    /// The machine it ran on.
    pub machine: String,
    /// When it ran (UTC, from the system clock).
    pub when: String,
    /// One run per store.
    pub runs: Vec<StoreRun>,
}

fn measure<'a>(run: &'a StoreRun, workload: &str) -> Option<&'a Measure> {
    run.measures.iter().find(|m| m.workload == workload)
}

fn is_peer(name: &str) -> bool {
    Kind::parse(name).is_some_and(Kind::is_peer)
}

/// The best ops/s of a peer on `workload`.
fn best_peer(r: &Report, workload: &str) -> Option<(String, f64)> {
    r.runs
        .iter()
        .filter(|run| is_peer(&run.store))
        .filter_map(|run| measure(run, workload).map(|m| (run.store.clone(), m.ops_per_sec)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Ops/s of `store` on `workload`.
#[must_use]
pub fn ops(r: &Report, store: &str, workload: &str) -> Option<f64> {
    r.runs
        .iter()
        .find(|run| run.store == store)
        .and_then(|run| measure(run, workload))
        .map(|m| m.ops_per_sec)
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} K", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        Some(b) => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

/// The machine: CPU model, cores, memory.
#[must_use]
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or_else(
            || "? GiB".into(),
            |k| format!("{:.0} GiB", k as f64 / 1048576.0),
        );
    format!("{cpu}, {cores} cores, {mem}")
}

/// The report as markdown: settings, the ops/s table with ratios to the
/// best peer, latencies, sizes, memory, and the targets.
#[must_use]
pub fn markdown(r: &Report) -> String {
    let s = &r.settings;
    let mut out = String::new();
    let _ = writeln!(out, "# Storage benchmark\n");
    let _ = writeln!(out, "- machine: {}", r.machine);
    let _ = writeln!(out, "- run at: {}", r.when);
    let _ = writeln!(
        out,
        "- {} items, {}-byte keys, {}-byte values, {} per commit; {} random reads; fillsync {} commits; vbucket workload over {} vbuckets in {} rounds",
        s.items,
        s.key_size,
        s.value_size,
        s.batch,
        s.reads,
        s.sync_items,
        s.vbuckets,
        s.vbucket_rounds
    );
    let _ = writeln!(
        out,
        "- {} repetition(s) per store, stores taking turns (each in a fresh process, the machine's dirty pages synced first, the order rotated per repetition); every figure is the median over them",
        s.repetitions
    );
    let _ = writeln!(
        out,
        "- durable sequence (one store, every commit synced, random key order): durablebatch {} items, {} per commit; durablesingle {} single-item commits of new keys; warmread {} random gets; durableupdate {} commits of {} random updates of loaded keys",
        s.durable_items, s.batch, s.durable_single, s.reads, s.durable_update_commits, s.batch
    );
    let _ = writeln!(
        out,
        "- durability: fillseq, fillrandom, overwrite and deleterandom commit without a sync; fillbatch, fillsync, vbucket and the durable sequence sync every commit (WAL fsync for the LSM stores, file fsync for the B-trees)"
    );
    let _ = writeln!(
        out,
        "- every store keeps a by-key index and a by-seqno index, updated in one atomic batch per commit (old seqno entries removed on overwrite; deletes kept as tombstones); the peers keep them as two tables or column families\n"
    );
    let stores: Vec<&str> = r.runs.iter().map(|x| x.store.as_str()).collect();
    let _ = writeln!(
        out,
        "## Throughput (ops/s, and the ratio to the best peer)\n"
    );
    let _ = writeln!(
        out,
        "| workload | key order | {} | best peer |",
        stores.join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}---|", "---|".repeat(stores.len()));
    for w in WORKLOADS {
        if !r.runs.iter().any(|run| measure(run, w).is_some()) {
            continue;
        }
        let best = best_peer(r, w);
        let mut row = format!("| {w} | {} |", key_order(w));
        for st in &stores {
            match ops(r, st, w) {
                Some(x) => {
                    let ratio = best
                        .as_ref()
                        .filter(|b| b.1 > 0.0)
                        .map(|b| format!(" ({:.2}x)", x / b.1))
                        .unwrap_or_default();
                    let _ = write!(row, " {}{ratio} |", human(x));
                }
                None => row.push_str(" - |"),
            }
        }
        let _ = write!(row, " {} |", best.map_or("-".into(), |b| b.0));
        let _ = writeln!(out, "{row}");
    }
    let _ = writeln!(
        out,
        "\n## Latency of timed operations (p50 / p99, microseconds)\n"
    );
    let _ = writeln!(out, "| workload | {} |", stores.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(stores.len()));
    for w in WORKLOADS {
        let cells: Vec<String> = r
            .runs
            .iter()
            .map(|run| match measure(run, w) {
                Some(Measure {
                    p50_us: Some(p50),
                    p99_us: Some(p99),
                    ..
                }) => format!("{p50:.1} / {p99:.1}"),
                _ => "-".into(),
            })
            .collect();
        if cells.iter().any(|c| c != "-") {
            let _ = writeln!(out, "| {w} | {} |", cells.join(" | "));
        }
    }
    let _ = writeln!(out, "\n## Size on disk and memory\n");
    let _ = writeln!(
        out,
        "| store | after load | after deletes + compaction | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for run in &r.runs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} MiB |",
            run.store,
            bytes(run.disk_after_load),
            bytes(run.disk_after_compaction),
            run.peak_rss_kib / 1024
        );
    }
    if r.runs.iter().any(|run| !run.disk_after.is_empty()) {
        let _ = writeln!(
            out,
            "\n### Size on disk through the durable sequence (measured as each phase ends, background work still running)\n"
        );
        let _ = writeln!(
            out,
            "| store | after durablebatch | after durablesingle | after durableupdate | then after {} s idle |",
            r.settings.settle_secs
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        for run in &r.runs {
            let b = |p: &str| bytes(run.disk_after.get(p).copied());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                run.store,
                b("durablebatch"),
                b("durablesingle"),
                b("durableupdate"),
                b("settled")
            );
        }
    }
    for run in &r.runs {
        if let Some(rl) = &run.reclaim_p99 {
            let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1} us"));
            let _ = writeln!(
                out,
                "\n- {}: durableupdate commit p99 while space reclamation ran: {} ({} commits); without: {} ({} commits)",
                run.store,
                f(rl.p99_with_us),
                rl.commits_with,
                f(rl.p99_without_us),
                rl.commits_without
            );
        }
    }
    let errors: Vec<&StoreRun> = r.runs.iter().filter(|x| x.error.is_some()).collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n## Errors\n");
        for run in errors {
            let _ = writeln!(
                out,
                "- {}: {}",
                run.store,
                run.error.as_deref().unwrap_or("")
            );
        }
    }
    let t = targets(r);
    if !t.is_empty() {
        let _ = writeln!(out, "\n## Targets\n");
        for line in t {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

/// The project's targets, evaluated on this run.
#[must_use]
pub fn targets(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let ratio = |a: &str, b: &str, w: &str| Some(ops(r, a, w)? / ops(r, b, w)?);
    let verdict = |x: f64, min: f64| if x >= min { "met" } else { "MISSED" };
    for (peer, w) in [
        ("rocksdb", "fillbatch"),
        ("redb", "fillbatch"),
        ("redb", "readrandom"),
    ] {
        if let Some(x) = ratio("couchfile", peer, w) {
            out.push(format!(
                "couchfile {w} >= 1.0x {peer}: {x:.2}x, {}",
                verdict(x, 1.0)
            ));
        }
    }
    // Issue 14: the embedded default against the best peer.
    for w in ["durablebatch", "durableupdate", "durablesingle"] {
        if let (Some(x), Some((peer, p))) = (ops(r, "couchfile", w), best_peer(r, w)) {
            let v = x / p;
            out.push(format!(
                "couchfile {w} >= 1.0x the best peer ({peer}): {v:.2}x, {}",
                verdict(v, 1.0)
            ));
        }
    }
    for w in ["warmread", "readseq"] {
        if let Some(x) = ratio("couchfile", "redb", w) {
            out.push(format!(
                "couchfile {w} >= 1.0x redb: {x:.2}x, {}",
                verdict(x, 1.0)
            ));
        }
    }
    let peers: Vec<&StoreRun> = r.runs.iter().filter(|x| is_peer(&x.store)).collect();
    if let Some(ours) = r.runs.iter().find(|x| x.store == "couchfile") {
        for phase in ["durablebatch", "durableupdate", "settled"] {
            let smallest = peers
                .iter()
                .filter_map(|p| p.disk_after.get(phase).map(|b| (p.store.clone(), *b)))
                .min_by_key(|x| x.1);
            if let (Some(mine), Some((peer, b))) = (ours.disk_after.get(phase), smallest) {
                let v = *mine as f64 / b.max(1) as f64;
                let phase = match phase {
                    "settled" => format!("durableupdate and {} s idle", r.settings.settle_secs),
                    p => p.to_string(),
                };
                out.push(format!(
                    "couchfile bytes on disk after {phase} <= 1.5x the smallest peer ({peer}): {v:.2}x, {}",
                    if v <= 1.5 { "met" } else { "MISSED" }
                ));
            }
        }
        if let Some(p) = peers
            .iter()
            .filter(|p| p.peak_rss_kib > 0)
            .min_by_key(|p| p.peak_rss_kib)
        {
            let v = ours.peak_rss_kib as f64 / p.peak_rss_kib as f64;
            out.push(format!(
                "couchfile peak RSS <= 1.5x the smallest peer ({}): {v:.2}x, {}",
                p.store,
                if v <= 1.5 { "met" } else { "MISSED" }
            ));
        }
        if let Some(ReclaimLatency {
            p99_with_us: Some(w),
            p99_without_us: Some(wo),
            ..
        }) = ours.reclaim_p99
        {
            let v = w / wo.max(f64::MIN_POSITIVE);
            out.push(format!(
                "couchfile durableupdate p99 with reclamation <= 2x without: {v:.2}x, {}",
                if v <= 2.0 { "met" } else { "MISSED" }
            ));
        }
    }
    // Issue 15: kvstore-rocks against raw RocksDB with the same options.
    for (w, min) in [
        ("durablebatch", 0.9),
        ("durableupdate", 0.9),
        ("durablesingle", 0.9),
        ("warmread", 0.95),
    ] {
        if let Some(x) = ratio("kvstore-rocks", "rocksdb", w) {
            out.push(format!(
                "kvstore-rocks {w} >= {min}x raw rocksdb: {x:.2}x, {}",
                verdict(x, min)
            ));
        }
    }
    let disk = |store: &str| {
        r.runs
            .iter()
            .find(|x| x.store == store)
            .and_then(|x| x.disk_after.get("durableupdate").copied())
    };
    if let (Some(a), Some(b)) = (disk("kvstore-rocks"), disk("rocksdb")) {
        let v = a as f64 / b.max(1) as f64;
        out.push(format!(
            "kvstore-rocks bytes on disk after durableupdate <= 1.2x raw rocksdb: {v:.2}x, {}",
            if v <= 1.2 { "met" } else { "MISSED" }
        ));
    }
    out
}

/// A horizontal bar chart of one workload's ops/s per store, as SVG drawn
/// with plotters: our backends in blue, the peers in grey, each bar labelled
/// with its figure.
///
/// # Errors
/// Whatever plotters reports while drawing (it draws into memory, so in
/// practice nothing).
pub fn chart(r: &Report, workload: &str) -> Result<String, String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let bars: Vec<(String, f64)> = r
        .runs
        .iter()
        .filter_map(|run| measure(run, workload).map(|m| (run.store.clone(), m.ops_per_sec)))
        .collect();
    let max = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max).max(1.0);
    let height = 90 + 40 * u32::try_from(bars.len()).unwrap_or(8);
    let ours = RGBColor(0x2f, 0x6f, 0xb5);
    let peer = RGBColor(0x9a, 0xa7, 0xb8);
    let e = |e: &dyn std::fmt::Display| format!("chart {workload}: {e}");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        // Rows top to bottom in report order: row i sits at n-1-i.
        let n = bars.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{workload}: operations per second (higher is better)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(120)
            .build_cartesian_2d(0.0..max * 1.18, (0..n.saturating_sub(1)).into_segmented())
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n.max(1))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => n
                    .checked_sub(i + 1)
                    .and_then(|row| bars.get(row))
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|x| human(*x))
            .x_desc("ops/s")
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(row, (store, x))| {
                let i = n - 1 - row;
                let color = if is_peer(store) { peer } else { ours };
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*x, SegmentValue::Exact(i + 1)),
                    ],
                    color.filled(),
                );
                bar.set_margin(6, 6, 0, 0);
                bar
            }))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(row, (_, x))| {
                let i = n - 1 - row;
                Text::new(
                    human(*x),
                    (*x + max * 0.01, SegmentValue::CenterOf(i)),
                    TextStyle::from(("sans-serif", 13).into_font())
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    Ok(svg)
}

/// Writes `report.md`, `report.json` and `charts/<workload>.svg` into `dir`.
pub fn write(r: &Report, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("charts"))?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(r).map_err(std::io::Error::other)?,
    )?;
    for w in WORKLOADS {
        if r.runs.iter().any(|run| measure(run, w).is_some()) {
            let svg = chart(r, w).map_err(std::io::Error::other)?;
            std::fs::write(dir.join("charts").join(format!("{w}.svg")), svg)?;
        }
    }
    Ok(())
}

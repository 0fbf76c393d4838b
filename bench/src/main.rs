//! The benchmark driver. Usually run as `cargo xtask bench [--quick]`.

use bench::report::{self, Report};
use bench::{Kind, Settings, StoreRun, run_store};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Compare the storage backends with their peers"
)]
struct Cli {
    /// About one minute instead of about ten.
    #[arg(long)]
    quick: bool,
    /// Only these workloads (comma-separated db_bench names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these stores: couchfile, kvstore-rocks, rocksdb, redb, fjall.
    #[arg(long, value_delimiter = ',')]
    stores: Vec<String>,
    /// Items to load.
    #[arg(long)]
    items: Option<u64>,
    /// Random reads.
    #[arg(long)]
    reads: Option<u64>,
    /// Key size in bytes.
    #[arg(long)]
    key_size: Option<usize>,
    /// Value size in bytes.
    #[arg(long)]
    value_size: Option<usize>,
    /// Vbuckets in the vbucket workload.
    #[arg(long)]
    vbuckets: Option<u16>,
    /// Repetitions per store (stores take turns; medians are reported).
    #[arg(long)]
    repetitions: Option<u32>,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
    /// Where the stores keep their files (emptied per store).
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    /// Internal: run one store and print its result as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Internal: the settings, as JSON.
    #[arg(long, hide = true)]
    settings: Option<String>,
}

/// Flushes every dirty page of the machine to disk, so a store does not
/// start while the previous one's writes are still being written back. A
/// missing `sync` command only makes the figures noisier.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Some(store) = &cli.child {
        let kind = Kind::parse(store).ok_or_else(|| format!("unknown store {store}"))?;
        let settings: Settings = serde_json::from_str(cli.settings.as_deref().unwrap_or("{}"))
            .map_err(|e| format!("settings: {e}"))?;
        let r = run_store(kind, &settings, &cli.data, &cli.only, &mut |w| {
            println!("PROGRESS {w}");
        });
        println!(
            "RESULT {}",
            serde_json::to_string(&r).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut settings = if cli.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(v) = cli.items {
        settings.items = v.max(1);
    }
    if let Some(v) = cli.reads {
        settings.reads = v;
    }
    if let Some(v) = cli.key_size {
        settings.key_size = v.clamp(8, 250);
    }
    if let Some(v) = cli.value_size {
        settings.value_size = v;
    }
    if let Some(v) = cli.vbuckets {
        settings.vbuckets = v.max(1);
    }
    if let Some(v) = cli.repetitions {
        settings.repetitions = v.max(1);
    }
    let kinds: Vec<Kind> = if cli.stores.is_empty() {
        Kind::ALL.to_vec()
    } else {
        cli.stores
            .iter()
            .map(|s| Kind::parse(s).ok_or_else(|| format!("unknown store {s:?}")))
            .collect::<Result<_, _>>()?
    };
    for w in &cli.only {
        if !bench::workloads::WORKLOADS.contains(&w.as_str()) {
            return Err(format!("unknown workload {w:?}"));
        }
    }
    let per_store = if cli.only.is_empty() {
        bench::workloads::WORKLOADS.len()
    } else {
        cli.only.len()
    };
    let reps = settings.repetitions.max(1) as usize;
    let bar = ProgressBar::new((kinds.len() * per_store * reps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .map_err(|e| e.to_string())?,
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let settings_json = serde_json::to_string(&settings).map_err(|e| e.to_string())?;
    let mut per_store: Vec<Vec<StoreRun>> = vec![Vec::new(); kinds.len()];
    for rep in 0..reps {
        // Each repetition starts one store later, so no store always
        // follows the same neighbour (whose writeback and background work
        // could otherwise slow it in every run).
        for turn in 0..kinds.len() {
            let ix = (turn + rep) % kinds.len();
            let kind = &kinds[ix];
            let data = cli.data.join(kind.name());
            let _ = std::fs::remove_dir_all(&data);
            settle();
            bar.set_message(format!(
                "{} (run {}/{reps}): starting",
                kind.name(),
                rep + 1
            ));
            let run = run_child(
                &exe,
                *kind,
                &settings_json,
                &data,
                &cli.only,
                &bar,
                rep + 1,
                reps,
            )?;
            if let Some(e) = &run.error {
                bar.println(format!("{}: {e}", kind.name()));
            }
            per_store[ix].push(run);
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    let runs: Vec<StoreRun> = per_store
        .into_iter()
        .map(bench::workloads::merge_runs)
        .collect();
    bar.finish_with_message("done");
    let report = Report {
        settings,
        machine: report::machine(),
        when: humantime_now(),
        runs,
    };
    report::write(&report, &cli.out).map_err(|e| format!("writing the report: {e}"))?;
    println!("{}", report::markdown(&report));
    println!(
        "report: {}/report.md, report.json, charts/*.svg",
        cli.out.display()
    );
    Ok(if report.runs.iter().any(|r| r.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs one store's sequence in a child process and collects its result.
#[allow(clippy::too_many_arguments)]
fn run_child(
    exe: &std::path::Path,
    kind: Kind,
    settings_json: &str,
    data: &std::path::Path,
    only: &[String],
    bar: &ProgressBar,
    rep: usize,
    reps: usize,
) -> Result<StoreRun, String> {
    let mut cmd = Command::new(exe);
    cmd.arg("--child")
        .arg(kind.name())
        .arg("--settings")
        .arg(settings_json)
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped());
    if !only.is_empty() {
        cmd.arg("--only").arg(only.join(","));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", kind.name()))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut result: Option<StoreRun> = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(w) = line.strip_prefix("PROGRESS ") {
            bar.inc(1);
            bar.set_message(format!("{} (run {rep}/{reps}): {w} done", kind.name()));
        } else if let Some(j) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str(j).map_err(|e| e.to_string())?);
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok(result.unwrap_or_else(|| StoreRun {
        store: kind.name().into(),
        error: Some(format!(
            "the child process ended without a result ({status})"
        )),
        ..StoreRun::default()
    }))
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS`.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

//! `soak`: the engine under a mixed load, SIGKILLed at random moments,
//! warmed up and checked after every kill (`cargo xtask soak`).
//!
//! The parent starts a child process (this binary, `child`), which opens
//! the engine on the data directory and runs several threads of sets,
//! deletes, durable writes, reads, compactions, vbucket delete and
//! re-create, and collection drops and resurrections (see [`child`]). The
//! child announces and acknowledges every operation on stdout (see
//! [`proto`]); its own reads are checked at once against each worker's
//! model. After a random number of acknowledgements, or just as a vbucket
//! delete, create or manifest change starts, the parent kills it with
//! SIGKILL, warms up an engine on the same directory and checks every key
//! of every vbucket against what was acknowledged (see [`model`]), then
//! starts the next child.
//!
//! It prints a progress bar and, at the end, a summary: operations, kills,
//! checks, violations and the child's peak RSS. It exits non-zero on any
//! violation.

mod child;
mod model;
mod proto;

use clap::{Parser, Subcommand, ValueEnum};
use engine::{Backend, Engine, EngineConfig};
use indicatif::{ProgressBar, ProgressStyle};
use proto::{Line, Op};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "The engine under a mixed load with SIGKILLs, checked against a model")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The couchfile backend (the default).
    Couchfile,
    /// RocksDB (needs the `rocks` feature).
    Rocksdb,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs the soak.
    Run {
        /// How long, in minutes.
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// The backend.
        #[arg(long, value_enum, default_value_t = BackendArg::Couchfile)]
        backend: BackendArg,
        /// Worker threads in the child.
        #[arg(long, default_value_t = 4)]
        threads: u16,
        /// The random seed (kill points and the children's operations).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The data directory (a temporary one when not given; kept when
        /// given).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The child process (started by `run`).
    #[command(hide = true)]
    Child {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        backend: BackendArg,
        #[arg(long)]
        start: u64,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        threads: u16,
    },
}

fn engine_config(dir: &Path, backend: BackendArg) -> Result<EngineConfig, String> {
    let mut cfg = EngineConfig::new(dir);
    cfg.vbuckets = usize::from(model::VBS);
    cfg.backend = match backend {
        BackendArg::Couchfile => Backend::Couchfile(engine::CouchConfig::default()),
        #[cfg(feature = "rocks")]
        BackendArg::Rocksdb => Backend::Rocks(engine::RocksConfig::default()),
        #[cfg(not(feature = "rocks"))]
        BackendArg::Rocksdb => {
            return Err(
                "this soak was built without the `rocks` feature; run `cargo xtask soak --backend rocksdb`, which builds with it"
                    .into(),
            );
        }
    };
    Ok(cfg)
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Child {
            dir,
            backend,
            start,
            seed,
            threads,
        } => {
            let engine = match engine_config(&dir, backend) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("soak: {e}");
                    return ExitCode::FAILURE;
                }
            };
            child::run(child::ChildConfig {
                engine,
                start,
                seed,
                workers: threads,
            })
        }
        Cmd::Run {
            minutes,
            backend,
            threads,
            seed,
            dir,
        } => match soak(minutes, backend, threads, seed, dir) {
            Ok(s) if s.violations == 0 => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("soak: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// What a soak did.
#[derive(Debug, Default)]
struct Summary {
    operations: u64,
    reads: u64,
    kills: u64,
    aimed: u64,
    warmups: u64,
    checks: u64,
    violations: u64,
    compactions: u64,
    peak_rss_kb: u64,
}

fn soak(
    minutes: f64,
    backend: BackendArg,
    threads: u16,
    seed: u64,
    dir: Option<PathBuf>,
) -> Result<Summary, String> {
    engine_config(Path::new("."), backend)?;
    let temp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            d
        }
        None => {
            temp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
            temp.path().to_path_buf()
        }
    };
    let data = dir.join("data");
    let stderr_log = dir.join("child-stderr.log");
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let total = Duration::from_secs_f64(minutes.max(0.0) * 60.0);
    let started = Instant::now();
    let deadline = started + total;
    let pb = ProgressBar::new(total.as_secs().max(1));
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = model::Model::new();
    let mut sum = Summary::default();
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let log = std::fs::File::create(&stderr_log)
            .map_err(|e| format!("{}: {e}", stderr_log.display()))?;
        let mut child = Command::new(&exe)
            .arg("child")
            .arg("--dir")
            .arg(&data)
            .arg("--backend")
            .arg(match backend {
                BackendArg::Couchfile => "couchfile",
                BackendArg::Rocksdb => "rocksdb",
            })
            .arg("--start")
            .arg((model.last_op + 1).to_string())
            .arg("--seed")
            .arg((seed ^ round.wrapping_mul(0x9e37_79b9)).to_string())
            .arg("--threads")
            .arg(threads.to_string())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting the child: {e}"))?;
        let stdout = child.stdout.take().ok_or("the child has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Most children die after some acknowledgements; some as soon as a
        // vbucket delete, create or manifest change starts.
        let aim = rng.random_bool(0.3);
        let want = match rng.random_range(0..10) {
            0 => rng.random_range(1..20),
            1..=6 => rng.random_range(20..2000),
            _ => rng.random_range(2000..20_000),
        };
        let mut acks = 0u64;
        let mut stat = (0u64, 0u64, 0u64);
        let mut died = true;
        for l in lines.by_ref() {
            let Ok(l) = l else { break };
            let Some(l) = Line::parse(&l) else { continue };
            acks += u64::from(matches!(l, Line::Ack(..)));
            let hit = aim
                && matches!(
                    l,
                    Line::Try(
                        _,
                        Op::DropVb { .. } | Op::CreateVb { .. } | Op::Manifest { .. }
                    )
                );
            take(&l, &mut sum, &mut model, &pb, &mut stat, round);
            if hit {
                // A random point inside the operation (a crash point, not
                // a race to line up).
                let until = Instant::now() + Duration::from_micros(rng.random_range(0..3000));
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                sum.aimed += 1;
                died = false;
                break;
            }
            if acks >= want || Instant::now() >= deadline {
                died = false;
                break;
            }
            pb.set_position(started.elapsed().as_secs().min(total.as_secs()));
        }
        let _ = child.kill();
        for l in lines.map_while(Result::ok) {
            if let Some(l) = Line::parse(&l) {
                take(&l, &mut sum, &mut model, &pb, &mut stat, round);
            }
        }
        let status = child
            .wait()
            .map_err(|e| format!("waiting for the child: {e}"))?;
        sum.kills += 1;
        sum.peak_rss_kb = sum.peak_rss_kb.max(stat.0);
        sum.reads += stat.1;
        sum.checks += stat.2;
        if died {
            let err = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            let tail: String = err
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            report(
                &mut sum,
                &pb,
                format!("round {round}: the child died by itself ({status}):\n{tail}"),
            );
            break;
        }
        let cfg = engine_config(&data, backend)?;
        match Engine::open(cfg) {
            Ok(e) => {
                sum.warmups += 1;
                let (n, bad) = model.check(&e);
                sum.checks += n;
                for b in bad {
                    report(&mut sum, &pb, format!("round {round} (after warmup): {b}"));
                }
                if let Err(err) = e.shutdown() {
                    report(
                        &mut sum,
                        &pb,
                        format!("round {round}: shutdown failed: {err}"),
                    );
                }
            }
            Err(err) => {
                report(
                    &mut sum,
                    &pb,
                    format!("round {round}: warmup failed: {err}"),
                );
                break;
            }
        }
        pb.set_position(started.elapsed().as_secs().min(total.as_secs()));
        pb.set_message(format!(
            "{} ops, {} kills, {} checks, {} violations",
            sum.operations + sum.reads,
            sum.kills,
            sum.checks,
            sum.violations
        ));
    }
    pb.finish_and_clear();
    println!(
        "soak summary ({:?} backend, {threads} worker threads, {:.1} min):",
        backend,
        started.elapsed().as_secs_f64() / 60.0
    );
    println!(
        "  operations: {} ({} acknowledged writes, deletes, vbucket and manifest changes; {} reads)",
        sum.operations + sum.reads,
        sum.operations,
        sum.reads
    );
    println!(
        "  kills: {} (SIGKILL; {} aimed at a vbucket delete, create or manifest change), warmups checked: {}",
        sum.kills, sum.aimed, sum.warmups
    );
    println!("  compactions: {}", sum.compactions);
    println!(
        "  checks: {} (reads checked in the child, and every key after every warmup)",
        sum.checks
    );
    println!("  violations: {}", sum.violations);
    println!(
        "  peak RSS of the child: {:.1} MiB",
        sum.peak_rss_kb as f64 / 1024.0
    );
    Ok(sum)
}

/// Counts a violation and shows the first few.
fn report(sum: &mut Summary, pb: &ProgressBar, what: String) {
    sum.violations += 1;
    if sum.violations <= 20 {
        pb.suspend(|| eprintln!("VIOLATION: {what}"));
    }
}

/// Takes one line of the child's output.
fn take(
    l: &Line,
    sum: &mut Summary,
    model: &mut model::Model,
    pb: &ProgressBar,
    stat: &mut (u64, u64, u64),
    round: u64,
) {
    match l {
        Line::Ack(..) => sum.operations += 1,
        Line::Compacted => sum.compactions += 1,
        Line::Stat {
            rss_kb,
            reads,
            checks,
        } => *stat = (*rss_kb, *reads, *checks),
        Line::Violation(v) => report(sum, pb, format!("round {round} (child): {v}")),
        _ => {}
    }
    model.line(l);
}

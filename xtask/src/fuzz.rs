//! `cargo xtask fuzz [--time S] [--target NAME]...` and `cargo xtask soak`.
//!
//! Fuzzing uses cargo-fuzz, which needs a nightly toolchain: the command
//! looks for one with `rustup toolchain list`, fails with what to do when
//! there is none, and installs cargo-fuzz (`cargo +nightly install
//! cargo-fuzz`) when it is missing. Each target runs S seconds (default 30)
//! on a scratch corpus under `target/fuzz/corpus/<target>/`, seeded from
//! `fuzz/seeds/<target>/` (the scratch corpus grows across runs; nothing is
//! written into the repository). Crash inputs go to
//! `target/fuzz/artifacts/<target>/`. The targets are built without a
//! sanitizer (the code is safe Rust) and with debug assertions, so overflow
//! checks and `debug_assert!`s count as crashes; `--sanitizer address`
//! builds with ASan.

use super::{Result, root, run, target_dir};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

/// What one libFuzzer run reported.
#[derive(Debug, Default, Clone)]
struct FuzzStats {
    execs: u64,
    execs_per_sec: u64,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<String>,
    peak_rss_mb: Option<u64>,
    crashes: Vec<String>,
}

/// The number after `key` in `line` (`cov: 123` style).
fn field(line: &str, key: &str) -> Option<String> {
    let at = line.find(key)? + key.len();
    line[at..].split_whitespace().next().map(str::to_owned)
}

/// Reads libFuzzer's output: its last status line (`cov:`, `ft:`,
/// `corp:`), the final stats, and every test unit it wrote.
fn parse_libfuzzer(out: &str) -> FuzzStats {
    let mut s = FuzzStats::default();
    for line in out.lines() {
        if line.starts_with('#') && line.contains(" cov: ") {
            s.cov = field(line, " cov: ").and_then(|v| v.parse().ok());
            s.ft = field(line, " ft: ").and_then(|v| v.parse().ok());
            s.corpus = field(line, " corp: ");
            if let Some(n) = line[1..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
            {
                s.execs = s.execs.max(n);
            }
        }
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = v.trim().parse().unwrap_or(s.execs);
        }
        if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.execs_per_sec = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("stat::peak_rss_mb:") {
            s.peak_rss_mb = v.trim().parse().ok();
        }
        if let Some(at) = line.find("Test unit written to ") {
            s.crashes
                .push(line[at + "Test unit written to ".len()..].trim().to_owned());
        }
    }
    s
}

/// The targets: the `[[bin]]` names of `fuzz/Cargo.toml`.
fn fuzz_targets() -> Result<Vec<String>> {
    let manifest = root().join("fuzz/Cargo.toml");
    let text = fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let mut in_bin = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(v) = line.strip_prefix("name = ") {
            out.push(v.trim_matches('"').to_owned());
        }
    }
    Ok(out)
}

/// A `cargo +nightly ...` command, free of the stable toolchain that runs
/// this xtask (cargo sets `CARGO` and rustup `RUSTUP_TOOLCHAIN` for it).
fn nightly_cargo(args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .args(args)
        .current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTC_WRAPPER");
    c
}

fn has_nightly() -> Result<bool> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| {
            format!(
                "`rustup toolchain list` could not run ({e}): cargo-fuzz needs rustup and a nightly toolchain"
            )
        })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("nightly")))
}

/// Makes sure nightly and cargo-fuzz are there, installing cargo-fuzz
/// when it is missing.
pub(crate) fn ensure_cargo_fuzz() -> Result<()> {
    if !has_nightly()? {
        return Err(
            "no nightly toolchain: cargo-fuzz needs one (`rustup toolchain install nightly`); \
             the fuzz targets' seeds and saved crashes still run on stable in \
             `cargo test -p fuzz-targets`"
                .into(),
        );
    }
    let present = nightly_cargo(&["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        eprintln!(
            "xtask: cargo-fuzz is missing; installing it with `cargo +nightly install cargo-fuzz` (a few minutes, once)"
        );
        run(
            "cargo +nightly install cargo-fuzz",
            nightly_cargo(&["install", "--locked", "cargo-fuzz"]),
        )?;
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<usize> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut n = 0;
    let Ok(rd) = fs::read_dir(from) else {
        return Ok(0);
    };
    for entry in rd.flatten() {
        let p = entry.path();
        if p.is_file() {
            fs::copy(&p, to.join(entry.file_name()))
                .map_err(|e| format!("copying {}: {e}", p.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `cargo xtask fuzz`.
pub(crate) fn fuzz(args: &[String]) -> Result<()> {
    let mut secs: u64 = 30;
    let mut only: Vec<String> = Vec::new();
    let mut sanitizer = "none".to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--time" => {
                secs = value("--time")?
                    .parse()
                    .map_err(|e| format!("--time: {e}"))?;
            }
            "--target" => only.extend(value("--target")?.split(',').map(str::to_owned)),
            "--sanitizer" => sanitizer = value("--sanitizer")?,
            other => {
                return Err(format!(
                    "fuzz: unknown argument {other:?} (usage: cargo xtask fuzz [--time SECONDS] [--target NAME[,NAME]] [--sanitizer none|address])"
                ));
            }
        }
    }
    let all = fuzz_targets()?;
    for t in &only {
        if !all.contains(t) {
            return Err(format!(
                "fuzz: no target {t:?}; the targets are {}",
                all.join(", ")
            ));
        }
    }
    let targets: Vec<String> = if only.is_empty() { all } else { only };
    ensure_cargo_fuzz()?;
    let base = target_dir().join("fuzz");
    let build_dir = base.join("build").display().to_string();
    let fuzz_dir = root().join("fuzz").display().to_string();
    let common = [
        "--fuzz-dir",
        &fuzz_dir,
        "--target-dir",
        &build_dir,
        "--sanitizer",
        &sanitizer,
        "--debug-assertions",
    ];
    let mut build = vec!["fuzz", "build"];
    build.extend(common);
    run("cargo +nightly fuzz build", nightly_cargo(&build))?;
    let mut results = Vec::new();
    for t in &targets {
        let corpus = base.join("corpus").join(t);
        let seeds = copy_dir(&root().join("fuzz/seeds").join(t), &corpus)?;
        let artifacts = base.join("artifacts").join(t);
        fs::create_dir_all(&artifacts).map_err(|e| format!("{}: {e}", artifacts.display()))?;
        let log = base.join("logs").join(format!("{t}.log"));
        fs::create_dir_all(base.join("logs")).map_err(|e| e.to_string())?;
        let corpus_s = corpus.display().to_string();
        let mut args: Vec<String> = vec!["fuzz".into(), "run".into(), t.clone(), corpus_s];
        args.extend(common.iter().map(|s| (*s).to_owned()));
        args.extend([
            "--".into(),
            format!("-max_total_time={secs}"),
            "-print_final_stats=1".into(),
            format!("-artifact_prefix={}/", artifacts.display()),
            "-timeout=20".into(),
            "-rss_limit_mb=3072".into(),
            "-max_len=4096".into(),
        ]);
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        eprintln!(
            "xtask: fuzzing {t} for {secs}s ({seeds} seeds; corpus {}; log {})",
            corpus.display(),
            log.display()
        );
        let out = nightly_cargo(&arg_refs)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cargo +nightly fuzz run {t}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(&log, &text).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut stats = parse_libfuzzer(&text);
        if !out.status.success() && stats.crashes.is_empty() {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            stats.crashes.push(format!(
                "(the run failed with {} and wrote no input; see {})\n{}",
                out.status,
                log.display(),
                tail.join("\n")
            ));
        }
        if !stats.crashes.is_empty() {
            // The panic message, for the summary.
            if let Some(p) = text.lines().find(|l| l.contains("panicked at")) {
                eprintln!("xtask: {t}: {p}");
            }
        }
        results.push((t.clone(), stats));
    }
    eprintln!();
    eprintln!(
        "{:<18} {:>12} {:>9} {:>8} {:>8} {:>14} {:>8}",
        "target", "execs", "execs/s", "cov", "ft", "corpus", "crashes"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for (t, s) in &results {
        eprintln!(
            "{t:<18} {:>12} {:>9} {:>8} {:>8} {:>14} {:>8}",
            s.execs,
            s.execs_per_sec,
            show(s.cov),
            show(s.ft),
            s.corpus.clone().unwrap_or_else(|| "-".into()),
            s.crashes.len()
        );
    }
    let crashed: Vec<String> = results
        .iter()
        .flat_map(|(t, s)| s.crashes.iter().map(move |c| format!("{t}: {c}")))
        .collect();
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found {} crash(es); reproduce with `cargo +nightly fuzz run --fuzz-dir fuzz <target> <input>`, and keep the input as fuzz/regressions/<target>/<name> once fixed:\n{}",
            crashed.len(),
            crashed.join("\n")
        ))
    }
}

/// `cargo xtask soak --minutes N [--backend couchfile|rocksdb] [ARGS]`.
pub(crate) fn soak(args: &[String]) -> Result<()> {
    let rocks = args
        .windows(2)
        .any(|w| w[0] == "--backend" && (w[1] == "rocksdb" || w[1] == "rocks"))
        || args.iter().any(|a| a == "--backend=rocksdb");
    let mut cmd: Vec<&str> = vec!["run", "-p", "soak"];
    if rocks {
        super::ensure_libclang()?;
        cmd.extend(["--features", "rocks"]);
    }
    cmd.extend(["--", "run"]);
    cmd.extend(args.iter().map(String::as_str));
    run("soak", super::cargo_cmd(&cmd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_stats() {
        let out = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #81234\tDONE   cov: 1234 ft: 5678 corp: 90/12Kb lim: 4096 exec/s: 2707 rss: 45Mb\n\
                   Done 81234 runs in 31 second(s)\n\
                   stat::number_of_executed_units: 81234\nstat::average_exec_per_sec:     2707\n\
                   stat::peak_rss_mb:              45\n";
        let s = parse_libfuzzer(out);
        assert_eq!(s.execs, 81234);
        assert_eq!((s.cov, s.ft), (Some(1234), Some(5678)));
        assert_eq!(s.corpus.as_deref(), Some("90/12Kb"));
        assert_eq!(s.execs_per_sec, 2707);
        assert!(s.crashes.is_empty());
        let crash = "==9== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/t/a/'; Test unit written to /t/a/crash-abc\n";
        assert_eq!(parse_libfuzzer(crash).crashes, ["/t/a/crash-abc"]);
    }
}

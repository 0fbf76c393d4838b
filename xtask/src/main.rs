//! Project automation, run as `cargo xtask <command>`.
//!
//! - `ci`: formatting, clippy, every test, doctests, the loom models and
//!   `cargo deny check`. Every step runs; the command fails if any failed.
//! - `loom [--deep]`: the loom models, built with `--cfg loom` in their own
//!   target directory so the flag never forces a rebuild of the normal one.
//! - `deny`: the supply-chain check alone (offline against
//!   `../shared/advisory-db.tar.gz` when that file exists).
//! - `bench [args]`: the backend comparison (see the bench crate);
//!   `bench server [--secs N] [--conns N]`: kvserver beside memcached under
//!   memaslap (see [`bench_server`]).
//! - `setup`: what kvserver's tests need beyond cargo: `memcached` and
//!   `libmemcached-tools` (apt, as root) and the Python clients (PyPI
//!   `couchbase` 4.x, `pymemcache`, `python-binary-memcached`) in a venv
//!   under `~/.cache/vbstore/venv`, which outlives the clone. The tests find
//!   it through `VBSTORE_VENV`. `ci` runs it first.
//! - `fuzz [--time S] [--target NAME]`: every cargo-fuzz target (see
//!   `fuzz/README.md`) for S seconds (default 30), with executions,
//!   coverage and crashes per target; non-zero on a crash.
//! - `soak [--minutes N] [--backend couchfile|rocksdb]`: the engine under
//!   a mixed load with SIGKILLs, checked against a model (the `soak`
//!   crate); non-zero on a violation.
//!
//! It keeps no dependencies: it only runs programs.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime};

/// The directory name cargo-deny expects for the default advisory database.
const ADVISORY_DB_DIR: &str = "advisory-db-3157b0e258782691";

type Result<T> = std::result::Result<T, String>;

mod fuzz;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{}", usage());
        return ExitCode::FAILURE;
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "ci" => ci(rest),
        "loom" => loom(rest.iter().any(|a| a == "--deep")),
        "deny" => deny(),
        "bench" if rest.first().is_some_and(|a| a == "server") => bench_server(&rest[1..]),
        "bench" => bench(rest),
        "setup" => setup().map(|_| ()),
        "fuzz" => fuzz::fuzz(rest),
        "soak" => fuzz::soak(rest),
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> &'static str {
    "usage: cargo xtask <ci [--fail-fast] | setup | loom [--deep] | deny | bench [--quick | --criterion | ARGS...] | bench server [--secs N] [--conns N] [--runs N] | fuzz [--time S] [--target NAME] | soak [--minutes N] [--backend couchfile|rocksdb]>"
}

/// The workspace root: the parent of this crate's manifest directory.
fn root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(cargo());
    c.args(args).current_dir(root());
    c
}

fn run(what: &str, mut cmd: Command) -> Result<()> {
    eprintln!("xtask: running {what}: {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn has_program(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when the workspace has a crate that needs RocksDB's C++ build.
fn workspace_has_rocks() -> bool {
    root().join("kvstore-rocks/Cargo.toml").exists()
}

fn libclang_present() -> bool {
    if env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    let mut dirs: Vec<PathBuf> = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Ok(rd) = fs::read_dir("/usr/lib") {
        dirs.extend(
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("llvm-"))
                .map(|e| e.path().join("lib")),
        );
    }
    dirs.iter().any(|d| {
        fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("libclang") && n.contains(".so") && !n.starts_with("libclang-cpp")
            })
        })
    })
}

/// RocksDB's bindings are generated by bindgen, which needs libclang.
fn ensure_libclang() -> Result<()> {
    if libclang_present() {
        return Ok(());
    }
    eprintln!("xtask: libclang is missing (RocksDB's bindings need it); installing libclang-dev");
    if !has_program("apt-get", &["--version"]) {
        return Err(
            "libclang is missing and apt-get is not available: install libclang \
                    (Debian: libclang-dev) or set LIBCLANG_PATH"
                .into(),
        );
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run("apt-get update", update).map_err(|e| {
        format!("{e}: installing libclang needs root (or install libclang-dev yourself)")
    })?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "libclang-dev", "clang"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    run("apt-get install libclang-dev", install).map_err(|e| {
        format!("{e}: installing libclang needs root (or install libclang-dev yourself)")
    })
}

fn ci(args: &[String]) -> Result<()> {
    let fail_fast = args.iter().any(|a| a == "--fail-fast");
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if !has_program(&cargo().to_string_lossy(), &[probe, "--version"]) {
            let mut c = Command::new("rustup");
            c.args(["component", "add", component]);
            run(&format!("rustup component add {component}"), c)?;
        }
    }
    let rocks = workspace_has_rocks();
    if rocks {
        ensure_libclang()?;
    }
    type Step = (&'static str, Box<dyn Fn() -> Result<()>>);
    let steps: Vec<Step> = vec![
        // Before the tests: kvserver's tests run memcached, the
        // libmemcached tools and the Python clients.
        ("setup", Box::new(|| setup().map(|_| ()))),
        (
            "fmt",
            Box::new(|| run("cargo fmt", cargo_cmd(&["fmt", "--all", "--", "--check"]))),
        ),
        (
            "clippy",
            Box::new(|| {
                run(
                    "cargo clippy",
                    cargo_cmd(&[
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--all-features",
                        "--",
                        "-D",
                        "warnings",
                    ]),
                )
            }),
        ),
        ("tests", Box::new(tests)),
        (
            "doctests",
            Box::new(|| {
                run(
                    "doctests",
                    cargo_cmd(&["test", "--workspace", "--all-features", "--doc"]),
                )
            }),
        ),
        ("loom", Box::new(|| loom(false))),
        ("deny", Box::new(deny)),
    ];
    let mut failed = Vec::new();
    let mut times = Vec::new();
    for (name, step) in &steps {
        let t = Instant::now();
        let r = step();
        let secs = t.elapsed().as_secs_f64();
        match &r {
            Ok(()) => eprintln!("xtask: step {name} passed in {secs:.1}s"),
            Err(e) => eprintln!("xtask: step {name} FAILED in {secs:.1}s: {e}"),
        }
        times.push((*name, secs, r.is_ok()));
        if r.is_err() {
            failed.push(*name);
            if fail_fast {
                break;
            }
        }
    }
    eprintln!("xtask: ci summary");
    for (name, secs, ok) in &times {
        eprintln!(
            "  {name:<10} {:<6} {secs:>7.1}s",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("ci failed in: {}", failed.join(", ")))
    }
}

fn tests() -> Result<()> {
    let mut cmd = if has_program(&cargo().to_string_lossy(), &["nextest", "--version"]) {
        cargo_cmd(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ])
    } else {
        cargo_cmd(&[
            "test",
            "--workspace",
            "--all-features",
            "--all-targets",
            "--no-fail-fast",
        ])
    };
    cmd.env("VBSTORE_VENV", venv_dir());
    run("tests", cmd)
}

/// Where the Python clients live: outside the clone, so a fresh clone on
/// the same machine reuses them.
fn venv_dir() -> PathBuf {
    if let Some(v) = env::var_os("VBSTORE_VENV") {
        return PathBuf::from(v);
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/vbstore/venv")
}

/// The Debian packages kvserver's tests and the server bench use, with a
/// program each provides.
const APT_PACKAGES: &[(&str, &str)] =
    &[("memcached", "memcached"), ("libmemcached-tools", "memccp")];

/// The Python clients kvserver's tests use (PyPI names), and the modules
/// that show they are installed.
const PIP_PACKAGES: &[&str] = &["couchbase>=4,<5", "pymemcache", "python-binary-memcached"];
const PY_MODULES: &str = "import couchbase, pymemcache, bmemcached";

fn on_path(program: &str) -> bool {
    env::var_os("PATH").is_some_and(|p| env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !has_program("apt-get", &["--version"]) {
        return Err(format!(
            "{} missing and apt-get is not available: install them (Debian packages {})",
            packages.join(", "),
            packages.join(" ")
        ));
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    run("apt-get update", update)
        .map_err(|e| format!("{e}: installing {} needs root", packages.join(" ")))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(&format!("apt-get install {}", packages.join(" ")), install)
        .map_err(|e| format!("{e}: installing {} needs root", packages.join(" ")))
}

/// Installs what kvserver's tests need when it is missing; returns the
/// venv. Fails with what to do when it cannot.
fn setup() -> Result<PathBuf> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, prog)| !on_path(prog))
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "xtask: installing {} (kvserver's tests need them)",
            missing.join(", ")
        );
        apt_install(&missing)?;
    }
    let venv = venv_dir();
    let py = venv.join("bin/python");
    if has_program(&py.to_string_lossy(), &["-c", PY_MODULES]) {
        return Ok(venv);
    }
    eprintln!(
        "xtask: installing the Python clients into {}",
        venv.display()
    );
    if !py.exists() {
        if let Some(parent) = venv.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let python = ["python3", "python"]
            .into_iter()
            .find(|p| has_program(p, &["--version"]))
            .ok_or("no python3 found: install Python 3 (Debian: python3 python3-venv)")?;
        let mut mk = Command::new(python);
        mk.args(["-m", "venv"]).arg(&venv);
        if run("python3 -m venv", mk).is_err() {
            // Debian's python3 keeps venv in a package of its own.
            apt_install(&["python3-venv"])?;
            let mut mk = Command::new(python);
            mk.args(["-m", "venv"]).arg(&venv);
            run("python3 -m venv", mk)?;
        }
    }
    let mut pip = Command::new(&py);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(PIP_PACKAGES);
    run("pip install the Python clients", pip)?;
    if !has_program(&py.to_string_lossy(), &["-c", PY_MODULES]) {
        return Err(format!(
            "the Python clients do not import from {} after installing them",
            venv.display()
        ));
    }
    Ok(venv)
}

/// Packages that have loom models: a crate folder at the top level (named
/// as its crate) with a `tests/loom.rs` file.
fn loom_packages() -> Vec<String> {
    let Ok(rd) = fs::read_dir(root()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists() && e.path().join("tests/loom.rs").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn loom(deep: bool) -> Result<()> {
    let packages = loom_packages();
    if packages.is_empty() {
        eprintln!("xtask: no loom models in the workspace yet");
        return Ok(());
    }
    let mut args = vec!["test", "--release"];
    for p in &packages {
        args.push("-p");
        args.push(p);
    }
    args.extend(["--test", "loom", "--", "--test-threads=1"]);
    if deep {
        args.push("--include-ignored");
    }
    let mut cmd = cargo_cmd(&args);
    let mut flags = env::var("RUSTFLAGS").unwrap_or_default();
    flags.push_str(" --cfg loom");
    cmd.env("RUSTFLAGS", flags.trim())
        .env("CARGO_TARGET_DIR", target_dir().join("loom"))
        .env(
            "LOOM_MAX_PREEMPTIONS",
            env::var("LOOM_MAX_PREEMPTIONS")
                .unwrap_or_else(|_| if deep { "3" } else { "2" }.into()),
        );
    run("loom models", cmd)
}

fn deny() -> Result<()> {
    if !has_program(&cargo().to_string_lossy(), &["deny", "--version"]) {
        eprintln!("xtask: cargo-deny is missing; installing it (a few minutes, once)");
        run(
            "cargo install cargo-deny",
            cargo_cmd(&["install", "--locked", "cargo-deny"]),
        )?;
    }
    let tarball = root().join("../shared/advisory-db.tar.gz");
    if !tarball.exists() {
        return run("cargo deny check", cargo_cmd(&["deny", "check"]));
    }
    // `--offline` also stops `cargo metadata` from downloading crates, so
    // fetch them first (crates.io is reachable; the advisory database is not).
    run("cargo fetch", cargo_cmd(&["fetch"]))?;
    let db_root = target_dir().join("advisory-db-offline");
    unpack_advisory_db(&tarball, &db_root)?;
    let config = fs::read_to_string(root().join("deny.toml"))
        .map_err(|e| format!("reading deny.toml: {e}"))?;
    let mut replaced = false;
    let offline: String = config
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("db-path") {
                replaced = true;
                format!("db-path = {:?}", db_root.display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if !replaced {
        return Err("deny.toml has no `db-path` line in [advisories] to redirect".into());
    }
    let config_path = target_dir().join("deny-offline.toml");
    fs::write(&config_path, offline)
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let cfg = config_path.display().to_string();
    run(
        "cargo deny check (offline, shipped advisory database)",
        cargo_cmd(&["deny", "--offline", "--config", &cfg, "check"]),
    )
}

/// Unpacks the shipped advisory database into a git repository where
/// `cargo deny --offline` looks for the default database. The commit is dated
/// with the newest file in the snapshot, so staleness checks see its real
/// age. Skipped when the tarball has not changed since the last unpack.
fn unpack_advisory_db(tarball: &Path, db_root: &Path) -> Result<()> {
    let repo = db_root.join(ADVISORY_DB_DIR);
    let stamp = db_root.join("unpacked-from");
    let tar_meta = fs::metadata(tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let signature = format!(
        "{} {:?}",
        tar_meta.len(),
        tar_meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
    );
    if repo.join(".git").exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == signature) {
        return Ok(());
    }
    let _ = fs::remove_dir_all(db_root);
    fs::create_dir_all(db_root).map_err(|e| format!("{}: {e}", db_root.display()))?;
    let mut tar = Command::new("tar");
    tar.arg("xzf").arg(tarball).arg("-C").arg(db_root);
    run("unpack advisory database", tar)?;
    fs::rename(db_root.join("advisory-db"), &repo)
        .map_err(|e| format!("the tarball has no advisory-db/ folder: {e}"))?;
    let newest = newest_mtime(&repo).unwrap_or(SystemTime::now());
    let secs = newest
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let date = format!("@{secs} +0000");
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "xtask")
            .env("GIT_AUTHOR_EMAIL", "xtask@localhost")
            .env("GIT_COMMITTER_NAME", "xtask")
            .env("GIT_COMMITTER_EMAIL", "xtask@localhost")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date);
        c
    };
    run("git init (advisory db)", git(&["init", "-q"]))?;
    run("git add (advisory db)", git(&["add", "-A"]))?;
    run(
        "git commit (advisory db)",
        git(&["commit", "-q", "-m", "RustSec advisory database snapshot"]),
    )?;
    fs::write(&stamp, signature).map_err(|e| format!("{}: {e}", stamp.display()))
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()?.filter_map(|e| e.ok()) {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = meta.modified() {
                newest = Some(newest.map_or(m, |n: SystemTime| n.max(m)));
            }
        }
    }
    newest
}

/// `bench [--criterion] [ARGS]`: the backend comparison (the bench crate's
/// driver, which writes `target/bench-report/`), or with `--criterion` the
/// crates' criterion benches.
fn bench(args: &[String]) -> Result<()> {
    if workspace_has_rocks() {
        ensure_libclang()?;
    }
    if args.iter().any(|a| a == "--criterion") {
        let mut all: Vec<&str> = vec!["bench", "--workspace", "--all-features"];
        let rest: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "--criterion")
            .collect();
        if !rest.is_empty() {
            all.push("--");
            all.extend(rest);
        }
        return run("criterion benches", cargo_cmd(&all));
    }
    // The bench profile (release settings) shares its RocksDB build with
    // `cargo bench`.
    let mut all: Vec<&str> = vec!["run", "--profile", "bench", "-p", "bench", "--"];
    all.extend(args.iter().map(String::as_str));
    run("bench", cargo_cmd(&all))
}

/// One memaslap run's figures.
#[derive(Debug, Clone)]
struct LoadResult {
    tps: f64,
    avg_us: f64,
    /// Upper bounds of the log2 latency buckets holding the percentiles.
    p50_us: u64,
    p99_us: u64,
    get_misses: u64,
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn wait_listening(port: u16) -> Result<()> {
    for _ in 0..3000 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("nothing listens on port {port}"))
}

/// Parses memaslap's report: the TPS of the last line, the total
/// statistics' average, and percentiles from its log2 histogram.
fn parse_memaslap(out: &str) -> Result<LoadResult> {
    let tps = out
        .lines()
        .rev()
        .find_map(|l| l.split("TPS: ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .ok_or("memaslap printed no TPS")?;
    let total = out
        .rfind("Total Statistics (")
        .map(|i| &out[i..])
        .ok_or("memaslap printed no total statistics (is -S given?)")?;
    let avg_us = total
        .lines()
        .find_map(|l| l.trim().strip_prefix("Avg:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let mut buckets: Vec<(u32, u64)> = Vec::new();
    let mut in_dist = false;
    for l in total.lines() {
        let t = l.trim();
        if t.starts_with("Log2 Dist:") {
            in_dist = true;
            continue;
        }
        if !in_dist {
            continue;
        }
        let Some((start, counts)) = t.split_once(':') else {
            break;
        };
        let Ok(start) = start.trim().parse::<u32>() else {
            break;
        };
        for (i, c) in counts.split_whitespace().enumerate() {
            if let Ok(c) = c.parse::<u64>() {
                buckets.push((start + i as u32, c));
            }
        }
    }
    let n: u64 = buckets.iter().map(|b| b.1).sum();
    let pct = |p: f64| -> u64 {
        let want = (n as f64 * p).ceil() as u64;
        let mut acc = 0;
        for (k, c) in &buckets {
            acc += c;
            if acc >= want {
                return 1u64 << (k + 1);
            }
        }
        0
    };
    Ok(LoadResult {
        tps,
        avg_us,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        get_misses: out
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("get_misses:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    })
}

fn memaslap(port: u16, binary: bool, secs: u64, conns: u32) -> Result<LoadResult> {
    let mut c = Command::new("memcaslap");
    c.arg(format!("--servers=127.0.0.1:{port}"))
        .args(["--threads=2", &format!("--concurrency={conns}")])
        .arg(format!("--time={secs}s"))
        .arg(format!("--stat_freq={secs}s"))
        .arg("--fixed_size=150");
    if binary {
        c.arg("--binary");
    }
    eprintln!("xtask: running {c:?}");
    let out = c
        .output()
        .map_err(|e| format!("running memcaslap (libmemcached-tools): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "memcaslap failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_memaslap(&text)
}

fn text_stats(port: u16) -> Result<Vec<(String, String)>> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("stats: {e}"))?;
    s.write_all(b"stats\r\n")
        .map_err(|e| format!("stats: {e}"))?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"END\r\n") {
        let n = s.read(&mut chunk).map_err(|e| format!("stats: {e}"))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&got)
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// `bench server`: kvserver (release build, couchfile backend, 1024
/// vbuckets, every write persisted by the flusher) and memcached 1.6 (in
/// memory only) side by side in one run, under memaslap from
/// libmemcached-tools: 90% gets, 10% sets, 150-byte values, text and
/// binary protocol. Each case runs `--runs` times (default 3), interleaved;
/// the median run by ops/s is reported. Writes
/// `target/bench-report/server.md`.
fn bench_server(args: &[String]) -> Result<()> {
    let opt = |name: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} wants a number")),
            None => Ok(default),
        }
    };
    let secs = opt("--secs", 20)?;
    let conns = u32::try_from(opt("--conns", 32)?).map_err(|_| "--conns is too large")?;
    let runs = opt("--runs", 3)?.max(1);
    setup()?;
    run(
        "build kvserver (release)",
        cargo_cmd(&["build", "--release", "-p", "kvserver"]),
    )?;
    let kvbin = target_dir().join("release/kvserver");
    let work = target_dir().join("bench-server");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;

    let mc_port = free_port()?;
    let mut mc = Command::new("memcached")
        .args(["-l", "127.0.0.1", "-U", "0", "-m", "2048", "-u", "root"])
        .args(["-p", &mc_port.to_string()])
        .spawn()
        .map_err(|e| format!("starting memcached: {e}"))?;
    let kv_port = free_port()?;
    let started = Instant::now();
    let mut kv = Command::new(&kvbin)
        .arg("--data-dir")
        .arg(work.join("data"))
        .args(["--listen", &format!("127.0.0.1:{kv_port}")])
        .env("KVSERVER_LOG", "warn")
        .spawn()
        .map_err(|e| format!("starting kvserver: {e}"))?;
    let result = (|| -> Result<String> {
        wait_listening(mc_port)?;
        wait_listening(kv_port)?;
        let kv_start = started.elapsed().as_secs_f64();
        let mut table = Vec::new();
        for binary in [false, true] {
            let mut kvs = Vec::new();
            let mut mcs = Vec::new();
            for _ in 0..runs {
                mcs.push(memaslap(mc_port, binary, secs, conns)?);
                kvs.push(memaslap(kv_port, binary, secs, conns)?);
            }
            let median = |mut v: Vec<LoadResult>| {
                v.sort_by(|a, b| a.tps.total_cmp(&b.tps));
                v[v.len() / 2].clone()
            };
            table.push((
                if binary { "binary" } else { "text" },
                median(mcs),
                median(kvs),
            ));
        }
        let stats = text_stats(kv_port)?;
        let stat = |k: &str| {
            stats
                .iter()
                .find(|(n, _)| n == k)
                .map_or("?".to_owned(), |(_, v)| v.clone())
        };
        let mut md = String::new();
        md.push_str("# kvserver vs memcached (`cargo xtask bench server`)\n\n");
        md.push_str(&format!(
            "Load tool: memaslap (`memcaslap`, libmemcached-tools), {conns} connections on 2 threads, {secs} s per run, \
             90% get / 10% set, 150-byte values, memaslap's keys (64 bytes, a window of 10 k keys per connection, \
             picked at random, so {} distinct keys), median of {runs} interleaved runs by ops/s. \
             p50/p99 are the upper bounds of memaslap's log2 latency buckets. \
             kvserver: release build, couchfile backend, 1024 vbuckets, writes acknowledged from memory and \
             persisted by the flusher (not durable writes); memcached 1.6: memory only. Both on this machine \
             ({} cores), beside the load tool.\n\n",
            conns as u64 * 10_000,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        md.push_str("| protocol | server | ops/s | avg µs | p50 µs (≤) | p99 µs (≤) | get misses | ratio to memcached |\n|---|---|---|---|---|---|---|---|\n");
        for (proto, m, k) in &table {
            md.push_str(&format!(
                "| {proto} | memcached | {:.0} | {:.0} | {} | {} | {} | 1.00 |\n",
                m.tps, m.avg_us, m.p50_us, m.p99_us, m.get_misses
            ));
            md.push_str(&format!(
                "| {proto} | kvserver | {:.0} | {:.0} | {} | {} | {} | {:.2} |\n",
                k.tps,
                k.avg_us,
                k.p50_us,
                k.p99_us,
                k.get_misses,
                k.tps / m.tps
            ));
        }
        md.push_str(&format!(
            "\nkvserver after the runs: cmd_set {}, ep_flushed_items {} (items committed to couchfile), \
             ep_dirty_items {}, ep_flush_batches {}, curr_items {}; it started (1024 vbuckets) in {kv_start:.1} s.\n",
            stat("cmd_set"),
            stat("ep_flushed_items"),
            stat("ep_dirty_items"),
            stat("ep_flush_batches"),
            stat("curr_items"),
        ));
        Ok(md)
    })();
    let _ = mc.kill();
    let _ = mc.wait();
    let _ = Command::new("kill")
        .args(["-TERM", &kv.id().to_string()])
        .status();
    let kv_exit = kv.wait();
    let md = result?;
    match kv_exit {
        Ok(s) if s.success() => {}
        other => return Err(format!("kvserver did not shut down cleanly: {other:?}")),
    }
    let dir = target_dir().join("bench-report");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::write(dir.join("server.md"), &md).map_err(|e| format!("writing server.md: {e}"))?;
    println!("{md}");
    Ok(())
}

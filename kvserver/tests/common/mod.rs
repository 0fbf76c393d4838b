//! Helpers shared by kvserver's integration tests: a server child process
//! on a free loopback port, the Python clients' venv, and tool checks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kvserver::client::Client;
use kvserver::protocol::{feature, opcode, status};
use kvserver::sasl::Mechanism;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How to get what the tests need, said whenever something is missing.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (installs memcached and libmemcached-tools \
with apt, and the Python clients couchbase 4.x, pymemcache and python-binary-memcached into a \
venv under ~/.cache/vbstore), or `cargo xtask ci`, which does it first";

pub const USER: &str = "app";
pub const PASSWORD: &str = "s3cret-pw";

/// The venv's python, with the clients importable; panics with the setup
/// hint when it is not there.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("VBSTORE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/root".into());
            home.join(".cache/vbstore/venv")
        });
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import couchbase, pymemcache, bmemcached"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the Python clients are missing from {}: {SETUP_HINT}",
        venv.display()
    );
    py
}

/// Panics with the setup hint unless `tool` runs.
pub fn require_tool(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|c| c.is_file())
        })
        .unwrap_or(None);
    match found {
        Some(p) => p,
        None => panic!("`{tool}` is not installed: {SETUP_HINT}"),
    }
}

/// The tests' Python scripts.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// A kvserver child process.
pub struct TestServer {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
    pub users: Option<PathBuf>,
    args: Vec<String>,
}

/// Writes a users file with [`USER`] / [`PASSWORD`] through the binary.
pub fn users_file(dir: &Path) -> PathBuf {
    let path = dir.join("users.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .args(["user-add", "--users-file"])
        .arg(&path)
        .args([
            "--name",
            USER,
            "--password-env",
            "KV_TEST_PW",
            "--iterations",
            "4096",
        ])
        .env("KV_TEST_PW", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "user-add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(PASSWORD),
        "the users file holds the password"
    );
    path
}

impl TestServer {
    /// Starts a server on a free loopback port (port 0) with data in
    /// `data` and these extra flags; returns once it listens.
    pub fn start(data: &Path, users: Option<&Path>, extra: &[&str]) -> TestServer {
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--vbuckets".into(),
            "16".into(),
        ];
        if let Some(u) = users {
            args.push("--users-file".into());
            args.push(u.display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Self::spawn(data, users.map(Path::to_path_buf), args, "127.0.0.1:0")
    }

    fn spawn(data: &Path, users: Option<PathBuf>, args: Vec<String>, listen: &str) -> TestServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .args(&args)
            .args(["--listen", listen])
            .env(
                "KVSERVER_LOG",
                std::env::var("KVSERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(addr) = l.strip_prefix("kvserver listening on ") {
                        break addr.rsplit(':').next().unwrap().parse::<u16>().unwrap();
                    }
                }
                _ => {
                    let st = child.wait().unwrap();
                    panic!("kvserver exited before listening: {st}");
                }
            }
        };
        // Keep draining stdout so the child never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        TestServer {
            child,
            port,
            data: data.to_path_buf(),
            users,
            args,
        }
    }

    /// Starts again on the same data directory (after a stop or kill), on
    /// a new free port.
    pub fn restart(&mut self) {
        let s = Self::spawn(
            &self.data,
            self.users.clone(),
            self.args.clone(),
            "127.0.0.1:0",
        );
        *self = s;
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns whether the server exited cleanly.
    pub fn stop(&mut self) -> bool {
        self.stop_with("TERM")
    }

    /// Sends `sig` (TERM or INT); returns whether the server exited cleanly.
    pub fn stop_with(&mut self, sig: &str) -> bool {
        let pid = self.child.id() as i32;
        let r = signal(pid, sig);
        assert_eq!(r, 0, "SIGTERM failed");
        self.child.wait().unwrap().success()
    }

    /// A binary client: HELLO with the Couchbase features, authenticated
    /// when the server has users, bucket `default` selected.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(self.addr()).unwrap();
        c.hello(
            "kvserver-test",
            &[
                feature::XERROR,
                feature::SELECT_BUCKET,
                feature::JSON,
                feature::ALT_REQUEST,
                feature::SYNC_REPLICATION,
                feature::MUTATION_SEQNO,
            ],
        )
        .unwrap();
        if self.users.is_some() {
            assert_eq!(
                c.auth_scram(Mechanism::ScramSha512, USER, PASSWORD)
                    .unwrap(),
                status::SUCCESS
            );
        }
        let r = c
            .request(opcode::SELECT_BUCKET, 0, 0, &[], b"default", &[])
            .unwrap();
        assert_eq!(r.status, status::SUCCESS);
        c
    }

    /// The server's resident memory, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// General stats as a map.
    pub fn stats(&self, c: &mut Client) -> std::collections::HashMap<String, String> {
        stats(c, "")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1) (the workspace denies unsafe code, which
/// `libc::kill` would need).
fn signal(pid: i32, sig: &str) -> i32 {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    if st.success() { 0 } else { -1 }
}

/// A stat group as a map.
pub fn stats(c: &mut Client, group: &str) -> std::collections::HashMap<String, String> {
    let mut b = bytes::BytesMut::new();
    kvserver::protocol::encode_request(
        &mut b,
        opcode::STAT,
        0,
        0xabc,
        0,
        &[],
        group.as_bytes(),
        &[],
    );
    c.send_raw(&b).unwrap();
    let mut out = std::collections::HashMap::new();
    loop {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, status::SUCCESS, "stats {group}");
        if r.key.is_empty() {
            return out;
        }
        out.insert(
            String::from_utf8_lossy(&r.key).into_owned(),
            String::from_utf8_lossy(&r.value).into_owned(),
        );
    }
}

/// A manifest with `_default` and scope `app` holding collection `orders`
/// (id 8), uid `uid`.
pub fn manifest(uid: u64, extra_collections: &[(&str, u32)]) -> String {
    let mut colls = vec![r#"{"name":"orders","uid":"8"}"#.to_owned()];
    for (n, id) in extra_collections {
        colls.push(format!(r#"{{"name":"{n}","uid":"{id:x}"}}"#));
    }
    format!(
        r#"{{"uid":"{uid:x}","scopes":[{{"name":"_default","uid":"0","collections":[{{"name":"_default","uid":"0"}}]}},{{"name":"app","uid":"8","collections":[{}]}}]}}"#,
        colls.join(",")
    )
}

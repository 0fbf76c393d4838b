//! memcached clients against kvserver: pymemcache (text protocol),
//! python-binary-memcached (binary), and the libmemcached tools (memccp,
//! memccat, memcrm, memcstat) over text and `--binary`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, python, require_tool, script};
use std::process::{Command, Output};

#[test]
fn pymemcache_and_binary_memcached() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&dir.path().join("data"), None, &[]);
    let out = Command::new(&py)
        .arg(script("memcache_clients.py"))
        .arg(server.port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("CLIENTS OK"),
        "the memcached clients failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.stop());
}

fn tool(name: &str, server: &TestServer, binary: bool, args: &[&str]) -> Output {
    let mut c = Command::new(require_tool(name));
    c.arg(format!("--servers=127.0.0.1:{}", server.port));
    if binary {
        c.arg("--binary");
    }
    c.args(args).output().unwrap()
}

#[test]
fn libmemcached_tools() {
    for t in ["memccp", "memccat", "memcrm", "memcstat"] {
        require_tool(t);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&dir.path().join("data"), None, &[]);
    for binary in [false, true] {
        let mode = if binary { "binary" } else { "text" };
        let name = format!("file-{mode}.txt");
        let path = dir.path().join(&name);
        let body = format!("contents of the {mode} file\nsecond line\n");
        std::fs::write(&path, &body).unwrap();
        let cp = tool("memccp", &server, binary, &[path.to_str().unwrap()]);
        assert!(cp.status.success(), "memccp {mode}: {cp:?}");
        let cat = tool("memccat", &server, binary, &[&name]);
        assert!(cat.status.success(), "memccat {mode}: {cat:?}");
        // memccat ends what it prints with a newline of its own.
        assert_eq!(
            String::from_utf8_lossy(&cat.stdout).trim_end(),
            body.trim_end(),
            "memccat {mode}"
        );
        let stat = tool("memcstat", &server, binary, &[]);
        let text = String::from_utf8_lossy(&stat.stdout);
        assert!(
            stat.status.success() && text.contains("curr_connections"),
            "memcstat {mode}: {text}"
        );
        let rm = tool("memcrm", &server, binary, &[&name]);
        assert!(rm.status.success(), "memcrm {mode}: {rm:?}");
        let gone = tool("memccat", &server, binary, &[&name]);
        assert!(
            !gone.status.success(),
            "memccat {mode} after memcrm found the file"
        );
    }
    // The text and binary tools see the same documents.
    let path = dir.path().join("shared.txt");
    std::fs::write(&path, "both protocols\n").unwrap();
    assert!(
        tool("memccp", &server, false, &[path.to_str().unwrap()])
            .status
            .success()
    );
    let cat = tool("memccat", &server, true, &["shared.txt"]);
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout).trim_end(),
        "both protocols"
    );
    assert!(server.stop());
}

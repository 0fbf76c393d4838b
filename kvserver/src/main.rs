//! The `kvserver` binary: serve, or manage the users file.

use clap::{Args, Parser, Subcommand};
use kvserver::config::ConfigFile;
use kvserver::sasl::{UserDb, UserEntry};
use kvserver::{Server, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A Couchbase-compatible data service: the memcached binary and text
/// protocols over the vbucket engine.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Adds (or replaces) a user in a users file, storing salted SCRAM
    /// secrets only. The password comes from --password-env or stdin.
    UserAdd {
        /// The users file (created when missing).
        #[arg(long)]
        users_file: PathBuf,
        /// The user name.
        #[arg(long)]
        name: String,
        /// Read the password from this environment variable (else the
        /// first line of stdin).
        #[arg(long)]
        password_env: Option<String>,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = 15_000)]
        iterations: u32,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A JSON config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:11210; port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (default ./kvdata).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Backend: couchfile, memory or rocksdb.
    #[arg(long)]
    backend: Option<String>,
    /// Bucket names, comma separated (default "default").
    #[arg(long, value_delimiter = ',')]
    buckets: Option<Vec<String>>,
    /// Users file; when given, clients must authenticate.
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Vbuckets per bucket (default 1024).
    #[arg(long)]
    vbuckets: Option<usize>,
    /// Flusher threads per bucket.
    #[arg(long)]
    flusher_threads: Option<usize>,
    /// Dirty-item memory per bucket, bytes.
    #[arg(long)]
    memory_quota: Option<u64>,
    /// Max connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Max value size, bytes.
    #[arg(long)]
    max_value_size: Option<usize>,
    /// Max request body, bytes.
    #[arg(long)]
    max_frame_size: Option<usize>,
    /// Idle timeout, seconds.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Write the bound port to this file once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
}

fn config(a: RunArgs) -> Result<ServerConfig, String> {
    let f = match &a.config {
        Some(p) => ConfigFile::load(p).map_err(|e| e.to_string())?,
        None => ConfigFile::default(),
    };
    let mut c = ServerConfig::new(
        a.data_dir
            .or(f.data_dir)
            .unwrap_or_else(|| PathBuf::from("kvdata")),
    );
    if let Some(l) = a.listen.or(f.listen) {
        c.listen = l;
    }
    if let Some(b) = a.backend.or(f.backend) {
        c.backend = b;
    }
    if let Some(b) = a.buckets.or(f.buckets) {
        c.buckets = b;
    }
    c.users_file = a.users_file.or(f.users_file);
    if let Some(v) = a.vbuckets.or(f.vbuckets) {
        c.vbuckets = v;
    }
    if let Some(v) = a.flusher_threads.or(f.flusher_threads) {
        c.flusher_threads = v;
    }
    if let Some(v) = a.memory_quota.or(f.memory_quota) {
        c.memory_quota = v;
    }
    if let Some(v) = a.max_connections.or(f.max_connections) {
        c.limits.max_connections = v;
    }
    if let Some(v) = a.max_value_size.or(f.max_value_size) {
        c.limits.max_value_size = v;
        c.limits.max_frame_size = c.limits.max_frame_size.max(v + 4096);
    }
    if let Some(v) = a.max_frame_size.or(f.max_frame_size) {
        c.limits.max_frame_size = v;
    }
    if let Some(v) = a.idle_timeout.or(f.idle_timeout_secs) {
        c.limits.idle_timeout = Duration::from_secs(v);
    }
    c.port_file = a.port_file;
    Ok(c)
}

fn user_add(
    users_file: PathBuf,
    name: String,
    password_env: Option<String>,
    iterations: u32,
) -> Result<(), String> {
    let password = match password_env {
        Some(var) => std::env::var(&var).map_err(|_| format!("${var} is not set"))?,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("reading the password from stdin: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    UserDb::add_to_file(&users_file, UserEntry::new(&name, &password, iterations))
        .map_err(|e| e.to_string())?;
    println!("user {name} written to {}", users_file.display());
    Ok(())
}

async fn serve(cfg: ServerConfig) -> Result<(), String> {
    let server = Server::start(cfg).await.map_err(|e| e.to_string())?;
    // Tests and scripts read this line for the port.
    println!("kvserver listening on {}", server.local_addr());
    let stop = server.shutdown_handle();
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        tracing::info!("signal received");
        stop.shutdown();
    });
    server.run().await.map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVSERVER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::UserAdd {
            users_file,
            name,
            password_env,
            iterations,
        }) => user_add(users_file, name, password_env, iterations),
        None => match config(cli.run) {
            Ok(cfg) => match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(serve(cfg)),
                Err(e) => Err(format!("starting the runtime: {e}")),
            },
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvserver: {e}");
            ExitCode::FAILURE
        }
    }
}

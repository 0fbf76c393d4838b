//! The listener, the buckets, the engine notifier and graceful shutdown.

use crate::config::{ConfigError, ServerConfig};
use crate::conn;
use crate::sasl::{UserDb, UsersFileError};
use dashmap::DashMap;
use engine::{Backend, CookieId, Engine, EngineConfig, EngineError, EngineResult, Notifier};
use engine::{VbState, Vbid};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A bad setting.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The users file.
    #[error(transparent)]
    Users(#[from] UsersFileError),
    /// A bucket's engine.
    #[error("bucket {bucket}: {source}")]
    Engine {
        /// The bucket.
        bucket: String,
        /// The error.
        source: EngineError,
    },
    /// The socket.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// One bucket: a name and its engine.
#[derive(Debug)]
pub struct Bucket {
    /// The name clients select.
    pub name: String,
    /// Its engine.
    pub engine: Arc<Engine>,
    /// Its vbucket count (the size of its vbucket map).
    pub vbuckets: usize,
}

/// Wakes the connection whose parked request completed.
#[derive(Debug, Default)]
pub(crate) struct ConnNotifier {
    waiters: DashMap<CookieId, Arc<Notify>>,
}

impl ConnNotifier {
    pub(crate) fn register(&self, id: CookieId) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        self.waiters.insert(id, Arc::clone(&n));
        n
    }

    pub(crate) fn unregister(&self, id: CookieId) {
        self.waiters.remove(&id);
    }
}

impl Notifier for ConnNotifier {
    fn notify(&self, cookie: CookieId, _status: EngineResult<()>) {
        if let Some(n) = self.waiters.get(&cookie) {
            n.notify_one();
        }
    }
}

/// Server-wide counters (`stats`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open now.
    pub curr_connections: AtomicUsize,
    /// Connections accepted so far.
    pub total_connections: AtomicU64,
    /// Connections closed at accept (over the limit).
    pub rejected_connections: AtomicU64,
    /// Connections closed for a malformed frame or a limit.
    pub protocol_errors: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
    /// Reads.
    pub cmd_get: AtomicU64,
    /// Reads that found the document.
    pub get_hits: AtomicU64,
    /// Reads that did not.
    pub get_misses: AtomicU64,
    /// Writes.
    pub cmd_set: AtomicU64,
    /// Touches.
    pub cmd_touch: AtomicU64,
    /// Failed authentications.
    pub auth_errors: AtomicU64,
    /// Requests that were parked (would-block).
    pub parked: AtomicU64,
    /// Parked requests whose connection went away before they completed.
    pub parked_released: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    pub(crate) buckets: Vec<Arc<Bucket>>,
    pub(crate) users: Option<UserDb>,
    pub(crate) notifier: Arc<ConnNotifier>,
    pub(crate) counters: Counters,
    pub(crate) started: Instant,
    pub(crate) next_id: AtomicU64,
    /// The cluster config revision, bumped when vbuckets or the manifest
    /// change.
    pub(crate) config_rev: AtomicU64,
    pub(crate) port: u16,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn bucket(&self, name: &str) -> Option<Arc<Bucket>> {
        self.buckets.iter().find(|b| b.name == name).cloned()
    }

    pub(crate) fn bump_config(&self) {
        self.config_rev.fetch_add(1, Ordering::AcqRel);
    }
}

/// Stops a running server: accept nothing new, finish or fail what is
/// parked, flush, close the engines.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts the shutdown; [`Server::run`] returns when it is done.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// A bound server, ready to [`Server::run`].
///
/// ```no_run
/// # async fn f() -> Result<(), kvserver::ServerError> {
/// let mut cfg = kvserver::ServerConfig::new("/var/lib/kvserver");
/// cfg.listen = "127.0.0.1:0".parse().unwrap();
/// let server = kvserver::Server::start(cfg).await?;
/// println!("listening on {}", server.local_addr());
/// server.run().await
/// # }
/// ```
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: Arc<watch::Sender<bool>>,
    local: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

fn open_bucket(
    cfg: &ServerConfig,
    name: &str,
    notifier: Arc<ConnNotifier>,
) -> Result<Bucket, ServerError> {
    let err = |source| ServerError::Engine {
        bucket: name.to_owned(),
        source,
    };
    let backend: Backend = cfg
        .backend
        .parse()
        .map_err(|e: engine::ParseBackendError| {
            ServerError::Config(ConfigError::Invalid(e.to_string()))
        })?;
    let dir = cfg.data_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|source| ServerError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let mut ec = EngineConfig::new(&dir);
    ec.backend = backend;
    ec.vbuckets = cfg.vbuckets;
    ec.flusher_threads = cfg.flusher_threads;
    ec.memory_quota = cfg.memory_quota;
    ec.max_value_size = cfg.limits.max_value_size;
    let engine = Engine::open_with_notifier(ec, notifier).map_err(err)?;
    // A new bucket gets every vbucket, active (a single-node cluster).
    if engine.warmed_up().is_empty() && engine.vbuckets().is_empty() {
        for vb in 0..cfg.vbuckets {
            let vbid = Vbid(u16::try_from(vb).unwrap_or(u16::MAX));
            engine.create_vbucket(vbid, VbState::Active).map_err(err)?;
        }
    }
    tracing::info!(
        bucket = name,
        vbuckets = engine.vbuckets().len(),
        backend = engine.backend_name(),
        "bucket ready"
    );
    Ok(Bucket {
        name: name.to_owned(),
        engine: Arc::new(engine),
        vbuckets: cfg.vbuckets,
    })
}

impl Server {
    /// Checks the config, loads the users, opens (and warms up) every
    /// bucket, and binds the listener. Writes the port file once bound.
    pub async fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        cfg.validate()?;
        let users = match &cfg.users_file {
            Some(p) => Some(UserDb::load(p)?),
            None => None,
        };
        let notifier = Arc::new(ConnNotifier::default());
        let buckets = {
            let cfg = cfg.clone();
            let notifier = Arc::clone(&notifier);
            tokio::task::spawn_blocking(move || {
                cfg.buckets
                    .iter()
                    .map(|b| open_bucket(&cfg, b, Arc::clone(&notifier)).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| ServerError::Io {
                what: "opening buckets".into(),
                source: std::io::Error::other(e.to_string()),
            })??
        };
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Io {
                what: format!("binding {}", cfg.listen),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServerError::Io {
            what: "local address".into(),
            source,
        })?;
        if let Some(p) = &cfg.port_file {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, format!("{}\n", local.port()))
                .and_then(|()| std::fs::rename(&tmp, p))
                .map_err(|source| ServerError::Io {
                    what: format!("writing port file {}", p.display()),
                    source,
                })?;
        }
        let (tx, rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            buckets,
            users,
            notifier,
            counters: Counters::default(),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            config_rev: AtomicU64::new(1),
            port: local.port(),
            shutdown: rx,
        });
        Ok(Server {
            shared,
            listener,
            stop: Arc::new(tx),
            local,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A handle that stops [`Server::run`].
    #[must_use]
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.stop))
    }

    /// The buckets.
    #[must_use]
    pub fn buckets(&self) -> &[Arc<Bucket>] {
        &self.shared.buckets
    }

    /// Serves until the shutdown handle fires, then shuts down gracefully:
    /// stops accepting, lets connections finish the request in hand (a
    /// parked one waits for its result for a while, then fails with
    /// `ETMPFAIL`), and shuts every engine down. When it returns Ok every
    /// acknowledged write is durable.
    pub async fn run(self) -> Result<(), ServerError> {
        let mut stop = self.shared.shutdown.clone();
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::task::yield_now().await;
                            continue;
                        }
                    };
                    let c = &self.shared.counters;
                    if c.curr_connections.load(Ordering::Acquire) >= self.shared.cfg.limits.max_connections {
                        c.rejected_connections.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                    c.curr_connections.fetch_add(1, Ordering::AcqRel);
                    c.total_connections.fetch_add(1, Ordering::Relaxed);
                    let shared = Arc::clone(&self.shared);
                    conns.spawn(async move {
                        conn::serve(Arc::clone(&shared), stream, peer).await;
                        shared.counters.curr_connections.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!("shutting down: no new connections");
        drop(self.listener);
        while conns.join_next().await.is_some() {}
        let buckets = self.shared.buckets.clone();
        let results = tokio::task::spawn_blocking(move || {
            buckets
                .iter()
                .map(|b| (b.name.clone(), b.engine.shutdown()))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ServerError::Io {
            what: "shutting engines down".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        for (bucket, r) in results {
            r.map_err(|source| ServerError::Engine { bucket, source })?;
        }
        tracing::info!("shut down");
        Ok(())
    }
}

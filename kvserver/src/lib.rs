//! kvserver: a Couchbase-compatible data service over the [`engine`].
//!
//! One port serves the memcached **binary** protocol (classic and flexible
//! framing, with Couchbase's extensions: HELLO, SASL SCRAM and PLAIN, the
//! error map, SELECT_BUCKET, GET_CLUSTER_CONFIG, collections, vbucket
//! commands, durability and OBSERVE_SEQNO) and the memcached **text**
//! protocol; the first byte of a connection tells them apart. Real clients
//! talk to it unmodified: the Couchbase SDK bootstraps from the KV port
//! alone, and memcached clients and the libmemcached tools work as
//! against memcached.
//!
//! # What is durable when a reply is sent
//!
//! - A write without a durability requirement (every text-protocol write,
//!   and binary writes without the durability frame info): applied in
//!   memory and queued; the flusher commits it to the backend shortly
//!   after. A crash before that loses it.
//! - A write with a durability requirement (any level: on one node each
//!   means persisted here): committed and synced before the reply. While it
//!   waits, the request is parked under the connection's engine cookie and
//!   resumed by the engine's notifier; a client that disconnects releases
//!   the cookie.
//! - SET_COLLECTIONS_MANIFEST: the manifest is durable and applied.
//! - A graceful shutdown (SIGTERM, SIGINT) flushes everything acknowledged.
//!
//! # Safe by default
//!
//! It listens on 127.0.0.1 unless told otherwise and refuses another
//! address without a users file; with a users file every client must
//! authenticate. Connections, keys (250 bytes), values and frames are
//! limited, idle and slow clients are closed, and buffers are bounded. A
//! malformed frame is answered and the connection closed; nothing a client
//! sends makes the server panic.
//!
//! ```no_run
//! # async fn f() -> Result<(), kvserver::ServerError> {
//! let mut cfg = kvserver::ServerConfig::new("/tmp/kvdata");
//! cfg.listen = "127.0.0.1:0".parse().unwrap();
//! let server = kvserver::Server::start(cfg).await?;
//! let stop = server.shutdown_handle();
//! tokio::spawn(async move { tokio::signal::ctrl_c().await.ok(); stop.shutdown() });
//! server.run().await
//! # }
//! ```

pub mod client;
pub mod cluster;
pub mod config;
mod conn;
pub mod protocol;
pub mod sasl;
pub mod server;
pub mod text;

pub use config::{ConfigError, Limits, ServerConfig};
pub use server::{Bucket, Server, ServerError, ShutdownHandle};

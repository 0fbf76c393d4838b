//! `cargo xtask bench`: our two backends against the stores a user would
//! pick instead (raw RocksDB, redb, fjall), on the same workloads, data and
//! durability settings. See [`workloads`] for what runs and [`report`] for
//! what comes out (`target/bench-report/report.md`, `report.json` and one
//! SVG chart per workload).
//!
//! Each store runs in a child process of its own, so its peak RSS is its
//! own and no store warms another's caches.

pub mod report;
pub mod stores;
pub mod workloads;

pub use report::Report;
pub use stores::Kind;
pub use workloads::{ReclaimLatency, Settings, StoreRun, run_store};

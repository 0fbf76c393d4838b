//! The whole kvstore-core conformance suite against the couchfile backend.
#![allow(clippy::unwrap_used)]

use kvstore_core::testkit::StoreFactory;
use kvstore_core::{KvStore, StoreResult};
use kvstore_couchfile::{CouchConfig, CouchStore, FaultInjector};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Opens couchfile stores, one fault injector per directory. `aggressive`
/// runs maintenance inside every commit with thresholds so small that
/// nearly every commit checkpoints, segments hold a few records each and
/// reclamation runs all the time: the suite then exercises checkpoints,
/// dense rewrites, relocation and segment removal under every case.
#[derive(Default)]
struct CouchFactory {
    faults: Mutex<HashMap<PathBuf, Arc<FaultInjector>>>,
    aggressive: bool,
}

impl StoreFactory for CouchFactory {
    fn open(&self, dir: &Path) -> StoreResult<Arc<dyn KvStore>> {
        let faults = Arc::clone(
            self.faults
                .lock()
                .unwrap()
                .entry(dir.to_path_buf())
                .or_default(),
        );
        let mut config = CouchConfig {
            // Small nodes make deep trees out of test-sized data.
            node_size: 512,
            cache_bytes: 4 << 20,
            block_cache_bytes: 1 << 20,
            faults: Some(faults),
            ..CouchConfig::default()
        };
        if self.aggressive {
            config.background = false;
            config.memtable_bytes = 2048;
            config.segment_bytes = 24 << 10;
            config.reclaim_live_ratio = 0.9;
            config.reclaim_min_garbage = 1;
            config.checkpoint_log_bytes = 16 << 10;
        }
        Ok(Arc::new(CouchStore::open(dir, config)?))
    }

    fn inject_sync_failure(&self, dir: &Path) -> bool {
        match self.faults.lock().unwrap().get(dir) {
            Some(f) => {
                f.fail_sync_in(0);
                true
            }
            None => false,
        }
    }

    fn exact_rollback_window(&self) -> usize {
        // Aggressive: a checkpoint nearly every commit, so only the commits
        // since the previous checkpoint are an exact rollback window.
        if self.aggressive { 1 } else { usize::MAX }
    }
}

kvstore_core::conformance_tests!(CouchFactory::default());

mod aggressive {
    use super::*;
    kvstore_core::conformance_tests!(CouchFactory {
        aggressive: true,
        ..CouchFactory::default()
    });
}

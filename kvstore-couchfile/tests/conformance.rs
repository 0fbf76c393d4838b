//! The whole kvstore-core conformance suite against the couchfile backend.
#![allow(clippy::unwrap_used)]

use kvstore_core::testkit::StoreFactory;
use kvstore_core::{KvStore, StoreResult};
use kvstore_couchfile::{CouchConfig, CouchStore, FaultInjector};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Opens couchfile stores, one fault injector per directory.
#[derive(Default)]
struct CouchFactory {
    faults: Mutex<HashMap<PathBuf, Arc<FaultInjector>>>,
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
        let config = CouchConfig {
            // Small nodes make deep trees out of test-sized data.
            node_size: 512,
            cache_bytes: 4 << 20,
            faults: Some(faults),
            ..CouchConfig::default()
        };
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
}

kvstore_core::conformance_tests!(CouchFactory::default());

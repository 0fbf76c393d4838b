//! The test factory shared by the integration tests.

use kvstore_core::testkit::StoreFactory;
use kvstore_core::{KvStore, StoreResult};
use kvstore_rocks::{RocksConfig, RocksStore, SyncFault};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Opens [`RocksStore`]s with small caches, one [`SyncFault`] per directory.
pub struct RocksFactory {
    faults: Mutex<HashMap<PathBuf, SyncFault>>,
    window: usize,
}

impl Default for RocksFactory {
    fn default() -> Self {
        Self::with_window(RocksConfig::default().rollback_window)
    }
}

impl RocksFactory {
    /// A factory whose stores keep `window` commits of rollback history.
    #[allow(dead_code)]
    pub fn with_window(window: usize) -> Self {
        RocksFactory {
            faults: Mutex::new(HashMap::new()),
            window,
        }
    }

    /// The configuration the factory opens `dir` with.
    pub fn config(&self, dir: &Path) -> RocksConfig {
        let fault = self
            .faults
            .lock()
            .unwrap()
            .entry(dir.to_path_buf())
            .or_default()
            .clone();
        RocksConfig {
            block_cache_bytes: 8 << 20,
            write_buffer_budget_bytes: 16 << 20,
            write_buffer_bytes: 4 << 20,
            rollback_window: self.window,
            sync_fault: Some(fault),
            ..RocksConfig::default()
        }
    }
}

impl StoreFactory for RocksFactory {
    fn open(&self, dir: &Path) -> StoreResult<Arc<dyn KvStore>> {
        Ok(Arc::new(RocksStore::open(dir, self.config(dir))?))
    }

    fn inject_sync_failure(&self, dir: &Path) -> bool {
        match self.faults.lock().unwrap().get(dir) {
            Some(f) => {
                f.arm();
                true
            }
            None => false,
        }
    }

    fn exact_rollback_window(&self) -> usize {
        self.window
    }
}

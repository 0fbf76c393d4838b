//! The I/O layer. Every read, write and sync of a couchfile goes through
//! [`FileIo`], so tests can count syncs and inject failures at any write or
//! sync point.

use kvstore_core::{StoreError, StoreResult};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of the I/O calls made by every file sharing them.
#[derive(Debug, Default)]
pub struct IoStats {
    /// `fdatasync`/`fsync` calls on data files and directories.
    pub syncs: AtomicU64,
    /// Write calls.
    pub writes: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Read calls.
    pub reads: AtomicU64,
}

impl IoStats {
    /// The number of syncs so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The number of bytes written so far.
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
}

/// Makes chosen I/O calls fail, for tests of failure handling.
///
/// A countdown of `n` fails the call `n` calls from now (`0` is the next
/// one); a negative countdown never fires. An injected write failure writes
/// the first half of the buffer before failing, so the file really is torn.
#[derive(Debug)]
pub struct FaultInjector {
    sync_countdown: AtomicI64,
    write_countdown: AtomicI64,
}

impl Default for FaultInjector {
    fn default() -> Self {
        FaultInjector {
            sync_countdown: AtomicI64::new(-1),
            write_countdown: AtomicI64::new(-1),
        }
    }
}

impl FaultInjector {
    /// A new injector that fails nothing.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fails the sync `n` syncs from now.
    pub fn fail_sync_in(&self, n: u64) {
        self.sync_countdown
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Fails the write `n` writes from now.
    pub fn fail_write_in(&self, n: u64) {
        self.write_countdown
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Disarms every pending failure.
    pub fn clear(&self) {
        self.sync_countdown.store(-1, Ordering::SeqCst);
        self.write_countdown.store(-1, Ordering::SeqCst);
    }

    /// True when a sync or write failure is still pending.
    #[must_use]
    pub fn armed(&self) -> bool {
        self.sync_countdown.load(Ordering::SeqCst) >= 0
            || self.write_countdown.load(Ordering::SeqCst) >= 0
    }

    fn fires(counter: &AtomicI64) -> bool {
        let mut cur = counter.load(Ordering::SeqCst);
        loop {
            if cur < 0 {
                return false;
            }
            match counter.compare_exchange(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return cur == 0,
                Err(now) => cur = now,
            }
        }
    }
}

/// What every file of one store shares: counters and an optional injector.
#[derive(Debug, Clone, Default)]
pub struct Io {
    /// The counters.
    pub stats: Arc<IoStats>,
    /// The fault injector, if any.
    pub faults: Option<Arc<FaultInjector>>,
}

impl Io {
    /// An I/O context that counts into `stats` and obeys `faults`.
    #[must_use]
    pub fn with_faults(faults: Arc<FaultInjector>) -> Self {
        Io {
            stats: Arc::default(),
            faults: Some(faults),
        }
    }

    fn sync_fault(&self) -> Option<io::Error> {
        let f = self.faults.as_ref()?;
        FaultInjector::fires(&f.sync_countdown).then(|| io::Error::other("injected sync failure"))
    }

    fn write_fault(&self) -> Option<io::Error> {
        let f = self.faults.as_ref()?;
        FaultInjector::fires(&f.write_countdown).then(|| io::Error::other("injected write failure"))
    }
}

/// One open file.
#[derive(Debug)]
pub struct FileIo {
    file: File,
    path: PathBuf,
    io: Io,
}

impl FileIo {
    /// Opens an existing file, for reading only or for reading and writing.
    pub fn open(path: &Path, writable: bool, io: Io) -> StoreResult<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| StoreError::io("open", path, e))?;
        Ok(FileIo {
            file,
            path: path.to_path_buf(),
            io,
        })
    }

    /// Creates a new file; fails if it exists.
    pub fn create(path: &Path, io: Io) -> StoreResult<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io("create", path, e))?;
        Ok(FileIo {
            file,
            path: path.to_path_buf(),
            io,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The I/O context.
    #[must_use]
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// The current length.
    pub fn size(&self) -> StoreResult<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| StoreError::io("stat", &self.path, e))
    }

    /// Reads exactly `buf.len()` bytes at `offset`. A short file gives an
    /// `UnexpectedEof` I/O error; callers that know the length check first.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> StoreResult<()> {
        self.io.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| StoreError::io("read", &self.path, e))
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> StoreResult<()> {
        self.io.stats.writes.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.io.write_fault() {
            // A torn write: half of it lands.
            let _ = self.file.write_all_at(&buf[..buf.len() / 2], offset);
            return Err(StoreError::io("write", &self.path, e));
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| StoreError::io("write", &self.path, e))?;
        self.io
            .stats
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// `fdatasync`: the data and the length are durable when it returns.
    pub fn sync(&self) -> StoreResult<()> {
        self.io.stats.syncs.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = self.io.sync_fault() {
            return Err(StoreError::io("sync", &self.path, e));
        }
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("sync", &self.path, e))
    }

    /// Cuts the file to `len` bytes.
    pub fn truncate(&self, len: u64) -> StoreResult<()> {
        self.file
            .set_len(len)
            .map_err(|e| StoreError::io("truncate", &self.path, e))
    }
}

/// Makes a directory's entries (creates, renames, unlinks) durable.
pub fn sync_dir(io: &Io, dir: &Path) -> StoreResult<()> {
    io.stats.syncs.fetch_add(1, Ordering::Relaxed);
    if let Some(e) = io.sync_fault() {
        return Err(StoreError::io("sync directory", dir, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdown_fires_once() {
        let f = FaultInjector::new();
        f.fail_sync_in(2);
        assert!(!FaultInjector::fires(&f.sync_countdown));
        assert!(!FaultInjector::fires(&f.sync_countdown));
        assert!(FaultInjector::fires(&f.sync_countdown));
        assert!(!FaultInjector::fires(&f.sync_countdown));
        assert!(!f.armed());
    }

    #[test]
    fn injected_write_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultInjector::new();
        let io = Io::with_faults(faults.clone());
        let f = FileIo::create(&dir.path().join("x"), io.clone()).unwrap();
        faults.fail_write_in(0);
        assert!(f.write_at(&[7u8; 100], 0).is_err());
        assert_eq!(f.size().unwrap(), 50);
        f.write_at(&[1u8; 10], 50).unwrap();
        assert_eq!(io.stats.writes.load(Ordering::Relaxed), 2);
        f.sync().unwrap();
        assert_eq!(io.stats.syncs(), 1);
    }
}

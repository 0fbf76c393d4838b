//! A bounded cache of open file descriptors.
//!
//! With 1,024 vbuckets, each owning an index file and one or more log
//! segments, keeping every file open would need thousands of descriptors,
//! more than a default `ulimit -n 1024` allows. Every file of a store is
//! therefore a [`FileSlot`]: a name in the store's directory plus, while it
//! is in use, an open descriptor. The [`FdCache`] keeps at most
//! `max_open` descriptors open across all slots and closes the least
//! recently used idle ones (CLOCK) when a new one is opened. A slot reopens
//! its file by name on its next use.
//!
//! A caller that is reading or writing holds the descriptor as an
//! `Arc<FileIo>`, so eviction never closes a file under an I/O call, and a
//! write and the sync that makes it durable always go through the same
//! descriptor. A slot marked with [`FileSlot::remove_on_drop`] unlinks its
//! file when the last reference to it goes: files that readers may still
//! need stay on disk until the readers are done.

use crate::io::{FileIo, Io};
use kvstore_core::StoreResult;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The directory of one store (a vbucket revision). Its path changes when
/// the revision is marked deleted (renamed), so slots look it up at every
/// reopen.
#[derive(Debug)]
pub struct StoreDir {
    path: RwLock<PathBuf>,
}

impl StoreDir {
    /// A directory at `path`.
    #[must_use]
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(StoreDir {
            path: RwLock::new(path),
        })
    }

    /// Where it is now.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.path
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that it was renamed to `to`.
    pub fn moved_to(&self, to: PathBuf) {
        *self.path.write().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

#[derive(Default)]
struct FdState {
    open: VecDeque<Weak<FileSlot>>,
}

/// The descriptor budget shared by every file of a backend.
pub struct FdCache {
    max_open: usize,
    open: AtomicUsize,
    state: Mutex<FdState>,
    io: Io,
}

impl std::fmt::Debug for FdCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdCache")
            .field("max_open", &self.max_open)
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl FdCache {
    /// A cache that keeps about `max_open` descriptors (at least 8) open.
    #[must_use]
    pub fn new(max_open: usize, io: Io) -> Arc<Self> {
        Arc::new(FdCache {
            max_open: max_open.max(8),
            open: AtomicUsize::new(0),
            state: Mutex::new(FdState::default()),
            io,
        })
    }

    /// Descriptors open now.
    #[must_use]
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The I/O context every file shares.
    #[must_use]
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// A slot for `name` in `dir` (nothing is opened yet).
    #[must_use]
    pub fn slot(
        self: &Arc<Self>,
        dir: &Arc<StoreDir>,
        name: String,
        writable: bool,
    ) -> Arc<FileSlot> {
        Arc::new(FileSlot {
            dir: Arc::clone(dir),
            name,
            writable,
            fd: Mutex::new(None),
            referenced: AtomicBool::new(false),
            remove_on_drop: AtomicBool::new(false),
            pins: AtomicUsize::new(0),
            cache: Arc::clone(self),
        })
    }

    /// Records a newly opened descriptor and closes idle ones over budget.
    fn opened(&self, slot: &Arc<FileSlot>) {
        self.open.fetch_add(1, Ordering::AcqRel);
        let mut dropped = Vec::new();
        {
            let mut st = lock(&self.state);
            st.open.push_back(Arc::downgrade(slot));
            let mut budget = st.open.len() * 2 + 2;
            while self.open.load(Ordering::Acquire) > self.max_open && budget > 0 {
                budget -= 1;
                let Some(w) = st.open.pop_front() else { break };
                let Some(s) = w.upgrade() else { continue };
                if Arc::ptr_eq(&s, slot)
                    || s.pins.load(Ordering::Acquire) > 0
                    || s.referenced.swap(false, Ordering::AcqRel)
                {
                    st.open.push_back(w);
                    dropped.push(s);
                    continue;
                }
                // Skip a slot that is being opened or closed right now.
                let Ok(mut fd) = s.fd.try_lock() else {
                    st.open.push_back(w);
                    dropped.push(s);
                    continue;
                };
                if fd.take().is_some() {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                }
                drop(fd);
                dropped.push(s);
            }
        }
        // Slots upgraded above are released outside the lock: the last
        // reference going runs `FileSlot::drop`, which takes the lock.
        drop(dropped);
    }
}

/// One file of a store: its name, and its descriptor while open.
pub struct FileSlot {
    dir: Arc<StoreDir>,
    name: String,
    writable: bool,
    fd: Mutex<Option<Arc<FileIo>>>,
    referenced: AtomicBool,
    remove_on_drop: AtomicBool,
    pins: AtomicUsize,
    cache: Arc<FdCache>,
}

/// Keeps a slot's descriptor open while it lives (see [`FileSlot::pin`]).
#[derive(Debug)]
pub struct Pin {
    slot: Arc<FileSlot>,
    _fd: Arc<FileIo>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.slot.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for FileSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSlot")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl FileSlot {
    /// The file's path now.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// The file name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The open descriptor, opening the file if needed.
    pub fn get(self: &Arc<Self>) -> StoreResult<Arc<FileIo>> {
        self.referenced.store(true, Ordering::Release);
        let mut fd = lock(&self.fd);
        if let Some(f) = fd.as_ref() {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(FileIo::open(
            &self.path(),
            self.writable,
            self.cache.io.clone(),
        )?);
        *fd = Some(Arc::clone(&f));
        drop(fd);
        self.cache.opened(self);
        Ok(f)
    }

    /// Opens the file and keeps it open until the returned pin drops, even
    /// over the descriptor budget and after the file is removed. A scan
    /// pinned to a snapshot pins the files it reads, so it finishes on them
    /// whatever happens to the store meanwhile.
    pub fn pin(self: &Arc<Self>) -> StoreResult<Pin> {
        self.pins.fetch_add(1, Ordering::AcqRel);
        match self.get() {
            Ok(fd) => Ok(Pin {
                slot: Arc::clone(self),
                _fd: fd,
            }),
            Err(e) => {
                self.pins.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Installs a descriptor just created for this slot's file.
    pub fn install(self: &Arc<Self>, file: FileIo) -> Arc<FileIo> {
        let f = Arc::new(file);
        let mut fd = lock(&self.fd);
        let had = fd.replace(Arc::clone(&f)).is_some();
        drop(fd);
        if !had {
            self.cache.opened(self);
        }
        f
    }

    /// Closes the descriptor (the next use reopens the file). Used after a
    /// failed sync, so nothing written through the old descriptor is
    /// trusted again.
    pub fn close(&self) {
        if self.pins.load(Ordering::Acquire) > 0 {
            return;
        }
        if lock(&self.fd).take().is_some() {
            self.cache.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Unlinks the file once the last reference to this slot goes.
    pub fn remove_on_drop(&self) {
        self.remove_on_drop.store(true, Ordering::Release);
    }

    /// True when the file goes with the slot.
    #[must_use]
    pub fn is_removed_on_drop(&self) -> bool {
        self.remove_on_drop.load(Ordering::Acquire)
    }
}

impl Drop for FileSlot {
    fn drop(&mut self) {
        let fd = self
            .fd
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if fd.is_some() {
            self.cache.open.fetch_sub(1, Ordering::AcqRel);
        }
        drop(fd);
        if self.remove_on_drop.load(Ordering::Acquire) {
            let path = self.path();
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "removed a retired file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Left for the next open, which removes unreferenced files.
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a retired file");
                }
            }
        }
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits`
/// (Linux); `None` where it cannot be read.
#[must_use]
pub fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string(Path::new("/proc/self/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_max_open_and_reopens_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StoreDir::new(dir.path().to_path_buf());
        let cache = FdCache::new(8, Io::default());
        let slots: Vec<Arc<FileSlot>> = (0..40)
            .map(|i| {
                let name = format!("f{i}");
                std::fs::write(dir.path().join(&name), format!("{i}")).unwrap();
                cache.slot(&sd, name, false)
            })
            .collect();
        for round in 0..3 {
            for (i, s) in slots.iter().enumerate() {
                let f = s.get().unwrap();
                let mut b = vec![0u8; f.size().unwrap() as usize];
                f.read_at(&mut b, 0).unwrap();
                assert_eq!(
                    String::from_utf8(b).unwrap(),
                    i.to_string(),
                    "round {round}"
                );
                drop(f);
                assert!(cache.open_count() <= 8, "{}", cache.open_count());
            }
        }
        drop(slots);
        assert_eq!(cache.open_count(), 0);
    }

    #[test]
    fn removed_on_last_drop_and_follows_renames() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("x"), b"1").unwrap();
        let sd = StoreDir::new(a.clone());
        let cache = FdCache::new(8, Io::default());
        let s = cache.slot(&sd, "x".into(), false);
        let b = dir.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        sd.moved_to(b.clone());
        assert_eq!(s.get().unwrap().size().unwrap(), 1);
        s.remove_on_drop();
        let again = Arc::clone(&s);
        drop(s);
        assert!(b.join("x").exists(), "still referenced");
        drop(again);
        assert!(!b.join("x").exists());
    }

    #[test]
    fn reads_the_limit() {
        assert!(open_files_limit().is_some_and(|l| l > 0));
    }
}

//! `couchfile_open`: a real couchfile revision directory, damaged, opened.
//!
//! A small store (commits of sets, deletes, local documents and vbucket
//! states; a checkpoint; more commits after it, so the log has records to
//! replay) is built once per process and kept in memory. Each input picks
//! which of its files to damage and how: bytes written at an offset, bits
//! flipped, files cut short or grown with garbage. The damaged directory is
//! then opened for inspection (`couchfile info`/`dump`'s code: every
//! header, tree, segment and log record walked) and as a store (discover,
//! open, every read, then a commit, checkpoint, rollback and compaction).
//!
//! Property: no panic, no endless loop or recursion, no unbounded
//! allocation. Every damage is an `Err` (a typed corruption naming the file
//! and offset) or, where it hit nothing that is read, success.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kvstore_core::{
    CollectionId, CommitBatch, CompactionConfig, DiskKey, Document, KeyRange, KvStore, LocalOp,
    ScanControl, ScanOptions, Seqno, VbState, VbStore, Vbid, VbucketState,
};
use kvstore_couchfile::{CouchConfig, CouchStore, inspect};
use std::path::Path;
use std::sync::OnceLock;

/// A damage to one file of the revision directory.
#[derive(Debug, Clone, Arbitrary)]
pub enum Damage {
    /// Overwrite bytes at `at` (mod the file length).
    Write {
        /// Which file (mod the number of files).
        file: u8,
        /// Where.
        at: u32,
        /// What.
        bytes: Vec<u8>,
    },
    /// Flip one bit.
    Flip {
        /// Which file.
        file: u8,
        /// Which byte (mod the file length).
        at: u32,
        /// Which bit (mod 8).
        bit: u8,
    },
    /// Cut the file to `len` (mod its length).
    Truncate {
        /// Which file.
        file: u8,
        /// The new length.
        len: u32,
    },
    /// Append garbage.
    Append {
        /// Which file.
        file: u8,
        /// What.
        bytes: Vec<u8>,
    },
}

/// One input.
#[derive(Debug, Clone, Arbitrary)]
pub struct Input {
    /// Which base store (mod 2: one checkpoint, or several with a
    /// rollback and a compaction behind them).
    pub base: u8,
    /// The damage, applied in order.
    pub damage: Vec<Damage>,
}

/// A revision directory in memory: its name and its files.
#[derive(Debug, Clone)]
pub struct Image {
    /// The directory name, `<vbid>.couch.<rev>`.
    pub name: String,
    /// File names and contents, in name order.
    pub files: Vec<(String, Vec<u8>)>,
}

fn config() -> CouchConfig {
    CouchConfig {
        background: false,
        node_size: 512,
        cache_bytes: 1 << 20,
        block_cache_bytes: 256 << 10,
        max_open_files: 16,
        memtable_bytes: 4096,
        segment_bytes: 32 << 10,
        ..CouchConfig::default()
    }
}

fn key(i: u64) -> DiskKey {
    let cid = if i.is_multiple_of(3) {
        CollectionId(8)
    } else {
        CollectionId::DEFAULT
    };
    match DiskKey::new(cid, format!("doc-{i:03}").as_bytes()) {
        Ok(k) => k,
        Err(e) => panic!("a fixed key is valid: {e}"),
    }
}

fn batch(b: u64) -> CommitBatch {
    let mut batch = CommitBatch::new();
    for j in 0..6 {
        let s = b * 8 + j + 1;
        let value: Vec<u8> = (0..(s * 37 % 900)).map(|i| (s + i) as u8).collect();
        batch = batch.item(Document::new(key((b * 3 + j) % 20), Seqno(s), value));
    }
    batch = batch.item(Document::tombstone(key(b % 20 + 1), Seqno(b * 8 + 7), 5));
    batch
        .local(LocalOp::Set {
            name: "_local/base".into(),
            value: Bytes::from(format!("b{b}")),
        })
        .vbstate(VbucketState {
            state: VbState::Active,
            ..VbucketState::default()
        })
}

/// Builds a base store and reads its revision directory into memory.
///
/// # Panics
/// When the store cannot be built (the machine, not the input, is at
/// fault).
#[must_use]
pub fn build_image(base: u8) -> Image {
    let r = (|| -> Result<Image, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let store = CouchStore::open(dir.path(), config()).map_err(|e| e.to_string())?;
        let vb = store.create(Vbid(0)).map_err(|e| e.to_string())?;
        let cvb = store
            .open_couch(Vbid(0), vb.revision())
            .map_err(|e| e.to_string())?;
        for b in 0..4 {
            vb.commit(batch(b)).map_err(|e| e.to_string())?;
        }
        cvb.checkpoint().map_err(|e| e.to_string())?;
        if base % 2 == 1 {
            vb.rollback(Seqno(20)).map_err(|e| e.to_string())?;
            for b in 4..8 {
                vb.commit(batch(b)).map_err(|e| e.to_string())?;
            }
            vb.compact(&CompactionConfig {
                drop_deletes: true,
                ..CompactionConfig::default()
            })
            .map_err(|e| e.to_string())?;
            cvb.checkpoint().map_err(|e| e.to_string())?;
        }
        for b in 8..10 {
            vb.commit(batch(b)).map_err(|e| e.to_string())?;
        }
        let name = kvstore_couchfile::store::store_name(Vbid(0), vb.revision());
        drop(cvb);
        drop(vb);
        store.close().map_err(|e| e.to_string())?;
        drop(store);
        let rev_dir = dir.path().join(&name);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&rev_dir).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).map_err(|e| e.to_string())?;
            files.push((file, bytes));
        }
        files.sort();
        Ok(Image { name, files })
    })();
    match r {
        Ok(i) => i,
        Err(e) => panic!("building the base store failed: {e}"),
    }
}

fn image(base: u8) -> &'static Image {
    static IMAGES: [OnceLock<Image>; 2] = [OnceLock::new(), OnceLock::new()];
    IMAGES[usize::from(base % 2)].get_or_init(|| build_image(base))
}

/// Applies `damage` to a copy of `image`.
#[must_use]
pub fn damaged(image: &Image, damage: &[Damage]) -> Vec<(String, Vec<u8>)> {
    let mut files = image.files.clone();
    if files.is_empty() {
        return files;
    }
    let n = files.len();
    for d in damage.iter().take(16) {
        match d {
            Damage::Write { file, at, bytes } => {
                let f = &mut files[usize::from(*file) % n].1;
                if f.is_empty() {
                    continue;
                }
                let at = *at as usize % f.len();
                let end = (at + bytes.len()).min(f.len());
                f[at..end].copy_from_slice(&bytes[..end - at]);
            }
            Damage::Flip { file, at, bit } => {
                let f = &mut files[usize::from(*file) % n].1;
                if !f.is_empty() {
                    let at = *at as usize % f.len();
                    f[at] ^= 1 << (bit % 8);
                }
            }
            Damage::Truncate { file, len } => {
                let f = &mut files[usize::from(*file) % n].1;
                let len = *len as usize % (f.len() + 1);
                f.truncate(len);
            }
            Damage::Append { file, bytes } => {
                files[usize::from(*file) % n].1.extend_from_slice(bytes);
            }
        }
    }
    files
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    run_input(&input);
}

/// Runs one structured input.
pub fn run_input(input: &Input) {
    let img = image(input.base);
    let files = damaged(img, &input.damage);
    let root = crate::scratch_dir();
    let dir = root.path().join(&img.name);
    if let Err(e) = write_dir(&dir, &files) {
        panic!("writing the damaged directory: {e}");
    }
    inspect_all(&dir);
    open_and_use(root.path());
}

fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

/// What `couchfile info` and `couchfile dump` do.
fn inspect_all(dir: &Path) {
    let _ = inspect::info(dir);
    let _ = inspect::headers(dir);
    let _ = inspect::dump_by_key(dir, true, &mut |_| {});
    let _ = inspect::dump_by_seqno(dir, true, &mut |_| {});
    let _ = inspect::dump_local(dir);
    let _ = inspect::segments(dir);
    let _ = inspect::dump_log(dir, &mut |_| {});
    if let Ok(vb) = inspect::open(dir) {
        read_all(&*vb);
    }
}

fn read_all(vb: &dyn VbStore) {
    let mut n = 0usize;
    let _ = vb.key_range(&KeyRange::all(), &mut |_| {
        n += 1;
        ScanControl::Continue
    });
    let _ = vb.key_range(&KeyRange::collection(CollectionId(8)), &mut |_| {
        ScanControl::Continue
    });
    if let Ok(mut scan) = vb.seqno_scan(
        Seqno(0),
        Seqno(u64::MAX),
        ScanOptions {
            include_deleted: true,
            ..ScanOptions::default()
        },
    ) {
        let _ = scan.run(&mut |_| ScanControl::Continue);
    }
    let keys: Vec<DiskKey> = (0..22).map(key).collect();
    let _ = vb.get_many(&keys);
    let _ = vb.list_local();
    let _ = vb.vbstate();
    let _ = vb.info();
}

/// Opens the damaged directory as a store and uses it.
fn open_and_use(root: &Path) {
    let Ok(store) = CouchStore::open(root, config()) else {
        return;
    };
    let Ok(found) = store.discover() else {
        return;
    };
    for (vbid, rev) in found {
        let Ok(vb) = store.open(vbid, rev) else {
            continue;
        };
        read_all(&*vb);
        let high = vb.info().map(|i| i.high_seqno.0).unwrap_or(0);
        let _ = vb.commit(
            CommitBatch::new()
                .item(Document::new(key(3), Seqno(high + 1), "after"))
                .item(Document::tombstone(key(4), Seqno(high + 2), 9)),
        );
        if let Ok(cvb) = store.open_couch(vbid, rev) {
            let _ = cvb.checkpoint();
        }
        read_all(&*vb);
        let _ = vb.rollback(Seqno(high.saturating_sub(5)));
        let _ = vb.compact(&CompactionConfig {
            drop_deletes: true,
            ..CompactionConfig::default()
        });
        read_all(&*vb);
    }
    let _ = store.close();
}

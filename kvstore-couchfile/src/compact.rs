//! Compaction: copy live data into a new, dense file, catch up with commits
//! made meanwhile, then switch to it.
//!
//! 1. Under the handle's maintenance lock (no rollback or second compaction
//!    can start), take the current view as the source.
//! 2. Copy it into `<vbid>.couch.<rev>.compact`: documents in seqno order
//!    (values that live outside the leaves are copied in that order too),
//!    each tree built bottom-up into full nodes, purging tombstones and
//!    dropped-collection items as configured. Sync.
//! 3. Catch up without holding the commit lock: apply the documents
//!    committed since the source view, as ordinary batches, until what is
//!    left is small.
//! 4. Take the commit lock, apply the last changes, write the header, sync,
//!    rename to `<vbid>.couch.<new rev>`, sync the directory, switch the
//!    handle to the new file, release the lock, and remove the old file.
//!    Commits wait only for this last step.
//!
//! A crash before the rename leaves a `.compact` file that startup removes;
//! after it, two revisions, of which startup keeps the newer. Readers that
//! pinned the old file keep reading it through their open descriptor.

use crate::block::{ChunkPtr, PhysWriter};
use crate::btree::{Builder, NodeWriter, TreeKind, iterate};
use crate::codec::{
    DocRecord, ValueRef, decode_key_value, decode_seqno_value, encode_seqno_value, seqno_key,
};
use crate::file::CouchFile;
use crate::header::Header;
use crate::io::{FileIo, sync_dir};
use crate::store::{CouchVb, View, append_header, compact_name, file_name, lock, now_secs};
use bytes::Bytes;
use kvstore_core::batch::PreparedBatch;
use kvstore_core::{
    CompactionConfig, CompactionResult, CorruptionKind, DiskKey, Document, StoreError, StoreResult,
    VbStore,
};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Bytes buffered before they are written to the new file.
const FLUSH_BYTES: usize = 4 << 20;
/// How often (in documents) a running copy checks for cancellation.
const CANCEL_CHECK: u64 = 256;
/// Catch-up rounds without the commit lock before the final one.
const MAX_ROUNDS: usize = 8;

/// Removes the `.compact` file unless the compaction completed.
struct Leftover {
    path: PathBuf,
    done: bool,
}

impl Drop for Leftover {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn corrupt(file: &CouchFile, e: crate::codec::DecodeError) -> StoreError {
    StoreError::corrupt(file.path(), 0, e.kind())
}

/// Compacts `vb` per `config`.
pub(crate) fn compact(vb: &CouchVb, config: &CompactionConfig) -> StoreResult<CompactionResult> {
    vb.check()?;
    let _maint = lock(&vb.maintenance);
    vb.check()?;
    let shared = Arc::clone(&vb.shared);
    let cfg = &shared.config;
    let cancelled = || {
        config.is_cancelled()
            || vb.stop_compaction.load(Ordering::SeqCst)
            || vb.deleted.load(Ordering::SeqCst)
    };
    let src = vb.view();
    let old_rev = vb.revision();
    let bytes_before = src.file.end();
    let new_rev = shared.next_rev(vb.vbid);

    let tmp_path = shared.dir.join(compact_name(vb.vbid, old_rev));
    let _ = fs::remove_file(&tmp_path);
    let mut leftover = Leftover {
        path: tmp_path.clone(),
        done: false,
    };
    let dst = CouchFile::new(
        FileIo::create(&tmp_path, shared.io.clone())?,
        Arc::clone(&shared.cache),
        0,
    );

    // Step 2: the bulk copy.
    let high = src.header.high_seqno;
    let mut purge_seqno = src.header.purge_seqno;
    let (mut tombstones, mut collection_items) = (0u64, 0u64);
    let mut moved: HashMap<u64, ChunkPtr> = HashMap::new();
    let mut out = PhysWriter::new(0);
    let mut seen = 0u64;
    let mut stop = false;
    let drop_doc = |key: &DiskKey, rec: &DocRecord| -> Option<bool> {
        let probe = Document {
            key: key.clone(),
            meta: rec.meta,
            value: Bytes::new(),
        };
        if config.is_dropped(&probe) {
            Some(false)
        } else if config.purges_tombstone(&probe, high) {
            Some(true)
        } else {
            None
        }
    };

    let by_seqno = {
        let mut w = NodeWriter::new(&mut out, cfg.compression, cfg.node_size, false);
        let mut b = Builder::new(TreeKind::BySeqno);
        iterate(
            &*src.file,
            src.header.by_seqno.as_ref(),
            b"",
            None,
            &mut |k, v| {
                seen += 1;
                if seen.is_multiple_of(CANCEL_CHECK) && cancelled() {
                    stop = true;
                    return Ok(false);
                }
                let (key, mut rec) = decode_seqno_value(v).map_err(|e| corrupt(&src.file, e))?;
                match drop_doc(&key, &rec) {
                    Some(true) => {
                        tombstones += 1;
                        purge_seqno = purge_seqno.max(rec.meta.seqno);
                        return Ok(true);
                    }
                    Some(false) => {
                        collection_items += 1;
                        return Ok(true);
                    }
                    None => {}
                }
                if let ValueRef::External(p) = rec.value {
                    let value = src.file.read_chunk(p)?;
                    let np = w.out.write_chunk(&value);
                    moved.insert(p.offset, np);
                    rec.value = ValueRef::External(np);
                }
                let mut val = Vec::with_capacity(v.len());
                encode_seqno_value(&key, &rec, &mut val);
                b.push(&*dst, &mut w, k.clone(), Bytes::from(val))?;
                if w.out.len() > FLUSH_BYTES {
                    w.out.flush_to(dst.io())?;
                    dst.set_end(w.out.pos());
                }
                Ok(true)
            },
        )?;
        if stop {
            return Err(StoreError::Cancelled);
        }
        b.finish(&*dst, &mut w)?
    };

    let by_key = {
        let mut w = NodeWriter::new(&mut out, cfg.compression, cfg.node_size, false);
        let mut b = Builder::new(TreeKind::ByKey);
        iterate(
            &*src.file,
            src.header.by_key.as_ref(),
            b"",
            None,
            &mut |k, v| {
                seen += 1;
                if seen.is_multiple_of(CANCEL_CHECK) && cancelled() {
                    stop = true;
                    return Ok(false);
                }
                let mut rec = decode_key_value(v).map_err(|e| corrupt(&src.file, e))?;
                let key = DiskKey::from_shared(k.clone()).map_err(|e| {
                    StoreError::corrupt(
                        src.file.path(),
                        0,
                        CorruptionKind::Malformed {
                            what: "by-key tree key",
                            detail: e.to_string(),
                        },
                    )
                })?;
                if drop_doc(&key, &rec).is_some() {
                    return Ok(true);
                }
                if let ValueRef::External(p) = rec.value {
                    let Some(np) = moved.get(&p.offset) else {
                        return Err(StoreError::corrupt(
                            src.file.path(),
                            p.offset,
                            CorruptionKind::Malformed {
                                what: "value pointer",
                                detail: format!(
                                    "{key} points at a value the by-seqno tree does not"
                                ),
                            },
                        ));
                    };
                    rec.value = ValueRef::External(*np);
                }
                let mut val = Vec::with_capacity(v.len());
                rec.encode(&mut val);
                b.push(&*dst, &mut w, k.clone(), Bytes::from(val))?;
                if w.out.len() > FLUSH_BYTES {
                    w.out.flush_to(dst.io())?;
                    dst.set_end(w.out.pos());
                }
                Ok(true)
            },
        )?;
        if stop {
            return Err(StoreError::Cancelled);
        }
        b.finish(&*dst, &mut w)?
    };

    let local = {
        let mut w = NodeWriter::new(&mut out, cfg.compression, cfg.node_size, false);
        let mut b = Builder::new(TreeKind::Local);
        iterate(
            &*src.file,
            src.header.local.as_ref(),
            b"",
            None,
            &mut |k, v| {
                b.push(&*dst, &mut w, k.clone(), v.clone())?;
                Ok(true)
            },
        )?;
        b.finish(&*dst, &mut w)?
    };
    out.flush_to(dst.io())?;
    dst.set_end(out.pos());
    dst.io().sync()?;

    let mut state = Header {
        offset: 0,
        vbid: vb.vbid,
        revision: new_rev,
        prev: None,
        region_start: 0,
        region_crc: 0,
        commit: 0,
        high_seqno: high,
        purge_seqno,
        timestamp: now_secs(),
        by_key,
        by_seqno,
        local,
    };
    let mut applied = src.header.clone();
    // Catch-up writes go after the synced bulk copy; the final header's
    // region covers exactly them, so a running CRC follows every flush.
    let region_start = out.pos();
    let mut out = PhysWriter::new(region_start);
    let mut region_crc = 0u32;
    let mut nodes = Vec::new();
    let flush = |out: &mut PhysWriter, crc: &mut u32| -> StoreResult<()> {
        *crc = crc32c::crc32c_append(*crc, out.bytes());
        out.flush_to(dst.io())?;
        dst.set_end(out.pos());
        Ok(())
    };

    // Step 3: catch up without the commit lock.
    for _ in 0..MAX_ROUNDS {
        if cancelled() {
            return Err(StoreError::Cancelled);
        }
        let latest = vb.view();
        let behind = latest
            .header
            .high_seqno
            .0
            .saturating_sub(applied.high_seqno.0);
        if latest.header.offset == applied.offset || behind as usize <= cfg.final_catchup_docs {
            break;
        }
        nodes = catch_up(vb, &dst, &mut state, &applied, &latest, &mut out, config)?;
        flush(&mut out, &mut region_crc)?;
        applied = latest.header.clone();
    }

    // Step 4: the final catch-up and the switch, holding the commit lock.
    let mut w = lock(&vb.writer);
    if cancelled() {
        return Err(StoreError::Cancelled);
    }
    let latest = vb.view();
    if latest.header.offset != applied.offset {
        nodes.extend(catch_up(
            vb, &dst, &mut state, &applied, &latest, &mut out, config,
        )?);
    }
    state.high_seqno = latest.header.high_seqno;
    state.timestamp = now_secs();
    append_header(&mut out, &mut state, region_start, region_crc);
    out.flush_to(dst.io())?;
    dst.io().sync()?;
    let end = out.pos();

    let new_path = shared.dir.join(file_name(vb.vbid, new_rev));
    fs::rename(&tmp_path, &new_path).map_err(|e| StoreError::io("rename", &tmp_path, e))?;
    leftover.done = true;
    sync_dir(&shared.io, &shared.dir).map_err(|e| vb.poison(e))?;
    let fio = FileIo::open(&new_path, true, shared.io.clone()).map_err(|e| vb.poison(e))?;
    let file = CouchFile::new(fio, Arc::clone(&shared.cache), end);
    for (ptr, node) in nodes {
        file.cache_node(ptr, node);
    }
    w.file = Arc::clone(&file);
    w.end = end;
    vb.publish(View::new(file, state.clone()));
    vb.set_revision(new_rev);
    drop(w);

    let old_path = shared.dir.join(file_name(vb.vbid, old_rev));
    if let Err(e) = fs::remove_file(&old_path) {
        tracing::warn!(path = %old_path.display(), error = %e, "could not remove the compacted file");
    }
    tracing::info!(
        vbid = %vb.vbid, from = %old_rev, to = %new_rev, bytes_before, bytes_after = end,
        tombstones, collection_items, "compacted"
    );
    Ok(CompactionResult {
        bytes_before,
        bytes_after: end,
        tombstones_purged: tombstones,
        collection_items_purged: collection_items,
        purge_seqno,
    })
}

/// Applies to `state` (in the new file) the documents and local documents
/// committed between `applied` and `latest` (in the old file).
fn catch_up(
    vb: &CouchVb,
    dst: &CouchFile,
    state: &mut Header,
    applied: &Header,
    latest: &View,
    out: &mut PhysWriter,
    config: &CompactionConfig,
) -> StoreResult<crate::store::WrittenNodes> {
    let file = &latest.file;
    let mut items: Vec<Document> = Vec::new();
    iterate(
        &**file,
        latest.header.by_seqno.as_ref(),
        &seqno_key(applied.high_seqno.next()),
        None,
        &mut |_, v| {
            let (key, rec) = decode_seqno_value(v).map_err(|e| corrupt(file, e))?;
            let value = file.read_value(&rec.value)?;
            let doc = Document {
                key,
                meta: rec.meta,
                value,
            };
            if !config.is_dropped(&doc) {
                items.push(doc);
            }
            Ok(true)
        },
    )?;
    items.sort_by(|a, b| a.key.cmp(&b.key));
    let mut old_local: BTreeMap<Bytes, ()> = BTreeMap::new();
    iterate(dst, state.local.as_ref(), b"", None, &mut |k, _| {
        old_local.insert(k.clone(), ());
        Ok(true)
    })?;
    let mut local: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    iterate(
        &**file,
        latest.header.local.as_ref(),
        b"",
        None,
        &mut |k, v| {
            old_local.remove(k);
            local.insert(String::from_utf8_lossy(k).into_owned(), Some(v.clone()));
            Ok(true)
        },
    )?;
    for k in old_local.into_keys() {
        local.insert(String::from_utf8_lossy(&k).into_owned(), None);
    }
    let max_seqno = items.iter().map(|d| d.meta.seqno).max();
    let prepared = PreparedBatch {
        items,
        local: local.into_iter().collect(),
        max_seqno,
        max_deleted_seqno: None,
    };
    let (header, nodes) = vb.build_commit(dst, state, prepared, out)?;
    state.by_key = header.by_key;
    state.by_seqno = header.by_seqno;
    state.local = header.local;
    state.high_seqno = latest.header.high_seqno;
    Ok(nodes)
}

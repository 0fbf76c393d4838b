//! Maintenance: checkpoints, space reclamation, compaction, rollback,
//! recovery replay, and the background thread that runs what is due.
//!
//! # Checkpoints
//!
//! A checkpoint freezes the vbucket's memtable (a fresh one takes the
//! commits that follow, so writers wait only for that switch), folds the
//! frozen one into the index trees in one pass, and appends the changed
//! nodes and a header to the index file with one `fdatasync`. The header
//! records where in the log replay now starts. A checkpoint that changes
//! more than a quarter of the index, or one that would leave the index file
//! more than [`crate::CouchConfig::index_rewrite_ratio`] times its dense
//! size, writes a new, dense index file instead (streamed, a few MiB of
//! memory at a time) and removes the old one once no reader needs it.
//!
//! # Space reclamation
//!
//! Every segment's bytes and live bytes are counted as commits land (a new
//! version adds to its segment, and takes its predecessor's bytes off the
//! predecessor's segment). A segment that is entirely behind the replay
//! position, with less than [`crate::CouchConfig::reclaim_live_ratio`] of
//! its bytes live (or the least live one, while more than
//! [`crate::CouchConfig::reclaim_garbage_ratio`] of the log is garbage), is
//! reclaimed: its live documents are copied to the head
//! of the log in relocation records (each copy applies only if the document
//! has not changed meanwhile), in batches that hold the writer for one small
//! append each. A segment with nothing live is dropped from the segment
//! table by the second checkpoint after it became empty (so the previous
//! checkpoint stays a rollback point) and its file is removed once no
//! reader pins it.

use crate::block::{BLOCK_SIZE, PhysWriter};
use crate::btree::{
    Action, ActionSlice, Actions, Builder, NodeWriter, SpanList, TreeKind, iterate, modify,
};
use crate::codec::{decode_key_rec, encode_key_rec, encode_seq_rec, seqno_key};
use crate::fdcache::StoreDir;
use crate::file::CouchFile;
use crate::header::{Header, SegmentTable};
use crate::io::{FileIo, sync_dir};
use crate::memtable::{Change, Found, IndexRec, Memtable};
use crate::store::{
    Apply, CouchVb, Counts, Frozen, IndexWriter, MaintSignal, Shared, VbView, View, index_name,
    lock, now_secs, rec_of,
};
use crate::wal::{
    Probe, Record, RecordBuilder, RecordKind, Segment, WalPtr, decode_item_head, encode_locals,
    encode_purges, item_count_prefix, probe, segment_name,
};
use bytes::Bytes;
use kvstore_core::{
    CompactionConfig, CompactionResult, CorruptionKind, DiskKey, DocMeta, Document, RollbackResult,
    Seqno, StoreError, StoreResult,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Bytes of relocated documents per relocation record.
const RELOCATE_BATCH: usize = 256 << 10;
/// Purges per purge record.
const PURGE_BATCH: usize = 4096;
/// Indexes with fewer entries are appended to rather than rewritten for the
/// share of entries a checkpoint changes.
const REWRITE_MIN_ENTRIES: u64 = 4096;

fn corrupt(path: PathBuf, offset: u64, e: crate::codec::DecodeError) -> StoreError {
    StoreError::corrupt(path, offset, e.kind())
}

/// Every local document of an index view.
pub(crate) fn read_locals(view: &View) -> StoreResult<BTreeMap<String, Bytes>> {
    let mut out = BTreeMap::new();
    let path = view.file.path();
    iterate(
        &*view.file,
        view.header.local.as_ref(),
        b"",
        None,
        &mut |k, v| {
            let name = String::from_utf8(k.to_vec()).map_err(|_| {
                StoreError::corrupt(
                    &path,
                    0,
                    CorruptionKind::Malformed {
                        what: "local document name",
                        detail: "not UTF-8".into(),
                    },
                )
            })?;
            out.insert(name, v.clone());
            Ok(true)
        },
    )?;
    Ok(out)
}

/// The segment table of a header.
pub(crate) fn read_table(file: &CouchFile, h: &Header) -> StoreResult<SegmentTable> {
    match h.segments {
        None => Ok(SegmentTable::default()),
        Some(p) => {
            let raw = file.read_chunk(p)?;
            SegmentTable::decode(&raw).map_err(|e| corrupt(file.path(), p.offset, e))
        }
    }
}

/// The first block at or after `from` that starts a record with a valid
/// header and a commit number above `after`.
fn later_record(file: &FileIo, len: u64, from: u64, after: u64) -> StoreResult<Option<u64>> {
    let mut pos = from.next_multiple_of(BLOCK_SIZE);
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let n = ((len - pos) as usize).min(buf.len());
        file.read_at(&mut buf[..n], pos)?;
        for (i, blk) in buf[..n].chunks(BLOCK_SIZE as usize).enumerate() {
            if blk.first() == Some(&crate::wal::MARKER_RECORD)
                && blk.len() > crate::wal::RECORD_HEADER_LEN
            {
                let at = pos + (i as u64) * BLOCK_SIZE;
                if let Ok(Probe::Record(r)) = probe(file, 0, len, at)
                    && r.commit > after
                {
                    return Ok(Some(at));
                }
                // A valid header alone (its payload torn) still proves a
                // later commit began.
                let h = &blk[1..1 + crate::wal::RECORD_HEADER_LEN];
                if h[0..4] == *b"CFWR" {
                    let stored = u32::from_le_bytes([h[36], h[37], h[38], h[39]]);
                    let mut c = [0u8; 8];
                    c.copy_from_slice(&h[8..16]);
                    if stored == crc32c::crc32c(&h[..36]) && u64::from_le_bytes(c) > after {
                        return Ok(Some(at));
                    }
                }
            }
        }
        pos += n as u64;
    }
    Ok(None)
}

/// Reads every record from `(seg, off)` to the end of the log, in order,
/// handing each to `f`. Returns where the log ends: segment, the position
/// after the last record, and how far garbage may reach after it (the
/// writer zeroes it before writing there).
///
/// The log ends at the first block that does not start a valid record. If
/// that block is empty, or damaged with nothing valid after it in the last
/// segment (a torn final commit), that is the end; a damaged or missing
/// record followed by a later one is corruption.
pub(crate) fn replay(
    segments: &BTreeMap<u32, Arc<Segment>>,
    seg: u32,
    off: u64,
    last_commit: u64,
    f: &mut dyn FnMut(&Record) -> StoreResult<()>,
) -> StoreResult<Option<(u32, u64, u64)>> {
    if !segments.contains_key(&seg) {
        return Err(StoreError::corrupt(
            PathBuf::from(segment_name(seg)),
            off,
            CorruptionKind::Malformed {
                what: "log",
                detail: format!("replay starts in segment {seg}, which is missing"),
            },
        ));
    }
    let nos: Vec<u32> = segments.range(seg..).map(|(n, _)| *n).collect();
    let mut last = last_commit;
    let mut tail = None;
    for (i, no) in nos.iter().enumerate() {
        let s = &segments[no];
        let file = s.slot.get()?;
        let len = file.size()?;
        let mut pos = if i == 0 { off } else { BLOCK_SIZE };
        loop {
            match probe(&file, *no, len, pos)? {
                Probe::Record(r) => {
                    // Commit numbers are handed out one by one, and a failed
                    // append takes none: a gap means records went missing.
                    if r.commit != last + 1 {
                        return Err(StoreError::corrupt(
                            file.path(),
                            pos,
                            CorruptionKind::Malformed {
                                what: "log",
                                detail: format!(
                                    "record of commit {} follows commit {last}: records are missing",
                                    r.commit
                                ),
                            },
                        ));
                    }
                    f(&r)?;
                    last = r.commit;
                    pos += r.phys_len;
                }
                Probe::Empty => {
                    if let Some(at) = later_record(&file, len, pos + BLOCK_SIZE, last)? {
                        return Err(StoreError::corrupt(
                            file.path(),
                            pos,
                            CorruptionKind::BadHeaderBeforeValidData { later_offset: at },
                        ));
                    }
                    tail = Some((*no, pos, pos));
                    break;
                }
                Probe::Damaged(kind) => {
                    let later = later_record(&file, len, pos + BLOCK_SIZE, last)?;
                    if let Some(at) = later {
                        tracing::error!(path = %file.path().display(), pos, %kind, "damaged log record before later records");
                        return Err(StoreError::corrupt(
                            file.path(),
                            pos,
                            CorruptionKind::BadHeaderBeforeValidData { later_offset: at },
                        ));
                    }
                    // Later segments may only be spares created ahead of
                    // time, with nothing in them.
                    for later in &nos[i + 1..] {
                        let lf = segments[later].slot.get()?;
                        let ll = lf.size()?;
                        if !matches!(probe(&lf, *later, ll, BLOCK_SIZE)?, Probe::Empty)
                            || later_record(&lf, ll, 2 * BLOCK_SIZE, last)?.is_some()
                        {
                            return Err(StoreError::corrupt(
                                file.path(),
                                pos,
                                CorruptionKind::BadHeaderBeforeValidData {
                                    later_offset: BLOCK_SIZE,
                                },
                            ));
                        }
                    }
                    tracing::warn!(path = %file.path().display(), pos, %kind, "ignoring the torn final commit");
                    return Ok(Some((*no, pos, len)));
                }
            }
        }
    }
    Ok(tail)
}

/// Creates index file `no` in `dir` holding `header` (no trees) and the
/// segment table, synced.
pub(crate) fn write_fresh_index(
    shared: &Shared,
    dir: &Arc<StoreDir>,
    no: u32,
    mut header: Header,
    table: &SegmentTable,
) -> StoreResult<(Arc<CouchFile>, Header)> {
    let name = index_name(no);
    let path = dir.path().join(&name);
    let f = FileIo::create(&path, shared.io.clone())?;
    let mut out = PhysWriter::new(0);
    header.segments = Some(out.write_chunk(&table.encode()));
    crate::header::append_header(&mut out, &mut header, 0, 0);
    f.write_at(out.bytes(), 0)?;
    f.sync()?;
    let end = out.pos();
    let slot = shared.fds.slot(dir, name, true);
    slot.install(f);
    Ok((CouchFile::new(slot, Arc::clone(&shared.nodes), end), header))
}

/// The changes a frozen memtable makes to the three trees, sorted.
struct TreeChanges {
    by_key: Actions,
    by_seqno: Actions,
    local: Actions,
    /// Keys the memtable changed (for the share of the index it touches).
    keys: u64,
}

fn changes_of(mem: &Memtable, locals: &BTreeMap<String, Bytes>) -> TreeChanges {
    let m = mem.read();
    let sorted = m.range(b"", None);
    // Every key and record of the checkpoint goes into one buffer, which
    // the actions of both trees share: 16 bytes an action, and a few
    // allocations per checkpoint.
    let mut buf: Vec<u8> = Vec::with_capacity(sorted.len() * 64);
    let mut by_key = SpanList::with_capacity(sorted.len());
    // (seqno, start and end of its by-seqno record, or u32::MAX for a
    // removal); for one seqno a put comes after the removal of the same
    // seqno (a relocated copy replaces its original).
    let mut seq: Vec<(u64, u32, u32)> = Vec::with_capacity(sorted.len() * 2);
    for (key, kv) in &sorted {
        if let Some(p) = kv.prior_seqno() {
            seq.push((p.0, u32::MAX, u32::MAX));
        }
        let k0 = buf.len();
        buf.extend_from_slice(key);
        let k1 = buf.len();
        match kv.last().change {
            Change::Put(r) => {
                encode_key_rec(&r, &mut buf);
                let v1 = buf.len();
                encode_seq_rec(&r, &mut buf);
                seq.push((r.seqno.0, v1 as u32, buf.len() as u32));
                by_key.push(k0..k1, Some(k1..v1));
            }
            Change::Purge => by_key.push(k0..k1, None),
        }
    }
    drop(sorted);
    seq.sort_unstable_by_key(|e| (e.0, e.1 != u32::MAX));
    let mut by_seqno = SpanList::with_capacity(seq.len());
    for (i, &(s, v0, v1)) in seq.iter().enumerate() {
        // The last entry of a seqno wins.
        if seq.get(i + 1).is_some_and(|n| n.0 == s) {
            continue;
        }
        let k0 = buf.len();
        buf.extend_from_slice(&seqno_key(Seqno(s)));
        let k = k0..buf.len();
        by_seqno.push(k, (v0 != u32::MAX).then_some(v0 as usize..v1 as usize));
    }
    drop(seq);
    let local: Vec<Action> = m
        .locals_changed
        .iter()
        .map(|name| match locals.get(name) {
            Some(v) => Action::Put(Bytes::from(name.clone()), v.clone()),
            None => Action::Remove(Bytes::from(name.clone())),
        })
        .collect();
    let [by_key, by_seqno] = Actions::share(buf, [by_key, by_seqno]);
    TreeChanges {
        by_key,
        by_seqno,
        local: Actions::from_list(&local),
        keys: m.len() as u64,
    }
}

/// Streams the merge of a tree and sorted actions into a builder.
fn rebuild(
    src: &CouchFile,
    root: Option<&crate::header::Root>,
    actions: ActionSlice<'_>,
    kind: TreeKind,
    w: &mut NodeWriter<'_>,
) -> StoreResult<Option<crate::header::Root>> {
    let mut b = Builder::new(kind);
    let mut j = 0;
    iterate(src, root, b"", None, &mut |k, v| {
        while j < actions.len() && actions.key(j) < &k[..] {
            if let Action::Put(ak, av) = actions.get(j) {
                b.push(src, w, ak, av)?;
            }
            j += 1;
        }
        if j < actions.len() && actions.key(j) == &k[..] {
            if let Action::Put(ak, av) = actions.get(j) {
                b.push(src, w, ak, av)?;
            }
            j += 1;
        } else {
            b.push(src, w, k.clone(), v.clone())?;
        }
        Ok(true)
    })?;
    for a in actions.slice(j..actions.len()).iter() {
        if let Action::Put(ak, av) = a {
            b.push(src, w, ak, av)?;
        }
    }
    b.finish(src, w)
}

/// Appends the checkpoint's nodes, segment table and header to the index
/// file, written out a few MiB at a time, and syncs. Returns the new end.
fn append_checkpoint(
    vb: &CouchVb,
    iw: &mut IndexWriter,
    ch: &TreeChanges,
    table: &SegmentTable,
    header: &mut Header,
) -> StoreResult<u64> {
    let cfg = &vb.shared.config;
    iw.clean()?;
    let base = iw.header.clone();
    let f = iw.file.io()?;
    let mut crc = 0u32;
    let mut out = PhysWriter::new(iw.end);
    // Small checkpoints keep what they write for the cache; big ones would
    // hold a second copy of the index in memory.
    let keep = ch.keys < 4096;
    let nodes = {
        let mut flush = |out: &mut PhysWriter| -> StoreResult<()> {
            crc = crc32c::crc32c_append(crc, out.bytes());
            out.flush_to(&f)
        };
        let mut nw = NodeWriter::new(&mut out, cfg.compression, cfg.node_size, keep);
        nw.flush = Some(&mut flush);
        let file = &*iw.file;
        header.by_key = modify(
            file,
            &mut nw,
            TreeKind::ByKey,
            base.by_key,
            ch.by_key.all(),
            &mut |_, _| {},
        )?;
        header.by_seqno = modify(
            file,
            &mut nw,
            TreeKind::BySeqno,
            base.by_seqno,
            ch.by_seqno.all(),
            &mut |_, _| {},
        )?;
        header.local = modify(
            file,
            &mut nw,
            TreeKind::Local,
            base.local,
            ch.local.all(),
            &mut |_, _| {},
        )?;
        std::mem::take(&mut nw.written)
    };
    header.segments = Some(out.write_chunk(&table.encode()));
    header.prev = Some(base.offset);
    crate::header::append_header(&mut out, header, iw.end, crc);
    f.write_at(out.bytes(), out.base())?;
    if cfg.sync {
        f.sync()?;
    }
    let end = out.pos();
    iw.file.set_end(end);
    for (ptr, node) in nodes {
        iw.file.cache_node(ptr, node);
    }
    Ok(end)
}

/// What a checkpoint wrote.
struct Written {
    file: Arc<CouchFile>,
    no: u32,
    end: u64,
    header: Header,
    dropped: Vec<u32>,
    table: SegmentTable,
    rewrote: bool,
}

/// Writes the index for `frozen` on top of `iw`'s header: appended, or a
/// dense new file when `rewrite`.
fn write_index(
    vb: &CouchVb,
    iw: &mut IndexWriter,
    frozen: &Frozen,
    force_rewrite: bool,
) -> StoreResult<Written> {
    let cfg = &vb.shared.config;
    let ch = changes_of(&frozen.mem, &frozen.locals);
    let base = &iw.header;
    let entries = base.by_key.map_or(0, |r| r.reduce.count());
    let dense = base.dense_bytes.max(1 << 20);
    let rewrite = force_rewrite
        || (entries >= REWRITE_MIN_ENTRIES && ch.keys * 4 > entries)
        || (iw.end as f64) > cfg.index_rewrite_ratio * dense as f64;
    let checkpoint = base.commit + 1;
    // The segment table, retiring what has stayed empty for a checkpoint.
    let mut table = SegmentTable::default();
    let mut dropped = Vec::new();
    let mut reclaimed = frozen.reclaimed;
    for s in frozen.segs.values() {
        let mut s = *s;
        if s.no < frozen.wal_seg && s.live == 0 {
            match s.empty_since {
                Some(c) if c < checkpoint => {
                    dropped.push(s.no);
                    reclaimed += s.phys;
                    continue;
                }
                Some(_) => {}
                None => s.empty_since = Some(checkpoint),
            }
        } else {
            s.empty_since = None;
        }
        table.0.push(s);
    }
    let mut header = Header {
        offset: 0,
        vbid: vb.vbid,
        revision: vb.revision,
        prev: None,
        region_start: 0,
        region_crc: 0,
        commit: checkpoint,
        high_seqno: frozen.high,
        purge_seqno: frozen.purge,
        timestamp: now_secs(),
        by_key: None,
        by_seqno: None,
        local: None,
        wal_seg: frozen.wal_seg,
        wal_off: frozen.wal_off,
        next_commit: frozen.next_commit,
        segments: None,
        history_floor: base.history_floor,
        reclaimed,
        dense_bytes: base.dense_bytes,
        dense_entries: base.dense_entries,
    };
    if !rewrite {
        let r = append_checkpoint(vb, iw, &ch, &table, &mut header);
        if r.is_err() {
            // What the failed checkpoint wrote after `end` is cut off now,
            // or before the next commit.
            iw.dirty = true;
            if iw.clean().is_err() {
                vb.index_unclean.store(true, Ordering::Release);
            }
        }
        let end = r?;
        return Ok(Written {
            file: Arc::clone(&iw.file),
            no: iw.no,
            end,
            header,
            dropped,
            table,
            rewrote: false,
        });
    }
    // A dense new file, written as it is built.
    let no = iw.no + 1;
    let name = index_name(no);
    let path = vb.dir.path().join(&name);
    crate::store::remove_file(&path)?;
    let f = FileIo::create(&path, vb.shared.io.clone())?;
    let r = write_dense(
        vb, iw, frozen, &ch, table, dropped, header, checkpoint, no, name, f,
    );
    if r.is_err() {
        // Nothing may find this file at the next open: remove it now, or
        // before the next commit.
        iw.leftover = Some(path);
        if iw.clean().is_err() {
            vb.index_unclean.store(true, Ordering::Release);
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn write_dense(
    vb: &CouchVb,
    iw: &IndexWriter,
    frozen: &Frozen,
    ch: &TreeChanges,
    table: SegmentTable,
    dropped: Vec<u32>,
    mut header: Header,
    checkpoint: u64,
    no: u32,
    name: String,
    f: FileIo,
) -> StoreResult<Written> {
    let cfg = &vb.shared.config;
    let base = &iw.header;
    let mut crc = 0u32;
    let mut out = PhysWriter::new(0);
    {
        let mut flush = |out: &mut PhysWriter| -> StoreResult<()> {
            crc = crc32c::crc32c_append(crc, out.bytes());
            out.flush_to(&f)
        };
        let mut nw = NodeWriter::new(&mut out, cfg.compression, cfg.node_size, false);
        nw.flush = Some(&mut flush);
        let src = &*iw.file;
        header.by_key = rebuild(
            src,
            base.by_key.as_ref(),
            ch.by_key.all(),
            TreeKind::ByKey,
            &mut nw,
        )?;
        header.by_seqno = rebuild(
            src,
            base.by_seqno.as_ref(),
            ch.by_seqno.all(),
            TreeKind::BySeqno,
            &mut nw,
        )?;
        let mut lb = Builder::new(TreeKind::Local);
        for (k, v) in frozen.locals.iter() {
            lb.push(src, &mut nw, Bytes::from(k.clone()), v.clone())?;
        }
        header.local = lb.finish(src, &mut nw)?;
    }
    header.segments = Some(out.write_chunk(&table.encode()));
    header.history_floor = checkpoint;
    header.dense_bytes = out.pos();
    header.dense_entries = header.by_key.map_or(0, |r| r.reduce.count());
    let start = out.base();
    crate::header::append_header(&mut out, &mut header, 0, crc);
    // The region CRC covers the whole file from offset 0: what was flushed
    // (its CRC carried in) and what is still buffered.
    debug_assert!(start <= out.pos());
    f.write_at(out.bytes(), out.base())?;
    f.sync()?;
    sync_dir(&vb.shared.io, &vb.dir.path())?;
    let end = out.pos();
    let slot = vb.shared.fds.slot(&vb.dir, name, true);
    slot.install(f);
    Ok(Written {
        file: CouchFile::new(slot, Arc::clone(&vb.shared.nodes), end),
        no,
        end,
        header,
        dropped,
        table,
        rewrote: true,
    })
}

/// Takes a checkpoint of `vb` (see the module docs). Returns false when
/// there was nothing to do.
pub(crate) fn checkpoint(vb: &CouchVb, iw: &mut IndexWriter, force: bool) -> StoreResult<bool> {
    checkpoint_mode(vb, iw, force, false)
}

fn checkpoint_mode(
    vb: &CouchVb,
    iw: &mut IndexWriter,
    force: bool,
    rewrite: bool,
) -> StoreResult<bool> {
    let frozen = {
        let mut w = lock(&vb.writer);
        // Replay will start at the writer's position: a refused record
        // after it must not come back (found by the ops fuzzer).
        w.wal.recover_if_dirty()?;
        let v = vb.view();
        match &v.frozen {
            Some(f) => Arc::clone(f),
            None => {
                if v.active.is_empty() && !force && !rewrite {
                    return Ok(false);
                }
                let f = Arc::new(Frozen {
                    mem: Arc::clone(&v.active),
                    high: v.high_seqno,
                    purge: v.purge_seqno,
                    locals: Arc::clone(&v.locals),
                    segs: w.segs.clone(),
                    wal_seg: w.wal.seg.no,
                    wal_off: w.wal.pos,
                    next_commit: w.next_commit,
                    reclaimed: v.reclaimed,
                });
                let mut nv = v.fork();
                nv.frozen = Some(Arc::clone(&f));
                nv.active = Arc::new(v.active.successor());
                vb.publish(nv);
                w.since_checkpoint = 0;
                f
            }
        }
    };
    let written = write_index(vb, iw, &frozen, rewrite)?;
    if written.rewrote {
        iw.dirty = false;
    }
    let held = frozen.mem.read().held();
    {
        let mut w = lock(&vb.writer);
        let v = vb.view();
        let mut nv = v.fork();
        nv.index = Arc::new(View::new(Arc::clone(&written.file), written.header.clone()));
        nv.frozen = None;
        if !written.dropped.is_empty() {
            let mut segs = (*v.segments).clone();
            for no in &written.dropped {
                if let Some(s) = segs.remove(no) {
                    s.slot.remove_on_drop();
                }
                w.segs.remove(no);
            }
            nv.segments = Arc::new(segs);
        }
        for s in &written.table.0 {
            if let Some(cur) = w.segs.get_mut(&s.no) {
                cur.empty_since = s.empty_since;
            }
        }
        nv.reclaimed = written.header.reclaimed.max(v.reclaimed);
        nv.disk_bytes = w.disk_bytes(written.end);
        vb.publish(nv);
    }
    if written.rewrote {
        iw.file.slot().remove_on_drop();
        vb.stats.rewrites.fetch_add(1, Ordering::Relaxed);
    }
    iw.file = written.file;
    iw.no = written.no;
    iw.end = written.end;
    iw.header = written.header;
    let _ = vb
        .shared
        .memtables
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
            Some(m.saturating_sub(held))
        });
    vb.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
    *lock(&vb.installed_lock) += 1;
    vb.installed.notify_all();
    Ok(true)
}

/// Reclaims one segment (or, with `all`, any closed segment holding
/// garbage). Returns false when none is due.
pub(crate) fn reclaim_step(vb: &CouchVb, iw: &IndexWriter, all: bool) -> StoreResult<bool> {
    let cfg = &vb.shared.config;
    let replay_seg = iw.header.wal_seg;
    let victim = {
        let w = lock(&vb.writer);
        // Emptied segments are on their way out: not counted.
        let (total, live) = w
            .segs
            .values()
            .filter(|s| s.live > 0 || s.no == w.wal.seg.no)
            .fold((0u64, 0u64), |(t, l), s| (t + s.total, l + s.live));
        let over_size = (total - live.min(total)) as f64 > cfg.reclaim_garbage_ratio * total as f64;
        w.segs
            .values()
            .filter(|s| s.no < replay_seg && s.no != w.wal.seg.no && s.live > 0)
            .filter(|s| {
                let garbage = s.total - s.live.min(s.total);
                all && garbage > 0
                    || (garbage >= cfg.reclaim_min_garbage
                        && (over_size || (s.live as f64) < cfg.reclaim_live_ratio * s.total as f64))
            })
            .min_by(|a, b| {
                (a.live as f64 / a.total.max(1) as f64)
                    .total_cmp(&(b.live as f64 / b.total.max(1) as f64))
            })
            .map(|s| s.no)
    };
    let Some(no) = victim else { return Ok(false) };
    vb.stats.reclaim_started.fetch_add(1, Ordering::Relaxed);
    vb.stats.reclaiming.store(true, Ordering::Release);
    let r = reclaim_segment(vb, no);
    vb.stats.reclaiming.store(false, Ordering::Release);
    r?;
    vb.stats.reclaims.fetch_add(1, Ordering::Relaxed);
    Ok(true)
}

type Candidate = (DiskKey, IndexRec, Bytes);

fn reclaim_segment(vb: &CouchVb, no: u32) -> StoreResult<()> {
    let v = vb.view();
    let Some(seg) = v.segments.get(&no).cloned() else {
        return Ok(());
    };
    let file = seg.slot.get()?;
    let len = file.size()?;
    let mut pos = BLOCK_SIZE;
    let mut batch: Vec<Candidate> = Vec::new();
    let mut bytes = 0usize;
    loop {
        if vb.stop.load(Ordering::SeqCst) || vb.deleted.load(Ordering::SeqCst) {
            return Ok(());
        }
        match probe(&file, no, len, pos)? {
            Probe::Record(r) => {
                pos += r.phys_len;
                if r.kind == RecordKind::Purge {
                    continue;
                }
                let p = r
                    .payload()
                    .map_err(|e| corrupt(file.path().to_path_buf(), r.offset, e))?;
                for (ptr, raw) in p.items {
                    let head = decode_item_head(&raw)
                        .map_err(|e| corrupt(file.path().to_path_buf(), ptr.off, e))?;
                    let view = vb.view();
                    if view
                        .lookup(&head.key)?
                        .is_some_and(|c| c.ptr == ptr && c.seqno == head.meta.seqno)
                    {
                        bytes += raw.len();
                        let rec = rec_of(&head, ptr);
                        batch.push((head.key, rec, raw));
                    }
                }
                if bytes >= RELOCATE_BATCH {
                    relocate(vb, std::mem::take(&mut batch))?;
                    bytes = 0;
                }
            }
            Probe::Empty => break,
            Probe::Damaged(kind) => {
                return Err(StoreError::corrupt(file.path(), pos, kind));
            }
        }
    }
    relocate(vb, batch)?;
    // Every current document of the segment was copied forward, so none of
    // its bytes is live now. Live bytes left are documents the index points
    // at that the segment's records do not hold (a damaged or cut segment):
    // a typed error, not a victim to pick again and again (a compaction of
    // such a store looped forever; found by the couchfile_open fuzzer).
    let left = lock(&vb.writer).segs.get(&no).map_or(0, |s| s.live);
    if left > 0 {
        return Err(StoreError::corrupt(
            file.path(),
            pos,
            CorruptionKind::Malformed {
                what: "log segment",
                detail: format!(
                    "{left} live bytes of segment {no} are in no record the segment holds"
                ),
            },
        ));
    }
    Ok(())
}

/// Copies still-current documents to the head of the log.
fn relocate(vb: &CouchVb, batch: Vec<Candidate>) -> StoreResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut w = lock(&vb.writer);
    vb.check()?;
    let v = vb.view();
    let mut keep = Vec::with_capacity(batch.len());
    for (key, rec, raw) in batch {
        if v.lookup(&key)?
            .is_some_and(|c| c.ptr == rec.ptr && c.seqno == rec.seqno)
        {
            keep.push((key, rec, raw));
        }
    }
    if keep.is_empty() {
        return Ok(());
    }
    let mut rb = RecordBuilder::with_capacity(keep.iter().map(|k| k.2.len()).sum::<usize>() + 16);
    rb.push_raw(&item_count_prefix(keep.len()));
    for (_, _, raw) in &keep {
        rb.push_item_bytes(raw);
    }
    let mut locals = Vec::new();
    encode_locals(&[], &mut locals);
    rb.push_raw(&locals);
    let commit = w.next_commit;
    let rec = rb.seal(RecordKind::Relocate, commit, v.high_seqno);
    let mut new_segments = None;
    let (seg, off) = vb.append(&mut w, &rec, &mut new_segments, &v)?;
    w.next_commit += 1;
    let items: Vec<(DiskKey, IndexRec, WalPtr)> = keep
        .into_iter()
        .zip(&rec.items)
        .map(|((key, old, _), &(rel, len))| {
            let new = IndexRec {
                ptr: WalPtr {
                    seg: seg.no,
                    off: off + rel,
                    len,
                },
                ..old
            };
            (key, new, old.ptr)
        })
        .collect();
    let moved: u64 = items.iter().map(|i| u64::from(i.1.ptr.len)).sum();
    let mut segs = std::mem::take(&mut w.segs);
    let mut apply = Apply {
        view: &v,
        mem: &v.active,
        counts: v.counts,
        segs: &mut segs,
        locals: None,
        high: v.high_seqno,
        purge: v.purge_seqno,
        added_bytes: 0,
    };
    let r = apply.relocate(commit, &items);
    w.segs = std::mem::take(apply.segs);
    vb.finish_apply(&w, &v, apply, commit, new_segments);
    vb.stats.relocated_bytes.fetch_add(moved, Ordering::Relaxed);
    r
}

/// Visits the current version of every document, in key order.
fn for_each_current(
    v: &VbView,
    f: &mut dyn FnMut(&DiskKey, &IndexRec) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut mem: BTreeMap<DiskKey, Found> = BTreeMap::new();
    for m in [Some(&v.active), v.frozen.as_ref().map(|f| &f.mem)]
        .into_iter()
        .flatten()
    {
        let inner = m.read();
        for (k, kv) in inner.range(b"", None) {
            // As of the view's commit (see `CouchVb::get_impl`).
            let found = match kv.at(v.commit).map(|x| x.change) {
                Some(Change::Put(r)) => Found::Rec(r),
                Some(Change::Purge) => Found::Purged,
                None => continue,
            };
            mem.entry(crate::store::mem_key(k)?).or_insert(found);
        }
    }
    let path = v.index.file.path();
    let mut mem_iter = mem.into_iter().peekable();
    iterate(
        &*v.index.file,
        v.index.header.by_key.as_ref(),
        b"",
        None,
        &mut |k, raw| {
            while let Some((mk, _)) = mem_iter.peek() {
                if mk.as_bytes() >= &k[..] {
                    break;
                }
                if let Some((mk, Found::Rec(r))) = mem_iter.next() {
                    f(&mk, &r)?;
                }
            }
            if let Some((mk, _)) = mem_iter.peek()
                && mk.as_bytes() == &k[..]
            {
                if let Some((mk, Found::Rec(r))) = mem_iter.next() {
                    f(&mk, &r)?;
                }
                return Ok(true);
            }
            let key = DiskKey::from_shared(k.clone()).map_err(|e| {
                StoreError::corrupt(
                    &path,
                    0,
                    CorruptionKind::Malformed {
                        what: "by-key tree key",
                        detail: e.to_string(),
                    },
                )
            })?;
            let rec = decode_key_rec(raw).map_err(|e| corrupt(path.clone(), 0, e))?;
            f(&key, &rec)?;
            Ok(true)
        },
    )?;
    for (mk, found) in mem_iter {
        if let Found::Rec(r) = found {
            f(&mk, &r)?;
        }
    }
    Ok(())
}

fn doc_of(key: &DiskKey, rec: &IndexRec) -> Document {
    Document {
        key: key.clone(),
        meta: DocMeta {
            seqno: rec.seqno,
            expiry: rec.expiry,
            deleted: rec.deleted,
            ..DocMeta::default()
        },
        value: Bytes::new(),
    }
}

/// The contract's compaction: purges per `config`, rewrites the index
/// densely, copies the live documents out of every closed segment that
/// holds garbage, and removes those segments.
pub(crate) fn compact(vb: &CouchVb, config: &CompactionConfig) -> StoreResult<CompactionResult> {
    if config.is_cancelled() {
        return Err(StoreError::Cancelled);
    }
    let mut iw = lock(&vb.maint);
    vb.check()?;
    let cancelled = || config.is_cancelled() || vb.stop.load(Ordering::SeqCst);
    let v = vb.view();
    let bytes_before = v.disk_bytes;
    let high = v.high_seqno;
    let mut purges: Vec<(DiskKey, Seqno, bool)> = Vec::new();
    for_each_current(&v, &mut |key, rec| {
        let doc = doc_of(key, rec);
        if config.is_dropped(&doc) {
            purges.push((key.clone(), rec.seqno, false));
        } else if config.purges_tombstone(&doc, high) {
            purges.push((key.clone(), rec.seqno, true));
        }
        Ok(())
    })?;
    drop(v);
    if cancelled() {
        return Err(StoreError::Cancelled);
    }
    let (mut tombstones, mut collection_items) = (0u64, 0u64);
    for chunk in purges.chunks(PURGE_BATCH) {
        let (t, c) = purge(vb, chunk)?;
        tombstones += t;
        collection_items += c;
    }
    // Close the current segment, so the checkpoint below leaves the whole
    // log so far behind the replay position, reclaimable.
    vb.seal_segment()?;
    checkpoint_mode(vb, &mut iw, true, true)?;
    while !cancelled() && reclaim_step(vb, &iw, true)? {}
    // Two checkpoints: the first marks the emptied segments, the second
    // drops them.
    checkpoint(vb, &mut iw, true)?;
    checkpoint(vb, &mut iw, true)?;
    let v = vb.view();
    Ok(CompactionResult {
        bytes_before,
        bytes_after: v.disk_bytes,
        tombstones_purged: tombstones,
        collection_items_purged: collection_items,
        purge_seqno: v.purge_seqno,
    })
}

/// Writes one purge record; returns (tombstones, collection items) purged.
fn purge(vb: &CouchVb, chunk: &[(DiskKey, Seqno, bool)]) -> StoreResult<(u64, u64)> {
    let mut w = lock(&vb.writer);
    vb.check()?;
    let v = vb.view();
    let mut list = Vec::with_capacity(chunk.len());
    let (mut t, mut c) = (0u64, 0u64);
    let mut purge_seqno = v.purge_seqno;
    for (key, seqno, tomb) in chunk {
        if v.lookup(key)?.is_some_and(|r| r.seqno == *seqno) {
            list.push((key.clone(), *seqno));
            if *tomb {
                t += 1;
                purge_seqno = purge_seqno.max(*seqno);
            } else {
                c += 1;
            }
        }
    }
    if list.is_empty() {
        return Ok((0, 0));
    }
    let mut raw = Vec::new();
    encode_purges(&list, purge_seqno, &mut raw);
    let mut rb = RecordBuilder::with_capacity(raw.len());
    rb.push_raw(&raw);
    let commit = w.next_commit;
    let rec = rb.seal(RecordKind::Purge, commit, v.high_seqno);
    let mut new_segments = None;
    vb.append(&mut w, &rec, &mut new_segments, &v)?;
    w.next_commit += 1;
    let mut segs = std::mem::take(&mut w.segs);
    let mut apply = Apply {
        view: &v,
        mem: &v.active,
        counts: v.counts,
        segs: &mut segs,
        locals: None,
        high: v.high_seqno,
        purge: v.purge_seqno,
        added_bytes: 0,
    };
    let r = apply.purge(commit, &list, purge_seqno);
    w.segs = std::mem::take(apply.segs);
    vb.finish_apply(&w, &v, apply, commit, new_segments);
    r.map(|()| (t, c))
}

/// The keys a record changes.
fn record_keys(rec: &Record, out: &mut BTreeSet<DiskKey>) -> StoreResult<()> {
    let path = PathBuf::from(segment_name(rec.seg));
    let p = rec
        .payload()
        .map_err(|e| corrupt(path.clone(), rec.offset, e))?;
    match rec.kind {
        RecordKind::Commit => {
            for (ptr, raw) in &p.items {
                let h = decode_item_head(raw).map_err(|e| corrupt(path.clone(), ptr.off, e))?;
                out.insert(h.key);
            }
        }
        RecordKind::Purge => out.extend(p.purges.into_iter().map(|(k, _)| k)),
        RecordKind::Relocate => {}
    }
    Ok(())
}

/// Rolls `vb` back to the newest commit at or below `to` (see the crate
/// docs): from the newest usable index header at or below it, replaying
/// the log up to that commit, and writing the result as a checkpoint.
pub(crate) fn rollback(vb: &CouchVb, to: Seqno) -> StoreResult<RollbackResult> {
    let mut iw = lock(&vb.maint);
    vb.check()?;
    if vb.view().frozen.is_some() {
        checkpoint(vb, &mut iw, false)?;
    }
    let mut w = lock(&vb.writer);
    w.wal.recover_if_dirty()?;
    let v = vb.view();
    if v.high_seqno <= to {
        return Ok(RollbackResult {
            high_seqno: v.high_seqno,
            ..RollbackResult::default()
        });
    }
    // The newest header at or below `to` whose log is all still there.
    let floor = iw.header.history_floor;
    let mut base: Option<(Header, SegmentTable)> = None;
    let mut h = iw.header.clone();
    loop {
        if h.commit < floor {
            break;
        }
        if h.high_seqno <= to {
            let table = read_table(&iw.file, &h)?;
            let usable = v.segments.contains_key(&h.wal_seg)
                && table.0.iter().all(|s| v.segments.contains_key(&s.no));
            if usable {
                base = Some((h, table));
            }
            break;
        }
        match h.prev {
            Some(p) if h.commit > floor => h = iw.file.read_header(p)?,
            _ => break,
        }
    }
    let mut discarded: BTreeSet<DiskKey> = BTreeSet::new();
    let to_zero = base.is_none();
    let (base_header, mut segs) = match &base {
        Some((h, t)) => (h.clone(), t.0.iter().map(|s| (s.no, *s)).collect()),
        None => (
            Header {
                vbid: vb.vbid,
                revision: vb.revision,
                ..Header::default()
            },
            BTreeMap::new(),
        ),
    };
    let base_view = View::new(Arc::clone(&iw.file), base_header.clone());
    let locals = read_locals(&base_view)?;
    let reduce = base_header.by_key.map(|r| r.reduce).unwrap_or_default();
    let bv = VbView {
        index: Arc::new(base_view),
        frozen: None,
        active: Arc::new(v.active.successor()),
        segments: Arc::clone(&v.segments),
        locals: Arc::new(locals),
        high_seqno: base_header.high_seqno,
        purge_seqno: base_header.purge_seqno,
        commit: 0,
        counts: Counts {
            live: reduce.live,
            deleted: reduce.deleted,
            bytes: reduce.bytes,
        },
        disk_bytes: 0,
        reclaimed: v.reclaimed,
    };
    let mem = Arc::clone(&bv.active);
    let mut apply = Apply {
        view: &bv,
        mem: &mem,
        counts: bv.counts,
        segs: &mut segs,
        locals: None,
        high: bv.high_seqno,
        purge: bv.purge_seqno,
        added_bytes: 0,
    };
    if base.is_some() {
        let mut stopped = false;
        replay(
            &v.segments,
            base_header.wal_seg,
            base_header.wal_off,
            base_header.next_commit.saturating_sub(1),
            &mut |rec| {
                if !stopped && rec.kind == RecordKind::Commit && rec.high > to {
                    stopped = true;
                }
                if stopped {
                    record_keys(rec, &mut discarded)
                } else {
                    apply.record(rec)
                }
            },
        )?;
    } else {
        for_each_current(&v, &mut |k, _| {
            discarded.insert(k.clone());
            Ok(())
        })?;
        // Tombstones purged, and keys only in records: every record since
        // the oldest header this file still has is gone too.
        let oldest = v.index.header.clone();
        let _ = replay(
            &v.segments,
            oldest.wal_seg,
            oldest.wal_off,
            oldest.next_commit.saturating_sub(1),
            &mut |rec| record_keys(rec, &mut discarded),
        );
    }
    let Apply {
        locals: new_locals,
        high,
        purge,
        ..
    } = apply;
    let target_locals = Arc::new(new_locals.unwrap_or_else(|| (*bv.locals).clone()));
    // Write the target state as a checkpoint over the base header's trees.
    let frozen = Frozen {
        mem: Arc::clone(&mem),
        high,
        purge,
        locals: Arc::clone(&target_locals),
        segs: w.segs.clone(),
        wal_seg: w.wal.seg.no,
        wal_off: w.wal.pos,
        next_commit: w.next_commit,
        reclaimed: v.reclaimed,
    };
    let ch = changes_of(&frozen.mem, &frozen.locals);
    let cfg = &vb.shared.config;
    let mut out = PhysWriter::new(iw.end);
    let mut nw = NodeWriter::new(&mut out, cfg.compression, cfg.node_size, false);
    let file = &*iw.file;
    let by_key = modify(
        file,
        &mut nw,
        TreeKind::ByKey,
        base_header.by_key,
        ch.by_key.all(),
        &mut |_, _| {},
    )?;
    let by_seqno = modify(
        file,
        &mut nw,
        TreeKind::BySeqno,
        base_header.by_seqno,
        ch.by_seqno.all(),
        &mut |_, _| {},
    )?;
    let local = modify(
        file,
        &mut nw,
        TreeKind::Local,
        base_header.local,
        ch.local.all(),
        &mut |_, _| {},
    )?;
    drop(nw);
    // Live bytes per segment at the target: the base's, as the replay
    // left them; sizes as they are now.
    let mut table = SegmentTable::default();
    for s in w.segs.values_mut() {
        s.live = segs.get(&s.no).map_or(0, |b| b.live).min(s.total);
        s.empty_since = None;
        table.0.push(*s);
    }
    let checkpoint_no = iw.header.commit + 1;
    let mut header = Header {
        offset: 0,
        vbid: vb.vbid,
        revision: vb.revision,
        prev: Some(iw.header.offset),
        region_start: 0,
        region_crc: 0,
        commit: checkpoint_no,
        high_seqno: high,
        purge_seqno: purge,
        timestamp: now_secs(),
        by_key,
        by_seqno,
        local,
        wal_seg: w.wal.seg.no,
        wal_off: w.wal.pos,
        next_commit: w.next_commit,
        segments: Some(out.write_chunk(&table.encode())),
        // Older headers are no rollback points any more: the log after them
        // holds what this rollback discarded.
        history_floor: checkpoint_no,
        reclaimed: v.reclaimed,
        dense_bytes: iw.header.dense_bytes,
        dense_entries: iw.header.dense_entries,
    };
    crate::header::append_header(&mut out, &mut header, iw.end, 0);
    if let Err(e) = iw.append(out.bytes(), cfg.sync) {
        if iw.unclean() {
            vb.index_unclean.store(true, Ordering::Release);
        }
        return Err(e);
    }
    let end = out.pos();
    iw.file.set_end(end);
    iw.end = end;
    iw.header = header.clone();
    let reduce = header.by_key.map(|r| r.reduce).unwrap_or_default();
    let old_held = v.active.read().held();
    let mut nv = v.fork();
    nv.index = Arc::new(View::new(Arc::clone(&iw.file), header));
    nv.frozen = None;
    nv.active = Arc::new(v.active.successor());
    nv.locals = target_locals;
    nv.high_seqno = high;
    nv.purge_seqno = purge;
    nv.counts = Counts {
        live: reduce.live,
        deleted: reduce.deleted,
        bytes: reduce.bytes,
    };
    nv.disk_bytes = w.disk_bytes(end);
    vb.publish(nv);
    w.since_checkpoint = 0;
    let _ = vb
        .shared
        .memtables
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
            Some(m.saturating_sub(old_held))
        });
    Ok(RollbackResult {
        high_seqno: high,
        discarded: discarded.into_iter().collect(),
        to_zero,
    })
}

impl CouchVb {
    /// Runs one due maintenance step (a checkpoint or a segment's
    /// reclamation). Returns false when nothing was due, or the handle is
    /// busy, backing off or going away.
    pub fn maintain_once(&self) -> StoreResult<bool> {
        if self.deleted.load(Ordering::SeqCst) || self.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if lock(&self.not_before).is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        let Ok(mut iw) = self.maint.try_lock() else {
            return Ok(false);
        };
        if self.stop.load(Ordering::SeqCst) || self.shared.closed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let r = self.step(&mut iw);
        match &r {
            Ok(_) => *lock(&self.not_before) = None,
            Err(e) => {
                let n = self.stats.failures.fetch_add(1, Ordering::Relaxed).min(6);
                let wait = Duration::from_millis(100 << n);
                tracing::warn!(vbid = %self.vbid, error = %e, ?wait, "maintenance step failed; retrying later");
                *lock(&self.not_before) = Some(Instant::now() + wait);
            }
        }
        r
    }

    /// Zero-fills space ahead of the log writer, or creates the next
    /// segment ahead of time, when due: the latency-critical chores, done
    /// first and without the index's lock.
    fn log_chores(&self) -> StoreResult<bool> {
        let due = lock(&self.writer).wal.prealloc_due();
        if let Some((seg, p, from, to)) = due {
            crate::wal::prealloc_fill(&seg, &p, from, to)?;
            return Ok(true);
        }
        let next = {
            let w = lock(&self.writer);
            (w.wal.pos > w.wal.segment_bytes / 4 * 3).then(|| w.wal.seg.no + 1)
        };
        if let Some(no) = next {
            // The writer's lock is not held here: a writer that starts the
            // next segment meanwhile waits on this lock for the creation
            // and takes the result.
            let mut spare = lock(&self.spare);
            if spare.is_none() && self.head_seg.load(Ordering::Acquire) + 1 == no {
                *spare = Some(crate::wal::create_segment(
                    &self.shared.fds,
                    &self.dir,
                    self.vbid,
                    self.revision,
                    no,
                )?);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn step(&self, iw: &mut IndexWriter) -> StoreResult<bool> {
        // Inline maintenance runs on the commit's path, where zero-filling
        // ahead would only add a sync: the commit's own write extends the
        // segment then.
        if self.shared.config.background && self.log_chores()? {
            return Ok(true);
        }
        let cfg = &self.shared.config;
        let v = self.view();
        let (since, retire) = {
            let w = lock(&self.writer);
            let retire = w
                .segs
                .values()
                .any(|s| s.no < iw.header.wal_seg && s.live == 0 && s.no != w.wal.seg.no);
            (w.since_checkpoint, retire)
        };
        let due = v.frozen.is_some()
            || v.active.bytes() > cfg.memtable_bytes
            || since > cfg.checkpoint_log_bytes
            || (self.shared.memtables.load(Ordering::Relaxed) > cfg.memtable_budget
                && v.active.bytes() > cfg.memtable_bytes / 8);
        drop(v);
        if due {
            return checkpoint(self, iw, false);
        }
        if reclaim_step(self, iw, false)? {
            return Ok(true);
        }
        if retire {
            return checkpoint(self, iw, true);
        }
        Ok(false)
    }

    /// Takes a checkpoint now (tests, tools, shutdown). Returns false when
    /// there was nothing to do.
    pub fn checkpoint(&self) -> StoreResult<bool> {
        self.check()?;
        let mut iw = lock(&self.maint);
        checkpoint(self, &mut iw, false)
    }
}

/// The maintenance thread: runs due steps of every open vbucket, the
/// biggest memtables first when memory is over budget.
pub(crate) fn run(weak: &Weak<Shared>, signal: &MaintSignal) {
    loop {
        let mut did = false;
        {
            let Some(shared) = weak.upgrade() else { return };
            let mut handles = shared.all_handles();
            drop(shared);
            handles.sort_by_key(|h| std::cmp::Reverse(h.view().active.bytes()));
            for h in &handles {
                if let Ok(true) = h.maintain_once() {
                    did = true;
                }
            }
        }
        let wait = if did {
            Duration::ZERO
        } else {
            Duration::from_millis(200)
        };
        if !signal.wait(wait) {
            return;
        }
    }
}

//! The plugin's state: per-relation plans and open batches, and the logic
//! that turns each decoded change into a row.
//!
//! Every open batch is flushed at commit, in the order the transaction
//! first touched each table (unless `flush_at_commit` is off: then the
//! pgcdc worker flushes, after a linger time or when it has caught up with
//! the WAL, and batches span transactions). Inside a transaction, when one
//! table's batch reaches `batch_rows` or `batch_bytes` (or, with
//! `flush_on_table_change`, another table's row follows), every open batch
//! is flushed: after such a flush every row decoded so far has been
//! written, which the worker publishes so that merging readers can pass a
//! transaction larger than a ring. Rows of different tables may arrive in
//! a different order than they were written inside one transaction; each
//! row's `_lsn` gives the exact order.

use super::catalog::RelationPlan;
use super::datum::{self, Read};
use super::error::PluginError;
use super::partition::Conversion;
use super::publication::{unfiltered, Actions, Publications};
use super::watermarks::{Delivered, Watermarks, Window};
use crate::report::OrReport;
use arrow_array::RecordBatch;
use pgcdc_encode::batch::{ChangeBatchBuilder, ChangeSchema, Image, Row, RowMeta};
use pgcdc_encode::column::PushError;
use pgcdc_encode::ipc;
use pgcdc_encode::options::Options;
use pgcdc_encode::pgformat::datetime;
use pgcdc_reader::contract::Op;
use pgcdc_reader::ring::file;
use pgcdc_reader::snapshot::{
    failed_file_name, reconcile, Marker, MarkerKind, Watermark, COMPLETE, MESSAGE_PREFIX, META_COMMIT_LSN,
    META_SNAPSHOT, META_SNAPSHOT_ID,
};
use pgrx::pg_sys;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bumped by every relcache and publication invalidation; a relation entry
/// seen at an older epoch is re-described before use. Coarse on purpose:
/// invalidations come only with DDL, and re-describing is cheap.
static INVALIDATION_EPOCH: AtomicU64 = AtomicU64::new(1);

pub fn invalidate() {
    INVALIDATION_EPOCH.fetch_add(1, Ordering::Relaxed);
}

fn epoch() -> u64 {
    INVALIDATION_EPOCH.load(Ordering::Relaxed)
}

/// What a message holds, for a writer that routes messages by table (the
/// pgcdc worker reads it in its write callback).
#[derive(Clone)]
pub struct Message {
    pub schema: Arc<ChangeSchema>,
    /// The rows, as encoded in the message.
    pub batch: RecordBatch,
    /// Whether the last row's transaction has no more rows to come (it
    /// committed before the transaction being decoded, or decoding is
    /// between transactions).
    pub ends_transaction: bool,
    /// On the last message of a flush inside a transaction: (its commit
    /// LSN, the LSN of the last change decoded), every row up to which has
    /// now been written.
    pub synced: Option<(u64, u64)>,
    /// For a batch of no rows (a marker: a table's snapshot is complete),
    /// the commit LSN of the transaction it belongs to, its place.
    pub marker: Option<u64>,
}

thread_local! {
    static CURRENT_MESSAGE: std::cell::Cell<Option<Message>> = const { std::cell::Cell::new(None) };
}

/// The message being written, during a write callback.
pub fn current_message() -> Option<Message> {
    CURRENT_MESSAGE.with(|m| {
        let message = m.take();
        m.set(message.clone());
        message
    })
}

/// How often to report progress to a walsender while changes are filtered
/// out, so that it can send keepalives (pgoutput's threshold).
const PROGRESS_EVERY: u32 = 100;

/// Relation OIDs are distinct small integers, looked up on every change: a
/// multiplicative hash does, where SipHash showed up in profiles.
#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type RelationMap<V> = HashMap<pg_sys::Oid, V, BuildHasherDefault<OidHasher>>;

/// A decoded relation: what is published of it and where its rows go.
struct Source {
    epoch: u64,
    actions: Actions,
    /// The relation its rows are reported as: itself, or the ancestor a
    /// publication publishes it through.
    target: pg_sys::Oid,
    /// For a partition published through an ancestor.
    conversion: Option<Conversion>,
    /// `natts` of the relation's descriptor, to notice a changed one.
    natts: usize,
}

/// A reported relation at one schema version, and its open batch.
struct Target {
    epoch: u64,
    plan: RelationPlan,
    batch: ChangeBatchBuilder,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

pub struct Decoder {
    options: Options,
    publications: Option<Publications>,
    sources: RelationMap<Source>,
    targets: RelationMap<Target>,
    /// Targets with rows in the current transaction, first touch first.
    pending: Vec<pg_sys::Oid>,
    /// The target of the last row, for `flush_on_table_change`.
    last_target: Option<pg_sys::Oid>,
    /// The commit LSN of the transaction being replayed, between its begin
    /// and commit callbacks.
    current: Option<u64>,
    /// The LSN of the last change decoded.
    last_lsn: u64,
    wrote: bool,
    changes_since_progress: u32,
    /// Parent of the plans' and conversions' contexts: the decoding context.
    cache_context: pg_sys::MemoryContext,
    /// Reset after every change: detoasted copies, converted tuples and
    /// output-function text.
    change_context: pg_sys::MemoryContext,
    /// With `snapshot_markers`: the snapshot windows of the stream.
    watermarks: Option<Watermarks>,
}

impl Decoder {
    /// The decoder of slot `slot`; its snapshot chunks (with
    /// `snapshot_markers`) are in `snapshot_dir`.
    ///
    /// # Safety
    /// `context` must be the decoding context's memory context.
    pub unsafe fn new(options: Options, context: pg_sys::MemoryContext, slot: &str, snapshot_dir: PathBuf) -> Decoder {
        // SAFETY: creating a child of a live context.
        let change_context = unsafe {
            pg_sys::AllocSetContextCreateInternal(
                context,
                c"wal2arrow change".as_ptr(),
                0,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            )
        };
        let watermarks = options.snapshot_markers.then(|| Watermarks::new(slot.to_owned(), snapshot_dir));
        Decoder {
            publications: options.publication_names.as_deref().map(|n| Publications::new(n, options.partition_root)),
            options,
            sources: RelationMap::default(),
            targets: RelationMap::default(),
            pending: Vec::new(),
            last_target: None,
            current: None,
            last_lsn: 0,
            wrote: false,
            changes_since_progress: 0,
            cache_context: context,
            change_context,
            watermarks,
        }
    }

    /// Open batches (and the last table, for `flush_on_table_change`)
    /// carry over from earlier transactions when `flush_at_commit` is off.
    pub fn begin(&mut self, commit_lsn: u64) {
        self.current = Some(commit_lsn);
        self.wrote = false;
    }

    /// Decodes one insert, update or delete.
    ///
    /// # Safety
    /// Arguments as PostgreSQL passes them to a change callback.
    pub unsafe fn change(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        relation: pg_sys::Relation,
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.progress(ctx, false);
            let op = match (*change).action {
                pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_INSERT => Op::Insert,
                pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_UPDATE => Op::Update,
                pg_sys::ReorderBufferChangeType::REORDER_BUFFER_CHANGE_DELETE => Op::Delete,
                _ => return,
            };
            let relid = self.refresh(ctx, relation);
            let source = &self.sources[&relid];
            if !source.actions.allows(op) {
                return;
            }
            let tp = (*change).data.tp;
            let (new, old) = (crate::majors::change_tuple(tp.newtuple), crate::majors::change_tuple(tp.oldtuple));
            let (new, old) = match op {
                Op::Insert => (new, std::ptr::null_mut()),
                Op::Update => (new, old),
                _ => (old, old),
            };
            let target_oid = source.target;
            let include_before = self.options.include_before;
            let meta = row_meta(op, (*change).lsn, txn);
            self.last_lsn = (*change).lsn;
            self.before_row(ctx, target_oid);
            let source = &self.sources[&relid];
            let (desc, conversion) = match &source.conversion {
                Some(c) => (c.ancestor_desc(), Some(c)),
                None => ((*relation).rd_att, None),
            };
            let target = self.targets.get_mut(&target_oid).expect("source() prepared the target");
            let guard = ContextGuard::enter(self.change_context);
            let mut row = target.batch.row(meta);
            let mut image = |image, tuple: pg_sys::HeapTuple| {
                fill(&mut row, image, tuple, desc, conversion, &target.plan, &mut target.values, &mut target.nulls)
            };
            image(Image::New, new);
            if include_before && !old.is_null() {
                image(Image::Old, old);
            }
            row.finish();
            drop(guard);
            self.after_row(ctx, target_oid);
        }
    }

    /// Decodes a TRUNCATE: one `t` row per truncated table.
    ///
    /// # Safety
    /// Arguments as PostgreSQL passes them to a truncate callback.
    pub unsafe fn truncate(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        relations: &[pg_sys::Relation],
        change: *mut pg_sys::ReorderBufferChange,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.progress(ctx, false);
            let meta = row_meta(Op::Truncate, (*change).lsn, txn);
            self.last_lsn = (*change).lsn;
            for &relation in relations {
                let relid = self.refresh(ctx, relation);
                let source = &self.sources[&relid];
                // A partition published through its root is truncated with
                // it: the root's own row reports that (as in pgoutput).
                if !source.actions.allows(Op::Truncate) || source.conversion.is_some() {
                    continue;
                }
                let target_oid = source.target;
                self.before_row(ctx, target_oid);
                let target = self.targets.get_mut(&target_oid).expect("source() prepared the target");
                let mut row = target.batch.row(meta);
                (0..target.plan.columns.len()).for_each(|i| row.null(Image::New, i));
                row.finish();
                self.after_row(ctx, target_oid);
            }
        }
    }

    /// A logical message: with `snapshot_markers`, this stream's snapshot
    /// watermarks (every other message is not a row: ignored). Every row
    /// decoded before a watermark is written first, so that a window holds
    /// exactly the changes between its watermarks.
    ///
    /// # Safety
    /// Arguments as PostgreSQL passes them to a message callback.
    pub unsafe fn message(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        txn: *mut pg_sys::ReorderBufferTXN,
        lsn: pg_sys::XLogRecPtr,
        transactional: bool,
        prefix: &std::ffi::CStr,
        content: &[u8],
    ) {
        if !transactional || prefix.to_bytes() != MESSAGE_PREFIX.as_bytes() {
            return;
        }
        let Some(marker) = self.watermarks.as_mut().and_then(|w| w.accept(content)) else { return };
        // SAFETY: forwarded from the caller; a transactional message comes
        // inside its committed transaction, whose commit fields are set.
        unsafe {
            self.progress(ctx, false);
            self.last_lsn = lsn;
            self.flush_all(ctx);
            let meta = row_meta(Op::Read, lsn, txn);
            let Some(watermarks) = self.watermarks.as_mut() else { return };
            let dir = watermarks.dir().to_owned();
            match marker.kind {
                MarkerKind::Low => watermarks.low(&marker, lsn),
                MarkerKind::High => {
                    // Sent before a crash, the chunk is sent again from
                    // the file it was renamed to.
                    let (unsent, sent) = (dir.join(marker.chunk_file_name()), dir.join(marker.sent_file_name()));
                    let path = if unsent.exists() { unsent.clone() } else { sent.clone() };
                    let delivered = match watermarks.high(&marker, meta.commit_lsn) {
                        Some(window) => self.deliver_chunk(ctx, &marker, &window, &path, meta),
                        // Read while it was cancelled: the file goes.
                        None if watermarks.ended(marker.snapshot) => Ok(()),
                        // Decoded again after a crash: the consumers have it.
                        None if watermarks.was_sent(&marker) => Ok(()),
                        None => Err("its low watermark was not decoded before it".to_owned()),
                    };
                    if let Err(why) = delivered {
                        fail(&dir, &marker, &why);
                    }
                    let path = if path == unsent && std::fs::rename(&unsent, &sent).is_ok() { sent } else { path };
                    self.watermarks_mut().deliver(meta.commit_lsn, vec![path]);
                }
                MarkerKind::Reset => self.reset(ctx, &marker, row_meta(Op::Truncate, lsn, txn)),
                MarkerKind::Done | MarkerKind::Cancel => {
                    watermarks.end(&marker);
                    if marker.kind == MarkerKind::Done && !dir.join(failed_file_name(marker.snapshot)).exists() {
                        self.complete(ctx, &marker, meta);
                    }
                    let files = self.watermarks_mut().files_of(marker.snapshot);
                    self.watermarks_mut().deliver(meta.commit_lsn, files);
                }
            }
        }
    }

    /// A `t` row on the routes of the reset table (if the stream still
    /// publishes it): the stream lost changes of it, and a snapshot
    /// follows.
    unsafe fn reset(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, marker: &Marker, meta: RowMeta) {
        // SAFETY: forwarded from the caller.
        let Some(oid) = (unsafe { self.snapshot_target(ctx, marker.relid) }) else { return };
        // SAFETY: as for a decoded TRUNCATE.
        unsafe { self.before_row(ctx, oid) };
        let target = self.targets.get_mut(&oid).expect("snapshot_target prepared it");
        let mut row = target.batch.row(meta);
        (0..target.plan.columns.len()).for_each(|i| row.null(Image::New, i));
        row.finish();
        // SAFETY: as above.
        unsafe { self.after_row(ctx, oid) };
    }

    fn watermarks_mut(&mut self) -> &mut Watermarks {
        self.watermarks.as_mut().expect("only called with snapshot markers on")
    }

    /// The target of a snapshot's table `relid`, prepared as for a change
    /// (the stream's schema of it at this point of the WAL); None if the
    /// stream does not publish it (any more).
    unsafe fn snapshot_target(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, relid: u32) -> Option<pg_sys::Oid> {
        let oid = pg_sys::Oid::from(relid);
        // SAFETY: inside decoding: the relation is opened under the
        // historic snapshot, described, and closed again.
        unsafe {
            let relation = pg_sys::RelationIdGetRelation(oid);
            if relation.is_null() {
                return None;
            }
            let now = epoch();
            let published = match &mut self.publications {
                Some(publications) => publications.published(relation, now),
                None => unfiltered(relation, self.options.partition_root),
            };
            let ours = published.actions.allows(Op::Read) && published.as_ancestor.is_none();
            if ours {
                self.prepare_target(ctx, relation, now);
            }
            pg_sys::RelationClose(relation);
            ours.then_some(oid)
        }
    }

    /// Writes a chunk's rows, reconciled with its window, as `r` rows at
    /// the high watermark's place, in messages of the batch bounds.
    unsafe fn deliver_chunk(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        marker: &Marker,
        window: &Window,
        path: &std::path::Path,
        meta: RowMeta,
    ) -> Result<(), String> {
        // SAFETY: forwarded from the caller.
        let oid = unsafe { self.snapshot_target(ctx, marker.relid) }
            .ok_or_else(|| format!("the stream does not publish the table with OID {} any more", marker.relid))?;
        let target = self.targets.get(&oid).expect("snapshot_target prepared it");
        let schema = target.batch.schema().clone();
        let key: Vec<String> =
            target.plan.spec.partition_key.iter().map(|i| target.plan.spec.columns[*i].name.clone()).collect();
        let bytes = file::read_private(path).map_err(|e| e.to_string())?;
        let chunks = ipc::read_stream(&bytes).map_err(|e| e.to_string())?;
        let chunk = match &chunks[..] {
            [one] => one.clone(),
            _ => return Err(format!("{} holds {} batches, not one", path.display(), chunks.len())),
        };
        let at = Watermark {
            lsn: meta.lsn,
            commit_lsn: meta.commit_lsn,
            xid: meta.xid,
            commit_ts_us: datetime::timestamp(meta.commit_time).unwrap_or(meta.commit_time),
        };
        let rows = reconcile(schema.arrow(), &chunk, &window.batches, &key, at).map_err(|e| e.to_string())?;
        let per_message = rows_per_message(&rows, self.options.batch_rows, self.options.batch_bytes);
        let mut offset = 0;
        while offset < rows.num_rows() {
            let length = per_message.min(rows.num_rows() - offset);
            let last = offset + length == rows.num_rows();
            let message = Message {
                schema: schema.clone(),
                batch: rows.slice(offset, length),
                ends_transaction: false,
                synced: last.then_some((meta.commit_lsn, self.last_lsn)),
                marker: None,
            };
            // SAFETY: forwarded from the caller.
            unsafe { write_message(ctx, message) };
            self.wrote = true;
            offset += length;
        }
        Ok(())
    }

    /// Writes the batch of no rows that tells readers of the table's
    /// route that its snapshot is complete.
    unsafe fn complete(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, marker: &Marker, meta: RowMeta) {
        // SAFETY: forwarded from the caller.
        let Some(oid) = (unsafe { self.snapshot_target(ctx, marker.relid) }) else { return };
        let schema = self.targets[&oid].batch.schema().clone();
        let mut metadata = schema.arrow().metadata().clone();
        metadata.insert(META_SNAPSHOT.to_owned(), COMPLETE.to_owned());
        metadata.insert(META_SNAPSHOT_ID.to_owned(), marker.snapshot.to_string());
        metadata.insert(META_COMMIT_LSN.to_owned(), meta.commit_lsn.to_string());
        let arrow = Arc::new(schema.arrow().as_ref().clone().with_metadata(metadata));
        let message = Message {
            schema,
            batch: RecordBatch::new_empty(arrow),
            ends_transaction: false,
            synced: None,
            marker: Some(meta.commit_lsn),
        };
        // SAFETY: forwarded from the caller.
        unsafe { write_message(ctx, message) };
        self.wrote = true;
    }

    /// The LSN the slot must not confirm past while snapshot chunks are
    /// being read.
    pub fn snapshot_hold(&mut self, acknowledged: u64) -> Option<u64> {
        self.watermarks.as_mut().and_then(|w| w.hold(acknowledged))
    }

    /// Snapshot files delivered since the last call.
    pub fn take_delivered(&mut self) -> Vec<Delivered> {
        self.watermarks.as_mut().map(Watermarks::take_delivered).unwrap_or_default()
    }

    /// Flushes every open batch of the transaction.
    ///
    /// # Safety
    /// `ctx` as PostgreSQL passes it to a commit callback.
    pub unsafe fn commit(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        // Every row of the transaction has been decoded.
        self.current = None;
        if self.options.flush_at_commit {
            // SAFETY: forwarded from the caller.
            unsafe { self.flush_all(ctx) };
        }
        // SAFETY: forwarded from the caller; tells a walsender it may
        // confirm past a transaction that produced nothing.
        unsafe { pg_sys::OutputPluginUpdateProgress(ctx, !self.wrote) };
        self.changes_since_progress = 0;
    }

    /// Writes every open batch, in the order their tables were first
    /// touched. Inside a transaction the last message says that every row
    /// decoded so far is written.
    ///
    /// # Safety
    /// `ctx` must be the live decoding context, accepting writes.
    pub unsafe fn flush_all(&mut self, ctx: *mut pg_sys::LogicalDecodingContext) {
        let pending: Vec<pg_sys::Oid> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|relid| self.targets.get(relid).is_some_and(|t| !t.batch.is_empty()))
            .collect();
        let current = self.current;
        for (i, relid) in pending.iter().enumerate() {
            let target = self.targets.get_mut(relid).expect("a pending target");
            let ends = current.is_none_or(|c| target.batch.max_commit_lsn() < c);
            let synced = current.filter(|_| i + 1 == pending.len()).map(|c| (c, self.last_lsn));
            // SAFETY: forwarded from the caller.
            let batch = unsafe { flush(ctx, target, ends, synced) };
            if let (Some(watermarks), Some(batch)) = (&mut self.watermarks, batch) {
                watermarks.observe(relid.to_u32(), &batch);
            }
            self.wrote = true;
        }
    }

    /// Whether some decoded rows wait in an open batch.
    pub fn has_pending(&self) -> bool {
        self.pending.iter().any(|relid| self.targets.get(relid).is_some_and(|t| !t.batch.is_empty()))
    }

    unsafe fn progress(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, skipped: bool) {
        self.changes_since_progress += 1;
        if self.changes_since_progress >= PROGRESS_EVERY {
            self.changes_since_progress = 0;
            // SAFETY: `ctx` is the live decoding context.
            unsafe { pg_sys::OutputPluginUpdateProgress(ctx, skipped) };
        }
    }

    /// Before a row of `relid`: with `flush_on_table_change`, the previous
    /// table's rows go out first, so messages keep the LSN order.
    unsafe fn before_row(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, relid: pg_sys::Oid) {
        let previous = self.last_target.replace(relid);
        if self.options.flush_on_table_change && previous.is_some_and(|p| p != relid) {
            // SAFETY: `ctx` is the live decoding context.
            unsafe { self.flush_all(ctx) };
        }
    }

    /// Marks the target as pending and flushes when its batch is full.
    unsafe fn after_row(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, relid: pg_sys::Oid) {
        if !self.pending.contains(&relid) {
            self.pending.push(relid);
        }
        let Some(target) = self.targets.get(&relid) else { return };
        if target.batch.len() >= self.options.batch_rows || target.batch.approx_bytes() >= self.options.batch_bytes {
            // SAFETY: `ctx` is the live decoding context.
            unsafe { self.flush_all(ctx) };
        }
    }

    /// Makes the source entry of `relation` current and prepares its
    /// target; both are re-described after an invalidation. Returns the
    /// relation's OID, the key of its entry.
    unsafe fn refresh(&mut self, ctx: *mut pg_sys::LogicalDecodingContext, relation: pg_sys::Relation) -> pg_sys::Oid {
        // SAFETY: the relation is open for the duration of the callback.
        let (relid, natts) = unsafe { ((*relation).rd_id, (*(*relation).rd_att).natts as usize) };
        let now = epoch();
        let fresh = self.sources.get(&relid).is_some_and(|s| s.epoch == now && s.natts == natts);
        if !fresh {
            let published = match &mut self.publications {
                // SAFETY: inside decoding, with an open relation.
                Some(publications) => unsafe { publications.published(relation, now) },
                // SAFETY: as above.
                None => unsafe { unfiltered(relation, self.options.partition_root) },
            };
            if let Some(old) = self.sources.remove(&relid) {
                if let Some(old_conversion) = old.conversion {
                    Conversion::release(old_conversion)
                }
            }
            let (target, conversion) = match published.as_ancestor {
                // SAFETY: the ancestor of an open partition can be opened;
                // it is closed again once described.
                Some(ancestor) => unsafe {
                    let ancestor_relation = pg_sys::RelationIdGetRelation(ancestor);
                    let conversion = Conversion::new(relation, ancestor_relation, self.cache_context);
                    self.prepare_target(ctx, ancestor_relation, now);
                    pg_sys::RelationClose(ancestor_relation);
                    (ancestor, Some(conversion))
                },
                // SAFETY: as above.
                None => unsafe {
                    self.prepare_target(ctx, relation, now);
                    (relid, None)
                },
            };
            self.sources.insert(relid, Source { epoch: now, actions: published.actions, target, conversion, natts });
        }
        relid
    }

    /// Makes the target entry of `relation` current: re-described after an
    /// invalidation; a changed schema first flushes the rows of the old one.
    unsafe fn prepare_target(
        &mut self,
        ctx: *mut pg_sys::LogicalDecodingContext,
        relation: pg_sys::Relation,
        now: u64,
    ) {
        // SAFETY: the relation is open for the duration of the call.
        let (relid, natts) = unsafe { ((*relation).rd_id, (*(*relation).rd_att).natts as usize) };
        if self.targets.get(&relid).is_some_and(|t| t.epoch == now && t.plan.natts == natts) {
            return;
        }
        // SAFETY: inside decoding, with an open relation.
        let plan = unsafe { RelationPlan::describe(relation, self.cache_context) };
        let schema = Arc::new(ChangeSchema::new(plan.spec.clone(), self.options.include_before));
        let changed =
            self.targets.get(&relid).is_some_and(|old| old.batch.schema().fingerprint() != schema.fingerprint());
        if changed && self.targets.get(&relid).is_some_and(|old| !old.batch.is_empty()) {
            // The rows of the old schema go out first.
            // SAFETY: `ctx` is the live decoding context.
            unsafe { self.flush_all(ctx) };
        }
        let batch = match self.targets.remove(&relid) {
            Some(old) => {
                let kept = !changed;
                old.plan.release();
                if kept {
                    old.batch
                } else {
                    ChangeBatchBuilder::new(schema)
                }
            }
            None => ChangeBatchBuilder::new(schema),
        };
        let target =
            Target { epoch: now, plan, batch, values: vec![pg_sys::Datum::null(); natts], nulls: vec![true; natts] };
        self.targets.insert(relid, target);
    }
}

fn row_meta(op: Op, lsn: pg_sys::XLogRecPtr, txn: *mut pg_sys::ReorderBufferTXN) -> RowMeta {
    // SAFETY: PostgreSQL passes the transaction being replayed; its commit
    // fields are set before replay starts.
    let txn = unsafe { &*txn };
    RowMeta {
        op,
        lsn,
        commit_lsn: txn.end_lsn,
        xid: txn.xid.into(),
        // SAFETY: a committed transaction's time is its commit time.
        commit_time: unsafe { txn.xact_time.commit_time },
    }
}

/// Writes one row image. A missing tuple (a delete without replica
/// identity) leaves the table columns null.
///
/// # Safety
/// `tuple` must be null or a tuple of the relation `desc` and `plan` describe.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn fill(
    row: &mut Row<'_>,
    image: Image,
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    conversion: Option<&Conversion>,
    plan: &RelationPlan,
    values: &mut [pg_sys::Datum],
    nulls: &mut [bool],
) {
    if tuple.is_null() {
        (0..plan.columns.len()).for_each(|i| row.null(image, i));
        return;
    }
    // SAFETY: the tuple belongs to the decoded relation; a conversion turns
    // it into the target's row type, which `desc` and the arrays (`natts`
    // slots) describe.
    unsafe {
        let mut heap_tuple = tuple;
        if let Some(conversion) = conversion {
            heap_tuple = conversion.convert(heap_tuple);
        }
        pg_sys::heap_deform_tuple(heap_tuple, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
    }
    // SAFETY: the deformed datums of the tuple's columns.
    unsafe {
        fill_datums(row, image, plan, |i| {
            let at = plan.columns[i].attidx;
            (!nulls[at]).then(|| values[at])
        });
    }
}

/// Writes one row image from the datum of each of the plan's columns
/// (`datum(i)` of its `i`-th column, None for null).
///
/// # Safety
/// Each datum must be a valid datum of its column's type that lives until
/// the row is finished.
pub(crate) unsafe fn fill_datums(
    row: &mut Row<'_>,
    image: Image,
    plan: &RelationPlan,
    datum: impl Fn(usize) -> Option<pg_sys::Datum>,
) {
    for (i, column) in plan.columns.iter().enumerate() {
        let Some(datum) = datum(i) else {
            row.null(image, i);
            continue;
        };
        // SAFETY: the datum belongs to this column and lives in the tuple
        // or the change context until the row is finished.
        let pushed = match unsafe { datum::read(column, datum) } {
            Read::Value(value) => row.value(image, i, value),
            Read::List(items) => row.list(image, i, &items),
            Read::Unchanged => {
                row.unchanged(image, i);
                Ok(())
            }
            Read::Refused => {
                row.null(image, i);
                Err(PushError::Unrepresentable(column.kind.scalar()))
            }
        };
        if pushed.is_err() {
            // SAFETY: as above; never an unchanged TOAST pointer here.
            row.unmapped(image, i, unsafe { datum::text(column, datum) });
        }
    }
}

/// Encodes the target's open batch and writes it as one message.
/// Returns the batch written.
///
/// # Safety
/// `ctx` must be the live decoding context, inside a callback that may write.
unsafe fn flush(
    ctx: *mut pg_sys::LogicalDecodingContext,
    target: &mut Target,
    ends_transaction: bool,
    synced: Option<(u64, u64)>,
) -> Option<RecordBatch> {
    if target.batch.is_empty() {
        return None;
    }
    let table = format!("{}.{}", target.plan.spec.schema, target.plan.spec.table);
    let schema = target.batch.schema().clone();
    let batch = target.batch.finish().map_err(|source| PluginError::Encode { table, source }).or_report();
    let message = Message { schema, batch: batch.clone(), ends_transaction, synced, marker: None };
    // SAFETY: forwarded from the caller.
    unsafe { write_message(ctx, message) };
    Some(batch)
}

/// How many rows of `batch` make a message within the batch bounds.
fn rows_per_message(batch: &RecordBatch, batch_rows: usize, batch_bytes: usize) -> usize {
    let rows = batch.num_rows().max(1);
    let bytes_per_row = (batch.get_array_memory_size() / rows).max(1);
    (batch_bytes / bytes_per_row).clamp(1, batch_rows.max(1))
}

/// Records that a snapshot chunk could not be delivered: the snapshot is
/// failed (`cdc_snapshots()` shows why), its table gets no completion
/// marker, and the stream goes on — an error here would stop the slot on
/// every retry.
fn fail(dir: &std::path::Path, marker: &Marker, why: &str) {
    let text = format!("chunk {} of range {} could not be delivered: {why}", marker.chunk, marker.range);
    pgrx::warning!("wal2arrow: snapshot {} of the table with OID {}: {text}", marker.snapshot, marker.relid);
    if let Err(e) = file::write_private(&dir.join(failed_file_name(marker.snapshot)), text.as_bytes(), false) {
        pgrx::warning!("wal2arrow: recording the failure of snapshot {}: {e}", marker.snapshot);
    }
}

/// Writes one message: its batch, encoded, in ctx->out, and the message
/// itself for a writer that routes by table (the pgcdc worker).
///
/// # Safety
/// `ctx` must be the live decoding context, inside a callback that may write.
pub(super) unsafe fn write_message(ctx: *mut pg_sys::LogicalDecodingContext, message: Message) {
    let table = || format!("{}.{}", message.schema.spec().schema, message.schema.spec().table);
    // SAFETY: PrepareWrite/Write bracket one message in ctx->out, which
    // the encoder writes into; a message stays far below PostgreSQL's 1 GB
    // allocation limit (batch_bytes).
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, true);
        ipc::write_stream(&message.batch, Out((*ctx).out))
            .map_err(|source| PluginError::Encode { table: table(), source })
            .or_report();
        CURRENT_MESSAGE.set(Some(message));
        pg_sys::OutputPluginWrite(ctx, true);
        CURRENT_MESSAGE.set(None);
    }
}

/// `ctx->out` as a `Write`, so that a message is encoded in place: what
/// `appendBinaryStringInfo` does, with PostgreSQL called only to grow it.
struct Out(pg_sys::StringInfo);

impl std::io::Write for Out {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let len = i32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a message part over 2 GB"))?;
        // SAFETY: `self.0` is the decoding context's live output buffer;
        // enlargeStringInfo makes room for `len` more bytes and the NUL
        // PostgreSQL keeps after the data (or raises an ERROR).
        unsafe {
            let out = &mut *self.0;
            if out.maxlen - out.len <= len {
                pg_sys::enlargeStringInfo(self.0, len);
            }
            let end = out.data.add(out.len as usize).cast::<u8>();
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), end, bytes.len());
            out.len += len;
            *end.add(bytes.len()) = 0;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Switches to a memory context, and back (resetting it) when dropped,
/// also when an ERROR unwinds through.
struct ContextGuard {
    context: pg_sys::MemoryContext,
    previous: pg_sys::MemoryContext,
}

impl ContextGuard {
    fn enter(context: pg_sys::MemoryContext) -> ContextGuard {
        // SAFETY: switching to a live context owned by the decoder.
        let previous = unsafe { pg_sys::MemoryContextSwitchTo(context) };
        ContextGuard { context, previous }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        // SAFETY: both contexts are still alive; nothing borrowed from the
        // change context survives the row that was just finished. Most rows
        // allocate nothing there: an untouched context needs no reset call.
        unsafe {
            pg_sys::MemoryContextSwitchTo(self.previous);
            if !(*self.context).isReset {
                pg_sys::MemoryContextReset(self.context);
            }
        }
    }
}

//! One logical decoding session held open inside the worker, following
//! what PostgreSQL's `pg_logical_slot_get_changes_guts` (logicalfuncs.c)
//! does, minus the SQL function around it: acquire the slot, create a
//! decoding context that loads the slot's own output plugin (`wal2arrow`),
//! and feed it WAL records as they are flushed. The plugin's messages come
//! out through this module's write callbacks, into the [`Sink`].

use super::sink::Sink;
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::ffi::{CStr, CString};
use std::time::Duration;

unsafe extern "C-unwind" {
    /// `replication/decode.h`, not in pgrx's bindings.
    fn LogicalDecodingProcessRecord(ctx: *mut pg_sys::LogicalDecodingContext, record: *mut pg_sys::XLogReaderState);
    /// `access/xlogutils.h`: the C functions behind `XL_ROUTINE`; pgrx
    /// binds Rust wrappers of them, which cannot be used as callbacks.
    fn read_local_xlog_page(
        state: *mut pg_sys::XLogReaderState,
        target_page: pg_sys::XLogRecPtr,
        req_len: std::ffi::c_int,
        target_rec: pg_sys::XLogRecPtr,
        cur_page: *mut std::ffi::c_char,
    ) -> std::ffi::c_int;
    fn wal_segment_open(state: *mut pg_sys::XLogReaderState, next_seg: pg_sys::XLogSegNo, tli: *mut pg_sys::TimeLineID);
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
}

/// An open decoding session on an acquired slot.
pub struct Session {
    ctx: *mut pg_sys::LogicalDecodingContext,
    confirmed: pg_sys::XLogRecPtr,
    /// The confirmed position last written to disk.
    saved: pg_sys::XLogRecPtr,
    /// Written to by the callbacks through the context's private pointer.
    sink: Box<Sink>,
}

impl Session {
    /// Acquires `slot` (an ERROR if another process holds it) and opens a
    /// decoding context from its confirmed position, with plugin `options`.
    ///
    /// # Safety
    /// Must run in a background worker connected to the slot's database,
    /// outside a transaction.
    pub unsafe fn start(slot: &str, options: &[(&str, String)], mut sink: Box<Sink>) -> Session {
        let slot = CString::new(slot).expect("slot names hold no NUL");
        // SAFETY: the sequence of logicalfuncs.c; every pointer handed to
        // PostgreSQL is either palloc'd by it or lives as long as the
        // session (the sink).
        unsafe {
            crate::majors::acquire_slot(slot.as_ptr());
            let mut list: *mut pg_sys::List = std::ptr::null_mut();
            for (name, value) in options {
                let name = pg_sys::pstrdup(CString::new(*name).expect("no NUL").as_ptr());
                let value = pg_sys::pstrdup(CString::new(value.as_str()).expect("no NUL").as_ptr());
                let def = pg_sys::makeDefElem(name, pg_sys::makeString(value).cast(), -1);
                list = pg_sys::lappend(list, def.cast());
            }
            let mut routine = pg_sys::XLogReaderRoutine {
                page_read: Some(page_read),
                segment_open: Some(wal_segment_open),
                segment_close: Some(wal_segment_close),
            };
            let ctx = pg_sys::CreateDecodingContext(
                pg_sys::InvalidXLogRecPtr as pg_sys::XLogRecPtr,
                list,
                false,
                &mut routine,
                Some(prepare_write),
                Some(write),
                Some(update_progress),
            );
            (*ctx).output_writer_private = (&mut *sink as *mut Sink).cast();
            let slot_data = &(*pg_sys::MyReplicationSlot).data;
            pg_sys::XLogBeginRead((*ctx).reader, slot_data.restart_lsn);
            Session { ctx, confirmed: slot_data.confirmed_flush, saved: slot_data.confirmed_flush, sink }
        }
    }

    /// Decodes records up to the WAL flushed now, at most `budget` of them.
    /// Returns how many were read; the plugin's messages reach the sink
    /// meanwhile.
    pub fn pump(&mut self, budget: usize) -> usize {
        // SAFETY: the context and its reader live until `drop`; reading
        // only below the flush pointer keeps XLogReadRecord from waiting
        // long for WAL that is not there.
        unsafe {
            let reader = (*self.ctx).reader;
            let end = pg_sys::GetFlushRecPtr(std::ptr::null_mut());
            let mut read = 0;
            while (*reader).EndRecPtr < end && read < budget {
                let mut error: *mut std::ffi::c_char = std::ptr::null_mut();
                let record = pg_sys::XLogReadRecord(reader, &mut error);
                if !error.is_null() {
                    let message = CStr::from_ptr(error).to_string_lossy();
                    pgrx::error!("pgcdc worker: could not read WAL at {:X}: {message}", (*reader).EndRecPtr);
                }
                if !record.is_null() {
                    pg_sys::ffi::pg_guard_ffi_boundary(|| LogicalDecodingProcessRecord(self.ctx, reader));
                }
                read += 1;
                pgrx::check_for_interrupts!();
            }
            read
        }
    }

    /// Whether decoded rows wait in the plugin's open batches.
    pub fn has_pending(&self) -> bool {
        // SAFETY: the context lives until `drop`, between callbacks here.
        unsafe { crate::plugin::has_pending(self.ctx) }
    }

    /// Writes the plugin's open batches to the rings; every transaction
    /// committed so far is then complete in them.
    pub fn flush(&mut self) {
        // SAFETY: the context lives until `drop`, between callbacks here.
        unsafe { crate::plugin::flush_pending(self.ctx) };
        self.sink.flushed();
    }

    /// The LSN the slot must not confirm past while snapshot chunks are
    /// being read and sent (their windows must be decoded again after a
    /// crash), once consumers acknowledged everything up to `acknowledged`.
    pub fn snapshot_hold(&mut self, acknowledged: u64) -> Option<u64> {
        // SAFETY: the context lives until `drop`, between callbacks here.
        unsafe { crate::plugin::snapshot_hold(self.ctx, acknowledged) }
    }

    /// Snapshot files delivered since the last call.
    pub fn take_delivered(&mut self) -> Vec<crate::plugin::Delivered> {
        // SAFETY: as above.
        unsafe { crate::plugin::take_delivered(self.ctx) }
    }

    /// The confirmed position last written to disk.
    pub fn saved(&self) -> pg_sys::XLogRecPtr {
        self.saved
    }

    /// The end of the last record decoded: every transaction that
    /// committed before it has passed through the plugin.
    pub fn decoded_upto(&self) -> pg_sys::XLogRecPtr {
        // SAFETY: the reader lives as long as the context.
        unsafe { (*(*self.ctx).reader).EndRecPtr }
    }

    /// Lets the slot forget everything up to `lsn`.
    pub fn confirm(&mut self, lsn: pg_sys::XLogRecPtr) {
        // PostgreSQL takes the value as given; never move backwards.
        if lsn > self.confirmed {
            // SAFETY: the slot is acquired by this process.
            unsafe { pg_sys::LogicalConfirmReceivedLocation(lsn) };
            self.confirmed = lsn;
        }
    }

    /// Writes the slot to disk if its confirmed position moved since the
    /// last time: after a crash, decoding resumes from there.
    pub fn save(&mut self) {
        if self.confirmed > self.saved {
            // SAFETY: the slot is acquired by this process, outside any
            // callback; this is what CheckPointReplicationSlots does.
            unsafe {
                pg_sys::ReplicationSlotMarkDirty();
                pg_sys::ReplicationSlotSave();
            }
            self.saved = self.confirmed;
        }
    }

    /// The rings, between calls to `pump`.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut Sink {
        &mut self.sink
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the context was created by `start` and is freed once;
        // the slot was acquired there.
        unsafe {
            pg_sys::FreeDecodingContext(self.ctx);
            pg_sys::ReplicationSlotRelease();
        }
    }
}

/// `read_local_xlog_page`, waiting for WAL that is not flushed yet (a
/// record can straddle the flush point) in a way a shutdown request ends:
/// PostgreSQL's own wait only reacts to a backend's kind of termination.
#[pg_guard]
unsafe extern "C-unwind" fn page_read(
    state: *mut pg_sys::XLogReaderState,
    target_page: pg_sys::XLogRecPtr,
    req_len: std::ffi::c_int,
    target_rec: pg_sys::XLogRecPtr,
    cur_page: *mut std::ffi::c_char,
) -> std::ffi::c_int {
    let needed = target_page + u64::try_from(req_len).unwrap_or(0);
    // SAFETY: plain calls into PostgreSQL from the worker's main thread; the
    // arguments are forwarded unchanged to the function they were meant for.
    unsafe {
        while pg_sys::GetFlushRecPtr(std::ptr::null_mut()) < needed {
            if pg_sys::ShutdownRequestPending != 0 {
                exit_asked();
            }
            pgrx::check_for_interrupts!();
            let wakes = crate::majors::flush_wakes();
            crate::majors::wait_for_flush(needed - 1, Duration::from_millis(if wakes { 100 } else { 1 }));
        }
        pg_sys::ffi::pg_guard_ffi_boundary(|| read_local_xlog_page(state, target_page, req_len, target_rec, cur_page))
    }
}

/// Exits the worker, as asked (SIGTERM) while it waited for WAL or for
/// room in a ring. PostgreSQL stops a slot's holder before it invalidates
/// the slot, and a slot whose WAL is no longer reserved is being
/// invalidated: then the log says so, and what to do. (The slot is
/// released by PostgreSQL's exit callbacks.)
pub fn exit_asked() -> ! {
    // SAFETY: reads this process's own acquired slot (nobody else may
    // change its restart point meanwhile).
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if !slot.is_null() {
            let name = CStr::from_ptr((*slot).data.name.data.as_ptr()).to_string_lossy().into_owned();
            let availability = pg_sys::GetWALAvailability((*slot).data.restart_lsn);
            if matches!(
                availability,
                pg_sys::WALAvailability::WALAVAIL_UNRESERVED | pg_sys::WALAvailability::WALAVAIL_REMOVED
            ) {
                pgrx::log!(
                    "pgcdc worker: stream \"{name}\" stops: {}",
                    super::invalidated_remedy(&name, "wal_removed")
                );
            }
        }
    }
    crate::majors::proc_exit(0)
}

/// The sink a decoding context writes to.
///
/// # Safety
/// `ctx` must be a context created by [`Session::start`], inside `pump`.
unsafe fn sink<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut Sink {
    // SAFETY: set in `start` to the session's boxed sink, which outlives
    // the context; no other reference to it is alive during `pump`.
    unsafe { &mut *(*ctx).output_writer_private.cast::<Sink>() }
}

#[pg_guard]
unsafe extern "C-unwind" fn prepare_write(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last_write: bool,
) {
    // SAFETY: ctx->out is the context's output buffer.
    unsafe { pg_sys::resetStringInfo((*ctx).out) };
}

#[pg_guard]
unsafe extern "C-unwind" fn write(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _last_write: bool,
) {
    // SAFETY: ctx->out holds the message the plugin just wrote.
    unsafe {
        let out = &*(*ctx).out;
        let bytes = std::slice::from_raw_parts(out.data.cast::<u8>(), usize::try_from(out.len).unwrap_or(0));
        sink(ctx).write(bytes);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn update_progress(
    ctx: *mut pg_sys::LogicalDecodingContext,
    lsn: pg_sys::XLogRecPtr,
    _xid: pg_sys::TransactionId,
    _skipped: bool,
) {
    // SAFETY: as above. Only a commit (end_xact) marks a transaction done.
    unsafe {
        if (*ctx).end_xact {
            sink(ctx).committed(lsn);
        }
    }
}

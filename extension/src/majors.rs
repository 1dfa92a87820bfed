//! What differs between the PostgreSQL majors pgcdc builds for (15 to
//! 18, one cargo feature each): one function per difference, so that the
//! rest of the extension reads the same on every major.

use pgrx::pg_sys;

/// Column `index` (from 0) of a tuple descriptor. PostgreSQL 18 moved the
/// attributes behind `compact_attrs` and made `TupleDescAttr` a function.
///
/// # Safety
/// `desc` must be a valid tuple descriptor with more than `index` columns.
pub unsafe fn attribute<'a>(desc: pg_sys::TupleDesc, index: usize) -> &'a pg_sys::FormData_pg_attribute {
    #[cfg(not(feature = "pg18"))]
    // SAFETY: the attributes follow the descriptor, `natts` of them.
    unsafe {
        &*(*desc).attrs.as_ptr().add(index)
    }
    #[cfg(feature = "pg18")]
    // SAFETY: as TupleDescAttr requires; the index fits a C int (natts is one).
    unsafe {
        &*pg_sys::TupleDescAttr(desc, index as std::ffi::c_int)
    }
}

/// The heap tuple of a decoded change's new or old row (null: none).
/// Up to PostgreSQL 16 the reorder buffer wraps it in a
/// `ReorderBufferTupleBuf`; from 17 on it is the tuple itself.
///
/// # Safety
/// `tuple` must be a change's `newtuple` or `oldtuple`.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub unsafe fn change_tuple(tuple: *mut pg_sys::ReorderBufferTupleBuf) -> pg_sys::HeapTuple {
    if tuple.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: a non-null tuple buffer holds its tuple header inline.
    unsafe { &raw mut (*tuple).tuple }
}

/// See the version for PostgreSQL 15 and 16.
///
/// # Safety
/// `tuple` must be a change's `newtuple` or `oldtuple`.
#[cfg(not(any(feature = "pg15", feature = "pg16")))]
pub unsafe fn change_tuple(tuple: pg_sys::HeapTuple) -> pg_sys::HeapTuple {
    tuple
}

/// Acquires replication slot `name` for this process, an ERROR if another
/// holds it (or, from PostgreSQL 18 on, if it was invalidated; before, the
/// decoding context refuses an invalidated slot).
///
/// # Safety
/// `name` must be a NUL-terminated slot name; no slot may be held.
pub unsafe fn acquire_slot(name: *const std::ffi::c_char) {
    // SAFETY: forwarded from the caller.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::ReplicationSlotAcquire(name, true);
        #[cfg(feature = "pg18")]
        pg_sys::ReplicationSlotAcquire(name, true, true);
    }
}

/// Ends the process as a backend does. PostgreSQL 18's headers no longer
/// tell bindgen that `proc_exit` does not return.
#[allow(unreachable_code)] // up to 17, after the call
pub fn proc_exit(code: i32) -> ! {
    // SAFETY: runs the process's exit callbacks (releasing its slot and
    // locks) and exits; called from the process's main thread.
    unsafe { pg_sys::proc_exit(code) };
    unreachable!("proc_exit returned")
}

/// Sleeps until WAL past `past` is flushed, `timeout` passes, or (before
/// PostgreSQL 16) the latch is set. From 16 on, every WAL flush broadcasts
/// the condition variable walsenders wait on, so a worker waiting on it
/// wakes as a walsender does; before, and without walsenders
/// (`max_wal_senders = 0`, which stops the broadcasts), it can only poll.
#[cfg_attr(feature = "pg15", allow(unused_variables))] // `past`: 15 only polls
pub fn wait_for_flush(past: pg_sys::XLogRecPtr, timeout: std::time::Duration) {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1);
    #[cfg(not(feature = "pg15"))]
    // SAFETY: WalSndCtl lives in shared memory from startup; a process
    // prepares to sleep on the variable, checks, sleeps and cancels, as
    // WalSndWait does.
    unsafe {
        if pg_sys::max_wal_senders > 0 {
            let cv = &raw mut (*pg_sys::WalSndCtl).wal_flush_cv;
            pg_sys::ConditionVariablePrepareToSleep(cv);
            if pg_sys::GetFlushRecPtr(std::ptr::null_mut()) <= past {
                pg_sys::ConditionVariableTimedSleep(cv, timeout_ms, pg_sys::PG_WAIT_EXTENSION);
            }
            pg_sys::ConditionVariableCancelSleep();
            return;
        }
    }
    // SAFETY: waiting on this process's own latch.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout_ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Whether [`wait_for_flush`] is woken by WAL flushes (rather than only
/// polling).
pub fn flush_wakes() -> bool {
    #[cfg(feature = "pg15")]
    return false;
    #[cfg(not(feature = "pg15"))]
    // SAFETY: reading a setting fixed at server start.
    unsafe {
        pg_sys::max_wal_senders > 0
    }
}

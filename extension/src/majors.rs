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

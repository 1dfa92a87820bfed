//! The `wal2arrow` output plugin: PostgreSQL's logical decoding calls these
//! callbacks for every committed transaction; each hands its work to the
//! [`Decoder`] kept in the decoding context.

mod catalog;
mod datum;
mod decoder;
mod error;
mod partition;
mod publication;
mod watermarks;

use crate::report::OrReport;
pub(crate) use catalog::RelationPlan;
pub(crate) use datum::fetched;
pub(crate) use decoder::fill_datums;
use decoder::Decoder;
pub use decoder::{current_message, Message};
use error::PluginError;
use pgcdc_encode::options::Options;
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
pub use watermarks::Delivered;

/// Entry point PostgreSQL looks up when a slot uses this library as its
/// output plugin (as `pgcdc` or through the `wal2arrow.so` alias).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: PostgreSQL passes a zeroed callback struct to fill in.
    let cb = unsafe { &mut *cb };
    cb.startup_cb = Some(startup);
    cb.begin_cb = Some(begin);
    cb.change_cb = Some(change);
    cb.truncate_cb = Some(truncate);
    cb.commit_cb = Some(commit);
    cb.message_cb = Some(message);
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    opts: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: PostgreSQL passes the live decoding context and its options.
    unsafe {
        (*opts).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_BINARY_OUTPUT;
        (*opts).receive_rewrites = false;
        let pairs = option_pairs((*ctx).output_plugin_options);
        let options = Options::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
            .map_err(PluginError::from)
            .or_report();
        check_publications_exist(&options);
        register_invalidation_callbacks();
        let slot = CStr::from_ptr((*(*ctx).slot).data.name.data.as_ptr()).to_string_lossy().into_owned();
        let snapshot_dir = crate::snapshot::snapshot_dir(&slot);
        let decoder = Box::into_raw(Box::new(Decoder::new(options, (*ctx).context, &slot, snapshot_dir)));
        (*ctx).output_plugin_private = decoder.cast();
        // The decoder is dropped when the decoding context's memory goes,
        // which also happens when an ERROR skips the shutdown callback.
        let callback = pg_sys::MemoryContextAllocZero((*ctx).context, size_of::<pg_sys::MemoryContextCallback>())
            .cast::<pg_sys::MemoryContextCallback>();
        (*callback).func = Some(drop_decoder);
        (*callback).arg = decoder.cast();
        pg_sys::MemoryContextRegisterResetCallback((*ctx).context, callback);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn drop_decoder(decoder: *mut std::ffi::c_void) {
    // SAFETY: `decoder` came from Box::into_raw in `startup`, and this
    // callback runs once, when the decoding context is reset or deleted.
    drop(unsafe { Box::from_raw(decoder.cast::<Decoder>()) });
}

/// The decoder `startup` installed.
///
/// # Safety
/// `ctx` must be a decoding context whose startup callback ran.
unsafe fn decoder<'a>(ctx: *mut pg_sys::LogicalDecodingContext) -> &'a mut Decoder {
    // SAFETY: set in `startup`, freed only with the context itself.
    unsafe { &mut *(*ctx).output_plugin_private.cast::<Decoder>() }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(ctx: *mut pg_sys::LogicalDecodingContext, txn: *mut pg_sys::ReorderBufferTXN) {
    // SAFETY: PostgreSQL passes the live decoding context and the
    // transaction being replayed, whose end is known (it committed).
    unsafe { decoder(ctx).begin((*txn).end_lsn) };
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    relation: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: arguments as PostgreSQL passes them.
    unsafe { decoder(ctx).change(ctx, txn, relation, change) }
}

#[pg_guard]
unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: PostgreSQL passes `nrelations` open relations.
    unsafe {
        let relations = std::slice::from_raw_parts(relations, usize::try_from(nrelations).unwrap_or(0));
        decoder(ctx).truncate(ctx, txn, relations, change)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    message_lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    message: *const std::ffi::c_char,
) {
    // SAFETY: PostgreSQL passes a NUL-terminated prefix and `size` bytes of
    // content, valid for the callback.
    unsafe {
        let prefix = CStr::from_ptr(prefix);
        let content = std::slice::from_raw_parts(message.cast::<u8>(), size);
        decoder(ctx).message(ctx, txn, message_lsn, transactional, prefix, content)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    // SAFETY: PostgreSQL passes the live decoding context.
    unsafe { decoder(ctx).commit(ctx) }
}

/// Writes every open batch now: the pgcdc worker calls this between WAL
/// records, when its linger time is up or it has caught up.
///
/// # Safety
/// `ctx` must be a decoding context of this plugin, between callbacks.
pub unsafe fn flush_pending(ctx: *mut pg_sys::LogicalDecodingContext) {
    // SAFETY: the decoder lives in the context; outside a callback the
    // context refuses writes unless told otherwise, as the callbacks are.
    unsafe {
        (*ctx).accept_writes = true;
        decoder(ctx).flush_all(ctx);
        (*ctx).accept_writes = false;
    }
}

/// The LSN the slot must not confirm past while snapshot chunks are read.
///
/// # Safety
/// `ctx` must be a decoding context of this plugin.
pub unsafe fn snapshot_hold(ctx: *mut pg_sys::LogicalDecodingContext, acknowledged: u64) -> Option<u64> {
    // SAFETY: the decoder lives in the context.
    unsafe { decoder(ctx).snapshot_hold(acknowledged) }
}

/// Snapshot files delivered since the last call, to delete once the slot's
/// saved position passes them.
///
/// # Safety
/// `ctx` must be a decoding context of this plugin, between callbacks.
pub unsafe fn take_delivered(ctx: *mut pg_sys::LogicalDecodingContext) -> Vec<Delivered> {
    // SAFETY: the decoder lives in the context.
    unsafe { decoder(ctx).take_delivered() }
}

/// Whether decoded rows wait in an open batch.
///
/// # Safety
/// `ctx` must be a decoding context of this plugin.
pub unsafe fn has_pending(ctx: *mut pg_sys::LogicalDecodingContext) -> bool {
    // SAFETY: the decoder lives in the context.
    unsafe { decoder(ctx).has_pending() }
}

/// The plugin options as `(name, value)` strings.
///
/// # Safety
/// `list` must be NULL or a List of DefElem, as PostgreSQL builds it.
unsafe fn option_pairs(list: *mut pg_sys::List) -> Vec<(String, Option<String>)> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: a List holds `length` cells; each is a DefElem whose `arg` is
    // NULL or a value node that defGetString reads.
    unsafe {
        let cells = std::slice::from_raw_parts((*list).elements, usize::try_from((*list).length).unwrap_or(0));
        cells
            .iter()
            .map(|cell| {
                let def = cell.ptr_value.cast::<pg_sys::DefElem>();
                let name = CStr::from_ptr((*def).defname).to_string_lossy().into_owned();
                let value = (!(*def).arg.is_null())
                    .then(|| CStr::from_ptr(pg_sys::defGetString(def)).to_string_lossy().into_owned());
                (name, value)
            })
            .collect()
    }
}

/// Catches a misspelt publication name up front when called from SQL (in
/// a transaction, with today's catalog): decoding itself skips publications
/// missing from the WAL's past with a warning, which would otherwise hide
/// a typo as silence.
fn check_publications_exist(options: &Options) {
    // SAFETY: plain catalog lookups, only inside a transaction.
    unsafe {
        if !pg_sys::IsTransactionState() {
            return;
        }
        for name in options.publication_names.iter().flatten() {
            let Ok(cname) = std::ffi::CString::new(name.as_str()) else { continue };
            pg_sys::GetPublicationByName(cname.as_ptr(), false);
        }
    }
}

static CALLBACKS_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers, once per backend, the invalidation callbacks that tell the
/// decoder to re-describe relations and reload publications.
fn register_invalidation_callbacks() {
    if CALLBACKS_REGISTERED.swap(true, Ordering::Relaxed) {
        return;
    }
    // SAFETY: registering plain C callbacks; PostgreSQL keeps them for the
    // backend's lifetime, as the library stays loaded.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0usize));
        for cache in [
            pg_sys::SysCacheIdentifier::PUBLICATIONOID,
            pg_sys::SysCacheIdentifier::PUBLICATIONRELMAP,
            pg_sys::SysCacheIdentifier::PUBLICATIONNAMESPACEMAP,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(on_syscache), pg_sys::Datum::from(0usize));
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    decoder::invalidate();
}

#[pg_guard]
unsafe extern "C-unwind" fn on_syscache(_arg: pg_sys::Datum, _cache: std::ffi::c_int, _hash: u32) {
    decoder::invalidate();
}

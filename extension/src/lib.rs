//! pgcdc: PostgreSQL change data capture to Apache Arrow.
//!
//! Reads like DESIGN.md: the `wal2arrow` output plugin (§1) turns decoded
//! changes into Arrow IPC streams, the `cdc_*` SQL functions (§3) configure
//! capture, and the worker (§4) streams changes into shared-memory rings.
//! The pure conversions live in the `pgcdc-encode` crate, the ring format in
//! `pgcdc-reader`.

mod gucs;
mod majors;
mod pgtype;
mod plugin;
mod report;
mod snapshot;
mod sql_api;
mod worker;

::pgrx::pg_module_magic!(name, version);

/// Runs when PostgreSQL loads the library: as an extension, as the
/// `wal2arrow` output plugin, or preloaded at server start.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    worker::init();
}

//! pgcdc: PostgreSQL change data capture to Apache Arrow.
//!
//! Reads like DESIGN.md: the `wal2arrow` output plugin (§1) turns decoded
//! changes into Arrow IPC streams; the pure conversions it relies on live in
//! the `pgcdc-encode` crate.

mod gucs;
mod pgtype;
mod plugin;
mod report;
mod sql_api;

::pgrx::pg_module_magic!(name, version);

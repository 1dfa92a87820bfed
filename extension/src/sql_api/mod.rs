//! The SQL surface of DESIGN §3: the `cdc_*` functions. Each is a thin
//! wrapper; the work is in the submodules and errors are raised here.

mod config;
mod configure;
mod consumers;
mod discover;
mod error;
mod lookup;
mod snapshots;
mod status;

use crate::report::{self, OrReport};
use configure::Request;
use pgrx::prelude::*;

pgrx::extension_sql_file!("../../../sql/bootstrap.sql", name = "bootstrap", bootstrap);

/// Every user table: ordinary and partitioned tables outside the system
/// schemas (partitions are reported as their root).
#[pg_extern]
fn cdc_discover_tables() -> TableIterator<'static, (name!(schema_name, String), name!(table_name, String))> {
    let tables = discover::tables().or_report();
    TableIterator::new(tables.into_iter().map(|t| (t.schema, t.name)))
}

/// The columns of a table: PostgreSQL type, nullability, the Arrow type the
/// change batch carries, and whether the column identifies rows in WAL.
#[pg_extern]
fn cdc_table_columns(
    schema_name: &str,
    table_name: &str,
) -> TableIterator<
    'static,
    (
        name!(column_name, String),
        name!(pg_type, String),
        name!(nullable, bool),
        name!(arrow_type, String),
        name!(replica_identity, bool),
    ),
> {
    let columns = discover::columns(schema_name, table_name).or_report();
    TableIterator::new(columns.into_iter().map(|c| (c.name, c.pg_type, c.nullable, c.arrow_type, c.replica_identity)))
}

/// The tables the patterns select, minus the excluded ones, sorted.
#[pg_extern]
fn cdc_match_tables(
    patterns: Vec<String>,
    exclude: default!(Option<Vec<String>>, "NULL"),
) -> TableIterator<'static, (name!(schema_name, String), name!(table_name, String))> {
    let tables = discover::matching(&patterns, &exclude.unwrap_or_default()).or_report();
    TableIterator::new(tables.into_iter().map(|t| (t.schema, t.name)))
}

/// One row per requirement of change data capture, with how to fix it.
#[pg_extern]
fn cdc_check_config() -> TableIterator<
    'static,
    (
        name!(setting, String),
        name!(current_value, String),
        name!(required, String),
        name!(ok, bool),
        name!(fix, String),
    ),
> {
    let checks = config::checks(1).or_report();
    TableIterator::new(checks.into_iter().map(|c| (c.setting, c.current, c.required, c.ok, c.fix)))
}

/// Configures change data capture for the tables one pattern selects.
#[pg_extern(name = "cdc_auto_configure")]
#[allow(clippy::too_many_arguments)] // SQL's named arguments
fn cdc_auto_configure_one(
    tables: &str,
    exclude: default!(Option<Vec<String>>, "NULL"),
    slot_name: default!(&str, "'pgcdc'"),
    publication_name: default!(Option<&str>, "NULL"),
    route_by_table: default!(bool, true),
    grant_to: default!(Option<&str>, "NULL"),
    partitions: default!(i32, 1),
    consumer: default!(Option<&str>, "'default'"),
    snapshot: default!(&str, "'initial'"),
    failover: default!(Option<bool>, "NULL"),
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(table_name, String), name!(route, String), name!(ring_path, String)),
> {
    cdc_auto_configure(
        vec![tables.to_owned()],
        exclude,
        slot_name,
        publication_name,
        route_by_table,
        grant_to,
        partitions,
        consumer,
        snapshot,
        failover,
    )
}

/// Configures change data capture for the tables the patterns select:
/// validates the server, creates or updates the publication, creates the
/// `wal2arrow` slot, grants read access, records the stream, registers
/// `consumer` (NULL: none) and starts its worker. Returns each table's
/// route and ring file (`partitions` > 1 splits each table into that many
/// routes by a hash of its key, for parallel consumers). With `snapshot =>
/// 'initial'` (the default) each table's existing rows reach its route
/// first, as `r` rows interleaved with its changes (DESIGN §6), including
/// tables that join the stream when it is run again. Running it again
/// with the same arguments changes nothing; the table list may change,
/// the routing (`route_by_table`, `partitions`, `publication_name`) may not.
/// With `failover => true` (PostgreSQL 17+) the slot is a failover slot
/// (NULL: as the stream's slot was made; false for a new one).
#[pg_extern]
#[allow(clippy::too_many_arguments)] // SQL's named arguments
fn cdc_auto_configure(
    tables: Vec<String>,
    exclude: default!(Option<Vec<String>>, "NULL"),
    slot_name: default!(&str, "'pgcdc'"),
    publication_name: default!(Option<&str>, "NULL"),
    route_by_table: default!(bool, true),
    grant_to: default!(Option<&str>, "NULL"),
    partitions: default!(i32, 1),
    consumer: default!(Option<&str>, "'default'"),
    snapshot: default!(&str, "'initial'"),
    failover: default!(Option<bool>, "NULL"),
) -> TableIterator<
    'static,
    (name!(schema_name, String), name!(table_name, String), name!(route, String), name!(ring_path, String)),
> {
    let routes = configure::auto_configure(Request {
        patterns: tables,
        exclude: exclude.unwrap_or_default(),
        slot: slot_name.to_owned(),
        publication: publication_name.map(str::to_owned),
        route_by_table,
        grant_to: grant_to.map(str::to_owned),
        partitions,
        consumer: consumer.map(str::to_owned),
        snapshot: match snapshot {
            "initial" => true,
            "never" => false,
            other => report::raise(&error::SqlError::SnapshotMode(other.to_owned())),
        },
        failover,
    })
    .or_report();
    TableIterator::new(routes.into_iter().map(|r| (r.schema, r.table, r.route, r.ring_path)))
}

/// Per route: its worker, how much WAL the slot retains, how long the
/// oldest unacknowledged change has waited, how full the ring is, its
/// consumers, changes per second, and the progress of the latest snapshot
/// of its tables (NULL when none was taken; see `cdc_snapshots()` for each).
#[pg_extern]
#[allow(clippy::type_complexity)] // the SQL result's columns
fn cdc_status() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(route, String),
        name!(ring_path, String),
        name!(worker_pid, Option<i32>),
        name!(slot_lag_bytes, Option<i64>),
        name!(slot_wal_status, Option<String>),
        name!(slot_safe_wal_bytes, Option<i64>),
        name!(problem, Option<String>),
        name!(lag_seconds, f64),
        name!(ring_fill_bytes, i64),
        name!(ring_capacity_bytes, i64),
        name!(consumers, Vec<String>),
        name!(changes_per_second, i64),
        name!(snapshot_state, Option<String>),
        name!(snapshot_rows_done, Option<i64>),
        name!(snapshot_rows_estimated, Option<i64>),
        name!(snapshot_chunks_done, Option<i64>),
        name!(snapshot_rows_per_second, Option<f64>),
        name!(snapshot_eta_seconds, Option<f64>),
    ),
> {
    let rows = status::status().or_report();
    TableIterator::new(rows.into_iter().map(|r| {
        let s = r.snapshot;
        (
            r.slot,
            r.route,
            r.ring_path,
            r.worker_pid,
            r.slot_lag_bytes,
            r.slot_wal_status,
            r.slot_safe_wal_bytes,
            r.problem,
            r.lag_seconds,
            r.ring_fill_bytes,
            r.ring_capacity_bytes,
            r.consumers,
            r.changes_per_second,
            s.as_ref().map(|s| s.state.clone()),
            s.as_ref().map(|s| s.rows_done),
            s.as_ref().and_then(|s| s.rows_estimated),
            s.as_ref().map(|s| s.chunks_done),
            s.as_ref().and_then(|s| s.rows_per_second),
            s.as_ref().and_then(|s| s.eta_seconds),
        )
    }))
}

/// Removes a stream: its worker, replication slot, publication, ring files
/// and rows in the pgcdc catalog (the slot and the rings as the
/// transaction commits).
#[pg_extern]
fn cdc_drop(slot_name: &str) {
    configure::drop(slot_name).or_report();
}

/// Registers a named consumer of a stream: every ring keeps each change
/// committed from now on until this consumer acknowledged it. Only OS user
/// `os_user` may read as it when one is given; otherwise the first OS user
/// that reads as it keeps it. Returns whether it was new.
#[pg_extern]
fn cdc_register_consumer(slot_name: &str, consumer: &str, os_user: default!(Option<&str>, "NULL")) -> bool {
    consumers::register(slot_name, consumer, os_user).or_report()
}

/// Drops a named consumer of a stream: what it has not acknowledged is
/// released when the transaction commits.
#[pg_extern]
fn cdc_drop_consumer(slot_name: &str, consumer: &str) {
    consumers::drop(slot_name, consumer).or_report();
}

/// The routes of a stream (every stream when NULL) and their ring files,
/// for readers that attach to a stream configured elsewhere.
#[pg_extern]
fn cdc_routes(
    slot_name: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(schema_name, String),
        name!(table_name, String),
        name!(route, String),
        name!(ring_path, String),
    ),
> {
    let routes = status::routes(slot_name).or_report();
    TableIterator::new(routes.into_iter().map(|r| (r.slot, r.schema, r.table, r.route, r.ring_path)))
}

/// Per consumer of every ring: its process, what it acknowledged, how far
/// behind it is and for how long, and whether it holds the ring back.
#[pg_extern]
#[allow(clippy::type_complexity)] // the SQL result's columns
fn cdc_consumers() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(route, String),
        name!(consumer, String),
        name!(pid, Option<i32>),
        name!(acknowledged_lsn, String),
        name!(lag_bytes, i64),
        name!(idle_seconds, f64),
        name!(holds_back, bool),
    ),
> {
    let rows = status::consumers().or_report();
    TableIterator::new(
        rows.into_iter()
            .map(|c| (c.slot, c.route, c.name, c.pid, c.acknowledged_lsn, c.lag_bytes, c.idle_seconds, c.holds_back)),
    )
}

/// Delivers the existing rows of the stream's tables that `tables`
/// selects (patterns as in `cdc_auto_configure`; NULL: every table of the
/// stream) again, as `r` rows interleaved with the changes: for a consumer
/// that lost its copy, or a new one. A table whose snapshot is in progress
/// keeps that one. Returns one row per table.
#[pg_extern]
fn cdc_snapshot(
    slot_name: &str,
    tables: default!(Option<Vec<String>>, "NULL"),
) -> TableIterator<
    'static,
    (name!(snapshot_id, i64), name!(schema_name, String), name!(table_name, String), name!(state, String)),
> {
    let requested = snapshots::request(slot_name, tables.as_deref()).or_report();
    TableIterator::new(requested.into_iter().map(|r| (r.snapshot as i64, r.schema, r.table, r.state)))
}

/// Cancels the pending and running snapshots of the tables `tables`
/// selects (NULL: all of the stream's). Returns those cancelled.
#[pg_extern]
fn cdc_snapshot_cancel(
    slot_name: &str,
    tables: default!(Option<Vec<String>>, "NULL"),
) -> TableIterator<'static, (name!(snapshot_id, i64), name!(schema_name, String), name!(table_name, String))> {
    let cancelled = snapshots::cancel(slot_name, tables.as_deref()).or_report();
    TableIterator::new(cancelled.into_iter().map(|r| (r.snapshot as i64, r.schema, r.table)))
}

/// Every snapshot of a stream (of every stream when NULL), newest first:
/// its state, rows read and estimated, chunks, key ranges, rows per
/// second, the seconds it should still take, and why it failed.
#[pg_extern]
#[allow(clippy::type_complexity)] // the SQL result's columns
fn cdc_snapshots(
    slot_name: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(snapshot_id, i64),
        name!(schema_name, String),
        name!(table_name, String),
        name!(state, String),
        name!(rows_done, i64),
        name!(rows_estimated, Option<i64>),
        name!(chunks_done, i64),
        name!(ranges, i32),
        name!(ranges_done, i32),
        name!(rows_per_second, Option<f64>),
        name!(eta_seconds, Option<f64>),
        name!(requested_at, pgrx::datum::TimestampWithTimeZone),
        name!(started_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(finished_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(error, Option<String>),
    ),
> {
    let rows = snapshots::list(slot_name).or_report();
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.slot,
            r.snapshot,
            r.schema,
            r.table,
            r.state,
            r.rows_done,
            r.rows_estimated,
            r.chunks_done,
            r.ranges,
            r.ranges_done,
            r.rows_per_second,
            r.eta_seconds,
            r.requested_at,
            r.started_at,
            r.finished_at,
            r.error,
        )
    }))
}

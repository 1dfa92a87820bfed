//! Configuring a stream and finding its rings over a PostgreSQL connection.
//!
//! ```no_run
//! use pgcdc_reader::client::auto_configure;
//! use pgcdc_reader::changes::max_commit_lsn;
//! use std::time::Duration;
//!
//! let mut readers = auto_configure("host=/var/run/postgresql dbname=app", &["public.*"])?;
//! let users = readers.get_mut("public.users").expect("a table the pattern matched");
//! while let Some(batch) = users.next_batch(Duration::from_secs(1))? {
//!     println!("{} changes", batch.num_rows());
//!     users.ack(max_commit_lsn(&batch).unwrap());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::changes::{ChangeReader, ReadError};
use crate::merge::{merge_streams, MergedReader};
pub use crate::status::{RouteStatus, SnapshotProgress};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong configuring or finding a stream.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// A stream to configure: what `cdc_auto_configure` takes.
#[derive(Debug, Clone)]
pub struct Config {
    pub patterns: Vec<String>,
    pub exclude: Vec<String>,
    pub slot: String,
    pub route_by_table: bool,
    /// Routes per table by a hash of its replica identity key (1: none).
    pub partitions: i32,
    /// The consumer the readers read as (`cdc_auto_configure` registers
    /// it for the stream if it is new).
    pub consumer: String,
    /// How long to wait for the worker to create a ring.
    pub ring_timeout: Duration,
    /// Whether each table's existing rows come first (`initial`) or not
    /// (`never`): `cdc_auto_configure`'s `snapshot`.
    pub snapshot: String,
}

impl Config {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Config {
        Config {
            patterns: patterns.iter().map(|p| p.as_ref().to_owned()).collect(),
            exclude: Vec::new(),
            slot: "pgcdc".into(),
            route_by_table: true,
            partitions: 1,
            consumer: "default".into(),
            ring_timeout: Duration::from_secs(30),
            snapshot: "initial".into(),
        }
    }
}

/// One route as `cdc_auto_configure` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub schema: String,
    pub table: String,
    pub route: String,
    pub ring_path: PathBuf,
}

impl Route {
    /// A row of (schema_name, table_name, route, ring_path).
    fn from_row(row: &postgres::Row) -> Route {
        Route {
            schema: row.get(0),
            table: row.get(1),
            route: row.get(2),
            ring_path: PathBuf::from(row.get::<_, String>(3)),
        }
    }
}

/// Runs `cdc_auto_configure` and returns its routes.
pub fn configure(conninfo: &str, config: &Config) -> Result<Vec<Route>, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    let rows = client.query(
        "SELECT schema_name, table_name, route, ring_path
         FROM cdc_auto_configure($1::text[], exclude => $2::text[], slot_name => $3, route_by_table => $4,
                                 partitions => $5, consumer => $6, snapshot => $7)",
        &[
            &config.patterns,
            &config.exclude,
            &config.slot,
            &config.route_by_table,
            &config.partitions,
            &config.consumer,
            &config.snapshot,
        ],
    )?;
    Ok(rows.iter().map(Route::from_row).collect())
}

/// Configures capture of the tables `patterns` select (DESIGN §5) and
/// returns a reader per table, keyed `"schema.table"` (per partition,
/// `"schema.table#k"`, when [`Config::partitions`] splits tables).
pub fn auto_configure<S: AsRef<str>>(
    conninfo: &str,
    patterns: &[S],
) -> Result<BTreeMap<String, ChangeReader>, ClientError> {
    auto_configure_with(conninfo, &Config::new(patterns))
}

/// [`auto_configure`] with every setting.
pub fn auto_configure_with(conninfo: &str, config: &Config) -> Result<BTreeMap<String, ChangeReader>, ClientError> {
    let mut readers = BTreeMap::new();
    for route in configure(conninfo, config)? {
        let reader = ChangeReader::open_waiting(&route.ring_path, &config.consumer, config.ring_timeout)?;
        readers.insert(route.route, reader);
    }
    Ok(readers)
}

/// Configures one merged stream of every matched table (its rows carry
/// `_schema` and `_table`), in commit order.
pub fn auto_configure_merged<S: AsRef<str>>(
    conninfo: &str,
    patterns: &[S],
    slot: &str,
) -> Result<MergedReader, ClientError> {
    let config = Config { route_by_table: false, slot: slot.to_owned(), ..Config::new(patterns) };
    let mut paths: Vec<PathBuf> = configure(conninfo, &config)?.into_iter().map(|r| r.ring_path).collect();
    paths.dedup();
    let readers = paths
        .iter()
        .map(|path| ChangeReader::open_waiting(path, &config.consumer, config.ring_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge_streams(readers))
}

/// The routes of an existing stream whose tables `patterns` select (all of
/// them when `patterns` is empty), without changing the stream.
pub fn routes<S: AsRef<str>>(conninfo: &str, slot: &str, patterns: &[S]) -> Result<Vec<Route>, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    let patterns: Vec<&str> = patterns.iter().map(AsRef::as_ref).collect();
    let rows = client.query(
        "SELECT r.schema_name, r.table_name, r.route, r.ring_path FROM cdc_routes($1) r
         WHERE cardinality($2::text[]) = 0
            OR (r.schema_name, r.table_name) IN (SELECT schema_name, table_name FROM cdc_match_tables($2::text[]))
         ORDER BY r.route",
        &[&slot, &patterns],
    )?;
    Ok(rows.iter().map(Route::from_row).collect())
}

/// Registers consumer `name` for stream `slot` (`cdc_register_consumer`):
/// every ring keeps each change committed from now on until it is
/// acknowledged under that name. Returns whether it was new.
pub fn register_consumer(conninfo: &str, slot: &str, name: &str) -> Result<bool, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    Ok(client.query_one("SELECT cdc_register_consumer($1, $2)", &[&slot, &name])?.get(0))
}

/// Drops consumer `name` of stream `slot` (`cdc_drop_consumer`).
pub fn drop_consumer(conninfo: &str, slot: &str, name: &str) -> Result<(), ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    client.execute("SELECT cdc_drop_consumer($1, $2)", &[&slot, &name])?;
    Ok(())
}

/// A table as `cdc_discover_tables` and `cdc_match_tables` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

/// Every user table of the database (`cdc_discover_tables`).
pub fn discover_tables(conninfo: &str) -> Result<Vec<Table>, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    let rows = client.query("SELECT schema_name, table_name FROM cdc_discover_tables()", &[])?;
    Ok(rows.iter().map(|r| Table { schema: r.get(0), name: r.get(1) }).collect())
}

/// The tables `patterns` select, minus `exclude` (`cdc_match_tables`).
pub fn match_tables<S: AsRef<str>>(conninfo: &str, patterns: &[S], exclude: &[S]) -> Result<Vec<Table>, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    let [patterns, exclude]: [Vec<&str>; 2] = [patterns, exclude].map(|p| p.iter().map(AsRef::as_ref).collect());
    let rows = client.query(
        "SELECT schema_name, table_name FROM cdc_match_tables($1::text[], exclude => $2::text[])",
        &[&patterns, &exclude],
    )?;
    Ok(rows.iter().map(|r| Table { schema: r.get(0), name: r.get(1) }).collect())
}

/// A column as `cdc_table_columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub pg_type: String,
    pub nullable: bool,
    /// The Arrow type its change batch column has.
    pub arrow_type: String,
    /// Whether it identifies rows in the WAL (part of the replica identity).
    pub replica_identity: bool,
}

/// The columns of `schema.table` (`cdc_table_columns`).
pub fn table_columns(conninfo: &str, schema: &str, table: &str) -> Result<Vec<Column>, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    let rows = client.query(
        "SELECT column_name, pg_type, nullable, arrow_type, replica_identity FROM cdc_table_columns($1, $2)",
        &[&schema, &table],
    )?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            pg_type: r.get(1),
            nullable: r.get(2),
            arrow_type: r.get(3),
            replica_identity: r.get(4),
        })
        .collect())
}

/// Reads `cdc_status()`.
pub fn status(conninfo: &str) -> Result<Vec<RouteStatus>, ClientError> {
    let mut client = Client::connect(conninfo, NoTls)?;
    let rows = client.query(
        "SELECT slot_name, route, ring_path, worker_pid, slot_lag_bytes, lag_seconds, ring_fill_bytes,
                ring_capacity_bytes, consumers, changes_per_second, snapshot_state, snapshot_rows_done,
                snapshot_rows_estimated, snapshot_chunks_done, snapshot_rows_per_second, snapshot_eta_seconds,
                slot_wal_status, slot_safe_wal_bytes, problem
         FROM cdc_status()",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| RouteStatus {
            slot: r.get(0),
            route: r.get(1),
            ring_path: r.get(2),
            worker_pid: r.get(3),
            slot_lag_bytes: r.get(4),
            slot_wal_status: r.get(16),
            slot_safe_wal_bytes: r.get(17),
            problem: r.get(18),
            lag_seconds: r.get(5),
            ring_fill_bytes: r.get(6),
            ring_capacity_bytes: r.get(7),
            consumers: r.get(8),
            changes_per_second: r.get(9),
            snapshot: r.get::<_, Option<String>>(10).map(|state| SnapshotProgress {
                state,
                rows_done: r.get::<_, Option<i64>>(11).unwrap_or(0),
                rows_estimated: r.get(12),
                chunks_done: r.get::<_, Option<i64>>(13).unwrap_or(0),
                rows_per_second: r.get(14),
                eta_seconds: r.get(15),
            }),
        })
        .collect())
}

//! The SQL calls of `pgcdc` (DESIGN §5), made over a PostgreSQL connection
//! with the GIL released.

use crate::errors;
use pgcdc_reader::client::{self, Config};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::time::Duration;

type Route = (String, String, String, String);

fn routes_of(routes: Vec<client::Route>) -> Vec<Route> {
    routes.into_iter().map(|r| (r.schema, r.table, r.route, r.ring_path.display().to_string())).collect()
}

/// `cdc_auto_configure`: (schema, table, route, ring path) per table.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the SQL function's named arguments
fn configure(
    py: Python<'_>,
    conninfo: &str,
    patterns: Vec<String>,
    exclude: Vec<String>,
    slot: String,
    route_by_table: bool,
    partitions: i32,
    consumer: String,
    snapshot: String,
) -> PyResult<Vec<Route>> {
    let config = Config {
        patterns,
        exclude,
        slot,
        route_by_table,
        partitions,
        consumer,
        snapshot,
        ring_timeout: Duration::ZERO,
    };
    py.detach(|| client::configure(conninfo, &config)).map(routes_of).map_err(errors::from_client)
}

/// `cdc_routes`: the routes of an existing stream whose tables `patterns`
/// select (all when empty).
#[pyfunction]
fn routes(py: Python<'_>, conninfo: &str, slot: &str, patterns: Vec<String>) -> PyResult<Vec<Route>> {
    py.detach(|| client::routes(conninfo, slot, &patterns)).map(routes_of).map_err(errors::from_client)
}

/// `cdc_discover_tables`: (schema, table) of every user table.
#[pyfunction]
fn discover_tables(py: Python<'_>, conninfo: &str) -> PyResult<Vec<(String, String)>> {
    let tables = py.detach(|| client::discover_tables(conninfo)).map_err(errors::from_client)?;
    Ok(tables.into_iter().map(|t| (t.schema, t.name)).collect())
}

/// `cdc_match_tables`: (schema, table) of each table the patterns select.
#[pyfunction]
fn match_tables(
    py: Python<'_>,
    conninfo: &str,
    patterns: Vec<String>,
    exclude: Vec<String>,
) -> PyResult<Vec<(String, String)>> {
    let tables = py.detach(|| client::match_tables(conninfo, &patterns, &exclude)).map_err(errors::from_client)?;
    Ok(tables.into_iter().map(|t| (t.schema, t.name)).collect())
}

/// `cdc_table_columns`: a dict per column.
#[pyfunction]
fn table_columns<'py>(py: Python<'py>, conninfo: &str, schema: &str, table: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let columns = py.detach(|| client::table_columns(conninfo, schema, table)).map_err(errors::from_client)?;
    columns
        .into_iter()
        .map(|c| {
            let d = PyDict::new(py);
            d.set_item("column_name", c.name)?;
            d.set_item("pg_type", c.pg_type)?;
            d.set_item("nullable", c.nullable)?;
            d.set_item("arrow_type", c.arrow_type)?;
            d.set_item("replica_identity", c.replica_identity)?;
            Ok(d)
        })
        .collect()
}

/// `cdc_status`: a dict per route, its snapshot's progress a dict (None
/// when none was taken).
#[pyfunction]
fn status<'py>(py: Python<'py>, conninfo: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let routes = py.detach(|| client::status(conninfo)).map_err(errors::from_client)?;
    routes
        .into_iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("slot_name", r.slot)?;
            d.set_item("route", r.route)?;
            d.set_item("ring_path", r.ring_path)?;
            d.set_item("worker_pid", r.worker_pid)?;
            d.set_item("slot_lag_bytes", r.slot_lag_bytes)?;
            d.set_item("slot_wal_status", r.slot_wal_status)?;
            d.set_item("slot_safe_wal_bytes", r.slot_safe_wal_bytes)?;
            d.set_item("problem", r.problem)?;
            d.set_item("lag_seconds", r.lag_seconds)?;
            d.set_item("ring_fill_bytes", r.ring_fill_bytes)?;
            d.set_item("ring_capacity_bytes", r.ring_capacity_bytes)?;
            d.set_item("consumers", r.consumers)?;
            d.set_item("changes_per_second", r.changes_per_second)?;
            let snapshot = r
                .snapshot
                .map(|s| -> PyResult<Bound<'py, PyDict>> {
                    let p = PyDict::new(py);
                    p.set_item("state", s.state)?;
                    p.set_item("rows_done", s.rows_done)?;
                    p.set_item("rows_estimated", s.rows_estimated)?;
                    p.set_item("chunks_done", s.chunks_done)?;
                    p.set_item("rows_per_second", s.rows_per_second)?;
                    p.set_item("eta_seconds", s.eta_seconds)?;
                    Ok(p)
                })
                .transpose()?;
            d.set_item("snapshot", snapshot)?;
            Ok(d)
        })
        .collect()
}

/// `cdc_register_consumer`: whether the consumer was new.
#[pyfunction]
fn register_consumer(py: Python<'_>, conninfo: &str, slot: &str, name: &str) -> PyResult<bool> {
    py.detach(|| client::register_consumer(conninfo, slot, name)).map_err(errors::from_client)
}

/// `cdc_drop_consumer`.
#[pyfunction]
fn drop_consumer(py: Python<'_>, conninfo: &str, slot: &str, name: &str) -> PyResult<()> {
    py.detach(|| client::drop_consumer(conninfo, slot, name)).map_err(errors::from_client)
}

/// The user and password a conninfo (key=value or URI) names, for logging
/// in to `pgcdc serve`.
#[pyfunction]
fn credentials(conninfo: &str) -> PyResult<(Option<String>, Option<String>)> {
    let config: postgres::Config = conninfo.parse().map_err(|e| errors::from_postgres(&e))?;
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    Ok((config.get_user().map(str::to_owned), password))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(configure, m)?)?;
    m.add_function(wrap_pyfunction!(routes, m)?)?;
    m.add_function(wrap_pyfunction!(discover_tables, m)?)?;
    m.add_function(wrap_pyfunction!(match_tables, m)?)?;
    m.add_function(wrap_pyfunction!(table_columns, m)?)?;
    m.add_function(wrap_pyfunction!(status, m)?)?;
    m.add_function(wrap_pyfunction!(register_consumer, m)?)?;
    m.add_function(wrap_pyfunction!(drop_consumer, m)?)?;
    m.add_function(wrap_pyfunction!(credentials, m)?)
}

//! `cdc_snapshot`, `cdc_snapshot_cancel` and `cdc_snapshots()`: asking for
//! snapshots of a stream's tables, stopping them, and watching them go.

use super::discover;
use super::error::SqlError;
use super::lookup;
use crate::snapshot::{self, Requested};
use pgcdc_reader::pattern::{nearest, TableFilter};
use pgcdc_reader::ring::file;
use pgcdc_reader::snapshot::failed_file_name;
use pgrx::spi::Spi;

/// Asks for a snapshot of the tables of stream `slot` that `patterns`
/// select (every table of the stream when None); the stream's worker
/// starts its snapshot workers within a second of the commit.
pub fn request(slot: &str, patterns: Option<&[String]>) -> Result<Vec<Requested>, SqlError> {
    super::configure::require_catalog_access()?;
    let tables = stream_tables(slot, patterns)?;
    Ok(snapshot::request(slot, &tables, false)?)
}

/// Cancels the pending and running snapshots of the tables `patterns`
/// select (all of the stream's when None); returns those cancelled.
pub fn cancel(slot: &str, patterns: Option<&[String]>) -> Result<Vec<Requested>, SqlError> {
    super::configure::require_catalog_access()?;
    let tables = stream_tables(slot, patterns)?;
    let mut cancelled = Vec::new();
    for (relid, schema, table) in tables {
        let Some(id) = snapshot::in_progress(slot, relid)? else { continue };
        if snapshot::stop(slot, id, "cancelled", None)? {
            cancelled.push(Requested { snapshot: id, schema, table, state: "cancelled".into() });
        }
    }
    Ok(cancelled)
}

/// The tables of stream `slot` that `patterns` select, each pattern
/// matching one.
fn stream_tables(slot: &str, patterns: Option<&[String]>) -> Result<Vec<(u32, String, String)>, SqlError> {
    let exists: Option<bool> = lookup::optional("SELECT true FROM pgcdc.streams WHERE slot_name = $1", &[slot.into()])?;
    if exists.is_none() {
        return Err(SqlError::NoSuchStream(slot.to_owned()));
    }
    let tables: Vec<(u32, String, String)> = Spi::connect(|client| {
        client
            .select(
                "SELECT DISTINCT relid::int8, schema_name::text, table_name::text FROM pgcdc.routes
                 WHERE slot_name = $1 ORDER BY 2, 3",
                None,
                &[slot.into()],
            )?
            .map(|row| {
                Ok((
                    u32::try_from(row.get::<i64>(1)?.unwrap_or(0)).unwrap_or(0),
                    row.get::<String>(2)?.unwrap_or_default(),
                    row.get::<String>(3)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })?;
    let Some(patterns) = patterns else { return Ok(tables) };
    let filter = TableFilter::new(patterns, &[] as &[String])?;
    let database = discover::current_database()?;
    let names: Vec<(String, String)> = tables.iter().map(|(_, s, t)| (s.clone(), t.clone())).collect();
    let unmatched: Vec<String> = filter.unmatched(&database, &names).iter().map(|p| p.source().to_owned()).collect();
    if !unmatched.is_empty() {
        let nearest = nearest(&unmatched[0], &names, 3);
        return Err(SqlError::NotInStream { slot: slot.to_owned(), patterns: unmatched, nearest });
    }
    Ok(tables.into_iter().filter(|(_, s, t)| filter.matches(&database, s, t)).collect())
}

/// A snapshot as `cdc_snapshots()` shows it.
pub struct SnapshotRow {
    pub slot: String,
    pub snapshot: i64,
    pub schema: String,
    pub table: String,
    pub state: String,
    pub rows_done: i64,
    pub rows_estimated: Option<i64>,
    pub chunks_done: i64,
    pub ranges: i32,
    pub ranges_done: i32,
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub requested_at: pgrx::datum::TimestampWithTimeZone,
    pub started_at: Option<pgrx::datum::TimestampWithTimeZone>,
    pub finished_at: Option<pgrx::datum::TimestampWithTimeZone>,
    pub error: Option<String>,
}

/// The snapshots of stream `slot` (of every stream when None), newest
/// first, of the tables the current role may SELECT. A snapshot whose
/// chunk the stream could not deliver shows as failed, with why.
pub fn list(slot: Option<&str>) -> Result<Vec<SnapshotRow>, SqlError> {
    let mut rows = Spi::connect(|client| {
        client
            .select(
                "SELECT s.slot_name::text, s.snapshot_id, s.schema_name::text, s.table_name::text, s.state,
                        coalesce(sum(r.rows), 0)::int8, s.rows_estimated, coalesce(sum(r.chunks), 0)::int8,
                        count(r.range_no)::int4, (count(r.range_no) FILTER (WHERE r.done))::int4,
                        extract(epoch FROM coalesce(s.finished_at, now()) - s.started_at)::float8,
                        s.requested_at, s.started_at, s.finished_at, s.error
                 FROM pgcdc.snapshots s LEFT JOIN pgcdc.snapshot_ranges r USING (snapshot_id)
                 WHERE ($1::text IS NULL OR s.slot_name = $1)
                   AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = s.relid AND has_table_privilege(c.oid, 'SELECT'))
                 GROUP BY s.snapshot_id ORDER BY s.snapshot_id DESC",
                None,
                &[slot.into()],
            )?
            .map(|row| {
                let rows_done: i64 = row.get(6)?.unwrap_or(0);
                let rows_estimated: Option<i64> = row.get(7)?;
                let elapsed: Option<f64> = row.get(11)?;
                let rate = elapsed.filter(|e| *e > 0.0).map(|e| rows_done as f64 / e);
                let state: String = row.get(5)?.unwrap_or_default();
                let eta = match (state.as_str(), rate, rows_estimated) {
                    ("running", Some(rate), Some(estimate)) if rate > 0.0 => {
                        Some((estimate - rows_done).max(0) as f64 / rate)
                    }
                    _ => None,
                };
                Ok(SnapshotRow {
                    slot: row.get(1)?.unwrap_or_default(),
                    snapshot: row.get(2)?.unwrap_or(0),
                    schema: row.get(3)?.unwrap_or_default(),
                    table: row.get(4)?.unwrap_or_default(),
                    state,
                    rows_done,
                    rows_estimated,
                    chunks_done: row.get(8)?.unwrap_or(0),
                    ranges: row.get(9)?.unwrap_or(0),
                    ranges_done: row.get(10)?.unwrap_or(0),
                    rows_per_second: rate,
                    eta_seconds: eta,
                    requested_at: row.get(12)?.expect("requested_at is NOT NULL"),
                    started_at: row.get(13)?,
                    finished_at: row.get(14)?,
                    error: row.get(15)?,
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })?;
    for row in &mut rows {
        let path = snapshot::snapshot_dir(&row.slot).join(failed_file_name(row.snapshot as u64));
        // The stream's word on a chunk counts while the snapshot may still
        // complete (a cancelled one stays cancelled).
        if row.state == "cancelled" {
            continue;
        }
        if let Ok(why) = file::read_private(&path) {
            row.state = "failed".into();
            row.error = Some(String::from_utf8_lossy(&why).into_owned());
            row.eta_seconds = None;
        }
    }
    Ok(rows)
}

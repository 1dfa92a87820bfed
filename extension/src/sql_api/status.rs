//! `cdc_status()`, `cdc_routes()` and `cdc_consumers()`: per route and per
//! consumer, how far behind the readers are, from the ring headers.
//!
//! A stream's routes are the ones `cdc_auto_configure` recorded plus any
//! ring the worker made for a table published some other way: every ring
//! is shown, since every ring holds changes someone may be waiting for —
//! to a role that may SELECT its table (the others' routes it does not see).

use super::configure::worker_pids;
use super::error::SqlError;
use crate::worker;
use pgcdc_reader::ring::file::{self, RingKey};
use pgcdc_reader::ring::{now_ms, Ring};
use pgcdc_reader::status::{RouteStatus, SnapshotProgress};
use pgrx::spi::Spi;
use std::collections::BTreeMap;

/// One route of a stream and its ring file.
pub struct RouteRow {
    pub slot: String,
    pub schema: String,
    pub table: String,
    pub route: String,
    pub ring_path: String,
}

/// The routes of stream `slot` (of every stream when None), sorted.
pub fn routes(slot: Option<&str>) -> Result<Vec<RouteRow>, SqlError> {
    let recorded = Spi::connect(|client| {
        let rows = client.select(
            "SELECT r.slot_name::text, r.relid::int8, r.schema_name::text, r.table_name::text, r.route, r.partition,
                    r.partitions, s.route_by_table
             FROM pgcdc.routes r JOIN pgcdc.streams s USING (slot_name)
             WHERE ($1::text IS NULL OR r.slot_name = $1)
               AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = r.relid AND has_table_privilege(c.oid, 'SELECT'))
             ORDER BY 1, 3, 4, 6",
            None,
            &[slot.into()],
        )?;
        rows.map(|row| {
            let slot: String = row.get(1)?.unwrap_or_default();
            let relation = row.get::<i64>(2)?.and_then(|r| u32::try_from(r).ok()).unwrap_or(0);
            let partition = row.get::<i32>(6)?.and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
            let partitions = row.get::<i32>(7)?.and_then(|p| u32::try_from(p).ok()).unwrap_or(1);
            let key = if row.get::<bool>(8)?.unwrap_or(true) {
                RingKey::Table { relation, partition, partitions }
            } else {
                RingKey::Merged
            };
            let ring_path = worker::stream_dir(&slot).join(key.file_name()).display().to_string();
            Ok(RouteRow {
                slot,
                schema: row.get(3)?.unwrap_or_default(),
                table: row.get(4)?.unwrap_or_default(),
                route: row.get(5)?.unwrap_or_default(),
                ring_path,
            })
        })
        .collect::<Result<Vec<_>, SqlError>>()
    })?;
    let mut rows = recorded;
    // Rings of tables the catalog does not list (published by hand).
    let slots: Vec<String> = match slot {
        Some(slot) => vec![slot.to_owned()],
        None => Spi::connect(|client| {
            client
                .select("SELECT slot_name::text FROM pgcdc.streams ORDER BY 1", None, &[])?
                .map(|row| Ok(row.get::<String>(1)?.unwrap_or_default()))
                .collect::<Result<Vec<_>, SqlError>>()
        })?,
    };
    for slot in slots {
        for path in file::rings_in(&worker::stream_dir(&slot))? {
            let ring_path = path.display().to_string();
            if rows.iter().any(|r| r.ring_path == ring_path) {
                continue;
            }
            let Ok(ring) = file::open(&path) else { continue };
            let identity = ring.identity();
            let readable: Option<bool> = super::lookup::optional(
                "SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c WHERE c.oid = $1::int8::oid",
                &[i64::from(identity.relation).into()],
            )?;
            if readable != Some(true) {
                continue;
            }
            let route = identity.route;
            let (schema, table) = route.split_once('.').map(|(s, t)| (s.to_owned(), t.to_owned())).unwrap_or_default();
            rows.push(RouteRow { slot: slot.clone(), schema, table, route, ring_path });
        }
    }
    rows.sort_by(|a, b| (&a.slot, &a.route).cmp(&(&b.slot, &b.route)));
    Ok(rows)
}

/// A ring of a stream, as its route names it (None while it is missing),
/// and the tables whose changes it carries.
struct StreamRing {
    slot: String,
    route: String,
    path: String,
    ring: Option<Ring>,
    tables: Vec<(String, String)>,
}

/// Every ring of every stream, once (a merged route has one ring for
/// several tables).
fn rings() -> Result<Vec<StreamRing>, SqlError> {
    let mut seen: BTreeMap<String, (String, String, Vec<(String, String)>)> = BTreeMap::new();
    for route in routes(None)? {
        let entry = seen.entry(route.ring_path.clone()).or_insert((route.slot, route.route, Vec::new()));
        entry.2.push((route.schema, route.table));
    }
    Ok(seen
        .into_iter()
        .map(|(path, (slot, route, tables))| {
            let ring = file::open(std::path::Path::new(&path)).ok();
            StreamRing { slot, route, path, ring, tables }
        })
        .collect())
}

/// What `pg_replication_slots` says of a stream's slot.
#[derive(Default)]
struct SlotRow {
    lag_bytes: Option<i64>,
    wal_status: Option<String>,
    safe_wal_bytes: Option<i64>,
    /// Why the stream cannot go on, and what to do, when it cannot.
    problem: Option<String>,
}

/// The slot of every stream.
fn slots() -> Result<BTreeMap<String, SlotRow>, SqlError> {
    Spi::connect(|client| {
        let rows = client.select(
            &format!(
                "SELECT st.slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8,
                        s.wal_status, s.safe_wal_size::int8, {}, s.slot_name IS NULL
                 FROM pgcdc.streams st LEFT JOIN pg_replication_slots s ON s.slot_name = st.slot_name",
                worker::SLOT_INVALIDATED
            ),
            None,
            &[],
        )?;
        rows.map(|row| {
            let slot: String = row.get(1)?.unwrap_or_default();
            let problem = match (row.get::<String>(5)?, row.get::<bool>(6)?.unwrap_or(false)) {
                (Some(why), _) => Some(worker::invalidated_remedy(&slot, &why)),
                (None, true) => Some(format!(
                    "replication slot \"{slot}\" is gone (dropped outside pgcdc). Run cdc_auto_configure for the stream \
                     again: it makes a new slot and snapshots the stream's tables again"
                )),
                (None, false) => None,
            };
            let found = SlotRow { lag_bytes: row.get(2)?, wal_status: row.get(3)?, safe_wal_bytes: row.get(4)?, problem };
            Ok((slot, found))
        })
        .collect::<Result<_, SqlError>>()
    })
}

pub fn status() -> Result<Vec<RouteStatus>, SqlError> {
    let slots = slots()?;
    // The latest snapshot of each table (they come newest first).
    let mut latest: BTreeMap<(String, String, String), SnapshotProgress> = BTreeMap::new();
    for s in super::snapshots::list(None)? {
        latest.entry((s.slot, s.schema, s.table)).or_insert(SnapshotProgress {
            state: s.state,
            rows_done: s.rows_done,
            rows_estimated: s.rows_estimated,
            chunks_done: s.chunks_done,
            rows_per_second: s.rows_per_second,
            eta_seconds: s.eta_seconds,
        });
    }
    let now = now_ms();
    let mut out = Vec::new();
    for StreamRing { slot, route, path: ring_path, ring, tables } in rings()? {
        let ring = ring.map(|r| r.status());
        let snapshot = SnapshotProgress::combine(
            tables.into_iter().filter_map(|(schema, table)| latest.get(&(slot.clone(), schema, table)).cloned()),
        );
        let found = slots.get(&slot);
        out.push(RouteStatus {
            snapshot,
            worker_pid: worker_pids(&slot)?.first().copied(),
            ring_path,
            slot_lag_bytes: found.and_then(|s| s.lag_bytes),
            slot_wal_status: found.and_then(|s| s.wal_status.clone()),
            slot_safe_wal_bytes: found.and_then(|s| s.safe_wal_bytes),
            problem: found.and_then(|s| s.problem.clone()),
            lag_seconds: ring.as_ref().map_or(0.0, |r| r.lag_ms(now) as f64 / 1000.0),
            ring_fill_bytes: ring.as_ref().map_or(0, |r| r.fill() as i64),
            ring_capacity_bytes: ring.as_ref().map_or(0, |r| r.capacity as i64),
            consumers: ring
                .as_ref()
                .map_or_else(Vec::new, |r| r.consumers.iter().map(|c| describe(r, c, now)).collect()),
            changes_per_second: ring.as_ref().map_or(0, |r| r.rows_per_second as i64),
            slot,
            route,
        });
    }
    Ok(out)
}

/// A consumer as `cdc_status()` lists it: `name (pid N)`, or `name
/// (gone)` when its process is not running, and, while it has frames to
/// acknowledge, how far behind it is and since when it was last seen.
fn describe(ring: &pgcdc_reader::ring::RingStatus, c: &pgcdc_reader::ring::ConsumerStatus, now: u64) -> String {
    let who = if c.alive { format!("pid {}", c.pid) } else { "gone".to_owned() };
    if ring.is_valid(c) && c.ack_pos < ring.write_pos {
        let idle = now.saturating_sub(c.heartbeat_ms) / 1000;
        format!("{} ({who}, {} bytes behind, idle {idle} s)", c.name, ring.write_pos - c.ack_pos)
    } else {
        format!("{} ({who})", c.name)
    }
}

/// One consumer of one ring.
pub struct ConsumerRow {
    pub slot: String,
    pub route: String,
    pub name: String,
    /// Its process, while one runs.
    pub pid: Option<i32>,
    /// The last transaction it acknowledged completely, as PostgreSQL
    /// prints LSNs.
    pub acknowledged_lsn: String,
    /// Bytes of the ring it has not acknowledged.
    pub lag_bytes: i64,
    /// Seconds since it last read or acknowledged.
    pub idle_seconds: f64,
    /// Whether it has frames left to acknowledge: it keeps them in the ring,
    /// and the slot from confirming past them.
    pub holds_back: bool,
}

pub fn consumers() -> Result<Vec<ConsumerRow>, SqlError> {
    let now = now_ms();
    let mut out = Vec::new();
    for StreamRing { slot, route, ring, .. } in rings()? {
        let Some(ring) = ring else { continue };
        let status = ring.status();
        for c in &status.consumers {
            let valid = status.is_valid(c);
            out.push(ConsumerRow {
                slot: slot.clone(),
                route: route.clone(),
                name: c.name.clone(),
                pid: c.alive.then_some(c.pid as i32),
                acknowledged_lsn: format!("{:X}/{:X}", c.ack_lsn >> 32, c.ack_lsn & 0xffff_ffff),
                lag_bytes: if valid { (status.write_pos - c.ack_pos) as i64 } else { 0 },
                idle_seconds: now.saturating_sub(c.heartbeat_ms) as f64 / 1000.0,
                holds_back: valid && c.ack_pos < status.write_pos,
            });
        }
    }
    Ok(out)
}

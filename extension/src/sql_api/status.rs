//! `cdc_status()`: per route, how far behind its readers are.

use super::configure::worker_pids;
use super::discover;
use super::error::SqlError;
use crate::gucs;
use pgcdc_reader::ring::{file, now_ms};
use pgcdc_reader::status::RouteStatus;
use pgrx::spi::Spi;

pub fn status() -> Result<Vec<RouteStatus>, SqlError> {
    let routes: Vec<(String, String, Option<i64>)> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT r.slot_name::text, r.route,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8
             FROM (SELECT DISTINCT slot_name, route FROM pgcdc.routes) r
             LEFT JOIN pg_replication_slots s ON s.slot_name = r.slot_name
             ORDER BY 1, 2",
            None,
            &[],
        )?;
        rows.map(|row| Ok((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default(), row.get(3)?)))
            .collect::<Result<Vec<_>, SqlError>>()
    })?;
    let database = discover::current_database()?;
    let dir = std::path::PathBuf::from(gucs::ring_directory());
    let now = now_ms();
    let mut out = Vec::with_capacity(routes.len());
    for (slot, route, slot_lag_bytes) in routes {
        let path = file::route_path(&dir, &database, &slot, &route);
        let ring = file::open(&path).ok().map(|ring| ring.status());
        out.push(RouteStatus {
            worker_pid: worker_pids(&slot)?.first().copied(),
            ring_path: path.display().to_string(),
            slot_lag_bytes,
            lag_seconds: ring.as_ref().map_or(0.0, |r| r.lag_ms(now) as f64 / 1000.0),
            ring_fill_bytes: ring.as_ref().map_or(0, |r| r.fill() as i64),
            ring_capacity_bytes: ring.as_ref().map_or(0, |r| r.capacity as i64),
            consumers: ring.as_ref().map_or_else(Vec::new, |r| {
                r.consumers
                    .iter()
                    .map(|c| if c.alive { format!("{} (pid {})", c.name, c.pid) } else { format!("{} (gone)", c.name) })
                    .collect()
            }),
            changes_per_second: ring.as_ref().map_or(0, |r| r.rows_per_second as i64),
            slot,
            route,
        });
    }
    Ok(out)
}

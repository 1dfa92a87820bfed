//! One route's state, as `cdc_status()` reports it (the extension fills it
//! from the ring headers; `client::status` reads it back).

/// One route's state.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    pub slot: String,
    pub route: String,
    pub ring_path: String,
    pub worker_pid: Option<i32>,
    /// WAL the slot retains: from its confirmed position to the current end.
    pub slot_lag_bytes: Option<i64>,
    /// The slot's `wal_status`: `reserved`, `extended` (retained beyond
    /// max_wal_size), `unreserved` (about to be invalidated) or `lost`.
    pub slot_wal_status: Option<String>,
    /// WAL that may still be written before the slot is invalidated
    /// (`safe_wal_size`; None without max_slot_wal_keep_size).
    pub slot_safe_wal_bytes: Option<i64>,
    /// Why the stream cannot go on and what to do (an invalidated or
    /// missing slot); None while it can.
    pub problem: Option<String>,
    /// How long the oldest unacknowledged change has waited in the ring.
    pub lag_seconds: f64,
    pub ring_fill_bytes: i64,
    pub ring_capacity_bytes: i64,
    /// `name (pid N)` of each registered consumer (`name (gone)` when its
    /// process is not running), with `, B bytes behind, idle S s` while it
    /// has frames to acknowledge.
    pub consumers: Vec<String>,
    pub changes_per_second: i64,
    /// The latest snapshot of the route's tables (for a route of several
    /// tables, all of theirs together); None when none was ever taken.
    pub snapshot: Option<SnapshotProgress>,
}

/// How far the snapshot of a route's tables went: `running` while one of
/// them is being read (or `pending` before), else `failed` if one failed,
/// else the state of the latest.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotProgress {
    pub state: String,
    pub rows_done: i64,
    /// From the planner's statistics when the snapshot started.
    pub rows_estimated: Option<i64>,
    pub chunks_done: i64,
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
}

impl SnapshotProgress {
    /// The progress of several tables' snapshots as one.
    pub fn combine(parts: impl IntoIterator<Item = SnapshotProgress>) -> Option<SnapshotProgress> {
        let parts: Vec<SnapshotProgress> = parts.into_iter().collect();
        let first = parts.first()?;
        let any = |state: &str| parts.iter().any(|p| p.state == state);
        let state = ["running", "pending", "failed"].into_iter().find(|s| any(s)).unwrap_or(&first.state);
        let sum = |f: fn(&SnapshotProgress) -> Option<f64>| -> Option<f64> {
            parts.iter().filter_map(f).reduce(|a, b| a + b)
        };
        Some(SnapshotProgress {
            state: state.to_owned(),
            rows_done: parts.iter().map(|p| p.rows_done).sum(),
            rows_estimated: parts.iter().filter_map(|p| p.rows_estimated).reduce(|a, b| a + b),
            chunks_done: parts.iter().map(|p| p.chunks_done).sum(),
            rows_per_second: sum(|p| (p.state == "running").then_some(p.rows_per_second).flatten()),
            eta_seconds: parts.iter().filter_map(|p| p.eta_seconds).reduce(f64::max),
        })
    }

    /// `running 40% (12000 of ~30000 rows, 5000 rows/s, 3 s left)`, as
    /// `pgcdc status` prints it.
    pub fn describe(&self) -> String {
        let mut out = self.state.clone();
        if let Some(estimate) = self.rows_estimated.filter(|_| self.state == "running") {
            let percent = 100.0 * self.rows_done as f64 / estimate.max(1) as f64;
            out += &format!(" {:.0}% ({} of ~{estimate} rows", percent.min(100.0), self.rows_done);
        } else {
            out += &format!(" ({} rows", self.rows_done);
        }
        if let Some(rate) = self.rows_per_second.filter(|_| self.state == "running") {
            out += &format!(", {rate:.0} rows/s");
        }
        if let Some(eta) = self.eta_seconds {
            out += &format!(", {eta:.0} s left");
        }
        out + ")"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(state: &str, done: i64, estimated: i64, rate: f64, eta: Option<f64>) -> SnapshotProgress {
        SnapshotProgress {
            state: state.into(),
            rows_done: done,
            rows_estimated: Some(estimated),
            chunks_done: done / 10,
            rows_per_second: Some(rate),
            eta_seconds: eta,
        }
    }

    #[test]
    fn a_route_of_several_tables_shows_their_snapshots_as_one() {
        let both = SnapshotProgress::combine([
            progress("complete", 100, 90, 50.0, None),
            progress("running", 30, 300, 10.0, Some(27.0)),
        ])
        .unwrap();
        assert_eq!(both, progress("running", 130, 390, 10.0, Some(27.0)), "the rate of what still runs");
        assert_eq!(both.describe(), "running 33% (130 of ~390 rows, 10 rows/s, 27 s left)");
        let done = SnapshotProgress::combine([progress("complete", 100, 90, 50.0, None)]).unwrap();
        assert_eq!(done.describe(), "complete (100 rows)");
        assert_eq!(SnapshotProgress::combine([]), None);
    }
}

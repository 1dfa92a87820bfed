//! Where the worker's decoded messages go: one ring per route, chosen by
//! the message's table, with back-pressure when a ring is full.

use crate::plugin::current_message;
use pgcdc_encode::ipc;
use pgcdc_reader::ring::layout::Geometry;
use pgcdc_reader::ring::now_ms;
use pgcdc_reader::ring::{file, RingError, RingWriter, Written};
use pgrx::pg_sys;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

/// A route's ring, the schema last published to it, and what the status
/// needs: when each unacknowledged frame was written, and row counts.
struct Route {
    writer: RingWriter,
    fingerprint: Option<u64>,
    /// (end position, written at ms) of frames not yet acknowledged by all.
    unacked: VecDeque<(u64, u64)>,
    rows_written: u64,
    /// Rows written when the current rate period began, and when.
    period: (u64, Instant),
    rate: u64,
}

/// One stream's rings.
pub struct Sink {
    routes: Vec<Route>,
    /// (schema, table) → index into `routes`.
    by_table: HashMap<(String, String), usize>,
    /// End LSN of the last commit that went through the plugin.
    committed: u64,
    /// `committed` when the open batches were last written.
    flushed: u64,
}

/// Where a table's changes go, as `pgcdc.routes` records it.
pub struct RouteSpec {
    pub schema: String,
    pub table: String,
    pub route: String,
}

impl Sink {
    /// Opens (or creates) the ring of every route of `slot`.
    pub fn open(
        dir: &Path,
        database: &str,
        slot: &str,
        routes: &[RouteSpec],
        geometry: Geometry,
        group: Option<u32>,
    ) -> Result<Sink, RingError> {
        let mut sink = Sink { routes: Vec::new(), by_table: HashMap::new(), committed: 0, flushed: 0 };
        let mut index: HashMap<&str, usize> = HashMap::new();
        for spec in routes {
            let i = match index.get(spec.route.as_str()) {
                Some(i) => *i,
                None => {
                    let path = file::route_path(dir, database, slot, &spec.route);
                    let ring = file::open_or_create(&path, geometry, group)?;
                    let writer = RingWriter::new(ring);
                    let rows_written = writer.rows_written();
                    sink.routes.push(Route {
                        writer,
                        fingerprint: None,
                        unacked: VecDeque::new(),
                        rows_written,
                        period: (rows_written, Instant::now()),
                        rate: 0,
                    });
                    index.insert(&spec.route, sink.routes.len() - 1);
                    sink.routes.len() - 1
                }
            };
            sink.by_table.insert((spec.schema.clone(), spec.table.clone()), i);
        }
        Ok(sink)
    }

    /// Writes one plugin message to its table's ring, waiting while the
    /// ring is full (interrupts and shutdown requests are served meanwhile).
    pub fn write(&mut self, bytes: &[u8]) {
        let Some(message) = current_message() else { return };
        let spec = message.schema.spec();
        let Some(&i) = self.by_table.get(&(spec.schema.clone(), spec.table.clone())) else {
            // The publication only holds routed tables; anything else (a
            // table added behind the catalog's back) is not this stream's.
            return;
        };
        let route = &mut self.routes[i];
        if route.fingerprint != Some(message.schema.fingerprint()) {
            let mut schema = Vec::new();
            if ipc::write_schema_stream(message.schema.arrow(), &mut schema).is_ok() {
                // A schema too large for the header area is only a missed
                // convenience for late readers: every frame carries its own.
                let _ = route.writer.publish_schema(&schema);
            }
            route.fingerprint = Some(message.schema.fingerprint());
        }
        loop {
            match route.writer.write(bytes, message.max_commit_lsn, Duration::from_millis(100)) {
                Ok(Written::Done { end_pos }) => {
                    route.unacked.push_back((end_pos, now_ms()));
                    route.rows_written += message.rows as u64;
                    return;
                }
                Ok(Written::Full) => {
                    pgrx::check_for_interrupts!();
                    // SAFETY: reading a flag the signal handler sets.
                    if unsafe { pg_sys::ShutdownRequestPending } != 0 {
                        // SAFETY: exits like a backend does; the slot is
                        // released by PostgreSQL's exit callbacks.
                        unsafe { pg_sys::proc_exit(0) };
                    }
                }
                Err(e) => pgrx::error!("pgcdc worker: {e}"),
            }
        }
    }

    /// A transaction ending at `lsn` went through the plugin (its rows may
    /// still wait in an open batch).
    pub fn committed(&mut self, lsn: u64) {
        self.committed = self.committed.max(lsn);
    }

    /// Every open batch was written: each transaction that went through
    /// the plugin is complete in the rings, and merging readers may pass it.
    pub fn flushed(&mut self) {
        self.flushed = self.committed;
        let lsn = self.committed;
        self.routes.iter().for_each(|r| r.writer.complete_through(lsn));
    }

    /// The LSN the slot may confirm: everything decoded up to `decoded`
    /// (or, while rows wait in open batches, up to the last flush) that
    /// every registered consumer of every ring either acknowledged or has
    /// read to the end of (a consumer that is caught up holds nothing back,
    /// however quiet its tables).
    pub fn confirmable(&self, decoded: u64, pending: bool) -> u64 {
        let mut bound = if pending { self.flushed } else { decoded };
        for route in &self.routes {
            let status = route.writer.ring().status();
            for consumer in &status.consumers {
                if consumer.ack_pos < status.write_pos {
                    bound = bound.min(consumer.ack_lsn);
                }
            }
        }
        bound
    }

    /// Records that the worker is alive and publishes each ring's lag and
    /// throughput, for readers and `cdc_status`.
    pub fn heartbeat(&mut self) {
        for route in &mut self.routes {
            route.writer.heartbeat();
            let acknowledged = route.writer.ring().status().min_ack_pos();
            while route.unacked.front().is_some_and(|(end, _)| *end <= acknowledged) {
                route.unacked.pop_front();
            }
            let elapsed = route.period.1.elapsed();
            if elapsed >= Duration::from_secs(1) {
                route.rate = ((route.rows_written - route.period.0) as f64 / elapsed.as_secs_f64()) as u64;
                route.period = (route.rows_written, Instant::now());
            }
            let oldest = route.unacked.front().map_or(0, |(_, at)| *at);
            route.writer.publish_stats(oldest, route.rows_written, route.rate);
        }
    }
}

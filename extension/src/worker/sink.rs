//! Where the worker's decoded messages go: one ring per route, chosen by
//! the message's table, with back-pressure when a ring is full.

use crate::plugin::{current_message, Message};
use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::UInt32Array;
use pgcdc_encode::ipc;
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::contract::{self, Op};
use pgcdc_reader::ring::layout::Geometry;
use pgcdc_reader::ring::now_ms;
use pgcdc_reader::ring::{file, RingError, RingWriter, Written};
use pgcdc_reader::HashPartitioner;
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
    /// schema → table → index into `routes` of each key-hash partition
    /// (nested, so a message's names look up without copies).
    by_table: HashMap<String, HashMap<String, Vec<usize>>>,
    /// End LSN of the last commit that went through the plugin.
    committed: u64,
    /// `committed` when the open batches were last written.
    flushed: u64,
}

/// One partition's share of a message: an IPC stream, its highest commit
/// LSN and its row count.
type Part = (Vec<u8>, u64, usize);

/// Splits a message into `n` by a hash of the table's replica identity
/// columns (`pg.key`; every column when none is), keeping each key's rows
/// in order. TRUNCATE rows go to every partition. Each part is an IPC
/// stream with its highest commit LSN and row count, or None when empty.
fn split_by_key(bytes: &[u8], n: usize) -> Result<Vec<Option<Part>>, arrow_schema::ArrowError> {
    let mut parts = vec![None; n];
    // A plugin message holds one record batch.
    if let Some(batch) = ipc::read_stream(bytes)?.into_iter().next() {
        let schema = batch.schema();
        let mut keys: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| f.metadata().get(contract::FIELD_PG_KEY).is_some_and(|k| k == "true"))
            .map(|f| f.name().clone())
            .collect();
        if keys.is_empty() {
            keys = schema
                .fields()
                .iter()
                .filter(|f| f.metadata().contains_key(contract::FIELD_PG_TYPE))
                .map(|f| f.name().clone())
                .collect();
        }
        let assignment = HashPartitioner::new(&keys, n).assign(&batch)?;
        let ops = batch
            .column_by_name(contract::OP)
            .and_then(|c| c.as_dictionary_opt::<Int8Type>())
            .map(|d| d.keys().values().to_vec())
            .unwrap_or_default();
        let truncate = Op::Truncate.dictionary_key();
        for (k, part) in parts.iter_mut().enumerate() {
            let rows: Vec<u32> = (0..batch.num_rows())
                .filter(|r| assignment[*r] == k || ops.get(*r) == Some(&truncate))
                .map(|r| r as u32)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let piece = arrow_select::take::take_record_batch(&batch, &UInt32Array::from(rows))?;
            let mut payload = Vec::new();
            ipc::write_stream(&piece, &mut payload)?;
            let max_commit = max_commit_lsn(&piece).unwrap_or(0);
            *part = Some((payload, max_commit, piece.num_rows()));
        }
    }
    Ok(parts)
}

/// Where a table's changes go, as `pgcdc.routes` records it.
pub struct RouteSpec {
    pub schema: String,
    pub table: String,
    pub route: String,
    /// Which of the table's key-hash partitions the route carries.
    pub partition: i32,
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
            let partitions =
                sink.by_table.entry(spec.schema.clone()).or_default().entry(spec.table.clone()).or_default();
            let at = usize::try_from(spec.partition).unwrap_or(0);
            if partitions.len() <= at {
                partitions.resize(at + 1, i);
            }
            partitions[at] = i;
        }
        Ok(sink)
    }

    /// Writes one plugin message to its table's ring, waiting while the
    /// ring is full (interrupts and shutdown requests are served meanwhile).
    pub fn write(&mut self, bytes: &[u8]) {
        let Some(message) = current_message() else { return };
        let spec = message.schema.spec();
        let Some(routes) = self.by_table.get(spec.schema.as_str()).and_then(|t| t.get(spec.table.as_str())) else {
            // The publication only holds routed tables; anything else (a
            // table added behind the catalog's back) is not this stream's.
            return;
        };
        if routes.len() == 1 {
            let i = routes[0];
            self.write_to(i, &message, bytes, message.max_commit_lsn, message.rows);
            return;
        }
        let routes = routes.clone();
        let parts = split_by_key(bytes, routes.len()).unwrap_or_else(|e| pgrx::error!("pgcdc worker: {e}"));
        for (part, route) in parts.into_iter().zip(routes) {
            if let Some((payload, max_commit_lsn, rows)) = part {
                self.write_to(route, &message, &payload, max_commit_lsn, rows);
            }
        }
    }

    /// Writes one frame to one route's ring.
    fn write_to(&mut self, i: usize, message: &Message, bytes: &[u8], max_commit_lsn: u64, rows: usize) {
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
            match route.writer.write(bytes, max_commit_lsn, Duration::from_millis(100)) {
                Ok(Written::Done { end_pos }) => {
                    route.unacked.push_back((end_pos, now_ms()));
                    route.rows_written += rows as u64;
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

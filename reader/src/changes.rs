//! Change batches from a route's ring: decoded from Arrow IPC, with rows
//! seen before dropped, and acknowledged safely.
//!
//! Delivery is at-least-once on the wire: after a worker or server restart,
//! decoding resumes from the slot's confirmed position and re-sends what
//! followed. Every row has a [`Position`] in its route; a [`ChangeReader`]
//! drops rows at or below the last one it returned (after a restart of the
//! reader: the last one its consumer acknowledged, or what the application
//! says with [`resume_after`](ChangeReader::resume_after)), which makes
//! delivery exactly-once per consumer.
//!
//! Acknowledgement is safe by construction: [`ack`](ChangeReader::ack)
//! acknowledges the rows this reader has *returned* whose commit LSN is at
//! or below the one given — never a row still waiting inside the reader,
//! and never, for the slot, a transaction whose later rows are still to
//! come (a transaction may span batches). So the obvious pattern is the
//! right one:
//!
//! ```no_run
//! # fn process(_: &arrow_array::RecordBatch) {}
//! # let path = std::path::Path::new("/dev/shm/pgcdc/x/y/z/1.ring");
//! use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
//! let mut reader = ChangeReader::open(path, "default")?;
//! while let Some(batch) = reader.next_batch(std::time::Duration::from_secs(1))? {
//!     process(&batch);
//!     reader.ack(max_commit_lsn(&batch).unwrap());
//! }
//! # Ok::<(), pgcdc_reader::ReadError>(())
//! ```
//!
//! A crash between `process` and `ack` delivers that batch again to the
//! restarted consumer (at-least-once); an application that records
//! [`position`](ChangeReader::position) with its own results resumes from
//! it with [`resume_at`](ChangeReader::resume_at) and sees each row once.
//! Every row returned must eventually be acknowledged: the ring holds
//! what is not, and a full ring holds back decoding.

use crate::contract;
use crate::position::Position;
use crate::ring::{file, Frame, RingError, RingReader};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{RecordBatch, UInt64Array};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_schema::ArrowError;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What can go wrong reading changes.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("a frame is not a valid Arrow IPC stream: {0}")]
    Arrow(#[from] ArrowError),
    #[error("a batch lacks the contract column {0}")]
    Contract(&'static str),
    #[error("a frame's rows do not match its header: {0}")]
    Positions(String),
}

/// Rows of one batch in their route: the commit LSN of each, which
/// determines each row's [`Position`] from the first one's.
#[derive(Debug, Clone)]
struct Span {
    /// `_commit_lsn` of every row, never decreasing.
    commits: UInt64Array,
    first: Position,
    /// A transaction known to be complete before the first row's (0: none
    /// known).
    prev: u64,
    /// Whether the last row is its transaction's last in the route.
    ends: bool,
}

impl Span {
    fn len(&self) -> usize {
        self.commits.len()
    }

    /// A span of no rows: a marker batch at its `first` position.
    fn marker(at: Position, prev: u64) -> Span {
        Span { commits: UInt64Array::from(Vec::<u64>::new()), first: at, prev, ends: false }
    }

    fn commit(&self, row: usize) -> u64 {
        self.commits.value(row)
    }

    /// The first row whose commit LSN is `commit` or more.
    fn run_start(&self, commit: u64) -> usize {
        self.commits.values().partition_point(|c| *c < commit)
    }

    fn position(&self, row: usize) -> Position {
        let commit = self.commit(row);
        if commit == self.first.commit_lsn {
            Position::new(commit, self.first.index + row as u64)
        } else {
            Position::new(commit, (row - self.run_start(commit) + 1) as u64)
        }
    }

    fn last(&self) -> Position {
        if self.len() == 0 {
            return self.first;
        }
        self.position(self.len() - 1)
    }

    /// How many leading rows have a commit LSN at or below `lsn` and a
    /// position at or below `limit`.
    fn covered(&self, lsn: u64, limit: Position) -> usize {
        let by_lsn = self.commits.values().partition_point(|c| *c <= lsn);
        let below = self.run_start(limit.commit_lsn);
        let run_end = self.commits.values().partition_point(|c| *c <= limit.commit_lsn);
        let by_limit = if below == run_end {
            below
        } else {
            let start = self.position(below).index;
            let within = if limit.index < start { 0 } else { (limit.index - start).saturating_add(1) };
            below + within.min((run_end - below) as u64) as usize
        };
        by_lsn.min(by_limit)
    }

    /// The last transaction known complete once the first `rows` rows are
    /// acknowledged: the last row's own, when no later row of it can come.
    fn complete_after(&self, rows: usize) -> u64 {
        let commit = self.commit(rows - 1);
        let ends_here = if rows < self.len() { self.commit(rows) > commit } else { self.ends };
        if ends_here {
            return commit;
        }
        match self.run_start(commit) {
            0 => self.prev,
            start => self.commit(start - 1),
        }
    }

    /// Drops the first `rows` rows (fewer than all).
    fn advance(&mut self, rows: usize) {
        let first = self.position(rows);
        let prev =
            if self.commit(rows) > self.commit(rows - 1) { self.commit(rows - 1) } else { self.complete_after(rows) };
        self.prev = prev;
        self.first = first;
        self.commits = self.commits.slice(rows, self.len() - rows);
    }
}

/// A consumer of one route.
pub struct ChangeReader {
    ring: RingReader,
    /// To open the ring again when the worker replaced it.
    path: Option<PathBuf>,
    consumer: String,
    /// The position of the last row returned or dropped as seen.
    seen: Position,
    /// The commit LSN of the last row read and a transaction known complete
    /// before it: for the `prev` of the next span.
    run: (u64, u64),
    /// Decoded and not yet returned.
    ready: VecDeque<(RecordBatch, Span)>,
    /// Returned and not yet acknowledged.
    returned: VecDeque<Span>,
    /// The position of the last row returned.
    last_returned: Position,
}

impl ChangeReader {
    /// Attaches to the ring at `path` as consumer `consumer`, which must be
    /// registered for the stream (`cdc_auto_configure` registers
    /// `default` unless told otherwise).
    pub fn open(path: &Path, consumer: &str) -> Result<ChangeReader, ReadError> {
        let mut reader = ChangeReader::new(RingReader::attach(file::open(path)?, consumer)?);
        reader.path = Some(path.to_owned());
        reader.consumer = consumer.to_owned();
        Ok(reader)
    }

    /// Like [`open`](ChangeReader::open), waiting up to `timeout` for the
    /// worker to create the ring.
    pub fn open_waiting(path: &Path, consumer: &str, timeout: Duration) -> Result<ChangeReader, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            match ChangeReader::open(path, consumer) {
                Err(ReadError::Ring(RingError::Io { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Reads a ring through an attached ring consumer.
    pub fn new(ring: RingReader) -> ChangeReader {
        let acked = ring.acknowledged();
        let run = (acked.commit_lsn, ring.acknowledged_lsn());
        ChangeReader {
            ring,
            path: None,
            consumer: String::new(),
            seen: acked,
            run,
            ready: VecDeque::new(),
            returned: VecDeque::new(),
            last_returned: acked,
        }
    }

    /// Skips, and acknowledges, every row of transactions that committed at
    /// or before `commit_lsn`: what the application already processed (and
    /// recorded) before a restart.
    pub fn resume_after(self, commit_lsn: u64) -> ChangeReader {
        self.resume(Position::end_of(commit_lsn), commit_lsn)
    }

    /// Skips, and acknowledges, every row up to and including `position`
    /// (a [`position`](ChangeReader::position) the application recorded).
    pub fn resume_at(self, position: Position) -> ChangeReader {
        let complete = if position.index == u64::MAX { position.commit_lsn } else { 0 };
        self.resume(position, complete)
    }

    fn resume(mut self, position: Position, complete: u64) -> ChangeReader {
        if position > self.seen {
            self.seen = position;
            self.last_returned = self.last_returned.max(position);
            self.ring.ack_through(position, complete);
        }
        self
    }

    /// The position of the last row returned (or, before any, the last
    /// acknowledged): record it with what the rows produced, and give it
    /// to [`resume_at`](ChangeReader::resume_at) after a restart.
    pub fn position(&self) -> Position {
        self.last_returned
    }

    /// The next batch of new rows, waiting up to `timeout` for one.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Option<RecordBatch>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((batch, span)) = self.ready.pop_front() {
                self.last_returned = span.last();
                self.returned.push_back(span);
                return Ok(Some(batch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // A ring opened by path is looked at every second for a new
            // one in its place (a producer that replaced it but died
            // before marking it retired).
            let slice = if self.path.is_some() { left.min(Duration::from_secs(1)) } else { left };
            let frame = match self.ring.next(slice) {
                Err(RingError::Retired) if self.path.is_some() => None,
                other => other?,
            };
            let Some(frame) = frame else {
                let replaced = self
                    .path
                    .as_ref()
                    .is_some_and(|p| self.ring.ring().is_retired() || file::superseded(self.ring.ring(), p));
                if replaced && !self.reopen()? {
                    // Not made again yet: wait for it as for a frame.
                    std::thread::sleep(slice.min(Duration::from_millis(100)));
                }
                if replaced || slice < left {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    continue;
                }
                return Ok(None);
            };
            self.decode(frame)?;
        }
    }

    /// Attaches to the ring that replaced this one. What was returned and
    /// not acknowledged is gone with the old ring.
    /// Returns false while there is no new ring yet (the worker makes it
    /// again with the next change of its table).
    fn reopen(&mut self) -> Result<bool, ReadError> {
        let path = self.path.clone().expect("opened by path");
        match ChangeReader::open(&path, &self.consumer) {
            Ok(fresh) => {
                *self = fresh;
                Ok(true)
            }
            Err(ReadError::Ring(RingError::Io { source, .. })) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sleeps up to `timeout` until the ring has news (a frame, a higher
    /// complete position); returns at once when rows are waiting.
    pub fn wait(&self, timeout: Duration) {
        if self.ready.is_empty() {
            self.ring.wait(timeout);
        }
    }

    /// Decodes a frame into the batches of its rows not seen before.
    fn decode(&mut self, frame: Frame) -> Result<(), ReadError> {
        let meta = frame.meta;
        if meta.last <= self.seen {
            // Rows this consumer already has (sent again after a restart).
            self.follow(meta.first.commit_lsn, meta.last.commit_lsn, 0);
            return Ok(());
        }
        if meta.rows == 0 {
            // A marker (a snapshot's end): a batch of no rows, whose schema
            // and metadata say what it marks.
            let batch = read_batches(frame.payload)?
                .into_iter()
                .next()
                .ok_or_else(|| ReadError::Positions("a marker frame holds no batch".into()))?;
            let prev = self.follow(meta.first.commit_lsn, meta.first.commit_lsn, 0);
            self.seen = meta.last;
            self.ready.push_back((batch, Span::marker(meta.first, prev)));
            return Ok(());
        }
        let batches = read_batches(frame.payload)?;
        let mut next = meta.first;
        let mut rows = 0usize;
        let count = batches.len();
        let mut spans: Vec<(RecordBatch, Span)> = Vec::with_capacity(count);
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let commits = batch
                .column_by_name(contract::COMMIT_LSN)
                .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                .ok_or(ReadError::Contract(contract::COMMIT_LSN))?
                .clone();
            if commits.values().windows(2).any(|w| w[0] > w[1]) {
                return Err(ReadError::Positions("commit LSNs go backwards inside a frame".into()));
            }
            let first = if commits.value(0) == next.commit_lsn {
                next
            } else if rows == 0 {
                return Err(ReadError::Positions(format!(
                    "the first row commits at {}, the header says {}",
                    commits.value(0),
                    meta.first
                )));
            } else {
                Position::new(commits.value(0), 1)
            };
            let mut span = Span { commits, first, prev: 0, ends: false };
            let last_commit = span.commit(span.len() - 1);
            let before_last = match span.run_start(last_commit) {
                0 => 0,
                start => span.commit(start - 1),
            };
            span.prev = self.follow(span.first.commit_lsn, last_commit, before_last);
            rows += span.len();
            next = span.last().next_in_transaction();
            spans.push((batch, span));
        }
        let last = spans.last().map(|(_, s)| s.last());
        if rows != meta.rows as usize || last != Some(meta.last) {
            return Err(ReadError::Positions(format!(
                "{rows} rows ending at {} where the header says {} rows ending at {}",
                last.unwrap_or_default(),
                meta.rows,
                meta.last
            )));
        }
        // A span ends its transaction when the next one starts a later one.
        let firsts: Vec<u64> = spans.iter().map(|(_, s)| s.first.commit_lsn).collect();
        for (i, (_, span)) in spans.iter_mut().enumerate() {
            span.ends = match firsts.get(i + 1) {
                Some(next) => *next > span.last().commit_lsn,
                None => meta.ends_transaction,
            };
        }
        for (batch, span) in spans {
            // Rows at or below `seen` came before: keep the rest.
            let fresh = (0..span.len()).find(|r| span.position(*r) > self.seen).expect("the frame ends past `seen`");
            let (batch, span) = if fresh == 0 {
                (batch, span)
            } else {
                let mut rest = span.clone();
                rest.advance(fresh);
                (batch.slice(fresh, batch.num_rows() - fresh), rest)
            };
            self.seen = span.last();
            self.ready.push_back((batch, span));
        }
        // The span before a later transaction's first row ends its own.
        if let (Some((_, first)), Some(back)) = (self.ready.front(), self.returned.back_mut()) {
            if first.first.commit_lsn > back.last().commit_lsn {
                back.ends = true;
            }
        }
        Ok(())
    }

    /// Follows the commit LSNs of rows read in order, from `first` to
    /// `last` (`before_last`: a complete transaction before `last`'s, when
    /// they differ; 0 if unknown); returns a transaction known complete
    /// before `first`'s.
    fn follow(&mut self, first: u64, last: u64, before_last: u64) -> u64 {
        let (current, before) = self.run;
        let prev = match first.cmp(&current) {
            std::cmp::Ordering::Greater => current,
            std::cmp::Ordering::Equal => before,
            // Rows sent again from further back: nothing known.
            std::cmp::Ordering::Less => 0,
        };
        self.run = if last == first { (first, prev) } else { (last, before_last) };
        prev
    }

    /// Acknowledges the rows this reader returned whose commit LSN is at or
    /// below `commit_lsn`: the worker may overwrite them, and the slot may
    /// forget every transaction among them that is complete.
    pub fn ack(&mut self, commit_lsn: u64) {
        self.ack_within(commit_lsn, self.last_returned);
    }

    /// Like [`ack`](ChangeReader::ack), acknowledging no row past `limit`:
    /// for a reader that hands the rows on (merging, streaming) and may
    /// acknowledge only what its own consumer has received.
    pub fn ack_within(&mut self, commit_lsn: u64, limit: Position) {
        let mut acked = None;
        while let Some(span) = self.returned.front_mut() {
            if span.len() == 0 {
                // A marker: acknowledged with what comes before it.
                if span.first.commit_lsn > commit_lsn || span.first > limit {
                    break;
                }
                let complete = acked.map_or(span.prev, |(_, c): (Position, u64)| c.max(span.prev));
                acked = Some((span.first, complete));
                self.returned.pop_front();
                continue;
            }
            let rows = span.covered(commit_lsn, limit);
            if rows == 0 {
                break;
            }
            acked = Some((span.position(rows - 1), span.complete_after(rows)));
            if rows == span.len() {
                self.returned.pop_front();
            } else {
                span.advance(rows);
                break;
            }
        }
        if let Some((through, complete)) = acked {
            self.ring.ack_through(through, complete);
        }
    }

    /// The position `back` rows before the last row returned: what a
    /// merging reader has handed on when `back` rows of the last batch are
    /// still with it.
    pub(crate) fn position_before_last(&self, back: usize) -> Position {
        match self.returned.back() {
            Some(span) if back == 0 => span.last(),
            Some(span) if back < span.len() => span.position(span.len() - 1 - back),
            Some(_) => unreachable!("a batch is handed on in order, from its first row"),
            None => self.last_returned,
        }
    }

    /// No row at or below this (`_commit_lsn`, `_lsn`) can still arrive on
    /// this route, apart from those already read.
    pub fn complete(&self) -> (u64, u64) {
        self.ring.complete()
    }

    /// The ring underneath, for its status.
    pub fn ring(&self) -> &RingReader {
        &self.ring
    }
}

/// The record batches of an Arrow IPC stream.
fn read_batches(payload: Vec<u8>) -> Result<Vec<RecordBatch>, ReadError> {
    let mut decoder = StreamDecoder::new();
    let mut buffer = Buffer::from_vec(payload);
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    Ok(batches)
}

/// Waits for the next batch however long it takes; None never comes, an
/// error ends the iteration. Both readers' `Iterator`s are this.
pub(crate) fn next_blocking(
    mut next_batch: impl FnMut(Duration) -> Result<Option<RecordBatch>, ReadError>,
) -> Option<Result<RecordBatch, ReadError>> {
    loop {
        match next_batch(Duration::from_secs(3600)) {
            Ok(Some(batch)) => return Some(Ok(batch)),
            Ok(None) => continue,
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Blocks for each batch; ends only on an error.
impl Iterator for ChangeReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        next_blocking(|timeout| self.next_batch(timeout))
    }
}

/// The highest `_commit_lsn` in a batch: what to acknowledge once it is
/// processed. Some for every batch a reader yields, including the batch of
/// no rows that completes a snapshot (its commit LSN is in its metadata,
/// [`META_COMMIT_LSN`](crate::snapshot::META_COMMIT_LSN)); None for a batch
/// of no rows that is not one.
pub fn max_commit_lsn(batch: &RecordBatch) -> Option<u64> {
    if batch.num_rows() == 0 {
        return batch.schema().metadata().get(crate::snapshot::META_COMMIT_LSN)?.parse().ok();
    }
    let commits = batch.column_by_name(contract::COMMIT_LSN)?.as_primitive_opt::<UInt64Type>()?;
    (0..commits.len()).map(|i| commits.value(i)).max()
}

#[cfg(test)]
mod tests {
    use crate::position::Position;
    use crate::ring::Written;
    use crate::testing::{ids, reader, ring, write};
    use std::time::Duration;

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn the_readme_pattern_never_skips_the_rest_of_a_transaction_spanning_batches() {
        let (writer, ring) = ring(64 * 1024);
        // Transaction 100 in two frames, then transaction 200.
        write(&writer, &[(100, 1, 1), (100, 2, 2), (100, 3, 3)], 1, false);
        write(&writer, &[(100, 4, 4), (100, 5, 5)], 4, true);
        write(&writer, &[(200, 6, 6)], 1, true);
        let mut first = reader(&ring);
        let batch = first.next_batch(NOW).unwrap().unwrap();
        assert_eq!(ids(&batch), [1, 2, 3]);
        first.ack(super::max_commit_lsn(&batch).unwrap());
        let status = ring.status().consumers[0].clone();
        assert_eq!(status.acked, Position::new(100, 3), "the rows returned");
        assert_eq!(status.ack_lsn, 0, "not the transaction: its rows 4 and 5 are still to come");
        drop(first);

        // A restarted consumer continues inside the transaction.
        let mut again = reader(&ring);
        let batch = again.next_batch(NOW).unwrap().unwrap();
        assert_eq!(ids(&batch), [4, 5]);
        again.ack(100);
        assert_eq!(ring.status().consumers[0].ack_lsn, 100, "now the transaction is whole");
        assert_eq!(ids(&again.next_batch(NOW).unwrap().unwrap()), [6]);
        assert!(again.next_batch(NOW).unwrap().is_none());
    }

    #[test]
    fn an_acknowledgement_covers_only_rows_returned() {
        let (writer, ring) = ring(64 * 1024);
        write(&writer, &[(100, 1, 1), (200, 2, 2)], 1, true);
        let mut r = reader(&ring);
        r.ack(u64::MAX); // nothing returned yet: nothing acknowledged
        assert_eq!(ring.status().consumers[0].acked, Position::START);
        let batch = r.next_batch(NOW).unwrap().unwrap();
        assert_eq!(ids(&batch), [1, 2]);
        r.ack(150); // the first transaction of the batch
        let status = ring.status().consumers[0].clone();
        assert_eq!((status.acked, status.ack_lsn), (Position::new(100, 1), 100));
        assert_eq!(status.ack_pos, 0, "the frame still holds row 2");
        assert_eq!(r.position(), Position::new(200, 1));
        r.ack(200);
        assert_eq!(ring.status().consumers[0].ack_pos, ring.status().write_pos);
    }

    #[test]
    fn rows_sharing_an_lsn_are_told_apart_by_their_index() {
        let (writer, ring) = ring(64 * 1024);
        // One multi-insert record: three rows at LSN 7, split over frames.
        write(&writer, &[(100, 7, 1), (100, 7, 2)], 1, false);
        write(&writer, &[(100, 7, 3), (100, 8, 4)], 3, true);
        let mut r = reader(&ring);
        let mut got = ids(&r.next_batch(NOW).unwrap().unwrap());
        r.ack(100);
        drop(r);
        let mut r = reader(&ring);
        while let Some(b) = r.next_batch(NOW).unwrap() {
            got.extend(ids(&b));
        }
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[test]
    fn rows_sent_again_after_a_worker_restart_are_dropped_and_released() {
        let (writer, ring) = ring(16 * 1024);
        let mut r = reader(&ring);
        for t in 1..=5u64 {
            write(&writer, &[(t * 100, t, t as i64)], 1, true);
            let batch = r.next_batch(NOW).unwrap().unwrap();
            r.ack(super::max_commit_lsn(&batch).unwrap());
        }
        // The slot resumes from transaction 100: everything again, many
        // times the ring, and nothing new for the application to see.
        let writer = crate::ring::RingWriter::new(ring.clone());
        for round in 0..200 {
            for t in 1..=5u64 {
                while write(&writer, &[(t * 100, t, t as i64)], 1, true) == Written::Full {
                    assert!(r.next_batch(NOW).unwrap().is_none(), "round {round}: nothing new");
                }
            }
        }
        while write(&writer, &[(600, 6, 6)], 1, true) == Written::Full {
            assert!(r.next_batch(NOW).unwrap().is_none());
        }
        let mut fresh = Vec::new();
        while let Some(b) = r.next_batch(NOW).unwrap() {
            fresh.extend(ids(&b));
        }
        assert_eq!(fresh, [6]);
    }

    #[test]
    fn resuming_after_a_position_skips_and_acknowledges() {
        let (writer, ring) = ring(64 * 1024);
        write(&writer, &[(100, 1, 1), (100, 2, 2)], 1, true);
        write(&writer, &[(200, 3, 3), (200, 4, 4)], 1, true);
        let mut r = reader(&ring).resume_at("0/64:1".parse().unwrap());
        assert_eq!(ids(&r.next_batch(NOW).unwrap().unwrap()), [2]);
        assert_eq!(r.position().to_string(), "0/64:2");
        let mut r = reader(&ring).resume_after(100);
        assert_eq!(ids(&r.next_batch(NOW).unwrap().unwrap()), [3, 4]);
        assert_eq!(ring.status().consumers[0].ack_lsn, 100);
    }
}

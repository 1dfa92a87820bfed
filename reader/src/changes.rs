//! Change batches from a route's ring: decoded from Arrow IPC, with rows
//! seen before dropped, and acknowledged by commit LSN.
//!
//! Delivery is at-least-once on the wire: after a worker or server restart,
//! decoding resumes from the slot's confirmed position and re-sends what
//! followed. A [`ChangeReader`] drops every row whose (`_commit_lsn`,
//! `_lsn`) is not above the last one it returned (or, after a reader
//! restart, whose `_commit_lsn` is not above the acknowledged or
//! [`resume_after`](ChangeReader::resume_after) position), which makes
//! delivery exactly-once per consumer. Rows of one multi-table TRUNCATE
//! share an LSN; in a merged route they are all kept.

use crate::contract;
use crate::ring::{file, RingError, RingReader};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int8Type, UInt64Type};
use arrow_array::{BooleanArray, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_schema::ArrowError;
use std::collections::VecDeque;
use std::path::Path;
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
}

/// A consumer of one route.
pub struct ChangeReader {
    ring: RingReader,
    /// The (commit LSN, LSN) of the last row returned.
    last: (u64, u64),
    ready: VecDeque<RecordBatch>,
}

impl ChangeReader {
    /// Attaches to the ring at `path` as consumer `consumer` (`default` is
    /// registered when the ring is created, so it misses nothing).
    pub fn open(path: &Path, consumer: &str) -> Result<ChangeReader, ReadError> {
        Ok(ChangeReader::new(RingReader::attach(file::open(path)?, consumer)?))
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
        let acknowledged = ring.acknowledged_lsn();
        ChangeReader { ring, last: (acknowledged, u64::MAX), ready: VecDeque::new() }
    }

    /// Skips every row of transactions that committed at or before
    /// `commit_lsn`: what the application already processed (and recorded)
    /// before a restart.
    pub fn resume_after(self, commit_lsn: u64) -> ChangeReader {
        self.resume_after_row(commit_lsn, u64::MAX)
    }

    /// Skips every row up to and including the row (`commit_lsn`, `lsn`):
    /// for applications that record their progress row by row.
    pub fn resume_after_row(mut self, commit_lsn: u64, lsn: u64) -> ChangeReader {
        self.last = self.last.max((commit_lsn, lsn));
        self
    }

    /// The next batch of new rows, waiting up to `timeout` for one.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Option<RecordBatch>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(Some(batch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.ring.next(left)? else { return Ok(None) };
            let mut decoder = StreamDecoder::new();
            let mut buffer = Buffer::from_vec(frame.payload);
            while !buffer.is_empty() {
                if let Some(batch) = decoder.decode(&mut buffer)? {
                    if let Some(fresh) = self.fresh_rows(batch)? {
                        self.ready.push_back(fresh);
                    }
                }
            }
            decoder.finish()?;
            if left.is_zero() && self.ready.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Drops the rows already returned; None when nothing is left.
    fn fresh_rows(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>, ReadError> {
        let column = |name: &'static str| batch.column_by_name(name).ok_or(ReadError::Contract(name));
        let commits = column(contract::COMMIT_LSN)?
            .as_primitive_opt::<UInt64Type>()
            .ok_or(ReadError::Contract(contract::COMMIT_LSN))?;
        let lsns = column(contract::LSN)?.as_primitive_opt::<UInt64Type>().ok_or(ReadError::Contract(contract::LSN))?;
        let ops = column(contract::OP)?.as_dictionary_opt::<Int8Type>().ok_or(ReadError::Contract(contract::OP))?;
        let truncate = crate::contract::Op::Truncate.dictionary_key();
        let mut keep = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let key = (commits.value(i), lsns.value(i));
            let fresh = key > self.last || (key == self.last && ops.keys().value(i) == truncate);
            if fresh {
                self.last = key;
            }
            keep.push(fresh);
        }
        if keep.iter().all(|k| *k) {
            return Ok(Some(batch));
        }
        if !keep.iter().any(|k| *k) {
            return Ok(None);
        }
        Ok(Some(arrow_select::filter::filter_record_batch(&batch, &BooleanArray::from(keep))?))
    }

    /// Acknowledges every row of transactions committed at or before
    /// `commit_lsn`: the worker may overwrite them and the slot forget them.
    pub fn ack(&mut self, commit_lsn: u64) {
        self.ring.ack(commit_lsn);
    }

    /// No row of a transaction committed at or before this LSN can still
    /// arrive on this route.
    pub fn complete_lsn(&self) -> u64 {
        self.ring.complete_lsn()
    }

    /// The ring underneath, for its status.
    pub fn ring(&self) -> &RingReader {
        &self.ring
    }
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

/// The highest `_commit_lsn` in a batch (what to acknowledge once it is
/// processed), or None for an empty batch.
pub fn max_commit_lsn(batch: &RecordBatch) -> Option<u64> {
    let commits = batch.column_by_name(contract::COMMIT_LSN)?.as_primitive_opt::<UInt64Type>()?;
    (0..commits.len()).map(|i| commits.value(i)).max()
}

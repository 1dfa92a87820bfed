//! Several routes read as one stream, in commit order.

use crate::changes::{ChangeReader, ReadError};
use crate::contract;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::RecordBatch;
use std::time::{Duration, Instant};

/// Readers merged in (`_commit_lsn`, `_lsn`) order, row by row: batches
/// are cut where another route's rows come in between.
///
/// A route with nothing to read holds the merge back only until its ring's
/// complete LSN (which the worker raises after writing each transaction to
/// every ring) shows that no earlier row can still arrive there.
pub struct MergedReader {
    readers: Vec<ChangeReader>,
    heads: Vec<Option<RecordBatch>>,
}

/// Merges readers of several routes into one ordered stream.
pub fn merge_streams(readers: Vec<ChangeReader>) -> MergedReader {
    let heads = readers.iter().map(|_| None).collect();
    MergedReader { readers, heads }
}

fn first_key(batch: &RecordBatch, row: usize) -> (u64, u64) {
    let column = |name| batch.column_by_name(name).expect("a change batch").as_primitive::<UInt64Type>().value(row);
    (column(contract::COMMIT_LSN), column(contract::LSN))
}

impl MergedReader {
    /// The next batch in commit order, waiting up to `timeout` for one.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Option<RecordBatch>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            // The first head to appear decides what "earlier" means: fill
            // the others afterwards, without waiting.
            for (reader, head) in self.readers.iter_mut().zip(self.heads.iter_mut()) {
                if head.is_none() {
                    *head = reader.next_batch(Duration::ZERO)?;
                }
            }
            if let Some(batch) = self.take_earliest() {
                return Ok(Some(batch));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Sleep on one ring briefly; a write to any ring is seen on the
            // next pass.
            if let Some(batch) = self.readers[0].next_batch(left.min(Duration::from_millis(10)))? {
                self.heads[0] = Some(batch);
            }
        }
    }

    /// The earliest head's rows that come before every other route's next
    /// row, or None while a route with nothing to read might still get an
    /// earlier one.
    fn take_earliest(&mut self) -> Option<RecordBatch> {
        let keys: Vec<Option<(u64, u64)>> = self.heads.iter().map(|h| h.as_ref().map(|b| first_key(b, 0))).collect();
        let (earliest, first) =
            keys.iter().enumerate().filter_map(|(i, k)| k.map(|k| (i, k))).min_by_key(|(_, k)| *k)?;
        // Rows of a route are bounded by the next row of every other route
        // that has one, and by the complete LSN of every route that has
        // none yet.
        let mut bound = (u64::MAX, u64::MAX);
        for (i, key) in keys.iter().enumerate().filter(|(i, _)| *i != earliest) {
            bound = bound.min(match key {
                Some(key) => *key,
                None => (self.readers[i].complete_lsn(), u64::MAX),
            });
        }
        if first > bound {
            return None;
        }
        let batch = self.heads[earliest].take().expect("a head");
        let cut = (0..batch.num_rows()).find(|r| first_key(&batch, *r) > bound).unwrap_or(batch.num_rows());
        if cut < batch.num_rows() {
            self.heads[earliest] = Some(batch.slice(cut, batch.num_rows() - cut));
        }
        Some(batch.slice(0, cut))
    }

    /// Acknowledges `commit_lsn` on every route.
    pub fn ack(&mut self, commit_lsn: u64) {
        self.readers.iter_mut().for_each(|r| r.ack(commit_lsn));
    }
}

impl Iterator for MergedReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        crate::changes::next_blocking(|timeout| self.next_batch(timeout))
    }
}

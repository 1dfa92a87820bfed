//! Several routes read as one stream, in commit order.

use crate::changes::{ChangeReader, ReadError};
use crate::contract;
use crate::position::Position;
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::RecordBatch;
use std::time::{Duration, Instant};

/// Readers merged in (`_commit_lsn`, `_lsn`) order, row by row: batches
/// are cut where another route's rows come in between.
///
/// A route with nothing to read holds the merge back only until its ring's
/// complete position shows that no earlier row can still arrive there. The
/// worker raises it after each transaction and, inside a transaction
/// larger than a batch, each time it has written every row decoded so far
/// — so a transaction larger than a ring flows through the merge too.
///
/// [`ack`](MergedReader::ack) acknowledges on each route only the rows this
/// reader returned: never the head of a route it still holds.
pub struct MergedReader {
    readers: Vec<ChangeReader>,
    /// Each route's batch not yet (completely) returned.
    heads: Vec<Option<RecordBatch>>,
    /// Each route's last row returned from this reader.
    handed: Vec<Position>,
}

/// Merges readers of several routes into one ordered stream (an empty
/// list is a stream that never yields).
pub fn merge_streams(readers: Vec<ChangeReader>) -> MergedReader {
    let heads = readers.iter().map(|_| None).collect();
    let handed = readers.iter().map(ChangeReader::position).collect();
    MergedReader { readers, heads, handed }
}

fn key(batch: &RecordBatch, row: usize) -> (u64, u64) {
    let column = |name| batch.column_by_name(name).expect("a change batch").as_primitive::<UInt64Type>().value(row);
    (column(contract::COMMIT_LSN), column(contract::LSN))
}

impl MergedReader {
    /// The next batch in commit order, waiting up to `timeout` for one.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Option<RecordBatch>, ReadError> {
        self.next_batch_up_to(timeout, usize::MAX)
    }

    /// Like [`next_batch`](MergedReader::next_batch), with at most
    /// `max_rows` rows: the rest stay with the reader (not returned, so not
    /// acknowledged) for the next call.
    pub fn next_batch_up_to(&mut self, timeout: Duration, max_rows: usize) -> Result<Option<RecordBatch>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            // The first head to appear decides what "earlier" means: fill
            // the others afterwards, without waiting.
            for (reader, head) in self.readers.iter_mut().zip(self.heads.iter_mut()) {
                if head.is_none() {
                    *head = reader.next_batch(Duration::ZERO)?;
                }
            }
            // A batch of no rows marks a place (a snapshot's end): it has no
            // key to order by, and nothing to wait for.
            if let Some(i) = self.heads.iter().position(|h| h.as_ref().is_some_and(|b| b.num_rows() == 0)) {
                self.handed[i] = self.readers[i].position();
                return Ok(self.heads[i].take());
            }
            let blocker = match self.take_earliest(max_rows.max(1)) {
                Ok(batch) => return Ok(Some(batch)),
                Err(blocker) => blocker,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Sleep on the route everything waits for (a write to another
            // route is seen within 10 ms).
            if let Some(reader) = blocker.and_then(|i| self.readers.get(i)) {
                reader.wait(left.min(Duration::from_millis(10)));
            } else {
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
        }
    }

    /// The earliest head's rows that come before every other route's next
    /// row; otherwise the route (with nothing to read) that might still
    /// get an earlier one, or None when there is no head at all.
    fn take_earliest(&mut self, max_rows: usize) -> Result<RecordBatch, Option<usize>> {
        let keys: Vec<Option<(u64, u64)>> = self.heads.iter().map(|h| h.as_ref().map(|b| key(b, 0))).collect();
        let Some((earliest, first)) =
            keys.iter().enumerate().filter_map(|(i, k)| k.map(|k| (i, k))).min_by_key(|(_, k)| *k)
        else {
            return Err((!self.readers.is_empty()).then_some(0));
        };
        // Rows of a route are bounded by the next row of every other route
        // that has one, and by the complete position of every route that
        // has none yet.
        let mut bound = ((u64::MAX, u64::MAX), None);
        for (i, k) in keys.iter().enumerate().filter(|(i, _)| *i != earliest) {
            let candidate = match k {
                Some(k) => (*k, None),
                None => (self.readers[i].complete(), Some(i)),
            };
            if candidate.0 < bound.0 {
                bound = candidate;
            }
        }
        if first > bound.0 {
            return Err(bound.1);
        }
        let batch = self.heads[earliest].take().expect("a head");
        let cut = (0..batch.num_rows()).find(|r| key(&batch, *r) > bound.0).unwrap_or(batch.num_rows()).min(max_rows);
        let left = batch.num_rows() - cut;
        if left > 0 {
            self.heads[earliest] = Some(batch.slice(cut, left));
        }
        self.handed[earliest] = self.readers[earliest].position_before_last(left);
        Ok(batch.slice(0, cut))
    }

    /// The position of the last row of route `route` (in the order given
    /// to [`merge_streams`]) this reader returned: with one per route, what
    /// an application records to [`resume_at`](ChangeReader::resume_at)
    /// each route after a restart.
    pub fn position(&self, route: usize) -> Position {
        self.handed[route]
    }

    /// Acknowledges, on every route, the rows this reader returned whose
    /// commit LSN is at or below `commit_lsn`.
    pub fn ack(&mut self, commit_lsn: u64) {
        for (reader, handed) in self.readers.iter_mut().zip(&self.handed) {
            reader.ack_within(commit_lsn, *handed);
        }
    }

    /// Skips, and acknowledges on every route, every row of transactions
    /// that committed at or before `commit_lsn`: call it before reading.
    pub fn resume_after(self, commit_lsn: u64) -> MergedReader {
        merge_streams(self.readers.into_iter().map(|r| r.resume_after(commit_lsn)).collect())
    }
}

impl Iterator for MergedReader {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        crate::changes::next_blocking(|timeout| self.next_batch(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ids, reader, ring, write};

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn merging_no_readers_is_an_empty_stream() {
        let mut merged = merge_streams(Vec::new());
        assert!(merged.next_batch(Duration::from_millis(10)).unwrap().is_none());
    }

    #[test]
    fn rows_come_in_commit_order_and_only_returned_rows_are_acknowledged() {
        let (a, ring_a) = ring(64 * 1024);
        let (b, ring_b) = ring(64 * 1024);
        // Transaction 100 touches a, b, a; transaction 200 touches b.
        write(&a, &[(100, 1, 1), (100, 3, 3)], 1, true);
        write(&b, &[(100, 2, 2)], 1, true);
        write(&b, &[(200, 4, 4)], 1, true);
        for w in [&a, &b] {
            w.complete_through(200, u64::MAX);
        }
        let mut merged = merge_streams(vec![reader(&ring_a), reader(&ring_b)]);
        let first = merged.next_batch(NOW).unwrap().unwrap();
        assert_eq!(ids(&first), [1], "cut where b's row comes in between");
        merged.ack(100);
        assert_eq!(ring_a.status().consumers[0].acked, Position::new(100, 1));
        assert_eq!(ring_b.status().consumers[0].acked, Position::START, "b's row is still with the merge");
        let mut rest = Vec::new();
        while let Some(batch) = merged.next_batch(NOW).unwrap() {
            rest.extend(ids(&batch));
        }
        assert_eq!(rest, [2, 3, 4]);
        merged.ack(200);
        assert_eq!(ring_b.status().consumers[0].ack_lsn, 200);
    }

    #[test]
    fn a_held_head_is_never_lost_while_waiting() {
        let (a, ring_a) = ring(64 * 1024);
        let (b, ring_b) = ring(64 * 1024);
        write(&a, &[(100, 1, 1), (100, 2, 2)], 1, true);
        let mut merged = merge_streams(vec![reader(&ring_a), reader(&ring_b)]);
        // b says nothing: a's rows wait, and keep waiting, for b.
        for _ in 0..3 {
            assert!(merged.next_batch(Duration::from_millis(20)).unwrap().is_none());
        }
        write(&a, &[(300, 5, 5)], 1, true);
        b.complete_through(300, u64::MAX);
        let mut got = Vec::new();
        while let Some(batch) = merged.next_batch(NOW).unwrap() {
            got.extend(ids(&batch));
        }
        assert_eq!(got, [1, 2, 5]);
    }

    #[test]
    fn a_complete_position_inside_a_transaction_lets_its_first_rows_through() {
        let (a, ring_a) = ring(64 * 1024);
        let (b, ring_b) = ring(64 * 1024);
        // The worker is still writing transaction 100 (larger than a ring):
        // it wrote rows up to LSN 20 everywhere they go.
        write(&a, &[(100, 10, 1), (100, 20, 2)], 1, false);
        b.complete_through(100, 20);
        let mut merged = merge_streams(vec![reader(&ring_a), reader(&ring_b)]);
        let batch = merged.next_batch(NOW).unwrap().expect("rows up to the complete position");
        assert_eq!(ids(&batch), [1, 2]);
        merged.ack(100);
        let status = ring_a.status();
        assert_eq!(status.consumers[0].ack_pos, status.write_pos, "the ring has room again");
        assert_eq!(status.consumers[0].ack_lsn, 0, "the transaction is not complete");
    }
}

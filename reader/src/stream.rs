//! The async face of a [`ChangeReader`]: a `futures_core::Stream` of
//! batches, for applications on tokio, async-std or any other executor.
//!
//! A thread owns the ring reader and blocks on it (the ring's futex waits
//! are not async); batches cross to the stream through a small bounded
//! queue, so a slow consumer holds the thread, which holds the ring, which
//! holds back the worker: back-pressure all the way to decoding.
//!
//! The thread reads ahead, so [`ChangeStream::ack`] acknowledges only the
//! rows the stream has yielded: a batch still in the queue is never
//! acknowledged, whatever LSN the application passes.

use crate::changes::{ChangeReader, ReadError};
use crate::position::Position;
use arrow_array::RecordBatch;
use futures_core::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Batches waiting for the stream's consumer.
const QUEUE: usize = 8;

struct Shared {
    state: Mutex<State>,
    space: Condvar,
    /// The highest commit LSN acknowledged through the stream, and the
    /// last row the stream had yielded when it was.
    ack: Mutex<Option<(u64, Position)>>,
    closed: AtomicBool,
}

struct State {
    /// Batches read ahead, each with the position of its last row.
    queue: VecDeque<Result<(RecordBatch, Position), ReadError>>,
    /// The position of the last row yielded.
    yielded: Position,
    waker: Option<Waker>,
}

/// A stream of change batches; dropping it stops the reading thread.
pub struct ChangeStream {
    shared: Arc<Shared>,
}

impl ChangeReader {
    /// Turns the reader into an async stream.
    pub fn into_stream(self) -> ChangeStream {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { queue: VecDeque::new(), yielded: self.position(), waker: None }),
            space: Condvar::new(),
            ack: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("pgcdc-stream".into())
            .spawn(move || pump(self, &worker))
            .expect("spawn the stream's reading thread");
        ChangeStream { shared }
    }
}

fn pump(mut reader: ChangeReader, shared: &Shared) {
    while !shared.closed.load(Ordering::Acquire) {
        if let Some((lsn, yielded)) = shared.ack.lock().expect("stream ack").take() {
            reader.ack_within(lsn, yielded);
        }
        let item = match reader.next_batch(Duration::from_millis(50)) {
            Ok(None) => continue,
            Ok(Some(batch)) => Ok((batch, reader.position())),
            Err(e) => Err(e),
        };
        let failed = item.is_err();
        let mut state = shared.state.lock().expect("stream state");
        while state.queue.len() >= QUEUE && !shared.closed.load(Ordering::Acquire) {
            state = shared.space.wait_timeout(state, Duration::from_millis(50)).expect("stream state").0;
        }
        state.queue.push_back(item);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        if failed {
            return;
        }
    }
}

impl ChangeStream {
    /// Acknowledges the rows the stream has yielded whose commit LSN is at
    /// or below `commit_lsn` (the reading thread passes it on).
    pub fn ack(&self, commit_lsn: u64) {
        let yielded = self.shared.state.lock().expect("stream state").yielded;
        let mut ack = self.shared.ack.lock().expect("stream ack");
        let (lsn, through) = ack.unwrap_or((commit_lsn, yielded));
        *ack = Some((lsn.max(commit_lsn), through.max(yielded)));
    }
}

impl Stream for ChangeStream {
    type Item = Result<RecordBatch, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.shared.state.lock().expect("stream state");
        match state.queue.pop_front() {
            Some(item) => {
                self.shared.space.notify_one();
                Poll::Ready(Some(item.map(|(batch, last)| {
                    state.yielded = last;
                    batch
                })))
            }
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.space.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use crate::position::Position;
    use crate::testing::{ids, reader, ring, write};
    use futures_core::Stream;
    use std::pin::Pin;
    use std::time::{Duration, Instant};

    #[test]
    fn acknowledging_through_the_stream_never_covers_batches_read_ahead() {
        let (writer, ring) = ring(64 * 1024);
        // One transaction in three frames: the thread reads all three ahead.
        write(&writer, &[(100, 1, 1)], 1, false);
        write(&writer, &[(100, 2, 2)], 2, false);
        write(&writer, &[(100, 3, 3)], 3, true);
        let mut stream = reader(&ring).into_stream();
        let first = futures_executor::block_on(std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)))
            .unwrap()
            .unwrap();
        assert_eq!(ids(&first), [1]);
        std::thread::sleep(Duration::from_millis(200));
        stream.ack(100);
        let deadline = Instant::now() + Duration::from_secs(10);
        while ring.status().consumers[0].acked != Position::new(100, 1) {
            assert!(Instant::now() < deadline, "the acknowledgement reached the ring");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let consumer = ring.status().consumers[0].clone();
        assert_eq!((consumer.acked, consumer.ack_lsn), (Position::new(100, 1), 0), "only the row yielded");
    }
}

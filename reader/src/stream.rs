//! The async face of a [`ChangeReader`]: a `futures_core::Stream` of
//! batches, for applications on tokio, async-std or any other executor.
//!
//! A thread owns the ring reader and blocks on it (the ring's futex waits
//! are not async); batches cross to the stream through a small bounded
//! queue, so a slow consumer holds the thread, which holds the ring, which
//! holds back the worker: back-pressure all the way to decoding.

use crate::changes::{ChangeReader, ReadError};
use arrow_array::RecordBatch;
use futures_core::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Batches waiting for the stream's consumer.
const QUEUE: usize = 8;

struct Shared {
    state: Mutex<State>,
    space: Condvar,
    /// The highest commit LSN acknowledged through the stream.
    ack: AtomicU64,
    closed: AtomicBool,
}

struct State {
    queue: VecDeque<Result<RecordBatch, ReadError>>,
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
            state: Mutex::new(State { queue: VecDeque::new(), waker: None }),
            space: Condvar::new(),
            ack: AtomicU64::new(0),
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
    let mut acknowledged = 0;
    while !shared.closed.load(Ordering::Acquire) {
        let ack = shared.ack.load(Ordering::Acquire);
        if ack > acknowledged {
            reader.ack(ack);
            acknowledged = ack;
        }
        let item = match reader.next_batch(Duration::from_millis(50)) {
            Ok(None) => continue,
            Ok(Some(batch)) => Ok(batch),
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
    /// Acknowledges every row committed at or before `commit_lsn`.
    pub fn ack(&self, commit_lsn: u64) {
        self.shared.ack.fetch_max(commit_lsn, Ordering::AcqRel);
    }
}

impl Stream for ChangeStream {
    type Item = Result<RecordBatch, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.shared.state.lock().expect("stream state");
        match state.queue.pop_front() {
            Some(item) => {
                self.shared.space.notify_one();
                Poll::Ready(Some(item))
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

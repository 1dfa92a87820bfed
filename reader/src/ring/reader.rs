//! The consumer side: read frames in order, acknowledge what was processed.

use super::acks::Writable;
use super::layout::*;
use super::memory::wait;
use super::writer::parse_header;
use super::{now_ms, process_alive, FrameMeta, Ring, RingError};
use crate::position::Position;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One frame of record batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// An Arrow IPC stream (read from the spill file for a spilled frame).
    pub payload: Vec<u8>,
    pub meta: FrameMeta,
    /// The ring position after it.
    pub end_pos: u64,
}

/// A named consumer of a ring.
///
/// Frames are released (the producer may overwrite them) once the consumer
/// has acknowledged every row in them ([`RingReader::ack_through`]); a
/// frame whose rows were all acknowledged before it was read (the worker
/// sends rows again after a restart) is released as soon as it is read.
pub struct RingReader {
    ring: Ring,
    /// This consumer's own state: all it writes.
    state: Writable,
    read_pos: u64,
    /// Frames read and not yet released: (end position, last row).
    unacked: VecDeque<(u64, Position)>,
    /// The last row acknowledged, as the slot records it.
    acked: Position,
    /// The ring incarnation and consumer name this reader claims.
    claim: (u64, String),
}

/// How many readers of this process claim each (ring incarnation,
/// consumer): the last one dropped gives the claim up, so another process
/// may read as that consumer while this one lives on (a notebook that
/// dropped its reader, a test harness that configured the stream).
static CLAIMS: Mutex<BTreeMap<(u64, String), usize>> = Mutex::new(BTreeMap::new());

impl RingReader {
    /// Attaches as the registered consumer `name`, resuming after the last
    /// row it acknowledged.
    pub fn attach(ring: Ring, name: &str) -> Result<RingReader, RingError> {
        let index = ring.find_slot(name).ok_or_else(|| RingError::NotRegistered(name.to_owned()))?;
        let state = ring.acks.open(name, ring.incarnation(), ring.start(index), ring.owner(index))?;
        let mut current = state.get();
        let me = std::process::id();
        if current.pid != 0 && current.pid != me && process_alive(current.pid) {
            return Err(RingError::InUse { name: name.to_owned(), pid: current.pid });
        }
        current.pid = me;
        current.heartbeat_ms = now_ms();
        current.read_pos = current.ack_pos;
        state.set(current);
        let claim = (ring.incarnation(), name.to_owned());
        *CLAIMS.lock().expect("claims lock").entry(claim.clone()).or_default() += 1;
        Ok(RingReader { ring, state, read_pos: current.ack_pos, unacked: VecDeque::new(), acked: current.acked, claim })
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// No row at or below this (`_commit_lsn`, `_lsn`) can still arrive.
    pub fn complete(&self) -> (u64, u64) {
        self.ring.complete()
    }

    /// The last transaction this consumer acknowledged completely (kept
    /// across restarts): what the slot may confirm on its behalf.
    pub fn acknowledged_lsn(&self) -> u64 {
        self.state.get().ack_lsn
    }

    /// The last row this consumer acknowledged (kept across restarts).
    pub fn acknowledged(&self) -> Position {
        self.acked
    }

    /// The next frame, if one is published; never blocks.
    pub fn try_next(&mut self) -> Result<Option<Frame>, RingError> {
        let capacity = self.ring.geometry.capacity;
        // A padding frame is followed by a frame at offset 0: at most one
        // padding per frame, whatever a corrupted ring says.
        for _ in 0..2 {
            let r = &self.ring.region;
            let write_pos = r.u64_at(OFF_WRITE_POS).load(Ordering::Acquire);
            if self.read_pos == write_pos {
                if self.ring.is_retired() {
                    return Err(RingError::Retired);
                }
                return Ok(None);
            }
            let corrupt = |detail: String| RingError::Corrupt { pos: self.read_pos, detail };
            if self.read_pos > write_pos {
                return Err(corrupt(format!("the consumer is ahead of the producer (write position {write_pos})")));
            }
            if write_pos - self.read_pos > capacity {
                return Err(corrupt(format!("the producer is more than the ring ahead (write position {write_pos})")));
            }
            if !self.read_pos.is_multiple_of(FRAME_ALIGN) {
                return Err(corrupt("position not on a frame boundary".into()));
            }
            let offset = self.read_pos % capacity;
            if offset + FRAME_HEADER > capacity {
                return Err(corrupt("a frame header runs past the data area".into()));
            }
            let at = self.ring.data_offset() + offset as usize;
            let (len, kind, meta) = parse_header(&r.read(at, FRAME_HEADER as usize));
            let size = frame_size(u64::from(len));
            let end_pos = self.read_pos + size;
            if offset + size > capacity || end_pos > write_pos {
                return Err(corrupt(format!("frame of {len} bytes runs past the data")));
            }
            match kind {
                KIND_PADDING if offset != 0 && offset + size == capacity => {
                    self.advance(end_pos, Position::START);
                }
                KIND_BATCH | KIND_SPILL => {
                    // A frame of no rows marks a place: (commit, 0).
                    let marker = meta.rows == 0 && meta.first == meta.last && meta.first.index == 0;
                    if !marker && (meta.rows == 0 || meta.first > meta.last || meta.first.index == 0) {
                        return Err(corrupt(format!(
                            "frame positions {}..{} for {} rows",
                            meta.first, meta.last, meta.rows
                        )));
                    }
                    let bytes = r.read(at + FRAME_HEADER as usize, len as usize);
                    let payload = if kind == KIND_SPILL { self.read_spill(&bytes)? } else { bytes };
                    self.advance(end_pos, meta.last);
                    return Ok(Some(Frame { payload, meta, end_pos }));
                }
                other => return Err(corrupt(format!("unknown frame kind {other}"))),
            }
        }
        Err(RingError::Corrupt { pos: self.read_pos, detail: "two padding frames in a row".into() })
    }

    /// The Arrow IPC stream of a spilled frame, from the file it names.
    fn read_spill(&self, name: &[u8]) -> Result<Vec<u8>, RingError> {
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
            .ok_or_else(|| RingError::Corrupt { pos: self.read_pos, detail: "a spill frame names no file".into() })?;
        let dir = self.ring.dir().ok_or_else(|| RingError::Corrupt {
            pos: self.read_pos,
            detail: "a spill frame in a ring that is not a file".into(),
        })?;
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| RingError::Io { path: path.display().to_string(), source })
    }

    fn advance(&mut self, end_pos: u64, last: Position) {
        self.read_pos = end_pos;
        self.unacked.push_back((end_pos, last));
        let mut state = self.state.get();
        state.read_pos = end_pos;
        state.heartbeat_ms = now_ms();
        self.state.set(state);
        self.release();
    }

    /// Sleeps up to `timeout` until the producer publishes something: a
    /// frame, a higher complete position, or the ring's retirement.
    pub fn wait(&self, timeout: Duration) {
        let r = &self.ring.region;
        let seen = r.u32_at(OFF_DATA_SEQ).load(Ordering::Acquire);
        if r.u64_at(OFF_WRITE_POS).load(Ordering::Acquire) != self.read_pos {
            return;
        }
        // The producer may publish between the check and the wait: the
        // sequence changed then, and the wait returns at once.
        wait(r.u32_at(OFF_DATA_SEQ), seen, timeout);
    }

    /// The next frame, sleeping up to `timeout` for one.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, RingError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.try_next()? {
                return Ok(Some(frame));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.wait(deadline - now);
        }
    }

    /// Acknowledges every row up to and including `through`, and records
    /// that every transaction committed at or before `complete_lsn` is
    /// fully processed (the slot may confirm it). Neither goes backwards.
    pub fn ack_through(&mut self, through: Position, complete_lsn: u64) {
        let mut state = self.state.get();
        if through > self.acked {
            self.acked = through;
            state.acked = through;
        }
        state.ack_lsn = state.ack_lsn.max(complete_lsn);
        state.heartbeat_ms = now_ms();
        self.state.set(state);
        self.release();
    }

    /// Releases the frames, oldest first, whose rows are all acknowledged.
    fn release(&mut self) {
        let mut released = None;
        while let Some(&(end_pos, last)) = self.unacked.front() {
            if last > self.acked {
                break;
            }
            released = Some(end_pos);
            self.unacked.pop_front();
        }
        let Some(pos) = released else { return };
        let mut state = self.state.get();
        state.ack_pos = pos;
        self.state.set(state);
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        let mut claims = CLAIMS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(count) = claims.get_mut(&self.claim) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        claims.remove(&self.claim);
        self.state.release(self.claim.0);
    }
}

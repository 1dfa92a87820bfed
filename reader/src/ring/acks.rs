//! Each consumer's own record of what it read and acknowledged.
//!
//! A ring file is written by the server only (readers map it read-only);
//! a consumer keeps its state in a small file of its own beside the ring,
//! `<ring stem>.<consumer>.ack`, created by the OS user that reads as it
//! and writable by nobody else. So no reader can move another consumer's
//! position, or write a frame. The worker reads these files with `pread`,
//! never mapping them: one cut short cannot reach it as a SIGBUS. Rings in
//! plain memory (the format's tests) keep the states in memory.
//!
//! ```text
//!  0 magic "PGCA" u32 │ 4 seq u32 (seqlock) │ 8 ring incarnation u64
//! 16 pid u32 │ 24 ack_pos u64 │ 32 ack_lsn u64 │ 40 acked commit u64
//! 48 acked index u64 │ 56 read_pos u64 │ 64 heartbeat ms u64   (128 bytes)
//! ```
//! A state whose incarnation is not the ring's belongs to a ring that was
//! replaced at the same path: it counts as no state at all.

use super::memory::Region;
use super::RingError;
use crate::position::Position;
use memmap2::MmapRaw;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

const MAGIC: u32 = u32::from_le_bytes(*b"PGCA");
const OFF_MAGIC: usize = 0;
const OFF_SEQ: usize = 4;
const OFF_INCARNATION: usize = 8;
const OFF_PID: usize = 16;
const OFF_ACK_POS: usize = 24;
const OFF_ACK_LSN: usize = 32;
const OFF_ACKED_COMMIT: usize = 40;
const OFF_ACKED_INDEX: usize = 48;
const OFF_READ_POS: usize = 56;
const OFF_HEARTBEAT: usize = 64;
/// Bytes of a consumer's state.
pub const STATE_BYTES: usize = 128;

/// What a consumer read and acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    pub pid: u32,
    /// The ring position up to which it released frames.
    pub ack_pos: u64,
    /// The last transaction it acknowledged completely.
    pub ack_lsn: u64,
    /// The last row it acknowledged.
    pub acked: Position,
    pub read_pos: u64,
    pub heartbeat_ms: u64,
}

/// Where a ring's consumers keep their states.
#[derive(Clone)]
pub(crate) enum Acks {
    /// Files beside the ring file.
    Files { dir: PathBuf, stem: String },
    /// In memory, shared by clones of the ring.
    Memory(Arc<Mutex<HashMap<String, Arc<Region>>>>),
}

/// A consumer's state, as its reader writes it.
pub(crate) struct Writable {
    region: Arc<Region>,
}

impl Acks {
    pub fn memory() -> Acks {
        Acks::Memory(Arc::default())
    }

    fn path(dir: &Path, stem: &str, name: &str) -> PathBuf {
        dir.join(format!("{stem}.{}.ack", super::file::encode(name)))
    }

    /// Consumer `name`'s state, if it has one for this incarnation of the
    /// ring (None: it never attached), kept by `owner` when one is set (a
    /// file of another user is no state of this consumer's).
    pub fn read(&self, name: &str, incarnation: u64, owner: Option<u32>) -> Option<State> {
        match self {
            Acks::Files { dir, stem } => {
                let path = Acks::path(dir, stem, name);
                let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).ok()?;
                if owner.is_some_and(|uid| file.metadata().map(|m| m.uid()).ok() != Some(uid)) {
                    return None;
                }
                for attempt in 0..BUSY_ATTEMPTS {
                    let mut bytes = [0u8; STATE_BYTES];
                    let read = file.read_at(&mut bytes, 0).ok()?;
                    if read < STATE_BYTES {
                        return None;
                    }
                    match decode(&bytes, incarnation) {
                        Decoded::State(state) => return Some(state),
                        Decoded::Busy => pause(attempt),
                        Decoded::None => return None,
                    }
                }
                None
            }
            Acks::Memory(states) => {
                let region = states.lock().expect("ack states").get(name).cloned()?;
                for attempt in 0..BUSY_ATTEMPTS {
                    match decode(&region.read(0, STATE_BYTES), incarnation) {
                        Decoded::State(state) => return Some(state),
                        Decoded::Busy => pause(attempt),
                        Decoded::None => return None,
                    }
                }
                None
            }
        }
    }

    /// The state of consumer `name` for its reader to write, made (from
    /// `start`) if it has none for this incarnation. A state file of
    /// another OS user is refused: that user reads as this consumer.
    pub fn open(&self, name: &str, incarnation: u64, start: State, owner: Option<u32>) -> Result<Writable, RingError> {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if let (Some(uid), Acks::Files { .. }) = (owner, self) {
            if uid != me {
                return Err(RingError::KeptBy { name: name.to_owned(), uid });
            }
        }
        let region = match self {
            Acks::Files { dir, stem } => {
                let path = Acks::path(dir, stem, name);
                let io = |source| RingError::Io { path: path.display().to_string(), source };
                let file = match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let owner = std::fs::symlink_metadata(&path).map_err(io)?.uid();
                        if owner != me {
                            return Err(RingError::KeptBy { name: name.to_owned(), uid: owner });
                        }
                        OpenOptions::new()
                            .read(true)
                            .write(true)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(&path)
                            .map_err(io)?
                    }
                    Err(e) => return Err(io(e)),
                };
                if file.metadata().map_err(io)?.len() < STATE_BYTES as u64 {
                    file.set_len(STATE_BYTES as u64).map_err(io)?;
                }
                Arc::new(Region::map(MmapRaw::map_raw(&file).map_err(io)?))
            }
            Acks::Memory(states) => states
                .lock()
                .expect("ack states")
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(Region::heap(STATE_BYTES)))
                .clone(),
        };
        let writable = Writable { region };
        if !matches!(decode(&writable.region.read(0, STATE_BYTES), incarnation), Decoded::State(_)) {
            writable.init(incarnation, start);
        }
        Ok(writable)
    }

    /// Forgets consumer `name`'s state.
    pub fn remove(&self, name: &str) {
        match self {
            Acks::Files { dir, stem } => {
                let _ = std::fs::remove_file(Acks::path(dir, stem, name));
            }
            Acks::Memory(states) => {
                states.lock().expect("ack states").remove(name);
            }
        }
    }
}

/// How often a state being written is read again before giving up (its
/// writer was stopped in the middle: about 0.2 s in all).
const BUSY_ATTEMPTS: u32 = 2100;

/// Waits a little before reading a state being written again: its writer
/// takes nanoseconds, unless the scheduler stopped it halfway.
fn pause(attempt: u32) {
    if attempt < 100 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

enum Decoded {
    State(State),
    /// Being written: read again.
    Busy,
    None,
}

fn decode(bytes: &[u8], incarnation: u64) -> Decoded {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(OFF_MAGIC) != MAGIC || u64_at(OFF_INCARNATION) != incarnation {
        return Decoded::None;
    }
    if u32_at(OFF_SEQ) % 2 == 1 {
        return Decoded::Busy;
    }
    Decoded::State(State {
        pid: u32_at(OFF_PID),
        ack_pos: u64_at(OFF_ACK_POS),
        ack_lsn: u64_at(OFF_ACK_LSN),
        acked: Position::new(u64_at(OFF_ACKED_COMMIT), u64_at(OFF_ACKED_INDEX)),
        read_pos: u64_at(OFF_READ_POS),
        heartbeat_ms: u64_at(OFF_HEARTBEAT),
    })
}

impl Writable {
    /// The state as written.
    pub fn get(&self) -> State {
        let r = &self.region;
        State {
            pid: r.u32_at(OFF_PID).load(Ordering::Relaxed),
            ack_pos: r.u64_at(OFF_ACK_POS).load(Ordering::Relaxed),
            ack_lsn: r.u64_at(OFF_ACK_LSN).load(Ordering::Relaxed),
            acked: Position::new(
                r.u64_at(OFF_ACKED_COMMIT).load(Ordering::Relaxed),
                r.u64_at(OFF_ACKED_INDEX).load(Ordering::Relaxed),
            ),
            read_pos: r.u64_at(OFF_READ_POS).load(Ordering::Relaxed),
            heartbeat_ms: r.u64_at(OFF_HEARTBEAT).load(Ordering::Relaxed),
        }
    }

    /// Writes the state whole, inside the seqlock.
    pub fn set(&self, state: State) {
        let r = &self.region;
        let seq = r.u32_at(OFF_SEQ);
        let odd = seq.load(Ordering::Relaxed) | 1;
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        r.u32_at(OFF_PID).store(state.pid, Ordering::Relaxed);
        r.u64_at(OFF_ACK_POS).store(state.ack_pos, Ordering::Relaxed);
        r.u64_at(OFF_ACK_LSN).store(state.ack_lsn, Ordering::Relaxed);
        r.u64_at(OFF_ACKED_COMMIT).store(state.acked.commit_lsn, Ordering::Relaxed);
        r.u64_at(OFF_ACKED_INDEX).store(state.acked.index, Ordering::Relaxed);
        r.u64_at(OFF_READ_POS).store(state.read_pos, Ordering::Relaxed);
        r.u64_at(OFF_HEARTBEAT).store(state.heartbeat_ms, Ordering::Relaxed);
        seq.store(odd.wrapping_add(1), Ordering::Release);
    }

    fn init(&self, incarnation: u64, start: State) {
        let r = &self.region;
        r.u32_at(OFF_SEQ).store(1, Ordering::Release);
        r.u64_at(OFF_INCARNATION).store(incarnation, Ordering::Relaxed);
        r.u32_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
        self.set(start);
    }
}

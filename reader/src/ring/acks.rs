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
//!  0 magic "PGCA" u32 │ 8 ring incarnation u64
//! 16 record 0 │ 88 record 1: each version u64 │ pid u32 │ ack_pos u64 │
//!    ack_lsn u64 │ acked commit u64 │ acked index u64 │ read_pos u64 │
//!    heartbeat ms u64 │ check u64 (72 bytes)                 (160 bytes)
//! ```
//! The writer fills the record it did not write last, then its check: a
//! reader takes the valid record with the higher version. A writer killed
//! halfway leaves the other record, one step older, valid — never a torn
//! state, and never one a reader must wait for. A state whose incarnation
//! is not the ring's belongs to a ring that was replaced at the same path:
//! it counts as no state at all.

use super::memory::Region;
use super::RingError;
use crate::position::Position;
use memmap2::MmapRaw;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

const MAGIC: u32 = u32::from_le_bytes(*b"PGCA");
const OFF_MAGIC: usize = 0;
const OFF_INCARNATION: usize = 8;
const OFF_RECORDS: usize = 16;
const RECORD_BYTES: usize = 72;
/// Bytes of a consumer's state file.
pub const STATE_BYTES: usize = OFF_RECORDS + 2 * RECORD_BYTES;

/// Record fields.
const R_VERSION: usize = 0;
const R_PID: usize = 8;
const R_ACK_POS: usize = 16;
const R_ACK_LSN: usize = 24;
const R_ACKED_COMMIT: usize = 32;
const R_ACKED_INDEX: usize = 40;
const R_READ_POS: usize = 48;
const R_HEARTBEAT: usize = 56;
const R_CHECK: usize = 64;

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
    /// The version of the record written last, and its state.
    last: std::cell::Cell<(u64, State)>,
}

impl Acks {
    pub fn memory() -> Acks {
        Acks::Memory(Arc::default())
    }

    fn path(dir: &Path, stem: &str, name: &str) -> PathBuf {
        dir.join(format!("{stem}.{}.ack", super::file::encode(name)))
    }

    /// Consumer `name`'s state for this incarnation of the ring (None: it
    /// never attached), kept by `owner` when one is set (a file of another
    /// user is no state of this consumer's).
    pub fn read(&self, name: &str, incarnation: u64, owner: Option<u32>) -> Option<State> {
        let bytes = match self {
            Acks::Files { dir, stem } => {
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(Acks::path(dir, stem, name))
                    .ok()?;
                if owner.is_some_and(|uid| file.metadata().map(|m| m.uid()).ok() != Some(uid)) {
                    return None;
                }
                let mut bytes = vec![0u8; STATE_BYTES];
                (file.read_at(&mut bytes, 0).ok()? == STATE_BYTES).then_some(bytes)?
            }
            Acks::Memory(states) => states.lock().expect("ack states").get(name)?.read(0, STATE_BYTES),
        };
        decode(&bytes, incarnation).map(|(_, state)| state)
    }

    /// The state of consumer `name` for its reader to write, made (from
    /// `start`) if it has none for this incarnation. A state file of
    /// another OS user is refused: that user reads as this consumer; so is
    /// any when `owner` is set and is not this process's user.
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
                if file.metadata().map_err(io)?.len() != STATE_BYTES as u64 {
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
        let last = decode(&region.read(0, STATE_BYTES), incarnation);
        let writable = Writable { last: std::cell::Cell::new(last.unwrap_or((0, start))), region };
        if last.is_none() {
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

/// The valid record with the higher version, and its version.
fn decode(bytes: &[u8], incarnation: u64) -> Option<(u64, State)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(OFF_MAGIC) != MAGIC || u64_at(OFF_INCARNATION) != incarnation {
        return None;
    }
    (0..2)
        .filter_map(|r| {
            let at = OFF_RECORDS + r * RECORD_BYTES;
            let record = &bytes[at..at + RECORD_BYTES];
            (check(&record[..R_CHECK]) == u64_at(at + R_CHECK)).then(|| {
                let state = State {
                    pid: u32_at(at + R_PID),
                    ack_pos: u64_at(at + R_ACK_POS),
                    ack_lsn: u64_at(at + R_ACK_LSN),
                    acked: Position::new(u64_at(at + R_ACKED_COMMIT), u64_at(at + R_ACKED_INDEX)),
                    read_pos: u64_at(at + R_READ_POS),
                    heartbeat_ms: u64_at(at + R_HEARTBEAT),
                };
                (u64_at(at + R_VERSION), state)
            })
        })
        .max_by_key(|(version, _)| *version)
}

/// FNV-1a over a record's fields (0 is never a valid check, so a record
/// of zeros is no record).
fn check(fields: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fields {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

impl Writable {
    /// The state as written last.
    pub fn get(&self) -> State {
        self.last.get().1
    }

    /// Writes `state` as the next version, in the record not written last.
    pub fn set(&self, state: State) {
        let version = self.last.get().0 + 1;
        let mut record = [0u8; RECORD_BYTES];
        let mut put = |at: usize, bytes: &[u8]| record[at..at + bytes.len()].copy_from_slice(bytes);
        put(R_VERSION, &version.to_le_bytes());
        put(R_PID, &state.pid.to_le_bytes());
        put(R_ACK_POS, &state.ack_pos.to_le_bytes());
        put(R_ACK_LSN, &state.ack_lsn.to_le_bytes());
        put(R_ACKED_COMMIT, &state.acked.commit_lsn.to_le_bytes());
        put(R_ACKED_INDEX, &state.acked.index.to_le_bytes());
        put(R_READ_POS, &state.read_pos.to_le_bytes());
        put(R_HEARTBEAT, &state.heartbeat_ms.to_le_bytes());
        let sum = check(&record[..R_CHECK]);
        record[R_CHECK..].copy_from_slice(&sum.to_le_bytes());
        let at = OFF_RECORDS + (version % 2) as usize * RECORD_BYTES;
        // The fields, then the check that makes them count.
        self.region.write(at, &record[..R_CHECK]);
        std::sync::atomic::fence(Ordering::Release);
        self.region.write(at + R_CHECK, &record[R_CHECK..]);
        self.last.set((version, state));
    }

    /// Gives the consumer up (pid 0) if this process holds it, on top of
    /// the latest state any reader of it wrote.
    pub fn release(&self, incarnation: u64) {
        let Some((version, state)) = decode(&self.region.read(0, STATE_BYTES), incarnation) else { return };
        if state.pid == std::process::id() {
            self.last.set((version, state));
            self.set(State { pid: 0, ..state });
        }
    }

    fn init(&self, incarnation: u64, start: State) {
        let r = &self.region;
        r.u32_at(OFF_MAGIC).store(0, Ordering::Release);
        r.write(OFF_RECORDS, &[0u8; 2 * RECORD_BYTES]);
        r.u64_at(OFF_INCARNATION).store(incarnation, Ordering::Relaxed);
        self.last.set((0, start));
        self.set(start);
        r.u32_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_stopped_halfway_leaves_the_state_before_it() {
        let acks = Acks::memory();
        let start = State { ack_pos: 64, ..State::default() };
        let state = acks.open("c", 7, start, None).unwrap();
        assert_eq!(acks.read("c", 7, None), Some(start));
        assert_eq!(acks.read("c", 8, None), None, "another incarnation's state is none");
        let (one, two) = (State { ack_pos: 128, ..start }, State { ack_pos: 192, ..start });
        state.set(one);
        state.set(two);
        assert_eq!(acks.read("c", 7, None), Some(two));
        // The next write gets as far as its fields, not its check.
        let version = state.last.get().0 + 1;
        let at = OFF_RECORDS + (version % 2) as usize * RECORD_BYTES;
        state.region.write(at, &[0xAB; R_CHECK]);
        assert_eq!(acks.read("c", 7, None), Some(two), "the last whole state");
        // A reader attaching again continues from it.
        let again = acks.open("c", 7, start, None).unwrap();
        assert_eq!(again.get(), two);
        again.set(State { ack_pos: 256, ..two });
        assert_eq!(acks.read("c", 7, None).map(|s| s.ack_pos), Some(256));
    }
}

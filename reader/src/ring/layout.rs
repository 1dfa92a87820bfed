//! The byte layout of a ring file, defined once for writer and reader.
//!
//! ```text
//!  0    ┌──────────────────────── header page (4 KiB) ───────────────────────┐
//!       │  0 magic "PGCDCRNG" │ 8 version │ 12 data offset │ 16 capacity     │
//!       │ 24 reader slots │ 28 schema area bytes │ 32 created (ms)           │
//!       │ 40 system identifier │ 48 timeline │ 52 database OID │ 56 relation │
//!       │ 60 partition  (whose ring this is: checked by the worker on open)  │
//!  64   ├── producer line ───────────────────────────────────────────────────┤
//!       │ write_pos u64 │ epoch u64 │ pid u32 │ data_seq u32 (futex)          │
//!       │ heartbeat ms u64 │ last commit LSN u64 │ oldest unacked ms u64       │
//!       │ rows written u64 │ rows per second u64                              │
//!  128  ├── registration line ───────────────────────────────────────────────┤
//!       │ incarnation u64 (random: tells consumer states of an older ring at │
//!       │ the same path apart) │ registration lock u32 (pid of the holder)   │
//!  192  ├── schema line ─────────────────────────────────────────────────────┤
//!       │ schema_seq u64 (seqlock) │ schema_len u32 │ retired u32             │
//!       │ complete: seq u64 (seqlock) │ commit LSN u64 │ LSN u64 (208..232)   │
//!  256  ├── names ───────────────────────────────────────────────────────────┤
//!       │ slot name length u32 │ route name length u32 │ slot name [64]       │
//!       │ route name [184] (for people; files are named by relation OID)    │
//!  512  ├── consumer slots, 128 bytes each: who is registered, from where ────┤
//!       │ state u32 │ owner uid u32 │ start: ack_pos u64 (+8) │ ack_lsn (+16) │
//!       │ acked commit u64 (+24) │ acked index u64 (+32) │ name_len u32 (+40)│
//!       │ name [64] at +64  (what each consumer did: its own file, acks.rs)  │
//! 4096  ├── schema area ─────────────────────────────────────────────────────┤
//!       │ the route's latest Arrow IPC schema message, for late readers       │
//! data  ├── data area: `capacity` bytes of frames ───────────────────────────┤
//!       │ ┌ len u32 │ kind u32 │ rows u32 │ flags u32 │ first position      ┐ │
//!       │ └ (commit u64, index u64) │ last position (commit, index): 48 B ┘ │
//!       │ payload (an Arrow IPC stream, or a spill file's name) … padded to 64│
//!       │ frames never wrap: a padding frame fills the end of the area       │
//!       └────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Positions (`write_pos`, `ack_pos`, `read_pos`) are monotonic byte counters
//! over the data area, each written by one side only; a position's offset in
//! the area is `pos % capacity`. Frames start on 64-byte boundaries and
//! their payloads on 16-byte ones, so the 8-byte-aligned buffers of an
//! Arrow IPC payload stay aligned in memory.
//!
//! Row positions ([`Position`](crate::position::Position)) are a different
//! thing: (commit LSN, index within the transaction) of a change row. A
//! frame header carries those of its first and last rows; a consumer's
//! state the position of the last row it acknowledged.
//!
//! Only the server writes this file (the producer, and registrations);
//! readers map it read-only and keep their own state beside it
//! ([`acks`](super::acks)).

/// `"PGCDCRNG"`.
pub const MAGIC: [u8; 8] = *b"PGCDCRNG";
/// Bumped on any incompatible layout change.
pub const VERSION: u32 = 3;

/// Frames (and their payloads) start on this boundary.
pub const FRAME_ALIGN: u64 = 64;
/// Bytes before a frame's payload.
pub const FRAME_HEADER: u64 = 48;
/// A frame of record batches: its payload is an Arrow IPC stream.
pub const KIND_BATCH: u32 = 1;
/// A frame that fills the end of the data area.
pub const KIND_PADDING: u32 = 2;
/// A frame of record batches too large for the ring: its payload is the
/// name of a file beside the ring that holds the Arrow IPC stream.
pub const KIND_SPILL: u32 = 3;
/// Frame flag: the frame's last row is the last row of its transaction in
/// this route.
pub const FLAG_ENDS_TRANSACTION: u32 = 1;

/// Frame header fields.
pub const FRAME_LEN: usize = 0;
pub const FRAME_KIND: usize = 4;
pub const FRAME_ROWS: usize = 8;
pub const FRAME_FLAGS: usize = 12;
pub const FRAME_FIRST_COMMIT: usize = 16;
pub const FRAME_FIRST_INDEX: usize = 24;
pub const FRAME_LAST_COMMIT: usize = 32;
pub const FRAME_LAST_INDEX: usize = 40;

/// Header fields.
pub const OFF_MAGIC: usize = 0;
pub const OFF_VERSION: usize = 8;
pub const OFF_DATA_OFFSET: usize = 12;
pub const OFF_CAPACITY: usize = 16;
pub const OFF_READER_SLOTS: usize = 24;
pub const OFF_SCHEMA_AREA: usize = 28;
pub const OFF_CREATED_MS: usize = 32;
pub const OFF_SYSTEM_ID: usize = 40;
pub const OFF_TIMELINE: usize = 48;
pub const OFF_DATABASE: usize = 52;
pub const OFF_RELATION: usize = 56;
pub const OFF_PARTITION: usize = 60;

/// Producer line (written by the producer only).
pub const OFF_WRITE_POS: usize = 64;
pub const OFF_EPOCH: usize = 72;
pub const OFF_PRODUCER_PID: usize = 80;
pub const OFF_DATA_SEQ: usize = 84;
pub const OFF_HEARTBEAT_MS: usize = 88;
pub const OFF_LAST_COMMIT_LSN: usize = 96;
/// When the oldest frame some consumer has not acknowledged was written
/// (ms since 1970; 0 when every consumer is caught up).
pub const OFF_OLDEST_UNACKED_MS: usize = 104;
/// Rows written to the ring since it was created.
pub const OFF_ROWS_WRITTEN: usize = 112;
/// Rows per second over the producer's last measuring period.
pub const OFF_ROWS_PER_SECOND: usize = 120;

/// Registration line (written by the server's processes).
pub const OFF_INCARNATION: usize = 128;
/// Held (by pid) while a consumer registers or unregisters.
pub const OFF_REGISTRATION_LOCK: usize = 136;

/// Schema line.
pub const OFF_SCHEMA_SEQ: usize = 192;
pub const OFF_SCHEMA_LEN: usize = 200;
/// Non-zero once the producer replaced this ring by a new file: readers
/// must open the path again.
pub const OFF_RETIRED: usize = 204;
/// Seqlock over the complete position.
pub const OFF_COMPLETE_SEQ: usize = 208;
/// The complete position (commit LSN, LSN): no row whose (`_commit_lsn`,
/// `_lsn`) is at or below it can still arrive in this ring. Raised after
/// each transaction, and inside a transaction whenever the producer has
/// written every row decoded so far.
pub const OFF_COMPLETE_COMMIT: usize = 216;
pub const OFF_COMPLETE_LSN: usize = 224;

/// Names.
pub const OFF_SLOT_NAME_LEN: usize = 256;
pub const OFF_ROUTE_NAME_LEN: usize = 260;
pub const OFF_SLOT_NAME: usize = 264;
pub const SLOT_NAME_MAX: usize = 64;
pub const OFF_ROUTE_NAME: usize = 328;
pub const ROUTE_NAME_MAX: usize = 184;

/// Consumer slots: a registration and where the consumer starts.
pub const OFF_SLOTS: usize = 512;
pub const SLOT_BYTES: usize = 128;
pub const SLOT_STATE: usize = 0;
/// The uid of the one OS user that may read as the consumer, or
/// [`ANY_OWNER`].
pub const SLOT_OWNER: usize = 4;
pub const ANY_OWNER: u32 = u32::MAX;
pub const SLOT_START_ACK_POS: usize = 8;
pub const SLOT_START_ACK_LSN: usize = 16;
pub const SLOT_START_COMMIT: usize = 24;
pub const SLOT_START_INDEX: usize = 32;
pub const SLOT_NAME_LEN: usize = 40;
pub const SLOT_NAME: usize = 64;
/// Longest consumer name.
pub const NAME_MAX: usize = 64;
/// Slot states.
pub const SLOT_FREE: u32 = 0;
pub const SLOT_CLAIMING: u32 = 1;
pub const SLOT_REGISTERED: u32 = 2;

/// Most reader slots a ring can have (they must fit the header page).
pub const MAX_READERS: u32 = 28;
/// The header page.
pub const HEADER_BYTES: usize = 4096;

/// The geometry of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of the data area (a multiple of [`FRAME_ALIGN`]).
    pub capacity: u64,
    /// Reader slots (at most [`MAX_READERS`]).
    pub readers: u32,
    /// Bytes reserved for the schema message.
    pub schema_area: u32,
}

impl Geometry {
    /// A geometry for `capacity` bytes of frames (rounded up to 64).
    pub fn new(capacity: u64) -> Geometry {
        Geometry { capacity: frame_size_align(capacity), readers: 16, schema_area: 60 * 1024 }
    }

    /// Where the data area starts: after the header page and the schema
    /// area, on a page boundary.
    pub fn data_offset(&self) -> usize {
        (HEADER_BYTES + self.schema_area as usize).div_ceil(4096) * 4096
    }

    /// Bytes of the whole file.
    pub fn file_len(&self) -> usize {
        self.data_offset() + self.capacity as usize
    }

    /// The largest frame the ring takes; larger payloads are spilled to a
    /// file beside the ring. Half the ring, so that a frame never waits
    /// for a padding frame and itself to fit together at the end.
    pub fn max_frame(&self) -> u64 {
        self.capacity / 2 / FRAME_ALIGN * FRAME_ALIGN
    }

    /// Checks a geometry read from a file against the file's length.
    pub fn validate(&self, file_len: usize) -> Result<(), String> {
        if self.capacity < 4 * FRAME_ALIGN || !self.capacity.is_multiple_of(FRAME_ALIGN) {
            return Err(format!("capacity {} is not a multiple of {FRAME_ALIGN} of at least 256", self.capacity));
        }
        if self.readers == 0 || self.readers > MAX_READERS {
            return Err(format!("{} reader slots (1 to {MAX_READERS} allowed)", self.readers));
        }
        if self.capacity > (1 << 40) || self.schema_area > (1 << 24) {
            return Err("implausible sizes".into());
        }
        if self.file_len() != file_len {
            return Err(format!("the file has {file_len} bytes, its header describes {}", self.file_len()));
        }
        Ok(())
    }
}

/// The bytes a frame with `payload` bytes occupies.
pub fn frame_size(payload: u64) -> u64 {
    frame_size_align(FRAME_HEADER.saturating_add(payload))
}

fn frame_size_align(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN).saturating_mul(FRAME_ALIGN)
}

/// Offset of reader slot `index` in the header.
pub fn slot_offset(index: u32) -> usize {
    OFF_SLOTS + index as usize * SLOT_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_fits_the_header_page() {
        assert!(slot_offset(MAX_READERS) <= HEADER_BYTES);
        const { assert!(SLOT_NAME + NAME_MAX <= SLOT_BYTES) };
        const { assert!(OFF_SLOT_NAME + SLOT_NAME_MAX <= OFF_ROUTE_NAME) };
        const { assert!(OFF_ROUTE_NAME + ROUTE_NAME_MAX <= OFF_SLOTS) };
        const { assert!(FRAME_LAST_INDEX + 8 == FRAME_HEADER as usize) };
        let g = Geometry::new(1000);
        assert_eq!(g.capacity, 1024);
        assert_eq!(g.max_frame(), 512);
        assert_eq!(g.data_offset() % 4096, 0);
        assert!(g.data_offset() >= HEADER_BYTES + g.schema_area as usize);
        assert_eq!(frame_size(0), 64);
        assert_eq!(frame_size(16), 64);
        assert_eq!(frame_size(17), 128);
        assert_eq!(frame_size(u64::MAX), u64::MAX, "saturates instead of wrapping");
        assert!(g.validate(g.file_len()).is_ok());
        assert!(g.validate(g.file_len() + 1).is_err());
        assert!(Geometry { readers: 0, ..g }.validate(g.file_len()).is_err());
        assert!(Geometry { capacity: 64, ..g }.validate(Geometry { capacity: 64, ..g }.file_len()).is_err());
    }
}

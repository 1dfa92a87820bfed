//! Snapshot watermarks as the decoder meets them (with `snapshot_markers`,
//! for the pgcdc worker): the changes of a table between a chunk's low and
//! high watermark are kept (a window), and at the high watermark the
//! chunk's rows are reconciled with them (`pgcdc_reader::snapshot`).
//!
//! Every slot of the database decodes every watermark: a marker counts
//! only if it names this slot and carries its snapshot's token, read from
//! the token file in the stream's directory (the server's own): anyone may
//! emit a logical message, nobody else can forge a snapshot's rows or cut
//! its windows short.
//!
//! While a window is open, and after its chunk is sent until the
//! consumers have acknowledged the chunk's rows, the slot must not confirm
//! past its low watermark ([`Watermarks::hold`]): decoding after a crash
//! that meets the high watermark again must meet the low one before it, to
//! rebuild the window. So a high watermark decoded again without its low
//! one is of a chunk whose rows every consumer has already. A chunk file
//! is needed until the slot's saved position passes its high watermark
//! ([`Delivered`]).

use arrow_array::RecordBatch;
use pgcdc_reader::ring::file;
use pgcdc_reader::snapshot::{is_file_of, token_file_name, Marker, MarkerKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The changes of one table since a chunk's low watermark.
pub struct Window {
    pub relid: u32,
    pub chunk: u64,
    /// The low watermark's LSN.
    pub low: u64,
    pub batches: Vec<RecordBatch>,
}

/// Files nobody needs once the slot's saved position passes `after`.
pub struct Delivered {
    pub after: u64,
    pub files: Vec<PathBuf>,
}

pub struct Watermarks {
    slot: String,
    dir: PathBuf,
    /// Snapshot id → its token (None: no token file the server wrote).
    tokens: HashMap<u64, Option<u64>>,
    /// (snapshot, range) → the open window of the range's current chunk.
    windows: HashMap<(u64, u32), Window>,
    /// Chunks sent whose rows are not acknowledged yet: (their low
    /// watermark's LSN, their high watermark's commit LSN).
    sent: Vec<(u64, u64)>,
    /// Snapshots done or cancelled: a chunk of one read meanwhile (its
    /// high watermark committing after the end) is not sent.
    ended: HashSet<u64>,
    delivered: Vec<Delivered>,
}

impl Watermarks {
    /// The watermarks of stream `slot`, whose files live in `dir`.
    pub fn new(slot: String, dir: PathBuf) -> Watermarks {
        Watermarks {
            slot,
            dir,
            tokens: HashMap::new(),
            windows: HashMap::new(),
            sent: Vec::new(),
            ended: HashSet::new(),
            delivered: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The watermark `content` is, if it is one of this stream's genuine
    /// ones.
    pub fn accept(&mut self, content: &[u8]) -> Option<Marker> {
        let marker = Marker::parse(content)?;
        if marker.slot != self.slot {
            return None;
        }
        let dir = &self.dir;
        let token = *self.tokens.entry(marker.snapshot).or_insert_with(|| {
            let text = file::read_private(&dir.join(token_file_name(marker.snapshot))).ok()?;
            u64::from_str_radix(String::from_utf8_lossy(&text).trim(), 16).ok()
        });
        if token != Some(marker.token) {
            // A token file written later (the first marker of a snapshot
            // can come before it only if forged) is read again next time.
            self.tokens.remove(&marker.snapshot);
            pgrx::log!("wal2arrow: ignoring snapshot watermark \"{marker}\": not this stream's snapshot's");
            return None;
        }
        Some(marker)
    }

    /// A low watermark at `lsn`: the range's window starts afresh (a
    /// chunk read again after its reader died replaces the one it left).
    pub fn low(&mut self, marker: &Marker, lsn: u64) {
        if self.ended.contains(&marker.snapshot) {
            return;
        }
        let window = Window { relid: marker.relid, chunk: marker.chunk, low: lsn, batches: Vec::new() };
        self.windows.insert((marker.snapshot, marker.range), window);
    }

    /// A high watermark, of a transaction committing at `commit_lsn`: the
    /// window of its chunk, if it is open; it holds the slot back until
    /// the chunk's rows are acknowledged.
    pub fn high(&mut self, marker: &Marker, commit_lsn: u64) -> Option<Window> {
        let key = (marker.snapshot, marker.range);
        match self.windows.get(&key) {
            Some(window) if window.chunk == marker.chunk => {
                self.sent.push((window.low, commit_lsn));
                self.windows.remove(&key)
            }
            _ => None,
        }
    }

    /// A snapshot ended (done or cancelled): its windows close.
    pub fn end(&mut self, marker: &Marker) {
        debug_assert!(matches!(marker.kind, MarkerKind::Done | MarkerKind::Cancel));
        self.windows.retain(|(snapshot, _), _| *snapshot != marker.snapshot);
        self.ended.insert(marker.snapshot);
    }

    /// Whether snapshot `snapshot` ended before this point of the WAL.
    pub fn ended(&self, snapshot: u64) -> bool {
        self.ended.contains(&snapshot)
    }

    /// Whether a chunk's rows were sent before (its file renamed so), and
    /// so, when its low watermark is not decoded again, acknowledged.
    pub fn was_sent(&self, marker: &Marker) -> bool {
        self.dir.join(marker.sent_file_name()).exists() && !self.dir.join(marker.chunk_file_name()).exists()
    }

    /// Keeps a batch of table `relid`'s changes in the windows open on it.
    pub fn observe(&mut self, relid: u32, batch: &RecordBatch) {
        for window in self.windows.values_mut().filter(|w| w.relid == relid) {
            window.batches.push(batch.clone());
        }
    }

    /// The LSN the slot must not confirm past, once the consumers have
    /// acknowledged every transaction up to `acknowledged`: the earliest
    /// low watermark of an open window or of a chunk whose rows are not
    /// acknowledged yet.
    pub fn hold(&mut self, acknowledged: u64) -> Option<u64> {
        self.sent.retain(|(_, high)| *high > acknowledged);
        self.windows.values().map(|w| w.low).chain(self.sent.iter().map(|(low, _)| *low)).min()
    }

    /// `files` are not needed once the slot's saved position passes
    /// `after` (the end of the transaction that delivered them).
    pub fn deliver(&mut self, after: u64, files: Vec<PathBuf>) {
        self.delivered.push(Delivered { after, files });
    }

    /// Every file of snapshot `snapshot` in the stream's directory.
    pub fn files_of(&self, snapshot: u64) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries.flatten().filter(|e| is_file_of(&e.file_name().to_string_lossy(), snapshot)).map(|e| e.path()).collect()
    }

    /// The files delivered so far, handed to whoever deletes them.
    pub fn take_delivered(&mut self) -> Vec<Delivered> {
        std::mem::take(&mut self.delivered)
    }
}

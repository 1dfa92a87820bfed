//! A corrupted ring gives errors, never a crash: the input patches bytes of
//! a valid ring (header, consumer slots, frames), which is then opened,
//! inspected and read to the end.
//!
//! `cargo fuzz run ring --sanitizer none` (from reader/).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcdc_reader::ring::layout::{Geometry, KIND_BATCH};
use pgcdc_reader::ring::{Consumer, FrameMeta, Identity, Region, Ring, RingReader, RingWriter};
use pgcdc_reader::Position;

fuzz_target!(|data: &[u8]| {
    let geometry = Geometry::new(4096);
    let len = geometry.file_len();
    let consumers = [Consumer::named("default"), Consumer::named("other")];
    let ring = Ring::create(Region::heap(len), geometry, &Identity::default(), &consumers).expect("a fresh ring");
    let writer = RingWriter::new(ring.clone());
    writer.publish_schema(b"schema").expect("fits");
    writer.complete_through(3, 7);
    for lsn in 1..=12u64 {
        let meta = FrameMeta { rows: 2, first: Position::new(lsn, 1), last: Position::new(lsn, 2), ends_transaction: true };
        let _ = writer.try_write(KIND_BATCH, &vec![lsn as u8; (lsn * 37 % 400) as usize], &meta);
    }
    // Each 4-byte chunk of input: a 3-byte offset and the byte to put there.
    let image = ring.copy_bytes(len);
    let region = Region::heap(len);
    region.write(0, &image);
    for patch in data.chunks_exact(4) {
        let offset = (u32::from_le_bytes([patch[0], patch[1], patch[2], 0]) as usize) % len;
        region.write(offset, &[patch[3]]);
    }
    let Ok(ring) = Ring::open(region) else { return };
    let status = ring.status();
    let _ = (status.fill(), status.invalid_consumers(), ring.schema(), ring.identity(), ring.complete());
    // The producer facing a damaged ring: errors or Full, never a panic.
    let writer = RingWriter::new(ring.clone());
    let meta = FrameMeta { rows: 1, first: Position::new(99, 1), last: Position::new(99, 1), ends_transaction: true };
    let _ = writer.try_write(KIND_BATCH, b"after the damage", &meta);
    let Ok(mut reader) = RingReader::attach(ring, "default") else { return };
    for _ in 0..64 {
        match reader.try_next() {
            Ok(Some(frame)) => reader.ack_through(frame.meta.last, frame.meta.last.commit_lsn),
            _ => break,
        }
    }
});

//! A corrupted ring gives errors, never a crash: the input patches bytes of
//! a valid ring (header, consumer slots, frames), which is then opened,
//! inspected and read to the end.
//!
//! `cargo fuzz run ring --sanitizer none` (from reader/).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcdc_reader::ring::layout::Geometry;
use pgcdc_reader::ring::{Region, Ring, RingReader, RingWriter};

fuzz_target!(|data: &[u8]| {
    let geometry = Geometry::new(4096);
    let len = geometry.file_len();
    let ring = Ring::create(Region::heap(len), geometry).expect("a fresh ring");
    let writer = RingWriter::new(ring.clone());
    writer.publish_schema(b"schema").expect("fits");
    for lsn in 1..=12u64 {
        let _ = writer.try_write(&vec![lsn as u8; (lsn * 37 % 400) as usize], lsn);
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
    let _ = ring.status();
    let _ = ring.schema();
    let Ok(mut reader) = RingReader::attach(ring, "default") else { return };
    for _ in 0..64 {
        match reader.try_next() {
            Ok(Some(frame)) => reader.ack(frame.commit_lsn),
            _ => break,
        }
    }
});

//! A corrupted ring gives errors, never a crash: random damage to a real
//! ring file (header, schema area, frames) and to a consumer's state file
//! is opened and read to the end, and the producer's view of it taken.

use pgcdc_reader::ring::layout::{Geometry, KIND_BATCH, KIND_SPILL};
use pgcdc_reader::ring::{file, FrameMeta, Identity, RingReader, RingWriter, Written};
use pgcdc_reader::Position;
use std::time::Duration;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_damage_is_an_error_or_a_frame_never_a_panic() {
    let dir = std::env::temp_dir().join(format!("pgcdc-ring-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.ring");
    let geometry = Geometry::new(4096);
    {
        let consumers = [pgcdc_reader::ring::Consumer::named("default")];
        let writer =
            RingWriter::new(file::open_or_create(&path, geometry, &Identity::default(), &consumers, None).unwrap());
        writer.publish_schema(b"a schema").unwrap();
        let mut reader = RingReader::attach(file::open(&path).unwrap(), "default").unwrap();
        for lsn in 1..=60u64 {
            let payload: Vec<u8> = (0..(lsn * 13 % 300) as usize).map(|i| i as u8).collect();
            let meta = FrameMeta {
                rows: 1,
                first: Position::new(lsn, 1),
                last: Position::new(lsn, 1),
                ends_transaction: true,
            };
            // Some frames are spilled to a file beside the ring.
            let (kind, payload) = if lsn % 10 == 0 {
                std::fs::write(dir.join("big.spill"), &payload).unwrap();
                (KIND_SPILL, b"big.spill".to_vec())
            } else {
                (KIND_BATCH, payload)
            };
            while writer.write(kind, &payload, &meta, Duration::from_millis(1)).unwrap() == Written::Full {
                while let Some(frame) = reader.try_next().unwrap() {
                    reader.ack_through(frame.meta.last, lsn);
                }
            }
        }
    }
    let pristine = std::fs::read(&path).unwrap();
    let pristine_state = std::fs::read(dir.join("r.default.ack")).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut errors, mut frames) = (0, 0);
    for round in 0..3000 {
        let mut bytes = pristine.clone();
        let flips = 1 + rng.next() % 8;
        for _ in 0..flips {
            // Aim at the interesting parts: header words, slots, frames.
            let at = match rng.next() % 3 {
                0 => (rng.next() % 512) as usize,
                1 => geometry.data_offset() + (rng.next() % geometry.capacity) as usize,
                _ => (rng.next() % bytes.len() as u64) as usize,
            };
            bytes[at] = rng.next() as u8;
        }
        if round % 7 == 0 {
            bytes.truncate((rng.next() % bytes.len() as u64) as usize);
        }
        std::fs::write(&path, &bytes).unwrap();
        // The consumer starts where it was after the setup, every round;
        // in some rounds its own state file is damaged too (the one file a
        // reader writes).
        let mut state = pristine_state.clone();
        if round % 3 == 0 {
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % state.len() as u64) as usize;
                state[at] = rng.next() as u8;
            }
        }
        if round % 11 == 0 {
            state.truncate((rng.next() % state.len() as u64) as usize);
        }
        std::fs::write(dir.join("r.default.ack"), &state).unwrap();
        let ring = match file::open(&path) {
            Ok(ring) => ring,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let status = ring.status();
        let _ = (status.fill(), status.invalid_consumers(), ring.schema());
        let mut reader = match RingReader::attach(ring, "default") {
            Ok(reader) => reader,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        for _ in 0..200 {
            match reader.try_next() {
                Ok(Some(frame)) => {
                    frames += 1;
                    reader.ack_through(frame.meta.last, frame.meta.last.commit_lsn);
                }
                Ok(None) => break,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(errors > 100 && frames > 100, "both outcomes exercised: {errors} errors, {frames} frames");
}

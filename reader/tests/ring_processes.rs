//! A producer and a consumer in two processes share a ring file: every
//! frame arrives once, in order, through back-pressure and futex wake-ups.

use pgcdc_reader::ring::layout::{Geometry, KIND_BATCH};
use pgcdc_reader::ring::{file, FrameMeta, Identity, RingReader, RingWriter, Written};
use pgcdc_reader::Position;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const FRAMES: u64 = 20_000;
const CHILD_ENV: &str = "PGCDC_RING_CHILD";

/// Frame `lsn` holds the one row of transaction `lsn`.
fn meta(lsn: u64) -> FrameMeta {
    FrameMeta { rows: 1, first: Position::new(lsn, 1), last: Position::new(lsn, 1), ends_transaction: true }
}

fn payload(lsn: u64) -> Vec<u8> {
    let len = (lsn * 37 % 700) as usize;
    (0..len).map(|i| (lsn as usize + i) as u8).collect()
}

/// Runs as the producer when started by the test below.
#[test]
fn producer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let writer = RingWriter::new(file::open_own(&PathBuf::from(path)).unwrap());
    for lsn in 1..=FRAMES {
        while writer.write(KIND_BATCH, &payload(lsn), &meta(lsn), Duration::from_secs(1)).unwrap() == Written::Full {}
    }
}

#[test]
fn frames_cross_processes_in_order() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("pgcdc-ring-procs-{}", std::process::id()));
    let path = dir.join("r.ring");
    // Small enough that the producer must wait for the consumer many times.
    file::open_or_create(&path, Geometry::new(16 * 1024), &Identity::default(), &["default".into()], None).unwrap();
    let mut reader = RingReader::attach(file::open(&path).unwrap(), "default").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "producer_child", "--nocapture"])
        .env(CHILD_ENV, &path)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut expected = 1;
    while expected <= FRAMES && Instant::now() < deadline {
        if let Some(frame) = reader.next(Duration::from_secs(1)).unwrap() {
            assert_eq!(frame.meta, meta(expected));
            assert_eq!(frame.payload, payload(expected));
            expected += 1;
            if expected % 16 == 0 {
                reader.ack_through(frame.meta.last, expected - 1);
            }
        }
    }
    assert_eq!(expected, FRAMES + 1, "every frame arrived");
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

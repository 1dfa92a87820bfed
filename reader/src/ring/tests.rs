use super::layout::*;
use super::*;
use std::time::Duration;

/// A writer and a reader over one ring in plain memory.
fn split(capacity: u64, name: &str) -> (RingWriter, RingReader) {
    let geometry = Geometry::new(capacity);
    let ring = Ring::create(Region::heap(geometry.file_len()), geometry).unwrap();
    (RingWriter::new(ring.clone()), RingReader::attach(ring, name).unwrap())
}

pub(crate) mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "pgcdc-ring-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn payload(i: u32, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

#[test]
fn frames_round_trip_in_order_and_wrap_with_padding() {
    let (writer, mut reader) = split(1024, "default");
    let mut expected = Vec::new();
    for i in 0..40u32 {
        let p = payload(i, 100 + (i as usize * 7) % 150);
        loop {
            match writer.try_write(&p, 1000 + u64::from(i)).unwrap() {
                Written::Done { end_pos } => {
                    assert_eq!(end_pos % FRAME_ALIGN, 0);
                    break;
                }
                Written::Full => {
                    // Drain and acknowledge to make room.
                    while let Some(frame) = reader.try_next().unwrap() {
                        expected.push(frame);
                    }
                    let last = expected.last().map_or(0, |f: &Frame| f.commit_lsn);
                    reader.ack(last);
                }
            }
        }
    }
    while let Some(frame) = reader.try_next().unwrap() {
        expected.push(frame);
    }
    assert_eq!(expected.len(), 40);
    for (i, frame) in expected.iter().enumerate() {
        assert_eq!(frame.payload, payload(i as u32, 100 + (i * 7) % 150));
        assert_eq!(frame.commit_lsn, 1000 + i as u64);
    }
    let status = writer.ring().status();
    assert!(status.write_pos > 4 * 1024, "the ring wrapped several times");
    assert_eq!(status.last_commit_lsn, 1039);
}

#[test]
fn a_full_ring_refuses_until_the_slowest_consumer_acknowledges() {
    let (writer, mut fast) = split(1024, "default");
    let mut slow = RingReader::attach(writer.ring().clone(), "slow").unwrap();
    let frame = payload(1, 200); // 256 bytes with its header: four fit
    for lsn in 1..=4 {
        assert!(matches!(writer.try_write(&frame, lsn).unwrap(), Written::Done { .. }));
    }
    assert_eq!(writer.try_write(&frame, 5).unwrap(), Written::Full);
    while fast.try_next().unwrap().is_some() {}
    fast.ack(4);
    assert_eq!(writer.try_write(&frame, 5).unwrap(), Written::Full, "the slow consumer still holds every frame");
    assert_eq!(slow.try_next().unwrap().unwrap().commit_lsn, 1);
    assert_eq!(slow.try_next().unwrap().unwrap().commit_lsn, 2);
    slow.ack(1);
    assert!(matches!(writer.try_write(&frame, 5).unwrap(), Written::Done { .. }), "one frame freed");
    assert_eq!(writer.try_write(&frame, 6).unwrap(), Written::Full);
    // A consumer that unregisters holds nothing back.
    slow.unregister();
    assert!(matches!(writer.try_write(&frame, 6).unwrap(), Written::Done { .. }));
}

#[test]
fn acknowledging_a_commit_lsn_frees_only_whole_frames() {
    let (writer, mut reader) = split(4096, "default");
    for lsn in [10, 20, 30] {
        writer.try_write(&payload(0, 10), lsn).unwrap();
    }
    for _ in 0..3 {
        reader.try_next().unwrap().unwrap();
    }
    reader.ack(25);
    let status = writer.ring().status();
    let consumer = &status.consumers[0];
    assert_eq!(consumer.ack_lsn, 25);
    assert_eq!(consumer.ack_pos, 128, "frames 10 and 20 are done, 30 is not");
    reader.ack(5);
    assert_eq!(writer.ring().status().consumers[0].ack_lsn, 25, "acknowledgements never go back");
}

#[test]
fn a_restarted_consumer_resumes_at_its_acknowledged_position() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("r.ring");
    let writer = RingWriter::new(file::open_or_create(&path, Geometry::new(4096), None).unwrap());
    let mut reader = RingReader::attach(file::open(&path).unwrap(), "default").unwrap();
    for lsn in 1..=5 {
        writer.try_write(&payload(lsn as u32, 30), lsn).unwrap();
    }
    for _ in 0..4 {
        reader.try_next().unwrap();
    }
    reader.ack(2);
    drop(reader); // a crash: no goodbye
    let mut again = RingReader::attach(file::open(&path).unwrap(), "default").unwrap();
    assert_eq!(again.acknowledged_lsn(), 2);
    let lsns: Vec<u64> = std::iter::from_fn(|| again.try_next().unwrap()).map(|f| f.commit_lsn).collect();
    assert_eq!(lsns, [3, 4, 5]);
    // A consumer registered later starts at the end.
    let mut late = RingReader::attach(file::open(&path).unwrap(), "late").unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(late.try_next().unwrap(), None);
    writer.try_write(&payload(9, 9), 9).unwrap();
    assert_eq!(late.try_next().unwrap().unwrap().commit_lsn, 9);
    assert_eq!(writer.ring().status().consumers.len(), 2);
}

#[test]
fn names_are_checked_and_slots_run_out() {
    let (writer, _reader) = split(1024, "default");
    assert!(matches!(writer.register(""), Err(RingError::BadName(0))));
    assert!(matches!(writer.register(&"x".repeat(65)), Err(RingError::BadName(65))));
    for i in 1..16 {
        writer.register(&format!("c{i}")).unwrap();
    }
    writer.register("c1").unwrap(); // already registered: fine
    assert!(matches!(writer.register("one too many"), Err(RingError::NoFreeSlot(16))));
}

#[test]
fn schema_area_and_status() {
    let (writer, reader) = split(1024, "default");
    assert_eq!(reader.ring().schema(), None);
    writer.publish_schema(b"schema v1").unwrap();
    assert_eq!(reader.ring().schema().as_deref(), Some(&b"schema v1"[..]));
    writer.publish_schema(b"v2").unwrap();
    assert_eq!(reader.ring().schema().as_deref(), Some(&b"v2"[..]));
    assert!(matches!(writer.publish_schema(&vec![0; 70_000]), Err(RingError::SchemaTooLarge { .. })));
    assert!(matches!(writer.try_write(&vec![0; 2000], 1), Err(RingError::TooLarge { .. })));
    let status = reader.ring().status();
    assert_eq!(status.producer_pid, std::process::id());
    assert_eq!(status.consumers[0].name, "default");
    assert!(status.consumers[0].alive);
}

#[test]
fn a_waiting_consumer_sleeps_and_wakes_on_a_write() {
    let (writer, mut reader) = split(4096, "default");
    let waiter = std::thread::spawn(move || reader.next(Duration::from_secs(20)).unwrap());
    // Let the consumer fall asleep, then look at its state: sleeping in a
    // futex wait, not spinning.
    std::thread::sleep(Duration::from_millis(300));
    let sleeping = std::fs::read_dir("/proc/self/task").unwrap().flatten().any(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("");
        state == "S" && wchan.contains("futex")
    });
    assert!(sleeping, "a thread sleeps in a futex wait");
    writer.try_write(b"wake up", 7).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap().payload, b"wake up");
}

#[test]
fn a_blocked_producer_wakes_when_space_frees() {
    let (writer, mut reader) = split(1024, "default");
    let frame = payload(2, 200);
    for lsn in 1..=4 {
        writer.try_write(&frame, lsn).unwrap();
    }
    let consumer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        reader.try_next().unwrap();
        reader.ack(1);
        reader
    });
    let started = std::time::Instant::now();
    let mut outcome = Written::Full;
    while outcome == Written::Full && started.elapsed() < Duration::from_secs(20) {
        outcome = writer.write(&frame, 5, Duration::from_secs(10)).unwrap();
    }
    assert!(matches!(outcome, Written::Done { .. }));
    consumer.join().unwrap();
}

#[test]
fn opening_rejects_what_is_not_a_ring() {
    let geometry = Geometry::new(1024);
    let region = Region::heap(geometry.file_len());
    assert!(matches!(Ring::open(region), Err(RingError::NotARing)));
    assert!(matches!(Ring::open(Region::heap(100)), Err(RingError::Geometry(_))));
}

#[test]
fn route_paths_are_safe_file_names() {
    let p = file::route_path(std::path::Path::new("/dev/shm/pgcdc"), "app", "cdc", "public.users");
    assert_eq!(p, std::path::Path::new("/dev/shm/pgcdc/app/cdc/public.users.ring"));
    let p = file::route_path(std::path::Path::new("/r"), "my db", "s", "My Schema.Odd/Name ü");
    assert_eq!(p, std::path::Path::new("/r/my%20db/s/My%20Schema.Odd%2FName%20%C3%BC.ring"));
    let p = file::route_path(std::path::Path::new("/r"), "..", ".", "x");
    assert_eq!(p, std::path::Path::new("/r/%2E./%2E/x.ring"));
}

#[test]
fn groups_by_name() {
    assert_eq!(file::group_id("root").unwrap(), 0);
    assert!(file::group_id("no-such-group-pgcdc").is_err());
}

#[test]
fn concurrent_creators_share_one_ring() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("r.ring");
    let rings: Vec<Ring> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..8).map(|_| scope.spawn(|| file::open_or_create(&path, Geometry::new(4096), None).unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let writer = RingWriter::new(rings[0].clone());
    writer.try_write(b"one", 1).unwrap();
    for ring in &rings {
        let mut reader = RingReader::attach(ring.clone(), "default").unwrap();
        assert_eq!(reader.try_next().unwrap().unwrap().payload, b"one", "every creator maps the same file");
    }
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary files left behind");
}

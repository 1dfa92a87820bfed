use super::layout::*;
use super::*;
use crate::position::Position;
use std::time::Duration;

/// A ring in plain memory with `consumers` registered, and its writer.
fn ring(capacity: u64, consumers: &[&str]) -> (RingWriter, Ring) {
    let geometry = Geometry::new(capacity);
    let names: Vec<Consumer> = consumers.iter().map(|c| Consumer::named(c)).collect();
    let ring = Ring::create(Region::heap(geometry.file_len()), geometry, &Identity::default(), &names).unwrap();
    (RingWriter::new(ring.clone()), ring)
}

/// A writer and the reader of consumer `default`.
fn split(capacity: u64) -> (RingWriter, RingReader) {
    let (writer, ring) = ring(capacity, &["default"]);
    (writer, RingReader::attach(ring, "default").unwrap())
}

/// Metadata of a frame holding the rows `first..=last` of transaction
/// `commit` (which it ends).
fn meta(commit: u64, first: u64, last: u64) -> FrameMeta {
    FrameMeta {
        rows: (last - first + 1) as u32,
        first: Position::new(commit, first),
        last: Position::new(commit, last),
        ends_transaction: true,
    }
}

fn write(writer: &RingWriter, payload: &[u8], commit: u64) -> Written {
    writer.try_write(KIND_BATCH, payload, &meta(commit, 1, 1)).unwrap()
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

/// Acknowledges every row of the frame.
fn ack(reader: &mut RingReader, frame: &Frame) {
    reader.ack_through(frame.meta.last, frame.meta.last.commit_lsn);
}

#[test]
fn frames_round_trip_in_order_and_wrap_with_padding() {
    let (writer, mut reader) = split(1024);
    let mut seen = Vec::new();
    for i in 0..40u32 {
        let p = payload(i, 100 + (i as usize * 7) % 150);
        loop {
            match write(&writer, &p, 1000 + u64::from(i)) {
                Written::Done { end_pos } => {
                    assert_eq!(end_pos % FRAME_ALIGN, 0);
                    break;
                }
                Written::Full => {
                    // Drain and acknowledge to make room.
                    while let Some(frame) = reader.try_next().unwrap() {
                        ack(&mut reader, &frame);
                        seen.push(frame);
                    }
                }
            }
        }
    }
    while let Some(frame) = reader.try_next().unwrap() {
        seen.push(frame);
    }
    assert_eq!(seen.len(), 40);
    for (i, frame) in seen.iter().enumerate() {
        assert_eq!(frame.payload, payload(i as u32, 100 + (i * 7) % 150));
        assert_eq!(frame.meta, meta(1000 + i as u64, 1, 1));
    }
    let status = writer.ring().status();
    assert!(status.write_pos > 4 * 1024, "the ring wrapped several times");
    assert_eq!(status.last_commit_lsn, 1039);
}

#[test]
fn a_full_ring_refuses_until_the_slowest_consumer_acknowledges() {
    let (writer, ring) = ring(1024, &["fast", "slow"]);
    let mut fast = RingReader::attach(ring.clone(), "fast").unwrap();
    let mut slow = RingReader::attach(ring, "slow").unwrap();
    let frame = payload(1, 200); // 256 bytes with its header: four fit
    for lsn in 1..=4 {
        assert!(matches!(write(&writer, &frame, lsn), Written::Done { .. }));
    }
    assert_eq!(write(&writer, &frame, 5), Written::Full);
    while let Some(f) = fast.try_next().unwrap() {
        ack(&mut fast, &f);
    }
    assert_eq!(write(&writer, &frame, 5), Written::Full, "the slow consumer still holds every frame");
    let first = slow.try_next().unwrap().unwrap();
    assert_eq!(first.meta.last.commit_lsn, 1);
    assert_eq!(slow.try_next().unwrap().unwrap().meta.last.commit_lsn, 2);
    ack(&mut slow, &first);
    assert!(matches!(write(&writer, &frame, 5), Written::Done { .. }), "one frame freed");
    assert_eq!(write(&writer, &frame, 6), Written::Full);
    // A consumer that unregisters holds nothing back.
    assert!(slow.ring().unregister("slow"));
    assert!(matches!(write(&writer, &frame, 6), Written::Done { .. }));
}

#[test]
fn acknowledging_a_row_frees_the_frames_it_completes() {
    let (writer, mut reader) = split(4096);
    // Transaction 10 in two frames (rows 1-3, 4-5), then transaction 20.
    let frames = [(10, 1, 3), (10, 4, 5), (20, 1, 2)];
    for (commit, first, last) in frames {
        writer.try_write(KIND_BATCH, &payload(0, 10), &meta(commit, first, last)).unwrap();
    }
    for _ in 0..3 {
        reader.try_next().unwrap().unwrap();
    }
    reader.ack_through(Position::new(10, 4), 0);
    let consumer = writer.ring().status().consumers[0].clone();
    assert_eq!(consumer.ack_pos, 64, "the first frame is done; the second still has row 5");
    assert_eq!(consumer.acked, Position::new(10, 4));
    assert_eq!(consumer.ack_lsn, 0);
    reader.ack_through(Position::new(20, 2), 20);
    reader.ack_through(Position::new(10, 1), 5);
    let consumer = writer.ring().status().consumers[0].clone();
    assert_eq!((consumer.ack_pos, consumer.acked, consumer.ack_lsn), (192, Position::new(20, 2), 20), "never back");
}

#[test]
fn frames_of_rows_already_acknowledged_are_released_as_they_are_read() {
    let (writer, mut reader) = split(1024);
    let frame = payload(3, 200);
    for commit in 1..=4 {
        write(&writer, &frame, commit);
        let f = reader.try_next().unwrap().unwrap();
        ack(&mut reader, &f);
    }
    // The worker restarts from an older slot position and sends commits
    // 1..4 again, then new ones: far more than the ring holds, with no
    // acknowledgement from the application, which receives nothing new.
    for round in 0..5 {
        for commit in 1..=4 {
            loop {
                if let Written::Done { .. } = write(&writer, &frame, commit) {
                    break;
                }
                assert!(reader.try_next().unwrap().is_some(), "round {round}: the reader has frames to release");
            }
        }
    }
    while reader.try_next().unwrap().is_some() {}
    let status = writer.ring().status();
    assert_eq!(status.consumers[0].ack_pos, status.write_pos, "every resent frame released");
    assert!(matches!(write(&writer, &frame, 5), Written::Done { .. }));
}

#[test]
fn a_frame_up_to_half_the_ring_always_fits_and_a_larger_one_is_refused() {
    let (writer, mut reader) = split(1024);
    assert_eq!(writer.ring().geometry().max_frame(), 512);
    // Leave the write position in the middle of the area.
    write(&writer, &payload(0, 300), 1);
    let f = reader.try_next().unwrap().unwrap();
    ack(&mut reader, &f);
    let half = payload(1, 512 - FRAME_HEADER as usize);
    for commit in 2..20 {
        let mut tries = 0;
        while write(&writer, &half, commit) == Written::Full {
            tries += 1;
            assert!(tries < 3, "a drained ring takes a half-ring frame after at most a padding frame");
            while let Some(f) = reader.try_next().unwrap() {
                ack(&mut reader, &f);
            }
        }
        let f = reader.try_next().unwrap().unwrap();
        assert_eq!(f.payload, half);
        ack(&mut reader, &f);
    }
    let more = payload(2, 512 - FRAME_HEADER as usize + 1);
    assert!(matches!(writer.try_write(KIND_BATCH, &more, &meta(30, 1, 1)), Err(RingError::TooLarge { .. })));
}

#[test]
fn a_consumer_registered_now_starts_after_the_last_transaction() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("r.ring");
    let consumers = vec![Consumer::named("default")];
    let ring = file::open_or_create(&path, Geometry::new(4096), &Identity::default(), &consumers, None).unwrap();
    let writer = RingWriter::new(ring);
    let mut reader = RingReader::attach(file::open(&path).unwrap(), "default").unwrap();
    for lsn in 1..=5 {
        write(&writer, &payload(lsn as u32, 30), lsn);
    }
    let frames: Vec<Frame> = (0..4).map(|_| reader.try_next().unwrap().unwrap()).collect();
    ack(&mut reader, &frames[1]);
    drop(reader); // a crash: no goodbye
    let mut again = RingReader::attach(file::open(&path).unwrap(), "default").unwrap();
    assert_eq!((again.acknowledged(), again.acknowledged_lsn()), (Position::new(2, 1), 2));
    let lsns: Vec<u64> = std::iter::from_fn(|| again.try_next().unwrap()).map(|f| f.meta.last.commit_lsn).collect();
    assert_eq!(lsns, [3, 4, 5]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // Attaching needs a registration; one made now starts at the end.
    let ring = file::open_own(&path).unwrap();
    assert!(matches!(RingReader::attach(ring.clone(), "late"), Err(RingError::NotRegistered(_))));
    ring.register(&"late".into(), Start::Now).unwrap();
    let mut late = RingReader::attach(ring, "late").unwrap();
    assert_eq!(late.acknowledged(), Position::end_of(5));
    assert_eq!(late.try_next().unwrap(), None);
    write(&writer, &payload(9, 9), 9);
    assert_eq!(late.try_next().unwrap().unwrap().meta.last.commit_lsn, 9);
    assert_eq!(writer.ring().consumers(), ["default", "late"]);
}

#[test]
fn names_are_checked_slots_run_out_and_a_live_holder_keeps_its_name() {
    let (writer, ring) = ring(1024, &["default"]);
    assert!(matches!(ring.register(&"".into(), Start::Now), Err(RingError::BadName(0))));
    assert!(matches!(ring.register(&Consumer::named(&"x".repeat(65)), Start::Now), Err(RingError::BadName(65))));
    assert!(matches!(ring.register(&"new\nline".into(), Start::Now), Err(RingError::BadName(8))));
    for i in 1..16 {
        ring.register(&Consumer::named(&format!("c{i}")), Start::Now).unwrap();
    }
    ring.register(&"c1".into(), Start::Now).unwrap(); // already registered: fine
    assert!(matches!(ring.register(&"one too many".into(), Start::Now), Err(RingError::NoFreeSlot(16))));
    // A consumer held by another live process (pid 1) is refused.
    let state = ring.acks.open("c1", ring.incarnation(), acks::State::default(), None).unwrap();
    state.set(acks::State { pid: 1, ..state.get() });
    assert!(matches!(RingReader::attach(writer.ring().clone(), "c1"), Err(RingError::InUse { pid: 1, .. })));
}

#[test]
fn racing_registrations_of_one_name_end_with_one_and_a_dead_holder_loses_the_lock() {
    let (_writer, ring) = ring(1024, &[]);
    // A process that died holding the registration lock does not block.
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    ring.region.u32_at(OFF_REGISTRATION_LOCK).store(dead, std::sync::atomic::Ordering::Release);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for n in 0..10 {
                    ring.register(&Consumer::named(&format!("name{n}")), Start::Now).unwrap();
                }
            });
        }
    });
    let names = ring.consumers();
    assert_eq!(names.len(), 10, "one registration per name: {names:?}");
}

#[test]
fn an_impossible_consumer_position_holds_nothing_back_and_is_reported() {
    let (writer, ring) = ring(1024, &["good", "broken"]);
    let mut good = RingReader::attach(ring.clone(), "good").unwrap();
    // An acknowledged position past the write position: corrupt or hostile.
    let broken = ring.acks.open("broken", ring.incarnation(), acks::State::default(), None).unwrap();
    broken.set(acks::State { ack_pos: 1 << 40, ..broken.get() });
    for commit in 1..=20 {
        while write(&writer, &payload(0, 200), commit) == Written::Full {
            let f = good.try_next().unwrap().unwrap();
            ack(&mut good, &f);
        }
    }
    let status = ring.status();
    let invalid: Vec<&str> = status.invalid_consumers().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(invalid, ["broken"]);
    assert!(matches!(RingReader::attach(ring, "broken").unwrap().try_next(), Err(RingError::Corrupt { .. })));
}

#[test]
fn crafted_positions_and_padding_give_errors_quickly() {
    let (writer, mut reader) = split(1024);
    write(&writer, &payload(0, 10), 1);
    reader.try_next().unwrap().unwrap();
    // A write position far beyond the ring.
    let r = &writer.ring().region;
    r.u64_at(OFF_WRITE_POS).store(u64::MAX - 63, std::sync::atomic::Ordering::Release);
    assert!(matches!(reader.try_next(), Err(RingError::Corrupt { .. })));
    // Padding frames at offset 0, over and over.
    let (writer, mut reader) = split(1024);
    let r = &writer.ring().region;
    let data = writer.ring().data_offset();
    let mut h = [0u8; FRAME_HEADER as usize];
    h[0..4].copy_from_slice(&((1024 - FRAME_HEADER) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&KIND_PADDING.to_le_bytes());
    r.write(data, &h);
    r.u64_at(OFF_WRITE_POS).store(1024 * 1000, std::sync::atomic::Ordering::Release);
    assert!(matches!(reader.try_next(), Err(RingError::Corrupt { .. })));
    // A frame claiming rows it has no positions for.
    let (writer, mut reader) = split(1024);
    let bad = FrameMeta { rows: 0, ..meta(5, 1, 1) };
    writer.try_write(KIND_BATCH, b"x", &bad).unwrap();
    assert!(matches!(reader.try_next(), Err(RingError::Corrupt { .. })));
}

#[test]
fn schema_area_status_and_complete_position() {
    let (writer, reader) = split(1024);
    assert_eq!(reader.ring().schema(), None);
    writer.publish_schema(b"schema v1").unwrap();
    assert_eq!(reader.ring().schema().as_deref(), Some(&b"schema v1"[..]));
    writer.publish_schema(b"v2").unwrap();
    assert_eq!(reader.ring().schema().as_deref(), Some(&b"v2"[..]));
    assert!(matches!(writer.publish_schema(&vec![0; 70_000]), Err(RingError::SchemaTooLarge { .. })));
    assert_eq!(reader.complete(), (0, 0));
    writer.complete_through(100, 90);
    writer.complete_through(100, 80);
    assert_eq!(reader.complete(), (100, 90), "never backwards");
    writer.complete_through(100, u64::MAX);
    assert_eq!(reader.complete(), (100, u64::MAX));
    let status = reader.ring().status();
    assert_eq!(status.producer_pid, std::process::id());
    assert_eq!(status.consumers[0].name, "default");
    assert!(status.consumers[0].alive);
}

#[test]
fn a_waiting_consumer_sleeps_and_wakes_on_a_write() {
    let (writer, mut reader) = split(4096);
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
    write(&writer, b"wake up", 7);
    assert_eq!(waiter.join().unwrap().unwrap().payload, b"wake up");
}

#[test]
fn a_blocked_producer_wakes_when_space_frees() {
    let (writer, mut reader) = split(1024);
    let frame = payload(2, 200);
    for lsn in 1..=4 {
        write(&writer, &frame, lsn);
    }
    let consumer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let f = reader.try_next().unwrap().unwrap();
        ack(&mut reader, &f);
        reader
    });
    let started = std::time::Instant::now();
    let mut outcome = Written::Full;
    while outcome == Written::Full && started.elapsed() < Duration::from_secs(20) {
        outcome = writer.write(KIND_BATCH, &frame, &meta(5, 1, 1), Duration::from_secs(10)).unwrap();
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
fn ring_paths_are_numbers() {
    let stream = file::stream_dir(std::path::Path::new("/dev/shm/pgcdc"), 7_312_345_678, 16384, "cdc");
    assert_eq!(stream, std::path::Path::new("/dev/shm/pgcdc/7312345678/16384/cdc"));
    let table = file::RingKey::Table { relation: 16390, partition: 0, partitions: 1 };
    assert_eq!(table.file_name(), "16390.ring");
    assert_eq!(file::RingKey::Table { relation: 16390, partition: 2, partitions: 4 }.file_name(), "16390-2.ring");
    assert_eq!(file::RingKey::Merged.file_name(), "merged.ring");
    let odd = file::stream_dir(std::path::Path::new("/r"), 1, 2, "../x");
    assert_eq!(odd, std::path::Path::new("/r/1/2/%2E.%2Fx"));
}

#[test]
fn groups_by_name() {
    assert_eq!(file::group_id("root").unwrap(), 0);
    assert!(file::group_id("no-such-group-pgcdc").is_err());
}

#[test]
fn concurrent_creators_share_one_ring_and_the_registry_serializes() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("r.ring");
    let consumers = vec![Consumer::named("default")];
    let rings: Vec<Ring> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    file::open_or_create(&path, Geometry::new(4096), &Identity::default(), &consumers, None).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let writer = RingWriter::new(rings[0].clone());
    write(&writer, b"one", 1);
    for ring in &rings {
        let mut reader = RingReader::attach(ring.clone(), "default").unwrap();
        assert_eq!(reader.try_next().unwrap().unwrap().payload, b"one", "every creator maps the same file");
    }
    assert_eq!(file::rings_in(dir.path()).unwrap(), std::slice::from_ref(&path), "no temporary files left behind");

    let mut registry = file::Registry::lock(dir.path(), None).unwrap();
    assert!(registry.consumers().unwrap().is_empty());
    registry.set(&["a".into(), "b".into()]).unwrap();
    registry.set(&[Consumer { name: "a".into(), owner: Some(1001) }]).unwrap();
    assert_eq!(registry.consumers().unwrap(), [Consumer { name: "a".into(), owner: Some(1001) }]);
    let waiter = std::thread::spawn({
        let dir = dir.path().to_owned();
        move || file::Registry::lock(&dir, None).unwrap().consumers().unwrap()
    });
    std::thread::sleep(Duration::from_millis(100));
    registry.set(&["a".into(), "c".into()]).unwrap();
    drop(registry);
    assert_eq!(
        waiter.join().unwrap(),
        [Consumer::named("a"), Consumer::named("c")],
        "the second lock waited for the first"
    );
}

#[test]
fn a_ring_cut_short_under_a_guarded_mapping_is_damaged_not_a_crash() {
    guard_against_truncation();
    let dir = tempdir::Dir::new();
    let path = dir.path().join("r.ring");
    let consumers = vec![Consumer::named("default")];
    let writer = RingWriter::new(
        file::open_or_create(&path, Geometry::new(64 * 1024), &Identity::default(), &consumers, None).unwrap(),
    );
    write(&writer, &payload(1, 100), 1);
    assert!(!writer.ring().is_damaged());
    // Another process (here: this one) truncates the file.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    // Without the guard, this access is a SIGBUS.
    let status = writer.ring().status();
    assert!(writer.ring().is_damaged(), "the mapping knows");
    assert_eq!(status.write_pos, 0, "and reads zeros");
    assert!(file::open(&path).is_err(), "the file itself is no ring any more");
}

#[test]
fn ring_keys_read_back_from_file_names() {
    for key in [
        file::RingKey::Merged,
        file::RingKey::Table { relation: 16390, partition: 0, partitions: 1 },
        file::RingKey::Table { relation: 16390, partition: 3, partitions: 4 },
    ] {
        let partitions = match key {
            file::RingKey::Table { partitions, .. } => partitions,
            file::RingKey::Merged => 1,
        };
        assert_eq!(file::RingKey::from_file_name(&key.file_name(), partitions), Some(key));
    }
    assert_eq!(file::RingKey::from_file_name("16390-1.ring", 1), None, "not a name of this stream's shape");
    assert_eq!(file::RingKey::from_file_name("x.ring", 1), None);
}

#[test]
fn private_files_are_whole_and_only_the_writers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir::Dir::new();
    let path = dir.path().join("7.0.1.chunk");
    file::write_private(&path, b"first", false).unwrap();
    file::write_private(&path, b"second, longer", true).unwrap();
    assert_eq!(file::read_private(&path).unwrap(), b"second, longer");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!dir.path().join("7.0.1.chunk.tmp").exists());
    // Readable by others: maybe not the server's own.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(file::read_private(&path), Err(RingError::Unsafe { .. })));
    let link = dir.path().join("link.chunk");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(file::read_private(&link).is_err(), "a symbolic link is not followed");
}

#[test]
fn the_last_reader_dropped_gives_its_consumer_up_to_other_processes() {
    let (writer, ring) = ring(1024, &["default"]);
    let holder = || ring.status().consumers[0].pid;
    let first = RingReader::attach(writer.ring().clone(), "default").unwrap();
    let second = RingReader::attach(ring.clone(), "default").unwrap();
    assert_eq!(holder(), std::process::id());
    drop(first);
    assert_eq!(holder(), std::process::id(), "another reader of this process still holds it");
    drop(second);
    assert_eq!(holder(), 0, "free for another process");
    // Another process now holding it keeps it when an old claim here ends.
    let third = RingReader::attach(ring.clone(), "default").unwrap();
    let state = ring.acks.open("default", ring.incarnation(), acks::State::default(), None).unwrap();
    state.set(acks::State { pid: 1, ..state.get() });
    drop(third);
    assert_eq!(holder(), 1);
}

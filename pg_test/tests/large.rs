//! A ten-million-row transaction streams in messages of bounded size, with
//! bounded memory in the decoding process.
//!
//! Streamed over the replication protocol (pg_recvlogical), as consumers do:
//! the SQL functions `pg_logical_slot_get_*changes` keep a copy of every
//! message in the calling query's memory until they return, whatever the
//! plugin (test_decoding too), so they cannot show the plugin's bound.

use pg_test::{for_each_stream, Cluster, Settings};
use pgcdc_reader::contract;
use std::cell::Cell;
use std::io::{BufReader, Read};
use std::rc::Rc;
use std::time::Duration;

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

const ROWS: i64 = 10_000_000;
const BATCH_BYTES: usize = 1 << 20;

/// Peak resident memory of a process, from /proc (the test runs on the
/// database host).
fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn ten_million_rows_in_one_transaction_stream_in_bounded_messages_and_memory() {
    let cluster =
        Cluster::start_with(Settings::default().with("shared_buffers", "'32MB'").with("max_wal_size", "'4GB'"));
    let mut client = cluster.database_with_pgcdc("large");
    client.batch_execute("CREATE TABLE big (id int8, n int4, s text)").unwrap();
    pg_test::create_slot(&mut client, "s");
    client
        .batch_execute(&format!("INSERT INTO big SELECT g, g % 1000, 'row ' || g FROM generate_series(1, {ROWS}) g"))
        .unwrap();
    let end: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);

    let out = cluster.socket_dir().join("big.arrows");
    let conninfo = cluster.conninfo("large");
    let args = [
        "-d".to_owned(),
        conninfo,
        "--slot".into(),
        "s".into(),
        "--start".into(),
        "--no-loop".into(),
        "--endpos".into(),
        end,
        "-o".into(),
        format!("batch_bytes={BATCH_BYTES}"),
        "-f".into(),
        out.to_str().unwrap().to_owned(),
    ];
    let bindir = pg_test::bindir();
    let mut receiver = std::process::Command::new(bindir.join("pg_recvlogical")).args(&args).spawn().unwrap();
    // Watch the walsender that decodes for pg_recvlogical until it is done.
    let mut walsender = None;
    let mut peak_kib = 0;
    while receiver.try_wait().unwrap().is_none() {
        if walsender.is_none() {
            walsender = client
                .query_opt("SELECT pid FROM pg_stat_replication WHERE application_name = 'pg_recvlogical'", &[])
                .unwrap()
                .map(|r| r.get::<_, i32>(0));
        }
        if let Some(kib) = walsender.and_then(peak_rss_kib) {
            peak_kib = kib;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(receiver.wait().unwrap().success());
    assert!(walsender.is_some() && peak_kib > 0, "the walsender was observed");

    let (mut rows, mut next_id, mut largest, mut last_end) = (0i64, 1i64, 0u64, 0u64);
    let read = Rc::new(Cell::new(0u64));
    let file = Counting { inner: BufReader::new(std::fs::File::open(&out).unwrap()), read: read.clone() };
    let messages = for_each_stream(file, Some(b'\n'), |batches| {
        largest = largest.max(read.get() - last_end);
        last_end = read.get() + 1; // the newline after the message
        for batch in batches {
            assert_eq!(batch.schema().metadata()[contract::META_TABLE], "big");
            for id in pg_test::values::ints(&batch, "id") {
                assert_eq!(id, Some(next_id), "every row once, in order");
                next_id += 1;
            }
            rows += batch.num_rows() as i64;
        }
    });
    assert_eq!(rows, ROWS);
    assert!(messages > 100, "{messages} messages");
    let file_len = std::fs::metadata(&out).unwrap().len() as usize;
    // A message exceeds batch_bytes by at most one row and its schema.
    assert!(largest as usize <= BATCH_BYTES + 16 * 1024, "largest message {largest} bytes");
    // About 700 MB of Arrow went through; the reorder buffer spills past
    // logical_decoding_work_mem (64 MB) and the plugin holds one batch.
    eprintln!("walsender peak RSS {} MiB for {} MB of output", peak_kib / 1024, file_len / 1_000_000);
    assert!(peak_kib < 256 * 1024, "walsender peak RSS {} MiB", peak_kib / 1024);
}

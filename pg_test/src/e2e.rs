//! Helpers the end-to-end tests share: waiting for a condition, reading a
//! slot's position, configuring a stream, killing processes.

use crate::parse_lsn;
use arrow_array::RecordBatch;
use pgcdc_reader::ChangeReader;
use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` until it holds, panicking after [`WAIT`].
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a `cdc_auto_configure` query; returns `(route, ring path)` per row.
pub fn configure(client: &mut Client, sql: &str) -> Vec<(String, PathBuf)> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| {
            panic!("{sql}: {}", e.as_db_error().map_or(e.to_string(), |d| format!("{}: {:?}", d.message(), d.hint())))
        })
        .iter()
        .map(|r| (r.get::<_, String>("route"), PathBuf::from(r.get::<_, String>("ring_path"))))
        .collect()
}

/// The slot's `confirmed_flush_lsn` (0 when the slot is missing).
pub fn confirmed(client: &mut Client, slot: &str) -> u64 {
    let row = client
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .unwrap();
    row.and_then(|r| r.get::<_, Option<String>>(0)).map_or(0, |t| parse_lsn(&t))
}

/// The server's current WAL insert position.
pub fn current_lsn(client: &mut Client) -> u64 {
    parse_lsn(&client.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get::<_, String>(0))
}

/// Connects, retrying while the server restarts.
pub fn reconnect(conninfo: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect(conninfo, NoTls) {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    }
}

/// SIGKILLs a process.
pub fn sigkill(pid: i32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

/// Makes the server crash-restart: SIGKILLs a client backend other than
/// `client`'s own, then reconnects.
pub fn crash_server(client: &mut Client, conninfo: &str) -> Client {
    let victim = reconnect(conninfo);
    let pid: i32 = client
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    sigkill(pid);
    drop(victim);
    std::thread::sleep(Duration::from_millis(500));
    reconnect(conninfo)
}

/// The pid of the stream's worker, if one runs.
pub fn worker_pid(client: &mut Client, slot: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgcdc worker' AND application_name = $1",
            &[&format!("pgcdc {slot}")],
        )
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Reads batches until `done` says so or nothing arrives for `quiet`.
pub fn read_until(
    next: &mut dyn FnMut(Duration) -> Option<RecordBatch>,
    quiet: Duration,
    mut done: impl FnMut(&[RecordBatch]) -> bool,
) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !done(&batches) && Instant::now() < deadline {
        match next(quiet) {
            Some(batch) => batches.push(batch),
            None => break,
        }
    }
    batches
}

/// Every row of `batches`: their count.
pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// The integer column `name` of every batch, concatenated.
pub fn all_ints(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    batches.iter().flat_map(|b| crate::values::ints(b, name)).map(|v| v.expect("not null")).collect()
}

/// Reads a route's batches with the README's pattern (acknowledge each
/// batch's highest commit LSN once processed) until `count` rows came or
/// nothing arrived for `quiet`.
pub fn consume_acking(reader: &mut ChangeReader, count: usize, quiet: Duration) -> Vec<RecordBatch> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while row_count(&batches) < count && Instant::now() < deadline {
        match reader.next_batch(quiet).expect("read the ring") {
            Some(batch) => {
                reader.ack(pgcdc_reader::changes::max_commit_lsn(&batch).expect("every batch has a commit LSN"));
                batches.push(batch);
            }
            None => break,
        }
    }
    batches
}

/// The `pgcdc` command line program, built by `cargo test --workspace`.
pub fn cli() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let cli = exe.parent().unwrap().parent().unwrap().join("pgcdc");
    assert!(cli.exists(), "{} is built by `cargo test --workspace` (the reader crate's `cli` feature)", cli.display());
    cli
}

/// Asserts that `ids` is exactly `expected`, reporting the first difference
/// (not thousands of numbers) when it is not.
pub fn assert_ids(ids: &[i64], expected: impl IntoIterator<Item = i64>, what: &str) {
    let expected: Vec<i64> = expected.into_iter().collect();
    if ids == expected.as_slice() {
        return;
    }
    let at = ids.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(ids.len().min(expected.len()));
    let window = |v: &[i64]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
    panic!(
        "{what}: {} ids where {} were expected; first difference at index {at}: got {:?}, expected {:?}",
        ids.len(),
        expected.len(),
        window(ids),
        window(&expected)
    );
}

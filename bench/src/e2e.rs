//! End to end: from commit into RecordBatches in a reader process, beside
//! pg_recvlogical with wal2json on the same WAL; then commit-to-reader
//! latency at a fixed rate (`latency`) and the HashPartitioner.
//!
//! Commits are synchronous (the cluster runs with fsync off, so that is
//! cheap): decoding follows the flushed WAL, and with asynchronous commit
//! the WAL writer's 200 ms delay would dominate the latency.

use crate::env_usize;
use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use pgcdc_reader::HashPartitioner;
use postgres::Client;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn ring_of(client: &mut Client, slot: &str) -> PathBuf {
    let row = client
        .query_one(&format!("SELECT ring_path FROM cdc_auto_configure('public.narrow', slot_name => '{slot}')"), &[])
        .unwrap();
    PathBuf::from(row.get::<_, String>(0))
}

fn stop_worker(client: &mut Client) {
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE backend_type = 'pgcdc worker'",
        )
        .unwrap();
}

pub fn run() {
    let rows = env_usize("BENCH_E2E_ROWS", 2_000_000);
    println!("\n## End to end\n\nStarting a private cluster…");
    let cluster = Cluster::start_with(
        Settings::default()
            .with("shared_buffers", "'512MB'")
            .with("max_wal_size", "'8GB'")
            .with("pgcdc.ring_size", "64"),
    );
    let mut client = cluster.database_with_pgcdc("e2e");
    client.batch_execute("CREATE TABLE narrow (id bigint PRIMARY KEY, v int)").unwrap();
    let ring = ring_of(&mut client, "e2e");
    let wal2json = crate::peer_slot(&mut client, "w2j", "wal2json");
    // The same WAL for the Python package, locally and over Flight (as a
    // user with a password, as a remote client logs in).
    for slot in ["e2e_py", "e2e_fl"] {
        ring_of(&mut client, slot);
    }
    client.batch_execute("CREATE ROLE reader LOGIN PASSWORD 'pw'; GRANT SELECT ON narrow TO reader").unwrap();
    cluster.require_password("reader");

    // Throughput: write the WAL with the worker stopped, then time the
    // worker and one reader draining it.
    stop_worker(&mut client);
    let mut start = 1;
    while start <= rows {
        let end = (start + 99_999).min(rows);
        client
            .batch_execute(&format!("INSERT INTO narrow SELECT g, g % 1000 FROM generate_series({start}, {end}) g"))
            .unwrap();
        start = end + 1;
    }
    let end_lsn: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let mut reader = ChangeReader::open(&ring, "default").unwrap();
    let started = Instant::now();
    ring_of(&mut client, "e2e"); // restarts the worker
    let mut received = 0;
    while received < rows {
        if let Some(batch) = reader.next_batch(Duration::from_secs(10)).unwrap() {
            received += batch.num_rows();
            reader.ack(max_commit_lsn(&batch).unwrap());
        } else {
            panic!("the reader stalled at {received} of {rows} rows");
        }
    }
    let ours = started.elapsed();
    println!(
        "\n| pipeline | changes | time | changes/s |\n|---|---:|---:|---:|\n| pgcdc worker → ring → RecordBatch reader | {rows} | {:.2} s | {:.0}k |",
        ours.as_secs_f64(),
        rows as f64 / ours.as_secs_f64() / 1e3,
    );
    if wal2json {
        let started = Instant::now();
        let recv = Command::new(pg_test::bindir().join("pg_recvlogical"))
            .args(["-d", &cluster.conninfo("e2e"), "--slot", "w2j", "--start", "--no-loop", "--endpos", &end_lsn])
            .args(["-f", "/dev/null"])
            .status()
            .unwrap();
        assert!(recv.success());
        let theirs = started.elapsed();
        println!(
            "| pg_recvlogical + wal2json → file | {rows} | {:.2} s | {:.0}k |",
            theirs.as_secs_f64(),
            rows as f64 / theirs.as_secs_f64() / 1e3,
        );
        println!(
            "\npgcdc: {:.1}× the changes/s of pg_recvlogical + wal2json (target: ≥ 1M changes/s on one core).",
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    python_readers(&cluster, &mut client, rows, ours);

    crate::latency::run(&cluster, &mut client, reader);
    partitioning();
}

/// The Python package draining the same WAL: from this host's ring, and
/// over Flight from `pgcdc serve` on loopback.
fn python_readers(cluster: &Cluster, client: &mut Client, rows: usize, rust: Duration) {
    let python = std::env::var("PGCDC_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/drain.py");
    let conninfo = cluster.conninfo("e2e");
    // `start` starts the stream's worker once the reader says it is ready:
    // the clock runs from there, as for the Rust reader.
    let drain = |args: &[&str], start: &mut dyn FnMut()| -> Option<Duration> {
        let mut child = Command::new(&python)
            .arg(script)
            .arg(rows.to_string())
            .arg(&conninfo)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut said = std::io::BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut said, &mut line).ok()?;
        if line.trim() == "ready" {
            start();
            std::io::Write::write_all(&mut child.stdin.take()?, b"go\n").ok()?;
            line.clear();
            std::io::BufRead::read_line(&mut said, &mut line).ok()?;
        }
        let out = child.wait_with_output().ok()?;
        if !out.status.success() {
            println!("(the Python reader failed: {})", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        line.trim().parse().ok().map(Duration::from_secs_f64)
    };
    // auto_configure starts the worker itself.
    let local = drain(&["e2e_py", "local"], &mut || {});
    let flight = Served::start(cluster).and_then(|served| {
        drain(&["e2e_fl", "flight", &served.location(), "reader", "pw"], &mut || {
            ring_of(client, "e2e_fl");
        })
    });
    // Their workers would decode the latency runs' WAL too.
    client.batch_execute("SELECT cdc_drop('e2e_py'); SELECT cdc_drop('e2e_fl')").unwrap();
    println!("\n| reader of the same WAL | time | changes/s | vs the Rust reader |\n|---|---:|---:|---:|");
    for (name, time) in
        [("Rust, local ring", Some(rust)), ("Python, local ring", local), ("Python, Flight on loopback", flight)]
    {
        match time {
            Some(t) => println!(
                "| {name} | {:.2} s | {:.0}k | {:.2}× |",
                t.as_secs_f64(),
                rows as f64 / t.as_secs_f64() / 1e3,
                rust.as_secs_f64() / t.as_secs_f64()
            ),
            None => println!("| {name} | – | – | – |"),
        }
    }
    println!("\nTargets: Python local ≥ 1M changes/s; Flight ≥ 0.8× the local reader's throughput.");
}

/// `pgcdc serve` on a free loopback port, killed when dropped.
pub struct Served(std::process::Child, u16);

impl Served {
    pub fn start(cluster: &Cluster) -> Option<Served> {
        let cli = std::env::current_exe().unwrap().with_file_name("pgcdc");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&cli)
            .args(["serve", "--conninfo", &format!("host={} dbname=e2e", cluster.socket_dir().display())])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| println!("(no Flight run: {} did not start: {e}; `make bench` builds it)", cli.display()))
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Served(child, port))
    }

    pub fn location(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.1)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HashPartitioner throughput on a batch of narrow rows.
fn partitioning() {
    use arrow_array::{Int64Array, RecordBatch};
    use std::sync::Arc;
    let n = 4_000_000i64;
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from_iter_values(0..n)) as _),
        ("v", Arc::new(Int64Array::from_iter_values((0..n).map(|i| i % 1000))) as _),
    ])
    .unwrap();
    let partitioner = HashPartitioner::new(&["id"], 8);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let parts = partitioner.partition(&batch).unwrap();
        best = best.min(started.elapsed().as_secs_f64());
        assert_eq!(parts.iter().map(RecordBatch::num_rows).sum::<usize>(), n as usize);
    }
    println!(
        "\nHashPartitioner: {n} rows by an int8 key into 8 partitions: {:.1}M rows/s (best of 5; target ≥ 10M rows/s).",
        n as f64 / best / 1e6
    );
}

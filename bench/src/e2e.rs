//! End to end: from commit into RecordBatches in a reader process, beside
//! pg_recvlogical with wal2json on the same WAL; commit-to-reader latency at
//! a fixed rate; and the HashPartitioner.
//!
//! Commits are synchronous (the cluster runs with fsync off, so that is
//! cheap): decoding follows the flushed WAL, and with asynchronous commit
//! the WAL writer's 200 ms delay would dominate the latency.

use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use pgcdc_reader::HashPartitioner;
use postgres::{Client, NoTls};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ring_of(client: &mut Client, slot: &str) -> PathBuf {
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
    client.query("SELECT pg_create_logical_replication_slot('w2j', 'wal2json')", &[]).unwrap();
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
    let started = Instant::now();
    let recv = Command::new(pg_test::bindir().join("pg_recvlogical"))
        .args([
            "-d",
            &cluster.conninfo("e2e"),
            "--slot",
            "w2j",
            "--start",
            "--no-loop",
            "--endpos",
            &end_lsn,
            "-f",
            "/dev/null",
        ])
        .status()
        .unwrap();
    assert!(recv.success());
    let theirs = started.elapsed();
    println!(
        "\n| pipeline | changes | time | changes/s |\n|---|---:|---:|---:|\n| pgcdc worker → ring → RecordBatch reader | {rows} | {:.2} s | {:.0}k |\n| pg_recvlogical + wal2json → file | {rows} | {:.2} s | {:.0}k |",
        ours.as_secs_f64(),
        rows as f64 / ours.as_secs_f64() / 1e3,
        theirs.as_secs_f64(),
        rows as f64 / theirs.as_secs_f64() / 1e3,
    );
    println!(
        "\npgcdc: {:.1}× the changes/s of pg_recvlogical + wal2json (target: ≥ 1M changes/s on one core).",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    python_readers(&cluster, &mut client, rows, ours);

    latency(&cluster, &mut client, reader);
    // Its worker would decode the Flight run's WAL too.
    client.batch_execute("SELECT cdc_drop('e2e')").unwrap();
    flight_latency(&cluster, &mut client);
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
struct Served(std::process::Child, u16);

impl Served {
    fn start(cluster: &Cluster) -> Option<Served> {
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

    fn location(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.1)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Commit-to-batch latency of the Python package over Flight, at the rate
/// of [`latency`], on a stream of its own.
fn flight_latency(cluster: &Cluster, client: &mut Client) {
    let rate = env_usize("BENCH_RATE", 10_000);
    let seconds = env_usize("BENCH_LATENCY_SECONDS", 5);
    let writers = env_usize("BENCH_WRITERS", 4);
    client.batch_execute("TRUNCATE narrow").unwrap();
    ring_of(client, "e2e_lat");
    let Some(served) = Served::start(cluster) else { return };
    let python = std::env::var("PGCDC_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut measuring = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/latency.py"))
        .args([served.location().as_str(), "reader", "pw", "e2e_lat", "public.narrow"])
        .arg((seconds + 1).to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(measuring.stdout.take().unwrap()));
    if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
        println!("\n(the Flight latency client did not start)");
        let _ = measuring.kill();
        let _ = measuring.wait();
        return;
    }
    let running = Arc::new(AtomicBool::new(true));
    let handles = paced_writers(cluster, writers, rate, &running);
    std::thread::sleep(Duration::from_secs(seconds as u64));
    running.store(false, Ordering::Relaxed);
    let committed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let result = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = measuring.wait();
    let f: Vec<&str> = result.split(' ').collect();
    match f[..] {
        [p50, p99, max, rows] => println!(
            "\nLatency from commit to a batch in a Python Flight client (pgcdc serve on loopback), {writers} writers \
             at {rate} transactions/s target ({:.0} achieved), {rows} rows: p50 {p50} ms, p99 {p99} ms, max {max} ms \
             (target p99 < 10 ms).",
            committed as f64 / seconds as f64
        ),
        _ => println!("\n(the Flight latency client failed: {result:?})"),
    }
}

/// Commit-to-reader latency at a fixed transaction rate.
fn latency(cluster: &Cluster, client: &mut Client, mut reader: ChangeReader) {
    let rate = env_usize("BENCH_RATE", 10_000);
    let seconds = env_usize("BENCH_LATENCY_SECONDS", 5);
    let writers = env_usize("BENCH_WRITERS", 4);
    client.batch_execute("TRUNCATE narrow").unwrap();
    // Drain the truncate.
    while let Some(batch) = reader.next_batch(Duration::from_millis(500)).unwrap() {
        reader.ack(max_commit_lsn(&batch).unwrap());
    }
    let running = Arc::new(AtomicBool::new(true));
    let handles = paced_writers(cluster, writers, rate, &running);
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    while Instant::now() < deadline {
        if let Some(batch) = reader.next_batch(Duration::from_millis(100)).unwrap() {
            let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
            let commits = batch
                .column_by_name("_commit_ts")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            latencies.extend(commits.values().iter().map(|c| (now_us - c) as f64 / 1000.0));
            reader.ack(max_commit_lsn(&batch).unwrap());
        }
    }
    running.store(false, Ordering::Relaxed);
    let committed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "\nLatency from commit to a RecordBatch in the reader, {writers} writers at {rate} transactions/s target \
         ({:.0} achieved), {} rows: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 5 ms).",
        committed as f64 / seconds as f64,
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
}

/// `writers` threads committing single-row inserts into `narrow` at `rate`
/// transactions per second in all, until `running` turns false; each
/// returns how many it committed. Returns once every writer is connected
/// and has started: starting four backends at once stalled the first
/// rows' readers for up to 300 ms, which is no latency of the stream.
fn paced_writers(
    cluster: &Cluster,
    writers: usize,
    rate: usize,
    running: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    let connected = Arc::new(std::sync::Barrier::new(writers + 1));
    let handles = (0..writers)
        .map(|w| {
            let conninfo = cluster.conninfo("e2e");
            let running = running.clone();
            let connected = connected.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(&conninfo, NoTls).unwrap();
                let statement = client.prepare("INSERT INTO narrow VALUES ($1, 0)").unwrap();
                connected.wait();
                let interval = Duration::from_secs_f64(writers as f64 / rate as f64);
                let mut next = Instant::now();
                let mut id = w as i64;
                let mut done = 0u64;
                while running.load(Ordering::Relaxed) {
                    client.execute(&statement, &[&id]).unwrap();
                    id += writers as i64;
                    done += 1;
                    next += interval;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                done
            })
        })
        .collect();
    connected.wait();
    handles
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

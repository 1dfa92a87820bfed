//! Commit-to-reader latency at a fixed transaction rate (`BENCH_RATE`,
//! default 10 000 single-row transactions a second from `BENCH_WRITERS`
//! connections, for `BENCH_LATENCY_SECONDS`), for each reader of a stream
//! and for pg_recvlogical with wal2json, one after the other on the same
//! load. Each reads a stream (or slot) of its own, made just before its
//! run, so that no other decoder competes for the two cores.
//!
//! A row's latency runs from its `_commit_ts` (wal2json: the transaction's
//! `timestamp`) to the moment its batch (or line) reached the reader; the
//! writers connect before the clock runs.

use crate::e2e::{ring_of, Served};
use crate::env_usize;
use pg_test::Cluster;
use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use postgres::{Client, NoTls};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The writers' load.
struct Load {
    rate: usize,
    seconds: usize,
    writers: usize,
}

/// One reader's run: rows seen, their latencies' p50, p99 and max in
/// milliseconds, and the transactions per second the writers achieved.
struct Summary {
    rows: usize,
    p50: f64,
    p99: f64,
    max: f64,
    achieved: f64,
}

impl Summary {
    fn of(mut latencies: Vec<f64>, achieved: f64) -> Option<Summary> {
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        let max = *latencies.last()?;
        Some(Summary { rows: latencies.len(), p50: pct(0.50), p99: pct(0.99), max, achieved })
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// Every reader at the same load, then the table of results.
pub fn run(cluster: &Cluster, client: &mut Client, reader: ChangeReader) {
    let load = Load {
        rate: env_usize("BENCH_RATE", 10_000),
        seconds: env_usize("BENCH_LATENCY_SECONDS", 5),
        writers: env_usize("BENCH_WRITERS", 4),
    };
    let results = [
        ("Rust, local ring", rust(cluster, client, reader, &load), "< 5 ms"),
        ("Python, local ring", python(cluster, client, &load, false), ""),
        ("Python, Flight on loopback", python(cluster, client, &load, true), "< 10 ms"),
        ("pg_recvlogical + wal2json", wal2json(cluster, client, &load), ""),
    ];
    println!(
        "\nLatency from commit to the reader, {} writers at {} transactions/s (one row each), {} s per reader:\n\n\
         | reader | achieved tx/s | rows | p50 | p99 | max | p99 target |\n|---|---:|---:|---:|---:|---:|---|",
        load.writers, load.rate, load.seconds
    );
    for (name, summary, target) in results {
        match summary {
            Some(s) => println!(
                "| {name} | {:.0} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {target} |",
                s.achieved, s.rows, s.p50, s.p99, s.max
            ),
            None => println!("| {name} | – | – | – | – | – | {target} |"),
        }
    }
}

/// The bench's own reader of stream `e2e`, which is dropped after it.
fn rust(cluster: &Cluster, client: &mut Client, mut reader: ChangeReader, load: &Load) -> Option<Summary> {
    client.batch_execute("TRUNCATE narrow").unwrap();
    // Drain the truncate.
    while let Some(batch) = reader.next_batch(Duration::from_millis(500)).unwrap() {
        reader.ack(max_commit_lsn(&batch).unwrap());
    }
    let writing = Writers::start(cluster, load);
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(load.seconds as u64);
    while Instant::now() < deadline {
        if let Some(batch) = reader.next_batch(Duration::from_millis(100)).unwrap() {
            let now = now_us();
            let commits = batch
                .column_by_name("_commit_ts")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
                .unwrap()
                .clone();
            latencies.extend(commits.values().iter().map(|c| (now - c) as f64 / 1000.0));
            reader.ack(max_commit_lsn(&batch).unwrap());
        }
    }
    let achieved = writing.stop(load);
    drop(reader);
    client.batch_execute("SELECT cdc_drop('e2e')").unwrap();
    Summary::of(latencies, achieved)
}

/// `bench/python/latency.py` with the Python package, reading a stream of
/// its own from the local ring or over Flight from `pgcdc serve`.
fn python(cluster: &Cluster, client: &mut Client, load: &Load, flight: bool) -> Option<Summary> {
    client.batch_execute("TRUNCATE narrow").unwrap();
    let slot = if flight { "e2e_lat_fl" } else { "e2e_lat_py" };
    let served = if flight {
        ring_of(client, slot);
        Some(Served::start(cluster)?)
    } else {
        None
    };
    let python = std::env::var("PGCDC_PYTHON").unwrap_or_else(|_| "python3".into());
    let source = match &served {
        Some(served) => vec!["flight".to_owned(), served.location(), "reader".into(), "pw".into()],
        None => vec!["local".to_owned(), cluster.conninfo("e2e")],
    };
    let mut measuring = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/python/latency.py"))
        .args(&source)
        .args([slot, "public.narrow", &(load.seconds + 1).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(measuring.stdout.take().unwrap()).lines();
    let summary = if lines.next().and_then(Result::ok).as_deref() == Some("ready") {
        let writing = Writers::start(cluster, load);
        std::thread::sleep(Duration::from_secs(load.seconds as u64));
        let achieved = writing.stop(load);
        let result = lines.next().and_then(Result::ok).unwrap_or_default();
        let f: Vec<f64> = result.split(' ').filter_map(|v| v.parse().ok()).collect();
        match f[..] {
            [p50, p99, max, rows] => Some(Summary { rows: rows as usize, p50, p99, max, achieved }),
            _ => None,
        }
    } else {
        None
    };
    let _ = measuring.kill();
    let _ = measuring.wait();
    drop(served);
    client.batch_execute(&format!("SELECT cdc_drop('{slot}')")).unwrap();
    summary
}

/// pg_recvlogical streaming wal2json (format 1: a line per transaction,
/// with its commit timestamp) from a slot of its own to a pipe.
fn wal2json(cluster: &Cluster, client: &mut Client, load: &Load) -> Option<Summary> {
    client.batch_execute("TRUNCATE narrow").unwrap();
    if !crate::peer_slot(client, "w2j_lat", "wal2json") {
        return None;
    }
    let mut recv = Command::new(pg_test::bindir().join("pg_recvlogical"))
        .args(["-d", &cluster.conninfo("e2e"), "--slot", "w2j_lat", "--start", "-f", "-"])
        .args(["-o", "include-timestamp=1"])
        .env("PGTZ", "UTC")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(recv.stdout.take().unwrap()).lines();
    let listening = std::thread::spawn(move || {
        let mut latencies = Vec::new();
        for line in lines.map_while(Result::ok) {
            let now = now_us();
            let Some(committed) = wal2json_timestamp(&line) else { continue };
            let rows = line.matches("\"kind\":").count();
            latencies.extend(std::iter::repeat_n((now - committed) as f64 / 1000.0, rows));
        }
        latencies
    });
    let writing = Writers::start(cluster, load);
    std::thread::sleep(Duration::from_secs(load.seconds as u64));
    let achieved = writing.stop(load);
    std::thread::sleep(Duration::from_millis(500));
    let _ = recv.kill();
    let _ = recv.wait();
    let latencies = listening.join().unwrap();
    client.query("SELECT pg_drop_replication_slot('w2j_lat')", &[]).unwrap();
    Summary::of(latencies, achieved)
}

/// Microseconds since the Unix epoch of wal2json's
/// `"timestamp":"2026-12-07 19:00:00.123456+00"` (UTC).
fn wal2json_timestamp(line: &str) -> Option<i64> {
    let at = line.find("\"timestamp\":")? + "\"timestamp\":".len();
    let text = line[at..].trim_start().strip_prefix('"')?;
    let (date, rest) = text.split_once(' ')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let clock = rest.get(..rest.find(['+', '-', '"'])?)?;
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (parts.next()??, parts.next()??, parts.next()??);
    let micros = format!("{fraction:0<6}").get(..6)?.parse::<i64>().ok()?;
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + mi * 60 + s) * 1_000_000) + micros)
}

/// Threads committing single-row inserts into `narrow` at the load's rate
/// in all.
struct Writers {
    running: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<u64>>,
}

impl Writers {
    /// Returns once every writer is connected and has started: starting
    /// four backends at once stalled the first rows' readers for up to
    /// 300 ms, which is no latency of the stream.
    fn start(cluster: &Cluster, load: &Load) -> Writers {
        let running = Arc::new(AtomicBool::new(true));
        let connected = Arc::new(std::sync::Barrier::new(load.writers + 1));
        let (writers, rate) = (load.writers, load.rate);
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
        Writers { running, handles }
    }

    /// Stops them; the transactions per second they committed.
    fn stop(self, load: &Load) -> f64 {
        self.running.store(false, Ordering::Relaxed);
        let committed: u64 = self.handles.into_iter().map(|h| h.join().unwrap()).sum();
        committed as f64 / load.seconds as f64
    }
}

#[cfg(test)]
mod tests {
    use super::wal2json_timestamp;

    #[test]
    fn wal2json_timestamps_read_as_unix_microseconds() {
        let line = r#"{"timestamp":"2026-12-07 19:00:00.123456+00","change":[{"kind":"insert"}]}"#;
        assert_eq!(wal2json_timestamp(line), Some(1_796_670_000_123_456));
        assert_eq!(wal2json_timestamp(r#"{"timestamp":"1970-01-01 00:00:01.5+00"}"#), Some(1_500_000));
        assert_eq!(wal2json_timestamp(r#"{"timestamp":"2000-02-29 00:00:00+00"}"#), Some(951_782_400_000_000));
        assert_eq!(wal2json_timestamp(r#"{"change":[]}"#), None);
    }
}

//! Crash tests: while a workload commits small transactions across two
//! tables, transactions larger than a batch and than a ring, and COPYs
//! (rows sharing an LSN), the consumers, the worker and backends are
//! killed with SIGKILL, again and again. Two streams are read: one with a
//! route per table, merged by the reader, and one merged route. Each
//! consumer follows the README's pattern (acknowledge each batch's highest
//! commit LSN once it is recorded). Every committed change must be
//! recorded exactly once, in commit order, and the slot must never have
//! confirmed a transaction a consumer had not recorded completely.

use pg_test::e2e::{reconnect, sigkill, worker_pid};
use pg_test::{parse_lsn, Cluster, Settings};
use postgres::Client;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rounds of the workload; `PGCDC_CRASH_ROUNDS` runs a longer soak.
fn rounds() -> usize {
    std::env::var("PGCDC_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(36)
}

/// A consumer process, killed if the test fails.
struct Consumer {
    child: Child,
    output: PathBuf,
    stop: PathBuf,
    rings: Vec<PathBuf>,
}

impl Consumer {
    fn spawn(output: PathBuf, stop: PathBuf, rings: Vec<PathBuf>) -> Consumer {
        let child = Command::new(env!("CARGO_BIN_EXE_consume")).arg(&output).arg(&stop).args(&rings).spawn().unwrap();
        Consumer { child, output, stop, rings }
    }

    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_consume"))
            .arg(&self.output)
            .arg(&self.stop)
            .args(&self.rings)
            .spawn()
            .unwrap();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (commit LSN, LSN, table, id) of every row a consumer recorded.
fn recorded(output: &Path) -> Vec<(u64, u64, String, i64)> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('@'))
        .filter_map(|l| {
            let p: Vec<&str> = l.split(' ').collect();
            (p.len() == 4)
                .then(|| Some((p[0].parse().ok()?, p[1].parse().ok()?, p[2].to_owned(), p[3].parse().ok()?)))?
        })
        .collect()
}

/// The transactions of the workload, by round.
fn transaction(client: &mut Client, round: usize, next: &mut [i64; 2]) -> Result<(), postgres::Error> {
    let [a, b] = next;
    match round % 4 {
        // Small: both tables in one transaction.
        0 | 1 => {
            let mut tx = client.transaction()?;
            tx.batch_execute(&format!(
                "INSERT INTO a SELECT g, 'small' FROM generate_series({a}, {}) g; INSERT INTO b VALUES ({b}, 'small')",
                *a + 4
            ))?;
            tx.commit()?;
            *a += 5;
            *b += 1;
        }
        // Larger than a batch (65536 rows) and than a 1 MB ring, with a
        // row of b in the middle.
        2 => {
            let mut tx = client.transaction()?;
            tx.batch_execute(&format!(
                "INSERT INTO a SELECT g, repeat('x', 60) FROM generate_series({a}, {}) g;
                 INSERT INTO b VALUES ({b}, 'inside a large one');
                 INSERT INTO a SELECT g, repeat('y', 60) FROM generate_series({}, {}) g",
                *a + 39_999,
                *a + 40_000,
                *a + 69_999
            ))?;
            tx.commit()?;
            *a += 70_000;
            *b += 1;
        }
        // COPY: rows of one multi-insert record share its LSN.
        _ => {
            let mut copy = client.copy_in("COPY a FROM STDIN")?;
            for id in *a..*a + 3000 {
                writeln!(copy, "{id}\tcopied").unwrap();
            }
            copy.finish()?;
            *a += 3000;
        }
    }
    Ok(())
}

#[test]
fn every_committed_change_arrives_exactly_once_through_repeated_crashes() {
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("crash");
    client
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)")
        .unwrap();
    let rings = |client: &mut Client, sql: &str| -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> =
            client.query(sql, &[]).unwrap().iter().map(|r| PathBuf::from(r.get::<_, String>("ring_path"))).collect();
        paths.dedup();
        paths
    };
    let per_table =
        rings(&mut client, "SELECT * FROM cdc_auto_configure(ARRAY['public.a', 'public.b'], slot_name => 'tables')");
    let one = rings(
        &mut client,
        "SELECT * FROM cdc_auto_configure(ARRAY['public.a', 'public.b'], slot_name => 'merged', route_by_table => false)",
    );
    assert_eq!((per_table.len(), one.len()), (2, 1));
    let dir = cluster.socket_dir().to_owned();
    let mut consumers = [
        ("tables", Consumer::spawn(dir.join("tables.txt"), dir.join("stop"), per_table)),
        ("merged", Consumer::spawn(dir.join("merged.txt"), dir.join("stop"), one)),
    ];
    let conninfo = cluster.conninfo("crash");

    // Meanwhile: what each slot confirmed, and what its consumer had
    // recorded by then.
    let running = Arc::new(AtomicBool::new(true));
    let samples: Arc<Mutex<Vec<(String, u64, usize)>>> = Arc::default();
    let sampler = {
        let (running, samples, conninfo) = (running.clone(), samples.clone(), conninfo.clone());
        let outputs: Vec<(String, PathBuf)> =
            consumers.iter().map(|(s, c)| (s.to_string(), c.output.clone())).collect();
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let Ok(mut c) = postgres::Client::connect(&conninfo, postgres::NoTls) else { continue };
                for (slot, output) in &outputs {
                    let Ok(row) = c.query_one(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot],
                    ) else {
                        continue;
                    };
                    let confirmed = parse_lsn(&row.get::<_, String>(0));
                    let seen = recorded(output).iter().filter(|r| r.0 <= confirmed).count();
                    samples.lock().unwrap().push((slot.clone(), confirmed, seen));
                }
            }
        })
    };

    let mut next = [1i64, 1i64];
    let (mut consumer_kills, mut worker_kills, mut backend_kills, mut failed) = (0, 0, 0, 0);
    let started = Instant::now();
    for round in 0..rounds() {
        // A transaction cut off by a crash may or may not have committed:
        // the tables tell in the end.
        if transaction(&mut client, round, &mut next).is_err() {
            failed += 1;
            client = reconnect(&conninfo);
        }
        match round % 6 {
            1 => {
                consumers[(round / 6) % 2].1.kill_and_restart();
                consumer_kills += 1;
            }
            3 if round % 12 == 3 => {
                if let Some(pid) = worker_pid(&mut client, if round % 24 == 3 { "tables" } else { "merged" }) {
                    sigkill(pid);
                    worker_kills += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    client = reconnect(&conninfo);
                }
            }
            5 => {
                client = pg_test::e2e::crash_server(&mut client, &conninfo);
                backend_kills += 1;
            }
            _ => {}
        }
    }
    assert!(
        consumer_kills >= 4 && worker_kills >= 1 && backend_kills >= 3,
        "{consumer_kills} {worker_kills} {backend_kills}"
    );
    assert!(cluster.log().contains("terminating any other active server processes"), "the server restarted");
    eprintln!(
        "crash test: {} rounds in {:.0?}, SIGKILLed {consumer_kills} consumers, {worker_kills} workers, {backend_kills} backends",
        rounds(),
        started.elapsed()
    );

    let mut client = reconnect(&conninfo);
    let committed = |table: &str, client: &mut Client| -> Vec<i64> {
        client
            .query(&format!("SELECT id::int8 FROM {table} ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let (a, b) = (committed("a", &mut client), committed("b", &mut client));
    assert!(
        a.len() > 150_000 && b.len() > 10,
        "{} and {} rows committed ({failed} transactions failed)",
        a.len(),
        b.len()
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    for (slot, consumer) in &consumers {
        while recorded(&consumer.output).len() < a.len() + b.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        if recorded(&consumer.output).len() < a.len() + b.len() {
            // What the rings said when the consumer stopped short.
            for ring in &consumer.rings {
                let status = pgcdc_reader::ring::file::open(ring).map(|r| r.status());
                eprintln!("crash test: {slot} stalled; {}: {status:?}", ring.display());
            }
        }
    }
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    std::fs::write(dir.join("stop"), b"").unwrap();
    for (slot, consumer) in &mut consumers {
        assert!(consumer.child.wait().unwrap().success(), "consumer {slot} ran clean");
        let rows = recorded(&consumer.output);
        eprintln!("crash test: stream {slot}: {} changes recorded, each once", rows.len());
        let keys: Vec<(String, i64)> = rows.iter().map(|r| (r.2.clone(), r.3)).collect();
        let unique: HashSet<&(String, i64)> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{slot}: no row twice");
        for (table, ids) in [("a", &a), ("b", &b)] {
            let got: Vec<i64> = rows.iter().filter(|r| r.2 == table).map(|r| r.3).collect();
            pg_test::e2e::assert_ids(
                &got,
                ids.iter().copied(),
                &format!("{slot}: every committed row of {table}, in order"),
            );
        }
        assert!(rows.windows(2).all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1)), "{slot}: commit and LSN order");

        // The slot never confirmed a transaction before its consumer had
        // recorded all of it (a consumer records a row once, never twice).
        let mut by_commit: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &rows {
            *by_commit.entry(r.0).or_default() += 1;
        }
        let checked = samples.lock().unwrap().iter().filter(|s| s.0 == *slot).count();
        assert!(checked >= 3, "{slot}: {checked} samples of the slot");
        for (_, confirmed, seen) in samples.lock().unwrap().iter().filter(|s| s.0 == *slot) {
            let due: usize = by_commit.range(..=*confirmed).map(|(_, n)| n).sum();
            assert_eq!(*seen, due, "{slot}: confirmed {confirmed:X} when {seen} of its {due} rows were recorded");
        }
    }
}

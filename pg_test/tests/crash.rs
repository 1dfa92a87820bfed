//! Crash tests: while a workload commits, the worker is killed with
//! SIGKILL, then a backend (so the whole server restarts), and the reader
//! process is killed and restarted several times. Every committed row must
//! reach the reader's output exactly once, in commit order.

use pg_test::{parse_lsn, Cluster};
use postgres::{Client, NoTls};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const TRANSACTIONS: i32 = 600;
const ROWS_PER_TRANSACTION: i32 = 5;

fn connect(conninfo: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
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

fn sigkill(pid: i32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

/// The consumer process, killed if the test fails.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_consumer(ring: &Path, output: &Path, stop: &Path) -> Consumer {
    Consumer(Command::new(env!("CARGO_BIN_EXE_consume")).arg(ring).arg(output).arg(stop).spawn().unwrap())
}

/// (commit LSN, LSN, id) of every line the consumer recorded.
fn recorded(output: &Path) -> Vec<(u64, u64, i64)> {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            (parts.len() == 3)
                .then(|| (parts[0].parse().unwrap(), parts[1].parse().unwrap(), parts[2].parse().unwrap()))
        })
        .collect()
}

fn worker_pid(client: &mut Client) -> Option<i32> {
    client
        .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgcdc worker'", &[])
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

#[test]
fn every_committed_row_arrives_exactly_once_through_crashes() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("crash");
    client.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text)").unwrap();
    let ring: String = client
        .query_one("SELECT ring_path FROM cdc_auto_configure('public.items', slot_name => 'crash')", &[])
        .unwrap()
        .get(0);
    let ring = PathBuf::from(ring);
    let output = cluster.socket_dir().join("consumed.txt");
    let stop = cluster.socket_dir().join("stop");
    let mut consumer = spawn_consumer(&ring, &output, &stop);
    let conninfo = cluster.conninfo("crash");

    let mut worker_killed = false;
    let mut server_crashed = false;
    let mut reader_kills = 0;
    let mut failures = Vec::new();
    for t in 0..TRANSACTIONS {
        let first = t * ROWS_PER_TRANSACTION;
        let sql = format!(
            "INSERT INTO items SELECT g, 'row ' || g FROM generate_series({first}, {}) g",
            first + ROWS_PER_TRANSACTION - 1
        );
        // A transaction cut off by a crash may or may not have committed:
        // the table tells in the end.
        if let Err(e) = client.batch_execute(&sql) {
            failures.push(format!("{t}: {:?}", e.as_db_error().map(|d| d.message().to_owned())));
            client = connect(&conninfo);
        }
        if t == TRANSACTIONS / 4 && !worker_killed {
            if let Some(pid) = worker_pid(&mut client) {
                sigkill(pid);
                worker_killed = true;
            }
        }
        if t == TRANSACTIONS / 2 && !server_crashed {
            let victim = connect(&conninfo);
            let pid: i32 = client
                .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() LIMIT 1", &[])
                .unwrap()
                .get(0);
            sigkill(pid);
            drop(victim);
            server_crashed = true;
            client = connect(&conninfo);
        }
        if t % (TRANSACTIONS / 4) == TRANSACTIONS / 8 {
            consumer.0.kill().unwrap();
            consumer.0.wait().unwrap();
            reader_kills += 1;
            consumer = spawn_consumer(&ring, &output, &stop);
        }
    }
    assert!(worker_killed && server_crashed && reader_kills >= 3);
    let log = cluster.log();
    assert!(log.contains("terminating any other active server processes"), "the server restarted after the kills");

    // Every committed row, once, in commit order.
    let mut client = connect(&conninfo);
    let committed: Vec<i64> =
        client.query("SELECT id::int8 FROM items ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(
        committed.len() > (TRANSACTIONS * ROWS_PER_TRANSACTION) as usize / 2,
        "{} rows committed; failed transactions: {failures:?}",
        committed.len()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorded(&output).len() < committed.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&stop, b"").unwrap();
    assert!(consumer.0.wait().unwrap().success(), "the consumer ran clean");
    let rows = recorded(&output);
    let ids: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no row twice");
    assert_eq!(ids, committed, "every committed row, in commit order");
    assert!(rows.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)), "LSNs only grow");

    // And the slot followed the acknowledgements.
    let confirmed: String = client
        .query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'crash'", &[])
        .unwrap()
        .get(0);
    assert!(parse_lsn(&confirmed) >= rows.last().unwrap().0);
}

//! Snapshot throughput: the existing rows of a table, from
//! `cdc_auto_configure` to the completion marker in a reader, beside the
//! floor of reading the same table at all — `COPY (SELECT …) TO STDOUT
//! (FORMAT binary)` drained by a client — in the same run, on the same
//! tables: one large table, then several in parallel.
//!
//! The tables are vacuumed first, so that neither side pays for setting
//! hint bits, and each is read once by COPY before it is timed, so that
//! both find it in shared buffers.

use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use pgcdc_reader::snapshot::completes_snapshot;
use postgres::{Client, NoTls};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const COLUMNS: &str = "id bigint PRIMARY KEY, qty int, price numeric(12,2), ratio float8, name text, \
                       note varchar(64), created timestamptz, active bool, uid uuid";

pub fn run() {
    let rows = env_usize("BENCH_SNAPSHOT_ROWS", 5_000_000);
    let tables = env_usize("BENCH_SNAPSHOT_TABLES", 4);
    println!("\n## Snapshots\n\nStarting a private cluster…");
    let cluster = Cluster::start_with(
        Settings::default().with("shared_buffers", "'2GB'").with("max_wal_size", "'8GB'").with("pgcdc.ring_size", "64"),
    );
    let mut client = cluster.database_with_pgcdc("snap");
    create(&mut client, "one", rows);
    for t in 0..tables {
        create(&mut client, &format!("part{t}"), rows / tables);
    }
    client.batch_execute("VACUUM (FREEZE, ANALYZE)").unwrap();
    let workers: i64 = client.query_one("SELECT current_setting('pgcdc.snapshot_workers')::int8", &[]).unwrap().get(0);

    let conninfo = cluster.conninfo("snap");
    copy(&conninfo, "one");
    let floor = copy(&conninfo, "one");
    let ours = snapshot(&mut client, "one", &["one".to_owned()]);
    let parts: Vec<String> = (0..tables).map(|t| format!("part{t}")).collect();
    let floor_parts = {
        parts.iter().for_each(|t| {
            copy(&conninfo, t);
        });
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in &parts {
                let conninfo = &conninfo;
                s.spawn(move || copy(conninfo, t));
            }
        });
        started.elapsed()
    };
    let ours_parts = snapshot(&mut client, "parts", &parts);

    let per_table = rows / tables;
    println!("\n| read | rows | time | rows/s | × COPY floor |\n|---|---:|---:|---:|---:|");
    let line = |what: &str, rows: usize, time: Duration, floor: Duration| {
        println!(
            "| {what} | {rows} | {:.2} s | {:.0}k | {:.2} |",
            time.as_secs_f64(),
            rows as f64 / time.as_secs_f64() / 1e3,
            floor.as_secs_f64() / time.as_secs_f64()
        );
    };
    line("COPY binary, one table", rows, floor, floor);
    line(&format!("pgcdc snapshot, one table ({workers} workers)"), rows, ours, floor);
    line(
        &format!("COPY binary, {tables} tables of {per_table} rows in parallel"),
        per_table * tables,
        floor_parts,
        floor_parts,
    );
    line(&format!("pgcdc snapshot, {tables} tables ({workers} workers)"), per_table * tables, ours_parts, floor_parts);
    println!(
        "\npgcdc snapshot: {:.2}× the COPY floor's rows/s on one table (target ≥ 0.7), {:.2}× on {tables} tables.",
        floor.as_secs_f64() / ours.as_secs_f64(),
        floor_parts.as_secs_f64() / ours_parts.as_secs_f64()
    );
}

fn create(client: &mut Client, table: &str, rows: usize) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} ({COLUMNS});
             INSERT INTO {table}
             SELECT g, g % 1000, (g % 100000) / 100.0, g / 7.0, 'name ' || g, 'note ' || (g % 977),
                    '2024-01-01'::timestamptz + g * interval '1 second', g % 2 = 0, gen_random_uuid()
             FROM generate_series(1, {rows}) g;"
        ))
        .unwrap();
}

/// The floor: the table's rows in PostgreSQL's binary COPY format, read by
/// a client and dropped.
fn copy(conninfo: &str, table: &str) -> Duration {
    let mut client = Client::connect(conninfo, NoTls).unwrap();
    let started = Instant::now();
    let mut out = client.copy_out(&format!("COPY (SELECT * FROM {table}) TO STDOUT (FORMAT binary)")).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    while out.read(&mut buffer).unwrap() > 0 {}
    started.elapsed()
}

/// Configures stream `slot` on `tables` (snapshot => 'initial') and reads
/// every table's ring, in one thread each, until its completion marker.
fn snapshot(client: &mut Client, slot: &str, tables: &[String]) -> Duration {
    let started = Instant::now();
    let patterns: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
    let rings: Vec<PathBuf> = client
        .query("SELECT ring_path FROM cdc_auto_configure($1::text[], slot_name => $2)", &[&patterns, &slot])
        .unwrap()
        .iter()
        .map(|r| PathBuf::from(r.get::<_, String>(0)))
        .collect();
    std::thread::scope(|s| {
        for ring in &rings {
            s.spawn(move || {
                let mut reader = ChangeReader::open(ring, "default").unwrap();
                loop {
                    let batch = reader
                        .next_batch(Duration::from_secs(60))
                        .unwrap()
                        .unwrap_or_else(|| panic!("{} stalled before its snapshot completed", ring.display()));
                    reader.ack(max_commit_lsn(&batch).unwrap());
                    if completes_snapshot(&batch) {
                        break;
                    }
                }
            });
        }
    });
    started.elapsed()
}

//! Snapshots (DESIGN §6): a table's existing rows reach its route as `r`
//! rows, interleaved with the changes made meanwhile, so that a consumer
//! that applies the route in order ends with exactly the table — checked
//! against `SELECT`, for every row and column.

use pg_test::e2e::{configure, current_lsn, eventually, WAIT};
use pg_test::replica::Replica;
use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::ChangeReader;
use postgres::Client;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Small chunks, so that even the test tables take many chunks and ranges.
fn cluster() -> Cluster {
    Cluster::start_with(Settings::default().with("pgcdc.snapshot_chunk_rows", "5000"))
}

const SCHEMA: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE empty (id int PRIMARY KEY, v text);
CREATE TABLE one (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v text);
CREATE TABLE mixed (id bigint PRIMARY KEY, t text, r int, n numeric(12,2), ts timestamptz, j jsonb, b bytea, a int[],
                    e mood, big text);
ALTER TABLE mixed ALTER big SET STORAGE EXTERNAL;
INSERT INTO one (v) VALUES ('the only row');
INSERT INTO mixed
SELECT i, 'row ' || i, i % 100, i / 7.0, '2024-01-01'::timestamptz + i * interval '1 minute', jsonb_build_object('i', i),
       int4send(i::int), ARRAY[i, -i], (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood,
       CASE WHEN i % 1000 = 0 THEN repeat(md5(i::text), 100) END
FROM generate_series(1, 200000) i;
";

/// Changes all three tables until told to stop: inserts, updates (some of
/// rows with a TOASTed value they leave alone), deletes and key changes.
fn write_meanwhile(conninfo: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut client = pg_test::e2e::reconnect(&conninfo);
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            1 + seed % n
        };
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let id = next(200_000);
            let sql = match i % 6 {
                0 => format!("INSERT INTO mixed (id, t, e) VALUES ({}, 'new {i}', 'ok')", 300_000 + i),
                1 => format!("UPDATE mixed SET t = 'updated {i}', n = n + 1 WHERE id = {}", id / 1000 * 1000),
                2 => format!("UPDATE mixed SET t = 'updated {i}', a = a || {i} WHERE id = {id}"),
                3 => format!("DELETE FROM mixed WHERE id = {id}"),
                4 => format!("UPDATE mixed SET id = id + 1000000 WHERE id = {id}"),
                _ => format!(
                    "BEGIN; UPDATE one SET v = 'changed {i}'; INSERT INTO empty VALUES ({i}, 'x');
                     DELETE FROM empty WHERE id = {}; COMMIT",
                    i.saturating_sub(12)
                ),
            };
            client.batch_execute(&sql).unwrap();
        }
        i
    })
}

/// A route being applied to a copy.
struct Follower {
    reader: ChangeReader,
    replica: Replica,
}

impl Follower {
    fn open(ring: &PathBuf, key: &[&str]) -> Follower {
        Follower { reader: ChangeReader::open_waiting(ring, "default", WAIT).unwrap(), replica: Replica::new(key) }
    }

    /// Applies what the route holds now (up to a few batches); returns the
    /// highest commit LSN seen.
    fn step(&mut self) -> u64 {
        let mut highest = 0;
        for _ in 0..16 {
            match self.reader.next_batch(Duration::from_millis(5)).unwrap() {
                Some(batch) => {
                    self.replica.apply(&batch);
                    if let Some(lsn) = max_commit_lsn(&batch) {
                        self.reader.ack(lsn);
                        highest = highest.max(lsn);
                    }
                }
                None => break,
            }
        }
        highest
    }
}

fn ring(routes: &[(String, PathBuf)], route: &str) -> PathBuf {
    routes.iter().find(|(r, _)| r == route).unwrap_or_else(|| panic!("no route {route}")).1.clone()
}

fn snapshot_states(client: &mut Client, slot: &str) -> Vec<(String, String)> {
    client
        .query("SELECT table_name, state FROM cdc_snapshots($1) ORDER BY 1", &[&slot])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Follows every route until the snapshots are done and a last change of
/// each table (after the writer stopped) has arrived.
fn follow_to_the_end(client: &mut Client, slot: &str, followers: &mut [Follower], stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while snapshot_states(client, slot).iter().any(|(_, s)| s == "pending" || s == "running") {
        assert!(Instant::now() < deadline, "the snapshots did not finish: {:?}", snapshot_states(client, slot));
        followers.iter_mut().for_each(|f| {
            f.step();
        });
    }
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_consumer_that_applies_the_routes_ends_with_exactly_the_tables_while_writers_write() {
    let cluster = cluster();
    let mut client = cluster.database_with_pgcdc("snap");
    client.batch_execute(SCHEMA).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_meanwhile(cluster.conninfo("snap"), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.*', slot_name => 'snap')");
    let mut followers = [
        Follower::open(&ring(&routes, "public.empty"), &["id"]),
        Follower::open(&ring(&routes, "public.one"), &["id"]),
        Follower::open(&ring(&routes, "public.mixed"), &["id"]),
    ];
    follow_to_the_end(&mut client, "snap", &mut followers, &stop);
    let changes = writer.join().unwrap();
    assert!(changes > 100, "the writer wrote while the snapshot ran ({changes} statements)");

    // A last change of each table, after everything else.
    let before = current_lsn(&mut client);
    client
        .batch_execute(
            "BEGIN; INSERT INTO empty VALUES (-1, 'last'); UPDATE one SET v = 'last';
             INSERT INTO mixed (id, t) VALUES (-1, 'last'); COMMIT",
        )
        .unwrap();
    for follower in &mut followers {
        eventually("the last change", || follower.step() > before);
    }
    for (follower, table) in followers.iter().zip(["empty", "one", "mixed"]) {
        follower.replica.assert_equals(&mut client, table);
        assert_eq!(follower.replica.completions, 1, "{table}: one completion marker");
    }
    let (empty, one, mixed) = (&followers[0].replica, &followers[1].replica, &followers[2].replica);
    assert_eq!(one.reads, 1, "the one row of `one` came as a snapshot read");
    assert!(mixed.reads >= 190_000, "the rows of `mixed` came as snapshot reads ({})", mixed.reads);
    assert!(empty.reads < 100, "`empty` had no rows but the writer's ({})", empty.reads);
    let states = snapshot_states(&mut client, "snap");
    assert_eq!(
        states,
        [("empty".into(), "done".into()), ("mixed".into(), "done".into()), ("one".into(), "done".into())]
    );
    let (ranges, rows_done): (i32, i64) = client
        .query_one("SELECT ranges, rows_done FROM cdc_snapshots('snap') WHERE table_name = 'mixed'", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(ranges > 1, "the large table was read in several key ranges ({ranges})");
    assert!(rows_done >= 190_000, "rows read: {rows_done}");
}

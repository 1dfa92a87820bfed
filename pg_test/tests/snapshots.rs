//! Snapshots (DESIGN §6): a table's existing rows reach its route as `r`
//! rows, interleaved with the changes made meanwhile, so that a consumer
//! that applies the route in order ends with exactly the table — checked
//! against `SELECT`, for every row and column.

use pg_test::e2e::{configure, current_lsn, eventually};
use pg_test::replica::{follow_past, follow_while_snapshotting, ring, snapshot_states, Follower};
use pg_test::{Cluster, Settings};
use postgres::Client;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    follow_while_snapshotting(&mut client, "snap", &mut followers);
    stop.store(true, Ordering::Relaxed);
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
    follow_past(&mut followers, before);
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

/// Keys whose order is a trap for chunking (peers have lost or repeated
/// rows with each): text in a collation unlike bytewise order, composite
/// keys whose first column repeats across chunk boundaries, enums whose
/// order is not their OIDs', uuids, and a replica identity index that is
/// not a primary key. Every row arrives exactly once.
#[test]
fn keys_of_every_kind_chunk_without_losing_or_repeating_a_row() {
    let cluster = cluster();
    let mut client = cluster.database_with_pgcdc("keys");
    // A value added to an enum is usable once committed: its own statement.
    client.batch_execute("CREATE TYPE size AS ENUM ('small', 'large')").unwrap();
    client.batch_execute("ALTER TYPE size ADD VALUE 'medium' BEFORE 'large'").unwrap();
    // ICU's root collation, or glibc's en_US on servers built without ICU
    // (scripts/setup.sh generates that locale).
    let collation: String = client
        .query_one(
            "SELECT collname::text FROM pg_collation WHERE collname IN ('und-x-icu', 'en_US.utf8')
             ORDER BY collname = 'und-x-icu' DESC LIMIT 1",
            &[],
        )
        .expect("a collation that orders text unlike bytes: ICU's, or the en_US.UTF-8 locale")
        .get(0);
    client
        .batch_execute(&format!(
            "CREATE TABLE by_text (k text COLLATE \"{collation}\" PRIMARY KEY, v int);
             INSERT INTO by_text
             SELECT (ARRAY['a', 'B', 'é', 'E', ' z', '-y', 'Ä'])[1 + i % 7] || i, i FROM generate_series(1, 21000) i;
             CREATE TABLE by_pair (a int, b text, v int, PRIMARY KEY (a, b));
             INSERT INTO by_pair SELECT i % 3, md5(i::text), i FROM generate_series(1, 21000) i;
             CREATE TABLE by_enum (s size, n int, PRIMARY KEY (s, n));
             INSERT INTO by_enum SELECT (ARRAY['small', 'medium', 'large'])[1 + i % 3]::size, i / 3
             FROM generate_series(0, 20999) i;
             CREATE TABLE by_uuid (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v int);
             INSERT INTO by_uuid (v) SELECT i FROM generate_series(1, 21000) i;
             CREATE TABLE by_index (code text NOT NULL, v int);
             CREATE UNIQUE INDEX by_index_code ON by_index (code);
             ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
             INSERT INTO by_index SELECT 'c' || i, i FROM generate_series(1, 21000) i;
             CREATE TABLE no_key (v int);
             INSERT INTO no_key VALUES (1), (2);"
        ))
        .unwrap();
    // The collation really orders unlike bytes (else the test proves nothing).
    let same: bool = client
        .query_one("SELECT array_agg(k ORDER BY k) = array_agg(k ORDER BY k COLLATE \"C\") FROM by_text", &[])
        .unwrap()
        .get(0);
    assert!(!same, "{collation} orders the keys unlike bytes");

    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.*', slot_name => 'keys')");
    let tables: [(&str, &[&str]); 5] = [
        ("by_text", &["k"]),
        ("by_pair", &["a", "b"]),
        ("by_enum", &["s", "n"]),
        ("by_uuid", &["id"]),
        ("by_index", &["code"]),
    ];
    let mut followers: Vec<Follower> =
        tables.iter().map(|(t, key)| Follower::open(&ring(&routes, &format!("public.{t}")), key)).collect();
    follow_while_snapshotting(&mut client, "keys", &mut followers);
    let before = current_lsn(&mut client);
    client
        .batch_execute(
            "BEGIN; INSERT INTO by_text VALUES ('last', 0); INSERT INTO by_pair VALUES (9, 'last', 0);
             DELETE FROM by_enum WHERE n = 0; INSERT INTO by_uuid (v) VALUES (0); UPDATE by_index SET v = -v WHERE v = 1;
             COMMIT",
        )
        .unwrap();
    follow_past(&mut followers, before);
    for (follower, (table, _)) in followers.iter_mut().zip(tables) {
        follower.replica.assert_equals(&mut client, table);
        assert_eq!(follower.replica.reads, 21_000, "{table}: every row read exactly once");
        assert_eq!(follower.replica.completions, 1, "{table}: one completion marker");
    }
    let ranges: Vec<(String, i32, i64)> = client
        .query("SELECT table_name, ranges, chunks_done FROM cdc_snapshots('keys') WHERE state = 'done' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(ranges.len(), 5, "{ranges:?}");
    for (table, _, chunks) in &ranges {
        assert!(*chunks >= 5, "{table} was read in several chunks ({chunks})");
    }

    // The table without a key: failed at once, saying what to do.
    let (state, error): (String, String) = client
        .query_one("SELECT state, error FROM cdc_snapshots('keys') WHERE table_name = 'no_key'", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(state, "failed");
    assert!(error.contains("no primary key") && error.contains("REPLICA IDENTITY USING INDEX"), "{error}");
    // Given a key, it can be snapshotted.
    client.batch_execute("ALTER TABLE no_key ADD PRIMARY KEY (v)").unwrap();
    let mut keyed = Follower::open(&ring(&routes, "public.no_key"), &["v"]);
    let asked: Vec<String> = client
        .query("SELECT state FROM cdc_snapshot('keys', ARRAY['public.no_key'])", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(asked, ["pending"]);
    follow_while_snapshotting(&mut client, "keys", std::slice::from_mut(&mut keyed));
    eventually("the completion marker", || {
        keyed.step();
        keyed.replica.completions == 1
    });
    keyed.replica.assert_equals(&mut client, "no_key");
    assert_eq!(keyed.replica.reads, 2);
}

/// `snapshot => 'never'` streams changes only; `cdc_snapshot` backfills
/// later, as often as asked, onto the same routes (here split into two
/// key-hash partitions); `cdc_snapshot_cancel` stops one halfway, leaving
/// no chunk behind and nothing holding the slot back.
#[test]
fn snapshots_on_demand_backfill_and_cancel() {
    // Small rings and chunks: a consumer that stops reading stops the
    // snapshot after a few chunks (the rest wait for room).
    let cluster =
        Cluster::start_with(Settings::default().with("pgcdc.snapshot_chunk_rows", "1000").with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("demand");
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);
             INSERT INTO accounts SELECT i, 'owner ' || i, i * 10 FROM generate_series(1, 150000) i;",
        )
        .unwrap();
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.accounts', slot_name => 'demand', partitions => 2, snapshot => 'never')",
    );
    let rings: Vec<PathBuf> = routes.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(rings.len(), 2);
    assert!(snapshot_states(&mut client, "demand").is_empty(), "no snapshot was asked for");
    let mut follower = Follower::open_all(&rings, &["id"]);
    client
        .batch_execute("UPDATE accounts SET balance = 0 WHERE id <= 10; INSERT INTO accounts VALUES (0, 'new', 1)")
        .unwrap();
    eventually("the changes on both partitions", || {
        follower.step();
        follower.replica.len() == 11
    });
    assert_eq!(follower.replica.reads, 0, "changes only, no snapshot reads");

    // A backfill, twice: each delivers the whole table again.
    for round in 1..=2 {
        let asked: Vec<(String, String)> = client
            .query("SELECT table_name, state FROM cdc_snapshot('demand')", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(asked, [("accounts".to_owned(), "pending".to_owned())]);
        client.batch_execute("UPDATE accounts SET balance = balance + 1 WHERE id % 1000 = 0").unwrap();
        follow_while_snapshotting(&mut client, "demand", std::slice::from_mut(&mut follower));
        // Both partitions carry the completion marker.
        eventually("the completion markers", || {
            follower.step();
            follower.replica.completions == 2 * round
        });
        follower.replica.assert_equals(&mut client, "accounts");
        assert_eq!(follower.replica.reads, 150_001 * round);
    }
    // cdc_status shows the latest snapshot on both partitions' routes.
    assert_eq!(route_snapshots(&mut client), vec![("done".to_owned(), 150_001, None); 2]);

    // A cancel halfway: the consumer does not read, so the snapshot waits
    // for it after a few chunks.
    client.batch_execute("SELECT cdc_snapshot('demand', ARRAY['public.accounts'])").unwrap();
    eventually("a chunk read", || {
        let done: i64 = client.query_one("SELECT rows_done FROM cdc_snapshots('demand') LIMIT 1", &[]).unwrap().get(0);
        done > 0
    });
    // Progress while it runs, in cdc_status() and `pgcdc status`.
    for (state, rows_done, estimated) in route_snapshots(&mut client) {
        assert_eq!(state, "running");
        assert!(rows_done > 0 && rows_done < 150_001, "{rows_done} rows done");
        let estimated = estimated.expect("an estimate from the statistics");
        assert!((100_000..=200_000).contains(&estimated), "estimated {estimated} rows of 150001");
    }
    let status = std::process::Command::new(pg_test::e2e::cli())
        .args(["status", "--conninfo", &cluster.conninfo("demand")])
        .output()
        .unwrap();
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(status.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("demand ")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.iter().all(|l| l.contains("; snapshot running ") && l.contains(" of ~")), "{text}");
    // Asked again while it runs, the table keeps the running one.
    let row = client.query_one("SELECT snapshot_id, state FROM cdc_snapshot('demand')", &[]).unwrap();
    let (running, state): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(state, "running");
    let newest: i64 = client.query_one("SELECT max(snapshot_id) FROM cdc_snapshots('demand')", &[]).unwrap().get(0);
    assert_eq!(running, newest, "no second snapshot of the table");
    let cancelled: Vec<String> = client
        .query("SELECT table_name FROM cdc_snapshot_cancel('demand', ARRAY['public.accounts'])", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cancelled, ["accounts"]);
    let again = client.query("SELECT * FROM cdc_snapshot_cancel('demand')", &[]).unwrap();
    assert!(again.is_empty(), "nothing left to cancel");
    assert_eq!(snapshot_states(&mut client, "demand")[0], ("accounts".into(), "cancelled".into()));
    let after_cancel = current_lsn(&mut client);
    client.batch_execute("UPDATE accounts SET owner = 'after cancel' WHERE id = 1").unwrap();
    eventually("the change after the cancel", || follower.step() > after_cancel);
    eventually("the slot confirmed past the cancel", || {
        follower.step();
        pg_test::e2e::confirmed(&mut client, "demand") > after_cancel
    });
    let dir = cluster.data_directory().join("pgcdc_snapshots/demand");
    eventually("no chunk file left", || {
        follower.step();
        std::fs::read_dir(&dir).unwrap().flatten().all(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.ends_with(".chunk") && !name.ends_with(".sent")
        })
    });
    assert_eq!(follower.replica.completions, 4, "a cancelled snapshot never completes");
    let states = route_snapshots(&mut client);
    assert!(states.iter().all(|(state, ..)| state == "cancelled"), "{states:?}");
    follower.replica.assert_equals(&mut client, "accounts");

    // Asking for a table the stream does not have says which it has.
    let error = client.batch_execute("SELECT cdc_snapshot('demand', ARRAY['public.acounts'])").unwrap_err();
    let db = error.as_db_error().unwrap();
    assert!(db.message().contains("public.acounts"), "{}", db.message());
    assert!(db.hint().unwrap_or_default().contains("accounts"), "{:?}", db.hint());
}

/// Per route of stream `demand`, the snapshot progress `cdc_status()`
/// shows: state, rows done, and (while it runs) rows estimated.
fn route_snapshots(client: &mut Client) -> Vec<(String, i64, Option<i64>)> {
    client
        .query(
            "SELECT snapshot_state, snapshot_rows_done,
                    CASE WHEN snapshot_state = 'running' THEN snapshot_rows_estimated END
             FROM cdc_status() WHERE slot_name = 'demand' ORDER BY route",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A chunk the stream cannot read (here: its file damaged on disk) fails
/// its snapshot with a WARNING and the reason in `cdc_snapshots()`; the
/// stream goes on, the slot moves, and a new `cdc_snapshot` completes.
#[test]
fn a_chunk_the_stream_cannot_read_fails_its_snapshot_not_the_stream() {
    let cluster =
        Cluster::start_with(Settings::default().with("pgcdc.snapshot_chunk_rows", "1000").with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("damaged");
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, pad text);
             INSERT INTO items SELECT i, repeat('p', 200) FROM generate_series(1, 100000) i;",
        )
        .unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.items', slot_name => 'damaged')");
    // Nobody reads: the ring fills, and the chunks read ahead wait on disk.
    let dir = cluster.data_directory().join("pgcdc_snapshots/damaged");
    let chunks = || -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "chunk")).collect())
            .unwrap_or_default()
    };
    eventually("chunks waiting on disk", || chunks().len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    for chunk in chunks() {
        std::fs::write(&chunk, b"not an Arrow stream").unwrap();
    }
    let mut follower = Follower::open(&ring(&routes, "public.items"), &["id"]);
    follow_while_snapshotting(&mut client, "damaged", std::slice::from_mut(&mut follower));
    let row = client.query_one("SELECT state, error FROM cdc_snapshots('damaged')", &[]).unwrap();
    let (state, error): (String, Option<String>) = (row.get(0), row.get(1));
    assert_eq!(state, "failed");
    let error = error.unwrap_or_default();
    assert!(error.contains("could not be delivered"), "{error}");
    assert!(cluster.log().contains("WARNING:  wal2arrow: snapshot 1 of the table"), "the WARNING in the server log");
    assert_eq!(follower.replica.completions, 0, "a failed snapshot never completes");
    assert!(follower.replica.len() < 100_000, "some chunks were lost: {} rows", follower.replica.len());

    // The stream went on: a change after it arrives and is confirmed.
    let after = current_lsn(&mut client);
    client.batch_execute("UPDATE items SET pad = 'after' WHERE id = 1").unwrap();
    eventually("the change after the failure", || follower.step() > after);
    eventually("the slot confirmed past it", || {
        follower.step();
        pg_test::e2e::confirmed(&mut client, "damaged") > after
    });
    // A new snapshot repairs the copy.
    client.batch_execute("SELECT cdc_snapshot('damaged')").unwrap();
    follow_while_snapshotting(&mut client, "damaged", std::slice::from_mut(&mut follower));
    eventually("the completion marker", || {
        follower.step();
        follower.replica.completions == 1
    });
    follower.replica.assert_equals(&mut client, "items");
}

/// `pgcdc tail --create` on a table that has rows shows them as `r` rows,
/// then that the table's snapshot is complete, then the changes.
#[test]
fn the_cli_tails_the_snapshot_then_the_changes() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("tail");
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text); INSERT INTO t VALUES (1, 'ada'), (2, 'grace')")
        .unwrap();
    let conninfo = cluster.conninfo("tail");
    let tail = std::process::Command::new(pg_test::e2e::cli())
        .args(["tail", "--conninfo", &conninfo, "--slot", "tail", "--create", "--limit", "3", "public.t"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the snapshot done", || snapshot_states(&mut client, "tail") == [("t".to_owned(), "done".to_owned())]);
    client.batch_execute("INSERT INTO t VALUES (3, 'edsger')").unwrap();
    let output = tail.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let (snapshot, changes) = text.split_once("public.t: snapshot complete\n").unwrap_or_else(|| panic!("{text}"));
    assert!(snapshot.contains("| r   |") && snapshot.contains("grace") && !snapshot.contains("edsger"), "{text}");
    assert!(changes.contains("| c   |") && changes.contains("edsger"), "{text}");
}

/// Re-running `cdc_auto_configure` with another table snapshots the table
/// that joins, and not again the ones the stream had.
#[test]
fn a_table_that_joins_the_stream_is_snapshotted_when_it_joins() {
    let cluster = cluster();
    let mut client = cluster.database_with_pgcdc("joins");
    client
        .batch_execute(
            "CREATE TABLE first (id int PRIMARY KEY, v text); INSERT INTO first SELECT i, 'f' FROM generate_series(1, 3000) i;
             CREATE TABLE later (id int PRIMARY KEY, v text); INSERT INTO later SELECT i, 'l' FROM generate_series(1, 7000) i;",
        )
        .unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.first', slot_name => 'joins')");
    let mut followers = vec![Follower::open(&ring(&routes, "public.first"), &["id"])];
    follow_while_snapshotting(&mut client, "joins", &mut followers);

    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure(ARRAY['public.first', 'public.later'], slot_name => 'joins')",
    );
    followers.push(Follower::open(&ring(&routes, "public.later"), &["id"]));
    follow_while_snapshotting(&mut client, "joins", &mut followers);
    let before = current_lsn(&mut client);
    client.batch_execute("UPDATE first SET v = 'last' WHERE id = 1; UPDATE later SET v = 'last' WHERE id = 1").unwrap();
    follow_past(&mut followers, before);
    assert_eq!(
        snapshot_states(&mut client, "joins"),
        [("first".to_owned(), "done".to_owned()), ("later".to_owned(), "done".to_owned())],
        "one snapshot each"
    );
    for (follower, (table, rows)) in followers.iter().zip([("first", 3000), ("later", 7000)]) {
        follower.replica.assert_equals(&mut client, table);
        assert_eq!((follower.replica.reads, follower.replica.completions), (rows, 1), "{table}");
    }
}

//! The worker: cdc_auto_configure starts it, it streams each table into its
//! ring, readers acknowledge, and the slot follows the acknowledgements.

use pg_test::values::{ints, ops, strings};
use pg_test::{parse_lsn, Cluster};
use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use postgres::Client;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The rows of several batches of one schema, as one batch.
fn arrow_select_concat(batches: &[arrow_array::RecordBatch]) -> arrow_array::RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).unwrap()
}

fn lsn(client: &mut Client, sql: &str) -> u64 {
    let text: Option<String> = client.query_one(sql, &[]).unwrap().get(0);
    text.map(|t| parse_lsn(&t)).unwrap_or(0)
}

/// Polls `check` until it holds or WAIT passes.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn configure(client: &mut Client, sql: &str) -> Vec<(String, PathBuf)> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| (format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)), PathBuf::from(r.get::<_, String>(3))))
        .collect()
}

#[test]
fn changes_flow_into_rings_and_acknowledgements_move_the_slot() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("stream");
    client
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text);
             CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2));
             CREATE TABLE noise (id bigserial PRIMARY KEY, pad text);",
        )
        .unwrap();
    // Batch by batch, as the worker writes them: without a snapshot's
    // completion marker among them (tests/snapshots.rs has those).
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure(ARRAY['public.users', 'public.orders'], slot_name => 'live', snapshot => 'never')",
    );
    assert_eq!(routes.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["public.orders", "public.users"]);
    assert!(routes.iter().all(|(_, p)| p.starts_with(cluster.ring_directory())), "{routes:?}");
    let worker: i64 = client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgcdc worker'", &[])
        .unwrap()
        .get(0);
    assert!(worker <= 1);

    client
        .batch_execute("INSERT INTO users VALUES (1, 'ada'), (2, 'bob'); INSERT INTO orders VALUES (10, 1.50)")
        .unwrap();
    client.batch_execute("UPDATE users SET name = 'ADA' WHERE id = 1").unwrap();
    let mut orders = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    let mut users = ChangeReader::open_waiting(&routes[1].1, "default", WAIT).unwrap();
    // The insert and the update, in one batch or two (the worker batches
    // transactions that arrive together).
    let mut user_batches = vec![users.next_batch(WAIT).unwrap().expect("the insert")];
    while user_batches.iter().map(|b| b.num_rows()).sum::<usize>() < 3 {
        user_batches.push(users.next_batch(WAIT).unwrap().expect("the update"));
    }
    let user_rows = arrow_select_concat(&user_batches);
    assert_eq!(ints(&user_rows, "id"), [Some(1), Some(2), Some(1)]);
    assert_eq!(ops(&user_rows), ["c", "c", "u"]);
    assert_eq!(strings(&user_rows, "name")[2], Some("ADA".into()));
    let commits = pg_test::values::u64s(&user_rows, "_commit_lsn");
    assert!(commits[0] == commits[1] && commits[1] < commits[2], "two transactions: {commits:?}");
    let order = orders.next_batch(WAIT).unwrap().expect("the order");
    assert_eq!(ints(&order, "id"), [Some(10)]);
    assert!(users.next_batch(Duration::from_millis(200)).unwrap().is_none(), "nothing more");

    // cdc_status sees the unacknowledged rows, the worker and the reader.
    let users_status = |c: &mut Client| {
        let row = c
            .query_one(
                "SELECT worker_pid, ring_fill_bytes, ring_capacity_bytes, consumers, lag_seconds, slot_lag_bytes
                 FROM cdc_status() WHERE route = 'public.users'",
                &[],
            )
            .unwrap();
        (
            row.get::<_, Option<i32>>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, Vec<String>>(3),
            row.get::<_, f64>(4),
        )
    };
    let (pid, fill, capacity, consumers, _) = users_status(&mut client);
    assert!(pid.is_some(), "the worker runs");
    assert!(fill > 0, "two frames wait for acknowledgement");
    assert_eq!(capacity, 16 << 20);
    assert_eq!(consumers.len(), 1);
    let behind = format!("default (pid {}, {fill} bytes behind, idle ", std::process::id());
    assert!(consumers[0].starts_with(&behind), "{consumers:?}: who holds the ring back, and how much");
    eventually("the lag to show", || users_status(&mut client).4 > 0.0);

    // The slot confirms only what both readers acknowledged.
    let slot_lsn =
        |c: &mut Client| lsn(c, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'live'");
    let first_commit = commits[0];
    let last_commit = commits[2];
    orders.ack(max_commit_lsn(&order).unwrap());
    users.ack(first_commit);
    eventually("the slot to reach the first commit", || slot_lsn(&mut client) >= first_commit);
    std::thread::sleep(Duration::from_millis(300));
    assert!(slot_lsn(&mut client) < last_commit, "the unacknowledged update holds the slot back");
    users.ack(last_commit);
    eventually("the slot to pass the update", || slot_lsn(&mut client) >= last_commit);
    eventually("the ring to drain", || {
        let (_, fill, _, _, lag) = users_status(&mut client);
        fill == 0 && lag == 0.0
    });

    // Caught-up readers of quiet tables do not hold WAL while other tables
    // write plenty of it.
    client.batch_execute("INSERT INTO noise (pad) SELECT repeat('x', 200) FROM generate_series(1, 100000)").unwrap();
    let written = lsn(&mut client, "SELECT pg_current_wal_lsn()::text");
    eventually("the slot to pass the noise", || slot_lsn(&mut client) >= written);
    client.batch_execute("CHECKPOINT").unwrap();
    eventually("restart_lsn to follow", || {
        let retained: i64 = client
            .query_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = 'live'", &[])
            .unwrap()
            .get(0);
        retained < 4 << 20
    });
    assert!(users.next_batch(Duration::from_millis(200)).unwrap().is_none(), "noise is not routed to users");
}

#[test]
fn preloaded_pgcdc_restarts_every_stream_with_the_server() {
    let cluster = Cluster::start_with(pg_test::Settings::default().with("shared_preload_libraries", "'pgcdc'"));
    let mut client = cluster.database_with_pgcdc("preload");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'kept', snapshot => 'never')",
    );
    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    client.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    let batch = reader.next_batch(WAIT).unwrap().expect("before the restart");
    assert_eq!(ints(&batch, "id"), [Some(1)]);
    reader.ack(max_commit_lsn(&batch).unwrap());

    // A clean restart ends the dynamic worker; the launcher brings it back.
    cluster.restart();
    let mut client = cluster.connect_to("preload");
    eventually("the launcher to start the stream's worker", || {
        client
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgcdc worker'", &[])
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    });
    client.batch_execute("INSERT INTO t VALUES (2)").unwrap();
    let batch = reader.next_batch(WAIT).unwrap().expect("after the restart");
    assert_eq!(ints(&batch, "id"), [Some(2)], "the reader kept its place across the restart");
}

#[test]
fn a_table_split_by_key_keeps_every_keys_changes_together_and_in_order() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("split");
    client.batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)").unwrap();
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.accounts', slot_name => 'split', partitions => 3)",
    );
    assert_eq!(routes.len(), 3, "three routes for one table");
    assert!(routes.iter().all(|(t, _)| t == "public.accounts"));
    let relid: i64 = client.query_one("SELECT 'accounts'::regclass::oid::int8", &[]).unwrap().get(0);
    let names: Vec<String> =
        routes.iter().map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, (0..3).map(|k| format!("{relid}-{k}.ring")).collect::<Vec<_>>(), "named by OID and partition");
    let (message, _) = {
        let e = client
            .batch_execute("SELECT * FROM cdc_auto_configure('public.accounts', slot_name => 'x', partitions => 0)")
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        (db.message().to_owned(), ())
    };
    assert_eq!(message, "partitions must be from 1 to 64, not 0");

    client
        .batch_execute(
            "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 300) g;
             UPDATE accounts SET balance = balance + 1;
             UPDATE accounts SET balance = balance + 1 WHERE id % 2 = 0;
             DELETE FROM accounts WHERE id % 3 = 0;
             TRUNCATE accounts;",
        )
        .unwrap();
    let mut seen: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut truncates = 0;
    let mut total = 0;
    for (k, (_, path)) in routes.iter().enumerate() {
        let mut reader = ChangeReader::open_waiting(path, "default", WAIT).unwrap();
        let mut rows: Vec<(String, Option<i64>, Option<i64>)> = Vec::new();
        let deadline = Instant::now() + WAIT;
        while !rows.iter().any(|r| r.0 == "t") && Instant::now() < deadline {
            if let Some(batch) = reader.next_batch(Duration::from_millis(500)).unwrap() {
                let ops = ops(&batch);
                let ids = ints(&batch, "id");
                let balances = ints(&batch, "balance");
                rows.extend((0..batch.num_rows()).map(|i| (ops[i].clone(), ids[i], balances[i])));
            }
        }
        truncates += rows.iter().filter(|r| r.0 == "t").count();
        // Each key's changes sit in one partition, in the order they happened.
        let mut per_key: std::collections::HashMap<i64, Vec<(String, Option<i64>)>> = std::collections::HashMap::new();
        for (op, id, balance) in rows.iter().filter(|r| r.0 != "t") {
            per_key.entry(id.unwrap()).or_default().push((op.clone(), *balance));
            total += 1;
        }
        for (id, changes) in per_key {
            assert!(seen.insert(id, k).is_none(), "key {id} appears in two partitions");
            let mut expected = vec![("c".to_owned(), Some(0)), ("u".to_owned(), Some(1))];
            if id % 2 == 0 {
                expected.push(("u".to_owned(), Some(2)));
            }
            if id % 3 == 0 {
                expected.push(("d".to_owned(), None));
            }
            assert_eq!(changes, expected, "key {id}");
        }
    }
    assert_eq!(seen.len(), 300, "every key once");
    assert_eq!(total, 300 + 300 + 150 + 100);
    assert_eq!(truncates, 3, "a TRUNCATE reaches every partition");
    let spread: Vec<usize> = (0..3).map(|k| seen.values().filter(|p| **p == k).count()).collect();
    assert!(spread.iter().all(|n| *n > 50), "keys spread over partitions: {spread:?}");
}

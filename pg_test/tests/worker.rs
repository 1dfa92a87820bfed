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
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure(ARRAY['public.users', 'public.orders'], slot_name => 'live')",
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
    assert_eq!(consumers, [format!("default (pid {})", std::process::id())]);
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
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'kept')");
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

//! Slots in production (issue 12): a slot PostgreSQL invalidates because
//! its stream fell further behind than `max_slot_wal_keep_size` stops the
//! stream with one clear log line and a `cdc_status()` that says what to
//! do, never a restart loop; running `cdc_auto_configure` again makes a
//! new slot, and a consumer that applies its route in order ends with
//! exactly the table (a `t` row voids its copy, the table's rows come again
//! as `r` rows), deletes made while the slot was lost included.

use pg_test::e2e::{configure, eventually, worker_pid};
use pg_test::replica::{follow_past, follow_while_snapshotting, ring, snapshot_states, Follower};
use pg_test::{Cluster, Settings};
use std::time::{Duration, Instant};

#[test]
fn an_invalidated_slot_stops_the_stream_clearly_and_a_new_configure_rebuilds_it_exactly() {
    let cluster = Cluster::start_with(
        Settings::default()
            .with("max_slot_wal_keep_size", "'32MB'")
            .with("max_wal_size", "'64MB'")
            .with("pgcdc.ring_size", "1"),
    );
    let mut client = cluster.database_with_pgcdc("lost");
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT i, 'first' FROM generate_series(1, 1000) i;
             CREATE TABLE filler (b text);",
        )
        .unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'lost')");
    let mut followers = [Follower::open(&ring(&routes, "public.t"), &["id"])];
    follow_while_snapshotting(&mut client, "lost", &mut followers);

    // The consumer stops reading: the ring (1 MB) fills, the worker waits,
    // the slot stays behind while WAL grows past what it may keep.
    client.batch_execute("UPDATE t SET v = repeat('x', 2000) WHERE id <= 1000").unwrap();
    client.batch_execute("DELETE FROM t WHERE id <= 100").unwrap();
    let invalidated = Instant::now() + Duration::from_secs(120);
    loop {
        client
            .batch_execute(
                "INSERT INTO filler SELECT repeat('f', 1000) FROM generate_series(1, 20000);
                 SELECT pg_switch_wal(); CHECKPOINT;",
            )
            .unwrap();
        let status: Option<String> = client
            .query_one("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lost'", &[])
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(Instant::now() < invalidated, "the slot was never invalidated (wal_status {status:?})");
    }
    // Changes made while the slot is lost.
    client.batch_execute("DELETE FROM t WHERE id > 900; INSERT INTO t VALUES (5000, 'while lost')").unwrap();

    // The worker stops, says why and what to do, and stays stopped.
    eventually("the worker stopped", || worker_pid(&mut client, "lost").is_none());
    eventually("the worker's log line", || cluster.log().contains("pgcdc worker: stream \"lost\" stops"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(worker_pid(&mut client, "lost"), None, "no restart loop");
    let log = cluster.log();
    let line = log.lines().find(|l| l.contains("pgcdc worker: stream \"lost\" stops")).unwrap();
    assert!(
        line.contains("was invalidated")
            && line.contains("max_slot_wal_keep_size")
            && line.contains("cdc_auto_configure"),
        "{line}"
    );
    let stopped_lines = log.matches("pgcdc worker: stream \"lost\" stops").count();
    let (wal_status, problem): (Option<String>, Option<String>) = client
        .query_one("SELECT slot_wal_status, problem FROM cdc_status() WHERE slot_name = 'lost'", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(wal_status.as_deref(), Some("lost"));
    let problem = problem.expect("cdc_status says what is wrong");
    assert!(problem.contains("invalidated") && problem.contains("Run cdc_auto_configure"), "{problem}");

    // Configured again: a new slot, a `t` row, the table again.
    let (mut configuring, notices) = cluster.connect_collecting_notices("lost", "postgres");
    configure(&mut configuring, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'lost')");
    let said = notices.lock().unwrap().join("\n");
    assert!(said.contains("had lost its replication slot") && said.contains("`t` row"), "{said}");
    let problem: Option<String> =
        client.query_one("SELECT problem FROM cdc_status() WHERE slot_name = 'lost'", &[]).map(|r| r.get(0)).unwrap();
    assert_eq!(problem, None, "the stream runs again");
    follow_while_snapshotting(&mut client, "lost", &mut followers);
    let before = pg_test::e2e::current_lsn(&mut client);
    client.batch_execute("UPDATE t SET v = 'last' WHERE id = 5000").unwrap();
    follow_past(&mut followers, before);
    followers[0].replica.assert_equals(&mut client, "t");
    assert!(followers[0].replica.truncates >= 1, "the route said the consumer's copy was void");
    assert_eq!(snapshot_states(&mut client, "lost")[0], ("t".to_owned(), "done".to_owned()));
    assert_eq!(
        cluster.log().matches("pgcdc worker: stream \"lost\" stops").count(),
        stopped_lines,
        "one log line for the invalidation"
    );
}

/// `failover => true` makes a failover slot on PostgreSQL 17 and later
/// (kept when the stream is configured again, refused when asked unlike
/// the slot), and is a clear error before 17.
#[test]
fn failover_slots_on_17_and_later_and_a_clear_refusal_before() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("fo");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let version: i32 = client.query_one("SELECT current_setting('server_version_num')::int", &[]).unwrap().get(0);
    let asked = client.query("SELECT * FROM cdc_auto_configure('public.t', slot_name => 'fo', failover => true)", &[]);
    if version < 170000 {
        let error = asked.expect_err("no failover slots before 17");
        let db = error.as_db_error().expect("a PostgreSQL error");
        assert!(db.message().starts_with("failover slots need PostgreSQL 17 or later; this server runs"), "{db:?}");
        assert!(db.hint().is_some_and(|h| h.contains("Leave failover false")), "{db:?}");
        let made: i64 = client.query_one("SELECT count(*) FROM pg_replication_slots", &[]).unwrap().get(0);
        assert_eq!(made, 0, "no slot was made");
        return;
    }
    asked.expect("a failover slot");
    let failover = |client: &mut postgres::Client| -> bool {
        client.query_one("SELECT failover FROM pg_replication_slots WHERE slot_name = 'fo'", &[]).unwrap().get(0)
    };
    assert!(failover(&mut client));
    // Configured again without saying: as it was made.
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'fo')");
    assert!(failover(&mut client));
    let error = client
        .query("SELECT * FROM cdc_auto_configure('public.t', slot_name => 'fo', failover => false)", &[])
        .expect_err("a slot's failover property is fixed");
    let db = error.as_db_error().unwrap();
    assert_eq!(db.message(), "replication slot \"fo\" exists and is a failover slot");
    assert!(db.hint().is_some_and(|h| h.contains("cdc_drop('fo')")), "{db:?}");
    // A stream without failover makes an ordinary slot.
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'plain')");
    let plain: bool =
        client.query_one("SELECT failover FROM pg_replication_slots WHERE slot_name = 'plain'", &[]).unwrap().get(0);
    assert!(!plain);
}

//! Rings under stress: changes larger than a ring, rings whose size setting
//! changed, and two clusters sharing one ring directory.

use pg_test::e2e::{all_ints, assert_ids, configure, consume_acking, crash_server, WAIT};
use pg_test::{Cluster, Settings};
use pgcdc_reader::ChangeReader;
use std::time::Duration;

const QUIET: Duration = Duration::from_secs(5);

#[test]
fn a_change_larger_than_the_ring_gets_through() {
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("huge");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'huge')");
    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    // More than half the 1 MB ring, then three times the ring, then a small row.
    client
        .batch_execute(
            "INSERT INTO t VALUES (1, repeat('a', 700000));
             INSERT INTO t VALUES (2, repeat('b', 3000000));
             INSERT INTO t VALUES (3, 'small');",
        )
        .unwrap();
    let batches = consume_acking(&mut reader, 3, QUIET);
    assert_eq!(all_ints(&batches, "id"), [1, 2, 3]);
    let lengths: Vec<usize> =
        batches.iter().flat_map(|b| pg_test::values::strings(b, "v")).map(|v| v.unwrap().len()).collect();
    assert_eq!(lengths, [700_000, 3_000_000, 5], "whole values");
}

#[test]
fn a_larger_ring_size_setting_does_not_break_existing_rings() {
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("resize");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'resize')");
    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    client.batch_execute("INSERT INTO t VALUES (0, 'before')").unwrap();
    assert_eq!(all_ints(&consume_acking(&mut reader, 1, QUIET), "id"), [0]);

    // New rings get the new size; the worker, restarted, keeps this one.
    client.batch_execute("ALTER SYSTEM SET pgcdc.ring_size = '64MB'").unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    pg_test::e2e::eventually("the new setting", || {
        client.query_one("SHOW pgcdc.ring_size", &[]).unwrap().get::<_, String>(0) == "64MB"
    });
    let conninfo = cluster.conninfo("resize");
    let mut client = crash_server(&mut client, &conninfo);
    client.batch_execute("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g").unwrap();
    let batches = consume_acking(&mut reader, 100_000, QUIET);
    assert_ids(&all_ints(&batches, "id"), 1..=100_000, "every row after the resize");
}

#[test]
fn two_clusters_sharing_a_ring_directory_keep_their_own_rings() {
    let first = Cluster::start();
    let shared = first.ring_directory();
    let second =
        Cluster::start_with(Settings::default().with("pgcdc.ring_directory", &format!("'{}'", shared.display())));
    let mut readers = Vec::new();
    for (cluster, rows) in [(&first, 300), (&second, 5)] {
        let mut client = cluster.database_with_pgcdc("app");
        client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
        let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 's')");
        let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
        client.batch_execute(&format!("INSERT INTO t SELECT generate_series(1, {rows})")).unwrap();
        let batches = consume_acking(&mut reader, rows, QUIET);
        assert_ids(&all_ints(&batches, "id"), 1..=rows as i64, "every row of its own cluster");
        readers.push((reader, client));
    }
    for (i, (reader, client)) in readers.iter_mut().enumerate() {
        client.batch_execute(&format!("INSERT INTO t VALUES ({})", 1000 + i)).unwrap();
        assert_eq!(all_ints(&consume_acking(reader, 1, QUIET), "id"), [1000 + i as i64], "cluster {i} goes on alone");
    }
}

#[test]
fn a_ring_of_another_history_is_replaced_and_its_readers_move_to_the_new_one() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("history");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'history')");
    let path = routes[0].1.clone();
    // As after a restore of an older backup: the consumer acknowledged far
    // beyond the end of this server's WAL.
    let far = 1 << 60;
    let mut old =
        pgcdc_reader::ring::RingReader::attach(pgcdc_reader::ring::file::open(&path).unwrap(), "default").unwrap();
    old.ack_through(pgcdc_reader::Position::end_of(far), far);
    let mut reader = ChangeReader::open(&path, "default").unwrap();
    assert_eq!(reader.position(), pgcdc_reader::Position::end_of(far));

    // The worker, restarting, replaces the ring; the reader follows.
    let conninfo = cluster.conninfo("history");
    let mut client = crash_server(&mut client, &conninfo);
    client.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    let got = all_ints(&consume_acking(&mut reader, 1, WAIT), "id");
    assert_eq!(got, [1], "the new row, in the new ring\n{}", cluster.log());
    assert!(cluster.log().contains("replacing ring"), "the server log says why");
}

//! Named consumers: registered explicitly (in SQL and through the reader
//! crate), each holding back only its own position, visible in
//! `cdc_consumers()`, and dropped from SQL.

use pg_test::e2e::{all_ints, configure, confirmed, consume_acking, current_lsn, eventually, WAIT};
use pg_test::Cluster;
use pgcdc_reader::client;
use pgcdc_reader::ring::RingError;
use pgcdc_reader::{ChangeReader, ReadError};
use postgres::Client;
use std::time::Duration;

const QUIET: Duration = Duration::from_secs(3);

/// (consumer, holds back, lag bytes) of every consumer of the stream.
fn consumers(client: &mut Client, slot: &str) -> Vec<(String, bool, i64)> {
    client
        .query("SELECT consumer, holds_back, lag_bytes FROM cdc_consumers() WHERE slot_name = $1 ORDER BY 1", &[&slot])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn each_consumer_holds_back_only_its_own_position_until_it_is_dropped() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("named");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let routes =
        configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'named', consumer => 'app')");
    let ring = routes[0].1.clone();

    // Only registered names attach.
    match ChangeReader::open(&ring, "default") {
        Err(ReadError::Ring(RingError::NotRegistered(name))) => assert_eq!(name, "default"),
        other => panic!("an unregistered consumer attached: {:?}", other.map(|_| ())),
    }
    assert!(client::register_consumer(&cluster.conninfo("named"), "named", "audit").unwrap(), "a new consumer");
    assert!(!client::register_consumer(&cluster.conninfo("named"), "named", "audit").unwrap(), "already registered");
    // A registration rolled back leaves no trace in the rings.
    client.batch_execute("BEGIN; SELECT cdc_register_consumer('named', 'ghost'); ROLLBACK").unwrap();
    assert!(matches!(ChangeReader::open(&ring, "ghost"), Err(ReadError::Ring(RingError::NotRegistered(_)))));

    let mut app = ChangeReader::open(&ring, "app").unwrap();
    client.batch_execute("INSERT INTO t SELECT generate_series(1, 100)").unwrap();
    let written = current_lsn(&mut client);
    assert_eq!(all_ints(&consume_acking(&mut app, 100, QUIET), "id"), (1..=100).collect::<Vec<_>>());

    // `audit` never reads: it holds the slot back, and says so.
    std::thread::sleep(Duration::from_millis(500));
    assert!(confirmed(&mut client, "named") < written, "audit holds the slot");
    let status = consumers(&mut client, "named");
    assert_eq!(status.iter().map(|c| (c.0.as_str(), c.1)).collect::<Vec<_>>(), [("app", false), ("audit", true)]);
    assert!(status[1].2 > 0, "audit's lag in bytes: {status:?}");

    // Dropped, it holds nothing, and the slot moves on.
    client.batch_execute("SELECT cdc_drop_consumer('named', 'audit')").unwrap();
    eventually("the slot to follow app alone", || confirmed(&mut client, "named") >= written);
    assert_eq!(consumers(&mut client, "named").iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["app"]);
    let e = client.batch_execute("SELECT cdc_drop_consumer('named', 'audit')").unwrap_err();
    assert_eq!(e.as_db_error().unwrap().message(), "stream \"named\" has no consumer \"audit\"");

    // A consumer registered later gets the changes committed after it.
    client.batch_execute("SELECT cdc_register_consumer('named', 'late')").unwrap();
    client.batch_execute("INSERT INTO t VALUES (101)").unwrap();
    let mut late = ChangeReader::open_waiting(&ring, "late", WAIT).unwrap();
    assert_eq!(all_ints(&consume_acking(&mut late, 1, QUIET), "id"), [101]);
}

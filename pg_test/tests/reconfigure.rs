//! Reconfiguration and routing: a change of a published table is never
//! dropped for lack of a route — across reconfiguring transactions,
//! renames, `cdc_drop` rolled back, and the CLI.

use pg_test::e2e::{all_ints, assert_ids, cli, configure, confirmed, consume_acking, current_lsn, eventually, WAIT};
use pg_test::Cluster;
use pgcdc_reader::ChangeReader;
use std::process::Command;
use std::time::Duration;

const QUIET: Duration = Duration::from_secs(3);

/// The ring of `table` in the stream `slot`, as `cdc_auto_configure` reports it.
fn ring_of(client: &mut postgres::Client, sql: &str, route: &str) -> std::path::PathBuf {
    configure(client, sql).into_iter().find(|(r, _)| r == route).unwrap_or_else(|| panic!("no route {route}")).1
}

#[test]
fn reconfiguring_inside_a_transaction_loses_no_change_of_the_added_table() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("reconf");
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    // Nobody reads `a` here: without a snapshot, no completion marker of
    // it waits in its ring to hold the slot back.
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.a', slot_name => 'reconf', snapshot => 'never')");
    // As a migration tool runs it: inside a transaction that takes a while.
    client.batch_execute("BEGIN").unwrap();
    let b = ring_of(
        &mut client,
        "SELECT * FROM cdc_auto_configure(ARRAY['public.a', 'public.b'], slot_name => 'reconf')",
        "public.b",
    );
    client.batch_execute("SELECT pg_sleep(1); COMMIT").unwrap();
    client.batch_execute("INSERT INTO b SELECT generate_series(1, 1000)").unwrap();
    let written = current_lsn(&mut client);

    let mut reader = ChangeReader::open_waiting(&b, "default", WAIT).unwrap();
    let batches = consume_acking(&mut reader, 1000, QUIET);
    assert_ids(&all_ints(&batches, "id"), 1..=1000, "every change of b");
    eventually("the slot to follow the acknowledgements", || confirmed(&mut client, "reconf") >= written);
}

#[test]
fn a_renamed_table_keeps_its_route() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("rename");
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY)").unwrap();
    let ring = ring_of(&mut client, "SELECT * FROM cdc_auto_configure('public.a', slot_name => 'rename')", "public.a");
    client.batch_execute("INSERT INTO a VALUES (1); ALTER TABLE a RENAME TO a2; INSERT INTO a2 VALUES (2)").unwrap();
    let mut reader = ChangeReader::open_waiting(&ring, "default", WAIT).unwrap();
    let batches = consume_acking(&mut reader, 2, QUIET);
    assert_eq!(all_ints(&batches, "id"), [1, 2], "changes before and after the rename");
    let last = batches.last().unwrap();
    assert_eq!(last.schema().metadata().get("pgcdc.table").map(String::as_str), Some("a2"), "the new name");
}

#[test]
fn a_rolled_back_cdc_drop_leaves_the_stream_working() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("undrop");
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY)").unwrap();
    let ring = ring_of(&mut client, "SELECT * FROM cdc_auto_configure('public.a', slot_name => 'undrop')", "public.a");
    client.batch_execute("INSERT INTO a VALUES (1)").unwrap();
    let mut reader = ChangeReader::open_waiting(&ring, "default", WAIT).unwrap();
    assert_eq!(all_ints(&consume_acking(&mut reader, 1, QUIET), "id"), [1]);
    drop(reader);
    client.batch_execute("BEGIN; SELECT cdc_drop('undrop'); ROLLBACK").unwrap();
    assert!(ring.exists(), "the ring is still there");
    client.batch_execute("INSERT INTO a VALUES (2)").unwrap();
    let mut reader = ChangeReader::open(&ring, "default").unwrap();
    assert_eq!(all_ints(&consume_acking(&mut reader, 1, QUIET), "id"), [2], "the stream goes on");
}

/// The tables of a publication.
fn published(client: &mut postgres::Client, publication: &str) -> Vec<String> {
    client
        .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1", &[&publication])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn tail(conninfo: &str, args: &[&str]) -> String {
    let output = Command::new(cli()).arg("tail").args(["--conninfo", conninfo]).args(args).output().unwrap();
    assert!(output.status.success(), "pgcdc tail {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn tail_reads_an_existing_stream_without_changing_it_and_resumes_where_it_stopped() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("tailing");
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    configure(&mut client, "SELECT * FROM cdc_auto_configure('public.*', slot_name => 'pgcdc')");
    let conninfo = cluster.conninfo("tailing");
    client.batch_execute("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); COMMIT").unwrap();

    // One change shown; the other table stays in the stream.
    let first = tail(&conninfo, &["--limit", "1", "public.a", "public.b"]);
    assert!(first.contains("public.a: 1 change(s)"), "{first}");
    assert_eq!(published(&mut client, "pgcdc"), ["a", "b"], "tail left the stream as it was");
    // The next run shows what the first did not.
    let second = tail(&conninfo, &["--limit", "1", "public.a", "public.b"]);
    assert!(second.contains("public.b: 1 change(s)"), "{second}");
}

//! Acknowledgement is safe by construction: the README's consumer pattern
//! (`reader.ack(max_commit_lsn(&batch))` after each batch) never skips a
//! row, whatever the batches cut, whatever restarts.

use pg_test::e2e::{
    all_ints, assert_ids, configure, confirmed, consume_acking, crash_server, eventually, row_count, WAIT,
};
use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::client::{self, auto_configure_with};
use pgcdc_reader::ChangeReader;
use std::io::Write;
use std::time::Duration;

const QUIET: Duration = Duration::from_secs(3);

#[test]
fn a_reader_restarted_inside_a_transaction_larger_than_a_batch_gets_the_rest_of_it() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("spanning");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'spanning')");
    // 150000 rows in one transaction: more than one batch (65536 rows).
    client.batch_execute("INSERT INTO t SELECT generate_series(1, 150000)").unwrap();

    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    let first = reader.next_batch(WAIT).unwrap().expect("the first batch");
    assert!(first.num_rows() < 150_000, "the transaction spans batches");
    reader.ack(max_commit_lsn(&first).unwrap());
    drop(reader);

    // A restarted consumer continues inside the transaction.
    let mut reader = ChangeReader::open(&routes[0].1, "default").unwrap();
    let rest = consume_acking(&mut reader, 150_000 - first.num_rows(), QUIET);
    let mut ids = all_ints(std::slice::from_ref(&first), "id");
    ids.extend(all_ints(&rest, "id"));
    assert_ids(&ids, 1..=150_000, "every row once, in order");
}

#[test]
fn rows_of_one_multi_insert_record_share_an_lsn_and_all_arrive() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("copying");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'copying')");
    // COPY writes heap_multi_insert records: every row of a page shares
    // the record's LSN.
    let mut copy = client.copy_in("COPY t FROM STDIN").unwrap();
    for id in 1..=5000 {
        writeln!(copy, "{id}\trow {id}").unwrap();
    }
    copy.finish().unwrap();

    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    let batches = consume_acking(&mut reader, 5000, QUIET);
    let lsns: Vec<u64> = batches.iter().flat_map(|b| pg_test::values::u64s(b, "_lsn")).collect();
    assert!(lsns.windows(2).any(|w| w[0] == w[1]), "rows share an LSN");
    assert_ids(&all_ints(&batches, "id"), 1..=5000, "every copied row");

    // And a restarted reader does not get them again.
    drop(reader);
    client.batch_execute("INSERT INTO t VALUES (5001, 'after')").unwrap();
    let mut reader = ChangeReader::open(&routes[0].1, "default").unwrap();
    let after = consume_acking(&mut reader, 1, QUIET);
    assert_eq!(all_ints(&after, "id"), [5001]);
}

#[test]
fn rows_resent_after_a_server_crash_never_stall_the_stream() {
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("resend");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'resend')");
    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    // Several rings' worth of changes, read and acknowledged as they come.
    for chunk in 0..8 {
        client
            .batch_execute(&format!(
                "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({}, {}) g",
                chunk * 5000 + 1,
                (chunk + 1) * 5000
            ))
            .unwrap();
    }
    let seen = consume_acking(&mut reader, 40_000, QUIET);
    assert_eq!(row_count(&seen), 40_000);

    // After a crash restart the slot may resume from an older position
    // than the one acknowledged: the worker sends those rows again.
    let conninfo = cluster.conninfo("resend");
    let mut client = crash_server(&mut client, &conninfo);
    client.batch_execute("INSERT INTO t VALUES (40001, 'after the crash')").unwrap();
    let after = consume_acking(&mut reader, 1, Duration::from_secs(30));
    assert_eq!(all_ints(&after, "id"), [40001], "only the new row, and it arrives");
}

#[test]
fn a_named_consumer_is_the_only_one_holding_the_stream() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("named");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let conninfo = cluster.conninfo("named");
    let config = client::Config { consumer: "app".into(), slot: "named".into(), ..client::Config::new(&["public.t"]) };
    let mut readers = auto_configure_with(&conninfo, &config).unwrap();
    let reader = readers.get_mut("public.t").unwrap();
    client.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    let batches = consume_acking(reader, 1, QUIET);
    let commit = max_commit_lsn(&batches[0]).unwrap();
    // Nobody else was registered: the slot follows "app".
    eventually("the slot to confirm what app acknowledged", || confirmed(&mut client, "named") >= commit);
}

#[test]
fn the_readme_example_runs_as_written() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("readme");
    client.batch_execute("CREATE TABLE users (id int PRIMARY KEY, name text)").unwrap();
    let conninfo = cluster.conninfo("readme");
    let (sender, received) = std::sync::mpsc::channel();
    let example = std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        // README.md's example, with this cluster's connection string and a
        // channel to see what it read.
        let mut readers = pgcdc_reader::client::auto_configure(&conninfo, &["public.*"])?;
        let users = readers.get_mut("public.users").unwrap();
        while let Some(batch) = users.next() {
            let batch = batch?; // typed Arrow: one table, commit order
            users.ack(pgcdc_reader::changes::max_commit_lsn(&batch).unwrap());
            sender.send(batch)?;
        }
        Ok(())
    });
    eventually("the example to configure the stream", || {
        client.query("SELECT 1 FROM pgcdc.streams WHERE slot_name = 'pgcdc'", &[]).is_ok_and(|r| !r.is_empty())
    });
    // A transaction larger than a batch, then a small one.
    client.batch_execute("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100000) g").unwrap();
    client.batch_execute("INSERT INTO users VALUES (100001, 'last')").unwrap();
    let written = pg_test::e2e::current_lsn(&mut client);
    let mut batches = Vec::new();
    while row_count(&batches) < 100_001 {
        match received.recv_timeout(WAIT) {
            Ok(batch) => batches.push(batch),
            Err(e) => panic!("after {} rows: {e}; the example ended with {:?}", row_count(&batches), example.join()),
        }
    }
    assert_ids(&all_ints(&batches, "id"), 1..=100_001, "every row, once, in order");
    eventually("the slot to confirm what the example acknowledged", || confirmed(&mut client, "pgcdc") >= written);
}

#[test]
fn the_worker_saves_the_slot_so_a_crash_resends_little() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("saved");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE other (id int)").unwrap();
    let routes = configure(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'saved')");
    let mut reader = ChangeReader::open_waiting(&routes[0].1, "default", WAIT).unwrap();
    // A transaction left open keeps the slot's restart point where it is
    // once it reached it: PostgreSQL then has no reason of its own to save
    // the slot.
    let mut open = cluster.connect_to("saved");
    open.batch_execute("BEGIN; INSERT INTO other VALUES (1)").unwrap();
    for chunk in 0..2 {
        client
            .batch_execute(&format!("INSERT INTO t SELECT generate_series({}, {})", chunk * 300 + 1, chunk * 300 + 300))
            .unwrap();
        consume_acking(&mut reader, 300, QUIET);
        client.batch_execute("CHECKPOINT").unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    // Now nothing moves the restart point (the next snapshot of running
    // transactions comes in 15 s): only the worker saves the slot.
    client.batch_execute("INSERT INTO t SELECT generate_series(601, 1000)").unwrap();
    let batches = consume_acking(&mut reader, 400, QUIET);
    let commit = max_commit_lsn(batches.last().unwrap()).unwrap();
    eventually("the slot to confirm the acknowledged commit", || confirmed(&mut client, "saved") >= commit);
    // PostgreSQL writes a logical slot to disk only when its restart point
    // moves; the worker also saves it within a second of a confirmation.
    std::thread::sleep(Duration::from_secs(2));
    let written = |path: &std::path::Path| pgcdc_reader::ring::file::open(path).unwrap().status().write_pos;
    let before = written(&routes[0].1);
    let conninfo = cluster.conninfo("saved");
    let mut client = crash_server(&mut client, &conninfo);
    eventually("the worker to run again", || pg_test::e2e::worker_pid(&mut client, "saved").is_some());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(written(&routes[0].1), before, "after the crash the worker sent nothing again");
    assert!(confirmed(&mut client, "saved") >= commit);
    client.batch_execute("INSERT INTO t VALUES (1001)").unwrap();
    assert_eq!(all_ints(&consume_acking(&mut reader, 1, WAIT), "id"), [1001]);
}

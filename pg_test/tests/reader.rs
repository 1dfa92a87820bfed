//! The reader crate end to end: auto_configure, merged streams in commit
//! order, the async stream, partitioning, back-pressure and the CLI.

use arrow_array::RecordBatch;
use futures_core::Stream;
use pg_test::values::{ints, strings, u64s};
use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::client::{self, auto_configure, auto_configure_merged};
use pgcdc_reader::{contract, merge_streams, HashPartitioner};
use std::pin::Pin;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// (table, id) of every row, in order.
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64)> {
    batches
        .iter()
        .flat_map(|b| strings(b, contract::TABLE).into_iter().zip(ints(b, "id")).map(|(t, i)| (t.unwrap(), i.unwrap())))
        .collect()
}

/// (commit LSN, LSN) of every row, in order.
fn keys(batches: &[RecordBatch]) -> Vec<(u64, u64)> {
    batches.iter().flat_map(|b| u64s(b, contract::COMMIT_LSN).into_iter().zip(u64s(b, contract::LSN))).collect()
}

const INTERLEAVED: &str = "
    BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO a VALUES (2); COMMIT;
    INSERT INTO b VALUES (2);
    BEGIN; INSERT INTO b VALUES (3); INSERT INTO a VALUES (3); INSERT INTO b VALUES (4); COMMIT;";

fn expected_interleaving() -> Vec<(String, i64)> {
    [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3), ("b", 4)].map(|(t, i)| (t.to_owned(), i)).to_vec()
}

fn read_rows(next: &mut dyn FnMut() -> Option<RecordBatch>, count: usize) -> Vec<RecordBatch> {
    let deadline = Instant::now() + WAIT;
    let mut batches = Vec::new();
    while batches.iter().map(RecordBatch::num_rows).sum::<usize>() < count && Instant::now() < deadline {
        if let Some(batch) = next() {
            batches.push(batch);
        }
    }
    batches
}

#[test]
fn auto_configure_returns_a_reader_per_table_and_merges_in_commit_order() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("readers");
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    let conninfo = cluster.conninfo("readers");

    let mut readers = auto_configure(&conninfo, &["public.*"]).unwrap();
    assert_eq!(readers.keys().collect::<Vec<_>>(), ["public.a", "public.b"]);
    client.batch_execute(INTERLEAVED).unwrap();
    let a = read_rows(&mut || readers.get_mut("public.a").unwrap().next_batch(WAIT).unwrap(), 3);
    assert_eq!(rows(&a), [("a".to_owned(), 1), ("a".to_owned(), 2), ("a".to_owned(), 3)]);
    for reader in readers.values_mut() {
        reader.ack(keys(&a).last().unwrap().0);
    }

    // The same routes merged: row by row in commit and LSN order.
    let per_table: Vec<_> = std::mem::take(&mut readers).into_values().collect();
    drop(per_table);
    let mut readers = client::auto_configure_with(
        &conninfo,
        &client::Config { consumer: "merger".into(), ..client::Config::new(&["public.*"]) },
    )
    .unwrap();
    let merged_input = vec![readers.remove("public.a").unwrap(), readers.remove("public.b").unwrap()];
    let mut merged = merge_streams(merged_input);
    client.batch_execute("DELETE FROM a; DELETE FROM b").unwrap();
    client.batch_execute(INTERLEAVED).unwrap();
    let batches = read_rows(&mut || merged.next_batch(WAIT).unwrap(), 14);
    let all = rows(&batches);
    assert_eq!(all[7..], expected_interleaving()[..], "the inserts after the deletes");
    let k = keys(&batches);
    assert!(k.windows(2).all(|w| w[0] < w[1]), "strictly increasing (commit, lsn): {k:?}");

    // One merged route (route_by_table => false): the worker ends a message
    // wherever the table changes, so one ring holds the exact order.
    let mut single = auto_configure_merged(&conninfo, &["public.*"], "one_stream").unwrap();
    client.batch_execute("DELETE FROM a; DELETE FROM b").unwrap();
    client.batch_execute(INTERLEAVED).unwrap();
    let batches = read_rows(&mut || single.next_batch(WAIT).unwrap(), 14);
    let all = rows(&batches);
    assert_eq!(all[all.len() - 7..], expected_interleaving()[..], "the inserts after the deletes");
    let k = keys(&batches);
    assert!(k.windows(2).all(|w| w[0] < w[1]), "strictly increasing (commit, lsn): {k:?}");
    single.ack(k.last().unwrap().0);
}

#[test]
fn the_async_stream_yields_batches_and_acknowledges() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("async");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, region text)").unwrap();
    let conninfo = cluster.conninfo("async");
    let mut readers = auto_configure(&conninfo, &["public.t"]).unwrap();
    let mut stream = readers.remove("public.t").unwrap().into_stream();
    client
        .batch_execute("INSERT INTO t SELECT g, (ARRAY['eu','us','ap'])[1 + g % 3] FROM generate_series(1, 1000) g")
        .unwrap();
    let mut next = || {
        futures_executor::block_on(std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)))
            .expect("a batch")
            .unwrap()
    };
    // The empty table's snapshot completed as the stream was configured.
    assert!(pgcdc_reader::snapshot::completes_snapshot(&next()), "first the completion marker");
    let batch = next();
    assert_eq!(batch.num_rows(), 1000);
    assert_eq!(ints(&batch, "id")[999], Some(1000));

    // Parallel consumers by region: every row once, each region whole.
    let parts = HashPartitioner::new(&["region"], 4).partition(&batch).unwrap();
    assert_eq!(parts.iter().map(RecordBatch::num_rows).sum::<usize>(), 1000);
    for part in &parts {
        let regions: std::collections::HashSet<Option<String>> = strings(part, "region").into_iter().collect();
        for region in &regions {
            let everywhere = parts.iter().filter(|p| strings(p, "region").contains(region)).count();
            assert_eq!(everywhere, 1, "{region:?} is in one partition only");
        }
    }

    stream.ack(max_commit_lsn(&batch).unwrap());
    let confirmed = || {
        let mut c = cluster.connect_to("async");
        let text: String =
            c.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots", &[]).unwrap().get(0);
        pg_test::parse_lsn(&text)
    };
    let deadline = Instant::now() + WAIT;
    while confirmed() < max_commit_lsn(&batch).unwrap() {
        assert!(Instant::now() < deadline, "the acknowledgement reached the slot");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_full_ring_holds_decoding_back_and_loses_nothing() {
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_size", "1"));
    let mut client = cluster.database_with_pgcdc("pressure");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, pad text)").unwrap();
    let conninfo = cluster.conninfo("pressure");
    let mut readers = auto_configure(&conninfo, &["public.t"]).unwrap();
    let mut reader = readers.remove("public.t").unwrap();
    // About 20 MB of changes through a 1 MB ring nobody reads yet.
    for chunk in 0..20 {
        client
            .batch_execute(&format!(
                "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series({}, {}) g",
                chunk * 10_000 + 1,
                (chunk + 1) * 10_000
            ))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let status = client::status(&conninfo).unwrap();
    assert!(status[0].ring_fill_bytes > (status[0].ring_capacity_bytes * 3 / 4), "the ring filled up: {status:?}");
    let retained: i64 = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 FROM pg_replication_slots",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(retained > 10 << 20, "the slot holds the WAL the ring cannot take yet ({retained} bytes)");

    let mut next = 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    while next <= 200_000 && Instant::now() < deadline {
        if let Some(batch) = reader.next_batch(Duration::from_secs(1)).unwrap() {
            for id in ints(&batch, "id") {
                assert_eq!(id, Some(next), "every row once, in order");
                next += 1;
            }
            reader.ack(max_commit_lsn(&batch).unwrap());
        }
    }
    assert_eq!(next, 200_001);
}

#[test]
fn the_cli_tails_tables_and_shows_status() {
    let cli = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("pgcdc");
    assert!(cli.exists(), "{} is built by `cargo test --workspace` (the reader crate's `cli` feature)", cli.display());
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("cli");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text)").unwrap();
    let conninfo = cluster.conninfo("cli");
    let tail = std::process::Command::new(&cli)
        .args(["tail", "--conninfo", &conninfo, "--slot", "cli", "--create", "--limit", "3", "public.t"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The stream exists once the CLI configured it.
    let deadline = Instant::now() + WAIT;
    while client.query("SELECT 1 FROM pgcdc.streams WHERE slot_name = 'cli'", &[]).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the CLI configured the stream");
        std::thread::sleep(Duration::from_millis(50));
    }
    client
        .batch_execute("INSERT INTO t VALUES (1, 'ada'), (2, 'grace'); UPDATE t SET name = 'Ada' WHERE id = 1")
        .unwrap();
    let output = tail.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("public.t: 3 change(s)"), "{text}");
    assert!(text.contains("| c   |") && text.contains("| u   |") && text.contains("grace"), "{text}");

    let status = std::process::Command::new(&cli).args(["status", "--conninfo", &conninfo]).output().unwrap();
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(status.status.success(), "{text}");
    // `tail` reads one merged route, named after the slot.
    assert!(text.lines().any(|l| l.starts_with("cli ") && l.contains("default")), "{text}");
}

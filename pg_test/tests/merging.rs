//! `merge_streams` over per-table routes: every row once, in commit and LSN
//! order, however large the transactions.

use arrow_array::RecordBatch;
use pg_test::e2e::{configure, row_count, WAIT};
use pg_test::values::{strings, u64s};
use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::{contract, merge_streams, ChangeReader, MergedReader};
use std::time::{Duration, Instant};

/// Reads the merged stream with the README's pattern until `count` rows
/// came or nothing arrived for a while.
fn consume(merged: &mut MergedReader, count: usize) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while row_count(&batches) < count && Instant::now() < deadline {
        match merged.next_batch(Duration::from_secs(5)).unwrap() {
            Some(batch) => {
                merged.ack(max_commit_lsn(&batch).unwrap());
                batches.push(batch);
            }
            None => break,
        }
    }
    batches
}

fn merged_reader(cluster: &Cluster, database: &str, slot: &str) -> MergedReader {
    let mut client = cluster.database_with_pgcdc(database);
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY, pad text); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    let routes = configure(
        &mut client,
        &format!("SELECT * FROM cdc_auto_configure(ARRAY['public.a', 'public.b'], slot_name => '{slot}')"),
    );
    let readers =
        routes.iter().map(|(_, path)| ChangeReader::open_waiting(path, "default", WAIT).unwrap()).collect::<Vec<_>>();
    merge_streams(readers)
}

fn keys(batches: &[RecordBatch]) -> Vec<(u64, u64)> {
    batches.iter().flat_map(|b| u64s(b, contract::COMMIT_LSN).into_iter().zip(u64s(b, contract::LSN))).collect()
}

#[test]
fn a_merged_reader_delivers_every_row_of_a_transaction_spanning_batches() {
    let cluster = Cluster::start();
    let mut merged = merged_reader(&cluster, "spanning", "spanning");
    let mut client = cluster.connect_to("spanning");
    client
        .batch_execute(
            "INSERT INTO b VALUES (0); INSERT INTO a SELECT generate_series(1, 150000), NULL; INSERT INTO b VALUES (1)",
        )
        .unwrap();
    let batches = consume(&mut merged, 150_002);
    assert_eq!(row_count(&batches), 150_002, "every row");
    let k = keys(&batches);
    assert!(k.windows(2).all(|w| w[0] <= w[1]), "commit and LSN order");
    let tables: Vec<String> = batches.iter().flat_map(|b| strings(b, contract::TABLE)).map(Option::unwrap).collect();
    assert_eq!((tables[0].as_str(), tables[150_001].as_str()), ("b", "b"));
}

#[test]
fn a_merged_reader_gets_through_a_transaction_larger_than_a_ring() {
    let cluster = Cluster::start_with(Settings::default().with("pgcdc.ring_size", "1"));
    let mut merged = merged_reader(&cluster, "huge", "huge");
    let mut client = cluster.connect_to("huge");
    // About 6 MB of changes in one transaction, through 1 MB rings.
    client
        .batch_execute(
            "BEGIN; INSERT INTO b VALUES (1);
             INSERT INTO a SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g;
             INSERT INTO b VALUES (2); COMMIT;",
        )
        .unwrap();
    let batches = consume(&mut merged, 50_002);
    assert_eq!(row_count(&batches), 50_002, "every row of the transaction");
    let k = keys(&batches);
    assert!(k.windows(2).all(|w| w[0] <= w[1]), "commit and LSN order");
}

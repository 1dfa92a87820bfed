//! Key-hash partitions (`partitions => K`): the partition key is the
//! primary key (or replica identity index) also under REPLICA IDENTITY
//! FULL, and an update that changes the key tells the old key's partition.

use pg_test::e2e::{configure, WAIT};
use pg_test::values::{before_ints, ints, ops};
use pg_test::Cluster;
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::ChangeReader;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// (op, id, balance, old id) of a change.
type Change = (String, i64, Option<i64>, Option<i64>);

/// Every change per partition: until at least `done`
/// rows came, and then until nothing more arrives for a second.
fn read_partitions(paths: &[std::path::PathBuf], done: usize) -> Vec<Vec<Change>> {
    let mut readers: Vec<ChangeReader> =
        paths.iter().map(|p| ChangeReader::open_waiting(p, "default", WAIT).unwrap()).collect();
    let mut parts = vec![Vec::new(); paths.len()];
    let deadline = Instant::now() + WAIT;
    let mut quiet_since = Instant::now();
    while (parts.iter().map(Vec::len).sum::<usize>() < done || quiet_since.elapsed() < Duration::from_secs(1))
        && Instant::now() < deadline
    {
        for (k, reader) in readers.iter_mut().enumerate() {
            if let Some(batch) = reader.next_batch(Duration::from_millis(100)).unwrap() {
                quiet_since = Instant::now();
                let (ops, ids, balances, old) =
                    (ops(&batch), ints(&batch, "id"), ints(&batch, "balance"), before_ints(&batch, "id"));
                for i in 0..batch.num_rows() {
                    parts[k].push((ops[i].clone(), ids[i].unwrap(), balances[i], old[i]));
                }
                reader.ack(max_commit_lsn(&batch).unwrap());
            }
        }
    }
    parts
}

#[test]
fn a_full_identity_tables_keys_keep_their_whole_history_in_one_partition() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("full");
    client
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance int); ALTER TABLE accounts REPLICA IDENTITY FULL",
        )
        .unwrap();
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.accounts', slot_name => 'full', partitions => 3)",
    );
    let paths: Vec<_> = routes.into_iter().map(|(_, p)| p).collect();
    client
        .batch_execute(
            "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 200) g;
             UPDATE accounts SET balance = balance + 1;
             UPDATE accounts SET balance = balance + 1;",
        )
        .unwrap();
    let parts = read_partitions(&paths, 600);
    let mut home: HashMap<i64, usize> = HashMap::new();
    for (k, rows) in parts.iter().enumerate() {
        for (_, id, _, _) in rows {
            assert_eq!(*home.entry(*id).or_insert(k), k, "key {id} stays in one partition");
        }
    }
    for (k, rows) in parts.iter().enumerate() {
        let mut per_key: HashMap<i64, Vec<Option<i64>>> = HashMap::new();
        for (_, id, balance, _) in rows {
            per_key.entry(*id).or_default().push(*balance);
        }
        for (id, history) in per_key {
            assert_eq!(history, [Some(0), Some(1), Some(2)], "key {id} in partition {k}: its whole history, in order");
        }
    }
    assert_eq!(home.len(), 200);
}

#[test]
fn an_update_that_moves_a_key_to_another_partition_deletes_it_from_the_old_one() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("moving");
    client.batch_execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)").unwrap();
    let routes = configure(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.accounts', slot_name => 'moving', partitions => 3)",
    );
    let paths: Vec<_> = routes.into_iter().map(|(_, p)| p).collect();
    client
        .batch_execute(
            "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 30) g;
             UPDATE accounts SET id = id + 1000;",
        )
        .unwrap();
    // 30 inserts; each key change reaches the new key's partition as an
    // update, and the old key's as a delete when that is another one.
    let parts = read_partitions(&paths, 60);
    let mut home: HashMap<i64, usize> = HashMap::new();
    for (k, rows) in parts.iter().enumerate() {
        for (op, id, _, _) in rows.iter().filter(|r| r.0 == "c") {
            assert_eq!(op, "c");
            home.insert(*id, k);
        }
    }
    let mut moved = 0;
    for old in 1..=30i64 {
        let new = old + 1000;
        let updates: Vec<usize> = (0..parts.len())
            .filter(|k| parts[*k].iter().any(|r| r.0 == "u" && r.1 == new && r.3 == Some(old)))
            .collect();
        assert_eq!(updates.len(), 1, "the update of {old} → {new} reaches one partition");
        let deletes: Vec<usize> =
            (0..parts.len()).filter(|k| parts[*k].iter().any(|r| r.0 == "d" && r.1 == old)).collect();
        if updates[0] == home[&old] {
            assert!(deletes.is_empty(), "{old} stayed in its partition: no delete");
        } else {
            assert_eq!(deletes, [home[&old]], "the old partition of {old} is told it left");
            moved += 1;
        }
    }
    assert!(moved > 5, "some keys changed partition ({moved})");
}

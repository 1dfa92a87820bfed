//! `make demo`: a private cluster, a small shop workload, and every
//! committed change read back through a `wal2arrow` slot and printed as
//! Arrow tables.

use arrow_cast::pretty::pretty_format_batches;
use pg_test::{decode_batches, Cluster};
use pgcdc_reader::contract;

const SETUP: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, since date);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer int REFERENCES customers, amount numeric(12,2),
    tags text[], placed timestamptz DEFAULT now(), details jsonb);
ALTER TABLE orders REPLICA IDENTITY FULL;
";

const ROUNDS: [&str; 3] = [
    "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '2020-02-29'), (2, 'Grace', NULL, '1999-12-31');
     INSERT INTO orders (id, customer, amount, tags, details)
         VALUES (100, 1, 19.99, '{gift}', '{\"express\": true}'), (101, 2, 5.00, '{}', NULL);",
    "UPDATE orders SET amount = amount * 2, tags = tags || '{bulk}' WHERE id = 100;
     UPDATE customers SET email = 'grace@example.com' WHERE id = 2;",
    "DELETE FROM orders WHERE id = 101; TRUNCATE orders, customers;",
];

fn main() {
    println!("Starting a private PostgreSQL cluster (wal_level = logical)…");
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("shop");
    client.batch_execute(SETUP).expect("create the tables");
    client
        .query("SELECT pg_create_logical_replication_slot('demo', 'wal2arrow')", &[])
        .expect("create a wal2arrow slot");
    for (i, sql) in ROUNDS.iter().enumerate() {
        println!("\n── transaction {} ──\n{}", i + 1, sql.split_whitespace().collect::<Vec<_>>().join(" "));
        client.batch_execute(sql).expect("run the workload");
        for batch in decode_batches(&mut client, "demo", &[]) {
            let meta = batch.schema().metadata().clone();
            println!(
                "\n{}.{}: {} row(s), Arrow schema {}",
                meta[contract::META_SCHEMA],
                meta[contract::META_TABLE],
                batch.num_rows(),
                meta[contract::META_SCHEMA_FINGERPRINT]
            );
            // Leave out the old-row struct and side columns to keep lines short.
            let keep: Vec<usize> = (0..batch.num_columns())
                .filter(|i| {
                    let name = batch.schema().field(*i).name().clone();
                    ![contract::SCHEMA, contract::TABLE, contract::BEFORE, contract::UNMAPPED].contains(&name.as_str())
                })
                .collect();
            let shown = batch.project(&keep).expect("project columns");
            println!("{}", pretty_format_batches(&[shown]).expect("format the batch"));
        }
    }
    println!("\nEvery change above was read with pg_logical_slot_get_binary_changes('demo', …): one Arrow IPC stream per table per transaction.");
}

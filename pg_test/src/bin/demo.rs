//! `make demo`: a private cluster, `cdc_auto_configure`, a running shop
//! workload, and the `pgcdc` CLI tailing the changes as they commit, out of
//! the shared-memory rings the pgcdc worker fills.

use pg_test::Cluster;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text, since date);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer int REFERENCES customers, amount numeric(12,2),
    tags text[], placed timestamptz DEFAULT now(), details jsonb);
ALTER TABLE orders REPLICA IDENTITY FULL;
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '2020-02-29'), (2, 'Grace', NULL, '1999-12-31');
";

/// How many changes the CLI shows before the demo ends.
const CHANGES: &str = "24";

fn cli() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the demo's path");
    exe.parent().expect("a directory").join("pgcdc")
}

fn main() {
    println!("Starting a private PostgreSQL cluster (wal_level = logical)…");
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("shop");
    client.batch_execute(SETUP).expect("create the tables");
    let conninfo = cluster.conninfo("shop");
    println!("Tailing public.* with `pgcdc tail` while orders come in (Ctrl-C to stop)…\n");

    let running = Arc::new(AtomicBool::new(true));
    let workload = {
        let running = running.clone();
        let conninfo = conninfo.clone();
        std::thread::spawn(move || {
            // Give the CLI a moment to configure the stream.
            std::thread::sleep(Duration::from_secs(2));
            let mut client = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
            let mut order = 100;
            while running.load(Ordering::Relaxed) {
                order += 1;
                let sql = format!(
                    "INSERT INTO orders (id, customer, amount, tags, details)
                         VALUES ({order}, {}, {}.99, '{{gift}}', '{{\"express\": {}}}');
                     UPDATE orders SET amount = amount * 2, tags = tags || '{{bulk}}' WHERE id = {order} - 1;
                     UPDATE customers SET email = 'grace{order}@example.com' WHERE id = 2;",
                    1 + order % 2,
                    order % 50,
                    order % 3 == 0
                );
                if client.batch_execute(&sql).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let status = Command::new(cli())
        .args(["tail", "--conninfo", &conninfo, "--slot", "demo", "--create", "--limit", CHANGES, "public.*"])
        .status()
        .unwrap_or_else(|e| panic!("run {} (make demo builds it): {e}", cli().display()));
    running.store(false, Ordering::Relaxed);
    workload.join().expect("the workload");
    if !status.success() {
        std::process::exit(1);
    }
    println!("\n`pgcdc status`:");
    Command::new(cli()).args(["status", "--conninfo", &conninfo]).status().expect("pgcdc status");
    println!(
        "\nEach batch above came out of a shared-memory ring of the pgcdc worker, acknowledged as it was printed."
    );
}

//! `make bench`: decodes the same WAL with every peer output plugin, in one
//! run, and prints changes/s and time ratios.
//!
//! One private cluster, one table of mixed types, one slot per plugin, all
//! created before the workload so each sees the same WAL. Each round peeks
//! every slot (`pg_logical_slot_peek_*_changes` does not advance it, so
//! every round decodes the same WAL) and aggregates the output on the
//! server, so the numbers measure decoding plus the plugin, not the client.
//! `work_mem` is large enough that no plugin's output spills from the SQL
//! function's tuplestore to disk, which would charge output volume twice.
//! The floor is pgoutput with a publication of no tables: PostgreSQL's own
//! decoding work with an output plugin that writes nothing.

mod e2e;
mod latency;
mod snapshot;

use pg_test::{Cluster, Settings};
use postgres::Client;
use std::time::{Duration, Instant};

struct Peer {
    name: &'static str,
    slot: &'static str,
    plugin: &'static str,
    /// `peek_binary_changes` or `peek_changes`.
    binary: bool,
    options: &'static [&'static str],
}

const PEERS: &[Peer] = &[
    Peer {
        name: "floor (pgoutput, no tables)",
        slot: "floor",
        plugin: "pgoutput",
        binary: true,
        options: &["proto_version", "1", "publication_names", "nothing"],
    },
    Peer { name: "wal2arrow", slot: "arrow", plugin: "wal2arrow", binary: true, options: &[] },
    Peer {
        name: "pgoutput binary",
        slot: "pgout_bin",
        plugin: "pgoutput",
        binary: true,
        options: &["proto_version", "1", "publication_names", "everything", "binary", "true"],
    },
    Peer {
        name: "pgoutput text",
        slot: "pgout_text",
        plugin: "pgoutput",
        binary: true,
        options: &["proto_version", "1", "publication_names", "everything"],
    },
    Peer { name: "test_decoding", slot: "td", plugin: "test_decoding", binary: false, options: &[] },
    Peer { name: "wal2json", slot: "w2j", plugin: "wal2json", binary: false, options: &[] },
];

const SETUP: &str = "
CREATE TABLE bench (
    id bigint PRIMARY KEY, qty int, price numeric(12,2), ratio float8, name text,
    note varchar(64), created timestamptz, active bool, uid uuid);
CREATE PUBLICATION everything FOR TABLE bench;
CREATE PUBLICATION nothing;
";

/// Creates slot `slot` of output plugin `plugin`; false, with a note, when
/// this server has no such plugin (wal2json is Debian's, for 15 only).
fn peer_slot(client: &mut Client, slot: &str, plugin: &str) -> bool {
    match client.query("SELECT pg_create_logical_replication_slot($1, $2)", &[&slot, &plugin]) {
        Ok(_) => true,
        Err(e) => {
            println!(
                "(no {plugin} run: {})",
                e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
            );
            false
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `BENCH_ONLY=snapshot` (or decode, e2e): one part of the run.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    if part("decode") {
        decode_peers();
    }
    if part("e2e") {
        e2e::run();
    }
    if part("snapshot") {
        snapshot::run();
    }
}

/// Every output plugin on the same WAL.
fn decode_peers() {
    let rows = env_usize("BENCH_ROWS", 200_000);
    let per_txn = env_usize("BENCH_TXN_ROWS", 1_000);
    let rounds = env_usize("BENCH_ROUNDS", 5);

    println!("Starting a private cluster…");
    let cluster = Cluster::start_with(
        Settings::default().with("shared_buffers", "'512MB'").with("max_wal_size", "'8GB'").with("work_mem", "'2GB'"),
    );
    let mut client = cluster.database_with_pgcdc("bench");
    client.batch_execute(SETUP).expect("create the table");
    let peers: Vec<&Peer> = PEERS.iter().filter(|peer| peer_slot(&mut client, peer.slot, peer.plugin)).collect();
    let changes = workload(&mut client, rows, per_txn);
    println!(
        "Workload: {changes} changes ({rows} inserts, {} updates, {} deletes) in transactions of {per_txn} rows.\n",
        rows / 2,
        rows / 4
    );

    // Rounds go round-robin over the plugins, so that a slow moment of the
    // machine costs every plugin alike instead of one plugin's whole series.
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    let mut outputs = vec![(0, 0); peers.len()];
    for _ in 0..rounds {
        for (i, peer) in peers.iter().enumerate() {
            let (elapsed, messages, bytes) = decode(&mut client, peer);
            times[i].push(elapsed);
            outputs[i] = (messages, bytes);
        }
    }
    let mut results = Vec::new();
    for ((peer, mut times), output) in peers.iter().zip(times).zip(outputs) {
        times.sort();
        let median = times[times.len() / 2];
        println!("  {:<28} median {:>8.1} ms over {rounds} rounds", peer.name, median.as_secs_f64() * 1e3);
        results.push((peer, median, output));
    }

    let time_of = |name: &str| results.iter().find(|(p, ..)| p.name == name).map(|(_, t, _)| t.as_secs_f64()).unwrap();
    let floor = time_of("floor (pgoutput, no tables)");
    let pgoutput = time_of("pgoutput binary");
    println!("\n| plugin | changes/s | median time | × floor | × pgoutput binary | messages | output bytes |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (peer, time, (messages, bytes)) in &results {
        let t = time.as_secs_f64();
        println!(
            "| {} | {:.0}k | {:.0} ms | {:.2} | {:.2} | {} | {:.1} MB |",
            peer.name,
            changes as f64 / t / 1e3,
            t * 1e3,
            t / floor,
            t / pgoutput,
            messages,
            *bytes as f64 / 1e6
        );
    }
    let arrow = time_of("wal2arrow");
    println!(
        "\nwal2arrow: {:.2}× pgoutput binary's time (target ≤ 0.5), {:.2}× the floor's (target ≤ 1.5).",
        arrow / pgoutput,
        arrow / floor
    );
    drop(cluster);
}

/// Inserts, updates and deletes `rows`-sized sets of rows; returns the
/// number of changes.
fn workload(client: &mut Client, rows: usize, per_txn: usize) -> usize {
    let mut changes = 0;
    let mut start = 1;
    while start <= rows {
        let end = (start + per_txn - 1).min(rows);
        client
            .batch_execute(&format!(
                "INSERT INTO bench SELECT g, g % 97, (g % 100000) / 100.0, g / 7.0, 'name ' || g, md5(g::text),
                        '2024-01-01'::timestamptz + g * interval '1 second', g % 2 = 0, md5(g::text)::uuid
                 FROM generate_series({start}, {end}) g"
            ))
            .expect("insert");
        changes += end - start + 1;
        start = end + 1;
    }
    let mut start = 1;
    while start <= rows / 2 {
        let end = (start + per_txn - 1).min(rows / 2);
        client
            .batch_execute(&format!("UPDATE bench SET qty = qty + 1, price = price * 2, name = name || '!' WHERE id BETWEEN {start} AND {end}"))
            .expect("update");
        changes += end - start + 1;
        start = end + 1;
    }
    let mut start = rows / 2 + 1;
    while start <= rows / 2 + rows / 4 {
        let end = (start + per_txn - 1).min(rows / 2 + rows / 4);
        client.batch_execute(&format!("DELETE FROM bench WHERE id BETWEEN {start} AND {end}")).expect("delete");
        changes += end - start + 1;
        start = end + 1;
    }
    changes
}

/// One peek of a slot, aggregated on the server: (time, messages, bytes).
fn decode(client: &mut Client, peer: &Peer) -> (Duration, i64, i64) {
    let function = if peer.binary { "pg_logical_slot_peek_binary_changes" } else { "pg_logical_slot_peek_changes" };
    let sql = format!(
        "SELECT count(*), coalesce(sum(length(data)), 0)::int8 FROM {function}($1, NULL, NULL, VARIADIC $2::text[])"
    );
    let options: Vec<&str> = peer.options.to_vec();
    let started = Instant::now();
    let row = client.query_one(&sql, &[&peer.slot, &options]).unwrap_or_else(|e| panic!("decode {}: {e}", peer.name));
    (started.elapsed(), row.get(0), row.get(1))
}

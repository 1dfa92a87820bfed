//! `pgcdc`: tail tables as Arrow tables, or show the status of the streams.
//!
//! ```text
//! pgcdc tail   --conninfo "host=… dbname=…" [--slot pgcdc] [--consumer default] PATTERN…
//! pgcdc status --conninfo "host=… dbname=…"
//! ```
//! `tail` configures (or reuses) the stream for the patterns and prints each
//! batch as it arrives, with its lag behind the commit, acknowledging as it
//! goes.

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::RecordBatch;
use arrow_cast::pretty::pretty_format_batches;
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::client::{self, Config};
use pgcdc_reader::contract;
use pgcdc_reader::ring::now_ms;
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage:\n  pgcdc tail --conninfo CONNINFO [--slot NAME] [--consumer NAME] [--limit N] PATTERN...\n  pgcdc status --conninfo CONNINFO"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| usage());
    let (mut conninfo, mut slot, mut consumer, mut limit, mut patterns) =
        (None, "pgcdc".to_owned(), "default".to_owned(), None, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--conninfo" => conninfo = args.next(),
            "--slot" => slot = args.next().unwrap_or_else(|| usage()),
            "--consumer" => consumer = args.next().unwrap_or_else(|| usage()),
            "--limit" => limit = args.next().and_then(|n| n.parse::<usize>().ok()),
            other if other.starts_with("--") => usage(),
            pattern => patterns.push(pattern.to_owned()),
        }
    }
    let conninfo = conninfo.unwrap_or_else(|| usage());
    let result = match command.as_str() {
        "tail" if !patterns.is_empty() => tail(&conninfo, Config { slot, consumer, ..Config::new(&patterns) }, limit),
        "status" => status(&conninfo),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("pgcdc: {e}");
        std::process::exit(1);
    }
}

fn tail(conninfo: &str, config: Config, limit: Option<usize>) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config { route_by_table: false, ..config };
    let mut reader = client::auto_configure_merged(conninfo, &config.patterns, &config.slot)?;
    let mut shown = 0;
    while limit.is_none_or(|l| shown < l) {
        let Some(batch) = reader.next_batch(Duration::from_millis(500))? else { continue };
        print_batch(&batch)?;
        shown += batch.num_rows();
        if let Some(lsn) = max_commit_lsn(&batch) {
            reader.ack(lsn);
        }
    }
    Ok(())
}

fn print_batch(batch: &RecordBatch) -> Result<(), Box<dyn std::error::Error>> {
    let committed =
        batch.column_by_name(contract::COMMIT_TS).map(|c| c.as_primitive::<TimestampMicrosecondType>().value(0) / 1000);
    let lag = committed.map_or(0, |c| now_ms() as i64 - c);
    let meta = batch.schema().metadata().clone();
    println!(
        "{}.{}: {} change(s), {} ms after commit",
        meta.get(contract::META_SCHEMA).map_or("?", String::as_str),
        meta.get(contract::META_TABLE).map_or("?", String::as_str),
        batch.num_rows(),
        lag
    );
    // The old-row struct and the side columns make lines long.
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|i| {
            let name = batch.schema().field(*i).name().clone();
            ![contract::SCHEMA, contract::TABLE, contract::BEFORE, contract::UNMAPPED, contract::XID]
                .contains(&name.as_str())
        })
        .collect();
    println!("{}", pretty_format_batches(&[batch.project(&keep)?])?);
    Ok(())
}

fn status(conninfo: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:<16} {:<32} {:>8} {:>12} {:>9} {:>12} {:>10}  consumers",
        "slot", "route", "worker", "slot lag", "lag s", "ring fill", "changes/s"
    );
    for s in client::status(conninfo)? {
        println!(
            "{:<16} {:<32} {:>8} {:>12} {:>9.3} {:>11.1}% {:>10}  {}",
            s.slot,
            s.route,
            s.worker_pid.map_or("-".into(), |p| p.to_string()),
            s.slot_lag_bytes.map_or("-".into(), |b| format!("{b} B")),
            s.lag_seconds,
            100.0 * s.ring_fill_bytes as f64 / (s.ring_capacity_bytes.max(1)) as f64,
            s.changes_per_second,
            s.consumers.join(", ")
        );
    }
    Ok(())
}

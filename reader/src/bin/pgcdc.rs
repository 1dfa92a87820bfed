//! `pgcdc`: tail tables as Arrow tables, or show the status of the streams.
//!
//! ```text
//! pgcdc tail   --conninfo "host=… dbname=…" [--slot pgcdc] [--consumer default] [--limit N] [--create] PATTERN…
//! pgcdc status --conninfo "host=… dbname=…"
//! pgcdc serve  --conninfo "host=… dbname=…" [--listen 127.0.0.1:50051] [--tls-cert FILE --tls-key FILE]
//! ```
//! `serve` (feature `flight`) serves the routes over Arrow Flight
//! ([`pgcdc_reader::flight`]).
//! `tail` reads the routes of an existing stream whose tables the patterns
//! select, merged in commit order, as consumer `--consumer`, and prints
//! each batch as it arrives with its lag behind the commit, acknowledging
//! what it printed: run again, it goes on where it stopped. It never
//! changes the stream; `--create` first configures it for the patterns
//! (`cdc_auto_configure`, which also registers the consumer).

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::RecordBatch;
use arrow_cast::pretty::pretty_format_batches;
use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use pgcdc_reader::client::{self, Config};
use pgcdc_reader::contract;
use pgcdc_reader::merge_streams;
use pgcdc_reader::ring::now_ms;
use std::collections::BTreeSet;
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage:\n  pgcdc tail --conninfo CONNINFO [--slot NAME] [--consumer NAME] [--limit N] [--create] PATTERN...\n  pgcdc status --conninfo CONNINFO\n  pgcdc serve --conninfo CONNINFO [--listen ADDRESS:PORT] [--tls-cert FILE --tls-key FILE]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| usage());
    let (mut conninfo, mut slot, mut consumer, mut limit, mut create, mut patterns) =
        (None, "pgcdc".to_owned(), "default".to_owned(), None, false, Vec::new());
    let (mut listen, mut tls_cert, mut tls_key) = ("127.0.0.1:50051".to_owned(), None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--conninfo" => conninfo = args.next(),
            "--slot" => slot = args.next().unwrap_or_else(|| usage()),
            "--consumer" => consumer = args.next().unwrap_or_else(|| usage()),
            "--limit" => limit = Some(args.next().and_then(|n| n.parse::<usize>().ok()).unwrap_or_else(|| usage())),
            "--create" => create = true,
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--tls-cert" => tls_cert = args.next(),
            "--tls-key" => tls_key = args.next(),
            other if other.starts_with("--") => usage(),
            pattern => patterns.push(pattern.to_owned()),
        }
    }
    let conninfo = conninfo.unwrap_or_else(|| usage());
    let result = match command.as_str() {
        "tail" if !patterns.is_empty() => {
            tail(&conninfo, Config { slot, consumer, ..Config::new(&patterns) }, create, limit)
        }
        "status" => status(&conninfo),
        "serve" => serve(conninfo, &listen, tls_cert, tls_key),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("pgcdc: {e}");
        std::process::exit(1);
    }
}

fn tail(conninfo: &str, config: Config, create: bool, limit: Option<usize>) -> Result<(), Box<dyn std::error::Error>> {
    if create {
        client::configure(conninfo, &config)?;
    }
    let routes = client::routes(conninfo, &config.slot, &config.patterns)?;
    if routes.is_empty() {
        return Err(format!(
            "stream \"{}\" has no table that {} select; configure it with --create (or cdc_auto_configure)",
            config.slot,
            config.patterns.join(", ")
        )
        .into());
    }
    // A merged route's ring also carries tables the patterns left out.
    let shown_tables: BTreeSet<(String, String)> = routes.iter().map(|r| (r.schema.clone(), r.table.clone())).collect();
    let mut rings: Vec<_> = routes.into_iter().map(|r| r.ring_path).collect();
    rings.sort();
    rings.dedup();
    let readers = rings
        .iter()
        .map(|path| ChangeReader::open_waiting(path, &config.consumer, config.ring_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let mut reader = merge_streams(readers);
    let mut shown = 0;
    while limit.is_none_or(|l| shown < l) {
        // Never more than the limit: what is not shown is not acknowledged.
        let left = limit.map_or(usize::MAX, |l| l - shown);
        let Some(batch) = reader.next_batch_up_to(Duration::from_millis(500), left)? else { continue };
        let schema = batch.schema();
        let meta = schema.metadata();
        let table = (
            meta.get(contract::META_SCHEMA).cloned().unwrap_or_default(),
            meta.get(contract::META_TABLE).cloned().unwrap_or_default(),
        );
        if shown_tables.contains(&table) {
            print_batch(&batch)?;
            shown += batch.num_rows();
        }
        if let Some(lsn) = max_commit_lsn(&batch) {
            reader.ack(lsn);
        }
    }
    Ok(())
}

fn print_batch(batch: &RecordBatch) -> Result<(), Box<dyn std::error::Error>> {
    let meta = batch.schema().metadata().clone();
    if pgcdc_reader::snapshot::completes_snapshot(batch) {
        println!(
            "{}.{}: snapshot complete",
            meta.get(contract::META_SCHEMA).map_or("?", String::as_str),
            meta.get(contract::META_TABLE).map_or("?", String::as_str),
        );
        return Ok(());
    }
    let committed = batch
        .column_by_name(contract::COMMIT_TS)
        .filter(|c| !c.is_empty())
        .map(|c| c.as_primitive::<TimestampMicrosecondType>().value(0) / 1000);
    let lag = committed.map_or(0, |c| now_ms() as i64 - c);
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

#[cfg(feature = "flight")]
fn serve(
    conninfo: String,
    listen: &str,
    cert: Option<String>,
    key: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let listen =
        listen.parse().map_err(|e| format!("--listen {listen}: {e} (an address and port, like 127.0.0.1:50051)"))?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert.into(), key.into())),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    pgcdc_reader::flight::serve(pgcdc_reader::flight::ServeConfig { conninfo, listen, tls })
}

#[cfg(not(feature = "flight"))]
fn serve(_: String, _: &str, _: Option<String>, _: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    Err("this pgcdc was built without the flight feature (cargo build -p pgcdc-reader --features flight)".into())
}

fn status(conninfo: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:<16} {:<32} {:>8} {:>12} {:>9} {:>12} {:>10}  consumers; snapshot",
        "slot", "route", "worker", "slot lag", "lag s", "ring fill", "changes/s"
    );
    for s in client::status(conninfo)? {
        if let Some(problem) = &s.problem {
            println!("{:<16} {:<32} STOPPED: {problem}", s.slot, s.route);
            continue;
        }
        println!(
            "{:<16} {:<32} {:>8} {:>12} {:>9.3} {:>11.1}% {:>10}  {}{}",
            s.slot,
            s.route,
            s.worker_pid.map_or("-".into(), |p| p.to_string()),
            s.slot_lag_bytes.map_or("-".into(), |b| format!("{b} B")),
            s.lag_seconds,
            100.0 * s.ring_fill_bytes as f64 / (s.ring_capacity_bytes.max(1)) as f64,
            s.changes_per_second,
            s.consumers.join(", "),
            s.snapshot.map_or_else(String::new, |p| format!("; snapshot {}", p.describe()))
        );
    }
    Ok(())
}

//! A consumer process for the crash tests: reads one or more rings (merged
//! in commit order when several), appends every row as `commit_lsn lsn
//! table id` to a file and, after each batch, the reader's position; then
//! acknowledges with the README's pattern. Killed at any moment and
//! restarted, it cuts the file back to the last position it recorded and
//! resumes there, so every row is in the file exactly once.
//!
//! Usage: consume <output file> <stop file> <ring file>…
//! Reads as consumer `default`, or `$PGCDC_CONSUMER`. Runs until the stop
//! file exists and no row arrived for a second.

use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use pgcdc_reader::{merge_streams, Position};
use std::io::Write;
use std::time::Duration;

/// The marker of a position line.
const POSITION: &str = "@";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, output, stop, rings @ ..] = &args[..] else { panic!("usage: consume <output> <stop file> <ring>…") };
    // What follows the last recorded position belongs to a batch whose
    // recording a kill cut short: it will come again.
    let recorded = std::fs::read_to_string(output).unwrap_or_default();
    let (mut kept, mut offset) = (0, 0);
    let mut positions: Vec<Position> = Vec::new();
    for line in recorded.split_inclusive('\n') {
        offset += line.len();
        if let (true, Some(rest)) = (line.ends_with('\n'), line.strip_prefix(POSITION)) {
            positions = rest.split_whitespace().map(|p| p.parse().expect("a position")).collect();
            kept = offset;
        }
    }
    // Cut in place: rewriting the file would show a reader of it (the
    // test's sampler) a file shorter than what was recorded meanwhile.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(output)
        .and_then(|f| f.set_len(kept as u64))
        .expect("cut the output back");
    let consumer = std::env::var("PGCDC_CONSUMER").unwrap_or_else(|_| "default".into());
    let mut readers: Vec<ChangeReader> = rings
        .iter()
        .map(|ring| {
            ChangeReader::open_waiting(ring.as_ref(), &consumer, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("open a ring: {e}"))
        })
        .collect();
    if !positions.is_empty() {
        readers = readers.into_iter().zip(&positions).map(|(r, p)| r.resume_at(*p)).collect();
    }
    let count = readers.len();
    let mut merged = merge_streams(readers);
    let mut file = std::fs::OpenOptions::new().append(true).open(output).expect("open the output");
    loop {
        match merged.next_batch(Duration::from_secs(1)).expect("read the rings") {
            Some(batch) => {
                let commits = pg_test::values::u64s(&batch, "_commit_lsn");
                let lsns = pg_test::values::u64s(&batch, "_lsn");
                let tables = pg_test::values::strings(&batch, "_table");
                let ids = pg_test::values::ints(&batch, "id");
                let mut lines = String::new();
                for i in 0..batch.num_rows() {
                    let table = tables[i].as_deref().expect("a table");
                    lines.push_str(&format!("{} {} {table} {}\n", commits[i], lsns[i], ids[i].expect("an id")));
                }
                let handed: Vec<String> = (0..count).map(|i| merged.position(i).to_string()).collect();
                lines.push_str(&format!("{POSITION} {}\n", handed.join(" ")));
                // One write, then durable, then acknowledged.
                file.write_all(lines.as_bytes()).expect("record rows");
                file.sync_data().expect("sync");
                merged.ack(max_commit_lsn(&batch).expect("rows"));
            }
            None if std::path::Path::new(stop).exists() => return,
            None => {}
        }
    }
}

//! A consumer process for the crash tests: reads one ring, appends every
//! row as `commit_lsn lsn id` to a file, then acknowledges. Killed at any
//! moment and restarted, it resumes after the last row it recorded.
//!
//! Usage: consume <ring file> <output file> <stop file>
//! Runs until the stop file exists and no row arrived for a second.

use pgcdc_reader::changes::{max_commit_lsn, ChangeReader};
use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, ring, output, stop] = &args[..] else { panic!("usage: consume <ring> <output> <stop file>") };
    let recorded = std::fs::read_to_string(output).unwrap_or_default();
    // The last complete line is the last row recorded.
    let last = recorded.lines().rfind(|l| l.split(' ').count() == 3).map(|l| {
        let mut parts = l.split(' ').map(|p| p.parse::<u64>().expect("a number"));
        (parts.next().unwrap(), parts.next().unwrap())
    });
    let mut reader =
        ChangeReader::open_waiting(ring.as_ref(), "default", Duration::from_secs(60)).expect("open the ring");
    if let Some((commit, lsn)) = last {
        reader = reader.resume_after_row(commit, lsn);
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(output).expect("open the output");
    loop {
        match reader.next_batch(Duration::from_secs(1)).expect("read the ring") {
            Some(batch) => {
                let commits = pg_test::values::u64s(&batch, "_commit_lsn");
                let lsns = pg_test::values::u64s(&batch, "_lsn");
                let ids = pg_test::values::ints(&batch, "id");
                let mut lines = String::new();
                for i in 0..batch.num_rows() {
                    lines.push_str(&format!("{} {} {}\n", commits[i], lsns[i], ids[i].expect("an id")));
                }
                // One write, then durable, then acknowledged.
                file.write_all(lines.as_bytes()).expect("record rows");
                file.sync_data().expect("sync");
                reader.ack(max_commit_lsn(&batch).expect("rows"));
            }
            None if std::path::Path::new(stop).exists() => return,
            None => {}
        }
    }
}

//! A ten-million-row transaction decodes in messages of bounded size, with
//! bounded memory in the decoding backend.

use pg_test::{read_stream, Cluster, Settings};
use pgcdc_reader::contract;

const ROWS: i64 = 10_000_000;
const BATCH_BYTES: usize = 1 << 20;

/// Peak resident memory of a process, from /proc (the test runs on the
/// database host).
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read the backend's status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn ten_million_rows_in_one_transaction_decode_in_bounded_messages() {
    let cluster =
        Cluster::start_with(Settings::default().with("shared_buffers", "'32MB'").with("max_wal_size", "'4GB'"));
    let mut client = cluster.database_with_pgcdc("large");
    client.batch_execute("CREATE TABLE big (id int8, n int4, s text)").unwrap();
    pg_test::create_slot(&mut client, "s");
    client
        .batch_execute(&format!("INSERT INTO big SELECT g, g % 1000, 'row ' || g FROM generate_series(1, {ROWS}) g"))
        .unwrap();

    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let before_kib = peak_rss_kib(pid);
    let mut txn = client.transaction().unwrap();
    txn.batch_execute(&format!(
        "DECLARE changes NO SCROLL CURSOR FOR
         SELECT data FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, 'batch_bytes', '{BATCH_BYTES}')"
    ))
    .unwrap();
    let (mut rows, mut messages, mut largest, mut next_id) = (0i64, 0usize, 0usize, 1i64);
    loop {
        let fetched = txn.query("FETCH 50 FROM changes", &[]).unwrap();
        if fetched.is_empty() {
            break;
        }
        for row in fetched {
            let data: Vec<u8> = row.get(0);
            largest = largest.max(data.len());
            messages += 1;
            for batch in read_stream(&data) {
                assert_eq!(batch.schema().metadata()[contract::META_TABLE], "big");
                let ids = pg_test::values::ints(&batch, "id");
                // Every row, once, in order.
                for id in ids {
                    assert_eq!(id, Some(next_id));
                    next_id += 1;
                }
                rows += batch.num_rows() as i64;
            }
        }
    }
    txn.commit().unwrap();
    let peak_kib = peak_rss_kib(pid);

    assert_eq!(rows, ROWS);
    assert!(messages > 100, "{messages} messages");
    // A message exceeds batch_bytes by at most one row and its schema.
    assert!(largest <= BATCH_BYTES + 16 * 1024, "largest message {largest} bytes");
    // The output (about 700 MB of Arrow) spills to disk in PostgreSQL's
    // tuplestore and the reorder buffer spills past logical_decoding_work_mem;
    // the plugin holds one batch at a time. Peak memory stays far below the
    // size of the transaction.
    eprintln!("backend peak RSS: {} MiB before, {} MiB after decoding", before_kib / 1024, peak_kib / 1024);
    assert!(peak_kib < 400 * 1024, "backend peak RSS {} MiB", peak_kib / 1024);
}

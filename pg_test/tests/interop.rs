//! Other programs read wal2arrow: pg_recvlogical streams it over the
//! replication protocol, pyarrow's plain stream reader opens each message.

use pg_test::values::{ints, ops, strings};
use pg_test::{create_slot, decode_messages, read_streams_with_separator, Cluster};
use pgcdc_reader::contract;
use std::process::Command;

#[test]
fn pg_recvlogical_streams_wal2arrow() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("recv");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    let conninfo = cluster.conninfo("recv");
    let created =
        cluster.run("pg_recvlogical", &["-d", &conninfo, "--slot", "recv", "--create-slot", "-P", "wal2arrow"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    client.batch_execute("INSERT INTO t VALUES (1, 'one'), (2, 'two')").unwrap();
    client.batch_execute("UPDATE t SET v = 'uno' WHERE id = 1").unwrap();
    let end: String = client.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);

    let out = cluster.socket_dir().join("changes.arrows");
    let streamed = cluster.run(
        "pg_recvlogical",
        &[
            "-d",
            &conninfo,
            "--slot",
            "recv",
            "--start",
            "--no-loop",
            "--endpos",
            &end,
            "-o",
            "batch_rows=1",
            "-f",
            out.to_str().unwrap(),
        ],
    );
    assert!(streamed.status.success(), "{}", String::from_utf8_lossy(&streamed.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let streams = read_streams_with_separator(&bytes, Some(b'\n'));
    assert_eq!(streams.len(), 3, "batch_rows=1: one message per change");
    let batches: Vec<_> = streams.into_iter().flatten().collect();
    assert_eq!(batches.iter().flat_map(|b| ints(b, "id")).collect::<Vec<_>>(), [Some(1), Some(2), Some(1)]);
    assert_eq!(batches.iter().flat_map(ops).collect::<Vec<_>>(), ["c", "c", "u"]);
    assert_eq!(strings(&batches[2], "v"), [Some("uno".into())]);
    assert!(batches.iter().all(|b| b.schema().metadata()[contract::META_TABLE] == "t"));
}

#[test]
fn pyarrow_reads_every_message_with_its_plain_stream_reader() {
    let python = std::env::var("PGCDC_PYTHON").unwrap_or_else(|_| "python3".into());
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("pyarrow");
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, amount numeric(12,2), at timestamptz, u uuid, tags text[]);
             ALTER TABLE t REPLICA IDENTITY FULL",
        )
        .unwrap();
    create_slot(&mut client, "s");
    client
        .batch_execute(
            "INSERT INTO t VALUES (1, 12.34, '2024-02-29 12:00:00+00', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{x,NULL}');
             UPDATE t SET amount = 'NaN';",
        )
        .unwrap();
    let messages = decode_messages(&mut client, "s", &[]).unwrap();
    assert_eq!(messages.len(), 1);
    let file = cluster.socket_dir().join("message.arrows");
    std::fs::write(&file, &messages[0].data).unwrap();

    let script = r#"
import sys, pyarrow as pa
table = pa.ipc.open_stream(open(sys.argv[1], 'rb').read()).read_all()
rows = table.to_pylist()
print(table.schema.metadata[b'pgcdc.table'].decode())
print([r['_op'] for r in rows])
print(rows[0]['amount'], rows[0]['at'].isoformat(), rows[0]['u'], rows[0]['tags'])
print(rows[1]['amount'], rows[1]['_unmapped'], rows[1]['_before']['amount'])
print(table.schema.field('u').type)
"#;
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e} (make test installs pyarrow and sets PGCDC_PYTHON)"));
    assert!(output.status.success(), "pyarrow failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<String> = String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "t",
            "['c', 'u']",
            "12.34 2024-02-29T12:00:00+00:00 a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ['x', None]",
            "None [('amount', 'NaN')] 12.34",
            "extension<arrow.uuid>",
        ]
    );
}

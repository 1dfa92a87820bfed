//! The plugin's framing, contract columns, options and errors.

use pg_test::values::{ints, ops, strings, u64s};
use pg_test::{create_slot, decode_batches, decode_messages, read_stream, Cluster, Settings};
use pgcdc_reader::contract;

#[test]
fn one_stream_per_table_per_transaction_with_every_contract_column() {
    let cluster = Cluster::start_with(Settings::default().with("track_commit_timestamp", "on"));
    let mut client = cluster.database_with_pgcdc("framing");
    client.batch_execute("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    create_slot(&mut client, "s");

    let mut txn = client.transaction().unwrap();
    txn.batch_execute("INSERT INTO a VALUES (1, 'one'); INSERT INTO b VALUES (1); INSERT INTO a VALUES (2, 'two')")
        .unwrap();
    let xid: i64 = txn.query_one("SELECT txid_current()", &[]).unwrap().get(0);
    txn.commit().unwrap();

    let messages = decode_messages(&mut client, "s", &[]).unwrap();
    assert_eq!(messages.len(), 2, "one message per table");
    let batches: Vec<_> = messages.iter().map(|m| read_stream(&m.data)).collect();
    assert!(batches.iter().all(|b| b.len() == 1), "one record batch in each stream");
    let (a, b) = (&batches[0][0], &batches[1][0]);
    assert_eq!(a.schema().metadata()[contract::META_TABLE], "a", "first touched table first");
    assert_eq!(b.schema().metadata()[contract::META_TABLE], "b");
    assert_eq!(ints(a, "id"), [Some(1), Some(2)]);
    assert_eq!(strings(a, "v"), [Some("one".into()), Some("two".into())]);
    assert_eq!(ops(a), ["c", "c"]);
    assert_eq!(strings(a, contract::SCHEMA), [Some("public".into()), Some("public".into())]);
    assert_eq!(strings(b, contract::TABLE), [Some("b".into())]);
    let relid: i64 = client.query_one("SELECT 'a'::regclass::oid::int8", &[]).unwrap().get(0);
    assert_eq!(a.schema().metadata()[contract::META_RELID], relid.to_string());

    // _xid and _commit_lsn are the transaction's; _lsn orders the changes.
    for batch in [a, b] {
        assert!(ints(batch, contract::XID).iter().all(|x| *x == Some(xid)));
    }
    assert!(messages.iter().all(|m| i64::from(m.xid) == xid));
    let commit_lsn = u64s(a, contract::COMMIT_LSN)[0];
    assert!(u64s(a, contract::COMMIT_LSN).iter().chain(&u64s(b, contract::COMMIT_LSN)).all(|l| *l == commit_lsn));
    assert_eq!(messages[1].lsn, commit_lsn, "messages written at commit carry the commit's end LSN");
    let (a_lsn, b_lsn) = (u64s(a, contract::LSN), u64s(b, contract::LSN));
    assert!(a_lsn[0] < b_lsn[0] && b_lsn[0] < a_lsn[1] && a_lsn[1] < commit_lsn, "{a_lsn:?} {b_lsn:?} {commit_lsn}");

    // _commit_ts is the commit timestamp PostgreSQL recorded, in µs since 1970.
    let expected: i64 = client
        .query_one(
            "SELECT (extract(epoch FROM pg_xact_commit_timestamp($1::text::xid)) * 1000000)::int8",
            &[&xid.to_string()],
        )
        .unwrap()
        .get(0);
    assert_eq!(ints_ts(a), [expected, expected]);

    // The slot moved on: nothing is decoded twice.
    assert!(decode_messages(&mut client, "s", &[]).unwrap().is_empty());
}

fn ints_ts(batch: &arrow_array::RecordBatch) -> Vec<i64> {
    use arrow_array::cast::AsArray;
    batch
        .column_by_name(contract::COMMIT_TS)
        .unwrap()
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>()
        .values()
        .to_vec()
}

#[test]
fn publications_filter_tables_and_actions_like_pgoutput() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("publications");
    client
        .batch_execute(
            "CREATE SCHEMA other;
             CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY);
             CREATE TABLE other.d (id int PRIMARY KEY);
             CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
             CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
             CREATE PUBLICATION pa FOR TABLE a, parted;
             CREATE PUBLICATION pb FOR TABLE b WITH (publish = 'insert');
             CREATE PUBLICATION pschema FOR TABLES IN SCHEMA other;",
        )
        .unwrap();
    create_slot(&mut client, "filtered");
    create_slot(&mut client, "everything");
    client
        .batch_execute(
            "INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO c VALUES (1); INSERT INTO other.d VALUES (1);
             INSERT INTO parted VALUES (5);
             UPDATE a SET id = 2; UPDATE b SET id = 2; UPDATE c SET id = 2;
             DELETE FROM b; TRUNCATE b;",
        )
        .unwrap();

    let filtered = decode_batches(&mut client, "filtered", &[("publication_names", "pa, PB,pschema")]);
    let summary: Vec<(String, Vec<String>)> =
        filtered.iter().map(|b| (b.schema().metadata()[contract::META_TABLE].clone(), ops(b))).collect();
    assert_eq!(
        summary,
        [
            ("a".to_owned(), vec!["c".to_owned(), "u".to_owned()]),
            ("b".to_owned(), vec!["c".to_owned()]),
            ("d".to_owned(), vec!["c".to_owned()]),
            ("parted".to_owned(), vec!["c".to_owned()]),
        ],
        "pb publishes inserts only; c is in no publication; a partition follows its root, and is reported as it"
    );
    let everything = decode_batches(&mut client, "everything", &[]);
    let tables: Vec<String> = everything.iter().map(|b| b.schema().metadata()[contract::META_TABLE].clone()).collect();
    assert_eq!(tables, ["a", "b", "c", "d", "parted"]);
    assert_eq!(ops(&everything[1]), ["c", "u", "d", "t"]);
}

/// A partition's changes are reported as its root's (DESIGN §2), through
/// any publication or none; `partition_root = false` asks for pgoutput's
/// rules: the partition's own name, unless the publication publishes
/// through the root.
#[test]
fn partitions_are_reported_as_their_root_unless_asked_otherwise() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("partitions");
    client
        .batch_execute(
            "CREATE TABLE m (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
             CREATE TABLE m_2024 (v text, at date NOT NULL, id int NOT NULL);
             ALTER TABLE m ATTACH PARTITION m_2024 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE PUBLICATION viaroot FOR TABLE m WITH (publish_via_partition_root = true);
             CREATE PUBLICATION bypart FOR TABLE m;",
        )
        .unwrap();
    for slot in ["viaroot", "bypart", "unfiltered", "bypart_pgoutput", "viaroot_pgoutput"] {
        create_slot(&mut client, slot);
    }
    client
        .batch_execute(
            "INSERT INTO m VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b');
             UPDATE m SET v = 'c' WHERE id = 1; TRUNCATE m;",
        )
        .unwrap();

    let as_root = |slot: &str, options: &[(&str, &str)], client: &mut postgres::Client| {
        let root = decode_batches(client, slot, options);
        assert_eq!(root.len(), 1, "{slot}: both partitions' rows in the root's one batch");
        let m = &root[0];
        assert_eq!(m.schema().metadata()[contract::META_TABLE], "m");
        let columns: Vec<String> = m.schema().fields().iter().skip(7).take(3).map(|f| f.name().clone()).collect();
        assert_eq!(columns, ["id", "at", "v"], "{slot}: the root's column order, whatever the partition's");
        assert_eq!(ops(m), ["c", "c", "u", "t"], "{slot}: one truncate, the root's");
        assert_eq!(ints(m, "id"), [Some(1), Some(2), Some(1), None]);
        assert_eq!(strings(m, "v"), [Some("a".into()), Some("b".into()), Some("c".into()), None]);
    };
    as_root("viaroot", &[("publication_names", "viaroot")], &mut client);
    as_root("bypart", &[("publication_names", "bypart")], &mut client);
    as_root("unfiltered", &[], &mut client);
    as_root("viaroot_pgoutput", &[("publication_names", "viaroot"), ("partition_root", "false")], &mut client);

    let parts =
        decode_batches(&mut client, "bypart_pgoutput", &[("publication_names", "bypart"), ("partition_root", "false")]);
    let summary: Vec<(String, Vec<String>)> =
        parts.iter().map(|b| (b.schema().metadata()[contract::META_TABLE].clone(), ops(b))).collect();
    assert_eq!(
        summary,
        [
            ("m_2024".to_owned(), vec!["c".to_owned(), "u".to_owned(), "t".to_owned()]),
            ("m_2025".to_owned(), vec!["c".to_owned(), "t".to_owned()]),
        ]
    );
    assert_eq!(strings(&parts[0], "v"), [Some("a".into()), Some("c".into()), None]);
}

#[test]
fn options_shape_batches_and_bad_options_are_errors_that_lose_nothing() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("options");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); ALTER TABLE t REPLICA IDENTITY FULL").unwrap();
    for slot in ["small", "nobefore", "errors"] {
        create_slot(&mut client, slot);
    }
    client
        .batch_execute(
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 5) g; UPDATE t SET v = 'new' WHERE id = 1",
        )
        .unwrap();

    let small = decode_batches(&mut client, "small", &[("batch_rows", "2")]);
    assert_eq!(small.iter().map(|b| b.num_rows()).collect::<Vec<_>>(), [2, 2, 2], "6 changes in batches of 2");
    assert_eq!(ints(&small[2], "id"), [Some(5), Some(1)]);
    assert_eq!(ops(&small[2]), ["c", "u"]);
    assert!(small.iter().all(|b| b.schema() == small[0].schema()));

    let nobefore = decode_batches(&mut client, "nobefore", &[("include_before", "off")]);
    assert!(nobefore[0].schema().field_with_name(contract::BEFORE).is_err());
    assert_eq!(nobefore[0].num_rows(), 6);

    let cases = [
        (vec![("bogus", "1")], "wal2arrow does not know the option \"bogus\"", "Known options"),
        (vec![("batch_rows", "0")], "invalid value \"0\" for wal2arrow option \"batch_rows\"", "README"),
        (vec![("include_before", "maybe")], "option \"include_before\"", "README"),
        (vec![("batch_bytes", "12")], "option \"batch_bytes\"", "README"),
        (vec![("publication_names", "nope")], "publication \"nope\" does not exist", ""),
        (vec![("publication_names", "a,,b")], "option \"publication_names\"", "README"),
    ];
    for (options, message, hint) in cases {
        let err = decode_messages(&mut client, "errors", &options).expect_err("a bad option fails");
        let db = err.as_db_error().expect("a server error");
        assert!(db.message().contains(message), "{options:?}: {}", db.message());
        assert!(db.hint().unwrap_or("").contains(hint), "{options:?}: hint {:?}", db.hint());
    }
    let text =
        client.query("SELECT * FROM pg_logical_slot_get_changes('errors', NULL, NULL)", &[]).expect_err("text output");
    assert!(text.as_db_error().unwrap().message().contains("produces binary output"));

    // The failed calls consumed nothing.
    let all = decode_batches(&mut client, "errors", &[]);
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 6);
}

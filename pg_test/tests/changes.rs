//! Updates, deletes, TOAST, truncate and DDL through a real slot.

use arrow_array::cast::AsArray;
use arrow_array::Array;
use pg_test::check::{assert_matches_table, unchanged};
use pg_test::values::{before, before_ints, before_strings, field_meta, ints, ops, strings};
use pg_test::{create_slot, decode_batches, Cluster};
use pgcdc_reader::contract;

fn table_of(batch: &arrow_array::RecordBatch) -> String {
    batch.schema().metadata()[contract::META_TABLE].clone()
}

#[test]
fn before_images_follow_the_replica_identity() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("identity");
    client
        .batch_execute(
            "CREATE TABLE dflt (id int PRIMARY KEY, v text);
             CREATE TABLE full_ (id int PRIMARY KEY, v text); ALTER TABLE full_ REPLICA IDENTITY FULL;
             CREATE TABLE nothing (id int, v text); ALTER TABLE nothing REPLICA IDENTITY NOTHING;
             CREATE TABLE idx (a int NOT NULL, b int NOT NULL, v text);
             CREATE UNIQUE INDEX idx_ab ON idx (a, b); ALTER TABLE idx REPLICA IDENTITY USING INDEX idx_ab;
             INSERT INTO dflt VALUES (1, 'x'), (2, 'y'); INSERT INTO full_ VALUES (1, 'x'), (2, 'y');
             INSERT INTO nothing VALUES (1, 'x'); INSERT INTO idx VALUES (1, 2, 'x');",
        )
        .unwrap();
    create_slot(&mut client, "s");
    client
        .batch_execute(
            "UPDATE dflt SET v = 'x2' WHERE id = 1; UPDATE dflt SET id = 10 WHERE id = 2; DELETE FROM dflt WHERE id = 1;
             UPDATE full_ SET v = 'x2' WHERE id = 1; DELETE FROM full_ WHERE id = 2;
             UPDATE nothing SET v = 'x2'; DELETE FROM nothing;
             UPDATE idx SET b = 3, v = 'x2';",
        )
        .unwrap();
    let batches = decode_batches(&mut client, "s", &[]);
    let find =
        |name: &str| batches.iter().find(|b| table_of(b) == name).unwrap_or_else(|| panic!("no batch for {name}"));

    let dflt = find("dflt");
    assert_eq!(ops(dflt), ["u", "u", "d"]);
    assert_eq!(ints(dflt, "id"), [Some(1), Some(10), Some(1)]);
    assert_eq!(strings(dflt, "v"), [Some("x2".into()), Some("y".into()), None], "a delete carries only the key");
    assert!(before(dflt).is_null(0), "no old image when the key did not change");
    assert_eq!(before_ints(dflt, "id"), [None, Some(2), Some(1)]);
    assert_eq!(before_strings(dflt, "v"), [None, None, None], "DEFAULT identity logs only the key");
    assert_eq!(field_meta(dflt, "id", contract::FIELD_PG_KEY).as_deref(), Some("true"));
    assert_eq!(field_meta(dflt, "v", contract::FIELD_PG_KEY), None);

    let full = find("full_");
    assert_eq!(ops(full), ["u", "d"]);
    assert_eq!(before_strings(full, "v"), [Some("x".into()), Some("y".into())]);
    assert_eq!(strings(full, "v"), [Some("x2".into()), Some("y".into())], "a delete carries the whole old row");
    assert_eq!(field_meta(full, "v", contract::FIELD_PG_KEY).as_deref(), Some("true"), "FULL: every column identifies");

    let nothing = find("nothing");
    assert_eq!(ops(nothing), ["u", "d"]);
    assert_eq!(ints(nothing, "id"), [Some(1), None], "a delete without identity is still reported");
    assert!(before(nothing).is_null(0) && before(nothing).is_null(1));
    assert_eq!(field_meta(nothing, "id", contract::FIELD_PG_KEY), None);

    let idx = find("idx");
    assert_eq!(before_ints(idx, "a"), [Some(1)]);
    assert_eq!(before_ints(idx, "b"), [Some(2)]);
    assert_eq!(before_strings(idx, "v"), [None]);
    assert_eq!(field_meta(idx, "b", contract::FIELD_PG_KEY).as_deref(), Some("true"));
    assert_eq!(field_meta(idx, "v", contract::FIELD_PG_KEY), None);
}

#[test]
fn toasted_values_over_a_megabyte_and_unchanged_toast() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("toast");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, big text, small int, bin bytea)").unwrap();
    create_slot(&mut client, "s");
    // Row 1: 1.28 MB of hex digits and 640 kB of random bytes, stored out
    // of line; row 2: 40 kB that compresses to a few hundred bytes and stays
    // in the row; row 3: 2 MB that compresses, still too big for the row.
    client
        .batch_execute(
            "INSERT INTO t SELECT 1, string_agg(md5(g::text), ''), 1,
                                  decode(string_agg(md5((-g)::text), ''), 'hex') FROM generate_series(1, 40000) g;
             INSERT INTO t VALUES (2, repeat('ab', 20000), 2, NULL), (3, repeat('ab', 1000000), 3, NULL);",
        )
        .unwrap();
    client.batch_execute("UPDATE t SET small = small + 10").unwrap();
    client.batch_execute("ALTER TABLE t REPLICA IDENTITY FULL; UPDATE t SET small = small + 100 WHERE id = 1").unwrap();

    let batches = decode_batches(&mut client, "s", &[]);
    assert_eq!(batches.len(), 3);
    let (inserts, updates, full) = (&batches[0], &batches[1], &batches[2]);
    let sizes: Vec<usize> =
        (0..3).map(|i| inserts.column_by_name("big").unwrap().as_string::<i32>().value(i).len()).collect();
    assert_eq!(sizes, [1_280_000, 40_000, 2_000_000]);
    assert_eq!(inserts.column_by_name("bin").unwrap().as_binary::<i32>().value(0).len(), 640_000);

    // Updates: the out-of-line values were not in WAL.
    assert_eq!(unchanged(updates, 0), ["big", "bin"]);
    assert!(updates.column_by_name("big").unwrap().is_null(0));
    assert_eq!(unchanged(updates, 1), Vec::<String>::new(), "an inline compressed value travels with the row");
    assert_eq!(updates.column_by_name("big").unwrap().as_string::<i32>().value(1).len(), 40_000);
    assert_eq!(unchanged(updates, 2), ["big"]);
    assert_eq!(ints(updates, "small"), [Some(11), Some(12), Some(13)]);

    // With REPLICA IDENTITY FULL the old row is logged whole, TOAST included.
    let old_big = before(full).column_by_name("big").unwrap().as_string::<i32>().value(0).to_owned();
    let md5: bool = client.query_one("SELECT md5($1) = md5(big) FROM t WHERE id = 1", &[&old_big]).unwrap().get(0);
    assert!(md5, "the old image's 1.28 MB value equals the table's");
    assert_eq!(unchanged(full, 0), ["big", "bin"], "the new image still lacks the unchanged values");

    // Everything else equals the table, values of megabytes included.
    assert_eq!(assert_matches_table(&mut client, full, "t", "id"), 2);
    client.batch_execute("UPDATE t SET small = id").unwrap();
    assert_eq!(assert_matches_table(&mut client, inserts, "t", "id"), 12);
}

#[test]
fn ddl_starts_a_new_schema_and_loses_nothing() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("ddl");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text); CREATE TABLE u (id int)").unwrap();
    create_slot(&mut client, "s");
    // Each string is one transaction; the first changes the schema midway.
    for sql in [
        "INSERT INTO t VALUES (1, 1, 'x'); ALTER TABLE t ADD COLUMN c numeric(5,2) DEFAULT 1.5; INSERT INTO t VALUES (2, 2, 'y', 2.5)",
        "ALTER TABLE t DROP COLUMN a; INSERT INTO t VALUES (3, 'z', 3.5)",
        "ALTER TABLE t ALTER COLUMN b TYPE varchar(20); INSERT INTO t VALUES (4, 'w', 4.5)",
        "UPDATE t SET b = 'x1' WHERE id = 1",
    ] {
        client.batch_execute(sql).unwrap();
    }
    let mut batches = decode_batches(&mut client, "s", &[]);
    // Row 1 was written before ADD COLUMN: its update reads the default.
    assert_eq!(ops(&batches[4]), ["u"]);
    assert_eq!(batches[4].schema(), batches[3].schema());
    assert_eq!(assert_matches_table(&mut client, &batches[4], "t", "id"), 3);
    client.batch_execute("TRUNCATE t, u").unwrap();
    batches.extend(decode_batches(&mut client, "s", &[]));
    let columns = |i: usize| -> Vec<String> {
        batches[i].schema().fields().iter().map(|f| f.name().clone()).filter(|n| !n.starts_with('_')).collect()
    };
    assert_eq!(batches.iter().map(table_of).collect::<Vec<_>>(), ["t", "t", "t", "t", "t", "t", "u"]);
    assert_eq!(columns(0), ["id", "a", "b"]);
    assert_eq!(columns(1), ["id", "a", "b", "c"], "the rows after ADD COLUMN carry it");
    assert_eq!(ints(&batches[0], "id"), [Some(1)]);
    assert_eq!(ints(&batches[1], "id"), [Some(2)]);
    assert_eq!(columns(2), ["id", "b", "c"]);
    assert_eq!(field_meta(&batches[2], "b", contract::FIELD_PG_TYPE).as_deref(), Some("text"));
    assert_eq!(field_meta(&batches[3], "b", contract::FIELD_PG_TYPE).as_deref(), Some("character varying(20)"));
    let fingerprints: std::collections::HashSet<String> =
        batches[..4].iter().map(|b| b.schema().metadata()[contract::META_SCHEMA_FINGERPRINT].clone()).collect();
    assert_eq!(fingerprints.len(), 4, "four schema versions");
    // TRUNCATE: one row per table, its columns null.
    assert_eq!(ops(&batches[5]), ["t"]);
    assert_eq!(ops(&batches[6]), ["t"]);
    assert_eq!(ints(&batches[5], "id"), [None]);
}

//! Every mapped type, with its edge values, decoded through a real slot
//! and compared cell by cell with what SELECT returns.

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int8Type, TimestampMicrosecondType};
use arrow_array::Array;
use arrow_schema::{DataType, TimeUnit};
use pg_test::check::{assert_matches_table, unmapped};
use pg_test::{decode_batches, Cluster};
use pgcdc_reader::contract;

const SCHEMA: &str = r#"
SET timezone = 'UTC';
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN price AS numeric(12,2);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE all_types (
    id int PRIMARY KEY,
    b bool, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8,
    n numeric, n12 numeric(12,2), n38 numeric(38,0), n40 numeric(40,0), n50 numeric(50,10),
    n_neg numeric(5,-2), n_small numeric(3,5),
    t text, vc varchar(10), bp char(5), nm name, ci citext, by bytea,
    d date, tm time, ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb,
    ai int[], at text[], an numeric(6,2)[], ats timestamptz[], au uuid[], ajb jsonb[], aenum mood[], ab bytea[],
    e mood, dom posint, dprice price,
    inet_col inet, rng int4range, pt point, tz timetz, money_col money, bits bit varying(8), pr pair
);
"#;

const ROWS: &str = r#"
SET timezone = 'UTC';
INSERT INTO all_types (id) VALUES (1);
INSERT INTO all_types VALUES (2,
    false, -32768, -2147483648, -9223372036854775808, 0, '-Infinity', '-Infinity',
    '-Infinity', '-9999999999.99', '-99999999999999999999999999999999999999',
    '-9999999999999999999999999999999999999999', '-1234567890123456789012345678901234567890.0123456789',
    -9999900, -0.00999,
    '', '', '', '', '', '\x',
    '-infinity', '00:00', '-infinity', '-infinity', '-178000000 years', '00000000-0000-0000-0000-000000000000', '[]', '{}',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    'sad', 1, '-0.01',
    '0.0.0.0/0', 'empty', '(0,0)', '00:00+00', '-92233720368547758.08', B'', ROW(NULL, NULL));
INSERT INTO all_types VALUES (3,
    true, 32767, 2147483647, 9223372036854775807, 4294967295, 'Infinity', 'Infinity',
    '12345678901234567890123456789012345678901234567890.12345678901234567890', '9999999999.99', '99999999999999999999999999999999999999',
    '9999999999999999999999999999999999999999', '1234567890123456789012345678901234567890.0123456789',
    9999900, 0.00999,
    repeat('x', 10000), 'ten chars!', 'abcde', repeat('n', 63), 'MiXeD', '\xdeadbeef00ff',
    'infinity', '23:59:59.999999', 'infinity', 'infinity', '178000000 years', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{"a": [1, 2.5, "x"]}', '{"b": {"c": null}}',
    '{2147483647,-2147483648}', '{"a,b","c\"d",NULL,"", "é"}', '{1.50,NULL,-9999.99}', '{"2020-01-01 00:00:00+00",infinity,NULL}',
    '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}', '{"{}","[1, {\"k\": true}]",NULL}', '{happy,NULL,sad}', '{"\\x00",NULL,"\\x"}',
    'happy', 2147483647, '9999999999.99',
    '2001:db8::1/64', '[1,10)', '(1.5,-2.25)', '12:00:00.5+02', '92233720368547758.07', B'10100101', ROW(7, 'x,"y"'));
INSERT INTO all_types (id, f4, f8, n, n12, n50, t, d, tm, ts, tstz, iv, ai, at, j, jb, ci, u)
VALUES (4, 'NaN', 'NaN', 'NaN', 12.5, '0.0000000001', 'héllo wörld 🎉 日本語 ''quoted'' \back',
    '1969-12-31', '12:34:56.789012', '1900-01-01 12:34:56.789012', '1800-06-15 01:02:03.000004+05:30',
    '1 year 2 mons -3 days 04:05:06.000007', '{1,NULL,3}', '{NULL}', '"just a string"', '[1, "2", [3]]', 'Straße', gen_random_uuid());
INSERT INTO all_types (id, d, ts, tstz, f4, f8, n, iv)
VALUES (5, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '294000-12-31 23:59:59.999999+00', 3.4028235e38, 1.7976931348623157e308,
    '-0.000000000000000000000000000000000000000000000001', '-1 days -00:00:00.000001');
INSERT INTO all_types (id, d, ts, f4, f8) VALUES (6, '5874897-12-31', '294246-12-31 23:59:59.999999', 1.4e-45, 5e-324);
-- Values with no faithful Arrow form: they travel as text in _unmapped.
INSERT INTO all_types (id, n12, ts, tstz, tm, iv, ai, at, an)
VALUES (7, 'NaN', '294270-01-01 00:00:00', '294276-12-31 23:59:59.999999+00', '24:00:00', '2562047788 hours',
    '{{1,2},{3,4}}', '[0:1]={a,b}', '{1.5,NaN}');
"#;

#[test]
fn every_type_equals_what_select_returns() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("types");
    client.batch_execute(SCHEMA).unwrap();
    client.query("SELECT pg_create_logical_replication_slot('s', 'wal2arrow')", &[]).unwrap();
    client.batch_execute(ROWS).unwrap();

    // One transaction (a multi-statement simple query): one message.
    let batches = decode_batches(&mut client, "s", &[]);
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.num_rows(), 7);
    assert_eq!(batch.schema().metadata()[contract::META_TABLE], "all_types");
    let cells = assert_matches_table(&mut client, batch, "all_types", "id");
    let columns = batch.schema().fields().len() - 7 - 3;
    assert_eq!(columns, 47);
    assert_eq!(cells, 7 * columns, "every cell of every row compared");
    // The check can fail: change one value behind the batch's back.
    client.batch_execute("UPDATE all_types SET i8 = i8 - 1 WHERE id = 3").unwrap();
    let stale = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_matches_table(&mut client, batch, "all_types", "id");
    }));
    assert!(stale.is_err(), "a changed value must be noticed");

    let schema = batch.schema();
    let type_of = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(type_of("o"), DataType::UInt32);
    assert_eq!(type_of("n"), DataType::Utf8);
    assert_eq!(type_of("n12"), DataType::Decimal128(12, 2));
    assert_eq!(type_of("n38"), DataType::Decimal128(38, 0));
    assert_eq!(type_of("n40"), DataType::Decimal256(40, 0));
    assert_eq!(type_of("n_neg"), DataType::Decimal128(5, -2));
    assert_eq!(type_of("n_small"), DataType::Decimal128(5, 5));
    assert_eq!(type_of("dprice"), DataType::Decimal128(12, 2), "a domain maps as its base type");
    assert_eq!(type_of("dom"), DataType::Int32);
    assert_eq!(type_of("tstz"), DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
    assert_eq!(type_of("u"), DataType::FixedSizeBinary(16));
    assert!(matches!(type_of("ai"), DataType::List(f) if f.data_type() == &DataType::Int32));
    assert!(matches!(type_of("ajb"), DataType::List(f) if f.data_type() == &DataType::Utf8));
    for name in ["e", "ci", "inet_col", "rng", "pt", "tz", "money_col", "bits", "pr", "jb"] {
        assert_eq!(type_of(name), DataType::Utf8, "{name}");
    }
    let meta = |name: &str, key: &str| schema.field_with_name(name).unwrap().metadata().get(key).cloned();
    assert_eq!(meta("u", "ARROW:extension:name").as_deref(), Some("arrow.uuid"));
    assert_eq!(meta("jb", "ARROW:extension:name").as_deref(), Some("arrow.json"));
    assert_eq!(meta("dprice", contract::FIELD_PG_TYPE).as_deref(), Some("price"));
    assert_eq!(meta("vc", contract::FIELD_PG_TYPE).as_deref(), Some("character varying(10)"));
    assert_eq!(meta("id", contract::FIELD_PG_KEY).as_deref(), Some("true"));
    assert_eq!(meta("b", contract::FIELD_PG_KEY), None);

    // Infinities use the sentinels documented in pgformat::datetime.
    // Rows arrive in insert order: row index = id - 1.
    let ts = |name: &str, id: usize| {
        batch.column_by_name(name).unwrap().as_primitive::<TimestampMicrosecondType>().value(id - 1)
    };
    assert_eq!(ts("ts", 3), i64::MAX);
    assert_eq!(ts("tstz", 2), -i64::MAX);
    assert_eq!(batch.column_by_name("d").unwrap().as_primitive::<Date32Type>().value(2), i32::MAX);
    assert_eq!(ts("ts", 4), -2_208_943_503_210_988, "1900-01-01 12:34:56.789012 before 1970");
    // NaN in an unconstrained numeric is text, distinct from NULL.
    assert_eq!(batch.column_by_name("n").unwrap().as_string::<i32>().value(3), "NaN");
    assert!(batch.column_by_name("n").unwrap().is_null(0));

    let mut refused: Vec<String> = unmapped(batch, 6).into_iter().map(|(k, _)| k).collect();
    refused.sort();
    assert_eq!(refused, ["ai", "an", "at", "iv", "n12", "tm", "ts", "tstz"]);
    assert!(unmapped(batch, 6).contains(&("ai".into(), "{{1,2},{3,4}}".into())));
    assert!(unmapped(batch, 6).contains(&("n12".into(), "NaN".into())));
    for row in 0..6 {
        assert_eq!(unmapped(batch, row), [], "row {} has a faithful Arrow form", row + 1);
    }
    let ops = batch.column_by_name(contract::OP).unwrap().as_dictionary::<Int8Type>();
    assert!(ops.keys().values().iter().all(|k| ops.values().as_string::<i32>().value(*k as usize) == "c"));
}

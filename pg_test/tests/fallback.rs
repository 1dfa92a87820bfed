//! Types the mapping does not know, values it cannot hold, and identifiers
//! of every shape: none of them may stop the slot or change a value.

use arrow_schema::DataType;
use pg_test::check::{assert_matches_table, unmapped};
use pg_test::values::{field_meta, ints, strings};
use pg_test::{create_slot, decode_batches, Cluster};
use pgcdc_reader::contract;

#[test]
fn unknown_types_fall_back_to_text_and_the_slot_keeps_going() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("fallback");
    // `geo` stands in for an extension type such as PostGIS's geometry: a
    // base type with its own OID, unknown to the mapping.
    client
        .batch_execute(
            "CREATE TYPE geo;
             CREATE FUNCTION geo_in(cstring) RETURNS geo AS 'textin' LANGUAGE internal IMMUTABLE STRICT;
             CREATE FUNCTION geo_out(geo) RETURNS cstring AS 'textout' LANGUAGE internal IMMUTABLE STRICT;
             CREATE TYPE geo (INPUT = geo_in, OUTPUT = geo_out, LIKE = text);
             CREATE TYPE pair AS (a int, b text);
             CREATE TABLE odd (id int PRIMARY KEY, g geo, gs geo[], p pair, ps pair[], grid int[], r tsrange, m macaddr);",
        )
        .unwrap();
    create_slot(&mut client, "s");
    client
        .batch_execute(
            "INSERT INTO odd VALUES (1, 'POINT(1 2)', '{\"POINT(0 0)\",NULL}', ROW(1, 'a b'), ARRAY[ROW(2, NULL)::pair],
                '{{1,2},{3,NULL}}', '[2020-01-01, infinity)', '08:00:2b:01:02:03');
             INSERT INTO odd VALUES (2, NULL, '{}', NULL, '{}', '[5:6]={7,8}', 'empty', NULL);
             INSERT INTO odd VALUES (3, '', NULL, ROW(NULL, NULL), NULL, '{{{1}}}', NULL, NULL);",
        )
        .unwrap();
    client.batch_execute("INSERT INTO odd (id, grid) VALUES (4, '{1,2}')").unwrap();

    let batches = decode_batches(&mut client, "s", &[]);
    assert_eq!(batches.len(), 2, "both transactions decoded");
    let odd = &batches[0];
    for name in ["g", "gs", "p", "ps", "r", "m"] {
        assert_eq!(odd.schema().field_with_name(name).unwrap().data_type(), &DataType::Utf8, "{name} is text");
    }
    assert_eq!(field_meta(odd, "g", contract::FIELD_PG_TYPE).as_deref(), Some("geo"));
    assert_eq!(field_meta(odd, "gs", contract::FIELD_PG_TYPE).as_deref(), Some("geo[]"));
    assert_eq!(strings(odd, "g"), [Some("POINT(1 2)".into()), None, Some("".into())]);
    assert_eq!(strings(odd, "p")[0].as_deref(), Some("(1,\"a b\")"));
    // int[] is List<Int32>; the shapes a list cannot hold travel as text.
    assert!(matches!(odd.schema().field_with_name("grid").unwrap().data_type(), DataType::List(_)));
    assert_eq!(unmapped(odd, 0), [("grid".to_owned(), "{{1,2},{3,NULL}}".to_owned())]);
    assert_eq!(unmapped(odd, 1), [("grid".to_owned(), "[5:6]={7,8}".to_owned())]);
    assert_eq!(unmapped(odd, 2), [("grid".to_owned(), "{{{1}}}".to_owned())]);
    assert_eq!(assert_matches_table(&mut client, odd, "odd", "id"), 3 * 8);
    assert_eq!(ints(&batches[1], "id"), [Some(4)]);
    assert_eq!(assert_matches_table(&mut client, &batches[1], "odd", "id"), 8);
}

#[test]
fn identifiers_of_every_shape() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("idents");
    client
        .batch_execute(
            r#"CREATE SCHEMA "My Schema";
               CREATE TABLE "My Schema"."Odd.Name" ("Mixed Case" int PRIMARY KEY, "dotted.col" text, "ünïcödé" text, "quote""d" int, lower_case int);
               CREATE SCHEMA "日本";
               CREATE TABLE "日本"."表" ("列" text PRIMARY KEY);"#,
        )
        .unwrap();
    create_slot(&mut client, "s");
    client
        .batch_execute(
            r#"INSERT INTO "My Schema"."Odd.Name" VALUES (1, 'a.b', 'ü', 7, 8);
               INSERT INTO "日本"."表" VALUES ('値');"#,
        )
        .unwrap();
    let batches = decode_batches(&mut client, "s", &[]);
    let odd = &batches[0];
    assert_eq!(odd.schema().metadata()[contract::META_SCHEMA], "My Schema");
    assert_eq!(odd.schema().metadata()[contract::META_TABLE], "Odd.Name");
    assert_eq!(strings(odd, contract::SCHEMA), [Some("My Schema".into())]);
    assert_eq!(strings(odd, contract::TABLE), [Some("Odd.Name".into())]);
    let names: Vec<String> = odd.schema().fields().iter().skip(7).take(5).map(|f| f.name().clone()).collect();
    assert_eq!(names, ["Mixed Case", "dotted.col", "ünïcödé", "quote\"d", "lower_case"]);
    assert_eq!(assert_matches_table(&mut client, odd, r#""My Schema"."Odd.Name""#, "Mixed Case"), 5);
    let jp = &batches[1];
    assert_eq!(jp.schema().metadata()[contract::META_TABLE], "表");
    assert_eq!(strings(jp, "列"), [Some("値".into())]);
}

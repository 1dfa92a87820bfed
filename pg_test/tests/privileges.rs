//! Who may do what: `cdc_auto_configure` checks every right it needs
//! before it creates a slot (and drops the slot if anything after fails),
//! never adopts a slot or publication that is not the stream's, and each
//! role sees the routes of the tables it may SELECT.

use pg_test::e2e::configure;
use pg_test::Cluster;
use postgres::Client;

fn error_of(client: &mut Client, sql: &str) -> (String, Option<String>) {
    let e = client.batch_execute(sql).expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.message().to_owned(), db.hint().map(str::to_owned))
}

fn slots(client: &mut Client) -> Vec<String> {
    client
        .query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_role_that_cannot_finish_leaves_no_slot_and_nothing_foreign_is_adopted() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("rights");
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             CREATE ROLE rep LOGIN REPLICATION; GRANT CREATE ON DATABASE rights TO rep;
             GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pgcdc TO rep;",
        )
        .unwrap();
    // REPLICATION, but t is not rep's: refused before any slot exists.
    let (mut rep, _) = cluster.connect_collecting_notices("rights", "rep");
    let (message, hint) = error_of(&mut rep, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'rep')");
    assert_eq!(message, "the current role does not own t");
    assert!(hint.unwrap().contains("run cdc_auto_configure as that role"));
    assert!(slots(&mut client).is_empty(), "no slot left retaining WAL");

    // Without the catalog rights: the same.
    client.batch_execute("ALTER TABLE t OWNER TO rep; REVOKE DELETE ON pgcdc.routes FROM rep").unwrap();
    let (message, hint) = error_of(&mut rep, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'rep')");
    assert_eq!(message, "the current role may not write pgcdc's catalog (the pgcdc schema's tables)");
    assert!(hint.unwrap().contains("GRANT USAGE ON SCHEMA pgcdc"));
    assert!(slots(&mut client).is_empty());
    client.batch_execute("GRANT DELETE ON pgcdc.routes TO rep").unwrap();
    configure(&mut rep, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'rep')");
    assert_eq!(slots(&mut client), ["rep"], "with every right, the stream");

    // A slot someone made by hand is not adopted, nor is a publication.
    client.batch_execute("SELECT pg_create_logical_replication_slot('mine', 'wal2arrow')").unwrap();
    let (message, hint) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'mine')");
    assert_eq!(message, "replication slot \"mine\" exists and is not a pgcdc stream");
    assert!(hint.unwrap().contains("pg_drop_replication_slot('mine')"));
    client.batch_execute("CREATE PUBLICATION theirs FOR TABLE t").unwrap();
    let (message, _) = error_of(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.t', slot_name => 'other', publication_name => 'theirs')",
    );
    assert_eq!(message, "publication \"theirs\" exists and is not this stream's");
    assert_eq!(slots(&mut client), ["mine", "rep"], "and no new slot");
    let tables: i64 =
        client.query_one("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'theirs'", &[]).unwrap().get(0);
    assert_eq!(tables, 1, "their publication untouched");
}

#[test]
fn each_role_sees_the_routes_of_the_tables_it_may_read() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("seen");
    // Names that would make one file name if rings were named after them.
    client
        .batch_execute(
            r#"CREATE SCHEMA "a.b"; CREATE TABLE "a.b".c (id int PRIMARY KEY);
               CREATE SCHEMA a; CREATE TABLE a."b.c" (id int PRIMARY KEY);
               CREATE ROLE analyst LOGIN; GRANT USAGE ON SCHEMA a TO analyst; GRANT SELECT ON a."b.c" TO analyst;"#,
        )
        .unwrap();
    let routes =
        configure(&mut client, r#"SELECT * FROM cdc_auto_configure(ARRAY['"a.b".c', 'a."b.c"'], slot_name => 'seen')"#);
    assert_eq!(routes.len(), 2);
    assert_ne!(routes[0].1, routes[1].1, "two tables, two rings");

    let (mut analyst, _) = cluster.connect_collecting_notices("seen", "analyst");
    let visible: Vec<String> =
        analyst.query("SELECT route FROM cdc_routes('seen')", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(visible, ["a.b.c"], "only the table analyst may SELECT");
    let status: i64 = analyst.query_one("SELECT count(*) FROM cdc_status()", &[]).unwrap().get(0);
    assert_eq!(status, 1);
    // Reading is not configuring.
    for sql in [
        "SELECT cdc_drop('seen')",
        "SELECT cdc_register_consumer('seen', 'me')",
        "SELECT cdc_drop_consumer('seen', 'default')",
    ] {
        let (message, _) = error_of(&mut analyst, sql);
        assert_eq!(message, "the current role may not write pgcdc's catalog (the pgcdc schema's tables)", "{sql}");
    }
}

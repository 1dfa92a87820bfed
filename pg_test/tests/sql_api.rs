//! The cdc_* functions against real clusters: discovery, matching,
//! configuration checks and cdc_auto_configure end to end.

use pg_test::values::ints;
use pg_test::{Cluster, Settings};
use pgcdc_reader::changes::ChangeReader;
use pgcdc_reader::contract;
use postgres::Client;

const TABLES: &str = r#"
CREATE TABLE public.users (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigint PRIMARY KEY, amount numeric(12,2), tags text[], doc jsonb);
CREATE TABLE public.user_001 (id int PRIMARY KEY);
CREATE TABLE public.user_002 (id int PRIMARY KEY);
CREATE TABLE public.user_abc (id int PRIMARY KEY);
CREATE TABLE public.no_key (v text);
CREATE TABLE public.full_ident (v text); ALTER TABLE public.full_ident REPLICA IDENTITY FULL;
CREATE TABLE public.events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Odd.Name" ("Id" int PRIMARY KEY, "quote""d" text);
CREATE TABLE "My Schema"."ünï" (id int PRIMARY KEY);
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id int PRIMARY KEY);
"#;

fn rows(client: &mut Client, sql: &str) -> Vec<Vec<String>> {
    client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| (d.message(), d.hint()))))
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_owned()).collect())
            }
            _ => None,
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<Vec<String>> {
    list.iter().map(|(s, t)| vec![s.to_string(), t.to_string()]).collect()
}

fn error_of(client: &mut Client, sql: &str) -> (String, Option<String>) {
    let e = client.batch_execute(sql).expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.message().to_owned(), db.hint().map(str::to_owned))
}

#[test]
fn discovery_columns_and_matching() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("discover");
    client.batch_execute(TABLES).unwrap();

    assert_eq!(
        rows(&mut client, "SELECT * FROM cdc_discover_tables()"),
        pairs(&[
            ("My Schema", "Odd.Name"),
            ("My Schema", "ünï"),
            ("public", "events"),
            ("public", "full_ident"),
            ("public", "no_key"),
            ("public", "orders"),
            ("public", "user_001"),
            ("public", "user_002"),
            ("public", "user_abc"),
            ("public", "users"),
            ("sales", "orders"),
        ]),
        "partitions and pgcdc's own catalog are left out"
    );
    assert_eq!(
        rows(&mut client, "SELECT * FROM cdc_table_columns('public', 'orders')"),
        [
            ["id", "bigint", "f", "Int64", "t"],
            ["amount", "numeric(12,2)", "t", "Decimal128(12, 2)", "f"],
            ["tags", "text[]", "t", "List<Utf8>", "f"],
            ["doc", "jsonb", "t", "Utf8 (arrow.json)", "f"],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(
        rows(&mut client, "SELECT column_name, replica_identity FROM cdc_table_columns('My Schema', 'Odd.Name')"),
        [["Id", "t"], ["quote\"d", "f"]].map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(
        rows(&mut client, "SELECT bool_and(replica_identity) FROM cdc_table_columns('public', 'full_ident')"),
        [["t"]]
    );
    let (message, _) = error_of(&mut client, "SELECT * FROM cdc_table_columns('public', 'nope')");
    assert_eq!(message, "table \"public\".\"nope\" does not exist");

    let matched = |client: &mut Client, args: &str| rows(client, &format!("SELECT * FROM cdc_match_tables({args})"));
    assert_eq!(
        matched(&mut client, "ARRAY['public.user_[0-9]+']"),
        pairs(&[("public", "user_001"), ("public", "user_002")])
    );
    assert_eq!(matched(&mut client, "ARRAY['*.orders']"), pairs(&[("public", "orders"), ("sales", "orders")]));
    assert_eq!(
        matched(&mut client, "ARRAY['public.user*'], ARRAY['public.user_abc']"),
        pairs(&[("public", "user_001"), ("public", "user_002"), ("public", "users")])
    );
    assert_eq!(
        matched(&mut client, r#"ARRAY['"My Schema"."Odd.Name"', 'MY SCHEMA.Ü*']"#),
        pairs(&[("My Schema", "Odd.Name"), ("My Schema", "ünï")])
    );
    assert_eq!(matched(&mut client, "ARRAY['discover.sales.*']"), pairs(&[("sales", "orders")]));
    assert_eq!(matched(&mut client, "ARRAY['otherdb.sales.*']"), Vec::<Vec<String>>::new());
    assert_eq!(matched(&mut client, r"ARRAY['sal\.s\.orders']"), pairs(&[("sales", "orders")]));
    let (message, hint) = error_of(&mut client, "SELECT * FROM cdc_match_tables(ARRAY['public.user_[0-9'])");
    assert!(message.starts_with("table pattern \"public.user_[0-9\" is not a valid regular expression:"), "{message}");
    assert!(message.contains("unclosed character class"), "{message}");
    assert!(hint.unwrap().contains("regular expressions"));
}

#[test]
fn auto_configure_creates_everything_once_and_follows_pattern_changes() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("configure");
    client.batch_execute(TABLES).unwrap();
    client.batch_execute("CREATE ROLE reader").unwrap();
    let (mut client, notices) = cluster.connect_collecting_notices("configure", "postgres");

    let configure =
        "SELECT schema_name, table_name, route FROM cdc_auto_configure(ARRAY['public.*', '\"My Schema\".*'], exclude => ARRAY['public.user_abc'], \
                     slot_name => 'cdc', grant_to => 'reader')";
    let routes = rows(&mut client, configure);
    let expected: Vec<Vec<String>> = [
        ("My Schema", "Odd.Name"),
        ("My Schema", "ünï"),
        ("public", "events"),
        ("public", "full_ident"),
        ("public", "no_key"),
        ("public", "orders"),
        ("public", "user_001"),
        ("public", "user_002"),
        ("public", "users"),
    ]
    .iter()
    .map(|(s, t)| vec![s.to_string(), t.to_string(), format!("{s}.{t}")])
    .collect();
    assert_eq!(routes, expected);
    assert_eq!(
        notices.lock().unwrap().iter().filter(|n| n.starts_with("WARNING")).cloned().collect::<Vec<_>>(),
        ["WARNING: table public.no_key has no primary key or replica identity: its updates and deletes will carry no old key. \
          Fix: ALTER TABLE public.no_key REPLICA IDENTITY FULL; (or add a primary key)"]
    );

    // The publication lists the tables explicitly, the partitioned one as
    // its root; the slot uses wal2arrow; the role may read every table.
    let published =
        "SELECT n.nspname, c.relname FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
                     JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE p.pubname = 'cdc' ORDER BY 1, 2";
    let tables: Vec<Vec<String>> = expected.iter().map(|r| r[..2].to_vec()).collect();
    assert_eq!(rows(&mut client, published), tables);
    assert_eq!(
        rows(&mut client, "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = 'cdc'"),
        [["f", "t"]]
    );
    assert_eq!(
        rows(&mut client, "SELECT plugin, slot_type FROM pg_replication_slots WHERE slot_name = 'cdc'"),
        [["wal2arrow", "logical"]]
    );
    assert_eq!(
        rows(
            &mut client,
            r#"SELECT has_table_privilege('reader', '"My Schema"."Odd.Name"', 'SELECT'),
                                   has_table_privilege('reader', 'public.user_abc', 'SELECT')"#
        ),
        [["t", "f"]]
    );
    assert_eq!(
        rows(&mut client, "SELECT slot_name, publication_name, patterns::text, exclude::text, route_by_table, reader_role FROM pgcdc.streams"),
        [["cdc", "cdc", "{public.*,\"\\\"My Schema\\\".*\"}", "{public.user_abc}", "t", "reader"]]
    );
    assert_eq!(rows(&mut client, "SELECT count(*) FROM pgcdc.routes WHERE slot_name = 'cdc'"), [["9"]]);

    // Again: same answer, and nothing was rewritten.
    let versions = "SELECT (SELECT string_agg(xmin::text, ',' ORDER BY slot_name) FROM pgcdc.streams),
                           (SELECT string_agg(xmin::text, ',' ORDER BY table_name) FROM pgcdc.routes),
                           (SELECT string_agg(pr.xmin::text, ',' ORDER BY prrelid) FROM pg_publication_rel pr),
                           (SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'cdc')";
    let before = rows(&mut client, versions);
    assert_eq!(rows(&mut client, configure), expected);
    assert_eq!(rows(&mut client, versions), before, "a repeated call changes nothing");

    // The slot streams the matched tables, through the publication.
    client
        .batch_execute(
            "INSERT INTO public.users VALUES (1, 'ada'); INSERT INTO public.user_abc VALUES (1);
             INSERT INTO sales.orders VALUES (1); INSERT INTO public.events VALUES (7, '2024-03-01')",
        )
        .unwrap();
    // The worker cdc_auto_configure started streams them into their rings;
    // a partition's rows reach its root's ring.
    let mut routes = cluster.connect_to("configure");
    let mut ring = |table: &str| -> Option<std::path::PathBuf> {
        let row = routes
            .query_opt(
                "SELECT ring_path FROM cdc_routes('cdc') WHERE schema_name = 'public' AND table_name = $1",
                &[&table],
            )
            .unwrap()?;
        let path: String = row.get(0);
        assert!(path.starts_with(&cluster.ring_directory().display().to_string()), "{path}");
        Some(path.into())
    };
    let wait = std::time::Duration::from_secs(30);
    let mut users = ChangeReader::open_waiting(&ring("users").unwrap(), "default", wait).unwrap();
    // Each empty table's snapshot completed as the stream was configured.
    let marker = users.next_batch(wait).unwrap().expect("the completion marker");
    assert!(pgcdc_reader::snapshot::completes_snapshot(&marker));
    let batch = users.next_batch(wait).unwrap().unwrap_or_else(|| panic!("the users insert\n{}", cluster.log()));
    assert_eq!(batch.schema().metadata()[contract::META_TABLE], "users");
    assert_eq!(ints(&batch, "id"), [Some(1)]);
    let mut events = ChangeReader::open_waiting(&ring("events").unwrap(), "default", wait).unwrap();
    assert!(pgcdc_reader::snapshot::completes_snapshot(&events.next_batch(wait).unwrap().expect("its marker")));
    let batch = events.next_batch(wait).unwrap().expect("the partition's insert");
    assert_eq!(batch.schema().metadata()[contract::META_TABLE], "events");
    assert_eq!(ints(&batch, "id"), [Some(7)]);
    assert!(ring("user_abc").is_none(), "excluded tables have no route");

    // A changed pattern list updates the publication and the catalog.
    let narrowed = rows(
        &mut client,
        "SELECT schema_name, table_name, route FROM cdc_auto_configure('public.user*', slot_name => 'cdc')",
    );
    assert_eq!(
        narrowed,
        [
            ["public", "user_001", "public.user_001"],
            ["public", "user_002", "public.user_002"],
            ["public", "user_abc", "public.user_abc"],
            ["public", "users", "public.users"]
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(
        rows(&mut client, published),
        pairs(&[("public", "user_001"), ("public", "user_002"), ("public", "user_abc"), ("public", "users")])
    );
    assert_eq!(rows(&mut client, "SELECT pubviaroot FROM pg_publication WHERE pubname = 'cdc'"), [["f"]]);
    assert_eq!(
        rows(&mut client, "SELECT patterns::text, route_by_table FROM pgcdc.streams"),
        [["{public.user*}", "t"]]
    );
    assert_eq!(rows(&mut client, "SELECT count(*), min(route) FROM pgcdc.routes"), [["4", "public.user_001"]]);

    // The routing is the stream's for good: another one is refused, with
    // the remedy.
    let (message, hint) = error_of(
        &mut client,
        "SELECT * FROM cdc_auto_configure('public.user*', slot_name => 'cdc', route_by_table => false)",
    );
    assert_eq!(message, "stream \"cdc\" has route_by_table = true; it cannot change to false");
    assert!(hint.unwrap().contains("cdc_drop('cdc')"));

    // cdc_drop removes the slot, the publication and the catalog rows.
    if let Err(e) = client.batch_execute("SELECT cdc_drop('cdc')") {
        let activity =
            rows(&mut client, "SELECT pid, backend_type, application_name, state, backend_start FROM pg_stat_activity");
        panic!(
            "{:?}\n{activity:?}\n{}",
            e.as_db_error().map(|d| d.message()),
            cluster.log().lines().filter(|l| l.contains("UTC")).collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(
        rows(
            &mut client,
            "SELECT (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_publication),
                                  (SELECT count(*) FROM pgcdc.streams), (SELECT count(*) FROM pgcdc.routes)"
        ),
        [["0", "0", "0", "0"]]
    );
    let (message, _) = error_of(&mut client, "SELECT cdc_drop('cdc')");
    assert_eq!(message, "no pgcdc stream uses replication slot \"cdc\"");
}

#[test]
fn configuration_errors_are_clear() {
    let cluster = Cluster::start();
    let mut client = cluster.database_with_pgcdc("errors");
    client.batch_execute(TABLES).unwrap();

    let (message, hint) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('public.user')");
    assert_eq!(message, "table pattern \"public.user\" matches no table");
    assert_eq!(hint.as_deref(), Some("Did you mean public.users or public.user_001 or public.user_002?"));
    let (message, _) =
        error_of(&mut client, "SELECT * FROM cdc_auto_configure(ARRAY['public.users', 'nope.*', 'x.y'])");
    assert_eq!(message, "table patterns \"nope.*\", \"x.y\" match no table");
    let (message, _) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('public.(')");
    assert!(message.starts_with("table pattern \"public.(\" is not a valid regular expression"), "{message}");
    let (message, _) =
        error_of(&mut client, "SELECT * FROM cdc_auto_configure('sales.*', exclude => ARRAY['*.orders'])");
    assert_eq!(message, "every table the patterns match is excluded");
    let (message, _) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('sales.*', grant_to => 'nobody')");
    assert_eq!(message, "role \"nobody\" does not exist");
    client.query("SELECT pg_create_logical_replication_slot('taken', 'test_decoding')", &[]).unwrap();
    let (message, hint) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('sales.*', slot_name => 'taken')");
    assert_eq!(message, "replication slot \"taken\" exists with output plugin \"test_decoding\", not wal2arrow");
    assert!(hint.unwrap().contains("pg_drop_replication_slot('taken')"));
    assert_eq!(rows(&mut client, "SELECT count(*) FROM pg_publication"), [["0"]], "nothing half-configured");

    // A role without REPLICATION (or superuser) is told what it lacks.
    client.batch_execute("CREATE ROLE app LOGIN; GRANT CREATE ON DATABASE errors TO app").unwrap();
    let (mut app, _) = cluster.connect_collecting_notices("errors", "app");
    let (message, _) = error_of(&mut app, "SELECT * FROM cdc_auto_configure('sales.*')");
    assert_eq!(
        message,
        "PostgreSQL not configured for logical replication:\n\n\
         ❌ role \"app\" has neither SUPERUSER nor REPLICATION, needed to create and read replication slots\n\n\
         Grant the missing privileges:\n  as a superuser: ALTER ROLE app WITH REPLICATION;"
    );
    assert_eq!(
        rows(&mut app, "SELECT setting, ok, fix FROM cdc_check_config() WHERE NOT ok"),
        [["replication privilege", "f", "as a superuser: ALTER ROLE app WITH REPLICATION;"]]
    );

    // Names with spaces, quotes, dots, capitals and non-ASCII letters reach
    // SQL quoted.
    let (message, _) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('sales.*', slot_name => 'odd slot')");
    assert_eq!(message, "replication slot name \"odd slot\" contains invalid character");
    let routes = rows(
        &mut client,
        r#"SELECT * FROM cdc_auto_configure('"My Schema".*', slot_name => 'odd_slot', publication_name => 'Odd "pub"')"#,
    );
    let rings: Vec<String> = routes.iter().map(|r| r[3].clone()).collect();
    let stream = rows(
        &mut client,
        "SELECT system_identifier::text, (SELECT oid::text FROM pg_database WHERE datname = current_database()),
                (SELECT string_agg(c.oid::text, ',' ORDER BY c.relname) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'My Schema' AND c.relkind = 'r')
         FROM pg_control_system()",
    );
    let [system, database, tables] = &stream[0][..] else { panic!("{stream:?}") };
    let dir = format!("{}/{system}/{database}/odd_slot", cluster.ring_directory().display());
    let expected: Vec<String> = tables.split(',').map(|relid| format!("{dir}/{relid}.ring")).collect();
    assert_eq!(rings, expected, "ring files under pgcdc.ring_directory, by cluster, database, slot and table OID");
    let routes: Vec<Vec<String>> = routes.into_iter().map(|r| r[..3].to_vec()).collect();
    assert_eq!(
        routes,
        [["My Schema", "Odd.Name", "My Schema.Odd.Name"], ["My Schema", "ünï", "My Schema.ünï"]]
            .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(rows(&mut client, "SELECT pubname FROM pg_publication"), [["Odd \"pub\""]]);
    assert_eq!(rows(&mut client, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'odd_slot'"), [["1"]]);
    assert_eq!(
        rows(
            &mut client,
            r#"SELECT count(*) FROM pg_publication_tables WHERE pubname = 'Odd "pub"' AND schemaname = 'My Schema'"#
        ),
        [["2"]]
    );
}

#[test]
fn a_server_without_logical_wal_gets_the_whole_report() {
    let cluster = Cluster::start_with(Settings { wal_level: "replica", ..Settings::default() });
    let mut client = cluster.database_with_pgcdc("replica");
    client.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    let (message, _) = error_of(&mut client, "SELECT * FROM cdc_auto_configure('public.t')");
    assert_eq!(
        message,
        "PostgreSQL not configured for logical replication:\n\n\
         ❌ wal_level is 'replica' but must be 'logical'\n\n\
         Required postgresql.conf settings:\n  wal_level = logical\n  max_replication_slots = 10\n  max_wal_senders = 10\n\n\
         Restart PostgreSQL after changing settings."
    );
    let checks = rows(&mut client, "SELECT setting, current_value, required, ok, fix FROM cdc_check_config()");
    assert_eq!(
        checks[0],
        ["wal_level", "replica", "logical", "f", "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"]
    );
    let names: Vec<&str> = checks.iter().map(|r| r[0].as_str()).collect();
    let mut expected = vec!["wal_level", "max_replication_slots", "max_wal_senders"];
    if pg_test::has_output_plugin_libraries(&pg_test::bindir()) {
        expected.push("output_plugin_libraries");
    }
    expected.extend(["replication privilege", "create publications"]);
    assert_eq!(names, expected);
    assert!(checks[1..].iter().all(|r| r[3] == "t"), "{checks:?}");
}

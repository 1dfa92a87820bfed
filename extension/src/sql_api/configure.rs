//! `cdc_auto_configure` and `cdc_drop`: from patterns to a publication, a
//! `wal2arrow` slot, grants and a catalog entry, idempotently.
//!
//! Order matters: PostgreSQL refuses to create a logical slot in a
//! transaction that has written anything, so everything before the slot is
//! read-only (checks, matching) and everything after it writes. Should a
//! later step fail, the slot (which is not transactional) stays and the
//! next run reuses it.
//!
//! Nothing here tells a running worker about the new table list: the
//! publication does, at the position in the WAL where this transaction
//! commits (decoding reads it as it was then), and the worker finds each
//! table's ring from the table's OID. A worker that is not running is
//! started once the transaction commits, so it never reads a catalog
//! older than what this call wrote.

use super::config;
use super::consumers;
use super::discover::{self, Identity, Table};
use super::error::SqlError;
use super::lookup;
use crate::snapshot;
use crate::worker;
use pgcdc_reader::pattern::{nearest, TableFilter};
use pgcdc_reader::ring::file::RingKey;
use pgrx::spi::{quote_identifier, quote_literal, quote_qualified_identifier, Spi};
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::collections::BTreeSet;

/// What a stream is asked to be.
pub struct Request {
    pub patterns: Vec<String>,
    pub exclude: Vec<String>,
    pub slot: String,
    pub publication: Option<String>,
    pub route_by_table: bool,
    pub grant_to: Option<String>,
    /// Routes per table, by a hash of its replica identity key.
    pub partitions: i32,
    /// A consumer to register (if it is not yet).
    pub consumer: Option<String>,
    /// Whether tables that join the stream are snapshotted.
    pub snapshot: bool,
    /// A failover slot (PostgreSQL 17+): synchronized to standbys that
    /// `sync_replication_slots`, so a promoted one continues the stream.
    /// None: as the stream's slot was made (not, for a new one).
    pub failover: Option<bool>,
}

/// One route of a configured stream.
pub struct Route {
    pub relid: u32,
    pub schema: String,
    pub table: String,
    pub route: String,
    /// Which of the table's key-hash partitions (0 when not split).
    pub partition: i32,
    /// The ring file the worker writes the route's changes to.
    pub ring_path: String,
}

pub fn auto_configure(request: Request) -> Result<Vec<Route>, SqlError> {
    if !(1..=64).contains(&request.partitions) {
        return Err(SqlError::Partitions(request.partitions));
    }
    let slot_plugin: Option<String> = lookup::optional(
        "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
        &[request.slot.as_str().into()],
    )?;
    if let Some(plugin) = &slot_plugin {
        if plugin != "wal2arrow" {
            return Err(SqlError::SlotPlugin { slot: request.slot.clone(), plugin: plugin.clone() });
        }
        let elsewhere: Option<String> = lookup::optional(
            "SELECT database::text FROM pg_replication_slots WHERE slot_name = $1 AND database <> current_database()",
            &[request.slot.as_str().into()],
        )?;
        if let Some(database) = elsewhere {
            return Err(SqlError::SlotElsewhere { slot: request.slot.clone(), database });
        }
        // A slot someone else made (or a stream of another database's
        // pgcdc) is not adopted: its position is not ours to move.
        let ours: Option<bool> =
            lookup::optional("SELECT true FROM pgcdc.streams WHERE slot_name = $1", &[request.slot.as_str().into()])?;
        if ours.is_none() {
            return Err(SqlError::ForeignSlot(request.slot.clone()));
        }
    }
    // A stream whose slot was invalidated, or dropped outside pgcdc, gets a
    // new one; what the old one had not streamed is gone from the WAL, so
    // its tables are snapshotted again (below).
    let invalidated: Option<String> = match slot_plugin {
        Some(_) => lookup::optional(
            &format!("SELECT {} FROM pg_replication_slots s WHERE slot_name = $1", worker::SLOT_INVALIDATED),
            &[request.slot.as_str().into()],
        )?,
        None => None,
    };
    let recorded = lookup::optional::<bool>(
        "SELECT true FROM pgcdc.streams WHERE slot_name = $1",
        &[request.slot.as_str().into()],
    )?
    .is_some();
    let failover = failover(&request, slot_plugin.is_some())?;
    let renewed = match (&slot_plugin, invalidated) {
        (Some(_), Some(why)) => {
            stop_worker(&request.slot)?;
            worker::drop_slot(&request.slot);
            Some(format!("it was invalidated: {}", worker::invalidation_text(&why)))
        }
        (None, _) if recorded => Some("it was dropped outside pgcdc".to_owned()),
        _ => None,
    };
    let slot_plugin = if renewed.is_some() { None } else { slot_plugin };
    let checks = config::checks(if slot_plugin.is_some() { 0 } else { 1 })?;
    if let Some(report) = config::report(&checks) {
        return Err(SqlError::NotConfigured(report));
    }
    check_shape(&request)?;
    if let Some(role) = &request.grant_to {
        let exists: Option<bool> =
            lookup::optional("SELECT true FROM pg_roles WHERE rolname = $1", &[role.as_str().into()])?;
        if exists.is_none() {
            return Err(SqlError::NoSuchRole(role.clone()));
        }
    }

    let tables = matched_tables(&request)?;
    let publication = request.publication.clone().unwrap_or_else(|| request.slot.clone());
    check_rights(&request, &publication, &tables)?;
    for table in tables.iter().filter(|t| t.identity == Identity::Missing) {
        let name = quote_qualified_identifier(&table.schema, &table.name);
        pgrx::warning!(
            "table {name} has no primary key or replica identity: its updates and deletes will carry no old key. \
             Fix: ALTER TABLE {name} REPLICA IDENTITY FULL; (or add a primary key)"
        );
    }

    if slot_plugin.is_none() {
        // Failover is the fifth argument, from PostgreSQL 17 on (asked for
        // on an older server, check_failover refused).
        let sql = if failover {
            "SELECT pg_create_logical_replication_slot($1, 'wal2arrow', false, false, true)"
        } else {
            "SELECT pg_create_logical_replication_slot($1, 'wal2arrow')"
        };
        Spi::connect(|client| {
            client.select(sql, None, &[request.slot.as_str().into()])?;
            Ok::<_, SqlError>(())
        })?;
        // Not transactional: should anything after it fail, the slot goes
        // too, instead of retaining WAL for nobody.
        let slot = request.slot.clone();
        register_xact_callback(PgXactCallbackEvent::Abort, move || worker::drop_slot(&slot));
    }

    sync_publication(&publication, &tables)?;
    if let Some(role) = &request.grant_to {
        grant(role, &tables)?;
    }
    let database = discover::current_database()?;
    let dir = worker::stream_dir(&request.slot);
    let partitions = request.partitions as u32;
    let (routes, keys): (Vec<Route>, Vec<RingKey>) = tables
        .iter()
        .flat_map(|t| (0..partitions).map(move |partition| (t, partition)))
        .map(|(t, partition)| {
            let (route, key) = if !request.route_by_table {
                (request.slot.clone(), RingKey::Merged)
            } else if partitions == 1 {
                (format!("{}.{}", t.schema, t.name), RingKey::Table { relation: t.relid, partition, partitions })
            } else {
                (
                    format!("{}.{}#{partition}", t.schema, t.name),
                    RingKey::Table { relation: t.relid, partition, partitions },
                )
            };
            let ring_path = dir.join(key.file_name()).display().to_string();
            let row = Route {
                relid: t.relid,
                schema: t.schema.clone(),
                table: t.name.clone(),
                route,
                partition: partition as i32,
                ring_path,
            };
            (row, key)
        })
        .unzip();
    // The tables new to the stream (all of them, the first time).
    let known: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT DISTINCT relid::int8 FROM pgcdc.routes WHERE slot_name = $1",
                None,
                &[request.slot.as_str().into()],
            )?
            .map(|row| row.get::<i64>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })?;
    record(&request, &publication, &routes)?;
    if let Some(why) = &renewed {
        renew_snapshots(&request, &tables, why)?;
    } else if request.snapshot {
        let joining: Vec<(u32, String, String)> = tables
            .iter()
            .filter(|t| !known.contains(&i64::from(t.relid)))
            .map(|t| (t.relid, t.schema.clone(), t.name.clone()))
            .collect();
        if !joining.is_empty() {
            snapshot::request(&request.slot, &joining, false)?;
        }
    }
    if let Some(consumer) = &request.consumer {
        consumers::register(&request.slot, consumer, None)?;
    }
    // Readers may attach before the first change: every route has a ring
    // (the worker would make one on the first change of its table).
    let settings = worker::ring_settings(&request.slot)?;
    for (route, key) in routes.iter().zip(keys) {
        worker::open_ring(&dir, key, &route.route, &settings)?;
    }
    ensure_worker(&database, &request.slot)?;
    Ok(routes)
}

/// Whether the stream's slot is (to be) a failover slot: as asked, or as
/// the existing slot was made (a slot made again after it was lost keeps
/// it). Asked of a server before 17, or unlike the existing slot, it is an
/// error.
fn failover(request: &Request, slot_exists: bool) -> Result<bool, SqlError> {
    let version: Option<i32> = lookup::optional("SELECT current_setting('server_version_num')::int", &[])?;
    if version.unwrap_or(0) < 170000 {
        if request.failover == Some(true) {
            let shown: Option<String> = lookup::optional("SELECT current_setting('server_version')", &[])?;
            return Err(SqlError::FailoverUnsupported(shown.unwrap_or_default()));
        }
        return Ok(false);
    }
    if !slot_exists {
        return Ok(request.failover.unwrap_or(false));
    }
    let made: Option<bool> = lookup::optional(
        "SELECT (to_jsonb(s)->>'failover')::bool FROM pg_replication_slots s WHERE slot_name = $1",
        &[request.slot.as_str().into()],
    )?;
    let made = made.unwrap_or(false);
    match request.failover {
        Some(asked) if asked != made => {
            Err(SqlError::FailoverMismatch(request.slot.clone(), if made { "" } else { "not " }))
        }
        _ => Ok(made),
    }
}

/// After a stream's slot was made again: the snapshots the old one was
/// taking are failed (their watermarks were in WAL the new one never
/// reads), and every table is snapshotted again, since the changes the
/// old slot had not streamed are gone.
fn renew_snapshots(request: &Request, tables: &[Table], why: &str) -> Result<(), SqlError> {
    let slot = request.slot.as_str();
    let open: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT snapshot_id FROM pgcdc.snapshots WHERE slot_name = $1 AND state IN ('pending', 'running')",
                None,
                &[slot.into()],
            )?
            .map(|row| row.get::<i64>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })?;
    for id in open {
        snapshot::stop(slot, u64::try_from(id).unwrap_or(0), "failed", Some("the stream's slot was made again"))?;
    }
    if request.snapshot {
        let all: Vec<(u32, String, String)> =
            tables.iter().map(|t| (t.relid, t.schema.clone(), t.name.clone())).collect();
        snapshot::request(slot, &all, true)?;
        pgrx::warning!(
            "pgcdc: stream \"{slot}\" had lost its replication slot ({why}); made a new one. Each table's route gets \
             a `t` row (what a consumer had of the table is void), then the table's rows again as `r` rows"
        );
    } else {
        pgrx::warning!(
            "pgcdc: stream \"{slot}\" had lost its replication slot ({why}); made a new one. The changes the old \
             one had not streamed are gone: SELECT cdc_snapshot('{slot}') delivers the tables' rows"
        );
    }
    Ok(())
}

/// Everything the writes after the slot's creation need, checked before
/// it: writing pgcdc's catalog, owning the tables (publications and grants
/// need it), and a publication that is new or this stream's own.
fn check_rights(request: &Request, publication: &str, tables: &[Table]) -> Result<(), SqlError> {
    require_catalog_access()?;
    let relids: Vec<i64> = tables.iter().map(|t| i64::from(t.relid)).collect();
    let foreign: Option<Vec<String>> = lookup::optional(
        "SELECT array_agg(c.oid::regclass::text ORDER BY 1) FROM pg_class c
         WHERE c.oid = ANY ($1::int8[]::oid[]) AND NOT pg_has_role(current_user, c.relowner, 'USAGE')",
        &[relids.into()],
    )?;
    if let Some(tables) = foreign.filter(|t| !t.is_empty()) {
        return Err(SqlError::NotOwner(tables));
    }
    let existing: Option<bool> =
        lookup::optional("SELECT true FROM pg_publication WHERE pubname = $1", &[publication.into()])?;
    if existing.is_some() {
        let ours: Option<bool> = lookup::optional(
            "SELECT true FROM pgcdc.streams WHERE slot_name = $1 AND publication_name = $2",
            &[request.slot.as_str().into(), publication.into()],
        )?;
        if ours.is_none() {
            return Err(SqlError::ForeignPublication(publication.to_owned()));
        }
    }
    Ok(())
}

/// Configuring takes writing pgcdc's catalog: checked first, for a clear
/// error instead of one from halfway through.
pub(super) fn require_catalog_access() -> Result<(), SqlError> {
    let catalog: Option<bool> = lookup::optional(
        "SELECT bool_and(has_table_privilege(c, p))
         FROM unnest(ARRAY['pgcdc.streams', 'pgcdc.routes', 'pgcdc.consumers']) c,
              unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) p",
        &[],
    )?;
    if catalog != Some(true) {
        return Err(SqlError::NoCatalogAccess);
    }
    Ok(())
}

/// Refuses to change how an existing stream routes its tables: its rings
/// and their consumers' positions are made for the routing it has.
fn check_shape(request: &Request) -> Result<(), SqlError> {
    let publication = request.publication.clone().unwrap_or_else(|| request.slot.clone());
    let current: Option<String> = lookup::optional(
        "SELECT format('%s %s %s', route_by_table::text, partitions, publication_name) FROM pgcdc.streams WHERE slot_name = $1",
        &[request.slot.as_str().into()],
    )?;
    let Some(current) = current else { return Ok(()) };
    let mut parts = current.splitn(3, ' ');
    let (by_table, partitions, existing) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
    let by_table = by_table == Some("true");
    let differences = [
        ("route_by_table", by_table.to_string(), request.route_by_table.to_string()),
        ("partitions", partitions.unwrap_or("1").to_owned(), request.partitions.to_string()),
        ("publication_name", existing.to_owned(), publication),
    ];
    match differences.into_iter().find(|(_, was, asked)| was != asked) {
        Some((setting, was, asked)) => {
            Err(SqlError::Reshape { slot: request.slot.clone(), setting: setting.to_owned(), was, asked })
        }
        None => Ok(()),
    }
}

/// The tables the patterns select, every include pattern matching one.
fn matched_tables(request: &Request) -> Result<Vec<Table>, SqlError> {
    let filter = TableFilter::new(&request.patterns, &request.exclude)?;
    let database = discover::current_database()?;
    let tables = discover::tables()?;
    let names: Vec<(String, String)> = tables.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
    let unmatched: Vec<String> = filter.unmatched(&database, &names).iter().map(|p| p.source().to_owned()).collect();
    if !unmatched.is_empty() {
        let nearest = nearest(&unmatched[0], &names, 3);
        return Err(SqlError::NoMatch { patterns: unmatched, nearest });
    }
    let matched: Vec<Table> = tables.into_iter().filter(|t| filter.matches(&database, &t.schema, &t.name)).collect();
    if matched.is_empty() {
        return Err(SqlError::AllExcluded);
    }
    Ok(matched)
}

/// Creates the publication, or sets its table list when it differs: an
/// explicit list (never FOR ALL TABLES), publishing partitions as their root.
fn sync_publication(publication: &str, tables: &[Table]) -> Result<(), SqlError> {
    let wanted: BTreeSet<(String, String)> = tables.iter().map(|t| (t.schema.clone(), t.name.clone())).collect();
    let via_root = tables.iter().any(|t| t.partitioned);
    let list = tables.iter().map(|t| quote_qualified_identifier(&t.schema, &t.name)).collect::<Vec<_>>().join(", ");
    let name = quote_identifier(publication);
    let existing: Option<bool> =
        lookup::optional("SELECT pubviaroot FROM pg_publication WHERE pubname = $1", &[publication.into()])?;
    let statements = match existing {
        None => {
            vec![format!("CREATE PUBLICATION {name} FOR TABLE {list} WITH (publish_via_partition_root = {via_root})")]
        }
        Some(current_via_root) => {
            let current: BTreeSet<(String, String)> = Spi::connect(|client| {
                let mut set = BTreeSet::new();
                // pg_publication_rel holds what was added (roots, not the
                // partitions pg_publication_tables expands them to).
                for row in client.select(
                    "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel pr
                     JOIN pg_publication p ON p.oid = pr.prpubid JOIN pg_class c ON c.oid = pr.prrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1",
                    None,
                    &[publication.into()],
                )? {
                    set.insert((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default()));
                }
                Ok::<_, SqlError>(set)
            })?;
            let mut statements = Vec::new();
            if current != wanted {
                statements.push(format!("ALTER PUBLICATION {name} SET TABLE {list}"));
            }
            if current_via_root != via_root {
                statements.push(format!("ALTER PUBLICATION {name} SET (publish_via_partition_root = {via_root})"));
            }
            statements
        }
    };
    run(&statements)
}

/// Grants SELECT on each table (and USAGE on its schema) the role lacks.
fn grant(role: &str, tables: &[Table]) -> Result<(), SqlError> {
    let mut statements = Vec::new();
    let grantee = quote_identifier(role);
    let mut schemas = BTreeSet::new();
    for table in tables {
        let qualified = quote_qualified_identifier(&table.schema, &table.name);
        let has: Option<bool> = lookup::optional(
            "SELECT has_table_privilege($1, $2::regclass, 'SELECT')",
            &[role.into(), qualified.as_str().into()],
        )?;
        if has != Some(true) {
            statements.push(format!("GRANT SELECT ON {qualified} TO {grantee}"));
        }
        if schemas.insert(table.schema.clone()) {
            let usage: Option<bool> = lookup::optional(
                "SELECT has_schema_privilege($1, $2, 'USAGE')",
                &[role.into(), table.schema.as_str().into()],
            )?;
            if usage != Some(true) {
                statements.push(format!("GRANT USAGE ON SCHEMA {} TO {grantee}", quote_identifier(&table.schema)));
            }
        }
    }
    run(&statements)
}

/// Records the stream and its routes; rows that are already right are not
/// rewritten, so a repeated call changes nothing.
fn record(request: &Request, publication: &str, routes: &[Route]) -> Result<(), SqlError> {
    let array =
        |items: &[String]| format!("ARRAY[{}]::text[]", items.iter().map(quote_literal).collect::<Vec<_>>().join(", "));
    let role = request.grant_to.as_deref().map_or("NULL".to_owned(), quote_literal);
    let mut statements = vec![format!(
        "INSERT INTO pgcdc.streams AS s (slot_name, publication_name, patterns, exclude, route_by_table, partitions,
                                         reader_role)
         VALUES ({slot}, {publication}, {patterns}, {exclude}, {by_table}, {partitions}, {role})
         ON CONFLICT (slot_name) DO UPDATE
         SET publication_name = excluded.publication_name, patterns = excluded.patterns, exclude = excluded.exclude,
             route_by_table = excluded.route_by_table, reader_role = excluded.reader_role, updated_at = now()
         WHERE (s.publication_name, s.patterns, s.exclude, s.route_by_table, s.reader_role)
               IS DISTINCT FROM (excluded.publication_name, excluded.patterns, excluded.exclude,
                                 excluded.route_by_table, excluded.reader_role)",
        slot = quote_literal(&request.slot),
        publication = quote_literal(publication),
        patterns = array(&request.patterns),
        exclude = array(&request.exclude),
        by_table = request.route_by_table,
        partitions = request.partitions,
    )];
    let values = routes
        .iter()
        .map(|r| {
            format!(
                "({}::oid, {}, {}, {}, {}, {})",
                r.relid,
                quote_literal(&r.schema),
                quote_literal(&r.table),
                quote_literal(&r.route),
                r.partition,
                request.partitions
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let slot = quote_literal(&request.slot);
    statements.push(format!(
        "DELETE FROM pgcdc.routes r WHERE r.slot_name = {slot}
           AND (r.relid, r.schema_name::text, r.table_name::text, r.route, r.partition, r.partitions)
               NOT IN (SELECT * FROM (VALUES {values}) v(relid, s, t, route, p, n))"
    ));
    statements.push(format!(
        "INSERT INTO pgcdc.routes (slot_name, relid, schema_name, table_name, route, partition, partitions)
         SELECT {slot}, relid, s, t, route, p, n FROM (VALUES {values}) v(relid, s, t, route, p, n)
         ON CONFLICT (slot_name, relid, partition) DO NOTHING"
    ));
    run(&statements)
}

/// The pids of the stream's running workers: the holders of its advisory
/// lock (pg_locks is live, where pg_stat_activity is a snapshot per
/// transaction).
pub(super) fn worker_pids(slot: &str) -> Result<Vec<i32>, SqlError> {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid = $1::oid AND objid = hashtext($2)::oid AND objsubid = 2",
            None,
            &[worker::STREAM_LOCK.into(), slot.into()],
        )?;
        rows.map(|row| Ok(row.get::<i32>(1)?.unwrap_or(0))).collect()
    })
}

/// Stops the stream's workers and waits until they are gone.
fn stop_worker(slot: &str) -> Result<(), SqlError> {
    for pid in worker_pids(slot)? {
        Spi::connect(|client| {
            client.select("SELECT pg_terminate_backend($1, 10000)", None, &[pid.into()])?;
            Ok::<_, SqlError>(())
        })?;
    }
    Ok(())
}

/// Starts the stream's worker, if it does not run, once the transaction
/// commits (a running worker needs nothing: see the module's comment).
fn ensure_worker(database: &str, slot: &str) -> Result<(), SqlError> {
    if worker_pids(slot)?.is_empty() {
        start_at_commit(database, slot);
    }
    Ok(())
}

/// Registers the start of the stream's worker for when (and if) the
/// transaction commits.
fn start_at_commit(database: &str, slot: &str) {
    let (database, slot) = (database.to_owned(), slot.to_owned());
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        if let Err(e) = worker::start(&database, &slot) {
            pgrx::warning!("pgcdc: the worker of stream \"{slot}\" did not start: {e}");
        }
    });
}

/// Drops a stream: its slot, its publication and its catalog rows.
pub fn drop(slot: &str) -> Result<(), SqlError> {
    require_catalog_access()?;
    let publication: Option<String> =
        lookup::optional("SELECT publication_name::text FROM pgcdc.streams WHERE slot_name = $1", &[slot.into()])?;
    let Some(publication) = publication else { return Err(SqlError::NoSuchStream(slot.to_owned())) };
    // Take the stream's lock for the rest of the transaction: running
    // workers are stopped first, and one starting meanwhile gives up.
    let mut locked = false;
    for _ in 0..100 {
        stop_worker(slot)?;
        let got: Option<bool> = lookup::optional(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
            &[worker::STREAM_LOCK.into(), slot.into()],
        )?;
        if got == Some(true) {
            locked = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        pgrx::check_for_interrupts!();
    }
    if !locked {
        return Err(SqlError::WorkerDidNotStop(slot.to_owned()));
    }
    // The rings die with the stream once the transaction commits; should it
    // abort, the stream goes on with a new worker.
    let dir = worker::stream_dir(slot);
    let snapshot_dir = snapshot::snapshot_dir(slot);
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        // A missing directory is fine.
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&snapshot_dir);
    });
    let database = discover::current_database()?;
    let (database, restart) = (database.clone(), slot.to_owned());
    register_xact_callback(PgXactCallbackEvent::Abort, move || {
        if let Err(e) = worker::start(&database, &restart) {
            pgrx::warning!("pgcdc: the worker of stream \"{restart}\" did not restart: {e}");
        }
    });
    // The slot is not transactional: dropped as the transaction is about
    // to commit (an error there still aborts it), not before.
    let doomed = slot.to_owned();
    register_xact_callback(PgXactCallbackEvent::PreCommit, move || worker::drop_slot(&doomed));
    run(&[
        format!("DROP PUBLICATION IF EXISTS {}", quote_identifier(&publication)),
        format!("DELETE FROM pgcdc.streams WHERE slot_name = {}", quote_literal(slot)),
    ])
}

fn run(statements: &[String]) -> Result<(), SqlError> {
    for statement in statements {
        Spi::run(statement)?;
    }
    Ok(())
}

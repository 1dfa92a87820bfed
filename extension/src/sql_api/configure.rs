//! `cdc_auto_configure` and `cdc_drop`: from patterns to a publication, a
//! `wal2arrow` slot, grants and a catalog entry, idempotently.
//!
//! Order matters: PostgreSQL refuses to create a logical slot in a
//! transaction that has written anything, so everything before the slot is
//! read-only (checks, matching) and everything after it writes. Should a
//! later step fail, the slot (which is not transactional) stays and the
//! next run reuses it.

use super::config;
use super::discover::{self, Identity, Table};
use super::error::SqlError;
use super::lookup;
use crate::{gucs, worker};
use pgcdc_reader::pattern::{nearest, TableFilter};
use pgcdc_reader::ring::file;
use pgrx::spi::{quote_identifier, quote_literal, quote_qualified_identifier, Spi};
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
}

/// One route of a configured stream.
pub struct Route {
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
    }
    let checks = config::checks(if slot_plugin.is_some() { 0 } else { 1 })?;
    if let Some(report) = config::report(&checks) {
        return Err(SqlError::NotConfigured(report));
    }
    if let Some(role) = &request.grant_to {
        let exists: Option<bool> =
            lookup::optional("SELECT true FROM pg_roles WHERE rolname = $1", &[role.as_str().into()])?;
        if exists.is_none() {
            return Err(SqlError::NoSuchRole(role.clone()));
        }
    }

    let tables = matched_tables(&request)?;
    for table in tables.iter().filter(|t| t.identity == Identity::Missing) {
        let name = quote_qualified_identifier(&table.schema, &table.name);
        pgrx::warning!(
            "table {name} has no primary key or replica identity: its updates and deletes will carry no old key. \
             Fix: ALTER TABLE {name} REPLICA IDENTITY FULL; (or add a primary key)"
        );
    }

    if slot_plugin.is_none() {
        Spi::connect(|client| {
            client.select(
                "SELECT pg_create_logical_replication_slot($1, 'wal2arrow')",
                None,
                &[request.slot.as_str().into()],
            )?;
            Ok::<_, SqlError>(())
        })?;
    }

    let publication = request.publication.clone().unwrap_or_else(|| request.slot.clone());
    sync_publication(&publication, &tables)?;
    if let Some(role) = &request.grant_to {
        grant(role, &tables)?;
    }
    let database = discover::current_database()?;
    let dir = std::path::PathBuf::from(gucs::ring_directory());
    let routes: Vec<Route> = tables
        .iter()
        .flat_map(|t| {
            let base = if request.route_by_table { format!("{}.{}", t.schema, t.name) } else { request.slot.clone() };
            (0..request.partitions).map(move |partition| {
                let route = if request.partitions == 1 { base.clone() } else { format!("{base}#{partition}") };
                (t, route, partition)
            })
        })
        .map(|(t, route, partition)| {
            let ring_path = file::route_path(&dir, &database, &request.slot, &route).display().to_string();
            Route { schema: t.schema.clone(), table: t.name.clone(), route, partition, ring_path }
        })
        .collect();
    let changed = record(&request, &publication, &routes)?;
    ensure_worker(&database, &request.slot, changed)?;
    Ok(routes)
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
/// rewritten, so a repeated call changes nothing. Returns whether the
/// routes changed.
fn record(request: &Request, publication: &str, routes: &[Route]) -> Result<bool, SqlError> {
    let before = route_list(&request.slot)?;
    let array =
        |items: &[String]| format!("ARRAY[{}]::text[]", items.iter().map(quote_literal).collect::<Vec<_>>().join(", "));
    let role = request.grant_to.as_deref().map_or("NULL".to_owned(), quote_literal);
    let mut statements = vec![format!(
        "INSERT INTO pgcdc.streams AS s (slot_name, publication_name, patterns, exclude, route_by_table, reader_role)
         VALUES ({slot}, {publication}, {patterns}, {exclude}, {by_table}, {role})
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
    )];
    let values = routes
        .iter()
        .map(|r| {
            format!(
                "({}, {}, {}, {}, {})",
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
           AND (r.schema_name, r.table_name, r.route, r.partition, r.partitions)
               NOT IN (SELECT * FROM (VALUES {values}) v(s, t, route, p, n))"
    ));
    statements.push(format!(
        "INSERT INTO pgcdc.routes (slot_name, schema_name, table_name, route, partition, partitions)
         SELECT {slot}, s, t, route, p, n FROM (VALUES {values}) v(s, t, route, p, n)
         ON CONFLICT (slot_name, schema_name, table_name, partition) DO NOTHING"
    ));
    run(&statements)?;
    Ok(route_list(&request.slot)? != before)
}

/// The recorded routes of a stream, sorted.
fn route_list(slot: &str) -> Result<Vec<String>, SqlError> {
    Spi::connect(|client| {
        let mut list = Vec::new();
        for row in client.select(
            "SELECT format('%s %s %s %s %s', schema_name, table_name, route, partition, partitions)
             FROM pgcdc.routes WHERE slot_name = $1 ORDER BY 1",
            None,
            &[slot.into()],
        )? {
            list.push(row.get(1)?.unwrap_or_default());
        }
        Ok(list)
    })
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

/// Starts the stream's worker, restarting it when its routes changed.
fn ensure_worker(database: &str, slot: &str, routes_changed: bool) -> Result<(), SqlError> {
    if !worker_pids(slot)?.is_empty() {
        if !routes_changed {
            return Ok(());
        }
        stop_worker(slot)?;
    }
    worker::start(database, slot).map_err(SqlError::Worker)
}

/// Drops a stream: its slot, its publication and its catalog rows.
pub fn drop(slot: &str) -> Result<(), SqlError> {
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
        return Err(SqlError::Worker(format!("the worker of stream \"{slot}\" did not stop")));
    }
    let database = discover::current_database()?;
    let rings = file::route_path(std::path::Path::new(&gucs::ring_directory()), &database, slot, "x");
    if let Some(dir) = rings.parent() {
        // The rings die with the stream; a missing directory is fine.
        let _ = std::fs::remove_dir_all(dir);
    }
    Spi::connect(|client| {
        client.select(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            None,
            &[slot.into()],
        )?;
        Ok::<_, SqlError>(())
    })?;
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

//! Which tables a database has, and what their columns become in Arrow.

use super::error::SqlError;
use super::lookup;
use crate::pgtype;
use pgcdc_reader::pattern::TableFilter;
use pgrx::pg_sys;
use pgrx::spi::Spi;

/// How a table's old rows can be identified in WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A primary key or replica identity index.
    Key,
    /// REPLICA IDENTITY FULL.
    Full,
    /// Neither: updates and deletes carry no old key.
    Missing,
}

/// A user table.
#[derive(Debug, Clone)]
pub struct Table {
    pub relid: u32,
    pub schema: String,
    pub name: String,
    pub partitioned: bool,
    pub identity: Identity,
}

/// Ordinary and partitioned tables outside the system schemas; partitions
/// are left out (their changes are reported as their root table's) and so
/// are tables that belong to extensions.
pub fn tables() -> Result<Vec<Table>, SqlError> {
    const SQL: &str = r"
        SELECT n.nspname::text, c.relname::text, c.relkind = 'p',
               CASE WHEN c.relreplident = 'f' THEN 'full'
                    WHEN c.relreplident = 'n' THEN 'missing'
                    WHEN EXISTS (SELECT 1 FROM pg_index i
                                 WHERE i.indrelid = c.oid
                                   AND ((c.relreplident = 'd' AND i.indisprimary)
                                     OR (c.relreplident = 'i' AND i.indisreplident)))
                    THEN 'key' ELSE 'missing' END,
               c.oid::int8
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcdc')
          AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2";
    Spi::connect(|client| {
        let mut tables = Vec::new();
        for row in client.select(SQL, None, &[])? {
            let identity = match row.get::<String>(4)?.as_deref() {
                Some("full") => Identity::Full,
                Some("key") => Identity::Key,
                _ => Identity::Missing,
            };
            tables.push(Table {
                relid: row.get::<i64>(5)?.and_then(|oid| u32::try_from(oid).ok()).unwrap_or(0),
                schema: row.get(1)?.unwrap_or_default(),
                name: row.get(2)?.unwrap_or_default(),
                partitioned: row.get(3)?.unwrap_or(false),
                identity,
            });
        }
        Ok(tables)
    })
}

/// The tables `patterns` select, minus those `exclude` selects.
pub fn matching(patterns: &[String], exclude: &[String]) -> Result<Vec<Table>, SqlError> {
    let filter = TableFilter::new(patterns, exclude)?;
    let database = current_database()?;
    Ok(tables()?.into_iter().filter(|t| filter.matches(&database, &t.schema, &t.name)).collect())
}

pub fn current_database() -> Result<String, SqlError> {
    Ok(lookup::optional("SELECT current_database()::text", &[])?.unwrap_or_default())
}

/// One column as `cdc_table_columns` reports it.
pub struct ColumnInfo {
    pub name: String,
    pub pg_type: String,
    pub nullable: bool,
    pub arrow_type: String,
    pub replica_identity: bool,
}

/// The live columns of `schema.table`, in order.
pub fn columns(schema: &str, table: &str) -> Result<Vec<ColumnInfo>, SqlError> {
    const SQL: &str = r"
        SELECT a.attname::text, a.atttypid, a.atttypmod, NOT a.attnotnull,
               c.relreplident = 'f' OR a.attnum = ANY (
                   SELECT unnest(i.indkey::int2[]) FROM pg_index i
                   WHERE i.indrelid = c.oid
                     AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid
        WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum";
    let rows = Spi::connect(|client| {
        let mut rows = Vec::new();
        for row in client.select(SQL, None, &[schema.into(), table.into()])? {
            let name: String = row.get(1)?.unwrap_or_default();
            let typid: pg_sys::Oid = row.get(2)?.unwrap_or(pg_sys::InvalidOid);
            let typmod: i32 = row.get(3)?.unwrap_or(-1);
            rows.push((name, typid, typmod, row.get::<bool>(4)?.unwrap_or(true), row.get::<bool>(5)?.unwrap_or(false)));
        }
        Ok::<_, SqlError>(rows)
    })?;
    if rows.is_empty() {
        let exists: Option<bool> = lookup::optional(
            "SELECT true FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[schema.into(), table.into()],
        )?;
        if exists.is_none() {
            return Err(SqlError::NoSuchTable(schema.to_owned(), table.to_owned()));
        }
    }
    Ok(rows
        .into_iter()
        .map(|(name, typid, typmod, nullable, replica_identity)| {
            // SAFETY: SQL functions run inside a transaction: catalog
            // lookups are possible.
            let (info, pg_type) = unsafe { (pgtype::describe(typid, typmod), pgtype::format(typid, typmod)) };
            ColumnInfo { name, pg_type, nullable, arrow_type: info.kind.arrow_name(), replica_identity }
        })
        .collect())
}

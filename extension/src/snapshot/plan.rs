//! Planning a table's snapshot: its key, an estimate of its rows, and the
//! key ranges that workers read in parallel.
//!
//! Range bounds are keys of a sample of the table (`TABLESAMPLE SYSTEM`),
//! in PostgreSQL's own order of the key: like the chunks, ranges are cut
//! by `ORDER BY key`, so any key type PostgreSQL can index and sort (uuid,
//! text under any collation, enums, composite keys) cuts correctly. Bounds
//! are kept as the text of the key values and cast back to the key's types
//! in each chunk's query.

use super::chunk::{self, Key};
use super::error::SnapshotError;
use pgrx::spi::{quote_identifier, Spi};

/// Pages a sample reads at most, where the table is larger.
const SAMPLE_PAGES: i64 = 256;

/// A range of keys: after `lower` (None: from the first key), up to and
/// including `upper` (None: to the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub lower: Option<Vec<String>>,
    pub upper: Option<Vec<String>>,
}

pub struct Plan {
    pub key: Key,
    pub estimate: i64,
    pub ranges: Vec<Range>,
}

/// Plans the snapshot of table `relid`: one range per `4 × chunk_rows`
/// estimated rows, at most `max_ranges`.
pub fn plan(relid: u32, chunk_rows: usize, max_ranges: usize) -> Result<Plan, SnapshotError> {
    let (table, key) = chunk::table_key(relid)?;
    let (known, unknown_leaves, pages, partitioned) = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples >= 0), 0)::int8,
                        count(*) FILTER (WHERE c.reltuples < 0)::int8,
                        coalesce(sum(pg_relation_size(c.oid)) / current_setting('block_size')::int8, 0)::int8,
                        (SELECT relkind = 'p' FROM pg_class WHERE oid = $1::oid)
                 FROM pg_class c
                 WHERE c.relkind = 'r'
                   AND (c.oid = $1::oid OR c.oid IN (SELECT relid FROM pg_partition_tree($1::oid::regclass) WHERE isleaf))",
                None,
                &[i64::from(relid).into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<i64>(1)?.unwrap_or(0),
            row.get::<i64>(2)?.unwrap_or(0),
            row.get::<i64>(3)?.unwrap_or(0),
            row.get::<bool>(4)?.unwrap_or(false),
        ))
    })?;
    let chunk_rows = i64::try_from(chunk_rows).unwrap_or(i64::MAX).max(1);
    let guess = |estimate: i64| usize::try_from(estimate / (4 * chunk_rows)).unwrap_or(1).clamp(1, max_ranges.max(1));
    // Never analyzed (or a partition never analyzed): the sample counts.
    let needs_sample = unknown_leaves > 0 || guess(known) > 1;
    if !needs_sample || pages == 0 {
        return Ok(Plan { key, estimate: known, ranges: vec![Range { lower: None, upper: None }] });
    }
    let percent = (100.0 * SAMPLE_PAGES as f64 / pages as f64).min(100.0);
    let keys = sample_keys(&table, &key, partitioned, percent)?;
    let estimate = if unknown_leaves > 0 { (keys.len() as f64 * 100.0 / percent) as i64 } else { known };
    let count = guess(estimate).min(keys.len().max(1));
    let mut ranges = Vec::with_capacity(count);
    let mut lower = None;
    for i in 1..count {
        let upper = keys[i * keys.len() / count - 1].clone();
        ranges.push(Range { lower: lower.take(), upper: Some(upper.clone()) });
        lower = Some(upper);
    }
    ranges.push(Range { lower, upper: None });
    Ok(Plan { key, estimate, ranges })
}

/// The keys of a `percent` sample of the table's pages, in key order, as
/// text.
fn sample_keys(table: &str, key: &Key, partitioned: bool, percent: f64) -> Result<Vec<Vec<String>>, SnapshotError> {
    let columns: Vec<String> = key.columns.iter().map(|k| format!("t.{}", quote_identifier(k))).collect();
    let texts = columns.iter().map(|c| format!("{c}::text")).collect::<Vec<_>>().join(", ");
    let only = if partitioned { "" } else { "ONLY " };
    let sql = format!(
        "SELECT ARRAY[{texts}] FROM {only}{table} t TABLESAMPLE SYSTEM ({percent}) ORDER BY {}",
        columns.join(", ")
    );
    Ok(Spi::connect(|client| {
        client
            .select(&sql, None, &[])?
            .map(|row| row.get::<Vec<String>>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })?)
}

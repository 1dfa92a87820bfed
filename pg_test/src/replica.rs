//! A consumer's copy of a table, built as DESIGN §6 says a consumer builds
//! one: apply the route in order, `r`/`c`/`u` as upsert by key, `d` as
//! delete, `t` as truncate. Then compared, row by row, with the table.
//!
//! Values are kept as SQL literals ([`crate::check::sql_literal`]), so the
//! copy can be loaded into a table of the same columns and compared with
//! the original in SQL, as text, for every type.

use crate::check::{quote_literal, sql_literal, unchanged, unmapped};
use crate::e2e::WAIT;
use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{Array, RecordBatch, StructArray};
use pgcdc_reader::changes::max_commit_lsn;
use pgcdc_reader::contract;
use pgcdc_reader::snapshot::completes_snapshot;
use pgcdc_reader::ChangeReader;
use postgres::Client;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Replica {
    key: Vec<String>,
    rows: HashMap<String, Vec<String>>,
    /// `r` rows applied, batches that completed a snapshot, and `t` rows.
    pub reads: usize,
    pub completions: usize,
    pub truncates: usize,
}

impl Replica {
    /// A copy keyed by the columns `key`.
    pub fn new(key: &[&str]) -> Replica {
        Replica { key: key.iter().map(|k| (*k).to_owned()).collect(), ..Replica::default() }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Applies one batch of the route.
    pub fn apply(&mut self, batch: &RecordBatch) {
        if completes_snapshot(batch) {
            self.completions += 1;
        }
        let schema = batch.schema();
        let columns: Vec<usize> = (0..schema.fields().len())
            .filter(|i| schema.field(*i).metadata().contains_key(contract::FIELD_PG_TYPE))
            .collect();
        let ops = batch.column_by_name(contract::OP).expect("_op").as_dictionary::<Int8Type>();
        let codes = ops.values().as_string::<i32>();
        let before = batch.column_by_name(contract::BEFORE).map(|c| c.as_struct().clone());
        for row in 0..batch.num_rows() {
            let op = codes.value(ops.keys().value(row) as usize);
            if op == "t" {
                self.truncates += 1;
                self.rows.clear();
                continue;
            }
            let key = self.key_of(batch, row, None);
            if op == "d" {
                self.rows.remove(&key);
                continue;
            }
            // A key change moves the row: its old values (those the change
            // leaves unchanged) go with it.
            let mut moved = None;
            if op == "u" {
                if let Some(before) = before.as_ref().filter(|b| b.is_valid(row)) {
                    let old = self.key_of(batch, row, Some(before));
                    if old != key {
                        moved = self.rows.remove(&old);
                    }
                }
            }
            if op == "r" {
                self.reads += 1;
            }
            let unmapped = unmapped(batch, row);
            let unchanged = unchanged(batch, row);
            let previous = moved.or_else(|| self.rows.get(&key).cloned());
            let values = columns
                .iter()
                .enumerate()
                .map(|(c, i)| {
                    let field = schema.field(*i);
                    let pg_type = &field.metadata()[contract::FIELD_PG_TYPE];
                    let column = batch.column(*i);
                    if column.is_valid(row) {
                        sql_literal(column.as_ref(), row, pg_type)
                    } else if let Some((_, text)) = unmapped.iter().find(|(k, _)| k == field.name()) {
                        format!("({})::{pg_type}", quote_literal(text))
                    } else if unchanged.contains(field.name()) {
                        // A change of a row whose snapshot read has not
                        // come yet: that read brings the whole row.
                        previous.as_ref().map_or_else(|| "NULL".to_owned(), |p| p[c].clone())
                    } else {
                        "NULL".to_owned()
                    }
                })
                .collect();
            self.rows.insert(key, values);
        }
    }

    /// The key of a row, as literals (of its old image with `before`).
    fn key_of(&self, batch: &RecordBatch, row: usize, before: Option<&StructArray>) -> String {
        self.key
            .iter()
            .map(|k| {
                let column = match before {
                    Some(b) => b.column_by_name(k),
                    None => batch.column_by_name(k),
                }
                .unwrap_or_else(|| panic!("no key column {k}"));
                let field = batch.schema().field_with_name(k).expect("key field").clone();
                assert!(column.is_valid(row), "a null key {k}");
                sql_literal(column.as_ref(), row, &field.metadata()[contract::FIELD_PG_TYPE])
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Asserts that the copy holds exactly the rows of `table`, as text.
    pub fn assert_equals(&self, client: &mut Client, table: &str) {
        let copy = format!("copy_of_{}", table.replace(['.', '"'], "_"));
        client.batch_execute(&format!("DROP TABLE IF EXISTS {copy}; CREATE TEMP TABLE {copy} (LIKE {table})")).unwrap();
        let rows: Vec<&Vec<String>> = self.rows.values().collect();
        for part in rows.chunks(500) {
            let values: Vec<String> = part.iter().map(|r| format!("({})", r.join(", "))).collect();
            let sql = format!("INSERT INTO {copy} VALUES {}", values.join(", "));
            client.batch_execute(&sql).unwrap_or_else(|e| panic!("loading the copy of {table}: {e}"));
        }
        let mut differences = |a: &str, b: &str| -> Vec<String> {
            client
                .query(
                    &format!("SELECT x::text FROM {a} x EXCEPT ALL SELECT y::text FROM {b} y ORDER BY 1 LIMIT 5"),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let missing = differences(table, &copy);
        let extra = differences(&copy, table);
        let count: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
        assert!(
            missing.is_empty() && extra.is_empty(),
            "the copy of {table} ({} rows) differs from it ({count} rows):\n  only in the table: {missing:?}\n  only in the copy: {extra:?}",
            self.rows.len()
        );
        assert_eq!(self.rows.len() as i64, count, "rows of {table}");
    }
}

/// A route being applied to a [`Replica`] by a consumer that acknowledges
/// each batch once applied (the README's pattern).
///
/// The routes of one table's key-hash partitions may feed one copy: a key
/// stays in its partition, so its changes still arrive in order.
pub struct Follower {
    rings: Vec<PathBuf>,
    readers: Vec<ChangeReader>,
    pub replica: Replica,
}

impl Follower {
    /// Follows the ring `ring` as consumer `default`, keyed by `key`.
    pub fn open(ring: &Path, key: &[&str]) -> Follower {
        Follower::open_all(&[ring.to_owned()], key)
    }

    /// Follows the rings of every partition of a table into one copy.
    pub fn open_all(rings: &[PathBuf], key: &[&str]) -> Follower {
        Follower { rings: rings.to_vec(), readers: rings.iter().map(|r| open(r)).collect(), replica: Replica::new(key) }
    }

    /// Applies what the routes hold now (up to a few batches each); returns
    /// the highest commit LSN seen.
    pub fn step(&mut self) -> u64 {
        let mut highest = 0;
        for reader in &mut self.readers {
            for _ in 0..16 {
                match reader.next_batch(Duration::from_millis(5)).expect("read the ring") {
                    Some(batch) => {
                        self.replica.apply(&batch);
                        let lsn = max_commit_lsn(&batch).expect("every batch has a commit LSN");
                        reader.ack(lsn);
                        highest = highest.max(lsn);
                    }
                    None => break,
                }
            }
        }
        highest
    }

    /// The consumer process dies and starts again: new readers resume
    /// from what was acknowledged, and the copy (kept with them, as a real
    /// consumer keeps its state) takes the changes after it again.
    pub fn restart(&mut self) {
        self.readers = self.rings.iter().map(|r| open(r)).collect();
    }
}

fn open(ring: &Path) -> ChangeReader {
    ChangeReader::open_waiting(ring, "default", WAIT).expect("open the ring")
}

/// The ring of route `route` among `cdc_auto_configure`'s results.
pub fn ring(routes: &[(String, PathBuf)], route: &str) -> PathBuf {
    routes.iter().find(|(r, _)| r == route).unwrap_or_else(|| panic!("no route {route}")).1.clone()
}

/// `(table_name, state)` of each snapshot of stream `slot`, by table, the
/// newest of a table first.
pub fn snapshot_states(client: &mut Client, slot: &str) -> Vec<(String, String)> {
    client
        .query("SELECT table_name, state FROM cdc_snapshots($1) ORDER BY 1, snapshot_id DESC", &[&slot])
        .expect("cdc_snapshots")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Follows every route until no snapshot of stream `slot` is pending or
/// running (ten minutes at most).
pub fn follow_while_snapshotting(client: &mut Client, slot: &str, followers: &mut [Follower]) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while snapshot_states(client, slot).iter().any(|(_, s)| s == "pending" || s == "running") {
        assert!(Instant::now() < deadline, "the snapshots did not finish: {:?}", snapshot_states(client, slot));
        followers.iter_mut().for_each(|f| {
            f.step();
        });
    }
}

/// Follows every route until each has had a change committed after `lsn`.
/// All of them at once: one worker fills every ring, so a consumer that
/// stopped reading its route would hold the others back.
pub fn follow_past(followers: &mut [Follower], lsn: u64) {
    let mut arrived = vec![false; followers.len()];
    crate::e2e::eventually("a change after that on every route", || {
        for (follower, arrived) in followers.iter_mut().zip(arrived.iter_mut()) {
            *arrived |= follower.step() > lsn;
        }
        arrived.iter().all(|a| *a)
    });
}

//! A consumer's copy of a table, built as DESIGN §6 says a consumer builds
//! one: apply the route in order, `r`/`c`/`u` as upsert by key, `d` as
//! delete, `t` as truncate. Then compared, row by row, with the table.
//!
//! Values are kept as SQL literals ([`crate::check::sql_literal`]), so the
//! copy can be loaded into a table of the same columns and compared with
//! the original in SQL, as text, for every type.

use crate::check::{quote_literal, sql_literal, unchanged, unmapped};
use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{Array, RecordBatch, StructArray};
use pgcdc_reader::contract;
use pgcdc_reader::snapshot::completes_snapshot;
use postgres::Client;
use std::collections::HashMap;

#[derive(Default)]
pub struct Replica {
    key: Vec<String>,
    rows: HashMap<String, Vec<String>>,
    /// `r` rows applied, and batches that completed a snapshot.
    pub reads: usize,
    pub completions: usize,
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
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {copy}; CREATE TEMP TABLE {copy} (LIKE {table})"))
            .unwrap();
        let rows: Vec<&Vec<String>> = self.rows.values().collect();
        for part in rows.chunks(500) {
            let values: Vec<String> = part.iter().map(|r| format!("({})", r.join(", "))).collect();
            let sql = format!("INSERT INTO {copy} VALUES {}", values.join(", "));
            client.batch_execute(&sql).unwrap_or_else(|e| panic!("loading the copy of {table}: {e}"));
        }
        let mut differences = |a: &str, b: &str| -> Vec<String> {
            client
                .query(&format!("SELECT x::text FROM {a} x EXCEPT ALL SELECT y::text FROM {b} y ORDER BY 1 LIMIT 5"), &[])
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

//! Snapshots: a table's existing rows, read in chunks by key and
//! reconciled with the changes around them (DBLog, as Flink CDC does).
//!
//! For each chunk, a low watermark is committed, the chunk is read in a
//! short transaction, and a high watermark is committed with it; both are
//! logical messages ([`Marker`]) the decoder sees in the WAL, in commit
//! order with every change. A chunk row may be older or newer than a change
//! the stream carries between the watermarks: [`reconcile`] applies those
//! changes to the chunk, so that what is emitted at the high watermark, as
//! `r` rows, is each chunk key's row as of the high watermark. A consumer
//! that applies the route in order (`r`/`c`/`u` as upsert by key, `d` as
//! delete, `t` as truncate) ends with exactly the table's contents, while
//! writers never wait.
//!
//! Only equality of keys is needed here, never their order: keys are
//! compared by their Arrow row encoding, so collations, uuids, enums and
//! composite keys need no ordering of their own (the chunks were cut by
//! PostgreSQL's own `ORDER BY`).

use crate::contract::{self, Op};
use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int8Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{ArrowError, SchemaRef};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// Schema metadata on the batch of no rows that ends a table's snapshot:
/// from then on the consumer's copy of the table is whole.
pub const META_SNAPSHOT: &str = "pgcdc.snapshot";
/// The value of [`META_SNAPSHOT`] on that batch.
pub const COMPLETE: &str = "complete";
/// Schema metadata on that batch: the id of the snapshot it completes.
pub const META_SNAPSHOT_ID: &str = "pgcdc.snapshot_id";
/// Schema metadata on that batch: the commit LSN of its place in the
/// stream, which [`max_commit_lsn`](crate::changes::max_commit_lsn) returns
/// for it, so that the consumer pattern (acknowledge each batch's highest
/// commit LSN) holds for it too.
pub const META_COMMIT_LSN: &str = "pgcdc.commit_lsn";
/// The prefix of the snapshot watermarks, as logical messages.
pub const MESSAGE_PREFIX: &str = "pgcdc.snapshot";

/// Whether `batch` completes a table's snapshot.
pub fn completes_snapshot(batch: &RecordBatch) -> bool {
    batch.schema().metadata().get(META_SNAPSHOT).is_some_and(|v| v == COMPLETE)
}

/// What a watermark says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// A chunk is about to be read.
    Low,
    /// The chunk was read (its rows are in its chunk file).
    High,
    /// Every chunk of the snapshot was delivered.
    Done,
    /// The snapshot was cancelled: forget its open chunks.
    Cancel,
    /// The stream lost changes of the table (its slot was made again): its
    /// route gets a `t` row here, and the snapshot that follows delivers
    /// the table's rows again.
    Reset,
}

impl MarkerKind {
    const NAMES: [(MarkerKind, &'static str); 5] = [
        (MarkerKind::Low, "low"),
        (MarkerKind::High, "high"),
        (MarkerKind::Done, "done"),
        (MarkerKind::Cancel, "cancel"),
        (MarkerKind::Reset, "reset"),
    ];

    fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(k, _)| *k == self).map_or("", |(_, n)| n)
    }
}

/// A snapshot watermark: the content of a `pgcdc.snapshot` logical message,
/// `<slot> <kind> <snapshot id> <token> <relid> <range> <chunk>`.
///
/// Anyone may emit a logical message: the token, a random number kept in a
/// file only the server can read ([`token_file_name`]), tells the real
/// watermarks of a snapshot from forged ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The stream (replication slot) it is for: every slot of the database
    /// decodes it.
    pub slot: String,
    pub kind: MarkerKind,
    pub snapshot: u64,
    pub token: u64,
    /// The table, as the stream routes it (a partitioned table's root).
    pub relid: u32,
    /// Which key range of the table, and which chunk of it (0 for `Done`,
    /// `Cancel` and `Reset`).
    pub range: u32,
    pub chunk: u64,
}

impl Marker {
    /// Reads a watermark; None for anything else.
    pub fn parse(content: &[u8]) -> Option<Marker> {
        let text = std::str::from_utf8(content).ok()?;
        let mut parts = text.split(' ');
        let slot = parts.next()?.to_owned();
        let kind = parts.next()?;
        let kind = MarkerKind::NAMES.iter().find(|(_, n)| *n == kind)?.0;
        let marker = Marker {
            slot,
            kind,
            snapshot: parts.next()?.parse().ok()?,
            token: u64::from_str_radix(parts.next()?, 16).ok()?,
            relid: parts.next()?.parse().ok()?,
            range: parts.next()?.parse().ok()?,
            chunk: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(marker)
    }

    /// The name of the file, in the stream's directory, that holds this
    /// chunk's rows.
    pub fn chunk_file_name(&self) -> String {
        format!("{}.{}.{}.chunk", self.snapshot, self.range, self.chunk)
    }

    /// The name the chunk file takes once the stream has sent its rows: it
    /// stays until the slot has confirmed past them (a crash before that
    /// sends them again), and the snapshot worker, which reads a few chunks
    /// ahead of the stream, counts only the files not sent yet.
    pub fn sent_file_name(&self) -> String {
        format!("{}.{}.{}.sent", self.snapshot, self.range, self.chunk)
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {:016x} {} {} {}",
            self.slot,
            self.kind.name(),
            self.snapshot,
            self.token,
            self.relid,
            self.range,
            self.chunk
        )
    }
}

/// The name of the file, in the stream's directory, that holds snapshot
/// `snapshot`'s token.
pub fn token_file_name(snapshot: u64) -> String {
    format!("{snapshot}.snapshot")
}

/// The name of the file, in the stream's snapshot directory, that says
/// why snapshot `snapshot` failed (a chunk could not be delivered).
pub fn failed_file_name(snapshot: u64) -> String {
    format!("{snapshot}.failed")
}

/// Whether `name` is a file of snapshot `snapshot` (its token or a chunk).
pub fn is_file_of(name: &str, snapshot: u64) -> bool {
    name.strip_prefix(&format!("{snapshot}.")).is_some_and(|rest| {
        rest == "snapshot" || ((rest.ends_with(".chunk") || rest.ends_with(".sent")) && rest.split('.').count() == 3)
    })
}

/// Where the `r` rows of a chunk go in the stream: the high watermark's
/// place (its LSN and its transaction's commit LSN, id and time, as Unix
/// microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub lsn: u64,
    pub commit_lsn: u64,
    pub xid: u32,
    pub commit_ts_us: i64,
}

/// One version of a chunk key's row: (source, row) per table column, and
/// the source and row of the change that made it (for `_unmapped`).
#[derive(Clone)]
struct Version {
    columns: Vec<(usize, usize)>,
    last: (usize, usize),
}

/// The rows of `chunk` as of the high watermark, as a batch of `r` rows
/// of the stream's `schema`, given the changes of that table the stream
/// carried between the watermarks (`window`, in stream order): a key
/// deleted or truncated is left out, a key inserted or updated takes the
/// change's row (TOASTed columns the change did not carry keep the value
/// they had), and a key that changed to another key is left out under the
/// old one. Keys are the columns `key`; rows take the watermark's place.
///
/// `chunk` holds the table's columns by name (in the schema the table had
/// when it was read). Window batches of another schema than `schema` are
/// skipped: the chunk was read under a lock that waits for any change of
/// the table's columns, so changes made under an older schema committed
/// before the chunk was read, and it shows them already.
pub fn reconcile(
    schema: &SchemaRef,
    chunk: &RecordBatch,
    window: &[RecordBatch],
    key: &[String],
    at: Watermark,
) -> Result<RecordBatch, ArrowError> {
    let table_columns: Vec<usize> = (0..schema.fields().len())
        .filter(|i| schema.field(*i).metadata().contains_key(contract::FIELD_PG_TYPE))
        .collect();
    // The chunk's columns in the schema's order.
    let chunk_columns = table_columns
        .iter()
        .map(|i| {
            let field = schema.field(*i);
            match chunk.column_by_name(field.name()) {
                Some(c) if c.data_type() == field.data_type() => Ok(c.clone()),
                _ => Err(ArrowError::SchemaError(format!(
                    "the snapshot chunk has no column \"{}\" of type {}: the table changed while it was read",
                    field.name(),
                    field.data_type()
                ))),
            }
        })
        .collect::<Result<Vec<ArrayRef>, ArrowError>>()?;
    let window: Vec<&RecordBatch> = window.iter().filter(|b| b.schema().fields() == schema.fields()).collect();
    if window.is_empty() {
        // Nothing changed the table between the watermarks (the common
        // case, and every chunk of a quiet table): the chunk's rows as they
        // are, without matching keys.
        return as_read(schema, chunk, &table_columns, chunk_columns, &[], None, at);
    }
    let key_of = |name: &String| {
        table_columns
            .iter()
            .position(|i| schema.field(*i).name() == name)
            .ok_or_else(|| ArrowError::SchemaError(format!("no key column \"{name}\"")))
    };
    let key_positions: Vec<usize> = key.iter().map(key_of).collect::<Result<_, _>>()?;
    let converter = RowConverter::new(
        key_positions.iter().map(|c| SortField::new(chunk_columns[*c].data_type().clone())).collect(),
    )?;
    let encode = |columns: Vec<ArrayRef>, rows: usize| -> Result<Vec<Vec<u8>>, ArrowError> {
        let encoded = converter.convert_columns(&columns)?;
        Ok((0..rows).map(|r| encoded.row(r).as_ref().to_vec()).collect())
    };
    let chunk_keys = encode(key_positions.iter().map(|c| chunk_columns[*c].clone()).collect(), chunk.num_rows())?;
    let mut index: HashMap<Vec<u8>, usize> = HashMap::with_capacity(chunk_keys.len());
    for (row, k) in chunk_keys.into_iter().enumerate() {
        index.insert(k, row);
    }
    let mut versions: Vec<Option<Version>> = (0..chunk.num_rows())
        .map(|row| Some(Version { columns: table_columns.iter().map(|_| (0, row)).collect(), last: (0, row) }))
        .collect();

    let column_names: Vec<&str> = table_columns.iter().map(|i| schema.field(*i).name().as_str()).collect();
    let (insert, update, delete, truncate) = (
        Op::Insert.dictionary_key(),
        Op::Update.dictionary_key(),
        Op::Delete.dictionary_key(),
        Op::Truncate.dictionary_key(),
    );
    for (b, batch) in window.iter().enumerate() {
        let b = b + 1;
        let ops = ops(batch)?;
        let new_keys = encode(key_columns(batch, key, false)?, batch.num_rows())?;
        let old_keys = match batch.column_by_name(contract::BEFORE).and_then(|c| c.as_struct_opt()) {
            Some(before) => Some((before.clone(), encode(key_columns(batch, key, true)?, batch.num_rows())?)),
            None => None,
        };
        let unchanged = batch.column_by_name(contract::UNCHANGED).map(|c| c.as_list::<i32>().clone());
        for row in 0..batch.num_rows() {
            let op = ops.value(row);
            if op == truncate {
                versions.iter_mut().for_each(|v| *v = None);
                continue;
            }
            if op == delete {
                if let Some(at) = index.get(&new_keys[row]) {
                    versions[*at] = None;
                }
                continue;
            }
            if op != insert && op != update {
                continue;
            }
            // A key change takes the row away from its old key.
            if let Some((before, old)) = &old_keys {
                if before.is_valid(row) && old[row] != new_keys[row] {
                    if let Some(at) = index.get(&old[row]) {
                        versions[*at] = None;
                    }
                }
            }
            let Some(at) = index.get(&new_keys[row]).copied() else { continue };
            let kept: HashSet<String> = unchanged
                .as_ref()
                .filter(|u| u.is_valid(row))
                .map(|u| u.value(row).as_string::<i32>().iter().flatten().map(str::to_owned).collect())
                .unwrap_or_default();
            let previous = versions[at].clone();
            versions[at] = Some(Version {
                columns: column_names
                    .iter()
                    .enumerate()
                    .map(|(c, name)| match &previous {
                        Some(p) if kept.contains(*name) => p.columns[c],
                        _ => (b, row),
                    })
                    .collect(),
                last: (b, row),
            });
        }
    }

    let kept: Vec<&Version> = versions.iter().flatten().collect();
    as_read(schema, chunk, &table_columns, chunk_columns, &window, Some(&kept), at)
}

/// The batch of `r` rows of `schema` at watermark `at` whose table
/// columns (at `table_columns` of the schema) take each `kept` version's
/// values from the chunk's columns or the window's batches (None: the
/// chunk's rows, all of them, in order).
fn as_read(
    schema: &SchemaRef,
    chunk: &RecordBatch,
    table_columns: &[usize],
    chunk_columns: Vec<ArrayRef>,
    window: &[&RecordBatch],
    kept: Option<&[&Version]>,
    at: Watermark,
) -> Result<RecordBatch, ArrowError> {
    let rows = kept.map_or(chunk.num_rows(), <[_]>::len);
    let name_dictionary = |key: &str| -> Result<ArrayRef, ArrowError> {
        let name = schema.metadata().get(key).cloned().unwrap_or_default();
        Ok(Arc::new(DictionaryArray::<Int8Type>::try_new(
            Int8Array::from(vec![0; rows]),
            Arc::new(StringArray::from(vec![name])),
        )?))
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let column: ArrayRef = match field.name().as_str() {
            contract::OP => Arc::new(DictionaryArray::<Int8Type>::try_new(
                Int8Array::from(vec![Op::Read.dictionary_key(); rows]),
                Arc::new(StringArray::from_iter_values(Op::ALL.map(|o| o.code()))),
            )?),
            contract::LSN => Arc::new(UInt64Array::from(vec![at.lsn; rows])),
            contract::COMMIT_LSN => Arc::new(UInt64Array::from(vec![at.commit_lsn; rows])),
            contract::XID => Arc::new(UInt32Array::from(vec![at.xid; rows])),
            contract::COMMIT_TS => {
                Arc::new(TimestampMicrosecondArray::from(vec![at.commit_ts_us; rows]).with_timezone_opt(
                    match field.data_type() {
                        arrow_schema::DataType::Timestamp(_, tz) => tz.clone(),
                        _ => None,
                    },
                ))
            }
            contract::SCHEMA => name_dictionary(contract::META_SCHEMA)?,
            contract::TABLE => name_dictionary(contract::META_TABLE)?,
            contract::UNMAPPED => {
                let mut arrays: Vec<ArrayRef> = vec![match chunk.column_by_name(contract::UNMAPPED) {
                    Some(c) if c.data_type() == field.data_type() => c.clone(),
                    _ => arrow_array::new_null_array(field.data_type(), chunk.num_rows()),
                }];
                match kept {
                    Some(kept) => {
                        arrays.extend(window.iter().map(|b| b.column(i).clone()));
                        pick(&arrays, kept.iter().map(|v| v.last))?
                    }
                    None => arrays.swap_remove(0),
                }
            }
            _ => match table_columns.iter().position(|c| *c == i) {
                Some(c) => match kept {
                    Some(kept) => {
                        let mut arrays = vec![chunk_columns[c].clone()];
                        arrays.extend(window.iter().map(|b| b.column(i).clone()));
                        pick(&arrays, kept.iter().map(|v| v.columns[c]))?
                    }
                    None => chunk_columns[c].clone(),
                },
                // Snapshot rows are whole: no old image, no TOASTed column
                // left out.
                None => arrow_array::new_null_array(field.data_type(), rows),
            },
        };
        columns.push(column);
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

/// The value of each (source, row), as one array.
fn pick(arrays: &[ArrayRef], rows: impl Iterator<Item = (usize, usize)>) -> Result<ArrayRef, ArrowError> {
    let indices: Vec<(usize, usize)> = rows.collect();
    if indices.is_empty() {
        return Ok(arrow_array::new_empty_array(arrays[0].data_type()));
    }
    let arrays: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
    arrow_select::interleave::interleave(&arrays, &indices)
}

fn ops(batch: &RecordBatch) -> Result<Int8Array, ArrowError> {
    batch
        .column_by_name(contract::OP)
        .and_then(|c| c.as_dictionary_opt::<Int8Type>())
        .map(|d| d.keys().clone())
        .ok_or_else(|| ArrowError::SchemaError("a change batch without _op".into()))
}

/// The key columns of a change batch (of its `_before` when `old`).
fn key_columns(batch: &RecordBatch, key: &[String], old: bool) -> Result<Vec<ArrayRef>, ArrowError> {
    let missing = |k: &str| ArrowError::SchemaError(format!("no key column \"{k}\""));
    if old {
        let before =
            batch.column_by_name(contract::BEFORE).and_then(|c| c.as_struct_opt()).ok_or_else(|| missing("_before"))?;
        key.iter().map(|k| before.column_by_name(k).cloned().ok_or_else(|| missing(k))).collect()
    } else {
        key.iter().map(|k| batch.column_by_name(k).cloned().ok_or_else(|| missing(k))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{Int32Array, StringArray, StructArray};
    use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};

    fn typed(name: &str, data_type: DataType) -> Field {
        Field::new(name, data_type, true)
            .with_metadata(HashMap::from([(contract::FIELD_PG_TYPE.to_owned(), "x".to_owned())]))
    }

    /// A change batch of (op, id, v, old id, unchanged columns).
    fn changes(rows: &[(&str, i32, Option<&str>, Option<i32>, &[&str])]) -> RecordBatch {
        let n = rows.len();
        let ops = DictionaryArray::<Int8Type>::try_new(
            Int8Array::from_iter_values(rows.iter().map(|r| Op::from_code(r.0).unwrap().dictionary_key())),
            Arc::new(StringArray::from_iter_values(Op::ALL.map(|o| o.code()))),
        )
        .unwrap();
        let ids = Int32Array::from_iter_values(rows.iter().map(|r| r.1));
        let vs = StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let old = Int32Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>());
        let before_fields = Fields::from(vec![typed("id", DataType::Int32), typed("v", DataType::Utf8)]);
        let before = StructArray::try_new(
            before_fields.clone(),
            vec![Arc::new(old.clone()) as ArrayRef, Arc::new(StringArray::from(vec![None::<&str>; n]))],
            old.nulls().cloned(),
        )
        .unwrap();
        let mut unchanged = ListBuilder::new(StringBuilder::new());
        for r in rows {
            if r.4.is_empty() {
                unchanged.append_null();
            } else {
                r.4.iter().for_each(|c| unchanged.values().append_value(c));
                unchanged.append(true);
            }
        }
        let unchanged = unchanged.finish();
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let fields = vec![
            Field::new(contract::OP, ops.data_type().clone(), false),
            Field::new(contract::LSN, DataType::UInt64, false),
            Field::new(contract::COMMIT_LSN, DataType::UInt64, false),
            Field::new(contract::XID, DataType::UInt32, false),
            Field::new(contract::COMMIT_TS, ts, false),
            typed("id", DataType::Int32),
            typed("v", DataType::Utf8),
            Field::new(contract::BEFORE, DataType::Struct(before_fields), true),
            Field::new(contract::UNCHANGED, unchanged.data_type().clone(), true),
        ];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ops),
            Arc::new(UInt64Array::from(vec![7; n])),
            Arc::new(UInt64Array::from(vec![7; n])),
            Arc::new(UInt32Array::from(vec![1; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")),
            Arc::new(ids),
            Arc::new(vs),
            Arc::new(before),
            Arc::new(unchanged),
        ];
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    fn rows(batch: &RecordBatch) -> Vec<(String, i32, Option<String>)> {
        let ops = batch.column(0).as_dictionary::<Int8Type>();
        let codes = ops.values().as_string::<i32>();
        let ids = batch.column_by_name("id").unwrap().as_primitive::<arrow_array::types::Int32Type>();
        let vs = batch.column_by_name("v").unwrap().as_string::<i32>();
        (0..batch.num_rows())
            .map(|r| {
                let op = codes.value(ops.keys().value(r) as usize).to_owned();
                (op, ids.value(r), vs.is_valid(r).then(|| vs.value(r).to_owned()))
            })
            .collect()
    }

    const AT: Watermark = Watermark { lsn: 900, commit_lsn: 950, xid: 42, commit_ts_us: 1_000_000 };

    #[test]
    fn changes_between_the_watermarks_win_over_the_chunk() {
        let chunk = changes(&[
            ("r", 1, Some("one"), None, &[]),
            ("r", 2, Some("two"), None, &[]),
            ("r", 3, Some("three"), None, &[]),
            ("r", 4, Some("four"), None, &[]),
        ]);
        let window = [
            changes(&[("u", 1, Some("ONE"), None, &[]), ("d", 2, None, Some(2), &[])]),
            // An update that did not carry its TOASTed column keeps the value.
            changes(&[("u", 3, None, None, &["v"]), ("c", 9, Some("outside the chunk"), None, &[])]),
            // A key change moves 4 away (to a key of another chunk).
            changes(&[("u", 40, Some("forty"), Some(4), &[])]),
        ];
        let key = ["id".to_owned()];
        let merged = reconcile(&chunk.schema(), &chunk, &window, &key, AT).unwrap();
        assert_eq!(
            rows(&merged),
            [("r".to_owned(), 1, Some("ONE".to_owned())), ("r".to_owned(), 3, Some("three".to_owned()))]
        );
        let u64s = |name: &str| {
            merged.column_by_name(name).unwrap().as_primitive::<arrow_array::types::UInt64Type>().values().to_vec()
        };
        assert_eq!((u64s(contract::LSN), u64s(contract::COMMIT_LSN)), (vec![900, 900], vec![950, 950]));
        assert!(merged.column_by_name(contract::BEFORE).unwrap().is_null(0));
        assert!(merged.column_by_name(contract::UNCHANGED).unwrap().is_null(1));
    }

    #[test]
    fn a_chunk_without_changes_around_it_is_sent_as_read() {
        let chunk = changes(&[("r", 1, Some("one"), None, &[]), ("r", 2, None, None, &[])]);
        let key = ["id".to_owned()];
        let quiet = reconcile(&chunk.schema(), &chunk, &[], &key, AT).unwrap();
        // The same as when the window changed only keys outside the chunk.
        let elsewhere = [changes(&[("c", 9, Some("nine"), None, &[])])];
        let matched = reconcile(&chunk.schema(), &chunk, &elsewhere, &key, AT).unwrap();
        assert_eq!(quiet, matched);
        assert_eq!(rows(&quiet), [("r".to_owned(), 1, Some("one".to_owned())), ("r".to_owned(), 2, None)]);
    }

    #[test]
    fn a_truncate_empties_the_chunk_and_later_inserts_count_again() {
        let chunk = changes(&[("r", 1, Some("one"), None, &[]), ("r", 2, Some("two"), None, &[])]);
        let window = [changes(&[("t", 0, None, None, &[]), ("c", 2, Some("again"), None, &[])])];
        let merged = reconcile(&chunk.schema(), &chunk, &window, &["id".to_owned()], AT).unwrap();
        assert_eq!(rows(&merged), [("r".to_owned(), 2, Some("again".to_owned()))]);
    }

    #[test]
    fn changes_of_an_older_schema_are_skipped_and_a_chunk_without_a_column_refused() {
        let chunk = changes(&[("r", 1, Some("one"), None, &[])]);
        let older = RecordBatch::try_from_iter([
            (contract::OP, Arc::new(chunk.column(0).clone()) as ArrayRef),
            ("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let merged = reconcile(&chunk.schema(), &chunk, &[older], &["id".to_owned()], AT).unwrap();
        assert_eq!(rows(&merged), [("r".to_owned(), 1, Some("one".to_owned()))]);
        let empty = reconcile(&chunk.schema(), &changes(&[]), &[], &["id".to_owned()], AT).unwrap();
        assert_eq!(empty.num_rows(), 0);
        let without_v = RecordBatch::try_from_iter([("id", Arc::new(Int32Array::from(vec![1])) as ArrayRef)]).unwrap();
        let refused = reconcile(&chunk.schema(), &without_v, &[], &["id".to_owned()], AT).unwrap_err();
        assert!(refused.to_string().contains("no column \"v\""), "{refused}");
    }

    #[test]
    fn markers_read_back_as_written_and_nothing_else_reads_as_one() {
        let marker = Marker {
            slot: "orders_cdc".into(),
            kind: MarkerKind::High,
            snapshot: 12,
            token: 0xdead_beef_0000_0001,
            relid: 16384,
            range: 3,
            chunk: 41,
        };
        let text = marker.to_string();
        assert_eq!(text, "orders_cdc high 12 deadbeef00000001 16384 3 41");
        assert_eq!(Marker::parse(text.as_bytes()), Some(marker.clone()));
        assert_eq!(marker.chunk_file_name(), "12.3.41.chunk");
        for bad in ["", "orders_cdc high 12", "orders_cdc sideways 12 1 2 3 4", "s low 1 zz 2 3 4", "s low 1 1 2 3 4 5"]
        {
            assert_eq!(Marker::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(marker.sent_file_name(), "12.3.41.sent");
        assert!(is_file_of("12.3.41.chunk", 12) && is_file_of("12.3.41.sent", 12) && is_file_of("12.snapshot", 12));
        assert!(!is_file_of("120.snapshot", 12) && !is_file_of("12.3.41.chunk.tmp", 12) && !is_file_of("12.ring", 12));
    }

    #[test]
    fn the_completion_marker_is_acknowledged_like_any_batch() {
        let schema = changes(&[]).schema();
        let mut metadata = schema.metadata().clone();
        metadata.insert(META_SNAPSHOT.to_owned(), COMPLETE.to_owned());
        metadata.insert(META_COMMIT_LSN.to_owned(), "123456".to_owned());
        let marker = RecordBatch::new_empty(Arc::new(schema.as_ref().clone().with_metadata(metadata)));
        assert!(completes_snapshot(&marker));
        assert_eq!(crate::changes::max_commit_lsn(&marker), Some(123_456));
        assert_eq!(
            crate::changes::max_commit_lsn(&changes(&[])),
            None,
            "no rows and no marker: nothing to acknowledge"
        );
        assert!(!completes_snapshot(&changes(&[("c", 1, None, None, &[])])));
    }
}

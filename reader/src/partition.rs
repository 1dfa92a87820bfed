//! Reshuffling change batches by a hash of any columns, so that parallel
//! consumers each get every change of their keys, in order; and splitting
//! a table's changes into key-hash partitions as the worker does for
//! `partitions => K`.

use crate::contract::{self, Op};
use arrow_array::builder::{ListBuilder, MapBuilder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{Array, ArrayRef, DictionaryArray, Int8Array, RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::ArrowError;
use std::sync::Arc;

/// Splits batches into `partitions` by a hash of the key columns: rows with
/// equal keys always land in the same partition, in their original order.
///
/// ```
/// use arrow_array::{record_batch, RecordBatch};
/// use pgcdc_reader::partition::HashPartitioner;
/// let batch = record_batch!(("id", Int32, [1, 2, 3, 1]), ("v", Utf8, ["a", "b", "c", "d"])).unwrap();
/// let parts = HashPartitioner::new(&["id"], 2).partition(&batch).unwrap();
/// assert_eq!(parts.iter().map(RecordBatch::num_rows).sum::<usize>(), 4);
/// ```
pub struct HashPartitioner {
    columns: Vec<String>,
    partitions: usize,
}

impl HashPartitioner {
    pub fn new<S: AsRef<str>>(columns: &[S], partitions: usize) -> HashPartitioner {
        HashPartitioner {
            columns: columns.iter().map(|c| c.as_ref().to_owned()).collect(),
            partitions: partitions.max(1),
        }
    }

    /// The partition of every row of `batch`.
    pub fn assign(&self, batch: &RecordBatch) -> Result<Vec<usize>, ArrowError> {
        let keys = self
            .columns
            .iter()
            .map(|name| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| ArrowError::SchemaError(format!("no column \"{name}\" to partition by")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let converter = RowConverter::new(keys.iter().map(|k| SortField::new(k.data_type().clone())).collect())?;
        let rows = converter.convert_columns(&keys)?;
        let n = self.partitions as u64;
        Ok(rows.iter().map(|row| (hash(row.as_ref()) % n) as usize).collect())
    }

    /// One batch per partition (empty where no row belongs), each keeping
    /// its rows' order.
    pub fn partition(&self, batch: &RecordBatch) -> Result<Vec<RecordBatch>, ArrowError> {
        let assignment = self.assign(batch)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); self.partitions];
        for (row, partition) in assignment.into_iter().enumerate() {
            indices[partition].push(row as u32);
        }
        indices.into_iter().map(|rows| arrow_select::take::take_record_batch(batch, &UInt32Array::from(rows))).collect()
    }
}

/// Splits a change batch of one table into `n` partitions by a hash of its
/// partition key columns `key` (one batch per partition, None where no row
/// belongs), keeping every partition's rows in order:
/// * each row goes to its key's partition (a delete's columns hold the old
///   key), a TRUNCATE row to every partition;
/// * an update whose old key (`_before`) hashes to another partition than
///   its new key also reaches the old key's partition, as a delete of the
///   old row (Debezium does the same), so that each partition sees the
///   whole history of its keys and a consumer applying it drops the row
///   it moved away.
pub fn split_changes(batch: &RecordBatch, key: &[String], n: usize) -> Result<Vec<Option<RecordBatch>>, ArrowError> {
    let partitioner = HashPartitioner::new(key, n);
    let new = partitioner.assign(batch)?;
    let ops = batch
        .column_by_name(contract::OP)
        .and_then(|c| c.as_dictionary_opt::<Int8Type>())
        .ok_or_else(|| ArrowError::SchemaError("a change batch without _op".into()))?
        .keys()
        .clone();
    let before = batch.column_by_name(contract::BEFORE).and_then(|c| c.as_struct_opt()).cloned();
    let old = match &before {
        Some(before) => {
            let columns = key
                .iter()
                .map(|k| {
                    before.column_by_name(k).cloned().ok_or_else(|| ArrowError::SchemaError(format!("no _before.{k}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let keys = RecordBatch::try_from_iter(key.iter().cloned().zip(columns))?;
            Some(partitioner.assign(&keys)?)
        }
        None => None,
    };
    let (update, truncate) = (Op::Update.dictionary_key(), Op::Truncate.dictionary_key());
    let mut rows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); partitioner.partitions];
    let mut moved = false;
    for row in 0..batch.num_rows() {
        let op = ops.value(row);
        if op == truncate {
            rows.iter_mut().for_each(|p| p.push((0, row)));
            continue;
        }
        if let (Some(before), Some(old)) = (&before, &old) {
            if op == update && before.is_valid(row) && old[row] != new[row] {
                rows[old[row]].push((1, row));
                moved = true;
            }
        }
        rows[new[row]].push((0, row));
    }
    let deletes = match (&before, moved) {
        (Some(before), true) => Some(as_deletes(batch, before)?),
        _ => None,
    };
    let sources: Vec<&RecordBatch> = std::iter::once(batch).chain(deletes.as_ref()).collect();
    rows.into_iter()
        .map(|indices| {
            (!indices.is_empty())
                .then(|| arrow_select::interleave::interleave_record_batch(&sources, &indices))
                .transpose()
        })
        .collect()
}

/// Every row of `batch` as a delete of its old row: `_op` is `d`, the table
/// columns hold `_before`, and the `_before.`-prefixed entries of
/// `_unchanged` and `_unmapped` (which describe the old row) become the
/// entries of its columns.
fn as_deletes(batch: &RecordBatch, before: &arrow_array::StructArray) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| -> Result<ArrayRef, ArrowError> {
            Ok(match field.name().as_str() {
                contract::OP => {
                    let ops = column.as_dictionary::<Int8Type>();
                    let keys = Int8Array::from(vec![Op::Delete.dictionary_key(); batch.num_rows()]);
                    Arc::new(DictionaryArray::<Int8Type>::try_new(keys, ops.values().clone())?)
                }
                contract::UNCHANGED => Arc::new(old_row_entries_list(column)),
                contract::UNMAPPED => Arc::new(old_row_entries_map(column)),
                name if field.metadata().contains_key(contract::FIELD_PG_TYPE) => {
                    before.column_by_name(name).cloned().unwrap_or_else(|| column.clone())
                }
                _ => column.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// `_unchanged` with only the old row's entries, unprefixed.
fn old_row_entries_list(column: &ArrayRef) -> arrow_array::ListArray {
    let list = column.as_list::<i32>();
    let field = match list.data_type() {
        arrow_schema::DataType::List(field) => field.clone(),
        _ => unreachable!("_unchanged is a list"),
    };
    let mut out = ListBuilder::new(StringBuilder::new()).with_field(field);
    for row in 0..list.len() {
        if list.is_null(row) {
            out.append_null();
            continue;
        }
        let names = list.value(row);
        let names = names.as_string::<i32>();
        for name in names.iter().flatten() {
            if let Some(column) = name.strip_prefix(contract::BEFORE_PREFIX) {
                out.values().append_value(column);
            }
        }
        out.append(true);
    }
    out.finish()
}

/// `_unmapped` with only the old row's entries, unprefixed.
fn old_row_entries_map(column: &ArrayRef) -> arrow_array::MapArray {
    let map = column.as_map();
    let (key_field, value_field) = match map.entries().fields().iter().collect::<Vec<_>>()[..] {
        [k, v] => (k.clone(), v.clone()),
        _ => unreachable!("_unmapped entries are key and value"),
    };
    let names = match map.data_type() {
        arrow_schema::DataType::Map(field, _) => match field.data_type() {
            arrow_schema::DataType::Struct(fields) => arrow_array::builder::MapFieldNames {
                entry: field.name().clone(),
                key: fields[0].name().clone(),
                value: fields[1].name().clone(),
            },
            _ => unreachable!("map entries are a struct"),
        },
        _ => unreachable!("_unmapped is a map"),
    };
    let mut out = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
        .with_keys_field(key_field)
        .with_values_field(value_field);
    for row in 0..map.len() {
        if map.is_null(row) {
            out.append(false).expect("a map row");
            continue;
        }
        let entries = map.value(row);
        let (keys, values) = (entries.column(0).as_string::<i32>(), entries.column(1).as_string::<i32>());
        for i in 0..entries.len() {
            if let Some(column) = keys.value(i).strip_prefix(contract::BEFORE_PREFIX) {
                out.keys().append_value(column);
                out.values().append_option(values.is_valid(i).then(|| values.value(i)));
            }
        }
        out.append(true).expect("a map row");
    }
    out.finish()
}

/// FNV-1a over 8-byte words, then a final mix: fast, and stable across
/// processes and versions (consumers may rely on which partition a key has).
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        h = (h ^ u64::from_le_bytes(chunk.try_into().expect("8 bytes"))).wrapping_mul(0x0000_0100_0000_01b3);
    }
    for b in chunks.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::record_batch;
    use arrow_array::types::Int32Type;

    #[test]
    fn equal_keys_share_a_partition_and_order_is_kept() {
        let batch = record_batch!(
            ("id", Int32, [1, 2, 3, 1, 2, 3, 4, 1]),
            ("region", Utf8, ["eu", "us", "eu", "eu", "us", "eu", "ap", "eu"]),
            ("seq", Int32, [0, 1, 2, 3, 4, 5, 6, 7])
        )
        .unwrap();
        let partitioner = HashPartitioner::new(&["id", "region"], 3);
        let parts = partitioner.partition(&batch).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts.iter().map(RecordBatch::num_rows).sum::<usize>(), 8);
        let assignment = partitioner.assign(&batch).unwrap();
        assert_eq!(assignment[0], assignment[3]);
        assert_eq!(assignment[0], assignment[7]);
        assert_eq!(assignment[1], assignment[4]);
        for part in &parts {
            let seq: Vec<i32> = part.column_by_name("seq").unwrap().as_primitive::<Int32Type>().values().to_vec();
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "order kept: {seq:?}");
        }
        // The same keys land in the same partitions in another batch.
        let again = record_batch!(("id", Int32, [1]), ("region", Utf8, ["eu"]), ("seq", Int32, [9])).unwrap();
        assert_eq!(partitioner.assign(&again).unwrap()[0], assignment[0]);
        assert!(HashPartitioner::new(&["nope"], 2).partition(&batch).is_err());
    }

    /// A change batch as the plugin writes it: ops, LSNs, `id` and `v`,
    /// `_before` with both, `_unchanged` and `_unmapped`.
    fn changes(rows: &[(&str, i32, Option<i32>)]) -> RecordBatch {
        use arrow_array::{Int32Array, StructArray, UInt64Array};
        use arrow_schema::{DataType, Field, Fields};
        use std::collections::HashMap;
        let typed = |name: &str| {
            Field::new(name, DataType::Int32, true)
                .with_metadata(HashMap::from([(contract::FIELD_PG_TYPE.to_owned(), "integer".to_owned())]))
        };
        let ops = DictionaryArray::<Int8Type>::try_new(
            Int8Array::from_iter_values(rows.iter().map(|r| Op::from_code(r.0).unwrap().dictionary_key())),
            Arc::new(arrow_array::StringArray::from_iter_values(Op::ALL.map(|o| o.code()))),
        )
        .unwrap();
        let ids = Int32Array::from_iter_values(rows.iter().map(|r| r.1));
        let old_ids = Int32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let vs = Int32Array::from_iter_values(rows.iter().map(|r| r.1 * 10));
        let before_fields = Fields::from(vec![typed("id"), typed("v")]);
        let before = StructArray::try_new(
            before_fields.clone(),
            vec![Arc::new(old_ids.clone()) as ArrayRef, Arc::new(vs.clone())],
            Some(old_ids.nulls().cloned().unwrap_or_else(|| arrow_buffer::NullBuffer::new_valid(rows.len()))),
        )
        .unwrap();
        let mut unchanged = ListBuilder::new(StringBuilder::new());
        let mut unmapped = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for _ in rows {
            unchanged.values().append_value("_before.v");
            unchanged.values().append_value("v");
            unchanged.append(true);
            unmapped.keys().append_value("_before.v");
            unmapped.values().append_value("NaN");
            unmapped.append(true).unwrap();
        }
        let lsns = UInt64Array::from_iter_values((0..rows.len() as u64).map(|i| 100 + i));
        let columns: Vec<(&str, ArrayRef)> = vec![
            (contract::OP, Arc::new(ops)),
            (contract::LSN, Arc::new(lsns.clone())),
            (contract::COMMIT_LSN, Arc::new(lsns)),
            ("id", Arc::new(ids)),
            ("v", Arc::new(vs)),
            (contract::BEFORE, Arc::new(before)),
            (contract::UNCHANGED, Arc::new(unchanged.finish())),
            (contract::UNMAPPED, Arc::new(unmapped.finish())),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        // Table columns carry pg.type, as the plugin's do.
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| if f.name() == "id" || f.name() == "v" { typed(f.name()) } else { f.as_ref().clone() })
            .collect();
        RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), batch.columns().to_vec()).unwrap()
    }

    #[test]
    fn a_key_change_across_partitions_deletes_the_old_key_where_it_lived() {
        let key = ["id".to_string()];
        let home = |id: i32| HashPartitioner::new(&key, 4).assign(&changes(&[("c", id, None)])).unwrap()[0];
        // Find a key that moves to another partition.
        let (from, to) =
            (1..100).flat_map(|a| (1..100).map(move |b| (a, b))).find(|(a, b)| home(*a) != home(*b)).unwrap();
        let stays = (1..100).find(|b| *b != from && home(*b) == home(from)).unwrap();
        let batch = changes(&[("c", from, None), ("u", to, Some(from)), ("u", stays, Some(to)), ("t", 0, None)]);
        let parts = split_changes(&batch, &key, 4).unwrap();
        let summary = |k: usize| -> Vec<(String, i32)> {
            parts[k].as_ref().map_or_else(Vec::new, |p| {
                let ops = p.column_by_name(contract::OP).unwrap().as_dictionary::<Int8Type>().clone();
                let values = ops.values().as_string::<i32>().clone();
                let ids = p.column_by_name("id").unwrap().as_primitive::<arrow_array::types::Int32Type>().clone();
                (0..p.num_rows())
                    .map(|r| (values.value(ops.keys().value(r) as usize).to_owned(), ids.value(r)))
                    .collect()
            })
        };
        let (a, b) = (home(from), home(to));
        let truncate = ("t".to_owned(), 0);
        assert_eq!(
            summary(a)[..2],
            [("c".to_owned(), from), ("d".to_owned(), from)],
            "the old key leaves its partition"
        );
        assert!(summary(b).contains(&("u".to_owned(), to)), "the new key's update");
        assert!(summary(b).contains(&("d".to_owned(), to)) || home(stays) == b, "and, if it moves on, its delete");
        assert!((0..4).all(|k| summary(k).last() == Some(&truncate)), "TRUNCATE everywhere");
        // The delete carries the old row and its old-row side entries.
        let part = parts[a].as_ref().unwrap();
        let unchanged = part.column_by_name(contract::UNCHANGED).unwrap().as_list::<i32>().value(1);
        assert_eq!(unchanged.as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["v"]);
        let unmapped = part.column_by_name(contract::UNMAPPED).unwrap().as_map().value(1);
        assert_eq!(unmapped.column(0).as_string::<i32>().value(0), "v");
    }

    #[test]
    fn keys_spread_over_partitions() {
        let ids: Vec<i32> = (0..10_000).collect();
        let batch =
            RecordBatch::try_from_iter([("id", std::sync::Arc::new(arrow_array::Int32Array::from(ids)) as _)]).unwrap();
        let counts: Vec<usize> =
            HashPartitioner::new(&["id"], 8).partition(&batch).unwrap().iter().map(RecordBatch::num_rows).collect();
        assert!(counts.iter().all(|c| (1000..1500).contains(c)), "{counts:?}");
    }
}

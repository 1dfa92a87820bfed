//! Column accessors that keep test assertions short.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow_schema::DataType;
use pgcdc_reader::contract;

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name} in {:?}", batch.schema()))
}

/// Any integer column as i64 (nulls as None).
pub fn ints(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    int_values(column(batch, name))
}

fn int_values(array: &ArrayRef) -> Vec<Option<i64>> {
    (0..array.len())
        .map(|i| {
            array.is_valid(i).then(|| match array.data_type() {
                DataType::Int16 => i64::from(array.as_primitive::<Int16Type>().value(i)),
                DataType::Int32 => i64::from(array.as_primitive::<Int32Type>().value(i)),
                DataType::Int64 => array.as_primitive::<Int64Type>().value(i),
                DataType::UInt32 => i64::from(array.as_primitive::<UInt32Type>().value(i)),
                DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i) as i64,
                other => panic!("not an integer column: {other}"),
            })
        })
        .collect()
}

/// A UInt64 column (`_lsn`, `_commit_lsn`).
pub fn u64s(batch: &RecordBatch, name: &str) -> Vec<u64> {
    column(batch, name).as_primitive::<UInt64Type>().values().to_vec()
}

/// A Utf8 or Int8-dictionary-of-Utf8 column.
pub fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    string_values(column(batch, name))
}

fn string_values(array: &ArrayRef) -> Vec<Option<String>> {
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_owned())).collect()
        }
        DataType::Dictionary(..) => {
            let d = array.as_dictionary::<Int8Type>();
            let values = d.values().as_string::<i32>();
            (0..d.len()).map(|i| d.is_valid(i).then(|| values.value(d.keys().value(i) as usize).to_owned())).collect()
        }
        other => panic!("not a string column: {other}"),
    }
}

/// The `_op` codes.
pub fn ops(batch: &RecordBatch) -> Vec<String> {
    strings(batch, contract::OP).into_iter().map(|o| o.expect("_op is never null")).collect()
}

/// The `_before` struct.
pub fn before(batch: &RecordBatch) -> &StructArray {
    column(batch, contract::BEFORE).as_struct()
}

/// An integer field of `_before`, None where the struct or field is null.
pub fn before_ints(batch: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let b = before(batch);
    let values = int_values(b.column_by_name(name).expect("field of _before"));
    values.into_iter().enumerate().map(|(i, v)| if b.is_null(i) { None } else { v }).collect()
}

/// A string field of `_before`, None where the struct or field is null.
pub fn before_strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let b = before(batch);
    let values = string_values(b.column_by_name(name).expect("field of _before"));
    values.into_iter().enumerate().map(|(i, v)| if b.is_null(i) { None } else { v }).collect()
}

/// Field metadata of a table column.
pub fn field_meta(batch: &RecordBatch, name: &str, key: &str) -> Option<String> {
    batch.schema().field_with_name(name).ok()?.metadata().get(key).cloned()
}

//! Checks a change batch against the table it came from, cell by cell.
//!
//! Each Arrow value is turned back into a PostgreSQL literal, cast to the
//! column's type (its `pg.type` field metadata) and compared, as text, with
//! what `SELECT` returns for that row. Text comparison is exact: every type's
//! output function prints all of the value (floats in their shortest exact
//! form since PostgreSQL 12). A value the typed column refused must appear in
//! `_unmapped` with text that equals the column's; a TOASTed value WAL did
//! not carry must be named in `_unchanged`.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, MapArray, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use pgcdc_reader::contract;
use postgres::Client;

/// Quotes a string as an SQL literal (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes an identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The SQL expression of `array[row]` (not null), of PostgreSQL type
/// `pg_type`.
pub fn sql_literal(array: &dyn Array, row: usize, pg_type: &str) -> String {
    let micros = |v: i64| {
        format!(
            "{} * interval '1 day' + {} * interval '1 microsecond'",
            v.div_euclid(DAY_MICROS),
            v.rem_euclid(DAY_MICROS)
        )
    };
    let expr = match array.data_type() {
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::Float32 => float(
            f64::from(array.as_primitive::<Float32Type>().value(row)),
            array.as_primitive::<Float32Type>().value(row).to_string(),
        ),
        DataType::Float64 => float(
            array.as_primitive::<Float64Type>().value(row),
            array.as_primitive::<Float64Type>().value(row).to_string(),
        ),
        DataType::Decimal128(..) => quote_literal(&array.as_primitive::<Decimal128Type>().value_as_string(row)),
        DataType::Decimal256(..) => quote_literal(&array.as_primitive::<Decimal256Type>().value_as_string(row)),
        DataType::Utf8 => quote_literal(array.as_string::<i32>().value(row)),
        DataType::Binary => {
            let hex: String = array.as_binary::<i32>().value(row).iter().map(|b| format!("{b:02x}")).collect();
            format!("'\\x{hex}'")
        }
        DataType::FixedSizeBinary(16) => {
            let hex: String = array.as_fixed_size_binary().value(row).iter().map(|b| format!("{b:02x}")).collect();
            quote_literal(&hex)
        }
        DataType::Date32 => match array.as_primitive::<Date32Type>().value(row) {
            i32::MAX => "'infinity'".into(),
            d if d == -i32::MAX => "'-infinity'".into(),
            d => format!("(date '1970-01-01' + {d})"),
        },
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let start =
                if tz.is_some() { "timestamptz '1970-01-01 00:00:00+00'" } else { "timestamp '1970-01-01 00:00:00'" };
            match array.as_primitive::<TimestampMicrosecondType>().value(row) {
                i64::MAX => "'infinity'".into(),
                v if v == -i64::MAX => "'-infinity'".into(),
                v => format!("({start} + {})", micros(v)),
            }
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            format!(
                "(time '00:00' + {} * interval '1 microsecond')",
                array.as_primitive::<Time64MicrosecondType>().value(row)
            )
        }
        DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano) => {
            let v = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            assert_eq!(v.nanoseconds % 1000, 0, "PostgreSQL intervals have microsecond resolution");
            let us = v.nanoseconds / 1000;
            let hour = 3_600_000_000;
            format!(
                "(interval '{} months' + interval '{} days' + {} * interval '1 hour' + {} * interval '1 microsecond')",
                v.months,
                v.days,
                us.div_euclid(hour),
                us.rem_euclid(hour)
            )
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            let element_type = pg_type.strip_suffix("[]").unwrap_or(pg_type);
            let items: Vec<String> = (0..list.len())
                .map(|i| {
                    if list.is_null(i) {
                        "NULL".into()
                    } else {
                        format!("({})::{element_type}", sql_literal(&list, i, element_type))
                    }
                })
                .collect();
            if items.is_empty() {
                "'{}'".into()
            } else {
                format!("ARRAY[{}]", items.join(", "))
            }
        }
        other => panic!("no SQL literal for {other}"),
    };
    format!("({expr})::{pg_type}")
}

fn float(v: f64, shortest: String) -> String {
    if v.is_nan() {
        "'NaN'".into()
    } else if v == f64::INFINITY {
        "'Infinity'".into()
    } else if v == f64::NEG_INFINITY {
        "'-Infinity'".into()
    } else {
        quote_literal(&shortest)
    }
}

/// The `_unmapped` entries of one row, as (key, text).
pub fn unmapped(batch: &RecordBatch, row: usize) -> Vec<(String, String)> {
    let map: &MapArray = batch.column_by_name(contract::UNMAPPED).expect("_unmapped").as_map();
    if map.is_null(row) {
        return Vec::new();
    }
    let entries = map.value(row);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries.column(1).as_string::<i32>();
    (0..entries.len()).map(|i| (keys.value(i).to_owned(), values.value(i).to_owned())).collect()
}

/// The `_unchanged` names of one row.
pub fn unchanged(batch: &RecordBatch, row: usize) -> Vec<String> {
    let list = batch.column_by_name(contract::UNCHANGED).expect("_unchanged").as_list::<i32>();
    if list.is_null(row) {
        return Vec::new();
    }
    let names = list.value(row);
    let names = names.as_string::<i32>();
    (0..names.len()).map(|i| names.value(i).to_owned()).collect()
}

/// Asserts that every table column of every row in `batch` equals the row
/// of `table` whose `key` column has the batch's key value. Returns the
/// number of cells compared.
pub fn assert_matches_table(client: &mut Client, batch: &RecordBatch, table: &str, key: &str) -> usize {
    let schema = batch.schema();
    let key_field = schema.field_with_name(key).expect("key column");
    let key_type = key_field.metadata()[contract::FIELD_PG_TYPE].clone();
    let key_column = batch.column_by_name(key).expect("key column");
    let first_table_column = 7;
    let last_table_column = schema
        .fields()
        .iter()
        .position(|f| f.name() == contract::BEFORE || f.name() == contract::UNCHANGED)
        .expect("trailing contract columns");
    let mut compared = 0;
    for row in 0..batch.num_rows() {
        let key_literal = sql_literal(key_column.as_ref(), row, &key_type);
        let unmapped = unmapped(batch, row);
        let unchanged = unchanged(batch, row);
        for index in first_table_column..last_table_column {
            let field = schema.field(index);
            let name = field.name();
            let pg_type = &field.metadata()[contract::FIELD_PG_TYPE];
            let column = batch.column(index);
            let expected = if column.is_valid(row) {
                sql_literal(column.as_ref(), row, pg_type)
            } else if let Some((_, text)) = unmapped.iter().find(|(k, _)| k == name) {
                format!("({})::{pg_type}", quote_literal(text))
            } else if unchanged.contains(name) {
                continue;
            } else {
                "NULL".into()
            };
            let sql = format!(
                "SELECT ({expected})::text IS NOT DISTINCT FROM {col}::text, {col}::text, ({expected})::text FROM {table} WHERE {k} = {key_literal}",
                col = quote_ident(name),
                k = quote_ident(key)
            );
            let result = client.query_one(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let equal: bool = result.get(0);
            assert!(
                equal,
                "row {row} column {name} ({pg_type}): table has {:?}, batch has {:?}\n{sql}",
                result.get::<_, Option<String>>(1),
                result.get::<_, Option<String>>(2)
            );
            compared += 1;
        }
    }
    compared
}

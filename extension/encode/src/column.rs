//! Column builders: PostgreSQL values in, Arrow arrays out.
//!
//! A value comes in as PostgreSQL stores it ([`Stored`]: a by-value word or
//! a by-reference value's bytes) and is converted (the step that can refuse
//! it: a numeric NaN in a decimal column, a timestamp beyond Arrow's range,
//! bytes that are not UTF-8), then appended; both steps are one inlined
//! match per value. A refused value appends a null and returns an error,
//! so the caller can record its text in `_unmapped`; an array is converted
//! completely before any element is appended, so a refused element never
//! leaves a half-written list behind.

use crate::pgformat::{datetime, numeric, FormatError};
use crate::types::{Kind, Scalar};
use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder,
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt32Builder,
};
use arrow_array::{ArrayRef, ListArray};
use arrow_buffer::{i256, IntervalMonthDayNano, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use std::borrow::Cow;
use std::sync::Arc;

/// One non-null PostgreSQL value, as the extension finds it in a datum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<'a> {
    /// A by-value datum (bool, integers, oid, floats, date, time,
    /// timestamps), read as PostgreSQL's `DatumGet*` macros read it.
    Word(u64),
    /// A by-reference value's bytes: a varlena's payload, header stripped
    /// (text, bytea, numeric, json), the `typlen` bytes of a fixed-length
    /// type (uuid, interval, name), or the text a type's output function
    /// returned (jsonb, enums, unmapped types).
    Bytes(&'a [u8]),
}

impl Stored<'_> {
    /// The bytes of a by-reference value (a numeric's payload stands in
    /// for its text), for the byte bound on messages.
    pub fn byte_len(&self) -> usize {
        match self {
            Stored::Word(_) => 0,
            Stored::Bytes(b) => b.len(),
        }
    }
}

/// Why a value was not appended (a null was appended in its place).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    /// A valid value with no faithful form in the column's Arrow type.
    #[error("value has no faithful {0:?} form")]
    Unrepresentable(Scalar),
    /// The value's bytes do not have its type's layout.
    #[error(transparent)]
    Malformed(#[from] FormatError),
    /// The caller passed a value of another type than the column's.
    #[error("a {got} value cannot go into a {expected:?} column")]
    WrongValue { expected: Scalar, got: &'static str },
}

/// A converted value, ready to append.
enum Cell<'a> {
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    F64(f64),
    D128(i128),
    D256(i256),
    Str(Cow<'a, str>),
    Bin(&'a [u8]),
    Interval(IntervalMonthDayNano),
}

/// Arrow builders, one variant per Arrow type the mapping produces.
enum Store {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U32(UInt32Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    D128(Decimal128Builder),
    D256(Decimal256Builder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Ts(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    Fixed(FixedSizeBinaryBuilder),
}

/// Builds one column of one scalar type.
pub struct ScalarColumn {
    scalar: Scalar,
    store: Store,
}

impl ScalarColumn {
    pub fn new(scalar: Scalar) -> ScalarColumn {
        let store = match scalar {
            Scalar::Bool => Store::Bool(BooleanBuilder::new()),
            Scalar::Int16 => Store::I16(Int16Builder::new()),
            Scalar::Int32 => Store::I32(Int32Builder::new()),
            Scalar::Int64 => Store::I64(Int64Builder::new()),
            Scalar::Oid => Store::U32(UInt32Builder::new()),
            Scalar::Float32 => Store::F32(Float32Builder::new()),
            Scalar::Float64 => Store::F64(Float64Builder::new()),
            // The mapping only produces valid (precision, scale) pairs; the
            // builder's own check is the fallback that keeps this total.
            Scalar::Decimal128 { precision, scale } => {
                Store::D128(Decimal128Builder::new().with_precision_and_scale(precision, scale).unwrap_or_default())
            }
            Scalar::Decimal256 { precision, scale } => {
                Store::D256(Decimal256Builder::new().with_precision_and_scale(precision, scale).unwrap_or_default())
            }
            Scalar::NumericText
            | Scalar::Text
            | Scalar::Name
            | Scalar::Json
            | Scalar::Jsonb
            | Scalar::Enum
            | Scalar::Other => Store::Utf8(StringBuilder::new()),
            Scalar::Bytea => Store::Binary(BinaryBuilder::new()),
            Scalar::Date => Store::Date(Date32Builder::new()),
            Scalar::Time => Store::Time(Time64MicrosecondBuilder::new()),
            Scalar::Timestamp => Store::Ts(TimestampMicrosecondBuilder::new()),
            Scalar::TimestampTz => Store::Ts(TimestampMicrosecondBuilder::new().with_timezone("UTC")),
            Scalar::Interval => Store::Interval(IntervalMonthDayNanoBuilder::new()),
            Scalar::Uuid => Store::Fixed(FixedSizeBinaryBuilder::new(16)),
        };
        ScalarColumn { scalar, store }
    }

    /// Appends a value, or a null and the reason it was refused.
    #[inline]
    pub fn push(&mut self, stored: Stored<'_>) -> Result<(), PushError> {
        // The common types go straight from the stored value into their
        // builder, in one match; the rest convert to a cell first.
        match (&mut self.store, stored) {
            (Store::I64(b), Stored::Word(w)) => {
                b.append_value(w as i64);
                return Ok(());
            }
            (Store::I32(b), Stored::Word(w)) => {
                b.append_value(w as i32);
                return Ok(());
            }
            (Store::I16(b), Stored::Word(w)) => {
                b.append_value(w as i16);
                return Ok(());
            }
            (Store::F64(b), Stored::Word(w)) => {
                b.append_value(f64::from_bits(w));
                return Ok(());
            }
            (Store::Bool(b), Stored::Word(w)) => {
                b.append_value(w != 0);
                return Ok(());
            }
            (Store::Ts(b), Stored::Word(w)) => {
                if let Some(ts) = datetime::timestamp(w as i64) {
                    b.append_value(ts);
                    return Ok(());
                }
            }
            (Store::Binary(b), Stored::Bytes(bytes)) => {
                b.append_value(bytes);
                return Ok(());
            }
            (Store::Fixed(b), Stored::Bytes(bytes)) if bytes.len() == 16 => {
                if b.append_value(bytes).is_ok() {
                    return Ok(());
                }
            }
            (Store::Utf8(b), Stored::Bytes(bytes))
                if matches!(
                    self.scalar,
                    Scalar::Text | Scalar::Json | Scalar::Jsonb | Scalar::Enum | Scalar::Other
                ) =>
            {
                if let Ok(text) = std::str::from_utf8(bytes) {
                    b.append_value(text);
                    return Ok(());
                }
            }
            _ => {}
        }
        match self.cell(stored) {
            Ok(cell) => {
                self.append(cell);
                Ok(())
            }
            Err(e) => {
                self.push_null();
                Err(e)
            }
        }
    }

    pub fn push_null(&mut self) {
        match &mut self.store {
            Store::Bool(b) => b.append_null(),
            Store::I16(b) => b.append_null(),
            Store::I32(b) => b.append_null(),
            Store::I64(b) => b.append_null(),
            Store::U32(b) => b.append_null(),
            Store::F32(b) => b.append_null(),
            Store::F64(b) => b.append_null(),
            Store::D128(b) => b.append_null(),
            Store::D256(b) => b.append_null(),
            Store::Utf8(b) => b.append_null(),
            Store::Binary(b) => b.append_null(),
            Store::Date(b) => b.append_null(),
            Store::Time(b) => b.append_null(),
            Store::Ts(b) => b.append_null(),
            Store::Interval(b) => b.append_null(),
            Store::Fixed(b) => b.append_null(),
        }
    }

    pub fn push_nulls(&mut self, n: usize) {
        match &mut self.store {
            Store::Bool(b) => b.append_nulls(n),
            Store::I16(b) => b.append_nulls(n),
            Store::I32(b) => b.append_nulls(n),
            Store::I64(b) => b.append_nulls(n),
            Store::U32(b) => b.append_nulls(n),
            Store::F32(b) => b.append_nulls(n),
            Store::F64(b) => b.append_nulls(n),
            Store::D128(b) => b.append_nulls(n),
            Store::D256(b) => b.append_nulls(n),
            Store::Utf8(b) => b.append_nulls(n),
            Store::Binary(b) => b.append_nulls(n),
            Store::Date(b) => b.append_nulls(n),
            Store::Time(b) => b.append_nulls(n),
            Store::Ts(b) => b.append_nulls(n),
            Store::Interval(b) => b.append_nulls(n),
            Store::Fixed(b) => b.append_nulls(n),
        }
    }

    /// The array of everything appended since the last `finish`.
    pub fn finish(&mut self) -> ArrayRef {
        match &mut self.store {
            Store::Bool(b) => Arc::new(b.finish()),
            Store::I16(b) => Arc::new(b.finish()),
            Store::I32(b) => Arc::new(b.finish()),
            Store::I64(b) => Arc::new(b.finish()),
            Store::U32(b) => Arc::new(b.finish()),
            Store::F32(b) => Arc::new(b.finish()),
            Store::F64(b) => Arc::new(b.finish()),
            Store::D128(b) => Arc::new(b.finish()),
            Store::D256(b) => Arc::new(b.finish()),
            Store::Utf8(b) => Arc::new(b.finish()),
            Store::Binary(b) => Arc::new(b.finish()),
            Store::Date(b) => Arc::new(b.finish()),
            Store::Time(b) => Arc::new(b.finish()),
            Store::Ts(b) => Arc::new(b.finish()),
            Store::Interval(b) => Arc::new(b.finish()),
            Store::Fixed(b) => Arc::new(b.finish()),
        }
    }

    /// Converts a value for this column: one match on the column's type.
    #[inline(always)]
    fn cell<'a>(&self, stored: Stored<'a>) -> Result<Cell<'a>, PushError> {
        let refused = || PushError::Unrepresentable(self.scalar);
        let cell = match (self.scalar, stored) {
            (Scalar::Bool, Stored::Word(w)) => Cell::Bool(w != 0),
            (Scalar::Int16, Stored::Word(w)) => Cell::I16(w as i16),
            (Scalar::Int32, Stored::Word(w)) => Cell::I32(w as i32),
            (Scalar::Int64, Stored::Word(w)) => Cell::I64(w as i64),
            (Scalar::Oid, Stored::Word(w)) => Cell::U32(w as u32),
            (Scalar::Float32, Stored::Word(w)) => Cell::F32(f32::from_bits(w as u32)),
            (Scalar::Float64, Stored::Word(w)) => Cell::F64(f64::from_bits(w)),
            (Scalar::Date, Stored::Word(w)) => Cell::I32(datetime::date(w as i32).ok_or_else(refused)?),
            (Scalar::Time, Stored::Word(w)) => Cell::I64(datetime::time(w as i64).ok_or_else(refused)?),
            (Scalar::Timestamp | Scalar::TimestampTz, Stored::Word(w)) => {
                Cell::I64(datetime::timestamp(w as i64).ok_or_else(refused)?)
            }
            (Scalar::Decimal128 { precision, scale }, Stored::Bytes(b)) => {
                Cell::D128(numeric::parse(b)?.to_decimal128(precision, scale).ok_or_else(refused)?)
            }
            (Scalar::Decimal256 { precision, scale }, Stored::Bytes(b)) => {
                Cell::D256(numeric::parse(b)?.to_decimal256(precision, scale).ok_or_else(refused)?)
            }
            (Scalar::NumericText, Stored::Bytes(b)) => {
                let mut text = String::new();
                numeric::parse(b)?.write_text(&mut text);
                Cell::Str(Cow::Owned(text))
            }
            // `name` is a fixed 64-byte, NUL-padded C string.
            (Scalar::Name, Stored::Bytes(b)) => {
                let name = &b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())];
                Cell::Str(Cow::Borrowed(std::str::from_utf8(name).map_err(|_| refused())?))
            }
            (Scalar::Text | Scalar::Json | Scalar::Jsonb | Scalar::Enum | Scalar::Other, Stored::Bytes(b)) => {
                Cell::Str(Cow::Borrowed(std::str::from_utf8(b).map_err(|_| refused())?))
            }
            (Scalar::Bytea, Stored::Bytes(b)) => Cell::Bin(b),
            (Scalar::Interval, Stored::Bytes(b)) => {
                let (micros, days, months) = datetime::interval_fields(b)?;
                Cell::Interval(datetime::interval(micros, days, months).ok_or_else(refused)?)
            }
            (Scalar::Uuid, Stored::Bytes(b)) if b.len() == 16 => Cell::Bin(b),
            (Scalar::Uuid, Stored::Bytes(b)) => {
                return Err(FormatError::new("uuid", format!("16 bytes needed, {} present", b.len())).into())
            }
            (expected, Stored::Word(_)) => return Err(PushError::WrongValue { expected, got: "by-value word" }),
            (expected, Stored::Bytes(_)) => return Err(PushError::WrongValue { expected, got: "by-reference bytes" }),
        };
        Ok(cell)
    }

    #[inline(always)]
    fn append(&mut self, cell: Cell<'_>) {
        let appended = match (&mut self.store, cell) {
            (Store::Bool(b), Cell::Bool(v)) => {
                b.append_value(v);
                true
            }
            (Store::I16(b), Cell::I16(v)) => {
                b.append_value(v);
                true
            }
            (Store::I32(b), Cell::I32(v)) => {
                b.append_value(v);
                true
            }
            (Store::I64(b), Cell::I64(v)) => {
                b.append_value(v);
                true
            }
            (Store::U32(b), Cell::U32(v)) => {
                b.append_value(v);
                true
            }
            (Store::F32(b), Cell::F32(v)) => {
                b.append_value(v);
                true
            }
            (Store::F64(b), Cell::F64(v)) => {
                b.append_value(v);
                true
            }
            (Store::D128(b), Cell::D128(v)) => {
                b.append_value(v);
                true
            }
            (Store::D256(b), Cell::D256(v)) => {
                b.append_value(v);
                true
            }
            (Store::Utf8(b), Cell::Str(v)) => {
                b.append_value(v);
                true
            }
            (Store::Binary(b), Cell::Bin(v)) => {
                b.append_value(v);
                true
            }
            (Store::Date(b), Cell::I32(v)) => {
                b.append_value(v);
                true
            }
            (Store::Time(b), Cell::I64(v)) => {
                b.append_value(v);
                true
            }
            (Store::Ts(b), Cell::I64(v)) => {
                b.append_value(v);
                true
            }
            (Store::Interval(b), Cell::Interval(v)) => {
                b.append_value(v);
                true
            }
            // `convert` only admits 16-byte uuids.
            (Store::Fixed(b), Cell::Bin(v)) if v.len() == 16 => b.append_value(v).is_ok(),
            // `convert` produces the cell of the column's own store; a null
            // keeps the column's length right should that ever change.
            _ => false,
        };
        if !appended {
            self.push_null();
        }
    }
}

/// Builds a `List<scalar>` column.
pub struct ListColumn {
    element: Scalar,
    offsets: Vec<i32>,
    validity: NullBufferBuilder,
    values: ScalarColumn,
}

impl ListColumn {
    pub fn new(element: Scalar) -> ListColumn {
        ListColumn {
            element,
            offsets: vec![0],
            validity: NullBufferBuilder::new(0),
            values: ScalarColumn::new(element),
        }
    }

    /// Appends a list, or a null and the reason one element was refused.
    pub fn push(&mut self, elements: &[Option<Stored<'_>>]) -> Result<(), PushError> {
        let cells: Result<Vec<Option<Cell<'_>>>, PushError> =
            elements.iter().map(|e| e.map(|v| self.values.cell(v)).transpose()).collect();
        let cells = match cells {
            Ok(cells) => cells,
            Err(e) => {
                self.push_null();
                return Err(e);
            }
        };
        for cell in cells {
            match cell {
                Some(cell) => self.values.append(cell),
                None => self.values.push_null(),
            }
        }
        self.close(true);
        Ok(())
    }

    pub fn push_null(&mut self) {
        self.push_nulls(1);
    }

    pub fn push_nulls(&mut self, n: usize) {
        let end = self.values.len() as i32;
        self.offsets.extend(std::iter::repeat_n(end, n));
        self.validity.append_n_nulls(n);
    }

    fn close(&mut self, valid: bool) {
        // A batch is bounded far below 2^31 values by its byte limit.
        self.offsets.push(self.values.len() as i32);
        self.validity.append(valid);
    }

    pub fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let field = Arc::new(self.element.field("item"));
        let values = self.values.finish();
        let nulls = self.validity.finish();
        // Offsets are monotonic and end at the values' length by construction.
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        Arc::new(ListArray::new(field, offsets, values, nulls))
    }
}

impl ScalarColumn {
    /// Number of values appended since the last `finish`.
    pub fn len(&self) -> usize {
        use arrow_array::builder::ArrayBuilder;
        match &self.store {
            Store::Bool(b) => b.len(),
            Store::I16(b) => b.len(),
            Store::I32(b) => b.len(),
            Store::I64(b) => b.len(),
            Store::U32(b) => b.len(),
            Store::F32(b) => b.len(),
            Store::F64(b) => b.len(),
            Store::D128(b) => b.len(),
            Store::D256(b) => b.len(),
            Store::Utf8(b) => b.len(),
            Store::Binary(b) => b.len(),
            Store::Date(b) => b.len(),
            Store::Time(b) => b.len(),
            Store::Ts(b) => b.len(),
            Store::Interval(b) => b.len(),
            Store::Fixed(b) => b.len(),
        }
    }

    /// Whether nothing was appended since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A column of any kind.
pub enum Column {
    Scalar(ScalarColumn),
    List(ListColumn),
}

impl Column {
    pub fn new(kind: Kind) -> Column {
        match kind {
            Kind::Scalar(s) => Column::Scalar(ScalarColumn::new(s)),
            Kind::List(s) => Column::List(ListColumn::new(s)),
        }
    }

    #[inline]
    pub fn push_null(&mut self) {
        match self {
            Column::Scalar(c) => c.push_null(),
            Column::List(c) => c.push_null(),
        }
    }

    pub fn push_nulls(&mut self, n: usize) {
        match self {
            Column::Scalar(c) => c.push_nulls(n),
            Column::List(c) => c.push_nulls(n),
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Scalar(c) => c.finish(),
            Column::List(c) => c.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Date32Type, Float32Type, Float64Type, Int16Type, Int64Type, Time64MicrosecondType, TimestampMicrosecondType,
    };
    use arrow_array::Array;

    fn words(scalar: Scalar, words: &[u64]) -> (ArrayRef, Vec<Result<(), PushError>>) {
        let mut column = ScalarColumn::new(scalar);
        let results = words.iter().map(|w| column.push(Stored::Word(*w))).collect();
        (column.finish(), results)
    }

    #[test]
    fn words_are_read_as_datum_get_reads_them() {
        let (a, _) = words(Scalar::Bool, &[1, 0, 0x100]);
        let a = a.as_boolean();
        assert_eq!((a.value(0), a.value(1), a.value(2)), (true, false, true), "DatumGetBool: any nonzero word");
        let (a, _) = words(Scalar::Int16, &[(-2i64) as u64]);
        assert_eq!(a.as_primitive::<Int16Type>().value(0), -2);
        let (a, _) = words(Scalar::Int64, &[i64::MIN as u64]);
        assert_eq!(a.as_primitive::<Int64Type>().value(0), i64::MIN);
        let (a, _) = words(Scalar::Oid, &[4_000_000_000]);
        assert_eq!(a.as_primitive::<arrow_array::types::UInt32Type>().value(0), 4_000_000_000);
        let (a, _) = words(Scalar::Float32, &[u64::from(1.5f32.to_bits())]);
        assert_eq!(a.as_primitive::<Float32Type>().value(0), 1.5);
        let (a, _) = words(Scalar::Float64, &[(-0.25f64).to_bits()]);
        assert_eq!(a.as_primitive::<Float64Type>().value(0), -0.25);
    }

    #[test]
    fn date_and_time_words_are_shifted_or_refused() {
        let (a, results) = words(Scalar::Date, &[0, i32::MAX as u32 as u64, (-1i32) as u32 as u64]);
        let a = a.as_primitive::<Date32Type>();
        assert_eq!((a.value(0), a.value(1), a.value(2)), (10_957, i32::MAX, 10_956));
        assert!(results.iter().all(Result::is_ok));

        let day = 86_400_000_000u64;
        let (a, results) = words(Scalar::Time, &[day - 1, day]);
        assert_eq!(a.as_primitive::<Time64MicrosecondType>().value(0), day as i64 - 1);
        assert!(a.is_null(1), "24:00:00 has no Time64 form");
        assert_eq!(results[1], Err(PushError::Unrepresentable(Scalar::Time)));

        let (a, results) = words(Scalar::TimestampTz, &[0, i64::MIN as u64, (i64::MAX - 1) as u64]);
        let a = a.as_primitive::<TimestampMicrosecondType>();
        assert_eq!((a.value(0), a.value(1)), (datetime::EPOCH_SHIFT_MICROS, -i64::MAX));
        assert!(a.is_null(2));
        assert_eq!(results[2], Err(PushError::Unrepresentable(Scalar::TimestampTz)));
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn a_word_for_a_by_reference_type_is_a_null_and_an_error() {
        let (a, results) = words(Scalar::Text, &[7]);
        assert!(a.is_null(0));
        assert!(matches!(results[0], Err(PushError::WrongValue { expected: Scalar::Text, .. })));
    }

    #[test]
    fn bytes_are_read_by_the_column_type() {
        let mut name = [0u8; 64];
        name[..5].copy_from_slice(b"users");
        let mut names = ScalarColumn::new(Scalar::Name);
        names.push(Stored::Bytes(&name)).unwrap();
        assert_eq!(names.finish().as_string::<i32>().value(0), "users", "NUL padding is cut");

        let mut texts = ScalarColumn::new(Scalar::Text);
        texts.push(Stored::Bytes("ünï".as_bytes())).unwrap();
        assert_eq!(texts.push(Stored::Bytes(&[0xff, 0xfe])), Err(PushError::Unrepresentable(Scalar::Text)));
        let texts = texts.finish();
        assert_eq!((texts.as_string::<i32>().value(0), texts.is_null(1)), ("ünï", true));

        let mut interval = Vec::new();
        interval.extend_from_slice(&90_000_000i64.to_le_bytes());
        interval.extend_from_slice(&3i32.to_le_bytes());
        interval.extend_from_slice(&14i32.to_le_bytes());
        let mut intervals = ScalarColumn::new(Scalar::Interval);
        intervals.push(Stored::Bytes(&interval)).unwrap();
        let value = intervals.finish().as_primitive::<arrow_array::types::IntervalMonthDayNanoType>().value(0);
        assert_eq!(value, IntervalMonthDayNano::new(14, 3, 90_000_000_000));

        let mut uuids = ScalarColumn::new(Scalar::Uuid);
        uuids.push(Stored::Bytes(&[7; 16])).unwrap();
        assert!(matches!(uuids.push(Stored::Bytes(&[7; 15])), Err(PushError::Malformed(_))));
        let uuids = uuids.finish();
        assert_eq!((uuids.as_fixed_size_binary().value(0), uuids.is_null(1)), (&[7u8; 16][..], true));
    }
}

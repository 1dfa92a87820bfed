//! Column builders: PostgreSQL values in, Arrow arrays out.
//!
//! A value is first converted (the step that can refuse it: a numeric NaN
//! in a decimal column, a timestamp beyond Arrow's range, bytes that are not
//! UTF-8), then appended. A refused value appends a null and returns an
//! error, so the caller can record its text in `_unmapped`; an array is
//! converted completely before any element is appended, so a refused
//! element never leaves a half-written list behind.

use crate::pgformat::{datetime, numeric, varlena, FormatError};
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

/// One PostgreSQL value, as the extension reads it out of a datum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Oid(u32),
    Float32(f32),
    Float64(f64),
    /// A numeric varlena's payload.
    Numeric(&'a [u8]),
    /// Text in the server encoding (UTF-8 for a faithful value).
    Text(&'a [u8]),
    Bytes(&'a [u8]),
    /// Days since 2000-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 2000-01-01 (UTC for timestamptz).
    Timestamp(i64),
    Interval {
        micros: i64,
        days: i32,
        months: i32,
    },
    /// 16 bytes.
    Uuid(&'a [u8]),
}

impl<'a> Value<'a> {
    /// Reads a value of `scalar` from its storage bytes: `typlen` bytes for
    /// fixed-size types (a by-value datum's little-endian bytes, or the
    /// memory it points to), or a whole plain varlena, header included.
    ///
    /// Types read through their output function (jsonb, enums, anything
    /// unmapped) cannot be read this way.
    pub fn from_storage(scalar: Scalar, bytes: &'a [u8]) -> Result<Value<'a>, FormatError> {
        fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], FormatError> {
            bytes.get(..N).and_then(|b| b.try_into().ok()).ok_or_else(|| {
                FormatError::new("fixed-size value", format!("{N} bytes needed, {} present", bytes.len()))
            })
        }
        Ok(match scalar {
            Scalar::Bool => Value::Bool(fixed::<1>(bytes)?[0] != 0),
            Scalar::Int16 => Value::Int16(i16::from_le_bytes(fixed(bytes)?)),
            Scalar::Int32 => Value::Int32(i32::from_le_bytes(fixed(bytes)?)),
            Scalar::Int64 => Value::Int64(i64::from_le_bytes(fixed(bytes)?)),
            Scalar::Oid => Value::Oid(u32::from_le_bytes(fixed(bytes)?)),
            Scalar::Float32 => Value::Float32(f32::from_le_bytes(fixed(bytes)?)),
            Scalar::Float64 => Value::Float64(f64::from_le_bytes(fixed(bytes)?)),
            Scalar::Decimal128 { .. } | Scalar::Decimal256 { .. } | Scalar::NumericText => {
                Value::Numeric(varlena::payload(bytes)?)
            }
            Scalar::Text | Scalar::Json => Value::Text(varlena::payload(bytes)?),
            Scalar::Bytea => Value::Bytes(varlena::payload(bytes)?),
            Scalar::Name => {
                let name = bytes.get(..64).unwrap_or(bytes);
                Value::Text(&name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())])
            }
            Scalar::Date => Value::Date(i32::from_le_bytes(fixed(bytes)?)),
            Scalar::Time => Value::Time(i64::from_le_bytes(fixed(bytes)?)),
            Scalar::Timestamp | Scalar::TimestampTz => Value::Timestamp(i64::from_le_bytes(fixed(bytes)?)),
            Scalar::Interval => {
                let (micros, days, months) = datetime::interval_fields(bytes)?;
                Value::Interval { micros, days, months }
            }
            Scalar::Uuid => Value::Uuid(bytes.get(..16).ok_or_else(|| FormatError::new("uuid", "16 bytes needed"))?),
            Scalar::Jsonb | Scalar::Enum | Scalar::Other => {
                return Err(FormatError::new("value", format!("{scalar:?} is read through its output function")))
            }
        })
    }

    /// The variable-length bytes of the value (a string's or binary's; a
    /// numeric's payload stands in for its text), for the byte bound on
    /// messages.
    pub fn variable_len(&self) -> usize {
        match self {
            Value::Numeric(b) | Value::Text(b) | Value::Bytes(b) => b.len(),
            _ => 0,
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
    pub fn push(&mut self, value: Value<'_>) -> Result<(), PushError> {
        match self.convert(value) {
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
        self.push_nulls(1);
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

    fn convert<'a>(&self, value: Value<'a>) -> Result<Cell<'a>, PushError> {
        let refused = || PushError::Unrepresentable(self.scalar);
        let cell = match (self.scalar, value) {
            (Scalar::Bool, Value::Bool(v)) => Cell::Bool(v),
            (Scalar::Int16, Value::Int16(v)) => Cell::I16(v),
            (Scalar::Int32, Value::Int32(v)) => Cell::I32(v),
            (Scalar::Int64, Value::Int64(v)) => Cell::I64(v),
            (Scalar::Oid, Value::Oid(v)) => Cell::U32(v),
            (Scalar::Float32, Value::Float32(v)) => Cell::F32(v),
            (Scalar::Float64, Value::Float64(v)) => Cell::F64(v),
            (Scalar::Decimal128 { precision, scale }, Value::Numeric(b)) => {
                Cell::D128(numeric::parse(b)?.to_decimal128(precision, scale).ok_or_else(refused)?)
            }
            (Scalar::Decimal256 { precision, scale }, Value::Numeric(b)) => {
                Cell::D256(numeric::parse(b)?.to_decimal256(precision, scale).ok_or_else(refused)?)
            }
            (Scalar::NumericText, Value::Numeric(b)) => {
                let mut text = String::new();
                numeric::parse(b)?.write_text(&mut text);
                Cell::Str(Cow::Owned(text))
            }
            (
                Scalar::Text | Scalar::Name | Scalar::Json | Scalar::Jsonb | Scalar::Enum | Scalar::Other,
                Value::Text(b),
            ) => Cell::Str(Cow::Borrowed(std::str::from_utf8(b).map_err(|_| refused())?)),
            (Scalar::Bytea, Value::Bytes(b)) => Cell::Bin(b),
            (Scalar::Date, Value::Date(d)) => Cell::I32(datetime::date(d).ok_or_else(refused)?),
            (Scalar::Time, Value::Time(t)) => Cell::I64(datetime::time(t).ok_or_else(refused)?),
            (Scalar::Timestamp | Scalar::TimestampTz, Value::Timestamp(t)) => {
                Cell::I64(datetime::timestamp(t).ok_or_else(refused)?)
            }
            (Scalar::Interval, Value::Interval { micros, days, months }) => {
                Cell::Interval(datetime::interval(micros, days, months).ok_or_else(refused)?)
            }
            (Scalar::Uuid, Value::Uuid(b)) if b.len() == 16 => Cell::Bin(b),
            (expected, got) => return Err(PushError::WrongValue { expected, got: variant_name(&got) }),
        };
        Ok(cell)
    }

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

fn variant_name(value: &Value<'_>) -> &'static str {
    match value {
        Value::Bool(_) => "bool",
        Value::Int16(_) => "int2",
        Value::Int32(_) => "int4",
        Value::Int64(_) => "int8",
        Value::Oid(_) => "oid",
        Value::Float32(_) => "float4",
        Value::Float64(_) => "float8",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytea",
        Value::Date(_) => "date",
        Value::Time(_) => "time",
        Value::Timestamp(_) => "timestamp",
        Value::Interval { .. } => "interval",
        Value::Uuid(_) => "uuid",
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
    pub fn push(&mut self, elements: &[Option<Value<'_>>]) -> Result<(), PushError> {
        let cells: Result<Vec<Option<Cell<'_>>>, PushError> =
            elements.iter().map(|e| e.map(|v| self.values.convert(v)).transpose()).collect();
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

    pub fn push_null(&mut self) {
        self.push_nulls(1);
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

//! The change batch of DESIGN §1: contract columns, the table's columns,
//! the old row image, and the TOAST and unmapped-value side columns.

use crate::column::{Column, PushError, Stored};
use crate::pgformat::datetime;
use crate::types::Kind;
use arrow_array::builder::{ListBuilder, MapBuilder, StringBuilder};
use arrow_array::types::Int8Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Int8Array, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use arrow_buffer::NullBufferBuilder;
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use pgcdc_reader::contract::{self, Op};
use std::collections::HashMap;
use std::sync::Arc;

/// One column of a table, as the catalogs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    /// The type as `format_type` prints it, e.g. `numeric(12,2)`.
    pub pg_type: String,
    pub kind: Kind,
    /// Part of the replica identity.
    pub key: bool,
}

/// A table at one version of its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub schema: String,
    pub table: String,
    pub relid: u32,
    /// Live columns in attribute order (dropped columns left out).
    pub columns: Vec<ColumnSpec>,
    /// What splits the table into key-hash partitions, as indexes into
    /// `columns`: the replica identity index, else the primary key (also
    /// under REPLICA IDENTITY FULL, so that an update of other columns
    /// never moves a row), else every column.
    pub partition_key: Vec<usize>,
}

/// The Arrow schema of a table's change batches.
#[derive(Debug)]
pub struct ChangeSchema {
    spec: TableSpec,
    include_before: bool,
    arrow: SchemaRef,
    fingerprint: u64,
}

impl ChangeSchema {
    pub fn new(spec: TableSpec, include_before: bool) -> ChangeSchema {
        let fingerprint = fingerprint(&spec, include_before);
        let table_fields: Vec<Field> = spec.columns.iter().map(table_field).collect();
        let mut fields = vec![
            Field::new(contract::OP, dictionary_type(), false),
            Field::new(contract::LSN, DataType::UInt64, false),
            Field::new(contract::COMMIT_LSN, DataType::UInt64, false),
            Field::new(contract::XID, DataType::UInt32, false),
            Field::new(contract::COMMIT_TS, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new(contract::SCHEMA, dictionary_type(), false),
            Field::new(contract::TABLE, dictionary_type(), false),
        ];
        fields.extend(table_fields.iter().cloned());
        if include_before {
            fields.push(Field::new(contract::BEFORE, DataType::Struct(Fields::from(table_fields)), true));
        }
        fields.push(Field::new(contract::UNCHANGED, unchanged_type(), true));
        fields.push(Field::new(contract::UNMAPPED, unmapped_type(), true));
        let metadata = HashMap::from([
            (contract::META_SCHEMA.to_owned(), spec.schema.clone()),
            (contract::META_TABLE.to_owned(), spec.table.clone()),
            (contract::META_RELID.to_owned(), spec.relid.to_string()),
            (contract::META_SCHEMA_FINGERPRINT.to_owned(), format!("{fingerprint:016x}")),
        ]);
        let arrow = Arc::new(Schema::new_with_metadata(fields, metadata));
        ChangeSchema { spec, include_before, arrow, fingerprint }
    }

    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    pub fn arrow(&self) -> &SchemaRef {
        &self.arrow
    }

    pub fn include_before(&self) -> bool {
        self.include_before
    }

    /// Equal for equal Arrow schemas, stable across sessions.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

fn table_field(column: &ColumnSpec) -> Field {
    let field = column.kind.field(&column.name);
    let mut metadata = field.metadata().clone();
    metadata.insert(contract::FIELD_PG_TYPE.to_owned(), column.pg_type.clone());
    if column.key {
        metadata.insert(contract::FIELD_PG_KEY.to_owned(), "true".to_owned());
    }
    field.with_metadata(metadata)
}

fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8))
}

fn unchanged_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn unmapped_type() -> DataType {
    let entries = DataType::Struct(Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, true),
    ]));
    DataType::Map(Arc::new(Field::new("entries", entries, false)), false)
}

/// FNV-1a over everything that shapes the Arrow schema: stable across
/// builds and platforms, unlike `std`'s hasher.
fn fingerprint(spec: &TableSpec, include_before: bool) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes.iter().chain([&0xff]) {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(spec.schema.as_bytes());
    feed(spec.table.as_bytes());
    feed(&spec.relid.to_le_bytes());
    feed(&[u8::from(include_before)]);
    for c in &spec.columns {
        feed(c.name.as_bytes());
        feed(c.pg_type.as_bytes());
        feed(format!("{:?}", c.kind).as_bytes());
        feed(&[u8::from(c.key)]);
    }
    hash
}

/// What every row carries besides the table's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMeta {
    pub op: Op,
    pub lsn: u64,
    pub commit_lsn: u64,
    pub xid: u32,
    /// Commit time in PostgreSQL's microseconds since 2000-01-01.
    pub commit_time: i64,
}

/// Which row image a value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// The table columns: the new row, or the old key/row of a delete.
    New,
    /// The `_before` struct.
    Old,
}

/// Accumulates the rows of one table (one schema version) into a batch.
pub struct ChangeBatchBuilder {
    schema: Arc<ChangeSchema>,
    ops: Vec<i8>,
    lsns: Vec<u64>,
    commit_lsns: Vec<u64>,
    xids: Vec<u32>,
    commit_times: Vec<i64>,
    columns: Vec<Column>,
    before: Option<Before>,
    unchanged: ListBuilder<StringBuilder>,
    unmapped: MapBuilder<StringBuilder, StringBuilder>,
    /// Rows since the last `_unchanged` / `_unmapped` value: these columns
    /// are null in nearly every row, so null runs are appended at once.
    unchanged_nulls: usize,
    unmapped_nulls: usize,
    /// Arrow bytes of the rows so far, estimated from value widths.
    bytes: usize,
    /// Fixed width of each table column.
    widths: Vec<usize>,
    /// Whether a table column's values add their bytes (strings, binary).
    variable: Vec<bool>,
    /// The highest `_commit_lsn` of the rows so far.
    max_commit_lsn: u64,
}

/// The `_before` struct's children and validity. Rows without an old image
/// (every insert) are counted and appended as one null run when the next
/// old image or the end of the batch comes.
struct Before {
    columns: Vec<Column>,
    validity: NullBufferBuilder,
    pending_nulls: usize,
}

impl Before {
    fn flush_nulls(&mut self) {
        if self.pending_nulls > 0 {
            self.columns.iter_mut().for_each(|c| c.push_nulls(self.pending_nulls));
            self.validity.append_n_nulls(self.pending_nulls);
            self.pending_nulls = 0;
        }
    }
}

/// Bytes each row costs besides its table columns: the contract columns,
/// the side columns' offsets and the validity bits.
const ROW_OVERHEAD: usize = 40;

impl ChangeBatchBuilder {
    pub fn new(schema: Arc<ChangeSchema>) -> ChangeBatchBuilder {
        let columns = || schema.spec.columns.iter().map(|c| Column::new(c.kind)).collect::<Vec<_>>();
        let before = schema.include_before.then(|| Before {
            columns: columns(),
            validity: NullBufferBuilder::new(0),
            pending_nulls: 0,
        });
        let widths = schema.spec.columns.iter().map(|c| c.kind.width()).collect();
        let variable = schema.spec.columns.iter().map(|c| c.kind.has_variable_width()).collect();
        ChangeBatchBuilder {
            columns: columns(),
            before,
            schema,
            ops: Vec::new(),
            lsns: Vec::new(),
            commit_lsns: Vec::new(),
            xids: Vec::new(),
            commit_times: Vec::new(),
            unchanged: ListBuilder::new(StringBuilder::new()),
            unmapped: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            unchanged_nulls: 0,
            unmapped_nulls: 0,
            bytes: 0,
            widths,
            variable,
            max_commit_lsn: 0,
        }
    }

    pub fn schema(&self) -> &Arc<ChangeSchema> {
        &self.schema
    }

    /// Rows since the last `finish`.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The highest `_commit_lsn` among the rows since the last `finish`.
    pub fn max_commit_lsn(&self) -> u64 {
        self.max_commit_lsn
    }

    /// The size of the batch's Arrow buffers so far, estimated closely from
    /// value widths and lengths: the byte bound on messages.
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Starts a row. Every column of [`Image::New`] must then get exactly
    /// one value; the old image gets one for every column or none at all.
    pub fn row(&mut self, meta: RowMeta) -> Row<'_> {
        self.ops.push(meta.op.dictionary_key());
        self.lsns.push(meta.lsn);
        self.commit_lsns.push(meta.commit_lsn);
        self.max_commit_lsn = self.max_commit_lsn.max(meta.commit_lsn);
        self.xids.push(meta.xid);
        self.commit_times.push(datetime::timestamp(meta.commit_time).unwrap_or(meta.commit_time));
        self.bytes += ROW_OVERHEAD;
        Row { batch: self, old_values: 0, unchanged: Vec::new(), unmapped: Vec::new() }
    }

    /// The batch of every row since the last `finish`; the builder is then
    /// empty and ready for the next batch of the same schema.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let rows = self.ops.len();
        let name_dictionary = |name: &str| -> ArrayRef {
            let keys = Int8Array::from(vec![0i8; rows]);
            Arc::new(DictionaryArray::<Int8Type>::new(keys, Arc::new(StringArray::from(vec![name]))))
        };
        let op_values: Vec<&str> = Op::ALL.iter().map(|op| op.code()).collect();
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(DictionaryArray::<Int8Type>::try_new(
                Int8Array::from(std::mem::take(&mut self.ops)),
                Arc::new(StringArray::from(op_values)),
            )?),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.lsns))),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.commit_lsns))),
            Arc::new(UInt32Array::from(std::mem::take(&mut self.xids))),
            Arc::new(TimestampMicrosecondArray::from(std::mem::take(&mut self.commit_times)).with_timezone("UTC")),
            name_dictionary(&self.schema.spec.schema),
            name_dictionary(&self.schema.spec.table),
        ];
        arrays.extend(self.columns.iter_mut().map(Column::finish));
        if let Some(before) = &mut self.before {
            before.flush_nulls();
            let DataType::Struct(fields) = self.schema.arrow.field_with_name(contract::BEFORE)?.data_type().clone()
            else {
                return Err(ArrowError::SchemaError("_before is not a struct".into()));
            };
            let children = before.columns.iter_mut().map(Column::finish).collect();
            arrays.push(Arc::new(StructArray::try_new(fields, children, before.validity.finish())?));
        }
        self.unchanged.append_nulls(std::mem::take(&mut self.unchanged_nulls));
        self.unmapped.append_nulls(std::mem::take(&mut self.unmapped_nulls))?;
        arrays.push(Arc::new(self.unchanged.finish()));
        arrays.push(Arc::new(self.unmapped.finish()));
        self.bytes = 0;
        self.max_commit_lsn = 0;
        RecordBatch::try_new(self.schema.arrow.clone(), arrays)
    }
}

/// One row being written; [`Row::finish`] completes it.
pub struct Row<'b> {
    batch: &'b mut ChangeBatchBuilder,
    old_values: usize,
    unchanged: Vec<(Image, usize)>,
    unmapped: Vec<(Image, usize, String)>,
}

impl Row<'_> {
    #[inline]
    fn column(&mut self, image: Image, index: usize) -> Option<&mut Column> {
        match image {
            Image::New => self.batch.columns.get_mut(index),
            Image::Old => {
                let before = self.batch.before.as_mut()?;
                if self.old_values == 0 {
                    before.flush_nulls();
                }
                self.old_values += 1;
                before.columns.get_mut(index)
            }
        }
    }

    /// Appends a scalar value; a refused value becomes a null (the caller
    /// then records its text with [`Row::unmapped`]).
    #[inline]
    pub fn value(&mut self, image: Image, index: usize, value: Stored<'_>) -> Result<(), PushError> {
        let variable = if self.batch.variable.get(index) == Some(&true) { value.byte_len() } else { 0 };
        self.batch.bytes += self.batch.widths.get(index).copied().unwrap_or(0) + variable;
        match self.column(image, index) {
            Some(Column::Scalar(c)) => c.push(value),
            Some(column @ Column::List(_)) => {
                column.push_null();
                Err(PushError::WrongValue { expected: crate::types::Scalar::Other, got: "scalar for a list column" })
            }
            None => Ok(()),
        }
    }

    /// Appends a one-dimensional array value.
    pub fn list(&mut self, image: Image, index: usize, elements: &[Option<Stored<'_>>]) -> Result<(), PushError> {
        let element_width = self.batch.schema.spec.columns.get(index).map_or(0, |c| c.kind.scalar().width());
        let variable = self.batch.variable.get(index) == Some(&true);
        let element_bytes = |e: &Option<Stored<'_>>| element_width + e.filter(|_| variable).map_or(0, |e| e.byte_len());
        self.batch.bytes += 4 + elements.iter().map(element_bytes).sum::<usize>();
        match self.column(image, index) {
            Some(Column::List(c)) => c.push(elements),
            Some(column @ Column::Scalar(_)) => {
                column.push_null();
                Err(PushError::WrongValue { expected: crate::types::Scalar::Other, got: "list for a scalar column" })
            }
            None => Ok(()),
        }
    }

    /// Appends a SQL NULL.
    #[inline]
    pub fn null(&mut self, image: Image, index: usize) {
        self.batch.bytes += self.batch.widths.get(index).copied().unwrap_or(0);
        if let Some(c) = self.column(image, index) {
            c.push_null();
        }
    }

    /// Appends a null for a TOASTed value WAL did not carry, and names the
    /// column in `_unchanged`.
    pub fn unchanged(&mut self, image: Image, index: usize) {
        self.null(image, index);
        self.unchanged.push((image, index));
    }

    /// Records the PostgreSQL text of a value its column refused (the
    /// column already holds a null for it).
    pub fn unmapped(&mut self, image: Image, index: usize, text: String) {
        self.batch.bytes += 8 + text.len();
        self.unmapped.push((image, index, text));
    }

    /// Completes the row. Without any old-image value, `_before` is null.
    pub fn finish(self) {
        let Row { batch, old_values, unchanged, unmapped } = self;
        if let Some(before) = &mut batch.before {
            if old_values == 0 {
                before.pending_nulls += 1;
                batch.bytes += batch.widths.iter().sum::<usize>();
            } else {
                before.validity.append_non_null();
            }
        }
        let names = &batch.schema.spec.columns;
        let name = |image: Image, index: usize| match image {
            Image::New => names[index].name.clone(),
            Image::Old => format!("{}{}", contract::BEFORE_PREFIX, names[index].name),
        };
        if unchanged.is_empty() {
            batch.unchanged_nulls += 1;
        } else {
            batch.unchanged.append_nulls(std::mem::take(&mut batch.unchanged_nulls));
            for (image, index) in unchanged {
                batch.unchanged.values().append_value(name(image, index));
            }
            batch.unchanged.append(true);
        }
        if unmapped.is_empty() {
            batch.unmapped_nulls += 1;
        } else {
            // Appending to a map whose keys and values match cannot fail.
            let _ = batch.unmapped.append_nulls(std::mem::take(&mut batch.unmapped_nulls));
            for (image, index, text) in unmapped {
                batch.unmapped.keys().append_value(name(image, index));
                batch.unmapped.values().append_value(text);
            }
            let _ = batch.unmapped.append(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc;
    use crate::pgformat::numeric::tests::long_form;
    use crate::types::Scalar;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Int32Type, TimestampMicrosecondType};
    use arrow_array::Array;

    fn spec() -> TableSpec {
        let col =
            |name: &str, pg_type: &str, kind, key| ColumnSpec { name: name.into(), pg_type: pg_type.into(), kind, key };
        TableSpec {
            schema: "Public Schema".into(),
            table: "orders.v2".into(),
            relid: 16_384,
            columns: vec![
                col("id", "integer", Kind::Scalar(Scalar::Int32), true),
                col("amount", "numeric(12,2)", Kind::Scalar(Scalar::Decimal128 { precision: 12, scale: 2 }), false),
                col("note", "text", Kind::Scalar(Scalar::Text), false),
                col("tags", "integer[]", Kind::List(Scalar::Int32), false),
            ],
            partition_key: vec![0],
        }
    }

    fn meta(op: Op, lsn: u64) -> RowMeta {
        RowMeta { op, lsn, commit_lsn: 1000, xid: 77, commit_time: 0 }
    }

    #[test]
    fn rows_round_trip_through_ipc_with_every_contract_column() {
        let schema = Arc::new(ChangeSchema::new(spec(), true));
        let mut b = ChangeBatchBuilder::new(schema.clone());
        let amount = long_form(false, 0, 2, &[12, 3400]); // 12.34
        let nan = 0xC000u16.to_le_bytes();

        let mut row = b.row(meta(Op::Insert, 10));
        row.value(Image::New, 0, Stored::Word(1)).unwrap();
        row.value(Image::New, 1, Stored::Bytes(&amount)).unwrap();
        row.value(Image::New, 2, Stored::Bytes("héllo".as_bytes())).unwrap();
        row.list(Image::New, 3, &[Some(Stored::Word(5)), None]).unwrap();
        row.finish();

        let mut row = b.row(meta(Op::Update, 20));
        row.value(Image::New, 0, Stored::Word(1)).unwrap();
        assert_eq!(
            row.value(Image::New, 1, Stored::Bytes(&nan)),
            Err(PushError::Unrepresentable(Scalar::Decimal128 { precision: 12, scale: 2 }))
        );
        row.unmapped(Image::New, 1, "NaN".into());
        row.unchanged(Image::New, 2);
        row.list(Image::New, 3, &[]).unwrap();
        row.value(Image::Old, 0, Stored::Word(1)).unwrap();
        row.value(Image::Old, 1, Stored::Bytes(&amount)).unwrap();
        row.null(Image::Old, 2);
        row.null(Image::Old, 3);
        row.finish();
        assert_eq!(b.len(), 2);
        assert_eq!(b.max_commit_lsn(), 1000);

        let batch = b.finish().unwrap();
        assert_eq!(b.max_commit_lsn(), 0);
        assert!(b.is_empty());
        let mut bytes = Vec::new();
        ipc::write_stream(&batch, &mut bytes).unwrap();
        let read = ipc::read_stream(&bytes).unwrap();
        assert_eq!(read.len(), 1);
        let batch = &read[0];
        assert_eq!(batch.num_rows(), 2);
        let meta = batch.schema().metadata().clone();
        assert_eq!(meta[contract::META_SCHEMA], "Public Schema");
        assert_eq!(meta[contract::META_TABLE], "orders.v2");
        assert_eq!(meta[contract::META_RELID], "16384");
        assert_eq!(meta[contract::META_SCHEMA_FINGERPRINT], format!("{:016x}", schema.fingerprint()));

        let ops = batch.column_by_name(contract::OP).unwrap().as_dictionary::<Int8Type>();
        let op_values = ops.values().as_string::<i32>();
        let op_codes: Vec<_> = ops.keys().values().iter().map(|k| op_values.value(*k as usize)).collect();
        assert_eq!(op_codes, ["c", "u"]);
        assert_eq!(
            batch.column_by_name(contract::LSN).unwrap().as_primitive::<arrow_array::types::UInt64Type>().values(),
            &[10, 20]
        );
        let ts = batch.column_by_name(contract::COMMIT_TS).unwrap().as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), datetime::EPOCH_SHIFT_MICROS);

        let amounts = batch.column_by_name("amount").unwrap().as_primitive::<Decimal128Type>();
        assert_eq!(amounts.value(0), 1234);
        assert!(amounts.is_null(1));
        let notes = batch.column_by_name("note").unwrap().as_string::<i32>();
        assert_eq!(notes.value(0), "héllo");
        assert!(notes.is_null(1));
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        let first = tags.value(0);
        let first = first.as_primitive::<Int32Type>();
        assert_eq!((first.len(), first.value(0), first.is_null(1)), (2, 5, true));
        assert_eq!(tags.value(1).len(), 0);
        assert!(!tags.is_null(1), "an empty array is not NULL");

        let before = batch.column_by_name(contract::BEFORE).unwrap().as_struct();
        assert!(before.is_null(0));
        assert!(before.is_valid(1));
        assert_eq!(before.column_by_name("amount").unwrap().as_primitive::<Decimal128Type>().value(1), 1234);

        let unchanged = batch.column_by_name(contract::UNCHANGED).unwrap().as_list::<i32>();
        assert!(unchanged.is_null(0));
        assert_eq!(unchanged.value(1).as_string::<i32>().value(0), "note");
        let unmapped = batch.column_by_name(contract::UNMAPPED).unwrap().as_map();
        assert!(unmapped.is_null(0));
        let entry = unmapped.value(1);
        assert_eq!(entry.column(0).as_string::<i32>().value(0), "amount");
        assert_eq!(entry.column(1).as_string::<i32>().value(0), "NaN");

        let field = batch.schema().field_with_name("amount").unwrap().clone();
        assert_eq!(field.metadata()[contract::FIELD_PG_TYPE], "numeric(12,2)");
        assert!(!field.metadata().contains_key(contract::FIELD_PG_KEY));
        assert_eq!(batch.schema().field_with_name("id").unwrap().metadata()[contract::FIELD_PG_KEY], "true");
    }

    #[test]
    fn without_before_the_column_is_absent_and_fingerprints_differ() {
        let with = ChangeSchema::new(spec(), true);
        let without = ChangeSchema::new(spec(), false);
        assert!(without.arrow().field_with_name(contract::BEFORE).is_err());
        assert_ne!(with.fingerprint(), without.fingerprint());
        let mut changed = spec();
        changed.columns[2].pg_type = "character varying(10)".into();
        assert_ne!(ChangeSchema::new(changed, true).fingerprint(), with.fingerprint());
        assert_eq!(ChangeSchema::new(spec(), true).fingerprint(), with.fingerprint());

        let mut b = ChangeBatchBuilder::new(Arc::new(without));
        let mut row = b.row(meta(Op::Truncate, 5));
        (0..4).for_each(|i| row.null(Image::New, i));
        row.value(Image::Old, 0, Stored::Word(3)).unwrap(); // ignored: no _before
        row.finish();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_columns(), 7 + 4 + 2);
        assert!(batch.column_by_name("id").unwrap().is_null(0));
    }

    #[test]
    fn null_runs_of_side_columns_land_on_the_right_rows() {
        let mut b = ChangeBatchBuilder::new(Arc::new(ChangeSchema::new(spec(), true)));
        let amount = long_form(false, 0, 2, &[1]);
        for (i, op) in [Op::Insert, Op::Insert, Op::Update, Op::Insert, Op::Update, Op::Insert].into_iter().enumerate()
        {
            let mut row = b.row(meta(op, i as u64));
            row.value(Image::New, 0, Stored::Word(i as i32 as u64)).unwrap();
            row.value(Image::New, 1, Stored::Bytes(&amount)).unwrap();
            if i == 2 {
                row.unchanged(Image::New, 2);
            } else {
                row.value(Image::New, 2, Stored::Bytes(b"t")).unwrap();
            }
            row.null(Image::New, 3);
            if op == Op::Update {
                row.value(Image::Old, 0, Stored::Word(-1i32 as u64)).unwrap();
                (1..4).for_each(|c| row.null(Image::Old, c));
            }
            if i == 4 {
                row.unmapped(Image::New, 3, "{{1}}".into());
            }
            row.finish();
        }
        let batch = b.finish().unwrap();
        let before = batch.column_by_name(contract::BEFORE).unwrap();
        assert_eq!((0..6).map(|i| before.is_valid(i)).collect::<Vec<_>>(), [false, false, true, false, true, false]);
        let unchanged = batch.column_by_name(contract::UNCHANGED).unwrap();
        assert_eq!(
            (0..6).map(|i| unchanged.is_valid(i)).collect::<Vec<_>>(),
            [false, false, true, false, false, false]
        );
        let unmapped = batch.column_by_name(contract::UNMAPPED).unwrap();
        assert_eq!((0..6).map(|i| unmapped.is_valid(i)).collect::<Vec<_>>(), [false, false, false, false, true, false]);
        assert_eq!(
            batch.column_by_name(contract::UNMAPPED).unwrap().as_map().value(4).column(1).as_string::<i32>().value(0),
            "{{1}}"
        );
    }

    #[test]
    fn a_refused_array_element_nulls_the_whole_list() {
        let mut columns = spec().columns;
        columns.truncate(1);
        columns.push(ColumnSpec {
            name: "prices".into(),
            pg_type: "numeric(5,2)[]".into(),
            kind: Kind::List(Scalar::Decimal128 { precision: 5, scale: 2 }),
            key: false,
        });
        let mut b = ChangeBatchBuilder::new(Arc::new(ChangeSchema::new(TableSpec { columns, ..spec() }, false)));
        let one = long_form(false, 0, 0, &[1]);
        let nan = 0xC000u16.to_le_bytes();
        let mut row = b.row(meta(Op::Insert, 1));
        row.value(Image::New, 0, Stored::Word(1)).unwrap();
        assert!(row.list(Image::New, 1, &[Some(Stored::Bytes(&one)), Some(Stored::Bytes(&nan))]).is_err());
        row.finish();
        let mut row = b.row(meta(Op::Insert, 2));
        row.value(Image::New, 0, Stored::Word(2)).unwrap();
        row.list(Image::New, 1, &[Some(Stored::Bytes(&one))]).unwrap();
        row.finish();
        let batch = b.finish().unwrap();
        let prices = batch.column(8).as_list::<i32>();
        assert!(prices.is_null(0));
        assert_eq!(prices.value(1).as_primitive::<Decimal128Type>().value(0), 100);
        assert_eq!(prices.value(1).len(), 1, "no element of the refused list leaked into the next");
    }
}

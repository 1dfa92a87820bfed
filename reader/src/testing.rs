//! Test support: rings in memory and frames of change rows, written the
//! way the worker writes them (positions in the header, IPC payload).

use crate::contract;
use crate::position::Position;
use crate::ring::layout::{Geometry, KIND_BATCH};
use crate::ring::{FrameMeta, Identity, Region, Ring, RingReader, RingWriter, Written};
use crate::ChangeReader;
use arrow_array::types::Int8Type;
use arrow_array::{ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use std::sync::Arc;

/// A ring in memory with the consumer `default` registered.
pub fn ring(capacity: u64) -> (RingWriter, Ring) {
    let geometry = Geometry::new(capacity);
    let ring =
        Ring::create(Region::heap(geometry.file_len()), geometry, &Identity::default(), &["default".into()]).unwrap();
    (RingWriter::new(ring.clone()), ring)
}

/// The consumer `default` of `ring`, as a change reader.
pub fn reader(ring: &Ring) -> ChangeReader {
    ChangeReader::new(RingReader::attach(ring.clone(), "default").unwrap())
}

/// A change batch of inserts: (commit LSN, LSN, id) per row.
pub fn batch(rows: &[(u64, u64, i64)]) -> RecordBatch {
    let ops: DictionaryArray<Int8Type> = rows.iter().map(|_| "c").collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        (contract::OP, Arc::new(ops)),
        (contract::LSN, Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1)))),
        (contract::COMMIT_LSN, Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0)))),
        (contract::TABLE, Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "t")))),
        ("id", Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2)))),
    ];
    RecordBatch::try_from_iter(columns).unwrap()
}

/// Writes `rows` (of one route, in order) as one frame whose first row has
/// index `first_index` in its transaction; `ends` when its last row is its
/// transaction's last. Returns the position of the last row.
pub fn write(writer: &RingWriter, rows: &[(u64, u64, i64)], first_index: u64, ends: bool) -> Written {
    let mut payload = Vec::new();
    let batch = batch(rows);
    let mut ipc = arrow_ipc::writer::StreamWriter::try_new(&mut payload, &batch.schema()).unwrap();
    ipc.write(&batch).unwrap();
    ipc.finish().unwrap();
    drop(ipc);
    let first = Position::new(rows[0].0, first_index);
    let mut last = first;
    for pair in rows.windows(2) {
        last = if pair[1].0 == pair[0].0 { last.next_in_transaction() } else { Position::new(pair[1].0, 1) };
    }
    let meta = FrameMeta { rows: rows.len() as u32, first, last, ends_transaction: ends };
    writer.try_write(KIND_BATCH, &payload, &meta).unwrap()
}

/// The ids of a batch.
pub fn ids(batch: &RecordBatch) -> Vec<i64> {
    use arrow_array::cast::AsArray;
    batch.column_by_name("id").unwrap().as_primitive::<arrow_array::types::Int64Type>().values().to_vec()
}

//! Framing: every message is one complete Arrow IPC stream (schema,
//! record batch, end-of-stream marker), readable by any Arrow
//! implementation's plain stream reader.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, Schema};
use std::io::Write;

/// Writes `batch` to `out` as one complete IPC stream. The body buffers go
/// from the batch's arrays straight to `out`, with no copy in between.
pub fn write_stream(batch: &RecordBatch, out: impl Write) -> Result<(), ArrowError> {
    let mut writer = StreamWriter::try_new(out, &batch.schema())?;
    writer.write(batch)?;
    writer.finish()
}

/// Appends an IPC stream of `schema` with no batches: what a reader needs
/// to know a route's columns before any change arrives.
pub fn write_schema_stream(schema: &Schema, out: &mut Vec<u8>) -> Result<(), ArrowError> {
    StreamWriter::try_new(out, schema)?.finish()
}

/// Reads every batch of one complete IPC stream.
pub fn read_stream(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    StreamReader::try_new(bytes, None)?.collect()
}

//! Reading what the `wal2arrow` plugin wrote.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use postgres::Client;
use std::io::{Cursor, Read};

/// One row of `pg_logical_slot_get_binary_changes`.
#[derive(Debug, Clone)]
pub struct Message {
    pub lsn: u64,
    pub xid: u32,
    pub data: Vec<u8>,
}

/// Parses PostgreSQL's `X/Y` LSN text.
pub fn parse_lsn(text: &str) -> u64 {
    let (high, low) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(high, 16).expect("hex") << 32) | u64::from_str_radix(low, 16).expect("hex")
}

/// Consumes a slot with `pg_logical_slot_get_binary_changes`. `options`
/// are the plugin's key/value options.
pub fn decode_messages(
    client: &mut Client,
    slot: &str,
    options: &[(&str, &str)],
) -> Result<Vec<Message>, postgres::Error> {
    let flat: Vec<&str> = options.iter().flat_map(|(k, v)| [*k, *v]).collect();
    let rows = client.query(
        "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, VARIADIC $2::text[])",
        &[&slot, &flat],
    )?;
    Ok(rows
        .iter()
        .map(|r| Message { lsn: parse_lsn(r.get(0)), xid: r.get::<_, String>(1).parse().expect("xid"), data: r.get(2) })
        .collect())
}

/// Decodes a slot and reads every message; each must hold exactly one
/// record batch.
pub fn decode_batches(client: &mut Client, slot: &str, options: &[(&str, &str)]) -> Vec<RecordBatch> {
    decode_messages(client, slot, options)
        .expect("decode the slot")
        .iter()
        .map(|m| {
            let mut batches = read_stream(&m.data);
            assert_eq!(batches.len(), 1, "one record batch per message");
            batches.remove(0)
        })
        .collect()
}

/// Reads one message: a complete Arrow IPC stream.
pub fn read_stream(message: &[u8]) -> Vec<RecordBatch> {
    let mut cursor = Cursor::new(message);
    let batches = read_one(&mut cursor);
    assert_eq!(cursor.position() as usize, message.len(), "bytes after the end-of-stream marker");
    batches
}

/// Reads a file of concatenated IPC streams, each followed by `separator`
/// (pg_recvlogical writes a newline after every message).
pub fn read_streams_with_separator(bytes: &[u8], separator: Option<u8>) -> Vec<Vec<RecordBatch>> {
    let mut cursor = Cursor::new(bytes);
    let mut streams = Vec::new();
    while (cursor.position() as usize) < bytes.len() {
        streams.push(read_one(&mut cursor));
        if let Some(separator) = separator {
            let mut byte = [0u8];
            cursor.read_exact(&mut byte).expect("separator after a stream");
            assert_eq!(byte[0], separator);
        }
    }
    streams
}

/// Calls `each` with every stream of a reader of concatenated IPC streams,
/// each followed by `separator`, without holding more than one in memory.
/// Returns the number of streams.
pub fn for_each_stream(mut reader: impl Read, separator: Option<u8>, mut each: impl FnMut(Vec<RecordBatch>)) -> usize {
    let mut streams = 0;
    loop {
        // A stream starts with the 0xFFFFFFFF continuation marker; a clean
        // end of input comes right before one.
        let mut marker = [0u8; 4];
        match reader.read(&mut marker[..1]).expect("read") {
            0 => return streams,
            _ => reader.read_exact(&mut marker[1..]).expect("a whole marker"),
        }
        let chained = Cursor::new(marker).chain(&mut reader);
        let batches = StreamReader::try_new(chained, None)
            .expect("an Arrow IPC stream")
            .collect::<Result<Vec<_>, _>>()
            .expect("valid record batches");
        each(batches);
        streams += 1;
        if let Some(separator) = separator {
            let mut byte = [0u8];
            reader.read_exact(&mut byte).expect("separator after a stream");
            assert_eq!(byte[0], separator);
        }
    }
}

fn read_one(cursor: &mut Cursor<&[u8]>) -> Vec<RecordBatch> {
    let reader = StreamReader::try_new(&mut *cursor, None).expect("an Arrow IPC stream");
    reader.collect::<Result<Vec<_>, _>>().expect("valid record batches")
}

//! The words of `pgcdc serve`'s Flight protocol, free of I/O: tickets,
//! acknowledgements and per-batch metadata as `key=value` lines (a
//! client in any language writes and reads them with a split), and change
//! batches as they go on the wire.
//!
//! On the wire, dictionary columns (`_op`, `_schema`, `_table`) are plain
//! strings, as DESIGN allows: every Flight client reads them without
//! dictionary bookkeeping across batches. A stream carries one schema; the
//! per-batch facts that schema metadata carries in a local reader (the
//! completion of a snapshot) travel in each batch's `app_metadata`.

use crate::contract;
use crate::position::Position;
use crate::snapshot::{completes_snapshot, META_SNAPSHOT_ID};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use std::collections::BTreeMap;
use std::sync::Arc;

/// `key=value` lines, one per key.
pub fn encode_fields(fields: &[(&str, String)]) -> Vec<u8> {
    fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n").into_bytes()
}

/// The keys and values of `key=value` lines; None if a line has no `=`.
pub fn decode_fields(bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_owned(), v.to_owned())))
        .collect()
}

/// What `do_get` reads: a route of a stream, as a consumer, after a
/// position (the one of the last row the client has; none: from what the
/// consumer acknowledged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub slot: String,
    pub route: String,
    pub consumer: String,
    pub after: Option<Position>,
}

impl Ticket {
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = vec![("slot", self.slot.clone()), ("route", self.route.clone())];
        fields.push(("consumer", self.consumer.clone()));
        if let Some(after) = self.after {
            fields.push(("after", after.to_string()));
        }
        encode_fields(&fields)
    }

    /// A ticket from its lines: `slot` and `route` required, `consumer`
    /// `default` unless given.
    pub fn decode(bytes: &[u8]) -> Result<Ticket, String> {
        let fields = decode_fields(bytes).ok_or("a ticket is key=value lines")?;
        let get = |k: &str| fields.get(k).cloned().ok_or(format!("the ticket has no {k}="));
        let after = match fields.get("after") {
            Some(p) => Some(p.parse::<Position>().map_err(|e| format!("after={p}: {e}"))?),
            None => None,
        };
        Ok(Ticket {
            slot: get("slot")?,
            route: get("route")?,
            consumer: fields.get("consumer").cloned().unwrap_or_else(|| "default".to_owned()),
            after,
        })
    }
}

/// An acknowledgement (`do_action("ack", …)`): the rows of the route that
/// the client's current `do_get` sent, up to the batch at `position` (its
/// `app_metadata`'s): exactly the rows the client has, never one it was
/// sent but did not get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub slot: String,
    pub route: String,
    pub consumer: String,
    pub position: Position,
}

impl Ack {
    pub fn decode(bytes: &[u8]) -> Result<Ack, String> {
        let ticket = Ticket::decode(bytes)?;
        let fields = decode_fields(bytes).unwrap_or_default();
        let text = fields.get("position").ok_or("the acknowledgement has no position=")?;
        let position = text.parse().map_err(|e| format!("position={text}: {e}"))?;
        Ok(Ack { slot: ticket.slot, route: ticket.route, consumer: ticket.consumer, position })
    }
}

/// The schema a batch has on the wire: dictionaries as their values, and
/// only the table's own metadata (what one batch says of itself goes in
/// [`batch_metadata`]).
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => f.as_ref().clone().with_data_type(value.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    let metadata: std::collections::HashMap<String, String> = schema
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with(crate::snapshot::META_SNAPSHOT))
        .filter(|(k, _)| k.as_str() != crate::snapshot::META_COMMIT_LSN)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// A batch as it goes on the wire, with [`wire_schema`].
pub fn wire_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = wire_schema(batch.schema_ref());
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| match c.data_type() {
            DataType::Dictionary(..) => arrow_cast::cast(c, f.data_type()),
            _ => Ok(c.clone()),
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new_with_options(
        schema,
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// What a batch says of itself, as its `app_metadata`: `commit_lsn` (what
/// to acknowledge once it is processed), `position` (of its last row: the
/// `after=` of a ticket that resumes past it) and, on the batch of no rows
/// that completes a table's snapshot, `snapshot=complete` and its
/// `snapshot_id`.
pub fn batch_metadata(batch: &RecordBatch, position: Position) -> Vec<u8> {
    let mut fields = Vec::new();
    if let Some(lsn) = crate::changes::max_commit_lsn(batch) {
        fields.push(("commit_lsn", lsn.to_string()));
    }
    fields.push(("position", position.to_string()));
    if completes_snapshot(batch) {
        fields.push(("snapshot", crate::snapshot::COMPLETE.to_owned()));
        if let Some(id) = batch.schema().metadata().get(META_SNAPSHOT_ID) {
            fields.push(("snapshot_id", id.clone()));
        }
    }
    encode_fields(&fields)
}

/// The fingerprint of a batch's table schema: a stream ends before the
/// first batch whose schema differs (the client asks again and gets the
/// new one).
pub fn fingerprint(batch: &RecordBatch) -> Option<String> {
    batch.schema().metadata().get(contract::META_SCHEMA_FINGERPRINT).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::batch;

    #[test]
    fn tickets_and_acknowledgements_read_back_as_written() {
        let ticket = Ticket {
            slot: "app".into(),
            route: "public.orders#1".into(),
            consumer: "etl".into(),
            after: Some(Position::new(0x1_0000_0020, 3)),
        };
        assert_eq!(
            String::from_utf8(ticket.encode()).unwrap(),
            "slot=app\nroute=public.orders#1\nconsumer=etl\nafter=1/20:3"
        );
        assert_eq!(Ticket::decode(&ticket.encode()).unwrap(), ticket);
        let plain = Ticket::decode(b"slot=app\nroute=public.a=b").unwrap();
        assert_eq!((plain.route.as_str(), plain.consumer.as_str(), plain.after), ("public.a=b", "default", None));
        assert_eq!(Ticket::decode(b"route=x").unwrap_err(), "the ticket has no slot=");
        assert!(Ticket::decode(b"slot=a\nroute=b\nafter=soon").unwrap_err().starts_with("after=soon"));
        let ack = Ack::decode(b"slot=app\nroute=public.orders\nposition=0/2A:7").unwrap();
        assert_eq!((ack.consumer.as_str(), ack.position), ("default", Position::new(42, 7)));
        assert_eq!(Ack::decode(b"slot=app\nroute=r").unwrap_err(), "the acknowledgement has no position=");
    }

    #[test]
    fn batches_go_on_the_wire_with_plain_strings_and_say_what_to_acknowledge() {
        let batch = batch(&[(7, 5, 1), (9, 8, 2)]);
        let wire = wire_batch(&batch).unwrap();
        assert_eq!(wire.schema().field_with_name("_op").unwrap().data_type(), &DataType::Utf8);
        assert_eq!(wire.num_rows(), 2);
        let metadata = decode_fields(&batch_metadata(&batch, Position::new(9, 1))).unwrap();
        assert_eq!(metadata.get("commit_lsn").map(String::as_str), Some("9"));
        assert_eq!(metadata.get("position").map(String::as_str), Some("0/9:1"));
        assert!(!metadata.contains_key("snapshot"));
    }
}

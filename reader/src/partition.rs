//! Reshuffling change batches by a hash of any columns, so that parallel
//! consumers each get every change of their keys, in order.

use arrow_array::{RecordBatch, UInt32Array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::ArrowError;

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

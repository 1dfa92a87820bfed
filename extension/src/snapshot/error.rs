//! Errors of snapshots: the reasons a table's snapshot fails, as
//! `pgcdc.snapshots` records them and `cdc_snapshots()` shows them.

use pgcdc_reader::ring::RingError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "table {0} has no primary key and no replica identity index, so its rows cannot be matched with the \
         changes made while they are read; add a primary key (or ALTER TABLE {0} REPLICA IDENTITY USING INDEX \
         <a unique index on NOT NULL columns>), then run cdc_snapshot again"
    )]
    NoKey(String),
    #[error("the table with OID {0} no longer exists")]
    TableGone(u32),
    #[error("reading a chunk of {table}: {why}")]
    Read { table: String, why: String },
    #[error("writing a chunk of {table}: {why}")]
    Write { table: String, why: String },
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Spi(#[from] pgrx::spi::Error),
}

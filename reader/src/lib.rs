// The front page's example uses `client`; without it, a plain summary.
#![cfg_attr(feature = "client", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "client"),
    doc = "Read PostgreSQL changes as Arrow RecordBatches from pgcdc's shared-memory rings."
)]

pub mod changes;
#[cfg(feature = "client")]
pub mod client;
pub mod contract;
#[cfg(feature = "flight")]
pub mod flight;
pub mod merge;
pub mod partition;
pub mod pattern;
pub mod position;
pub mod ring;
pub mod snapshot;
pub mod status;
#[cfg(feature = "async")]
pub mod stream;
#[cfg(test)]
mod testing;

pub use changes::{ChangeReader, ReadError};
pub use merge::{merge_streams, MergedReader};
pub use partition::HashPartitioner;
pub use position::Position;

#![doc = include_str!("../README.md")]

pub mod changes;
#[cfg(feature = "client")]
pub mod client;
pub mod contract;
pub mod merge;
pub mod partition;
pub mod pattern;
pub mod ring;
#[cfg(feature = "async")]
pub mod stream;

pub use changes::{ChangeReader, ReadError};
pub use merge::{merge_streams, MergedReader};
pub use partition::HashPartitioner;

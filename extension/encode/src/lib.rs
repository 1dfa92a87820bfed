//! PostgreSQL changes to Arrow change batches, with no PostgreSQL in sight.
//!
//! The `pgcdc` extension reads datums out of decoded tuples and hands them
//! to this crate as plain bytes and numbers; this crate decides the Arrow
//! type of every column ([`types`]), converts values exactly
//! ([`pgformat`]), builds the change batch of DESIGN §1 ([`batch`]) and
//! frames it as an Arrow IPC stream ([`ipc`]). Everything here is tested
//! with `cargo test`, without a server.

pub mod batch;
pub mod column;
pub mod ipc;
pub mod options;
pub mod pgformat;
pub mod types;

//! Test harness: private PostgreSQL clusters and slot readers.
//!
//! Every [`Cluster`] is a fresh `initdb` in its own temporary directory,
//! listening only on a Unix socket there, with `wal_level = logical`. As
//! root, the server runs as the unprivileged `postgres` OS user (PostgreSQL
//! refuses root). The server binaries come from `$PG_CONFIG --bindir`
//! (default: Debian's PostgreSQL 15); the pgcdc extension must be installed
//! there (`make install`).

pub mod check;
mod cluster;
mod decode;

pub use cluster::{Cluster, Settings};
pub use decode::{decode_batches, decode_messages, parse_lsn, read_stream, read_streams_with_separator, Message};

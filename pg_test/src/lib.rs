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
pub mod e2e;
pub mod replica;
pub mod values;

pub use cluster::{bindir, has_output_plugin_libraries, Cluster, Settings, PORT};
pub use decode::{
    decode_batches, decode_messages, for_each_stream, parse_lsn, read_stream, read_streams_with_separator, Message,
};

/// Creates a logical slot that uses the `wal2arrow` plugin.
pub fn create_slot(client: &mut postgres::Client, name: &str) {
    client
        .query("SELECT pg_create_logical_replication_slot($1, 'wal2arrow')", &[&name])
        .unwrap_or_else(|e| panic!("create slot {name}: {e}"));
}

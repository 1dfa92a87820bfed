//! The change batch contract: the names every consumer of pgcdc relies on.
//!
//! Each Arrow record batch that pgcdc produces holds the changes of exactly
//! one table, in commit order, with these leading columns, then the table's
//! own columns, then the trailing columns. The extension builds batches from
//! these constants and readers interpret them through the same constants, so
//! the two cannot drift apart.
//!
//! | column | Arrow type | meaning |
//! |---|---|---|
//! | [`OP`] | Dictionary(Int8, Utf8) | [`Op`]: `c` insert, `u` update, `d` delete, `r` snapshot read, `t` truncate |
//! | [`LSN`] | UInt64 | LSN of this change |
//! | [`COMMIT_LSN`] | UInt64 | end LSN of its transaction's commit record: the position to acknowledge |
//! | [`XID`] | UInt32 | transaction id |
//! | [`COMMIT_TS`] | Timestamp(µs, "UTC") | commit time |
//! | [`SCHEMA`], [`TABLE`] | Dictionary(Int8, Utf8) | source table |
//! | *table columns* | mapped type | new row for `c`/`u`/`r`; old key (or full old row) for `d`; null for `t` |
//! | [`BEFORE`] | Struct of the table columns | old row for `u`/`d` where WAL has it; absent with `include_before=false` |
//! | [`UNCHANGED`] | List(Utf8) | TOASTed columns WAL did not carry (their value column is null) |
//! | [`UNMAPPED`] | Map(Utf8, Utf8) | values the typed column cannot hold faithfully, as PostgreSQL text (their value column is null) |
//!
//! `_commit_lsn` is the *end* of the commit record (what PostgreSQL's
//! `pg_logical_slot_get_changes` reports for a commit, and what a subscriber
//! reports as flushed): acknowledging it tells the slot the whole transaction
//! is safe, so it is not sent again.

/// Operation column.
pub const OP: &str = "_op";
/// LSN of the change.
pub const LSN: &str = "_lsn";
/// End LSN of the transaction's commit record; the unit of acknowledgement.
pub const COMMIT_LSN: &str = "_commit_lsn";
/// Transaction id.
pub const XID: &str = "_xid";
/// Commit timestamp.
pub const COMMIT_TS: &str = "_commit_ts";
/// Source schema name.
pub const SCHEMA: &str = "_schema";
/// Source table name.
pub const TABLE: &str = "_table";
/// Old row image.
pub const BEFORE: &str = "_before";
/// Names of TOASTed columns whose value WAL did not carry.
pub const UNCHANGED: &str = "_unchanged";
/// Column name → PostgreSQL text for values the typed column cannot hold.
///
/// Keys name a table column; a key `_before.<column>` names a value of the
/// old row image.
pub const UNMAPPED: &str = "_unmapped";
/// Prefix of [`UNMAPPED`] and [`UNCHANGED`] entries that describe the old row.
pub const BEFORE_PREFIX: &str = "_before.";

/// Schema metadata: source schema name.
pub const META_SCHEMA: &str = "pgcdc.schema";
/// Schema metadata: source table name.
pub const META_TABLE: &str = "pgcdc.table";
/// Schema metadata: the table's OID.
pub const META_RELID: &str = "pgcdc.relid";
/// Schema metadata: 16 hex digits identifying the column list (names, types,
/// key flags). Equal fingerprints mean equal Arrow schemas; any DDL that
/// changes the table's columns changes it. Stable across sessions and
/// servers, so consumers may cache per fingerprint.
pub const META_SCHEMA_FINGERPRINT: &str = "pgcdc.schema_fingerprint";
/// Field metadata: the PostgreSQL type with its modifier, e.g. `numeric(12,2)`.
pub const FIELD_PG_TYPE: &str = "pg.type";
/// Field metadata: `"true"` on replica identity columns.
pub const FIELD_PG_KEY: &str = "pg.key";

/// The operation of one change row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: insert.
    Insert,
    /// `u`: update.
    Update,
    /// `d`: delete.
    Delete,
    /// `r`: row read by a snapshot.
    Read,
    /// `t`: truncate (one row per truncated table, table columns null).
    Truncate,
}

impl Op {
    /// Every operation, in the order of the `_op` dictionary.
    pub const ALL: [Op; 5] = [Op::Insert, Op::Update, Op::Delete, Op::Read, Op::Truncate];

    /// The one-letter code of the `_op` column.
    pub const fn code(self) -> &'static str {
        match self {
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }

    /// The key of this operation in the `_op` dictionary.
    pub const fn dictionary_key(self) -> i8 {
        self as i8
    }

    /// Parses a one-letter code.
    pub fn from_code(code: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_round_trip_and_keys_index_all() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(op.dictionary_key() as usize, i);
        }
        assert_eq!(Op::from_code("x"), None);
        assert_eq!(Op::Update.code(), "u");
    }
}

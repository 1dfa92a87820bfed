//! Where a row stands in its route: the commit LSN of its transaction and
//! its place among that transaction's rows in the route.
//!
//! `_lsn` alone cannot name a row: every row of one multi-insert record
//! (COPY) shares the record's LSN, and so do the rows of one multi-table
//! TRUNCATE. A transaction's rows reach a route in the same order every
//! time it is decoded, and decoding always restarts at a transaction
//! boundary, so (commit LSN, index) names one row, and names it again
//! when the worker re-sends it after a restart. The worker writes each
//! frame's first and last position into the frame header; a reader
//! numbers the rows in between.

use std::fmt;
use std::str::FromStr;

/// A row's position in its route: index 1 is the first row of the
/// transaction in this route. Positions order rows as the route carries
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// End LSN of the transaction's commit record (`_commit_lsn`).
    pub commit_lsn: u64,
    /// 1-based index among the transaction's rows in this route; 0 is
    /// "before its first row", `u64::MAX` "after its last".
    pub index: u64,
}

impl Position {
    /// Before every row.
    pub const START: Position = Position { commit_lsn: 0, index: 0 };

    pub const fn new(commit_lsn: u64, index: u64) -> Position {
        Position { commit_lsn, index }
    }

    /// After every row of the transaction that committed at `commit_lsn`.
    pub const fn end_of(commit_lsn: u64) -> Position {
        Position { commit_lsn, index: u64::MAX }
    }

    /// The position of the row that follows this one in the same
    /// transaction.
    pub fn next_in_transaction(self) -> Position {
        Position { commit_lsn: self.commit_lsn, index: self.index.saturating_add(1) }
    }
}

/// `0/16B3F28:5`: the commit LSN as PostgreSQL prints LSNs, and the index
/// (`end` for [`Position::end_of`]); [`FromStr`] reads it back, so an
/// application may store it as text.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lsn = self.commit_lsn;
        write!(f, "{:X}/{:X}:", lsn >> 32, lsn & 0xffff_ffff)?;
        if self.index == u64::MAX {
            write!(f, "end")
        } else {
            write!(f, "{}", self.index)
        }
    }
}

/// A position that is not `HIGH/LOW:INDEX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a position (expected commit LSN and index, like 0/16B3F28:5)")]
pub struct PositionError(String);

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Position, PositionError> {
        let bad = || PositionError(text.to_owned());
        let (lsn, index) = text.rsplit_once(':').ok_or_else(bad)?;
        let (high, low) = lsn.split_once('/').ok_or_else(bad)?;
        let high = u64::from_str_radix(high, 16).ok().filter(|h| *h <= u64::from(u32::MAX)).ok_or_else(bad)?;
        let low = u64::from_str_radix(low, 16).ok().filter(|l| *l <= u64::from(u32::MAX)).ok_or_else(bad)?;
        let index = if index == "end" { u64::MAX } else { index.parse().map_err(|_| bad())? };
        Ok(Position { commit_lsn: (high << 32) | low, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_rows_and_round_trip_as_text() {
        let a = Position::new(0x1_0000_0010, 3);
        assert!(
            Position::START < a
                && a < a.next_in_transaction()
                && a.next_in_transaction() < Position::end_of(a.commit_lsn)
        );
        assert!(Position::end_of(a.commit_lsn) < Position::new(a.commit_lsn + 1, 1));
        for p in [a, Position::START, Position::end_of(0xdead_beef_0000_0001)] {
            assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        }
        assert_eq!(a.to_string(), "1/10:3");
        assert_eq!(Position::end_of(0x28).to_string(), "0/28:end");
        for bad in ["", "1/10", "1:3", "x/10:3", "1/10:x", "100000000/0:1"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}

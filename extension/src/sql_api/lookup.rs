//! Single-value catalog lookups where "no row" is an answer, not an error.
//!
//! pgrx's `Spi::get_one` treats an empty result as an error, and runs as an
//! update: it assigns a transaction id, after which PostgreSQL refuses to
//! create a logical slot in the transaction. These lookups only read.

use super::error::SqlError;
use pgrx::datum::DatumWithOid;
use pgrx::spi::Spi;
use pgrx::{FromDatum, IntoDatum};

/// The first column of the first row, or None when there is no row.
pub fn optional<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Result<Option<T>, SqlError> {
    Spi::connect(|client| {
        let table = client.select(sql, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        Ok(table.first().get_one::<T>()?)
    })
}

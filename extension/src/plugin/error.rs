//! The one place where plugin errors become PostgreSQL errors.

use arrow_schema::ArrowError;
use pgcdc_encode::options::OptionError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("wal2arrow could not encode a batch of {table}: {source}")]
    Encode { table: String, source: ArrowError },
}

impl PluginError {
    /// Raises this error as a PostgreSQL ERROR (never returns).
    pub fn report(self) -> ! {
        let (code, hint) = match &self {
            PluginError::Option(e) => (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e.hint()),
            PluginError::Encode { .. } => (
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "This is a bug in pgcdc; please report it with the table's definition.".into(),
            ),
        };
        ErrorReport::new(code, self.to_string(), "wal2arrow").set_hint(hint).report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// Unwraps a result, raising its error as a PostgreSQL ERROR.
pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T, E: Into<PluginError>> OrReport<T> for Result<T, E> {
    fn or_report(self) -> T {
        self.unwrap_or_else(|e| e.into().report())
    }
}

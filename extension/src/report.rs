//! The one boundary where Rust errors become PostgreSQL errors: each
//! module's error enum says its SQLSTATE and hint, and `or_report` raises it.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// An error PostgreSQL can report.
pub trait Report: std::fmt::Display {
    fn sqlstate(&self) -> PgSqlErrorCode;
    /// What the user can do about it.
    fn hint(&self) -> Option<String>;
}

/// Raises `error` as a PostgreSQL ERROR (never returns).
pub fn raise(error: &impl Report) -> ! {
    let mut report = ErrorReport::new(error.sqlstate(), error.to_string(), "pgcdc");
    if let Some(hint) = error.hint() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Unwraps a result, raising its error as a PostgreSQL ERROR.
pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T, E: Report> OrReport<T> for Result<T, E> {
    fn or_report(self) -> T {
        self.unwrap_or_else(|e| raise(&e))
    }
}

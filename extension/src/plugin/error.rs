//! Errors of the output plugin.

use crate::report::Report;
use arrow_schema::ArrowError;
use pgcdc_encode::options::OptionError;
use pgrx::PgSqlErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("wal2arrow could not encode a batch of {table}: {source}")]
    Encode { table: String, source: ArrowError },
}

impl Report for PluginError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            PluginError::Option(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            PluginError::Encode { .. } => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(match self {
            PluginError::Option(e) => e.hint(),
            PluginError::Encode { .. } => {
                "This is a bug in pgcdc; please report it with the table's definition.".into()
            }
        })
    }
}

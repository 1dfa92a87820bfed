//! Errors of the `cdc_*` functions.

use crate::report::Report;
use pgcdc_reader::pattern::PatternError;
use pgrx::PgSqlErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The whole report of every configuration problem (DESIGN §3).
    #[error("{0}")]
    NotConfigured(String),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("{}", no_match_message(.patterns))]
    NoMatch { patterns: Vec<String>, nearest: Vec<String> },
    #[error("every table the patterns match is excluded")]
    AllExcluded,
    #[error("replication slot \"{slot}\" exists with output plugin \"{plugin}\", not wal2arrow")]
    SlotPlugin { slot: String, plugin: String },
    #[error("replication slot \"{slot}\" belongs to database \"{database}\"")]
    SlotElsewhere { slot: String, database: String },
    #[error("role \"{0}\" does not exist")]
    NoSuchRole(String),
    #[error("table \"{0}\".\"{1}\" does not exist")]
    NoSuchTable(String, String),
    #[error("no pgcdc stream uses replication slot \"{0}\"")]
    NoSuchStream(String),
    #[error("partitions must be from 1 to 64, not {0}")]
    Partitions(i32),
    #[error("the worker of stream \"{0}\" did not stop")]
    WorkerDidNotStop(String),
    #[error("stream \"{slot}\" has {setting} = {was}; it cannot change to {asked}")]
    Reshape { slot: String, setting: String, was: String, asked: String },
    #[error("consumer name \"{0}\" must be 1 to 64 bytes")]
    ConsumerName(String),
    #[error("stream \"{slot}\" has no consumer \"{name}\"")]
    NoSuchConsumer { slot: String, name: String },
    #[error("pgcdc rings: {0}")]
    Ring(#[from] pgcdc_reader::ring::RingError),
    #[error("replication slot \"{0}\" exists and is not a pgcdc stream")]
    ForeignSlot(String),
    #[error("publication \"{0}\" exists and is not this stream's")]
    ForeignPublication(String),
    #[error("the current role does not own {}", .0.join(", "))]
    NotOwner(Vec<String>),
    #[error("the current role may not write pgcdc's catalog (the pgcdc schema's tables)")]
    NoCatalogAccess,
    #[error("{} in stream \"{slot}\"", no_match_message(.patterns))]
    NotInStream { slot: String, patterns: Vec<String>, nearest: Vec<String> },
    #[error("snapshot must be 'initial' or 'never', not '{0}'")]
    SnapshotMode(String),
    #[error("failover slots need PostgreSQL 17 or later; this server runs {0}")]
    FailoverUnsupported(String),
    #[error("replication slot \"{0}\" exists and is {1}a failover slot")]
    FailoverMismatch(String, &'static str),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Spi(#[from] pgrx::spi::Error),
}

fn no_match_message(patterns: &[String]) -> String {
    match patterns {
        [one] => format!("table pattern \"{one}\" matches no table"),
        many => format!(
            "table patterns {} match no table",
            many.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Report for SqlError {
    fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            SqlError::NotConfigured(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SqlError::Pattern(_) | SqlError::Partitions(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            SqlError::NoMatch { .. } | SqlError::AllExcluded | SqlError::NoSuchTable(..) => ERRCODE_UNDEFINED_TABLE,
            SqlError::SlotPlugin { .. } | SqlError::SlotElsewhere { .. } => ERRCODE_DUPLICATE_OBJECT,
            SqlError::NoSuchRole(_) | SqlError::NoSuchStream(_) => ERRCODE_UNDEFINED_OBJECT,
            SqlError::WorkerDidNotStop(_) => ERRCODE_OBJECT_IN_USE,
            SqlError::Reshape { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            SqlError::ConsumerName(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            SqlError::NoSuchConsumer { .. } => ERRCODE_UNDEFINED_OBJECT,
            SqlError::Ring(_) => ERRCODE_IO_ERROR,
            SqlError::ForeignSlot(_) | SqlError::ForeignPublication(_) => ERRCODE_DUPLICATE_OBJECT,
            SqlError::NotOwner(_) | SqlError::NoCatalogAccess => ERRCODE_INSUFFICIENT_PRIVILEGE,
            SqlError::NotInStream { .. } => ERRCODE_UNDEFINED_TABLE,
            SqlError::SnapshotMode(_) => ERRCODE_INVALID_PARAMETER_VALUE,
            SqlError::FailoverUnsupported(_) => ERRCODE_FEATURE_NOT_SUPPORTED,
            SqlError::FailoverMismatch(..) => ERRCODE_FEATURE_NOT_SUPPORTED,
            SqlError::Snapshot(_) => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SqlError::Spi(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SqlError::NotConfigured(_) | SqlError::Spi(_) | SqlError::Snapshot(_) => None,
            SqlError::NotInStream { nearest, .. } if !nearest.is_empty() => {
                Some(format!("Did you mean {}? cdc_routes() lists the stream's tables.", nearest.join(" or ")))
            }
            SqlError::NotInStream { .. } => {
                Some("cdc_routes() lists the stream's tables; add a table with cdc_auto_configure first.".into())
            }
            SqlError::SnapshotMode(_) => Some(
                "'initial' delivers each table's existing rows before its changes; 'never' only the changes from now on."
                    .into(),
            ),
            SqlError::FailoverUnsupported(_) => Some(
                "Leave failover false: a standby then has no copy of the slot, and a stream configured again after a failover starts with a snapshot."
                    .into(),
            ),
            SqlError::FailoverMismatch(slot, _) => Some(format!(
                "A slot's failover property is fixed when it is made (PostgreSQL offers no SQL to change it): drop the stream with SELECT cdc_drop('{slot}') and configure it again, or ask as it was made."
            )),
            SqlError::Partitions(_) => Some("Each partition is a ring that one consumer reads in parallel with the others.".into()),
            SqlError::WorkerDidNotStop(_) => Some("See pg_stat_activity for the worker, and try again.".into()),
            SqlError::Reshape { slot, .. } => Some(format!(
                "A stream's rings are made for its routing. Drop it first with SELECT cdc_drop('{slot}'), or choose another slot_name."
            )),
            SqlError::ConsumerName(_) => Some("Consumer names are stored in the rings, in 64 bytes.".into()),
            SqlError::NoSuchConsumer { slot, .. } => {
                Some(format!("See SELECT consumer_name FROM pgcdc.consumers WHERE slot_name = '{slot}'."))
            }
            SqlError::Ring(_) => Some("Check pgcdc.ring_directory: it must be writable by the server's OS user.".into()),
            SqlError::ForeignSlot(slot) => Some(format!(
                "Choose another slot_name, or, if nothing uses the slot, drop it with pg_drop_replication_slot('{slot}')."
            )),
            SqlError::ForeignPublication(_) => {
                Some("Choose another publication_name (by default the slot's name): pgcdc sets a publication's table list.".into())
            }
            SqlError::NotOwner(_) => Some(
                "Publishing a table takes its owner (or a member of the owning role): run cdc_auto_configure as that role, or exclude the table.".into(),
            ),
            SqlError::NoCatalogAccess => Some(
                "As a superuser: GRANT USAGE ON SCHEMA pgcdc TO <role>; GRANT INSERT, UPDATE, DELETE, SELECT ON ALL TABLES IN SCHEMA pgcdc TO <role>;".into(),
            ),
            SqlError::Pattern(_) => Some(
                "Patterns are schema.table regular expressions: * alone means any name, \\. any character, and \"Quoted\" parts are exact names."
                    .into(),
            ),
            SqlError::NoMatch { nearest, .. } if !nearest.is_empty() => Some(format!("Did you mean {}?", nearest.join(" or "))),
            SqlError::NoMatch { .. } => Some("This database has no tables to capture yet.".into()),
            SqlError::AllExcluded => Some("Check the exclude list.".into()),
            SqlError::SlotPlugin { slot, .. } => {
                Some(format!("Choose another slot_name, or drop the slot with pg_drop_replication_slot('{slot}')."))
            }
            SqlError::SlotElsewhere { .. } => Some("Slot names are shared by all databases: choose another slot_name.".into()),
            SqlError::NoSuchRole(_) => Some("Create the role first, or leave grant_to NULL.".into()),
            SqlError::NoSuchTable(..) => Some("See cdc_discover_tables().".into()),
            SqlError::NoSuchStream(_) => Some("See SELECT slot_name FROM pgcdc.streams.".into()),
        }
    }
}

//! With `shared_preload_libraries = 'pgcdc'`: at server start, the launcher
//! finds every database with pgcdc installed and starts the worker of each
//! registered stream there.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::Duration;

/// The database the launcher connects to in order to list the others.
const LAUNCHER_DATABASE: &str = "postgres";

/// Registers the launcher when the library is preloaded.
pub fn init() {
    // SAFETY: reading a flag PostgreSQL sets while loading libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("pgcdc launcher")
        .set_type("pgcdc launcher")
        .set_library("pgcdc")
        .set_function("pgcdc_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgcdc_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(LAUNCHER_DATABASE), None);
    let databases: Vec<String> = BackgroundWorker::transaction(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
                None,
                &[],
            )?;
            rows.map(|row| row.get::<String>(1).map(Option::unwrap_or_default)).collect::<Result<Vec<_>, _>>()
        })
    })
    .unwrap_or_else(|e: pgrx::spi::Error| pgrx::error!("pgcdc launcher: listing databases: {e}"));
    for database in databases {
        let started = BackgroundWorkerBuilder::new(&format!("pgcdc scanner {database}"))
            .set_type("pgcdc scanner")
            .set_library("pgcdc")
            .set_function("pgcdc_scanner_main")
            .set_extra(&database)
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            .load_dynamic();
        if started.is_err() {
            pgrx::warning!(
                "pgcdc launcher: no worker slot to scan database \"{database}\"; raise max_worker_processes"
            );
        }
    }
}

/// Starts the workers of the streams registered in one database.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgcdc_scanner_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let database = BackgroundWorker::get_extra().to_owned();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let slots: Vec<String> = BackgroundWorker::transaction(|| {
        Spi::connect(|client| {
            if client.select("SELECT 1 FROM pg_extension WHERE extname = 'pgcdc'", None, &[])?.is_empty() {
                return Ok(Vec::new());
            }
            let rows = client.select("SELECT slot_name::text FROM pgcdc.streams ORDER BY 1", None, &[])?;
            rows.map(|row| row.get::<String>(1).map(Option::unwrap_or_default)).collect::<Result<Vec<_>, _>>()
        })
    })
    .unwrap_or_else(|e: pgrx::spi::Error| pgrx::error!("pgcdc scanner: reading streams of \"{database}\": {e}"));
    for slot in slots {
        if let Err(e) = super::start(&database, &slot) {
            pgrx::warning!("pgcdc scanner: stream \"{slot}\": {e}");
        }
    }
}

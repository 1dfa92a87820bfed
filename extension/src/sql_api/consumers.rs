//! Named consumers of a stream (`cdc_register_consumer`,
//! `cdc_drop_consumer`): recorded in the catalog, which survives restarts
//! and the reboots that empty /dev/shm, and in the registry beside the
//! rings and every ring, so that each ring keeps every change until every
//! consumer acknowledged it.
//!
//! Registration takes effect in the rings at once, so that no change
//! committed after the call is missed, and is undone if the transaction
//! aborts; dropping a consumer releases what it held only once the
//! transaction commits.

use super::error::SqlError;
use super::lookup;
use crate::{gucs, worker};
use pgcdc_reader::ring::file::{self, Registry};
use pgcdc_reader::ring::layout::NAME_MAX;
use pgcdc_reader::ring::{RingError, Start};
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::path::{Path, PathBuf};

fn group() -> Result<Option<u32>, RingError> {
    gucs::ring_group().map(|g| file::group_id(&g)).transpose()
}

/// Registers consumer `name` for stream `slot`: it receives every change
/// committed from now on. Returns whether it was new.
pub fn register(slot: &str, name: &str) -> Result<bool, SqlError> {
    super::configure::require_catalog_access()?;
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(SqlError::ConsumerName(name.to_owned()));
    }
    let stream: Option<bool> = lookup::optional("SELECT true FROM pgcdc.streams WHERE slot_name = $1", &[slot.into()])?;
    if stream.is_none() {
        return Err(SqlError::NoSuchStream(slot.to_owned()));
    }
    let exists: Option<bool> = lookup::optional(
        "SELECT true FROM pgcdc.consumers WHERE slot_name = $1 AND consumer_name = $2",
        &[slot.into(), name.into()],
    )?;
    if exists.is_some() {
        return Ok(false);
    }
    pgrx::spi::Spi::run_with_args(
        "INSERT INTO pgcdc.consumers (slot_name, consumer_name) VALUES ($1, $2)",
        &[slot.into(), name.into()],
    )?;
    let dir = worker::stream_dir(slot);
    let added = add_to_rings(&dir, name)?;
    let name = name.to_owned();
    register_xact_callback(PgXactCallbackEvent::Abort, move || remove_from_rings(&dir, &name, Some(&added)));
    Ok(true)
}

/// Drops consumer `name` of stream `slot`; what it held is released when
/// the transaction commits.
pub fn drop(slot: &str, name: &str) -> Result<(), SqlError> {
    super::configure::require_catalog_access()?;
    let removed = pgrx::spi::Spi::connect_mut(|client| {
        let deleted = client.update(
            "DELETE FROM pgcdc.consumers WHERE slot_name = $1 AND consumer_name = $2 RETURNING true",
            None,
            &[slot.into(), name.into()],
        )?;
        Ok::<_, SqlError>(!deleted.is_empty())
    })?;
    if !removed {
        return Err(SqlError::NoSuchConsumer { slot: slot.to_owned(), name: name.to_owned() });
    }
    let dir = worker::stream_dir(slot);
    let name = name.to_owned();
    register_xact_callback(PgXactCallbackEvent::Commit, move || remove_from_rings(&dir, &name, None));
    Ok(())
}

/// Adds `name` to the registry in `dir` and to every ring there, under
/// the registry's lock (so a ring the worker creates meanwhile gets it
/// too). Returns what was new to it: what an abort takes back.
fn add_to_rings(dir: &Path, name: &str) -> Result<Added, RingError> {
    let mut registry = Registry::lock(dir, group()?)?;
    let mut names = registry.names()?;
    let in_registry = !names.iter().any(|n| n == name);
    if in_registry {
        names.push(name.to_owned());
        registry.set(&names)?;
    }
    let mut rings = Vec::new();
    for path in file::rings_in(dir)? {
        let ring = file::open_own(&path)?;
        if !ring.consumers().iter().any(|n| n == name) {
            ring.register(name, Start::Now)?;
            rings.push(path);
        }
    }
    Ok(Added { in_registry, rings })
}

/// What registering a consumer changed outside the catalog.
struct Added {
    in_registry: bool,
    rings: Vec<PathBuf>,
}

/// Takes `name` out of the registry and the rings in `dir` (only what
/// `added` lists, when given). Runs at the end of a transaction, where
/// nothing may fail: problems are logged.
fn remove_from_rings(dir: &Path, name: &str, added: Option<&Added>) {
    let outcome = (|| -> Result<(), RingError> {
        let mut registry = Registry::lock(dir, group()?)?;
        if added.is_none_or(|a| a.in_registry) {
            let names: Vec<String> = registry.names()?.into_iter().filter(|n| n != name).collect();
            registry.set(&names)?;
        }
        let rings = match added {
            Some(added) => added.rings.clone(),
            None => file::rings_in(dir)?,
        };
        for path in rings {
            file::open_own(&path)?.unregister(name);
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        pgrx::log!("pgcdc: removing consumer \"{name}\" from the rings in {}: {e}", dir.display());
    }
}

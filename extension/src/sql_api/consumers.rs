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
use pgcdc_reader::ring::{Consumer, RingError, Start};
use pgrx::{register_xact_callback, PgXactCallbackEvent};
use std::path::{Path, PathBuf};

fn group() -> Result<Option<u32>, RingError> {
    gucs::ring_group().map(|g| file::group_id(&g)).transpose()
}

/// Registers consumer `name` for stream `slot`: it receives every change
/// committed from now on; only OS user `os_user` may read as it, when one
/// is given (else the first OS user that does keeps it). Returns whether
/// it was new.
pub fn register(slot: &str, name: &str, os_user: Option<&str>) -> Result<bool, SqlError> {
    super::configure::require_catalog_access()?;
    if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(SqlError::ConsumerName(name.to_owned()));
    }
    let owner = os_user.map(file::user_id).transpose()?;
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
        "INSERT INTO pgcdc.consumers (slot_name, consumer_name, os_user) VALUES ($1, $2, $3)",
        &[slot.into(), name.into(), os_user.into()],
    )?;
    let dir = worker::stream_dir(slot);
    let added = add_to_rings(&dir, &Consumer { name: name.to_owned(), owner })?;
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
fn add_to_rings(dir: &Path, consumer: &Consumer) -> Result<Added, RingError> {
    let mut registry = Registry::lock(dir, group()?)?;
    let mut consumers = registry.consumers()?;
    let in_registry = !consumers.iter().any(|c| c.name == consumer.name);
    if in_registry {
        consumers.push(consumer.clone());
        registry.set(&consumers)?;
    }
    let mut rings = Vec::new();
    for path in file::rings_in(dir)? {
        let ring = file::open_own(&path)?;
        if !ring.consumers().contains(&consumer.name) {
            ring.register(consumer, Start::Now)?;
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
            let consumers: Vec<Consumer> = registry.consumers()?.into_iter().filter(|c| c.name != name).collect();
            registry.set(&consumers)?;
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

//! The `publication_names` filter, with pgoutput's rules: a table is
//! decoded when a listed publication covers all tables, the table itself,
//! its schema, or (for a partition) one of its ancestors; the actions
//! decoded are the union of those publications' `publish` lists.
//!
//! A listed publication that does not exist at the decoded WAL position is
//! skipped with a WARNING (as pgoutput does from PostgreSQL 16 on) rather
//! than stopping the slot: a publication created after a change was made
//! cannot stall decoding of that change forever.
//!
//! A partition's changes are reported as those of its root table (DESIGN
//! §2), with or without publications. With the plugin option
//! `partition_root = false`, pgoutput's rules instead: under the
//! partition's own name, unless a publication has
//! `publish_via_partition_root`, which reports them as its topmost
//! published ancestor's (the highest one when several publications
//! disagree, as pgoutput decides). Not yet applied: row filters and column
//! lists.

use pgcdc_reader::contract::Op;
use pgrx::pg_sys;
use std::collections::HashSet;
use std::ffi::CString;

/// Which operations of a table are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
}

impl Actions {
    pub const ALL: Actions = Actions { insert: true, update: true, delete: true, truncate: true };
    const NONE: Actions = Actions { insert: false, update: false, delete: false, truncate: false };

    pub fn allows(&self, op: Op) -> bool {
        match op {
            Op::Insert | Op::Read => self.insert,
            Op::Update => self.update,
            Op::Delete => self.delete,
            Op::Truncate => self.truncate,
        }
    }
}

struct Publication {
    oid: pg_sys::Oid,
    all_tables: bool,
    via_root: bool,
    actions: Actions,
}

/// What the publications say about one relation.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub actions: Actions,
    /// The ancestor whose name and row type its changes are reported
    /// with, if a publication publishes it through its root.
    pub as_ancestor: Option<pg_sys::Oid>,
}

/// What every table is decoded as without `publication_names`: all of
/// its actions, and a partition's as its root's with `partition_root`.
///
/// # Safety
/// As for [`Publications::published`].
pub unsafe fn unfiltered(relation: pg_sys::Relation, partition_root: bool) -> Published {
    // SAFETY: forwarded from the caller.
    let root = if partition_root { unsafe { topmost_ancestor(relation) } } else { None };
    Published { actions: Actions::ALL, as_ancestor: root.map(|(oid, _)| oid) }
}

/// The root of a partition, and how many levels up it is; None for a
/// table that is no partition.
///
/// # Safety
/// As for [`Publications::published`].
unsafe fn topmost_ancestor(relation: pg_sys::Relation) -> Option<(pg_sys::Oid, i32)> {
    // SAFETY: the relation is open; the list is palloc'd and only read.
    unsafe {
        if !(*(*relation).rd_rel).relispartition {
            return None;
        }
        let ancestors = pg_sys::ffi::pg_guard_ffi_boundary(|| get_partition_ancestors((*relation).rd_id));
        let length = (*ancestors).length;
        // The topmost ancestor is the list's last element.
        Some(((*(*ancestors).elements.add((length - 1) as usize)).oid_value, length))
    }
}

/// The publications named by the `publication_names` option.
pub struct Publications {
    names: Vec<CString>,
    /// Partitions as their root (the `partition_root` option).
    partition_root: bool,
    /// Loaded at this invalidation epoch.
    loaded: Option<(u64, Vec<Publication>)>,
    warned: HashSet<String>,
}

unsafe extern "C-unwind" {
    /// `catalog/partition.h`, not in pgrx's bindings.
    fn get_partition_ancestors(relid: pg_sys::Oid) -> *mut pg_sys::List;
}

impl Publications {
    pub fn new(names: &[String], partition_root: bool) -> Publications {
        // Names come from a C string option, so they hold no NUL byte.
        let names = names.iter().filter_map(|n| CString::new(n.as_str()).ok()).collect();
        Publications { names, partition_root, loaded: None, warned: HashSet::new() }
    }

    /// The actions decoded for `relation`, and whose name they carry.
    ///
    /// # Safety
    /// `relation` must be an open relation; must run inside logical
    /// decoding (catalog access under a historic snapshot).
    pub unsafe fn published(&mut self, relation: pg_sys::Relation, epoch: u64) -> Published {
        if self.loaded.as_ref().is_none_or(|(at, _)| *at != epoch) {
            // SAFETY: forwarded from the caller.
            let publications = unsafe { self.load() };
            self.loaded = Some((epoch, publications));
        }
        let Some((_, publications)) = &self.loaded else {
            return Published { actions: Actions::NONE, as_ancestor: None };
        };
        // SAFETY: the relation is open; the lists are palloc'd in the
        // current memory context and only read here.
        unsafe {
            let relid = (*relation).rd_id;
            let form = &*(*relation).rd_rel;
            let own = pg_sys::GetRelationPublications(relid);
            let schema = pg_sys::GetSchemaPublications(form.relnamespace);
            let ancestors = if form.relispartition {
                pg_sys::ffi::pg_guard_ffi_boundary(|| get_partition_ancestors(relid))
            } else {
                std::ptr::null_mut()
            };
            let root = topmost_ancestor(relation);
            let partitioned = form.relkind as u8 == pg_sys::RELKIND_PARTITIONED_TABLE;
            let mut actions = Actions::NONE;
            let mut as_ancestor: Option<(pg_sys::Oid, i32)> = None;
            for publication in publications {
                let mut covered = publication.all_tables
                    || pg_sys::list_member_oid(own, publication.oid)
                    || pg_sys::list_member_oid(schema, publication.oid);
                let mut ancestor = None;
                if !ancestors.is_null() {
                    if publication.all_tables {
                        ancestor = root;
                    } else {
                        let mut level = 0;
                        let top = pg_sys::GetTopMostAncestorInPublication(publication.oid, ancestors, &mut level);
                        if top != pg_sys::InvalidOid {
                            covered = true;
                            ancestor = Some((top, level));
                        }
                    }
                    if self.partition_root {
                        ancestor = root;
                    }
                }
                let via_root = publication.via_root || self.partition_root;
                // A partitioned table's own changes (TRUNCATE) count only
                // when publishing through the root, as in pgoutput.
                if !covered || (partitioned && !via_root) {
                    continue;
                }
                if via_root {
                    if let Some((oid, level)) = ancestor {
                        if as_ancestor.is_none_or(|(_, best)| level > best) {
                            as_ancestor = Some((oid, level));
                        }
                    }
                }
                actions.insert |= publication.actions.insert;
                actions.update |= publication.actions.update;
                actions.delete |= publication.actions.delete;
                actions.truncate |= publication.actions.truncate;
            }
            Published { actions, as_ancestor: as_ancestor.map(|(oid, _)| oid) }
        }
    }

    /// # Safety
    /// Catalog access must be possible.
    unsafe fn load(&mut self) -> Vec<Publication> {
        let mut loaded = Vec::with_capacity(self.names.len());
        for name in &self.names {
            // SAFETY: `name` is NUL-terminated; missing_ok returns NULL for
            // a publication the historic snapshot does not see.
            let publication = unsafe { pg_sys::GetPublicationByName(name.as_ptr(), true) };
            if publication.is_null() {
                let name = name.to_string_lossy().into_owned();
                if self.warned.insert(name.clone()) {
                    pgrx::warning!(
                        "wal2arrow: skipped loading publication \"{name}\": it does not exist at this point of the WAL"
                    );
                }
                continue;
            }
            // SAFETY: a non-null result is a palloc'd Publication.
            let p = unsafe { &*publication };
            loaded.push(Publication {
                oid: p.oid,
                all_tables: p.alltables,
                via_root: p.pubviaroot,
                actions: Actions {
                    insert: p.pubactions.pubinsert,
                    update: p.pubactions.pubupdate,
                    delete: p.pubactions.pubdelete,
                    truncate: p.pubactions.pubtruncate,
                },
            });
        }
        loaded
    }
}

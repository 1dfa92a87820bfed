//! Catalog lookups: a relation's live columns, what Arrow type each maps
//! to, and what reading its datums takes (storage layout, cached output
//! functions). Done once per relation and schema version, never per row.

use crate::pgtype::{self, cstr};
use pgcdc_encode::batch::{ColumnSpec, TableSpec};
use pgcdc_encode::pgformat::array::ElementLayout;
use pgcdc_encode::types::Kind;
use pgrx::pg_sys;

/// How to read one column's datums.
pub struct ColumnPlan {
    /// Index into the tuple descriptor and the deformed values.
    pub attidx: usize,
    pub kind: Kind,
    /// `typlen` of the (base) type: > 0 fixed, -1 varlena, -2 C string.
    pub typlen: i16,
    pub byval: bool,
    /// The type's output function: the text of text-mapped values and of
    /// values a typed column refuses.
    pub output: *mut pg_sys::FmgrInfo,
    /// For `List` columns: how elements are stored.
    pub element: Option<ElementPlan>,
}

/// How to read the elements of an array column.
pub struct ElementPlan {
    pub layout: ElementLayout,
    pub byval: bool,
    /// The element type's output function, for elements mapped to text.
    pub output: *mut pg_sys::FmgrInfo,
}

/// A relation at one schema version.
pub struct RelationPlan {
    pub spec: TableSpec,
    pub columns: Vec<ColumnPlan>,
    /// `natts` of the tuple descriptor, dropped columns included.
    pub natts: usize,
    /// Whether `spec.partition_key` tells rows apart (the replica identity
    /// index or the primary key, not every column).
    pub unique_key: bool,
    /// Holds the cached `FmgrInfo`s; deleted by [`RelationPlan::release`].
    context: pg_sys::MemoryContext,
}

impl RelationPlan {
    /// Describes `relation` as the catalog snapshot sees it (in decoding,
    /// the historic one).
    ///
    /// # Safety
    /// `relation` must be a valid, open relation and `parent` a live
    /// memory context; must run inside a transaction or logical decoding.
    pub unsafe fn describe(relation: pg_sys::Relation, parent: pg_sys::MemoryContext) -> RelationPlan {
        // SAFETY: the caller hands us an open relation, whose descriptor,
        // pg_class row and name stay valid for this call.
        unsafe {
            let rel = &*relation;
            let form = &*rel.rd_rel;
            let desc = rel.rd_att;
            let natts = usize::try_from((*desc).natts).unwrap_or(0);
            let context = pg_sys::AllocSetContextCreateInternal(
                parent,
                c"wal2arrow relation".as_ptr(),
                0,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let full_identity = form.relreplident as u8 == pg_sys::REPLICA_IDENTITY_FULL;
            let identity =
                if full_identity { std::ptr::null_mut() } else { pg_sys::RelationGetIdentityKeyBitmap(relation) };
            let partition_attnums = partition_key(relation, identity);

            let mut specs = Vec::with_capacity(natts);
            let mut columns = Vec::with_capacity(natts);
            let mut partition_key = Vec::new();
            for attidx in 0..natts {
                let att = crate::majors::attribute(desc, attidx);
                if att.attisdropped {
                    continue;
                }
                if partition_attnums.as_ref().is_none_or(|k| k.contains(&att.attnum)) {
                    partition_key.push(specs.len());
                }
                let key = full_identity
                    || pg_sys::bms_is_member(
                        i32::from(att.attnum) - pg_sys::FirstLowInvalidHeapAttributeNumber,
                        identity,
                    );
                let info = pgtype::describe(att.atttypid, att.atttypmod);
                let kind = info.kind;
                let pg_type_text = pgtype::format(att.atttypid, att.atttypmod);
                specs.push(ColumnSpec { name: cstr(att.attname.data.as_ptr()), pg_type: pg_type_text, kind, key });
                columns.push(ColumnPlan {
                    attidx,
                    kind,
                    typlen: info.typlen,
                    byval: info.byval,
                    output: output_function(info.output, context),
                    element: info.element.map(|e| ElementPlan {
                        layout: e.layout,
                        byval: e.byval,
                        output: output_function(e.output, context),
                    }),
                });
            }
            let spec = TableSpec {
                schema: cstr(pg_sys::get_namespace_name(form.relnamespace)),
                table: cstr(form.relname.data.as_ptr()),
                relid: rel.rd_id.to_u32(),
                columns: specs,
                partition_key,
            };
            RelationPlan { spec, columns, natts, unique_key: partition_attnums.is_some(), context }
        }
    }

    /// Frees the cached output functions. Not a `Drop`: when the decoding
    /// context goes away PostgreSQL frees this memory itself, before the
    /// plan is dropped.
    pub fn release(self) {
        // SAFETY: the context was created by `describe` and is deleted
        // once, here; nothing else points into it after the plan is gone.
        unsafe { pg_sys::MemoryContextDelete(self.context) }
    }
}

/// The attribute numbers that split `relation` into key-hash partitions:
/// its replica identity index (`identity`, from
/// `RelationGetIdentityKeyBitmap`), else its primary key; None (every
/// column) without either.
///
/// # Safety
/// `relation` must be open, inside logical decoding; `identity` null or
/// the relation's identity key bitmap.
unsafe fn partition_key(relation: pg_sys::Relation, identity: *mut pg_sys::Bitmapset) -> Option<Vec<i16>> {
    // SAFETY: bitmap members are attribute numbers offset as PostgreSQL
    // stores them; the primary key index is opened like
    // RelationGetIdentityKeyBitmap opens the identity index (the one index
    // decoding may open), read, and closed.
    unsafe {
        if !identity.is_null() {
            let mut attnums = Vec::new();
            let mut member = -1;
            loop {
                member = pg_sys::bms_next_member(identity, member);
                if member < 0 {
                    break;
                }
                attnums.push((member + pg_sys::FirstLowInvalidHeapAttributeNumber) as i16);
            }
            return Some(attnums);
        }
        pg_sys::list_free(pg_sys::RelationGetIndexList(relation));
        let pkey = (*relation).rd_pkindex;
        if pkey == pg_sys::InvalidOid {
            return None;
        }
        let index = pg_sys::RelationIdGetRelation(pkey);
        if index.is_null() {
            return None;
        }
        let form = &*(*index).rd_index;
        let keys = usize::try_from(form.indnkeyatts).unwrap_or(0);
        let attnums = form.indkey.values.as_slice(keys).to_vec();
        pg_sys::RelationClose(index);
        Some(attnums)
    }
}

/// An `FmgrInfo` for `function`, allocated in `context`.
///
/// # Safety
/// `context` must be a live memory context.
unsafe fn output_function(function: pg_sys::Oid, context: pg_sys::MemoryContext) -> *mut pg_sys::FmgrInfo {
    // SAFETY: the allocation is zeroed, sized for an FmgrInfo, and lives as
    // long as `context`; fmgr_info_cxt fills it in.
    unsafe {
        let info = pg_sys::MemoryContextAllocZero(context, size_of::<pg_sys::FmgrInfo>()).cast::<pg_sys::FmgrInfo>();
        pg_sys::fmgr_info_cxt(function, info, context);
        info
    }
}

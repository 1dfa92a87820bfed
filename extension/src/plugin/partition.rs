//! Publishing a partition's changes as its root (`publish_via_partition_root`):
//! the tuple conversion from the partition's row type to the ancestor's.

use pgrx::pg_sys;

/// Converts one partition's tuples to an ancestor's row type.
pub struct Conversion {
    /// Holds the copied descriptors and the map.
    context: pg_sys::MemoryContext,
    /// Null when both row types have the same layout.
    map: *mut pg_sys::TupleConversionMap,
    /// The ancestor's descriptor (a copy: relcache ones can be rebuilt).
    ancestor_desc: pg_sys::TupleDesc,
}

impl Conversion {
    /// Builds the conversion of `relation`'s tuples to `ancestor`'s.
    ///
    /// # Safety
    /// Both must be open relations; `parent` a live memory context.
    pub unsafe fn new(
        relation: pg_sys::Relation,
        ancestor: pg_sys::Relation,
        parent: pg_sys::MemoryContext,
    ) -> Conversion {
        // SAFETY: everything is allocated in a context of our own, from
        // descriptors of relations the caller keeps open meanwhile.
        unsafe {
            let context = pg_sys::AllocSetContextCreateInternal(
                parent,
                c"wal2arrow partition".as_ptr(),
                0,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );
            let previous = pg_sys::MemoryContextSwitchTo(context);
            let partition_desc = pg_sys::CreateTupleDescCopy((*relation).rd_att);
            let ancestor_desc = pg_sys::CreateTupleDescCopy((*ancestor).rd_att);
            let map = pg_sys::convert_tuples_by_name(partition_desc, ancestor_desc);
            pg_sys::MemoryContextSwitchTo(previous);
            Conversion { context, map, ancestor_desc }
        }
    }

    /// The ancestor's row type.
    pub fn ancestor_desc(&self) -> pg_sys::TupleDesc {
        self.ancestor_desc
    }

    /// `tuple` in the ancestor's row type, allocated in the current memory
    /// context (or `tuple` itself when no conversion is needed).
    ///
    /// # Safety
    /// `tuple` must be a tuple of the partition this conversion was built for.
    pub unsafe fn convert(&self, tuple: *mut pg_sys::HeapTupleData) -> *mut pg_sys::HeapTupleData {
        if self.map.is_null() {
            return tuple;
        }
        // SAFETY: the map matches the tuple's descriptor.
        unsafe { pg_sys::execute_attr_map_tuple(tuple, self.map) }
    }

    /// Frees the conversion. Not a `Drop`: the decoding context frees it
    /// itself when decoding ends.
    pub fn release(self) {
        // SAFETY: the context was created in `new` and is deleted once.
        unsafe { pg_sys::MemoryContextDelete(self.context) }
    }
}

//! What the catalogs say about a column type: its Arrow mapping and how its
//! datums are stored. Shared by the output plugin (under decoding's historic
//! snapshot) and the SQL functions (under a normal one).

use pgcdc_encode::pgformat::array::ElementLayout;
use pgcdc_encode::types::{Kind, PgType};
use pgrx::pg_sys;
use std::ffi::CStr;

/// A column type, domains resolved.
pub struct TypeInfo {
    pub kind: Kind,
    /// `typlen` of the base type: > 0 fixed, -1 varlena, -2 C string.
    pub typlen: i16,
    pub byval: bool,
    /// The base type's output function.
    pub output: pg_sys::Oid,
    /// For an array type: how its elements are stored.
    pub element: Option<ElementInfo>,
}

/// How an array's elements are stored.
pub struct ElementInfo {
    pub layout: ElementLayout,
    pub byval: bool,
    pub output: pg_sys::Oid,
}

/// `pg_type` fields the mapping needs.
struct TypeRow {
    name: String,
    typtype: u8,
    typlen: i16,
    byval: bool,
    align: u8,
    output: pg_sys::Oid,
}

/// Describes the type of a column declared as `typid` with `typmod`.
///
/// # Safety
/// Catalog access must be possible (a transaction or decoding is active).
pub unsafe fn describe(typid: pg_sys::Oid, typmod: i32) -> TypeInfo {
    // SAFETY: plain catalog lookups, guaranteed possible by the caller.
    unsafe {
        let mut typmod = typmod;
        let base = pg_sys::getBaseTypeAndTypmod(typid, &mut typmod);
        let row = type_row(base);
        let element_oid = pg_sys::get_element_type(base);
        let (element_type, element) = if element_oid == pg_sys::InvalidOid {
            (None, None)
        } else {
            let mut element_typmod = typmod;
            let element_base = pg_sys::getBaseTypeAndTypmod(element_oid, &mut element_typmod);
            let erow = type_row(element_base);
            let info = ElementInfo {
                layout: ElementLayout { len: erow.typlen, align: erow.align },
                byval: erow.byval,
                output: erow.output,
            };
            let t = PgType {
                oid: element_base.to_u32(),
                typmod: element_typmod,
                name: erow.name,
                typtype: erow.typtype,
                element: None,
            };
            (Some(Box::new(t)), Some(info))
        };
        let pg_type =
            PgType { oid: base.to_u32(), typmod, name: row.name, typtype: row.typtype, element: element_type };
        let kind = Kind::of(&pg_type);
        TypeInfo {
            kind,
            typlen: row.typlen,
            byval: row.byval,
            output: row.output,
            element: if matches!(kind, Kind::List(_)) { element } else { None },
        }
    }
}

/// `format_type_with_typemod`: the type as PostgreSQL prints it.
///
/// # Safety
/// Catalog access must be possible.
pub unsafe fn format(typid: pg_sys::Oid, typmod: i32) -> String {
    // SAFETY: returns a palloc'd C string.
    unsafe { cstr(pg_sys::format_type_with_typemod(typid, typmod)) }
}

/// Looks up a type's `pg_type` row.
///
/// # Safety
/// Catalog access must be possible.
unsafe fn type_row(oid: pg_sys::Oid) -> TypeRow {
    // SAFETY: the syscache returns a pinned tuple whose struct is a
    // FormData_pg_type until ReleaseSysCache, which we call after copying.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::TYPEOID as i32, oid.into());
        if tuple.is_null() {
            pgrx::error!("pgcdc: cache lookup failed for type {}", oid.to_u32());
        }
        let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_type>(tuple);
        let row = TypeRow {
            name: cstr(form.typname.data.as_ptr()),
            typtype: form.typtype as u8,
            typlen: form.typlen,
            byval: form.typbyval,
            align: form.typalign as u8,
            output: form.typoutput,
        };
        pg_sys::ReleaseSysCache(tuple);
        row
    }
}

/// Copies a C string PostgreSQL returned.
///
/// # Safety
/// `ptr` must point to a NUL-terminated string.
pub unsafe fn cstr(ptr: *const std::ffi::c_char) -> String {
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
}

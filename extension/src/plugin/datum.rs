//! Reading datums of a decoded tuple as [`Stored`] values.
//!
//! By-value datums are read from their bits, fixed-size by-reference ones
//! from the memory they point to, varlenas in place when they are plain and
//! through `detoast_attr` when compressed or indirect. Types mapped to text
//! go through their cached output function. A TOAST pointer into the table
//! means WAL did not carry the value: it is reported as unchanged, never
//! fetched.

use super::catalog::{ColumnPlan, ElementPlan};
use pgcdc_encode::column::Stored;
use pgcdc_encode::pgformat::array::Array;
use pgcdc_encode::pgformat::varlena::{self, Head, Long, TAG_ONDISK};
use pgcdc_encode::types::{Kind, Scalar};
use pgrx::pg_sys;
use std::ffi::CStr;

/// What a column's datum turned out to be.
pub enum Read<'a> {
    Value(Stored<'a>),
    List(Vec<Option<Stored<'a>>>),
    /// A TOASTed value WAL did not carry.
    Unchanged,
    /// An array a `List` cannot carry (several dimensions, a lower bound
    /// other than 1, malformed bytes): its text goes to `_unmapped`.
    Refused,
}

/// Reads a non-null datum of a column.
///
/// # Safety
/// `datum` must be a valid, non-null datum of the column `plan` describes,
/// and the current memory context must outlive the returned borrows.
pub unsafe fn read<'a>(plan: &ColumnPlan, datum: pg_sys::Datum) -> Read<'a> {
    // SAFETY: forwarded from the caller.
    unsafe {
        match plan.kind {
            Kind::Scalar(scalar) if scalar.needs_output_function() => {
                if plan.typlen == -1 && is_ondisk_toast(datum) {
                    Read::Unchanged
                } else {
                    Read::Value(Stored::Bytes(output_text(plan.output, datum)))
                }
            }
            Kind::Scalar(_) if plan.byval => Read::Value(Stored::Word(datum.value() as u64)),
            Kind::Scalar(_) => {
                let bytes = match usize::try_from(plan.typlen) {
                    // SAFETY: a fixed-size by-reference datum points to typlen bytes.
                    Ok(len) => Some(std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), len)),
                    Err(_) => varlena_payload(datum),
                };
                bytes.map_or(Read::Unchanged, |bytes| Read::Value(Stored::Bytes(bytes)))
            }
            Kind::List(scalar) => {
                let Some(payload) = varlena_payload(datum) else { return Read::Unchanged };
                match plan.element.as_ref().and_then(|element| list_values(scalar, element, payload)) {
                    Some(values) => Read::List(values),
                    None => Read::Refused,
                }
            }
        }
    }
}

/// The datum, with a value PostgreSQL keeps in the TOAST table fetched
/// whole into the current memory context: what a snapshot reads (decoding
/// never fetches; see [`read`]).
///
/// # Safety
/// `datum` must be a valid, non-null datum of the column `plan` describes,
/// inside a transaction that may read the table's TOAST table.
pub unsafe fn fetched(plan: &ColumnPlan, datum: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: forwarded from the caller; detoast_attr returns a palloc'd
    // plain varlena.
    unsafe {
        if plan.typlen == -1 && is_ondisk_toast(datum) {
            pg_sys::Datum::from(pg_sys::detoast_attr(datum.cast_mut_ptr()))
        } else {
            datum
        }
    }
}

/// The text of a datum through the column's output function, for values a
/// typed column refused. Never called on unchanged TOAST pointers.
///
/// # Safety
/// As for [`read`].
pub unsafe fn text(plan: &ColumnPlan, datum: pg_sys::Datum) -> String {
    // SAFETY: forwarded from the caller.
    String::from_utf8_lossy(unsafe { output_text(plan.output, datum) }).into_owned()
}

/// The elements of a plain one-dimensional array, or `None` when the
/// array has another shape or an element cannot be read.
///
/// # Safety
/// `payload` must be an array of the element type `element` describes.
unsafe fn list_values<'a>(scalar: Scalar, element: &ElementPlan, payload: &'a [u8]) -> Option<Vec<Option<Stored<'a>>>> {
    let array = Array::parse(payload).ok()?;
    if !array.is_plain_list() {
        return None;
    }
    array
        .elements(element.layout)
        .map(|item| match item {
            Err(_) => None,
            Ok(None) => Some(None),
            // SAFETY: the element bytes are a datum of the element type.
            Ok(Some(bytes)) => unsafe { element_value(scalar, element, bytes) }.map(Some),
        })
        .collect()
}

/// One array element: `typlen` bytes, or a whole varlena with its header.
///
/// # Safety
/// `bytes` must be one stored element of the type `element` describes.
unsafe fn element_value<'a>(scalar: Scalar, element: &ElementPlan, bytes: &'a [u8]) -> Option<Stored<'a>> {
    let word = || {
        let mut word = [0u8; 8];
        word[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
        u64::from_le_bytes(word)
    };
    if scalar.needs_output_function() {
        let datum = if element.byval { word() as usize } else { bytes.as_ptr() as usize };
        // SAFETY: the datum is a valid element of the output function's type.
        Some(Stored::Bytes(unsafe { output_text(element.output, pg_sys::Datum::from(datum)) }))
    } else if element.byval {
        Some(Stored::Word(word()))
    } else if element.layout.len > 0 {
        Some(Stored::Bytes(bytes))
    } else {
        varlena::split(bytes).ok().map(|(payload, _)| Stored::Bytes(payload))
    }
}

/// The payload of the varlena behind a datum (header stripped),
/// detoasted when needed; `None` when it is a pointer into the TOAST table
/// (a value WAL did not carry).
///
/// # Safety
/// `datum` must point to a varlena that lives as long as the current memory
/// context.
unsafe fn varlena_payload<'a>(datum: pg_sys::Datum) -> Option<&'a [u8]> {
    let ptr = datum.cast_mut_ptr::<u8>();
    // SAFETY: a varlena has at least one header byte; longer headers are
    // read only when the first byte announces them, and the lengths come
    // from the header PostgreSQL wrote.
    unsafe {
        match varlena::head(*ptr) {
            Head::Short { total_len } => Some(std::slice::from_raw_parts(ptr.add(1), total_len.saturating_sub(1))),
            Head::External if *ptr.add(1) == TAG_ONDISK => None,
            Head::External => Some(detoasted(ptr)),
            Head::Long => match varlena::long(ptr.cast::<u32>().read_unaligned()) {
                Long::Plain { total_len } => Some(std::slice::from_raw_parts(ptr.add(4), total_len.saturating_sub(4))),
                Long::Compressed => Some(detoasted(ptr)),
            },
        }
    }
}

/// Decompresses or follows an in-memory TOAST pointer; the payload.
///
/// # Safety
/// `ptr` must be a compressed or indirect varlena.
unsafe fn detoasted<'a>(ptr: *mut u8) -> &'a [u8] {
    // SAFETY: detoast_attr returns a palloc'd plain varlena with a 4-byte
    // header, in the current memory context.
    unsafe {
        let plain = pg_sys::detoast_attr(ptr.cast()).cast::<u8>();
        let total = match varlena::long(plain.cast::<u32>().read_unaligned()) {
            Long::Plain { total_len } => total_len,
            Long::Compressed => 4,
        };
        std::slice::from_raw_parts(plain.add(4), total.saturating_sub(4))
    }
}

/// Whether a varlena datum is a pointer into the TOAST table.
///
/// # Safety
/// `datum` must point to a varlena.
unsafe fn is_ondisk_toast(datum: pg_sys::Datum) -> bool {
    let ptr = datum.cast_mut_ptr::<u8>();
    // SAFETY: the second byte exists whenever the first says "external".
    unsafe { varlena::head(*ptr) == Head::External && *ptr.add(1) == TAG_ONDISK }
}

/// Calls an output function; the text lives in the current memory context.
///
/// # Safety
/// `function` must be the output function of the datum's type.
unsafe fn output_text<'a>(function: *mut pg_sys::FmgrInfo, datum: pg_sys::Datum) -> &'a [u8] {
    // SAFETY: output functions return a palloc'd NUL-terminated string.
    unsafe { CStr::from_ptr(pg_sys::OutputFunctionCall(function, datum)).to_bytes() }
}

//! Reading datums of a decoded tuple into [`Value`]s.
//!
//! By-value datums are read from their bits, fixed-size by-reference ones
//! from the memory they point to, varlenas in place when they are plain and
//! through `detoast_attr` when compressed or indirect. Types mapped to text
//! go through their cached output function. A TOAST pointer into the table
//! means WAL did not carry the value: it is reported as unchanged, never
//! fetched.

use super::catalog::{ColumnPlan, ElementPlan};
use pgcdc_encode::column::Value;
use pgcdc_encode::pgformat::array::Array;
use pgcdc_encode::pgformat::varlena::{self, Head, Long, TAG_ONDISK};
use pgcdc_encode::types::{Kind, Scalar};
use pgrx::pg_sys;
use std::ffi::CStr;

/// What a column's datum turned out to be.
pub enum Read<'a> {
    Value(Value<'a>),
    List(Vec<Option<Value<'a>>>),
    /// A TOASTed value WAL did not carry.
    Unchanged,
    /// A value whose column type cannot hold it (a multi-dimensional array,
    /// malformed bytes): its text goes to `_unmapped`.
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
                    Read::Value(Value::Text(output_text(plan.output, datum)))
                }
            }
            Kind::Scalar(scalar) => match scalar_value(scalar, plan.typlen, plan.byval, datum) {
                Some(Ok(value)) => Read::Value(value),
                Some(Err(())) => Read::Refused,
                None => Read::Unchanged,
            },
            Kind::List(scalar) => {
                let Some(bytes) = varlena_bytes(datum) else { return Read::Unchanged };
                match plan.element.as_ref().and_then(|element| list_values(scalar, element, bytes)) {
                    Some(values) => Read::List(values),
                    None => Read::Refused,
                }
            }
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
/// `bytes` must be an array of the element type `element` describes.
unsafe fn list_values<'a>(scalar: Scalar, element: &ElementPlan, bytes: &'a [u8]) -> Option<Vec<Option<Value<'a>>>> {
    let array = Array::parse(varlena::payload(bytes).ok()?).ok()?;
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

/// One array element.
///
/// # Safety
/// `bytes` must be one stored element of the type `element` describes.
unsafe fn element_value<'a>(scalar: Scalar, element: &ElementPlan, bytes: &'a [u8]) -> Option<Value<'a>> {
    if scalar.needs_output_function() {
        let datum = if element.byval {
            let mut word = [0u8; 8];
            word[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
            pg_sys::Datum::from(usize::from_le_bytes(word))
        } else {
            pg_sys::Datum::from(bytes.as_ptr() as usize)
        };
        // SAFETY: the datum is a valid element of the output function's type.
        Some(Value::Text(unsafe { output_text(element.output, datum) }))
    } else {
        Value::from_storage(scalar, bytes).ok()
    }
}

/// A scalar datum's value: `None` for an unchanged TOAST pointer,
/// `Some(Err)` for bytes that are not what the type promises.
///
/// # Safety
/// `datum` must be a valid datum of a type with this `typlen`/`byval`.
unsafe fn scalar_value<'a>(
    scalar: Scalar,
    typlen: i16,
    byval: bool,
    datum: pg_sys::Datum,
) -> Option<Result<Value<'a>, ()>> {
    if byval {
        return Some(by_value(scalar, datum.value()).ok_or(()));
    }
    let bytes = match usize::try_from(typlen) {
        // SAFETY: a fixed-size by-reference datum points to typlen bytes.
        Ok(len) => unsafe { std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), len) },
        // SAFETY: forwarded from the caller.
        Err(_) => unsafe { varlena_bytes(datum) }?,
    };
    Some(Value::from_storage(scalar, bytes).map_err(drop))
}

/// A by-value datum, as the `DatumGet*` macros read it.
fn by_value(scalar: Scalar, word: usize) -> Option<Value<'static>> {
    Some(match scalar {
        Scalar::Bool => Value::Bool(word & 0xff != 0),
        Scalar::Int16 => Value::Int16(word as i16),
        Scalar::Int32 => Value::Int32(word as i32),
        Scalar::Int64 => Value::Int64(word as i64),
        Scalar::Oid => Value::Oid(word as u32),
        Scalar::Float32 => Value::Float32(f32::from_bits(word as u32)),
        Scalar::Float64 => Value::Float64(f64::from_bits(word as u64)),
        Scalar::Date => Value::Date(word as i32),
        Scalar::Time => Value::Time(word as i64),
        Scalar::Timestamp | Scalar::TimestampTz => Value::Timestamp(word as i64),
        _ => return None,
    })
}

/// The whole varlena behind a datum, detoasted when needed; `None` when it
/// is a pointer into the TOAST table (a value WAL did not carry).
///
/// # Safety
/// `datum` must point to a varlena that lives as long as the current memory
/// context.
unsafe fn varlena_bytes<'a>(datum: pg_sys::Datum) -> Option<&'a [u8]> {
    let ptr = datum.cast_mut_ptr::<u8>();
    // SAFETY: a varlena has at least one header byte; longer headers are
    // read only when the first byte announces them, and the lengths come
    // from the header PostgreSQL wrote.
    unsafe {
        match varlena::head(*ptr) {
            Head::Short { total_len } => Some(std::slice::from_raw_parts(ptr, total_len)),
            Head::External if *ptr.add(1) == TAG_ONDISK => None,
            Head::External => Some(detoasted(ptr)),
            Head::Long => match varlena::long(ptr.cast::<u32>().read_unaligned()) {
                Long::Plain { total_len } => Some(std::slice::from_raw_parts(ptr, total_len)),
                Long::Compressed => Some(detoasted(ptr)),
            },
        }
    }
}

/// Decompresses or follows an in-memory TOAST pointer.
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
        std::slice::from_raw_parts(plain, total)
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

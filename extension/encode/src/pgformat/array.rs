//! PostgreSQL arrays (`utils/array.h`): a header, dimensions, lower bounds,
//! an optional null bitmap, then the elements, each aligned for its type.
//!
//! Offsets in the header count from the start of the 4-byte varlena header
//! (which PostgreSQL MAXALIGNs), so alignment here is computed on
//! `offset + 4` even when the value arrived with a 1-byte header.

use super::{take, varlena, FormatError};

/// The most dimensions PostgreSQL allows (`MAXDIM`).
const MAXDIM: usize = 6;
/// Bytes of the 4-byte varlena header the offsets include.
const VARHDRSZ: usize = 4;

/// Storage layout of the element type (`typlen`, `typalign`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementLayout {
    /// `typlen`: a positive size, -1 for varlena, -2 for a C string.
    pub len: i16,
    /// `typalign`: `c`, `s`, `i` or `d`.
    pub align: u8,
}

/// A parsed array value, borrowing the payload.
#[derive(Debug, Clone)]
pub struct Array<'a> {
    /// Length of each dimension (empty for an empty array).
    pub dims: Vec<i32>,
    /// Lower bound of each dimension (1 unless written `[0:2]={…}`).
    pub lower_bounds: Vec<i32>,
    /// Element type OID.
    pub element_type: u32,
    nulls: Option<&'a [u8]>,
    data: &'a [u8],
    /// Offset of `data` from the start of the 4-byte header.
    data_start: usize,
    items: usize,
}

impl<'a> Array<'a> {
    /// Parses the payload of an array varlena (the bytes after its header).
    pub fn parse(payload: &'a [u8]) -> Result<Array<'a>, FormatError> {
        let int = |at| take::<4>(payload, at, "array").map(i32::from_le_bytes);
        let ndim = usize::try_from(int(0)?)
            .ok()
            .filter(|n| *n <= MAXDIM)
            .ok_or_else(|| FormatError::new("array", "dimension count outside 0..6"))?;
        let data_offset = int(4)?;
        let element_type = u32::from_le_bytes(take::<4>(payload, 8, "array")?);
        let dims = (0..ndim).map(|d| int(12 + 4 * d)).collect::<Result<Vec<_>, _>>()?;
        let lower_bounds = (0..ndim).map(|d| int(12 + 4 * (ndim + d))).collect::<Result<Vec<_>, _>>()?;
        let items = dims.iter().try_fold(1usize, |acc, d| usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d)));
        let items = match (ndim, items) {
            (0, _) => 0,
            (_, Some(n)) => n,
            (_, None) => return Err(FormatError::new("array", "negative or huge dimensions")),
        };
        let bitmap_at = 12 + 8 * ndim;
        let (nulls, data_start) = if data_offset == 0 {
            (None, align_up(VARHDRSZ + bitmap_at, 8))
        } else {
            let bitmap = payload
                .get(bitmap_at..bitmap_at + items.div_ceil(8))
                .ok_or_else(|| FormatError::new("array", "null bitmap beyond the value"))?;
            (Some(bitmap), data_offset as usize)
        };
        let data = data_start
            .checked_sub(VARHDRSZ)
            .and_then(|at| payload.get(at..))
            .filter(|_| data_start >= VARHDRSZ + bitmap_at)
            .ok_or_else(|| FormatError::new("array", "data offset outside the value"))?;
        Ok(Array { dims, lower_bounds, element_type, nulls, data, data_start, items })
    }

    /// Whether this is the plain form a `List` can carry faithfully: no
    /// dimensions (the empty array) or one dimension starting at 1.
    pub fn is_plain_list(&self) -> bool {
        self.dims.is_empty() || (self.dims.len() == 1 && self.lower_bounds[0] == 1)
    }

    /// Number of elements over all dimensions.
    pub fn len(&self) -> usize {
        self.items
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The elements in storage order: `None` for NULL, otherwise the
    /// element's bytes (`typlen` bytes, or a whole varlena with header).
    pub fn elements(&self, layout: ElementLayout) -> Elements<'a> {
        Elements {
            data: self.data,
            base: self.data_start,
            at: 0,
            index: 0,
            items: self.items,
            nulls: self.nulls,
            layout,
        }
    }
}

/// Iterator over an array's elements.
pub struct Elements<'a> {
    data: &'a [u8],
    base: usize,
    at: usize,
    index: usize,
    items: usize,
    nulls: Option<&'a [u8]>,
    layout: ElementLayout,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Result<Option<&'a [u8]>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.items {
            return None;
        }
        let index = self.index;
        self.index += 1;
        if let Some(bitmap) = self.nulls {
            if bitmap[index / 8] & (1 << (index % 8)) == 0 {
                return Some(Ok(None));
            }
        }
        let item = self.element();
        if item.is_err() {
            self.index = self.items; // stop after the first error
        }
        Some(item.map(Some))
    }
}

impl<'a> Elements<'a> {
    fn element(&mut self) -> Result<&'a [u8], FormatError> {
        let align = match self.layout.align {
            b'c' => 1,
            b's' => 2,
            b'i' => 4,
            b'd' => 8,
            other => return Err(FormatError::new("array", format!("unknown alignment {other:?}"))),
        };
        let start = align_up(self.base + self.at, align) - self.base;
        let rest = self.data.get(start..).ok_or_else(|| FormatError::new("array", "element beyond the value"))?;
        let len = match self.layout.len {
            len @ 1.. => len as usize,
            -1 => varlena::split(rest)?.1,
            -2 => rest
                .iter()
                .position(|b| *b == 0)
                .map(|nul| nul + 1)
                .ok_or_else(|| FormatError::new("array", "unterminated C string element"))?,
            len => return Err(FormatError::new("array", format!("element length {len}"))),
        };
        let bytes = rest.get(..len).ok_or_else(|| FormatError::new("array", "element beyond the value"))?;
        self.at = start + len;
        Ok(bytes)
    }
}

fn align_up(offset: usize, align: usize) -> usize {
    offset.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    const INT4: ElementLayout = ElementLayout { len: 4, align: b'i' };
    const INT8: ElementLayout = ElementLayout { len: 8, align: b'd' };
    const TEXT: ElementLayout = ElementLayout { len: -1, align: b'i' };

    /// Builds an array payload the way `construct_md_array` lays it out.
    fn build(dims: &[i32], lbs: &[i32], elem_type: u32, elems: &[Option<Vec<u8>>], align: usize) -> Vec<u8> {
        let ndim = dims.len();
        let has_nulls = elems.iter().any(Option::is_none);
        let bitmap_len = if has_nulls { elems.len().div_ceil(8) } else { 0 };
        let data_start = align_up(VARHDRSZ + 12 + 8 * ndim + bitmap_len, 8);
        let mut out = Vec::new();
        out.extend_from_slice(&(ndim as i32).to_le_bytes());
        out.extend_from_slice(&(if has_nulls { data_start as i32 } else { 0 }).to_le_bytes());
        out.extend_from_slice(&elem_type.to_le_bytes());
        dims.iter().chain(lbs).for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        if has_nulls {
            let mut bitmap = vec![0u8; bitmap_len];
            for (i, e) in elems.iter().enumerate() {
                if e.is_some() {
                    bitmap[i / 8] |= 1 << (i % 8);
                }
            }
            out.extend_from_slice(&bitmap);
        }
        out.resize(data_start - VARHDRSZ, 0);
        for e in elems.iter().flatten() {
            out.resize(align_up(out.len() + VARHDRSZ, align) - VARHDRSZ, 0);
            out.extend_from_slice(e);
        }
        out
    }

    fn text_elem(s: &str) -> Vec<u8> {
        let mut v = (((s.len() + 4) as u32) << 2).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn one_dimensional_int_array_with_nulls() {
        let elems = [Some(7i32.to_le_bytes().to_vec()), None, Some((-1i32).to_le_bytes().to_vec())];
        let payload = build(&[3], &[1], 23, &elems, 4);
        let a = Array::parse(&payload).unwrap();
        assert!(a.is_plain_list());
        assert_eq!(a.element_type, 23);
        let got: Vec<_> =
            a.elements(INT4).map(|e| e.unwrap().map(|b| i32::from_le_bytes(b.try_into().unwrap()))).collect();
        assert_eq!(got, [Some(7), None, Some(-1)]);
    }

    #[test]
    fn varlena_elements_are_aligned_after_odd_lengths() {
        let elems = [Some(text_elem("a")), Some(text_elem("")), Some(text_elem("héllo"))];
        let payload = build(&[3], &[1], 25, &elems, 4);
        let a = Array::parse(&payload).unwrap();
        let got: Vec<_> = a.elements(TEXT).map(|e| varlena::payload(e.unwrap().unwrap()).unwrap().to_vec()).collect();
        assert_eq!(got, [b"a".to_vec(), b"".to_vec(), "héllo".as_bytes().to_vec()]);
    }

    #[test]
    fn int8_elements_align_to_eight_with_a_null_bitmap() {
        let elems = [None, Some(i64::MIN.to_le_bytes().to_vec()), Some(5i64.to_le_bytes().to_vec())];
        let payload = build(&[3], &[1], 20, &elems, 8);
        let got: Vec<_> = Array::parse(&payload)
            .unwrap()
            .elements(INT8)
            .map(|e| e.unwrap().map(|b| i64::from_le_bytes(b.try_into().unwrap())))
            .collect();
        assert_eq!(got, [None, Some(i64::MIN), Some(5)]);
    }

    #[test]
    fn empty_multidimensional_and_shifted_arrays() {
        let empty_bytes = build(&[], &[], 23, &[], 4);
        let empty = Array::parse(&empty_bytes).unwrap();
        assert!(empty.is_plain_list() && empty.is_empty());
        assert_eq!(empty.elements(INT4).count(), 0);
        let four: Vec<_> = (1..=4i32).map(|i| Some(i.to_le_bytes().to_vec())).collect();
        let square_bytes = build(&[2, 2], &[1, 1], 23, &four, 4);
        let square = Array::parse(&square_bytes).unwrap();
        assert!(!square.is_plain_list());
        assert_eq!(square.len(), 4);
        let shifted_bytes = build(&[4], &[0], 23, &four, 4);
        let shifted = Array::parse(&shifted_bytes).unwrap();
        assert!(!shifted.is_plain_list());
    }

    #[test]
    fn corrupt_arrays_are_errors_not_panics() {
        let elems = [Some(text_elem("abc"))];
        let payload = build(&[1], &[1], 25, &elems, 4);
        for cut in 0..payload.len() {
            let truncated = &payload[..cut];
            if let Ok(a) = Array::parse(truncated) {
                assert!(a.elements(TEXT).any(|e| e.is_err()), "cut at {cut} must fail");
            }
        }
        let mut bad = payload.clone();
        bad[0] = 7; // seven dimensions
        assert!(Array::parse(&bad).is_err());
        let mut huge = build(&[1], &[1], 23, &[Some(vec![0; 4])], 4);
        huge[12..16].copy_from_slice(&i32::MAX.to_le_bytes());
        let a = Array::parse(&huge).unwrap();
        assert!(a.elements(INT4).nth(1).unwrap().is_err());
    }
}

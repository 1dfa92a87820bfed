//! Varlena headers (PostgreSQL's `varatt.h`, little-endian).
//!
//! A variable-length value starts with a 1-byte header (short inline
//! values), a 1-byte marker plus a tag (a TOAST pointer), or a 4-byte
//! header (plain or compressed inline values). Only plain values can be
//! read in place; the extension asks PostgreSQL to detoast the others.

use super::{take, FormatError};

/// `VARTAG_ONDISK`: a pointer into the TOAST table. In a decoded change it
/// means WAL did not carry the value (an unchanged TOASTed column).
pub const TAG_ONDISK: u8 = 18;

/// What a varlena's first byte says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// 1-byte header; `total_len` counts the header.
    Short { total_len: usize },
    /// A TOAST pointer; its tag is the second byte.
    External,
    /// A 4-byte header follows: see [`long`].
    Long,
}

/// Classifies a varlena by its first byte.
pub fn head(first: u8) -> Head {
    if first == 0x01 {
        Head::External
    } else if first & 0x01 == 0x01 {
        Head::Short { total_len: usize::from(first >> 1) }
    } else {
        Head::Long
    }
}

/// What a 4-byte varlena header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Long {
    /// Uncompressed; `total_len` counts the 4-byte header.
    Plain { total_len: usize },
    /// Compressed inline: PostgreSQL must decompress it.
    Compressed,
}

/// Reads a 4-byte varlena header word.
pub fn long(word: u32) -> Long {
    if word & 0x03 == 0x02 {
        Long::Compressed
    } else {
        Long::Plain { total_len: (word >> 2) as usize }
    }
}

/// Splits a complete, plain varlena (1- or 4-byte header) into its payload
/// and the total number of bytes it occupies.
pub fn split(bytes: &[u8]) -> Result<(&[u8], usize), FormatError> {
    let [first] = take::<1>(bytes, 0, "varlena")?;
    let (header, total) = match head(first) {
        Head::Short { total_len } => (1, total_len),
        Head::External => return Err(FormatError::new("varlena", "unexpected TOAST pointer")),
        Head::Long => match long(u32::from_le_bytes(take::<4>(bytes, 0, "varlena")?)) {
            Long::Plain { total_len } => (4, total_len),
            Long::Compressed => return Err(FormatError::new("varlena", "unexpected compressed value")),
        },
    };
    let payload = bytes.get(header..total).ok_or_else(|| {
        FormatError::new("varlena", format!("length {total} exceeds the {} bytes present", bytes.len()))
    })?;
    Ok((payload, total))
}

/// The payload of a complete, plain varlena.
pub fn payload(bytes: &[u8]) -> Result<&[u8], FormatError> {
    split(bytes).map(|(payload, _)| payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_headers() {
        // "hi" with a short header: (3 << 1) | 1.
        assert_eq!(head(0x07), Head::Short { total_len: 3 });
        assert_eq!(payload(&[0x07, b'h', b'i', 0xff]).unwrap(), b"hi");
        let mut long_value = ((6u32) << 2).to_le_bytes().to_vec();
        long_value.extend_from_slice(b"ok");
        assert_eq!(head(long_value[0]), Head::Long);
        assert_eq!(split(&long_value).unwrap(), (&b"ok"[..], 6));
        assert_eq!(head(0x01), Head::External);
        assert_eq!(long(0x0000_0102), Long::Compressed);
    }

    #[test]
    fn truncated_or_special_values_are_errors() {
        assert!(payload(&[]).is_err());
        assert!(payload(&[0x09, b'a']).is_err()); // claims 4 bytes, has 2
        assert!(payload(&[0x01, TAG_ONDISK]).is_err());
        assert!(payload(&[0x02, 0, 0, 0]).is_err()); // compressed
        assert!(payload(&[0x40, 0, 0]).is_err()); // long header cut short
    }
}

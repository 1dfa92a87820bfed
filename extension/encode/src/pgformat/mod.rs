//! PostgreSQL's in-memory value formats, read from plain bytes.
//!
//! The extension hands these functions the bytes behind a datum; nothing
//! here touches PostgreSQL, so every format rule is unit-tested with
//! hand-built bytes. Layouts are those of a little-endian 64-bit server
//! (x86-64, aarch64): the only targets pgcdc builds for.

pub mod array;
pub mod datetime;
pub mod numeric;
pub mod varlena;

#[cfg(target_endian = "big")]
compile_error!("pgcdc reads PostgreSQL's in-memory formats as little-endian");

/// Bytes that do not have the layout their type promises.
///
/// PostgreSQL never hands a decoder such bytes; seeing one means a bug or
/// corruption, and the caller falls back to the type's output function
/// rather than stopping the slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct FormatError {
    pub what: &'static str,
    pub detail: String,
}

impl FormatError {
    pub(crate) fn new(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError { what, detail: detail.into() }
    }
}

/// Reads `N` bytes at `at`, or fails naming `what`.
pub(crate) fn take<const N: usize>(bytes: &[u8], at: usize, what: &'static str) -> Result<[u8; N], FormatError> {
    at.checked_add(N)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| FormatError::new(what, format!("{} bytes needed at offset {at}, {} present", N, bytes.len())))
}

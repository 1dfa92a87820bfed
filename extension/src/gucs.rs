//! Server settings pgcdc reads (its own GUCs will live here too).

use pgrx::pg_sys;
use std::ffi::CStr;

/// A setting's value, whatever the current role may see; None where the
/// server has no such setting. Used for `output_plugin_libraries`, which
/// only superusers may read from SQL but every configuring role needs
/// checked.
pub fn read_unrestricted(name: &CStr) -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a pointer to
    // the setting's current string, valid until the next change; it is
    // copied at once.
    unsafe {
        let value = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned())
    }
}

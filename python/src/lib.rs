//! The native core of the `pgcdc` Python package (`pgcdc._native`): the
//! Rust reader's routes, merge and catalog calls, batches handed over by
//! the Arrow PyCapsule interface. The Python API users see is `pgcdc/`.

mod batch;
mod catalog;
mod errors;
mod readers;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    batch::register(m)?;
    readers::register(m)?;
    catalog::register(m)
}

//! Batches cross to Python by the Arrow PyCapsule interface
//! (`__arrow_c_array__`): pyarrow, polars and DuckDB take them without a
//! copy, and this crate links none of them.

use arrow_array::ffi::{from_ffi, FFI_ArrowArray};
use arrow_array::{Array, RecordBatch, StructArray};
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{ArrowError, Schema};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use std::sync::Arc;

/// A change batch of the reader, as an Arrow C array of a struct type
/// whose schema carries the batch's metadata.
#[pyclass(frozen, module = "pgcdc._native")]
pub struct Batch {
    pub batch: RecordBatch,
}

fn value_error(e: ArrowError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

#[pymethods]
impl Batch {
    /// The batch as (schema, array) capsules. A requested schema is not
    /// honoured: the protocol lets a producer give its own, and the
    /// consumer cast.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)> {
        drop(requested_schema);
        let schema = FFI_ArrowSchema::try_from(self.batch.schema().as_ref()).map_err(value_error)?;
        let array = FFI_ArrowArray::new(&StructArray::from(self.batch.clone()).to_data());
        // The capsules own the structs; a consumer moves them out (marking
        // them released), and dropping a capsule releases what is left.
        Ok((
            PyCapsule::new_with_value(py, schema, c"arrow_schema")?,
            PyCapsule::new_with_value(py, array, c"arrow_array")?,
        ))
    }

    #[getter]
    fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }
}

/// A record batch from any object of the PyCapsule interface (a
/// pyarrow.RecordBatch, a polars frame's batch…).
fn import(object: &Bound<'_, PyAny>) -> PyResult<RecordBatch> {
    if let Ok(ours) = object.cast::<Batch>() {
        return Ok(ours.get().batch.clone());
    }
    let not_a_batch = || PyTypeError::new_err("expected a record batch (an object with __arrow_c_array__)");
    let capsules = object.call_method0("__arrow_c_array__").map_err(|_| not_a_batch())?;
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = capsules.extract()?;
    let schema_ptr = schema.pointer_checked(Some(c"arrow_schema"))?.cast::<FFI_ArrowSchema>();
    let array_ptr = array.pointer_checked(Some(c"arrow_array"))?.cast::<FFI_ArrowArray>();
    // SAFETY: the capsules are named as the PyCapsule interface names its
    // structs, so they point to a valid ArrowSchema and ArrowArray; the
    // schema is only borrowed while its capsule lives, and the array is
    // moved out (from_raw marks the capsule's copy released).
    let (data, schema) = unsafe {
        let schema = schema_ptr.as_ref();
        (from_ffi(FFI_ArrowArray::from_raw(array_ptr.as_ptr()), schema).map_err(value_error)?, Schema::try_from(schema))
    };
    let schema = schema.map_err(value_error)?;
    let columns = StructArray::from(data).into_parts().1;
    RecordBatch::try_new(Arc::new(schema), columns).map_err(value_error)
}

/// The highest commit LSN of a change batch (of a marker batch, the one it
/// carries): what `ack` takes to acknowledge it.
#[pyfunction]
fn max_commit_lsn(batch: &Bound<'_, PyAny>) -> PyResult<u64> {
    pgcdc_reader::changes::max_commit_lsn(&import(batch)?)
        .ok_or_else(|| PyValueError::new_err("not a change batch: it has no _commit_lsn and no pgcdc.commit_lsn"))
}

/// Whether the batch is the marker completing a table's snapshot.
#[pyfunction]
fn completes_snapshot(batch: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(pgcdc_reader::snapshot::completes_snapshot(&import(batch)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Batch>()?;
    m.add_function(wrap_pyfunction!(max_commit_lsn, m)?)?;
    m.add_function(wrap_pyfunction!(completes_snapshot, m)?)
}

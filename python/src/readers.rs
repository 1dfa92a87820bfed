//! Route readers for Python. Each holds the Rust reader behind a lock (a
//! Python object may be used from any thread) and waits with the GIL
//! released, a slice at a time, so other threads run and Ctrl-C
//! interrupts a blocking read.

use crate::batch::Batch;
use crate::errors::{self, Error};
use pgcdc_reader::{merge_streams, ChangeReader, MergedReader, Position, ReadError};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a read waits between looks at Python's signals.
const SLICE: Duration = Duration::from_millis(100);

/// Reads with `read` until it yields, `timeout` seconds pass (None: for
/// ever), or a signal handler raises.
fn wait<T: Send>(
    py: Python<'_>,
    timeout: Option<f64>,
    mut read: impl FnMut(Duration) -> Result<Option<T>, ReadError> + Send,
) -> PyResult<Option<T>> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    loop {
        let left = deadline.map_or(SLICE, |d| d.saturating_duration_since(Instant::now()));
        if let Some(got) = py.detach(|| read(left.min(SLICE))).map_err(|e| errors::from_read(&e))? {
            return Ok(Some(got));
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}

fn position(text: &str) -> PyResult<Position> {
    text.parse().map_err(|e| PyValueError::new_err(format!("position {text:?}: {e}")))
}

/// The reader of one route; `merge` takes it over.
#[pyclass(frozen, module = "pgcdc._native")]
pub struct Reader {
    inner: Mutex<Option<ChangeReader>>,
    route: String,
}

impl Reader {
    fn lock(&self) -> PyResult<MutexGuard<'_, Option<ChangeReader>>> {
        let guard = self.inner.lock().map_err(|_| Error::new_err("a read panicked while holding the reader"))?;
        match *guard {
            Some(_) => Ok(guard),
            None => Err(Error::new_err(format!(
                "the reader of {} was given to merge_streams: read the merged stream instead",
                self.route
            ))),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ChangeReader) -> R) -> PyResult<R> {
        Ok(f(self.lock()?.as_mut().expect("checked by lock")))
    }

    /// Replaces the reader by what `f` makes of it.
    fn replace(&self, f: impl FnOnce(ChangeReader) -> ChangeReader) -> PyResult<()> {
        let mut guard = self.lock()?;
        *guard = guard.take().map(f);
        Ok(())
    }
}

#[pymethods]
impl Reader {
    /// Attaches to the ring at `path` as `consumer`, waiting up to
    /// `timeout` seconds for the worker to create it.
    #[staticmethod]
    fn open(py: Python<'_>, route: String, path: String, consumer: String, timeout: f64) -> PyResult<Reader> {
        let wait = Duration::from_secs_f64(timeout.max(0.0));
        let reader = py
            .detach(|| ChangeReader::open_waiting(path.as_ref(), &consumer, wait))
            .map_err(|e| errors::from_read(&e))?;
        Ok(Reader { inner: Mutex::new(Some(reader)), route })
    }

    #[getter]
    fn route(&self) -> &str {
        &self.route
    }

    /// The next batch, waiting up to `timeout` seconds (None: until one
    /// comes); None when none came.
    #[pyo3(signature = (timeout=None))]
    fn next_batch(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Batch>> {
        drop(self.lock()?);
        let batch = wait(py, timeout, |slice| match self.inner.lock().expect("reader lock").as_mut() {
            Some(reader) => reader.next_batch(slice),
            None => Ok(None),
        })?;
        Ok(batch.map(|batch| Batch { batch }))
    }

    /// Acknowledges the rows returned whose commit LSN is at or below
    /// `commit_lsn`.
    fn ack(&self, commit_lsn: u64) -> PyResult<()> {
        self.with(|r| r.ack(commit_lsn))
    }

    /// The position of the last row returned, to record with what the rows
    /// produced and give to `resume_at` after a restart.
    #[getter]
    fn position(&self) -> PyResult<String> {
        self.with(|r| ChangeReader::position(r).to_string())
    }

    /// Skips, and acknowledges, every row up to and including `position`.
    fn resume_at(&self, position: &str) -> PyResult<()> {
        let position = self::position(position)?;
        self.replace(|r| r.resume_at(position))
    }

    /// Skips, and acknowledges, every transaction committed at or before
    /// `commit_lsn`.
    fn resume_after(&self, commit_lsn: u64) -> PyResult<()> {
        self.replace(|r| r.resume_after(commit_lsn))
    }
}

/// Several routes' readers as one stream in commit order.
#[pyclass(frozen, module = "pgcdc._native")]
pub struct Merged {
    inner: Mutex<MergedReader>,
    routes: Vec<String>,
}

impl Merged {
    fn lock(&self) -> PyResult<MutexGuard<'_, MergedReader>> {
        self.inner.lock().map_err(|_| Error::new_err("a read panicked while holding the merged reader"))
    }
}

/// Takes over `readers` (each must not have been merged already).
#[pyfunction]
fn merge(readers: Vec<Bound<'_, Reader>>) -> PyResult<Merged> {
    let mut guards = readers.iter().map(|r| r.get().lock()).collect::<PyResult<Vec<_>>>()?;
    let taken = guards.iter_mut().map(|g| g.take().expect("checked by lock")).collect();
    let routes = readers.iter().map(|r| r.get().route.clone()).collect();
    Ok(Merged { inner: Mutex::new(merge_streams(taken)), routes })
}

#[pymethods]
impl Merged {
    /// The routes merged, in the order `position` numbers them.
    #[getter]
    fn routes(&self) -> Vec<String> {
        self.routes.clone()
    }

    /// The next batch in commit order, of at most `max_rows` rows, waiting
    /// up to `timeout` seconds (None: until one comes).
    #[pyo3(signature = (timeout=None, max_rows=None))]
    fn next_batch(&self, py: Python<'_>, timeout: Option<f64>, max_rows: Option<usize>) -> PyResult<Option<Batch>> {
        let limit = max_rows.unwrap_or(usize::MAX);
        let batch = wait(py, timeout, |slice| self.inner.lock().expect("merged lock").next_batch_up_to(slice, limit))?;
        Ok(batch.map(|batch| Batch { batch }))
    }

    /// Acknowledges, on every route, the rows returned whose commit LSN is
    /// at or below `commit_lsn`.
    fn ack(&self, commit_lsn: u64) -> PyResult<()> {
        self.lock()?.ack(commit_lsn);
        Ok(())
    }

    /// The position of the last row of route `route` (an index into
    /// `routes`) returned.
    fn position(&self, route: usize) -> PyResult<String> {
        if route >= self.routes.len() {
            return Err(PyValueError::new_err(format!("route {route}: there are {} routes", self.routes.len())));
        }
        Ok(self.lock()?.position(route).to_string())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Reader>()?;
    m.add_class::<Merged>()?;
    m.add_function(wrap_pyfunction!(merge, m)?)
}

//! Errors as Python exceptions, with the messages PostgreSQL and the
//! reader give (a SQL error keeps its DETAIL and HINT lines, as psql shows
//! them).

use pgcdc_reader::client::ClientError;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(pgcdc, Error, PyException, "Every error pgcdc raises.");
create_exception!(
    pgcdc,
    DatabaseError,
    Error,
    "PostgreSQL refused a call, or could not be reached: its message, then its DETAIL and HINT lines. \
     `sqlstate` and `hint` hold those parts (None when the connection failed)."
);
create_exception!(
    pgcdc,
    ReadError,
    Error,
    "A ring could not be read: it is not there (yet), the consumer is not registered, or its contents are damaged."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    m.add("ReadError", py.get_type::<ReadError>())
}

pub fn from_client(e: ClientError) -> PyErr {
    match e {
        ClientError::Postgres(e) => from_postgres(&e),
        ClientError::Read(e) => from_read(&e),
    }
}

pub fn from_postgres(e: &postgres::Error) -> PyErr {
    let (message, sqlstate, hint) = match e.as_db_error() {
        Some(db) => {
            let mut message = db.message().to_owned();
            for (label, text) in [("DETAIL", db.detail()), ("HINT", db.hint())] {
                if let Some(text) = text {
                    message.push_str(&format!("\n{label}:  {text}"));
                }
            }
            (message, Some(db.code().code().to_owned()), db.hint().map(str::to_owned))
        }
        None => (e.to_string(), None, None),
    };
    let err = DatabaseError::new_err(message);
    Python::attach(|py| {
        let value = err.value(py);
        // Setting attributes on a fresh exception object cannot fail.
        let _ = value.setattr("sqlstate", sqlstate);
        let _ = value.setattr("hint", hint);
    });
    err
}

pub fn from_read(e: &pgcdc_reader::ReadError) -> PyErr {
    ReadError::new_err(e.to_string())
}

//! The only file that touches pyo3: converts arguments, releases the GIL around all I/O, and maps
//! `DmaError` onto Python exceptions. Nothing here calls back into Python.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::errors::DmaError;

impl From<DmaError> for PyErr {
    fn from(err: DmaError) -> PyErr {
        match err {
            DmaError::Io { context, source } => {
                let errno = source.raw_os_error().unwrap_or(0);
                PyOSError::new_err((errno, format!("{context}: {source}")))
            }
            DmaError::Data(msg) => PyValueError::new_err(msg),
        }
    }
}

// ---- spool ------------------------------------------------------------------------------------

// ---- mailbox ----------------------------------------------------------------------------------

// ---- smtp -------------------------------------------------------------------------------------

// ---- auth -------------------------------------------------------------------------------------

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // spool registrations
    // mailbox registrations
    // smtp registrations
    // auth registrations
    Ok(())
}

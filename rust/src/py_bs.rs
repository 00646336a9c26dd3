//! The pyo3 face of `bs.rs` (kept beside `py_api` so that file does not grow): the reader that
//! owns standard input during `sendmail -bs`. Bodies go to `Incoming.receive` as a `Source`.

use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::bs::SmtpInput;

#[pyclass(module = "dma._native")]
pub struct SmtpStdin {
    /// `None` only while a body is being spooled with the GIL released.
    pub inner: Option<SmtpInput<File>>,
}

pub fn busy() -> PyErr {
    PyOSError::new_err("standard input is being read")
}

#[pymethods]
impl SmtpStdin {
    /// Read SMTP from a duplicate of descriptor `fd` (closing the duplicate leaves `fd` open).
    #[new]
    fn new(fd: RawFd) -> PyResult<Self> {
        // SAFETY: `fd` is open for this call (standard input); we read a duplicate of our own.
        let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        Ok(SmtpStdin {
            inner: Some(SmtpInput::new(File::from(dup))),
        })
    }

    /// The next command line (without CRLF, at most `max` bytes) and whether it was whole, or
    /// `None` at the end of input.
    fn command(&mut self, py: Python<'_>, max: usize) -> PyResult<Option<(Vec<u8>, bool)>> {
        let inner = self.inner.as_mut().ok_or_else(busy)?;
        Ok(py.detach(|| inner.command(max))?)
    }

    /// Read and discard the rest of a body whose spooling failed, so the session can go on.
    fn skip_data(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.as_mut().ok_or_else(busy)?;
        if inner.in_data() {
            py.detach(|| std::io::copy(&mut inner.data(), &mut std::io::sink()))?;
        }
        Ok(())
    }
}

//! The crate's error type (`py_api` maps it onto Python exceptions).

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum DmaError {
    /// An operating-system failure, with what we were doing and on which path.
    Io { context: String, source: io::Error },
    /// The input is not acceptable (a NUL byte, a malformed queue file, ...).
    Data(String),
}

pub type Result<T> = std::result::Result<T, DmaError>;

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::Io { context, source } => write!(f, "{context}: {source}"),
            DmaError::Data(msg) => f.write_str(msg),
        }
    }
}

/// Attach a context string to an I/O result (std's or rustix's).
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| DmaError::Io {
            context: what(),
            source: e.into(),
        })
    }
}

/// Run `op` again for as long as a signal interrupts it (`EINTR`).
pub fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_repeats_only_interrupted_calls() {
        let mut calls = 0;
        let got = retry(|| {
            calls += 1;
            match calls {
                1 | 2 => Err(io::ErrorKind::Interrupted.into()),
                _ => Ok(calls),
            }
        });
        assert_eq!(got.unwrap(), 3);
        let mut calls = 0;
        let failed: io::Result<()> = retry(|| {
            calls += 1;
            Err(io::ErrorKind::WouldBlock.into())
        });
        assert_eq!(
            (failed.unwrap_err().kind(), calls),
            (io::ErrorKind::WouldBlock, 1)
        );
    }
}

//! Rust core of dma: spool I/O, local mailboxes, the SMTP transport over rustls and the AUTH
//! encoders. Plain Rust modules, unit-tested without Python; `py_api` (and `py_bs`, its `-bs`
//! reader) are the only files that touch pyo3.

pub mod address;
pub mod auth;
pub mod bs;
pub mod errors;
pub mod intake;
pub mod journal;
pub mod mailbox;
pub mod reply;
pub mod smtp;
pub mod spool;
pub mod syslog;
pub mod tls;

#[cfg(test)]
mod test_util;

#[cfg(feature = "python")]
mod py_api;
#[cfg(feature = "python")]
mod py_bs;

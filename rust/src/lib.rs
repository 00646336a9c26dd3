//! Rust core of dma: spool I/O, local mailboxes, the SMTP transport over rustls and the AUTH
//! encoders. Plain Rust modules, unit-tested without Python; `py_api` is the only file that
//! touches pyo3.

pub mod address;
pub mod auth;
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

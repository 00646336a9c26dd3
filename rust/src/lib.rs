//! Rust core of dma: spool I/O, local mailboxes, the SMTP transport over rustls and the AUTH
//! encoders. Plain Rust modules, unit-tested without Python (the `python` feature off); `py_api`
//! (which declares the module) and `py_delivery` (the runner's objects) are the pyo3 face.

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
pub mod tls;
pub mod wake;

#[cfg(test)]
mod test_util;

#[cfg(feature = "python")]
mod py_api;
#[cfg(feature = "python")]
mod py_delivery;

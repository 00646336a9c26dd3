//! The module `dma._native` (declared at the end) and its spool, mailbox, syslog and AUTH functions:
//! converts arguments, releases the GIL around all I/O, and maps `DmaError` onto Python exceptions.
//! Nothing here calls back into Python.
#![allow(
    clippy::needless_pass_by_value,
    reason = "pyo3 hands arguments over as owned values"
)]

use std::fs::File;
use std::io::Read;
use std::mem::ManuallyDrop;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::errors::DmaError;
use crate::intake::{self, IntakeOptions};
use crate::py_bs::SmtpStdin;
use crate::spool::{self, Entry};

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

/// A message being received into the spool (see `Incoming` in spool.rs): the one way in.
#[pyclass(module = "dma._native")]
struct Incoming {
    inner: Option<spool::Incoming>,
    #[pyo3(get)]
    id: String,
}

fn finished() -> PyErr {
    PyValueError::new_err("this message is already committed or aborted")
}

/// Where a message comes from: a file descriptor (standard input), bytes in memory, the body of a
/// DATA under `sendmail -bs`, or a bounce's text around a spooled original (quoted whole or not).
#[derive(FromPyObject)]
enum Source<'py> {
    Fd(i32),
    Bytes(Vec<u8>),
    Smtp(Bound<'py, SmtpStdin>),
    Bounce(Vec<u8>, PathBuf, bool, Vec<u8>),
}

/// `Source` without its Python object, to be read with the GIL released.
enum Input {
    Fd(i32),
    Bytes(Vec<u8>),
    Smtp(crate::bs::SmtpInput<File>),
    Bounce(Vec<u8>, PathBuf, bool, Vec<u8>),
}

#[pymethods]
impl Incoming {
    /// `durable=False` skips the syncs; the caller ends the batch with `sync_spool`. `name`: the
    /// message id to use instead of a fresh one (see `spool::Incoming::create`).
    #[new]
    #[pyo3(signature = (spooldir, durable=true, name=None))]
    fn new(py: Python<'_>, spooldir: PathBuf, durable: bool, name: Option<String>) -> PyResult<Self> {
        let inner = py.detach(|| spool::Incoming::create(&spooldir, durable, name.as_deref()))?;
        let id = inner.id().to_owned();
        Ok(Incoming {
            inner: Some(inner),
            id,
        })
    }

    /// Read the message from `source` into the spool; returns its size there and, with
    /// `collect_recipients`, the values of its `To:`, `Cc:` and `Bcc:`.
    #[pyo3(signature = (source, *, prefix, add_if_missing, dot_terminates=false, collect_recipients=false, rewrite_from=None))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of one Python call
    fn receive(
        &mut self,
        py: Python<'_>,
        source: Source,
        prefix: Vec<u8>,
        add_if_missing: Vec<(String, Vec<u8>)>,
        dot_terminates: bool,
        collect_recipients: bool,
        rewrite_from: Option<String>,
    ) -> PyResult<(u64, Vec<String>)> {
        let mut inner = self.inner.take().ok_or_else(finished)?;
        // The `-bs` reader lends its input while the GIL is released, and gets it back after.
        let (smtp, input) = match source {
            Source::Fd(fd) => (None, Input::Fd(fd)),
            Source::Bytes(data) => (None, Input::Bytes(data)),
            Source::Smtp(s) => {
                let body = s.borrow_mut().inner.take().ok_or_else(crate::py_bs::busy)?;
                (Some(s), Input::Smtp(body))
            }
            Source::Bounce(before, path, whole, after) => (None, Input::Bounce(before, path, whole, after)),
        };
        let (inner, result, input) = py.detach(move || {
            let add: Vec<(&str, &[u8])> = add_if_missing
                .iter()
                .map(|(n, l)| (n.as_str(), l.as_slice()))
                .collect();
            let opts = IntakeOptions {
                dot_terminates,
                collect_recipients,
                prefix: &prefix,
                add_if_missing: &add,
                rewrite_from: rewrite_from.as_deref(),
            };
            let mut input = input;
            let result = match &mut input {
                Input::Fd(fd) => {
                    // SAFETY: the descriptor is the caller's, open for the call; ManuallyDrop
                    // leaves it open.
                    let file = ManuallyDrop::new(unsafe { File::from_raw_fd(*fd) });
                    inner.receive(&*file, &opts)
                }
                Input::Bytes(data) => inner.receive(data.as_slice(), &opts),
                Input::Smtp(body) => inner.receive(body.data(), &opts),
                Input::Bounce(before, path, whole, after) => intake::quoted(path, *whole)
                    .and_then(|original| inner.receive(before.chain(original).chain(&after[..]), &opts)),
            };
            (inner, result, input)
        });
        if let (Some(s), Input::Smtp(body)) = (smtp, input) {
            s.borrow_mut().inner = Some(body);
        }
        self.inner = Some(inner);
        let info = result?;
        Ok((info.size, info.recipient_headers))
    }

    /// Publish one queue entry per recipient and return their ids; with `drop` (system mode),
    /// publish into the drop directory for the runner instead (`commit_drop` in spool.rs) and
    /// return the message id. Afterwards this object is spent.
    #[pyo3(signature = (sender, recipients, dsn=String::new(), drop=false))]
    fn commit(
        &mut self,
        py: Python<'_>,
        sender: String,
        recipients: Vec<String>,
        dsn: String,
        drop: bool,
    ) -> PyResult<Vec<String>> {
        let mut inner = self.inner.take().ok_or_else(finished)?;
        inner.dsn = dsn;
        Ok(py.detach(move || {
            if drop {
                inner.commit_drop(&sender, &recipients).map(|id| vec![id])
            } else {
                inner.commit(&sender, &recipients)
            }
        })?)
    }

    /// Give up: remove everything written so far.
    fn abort(&mut self) {
        self.inner = None;
    }

    /// The (sender, recipients, DSN parameters) of a drop's envelope, as `commit` writes it.
    #[staticmethod]
    fn drop_envelope(text: &[u8]) -> PyResult<(String, Vec<String>, String)> {
        Ok(intake::parse_envelope(text)?)
    }
}

/// The message part of the entry id: for the runner's grouping and bounces.
#[pymethods]
impl Entry {
    #[getter]
    fn get_message_id(&self) -> &str {
        self.message_id()
    }
}

/// Every readable entry (oldest first) and the names of unreadable queue files.
#[pyfunction]
fn scan_queue(py: Python<'_>, spooldir: PathBuf) -> PyResult<(Vec<Entry>, Vec<String>)> {
    Ok(py.detach(|| spool::scan(&spooldir))?)
}

/// Why `address` is not an address (address.rs), or `None`: the check every way in applies.
#[pyfunction]
fn check_address(address: &str) -> Option<&'static str> {
    crate::address::check(address).err()
}

/// One `syncfs` for the spool's file system: makes a batch of `durable=False` messages durable.
#[pyfunction]
fn sync_spool(py: Python<'_>, spooldir: PathBuf) -> PyResult<()> {
    Ok(py.detach(|| spool::sync_spool(&spooldir))?)
}

/// The entry ids in the spool's delivered journals, and the journal files to remove once those
/// entries are gone (see journal.rs).
#[pyfunction]
fn journal_take(py: Python<'_>, spooldir: PathBuf) -> PyResult<(Vec<String>, Vec<String>)> {
    let (ids, journals) = py.detach(|| crate::journal::journal_take(&spooldir))?;
    Ok((
        ids,
        journals
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
    ))
}

/// Remove what crashes leave: message files without their entry, and temporary files (with the
/// entries of their uncommitted message) older than `max_age` seconds.
#[pyfunction]
fn clean_stale(py: Python<'_>, spooldir: PathBuf, max_age: u64) -> PyResult<Vec<String>> {
    Ok(py.detach(|| spool::clean_stale(&spooldir, max_age))?)
}

/// Append a spooled message to an mbox (C dma framing, mboxrd quoting), GIL released.
/// `create` = `(uid, gid, mode)` for a missing mbox; `lock_timeout` in seconds (C dma: 100).
#[pyfunction]
#[pyo3(signature = (mbox, message, sender, when, create=None, lock_timeout=100.0))]
fn mbox_append(
    py: Python<'_>,
    mbox: PathBuf,
    message: PathBuf,
    sender: &str,
    when: &str,
    create: Option<(u32, u32, u32)>,
    lock_timeout: f64,
) -> PyResult<()> {
    let timeout = Duration::try_from_secs_f64(lock_timeout)
        .map_err(|_| PyValueError::new_err(format!("invalid lock_timeout {lock_timeout}")))?;
    Ok(py.detach(|| crate::mailbox::mbox_append_timeout(&mbox, &message, sender, when, create, timeout))?)
}

/// A spooled message: its path, or a descriptor opened by the caller (left open).
#[derive(FromPyObject)]
enum MessageFile {
    Fd(RawFd),
    Path(PathBuf),
}

/// Deliver a spooled message into a Maildir, GIL released; returns the file name in `new/`.
#[pyfunction]
#[pyo3(signature = (maildir, message, hostname, create=None))]
fn maildir_deliver(
    py: Python<'_>,
    maildir: PathBuf,
    message: MessageFile,
    hostname: &str,
    create: Option<(u32, u32)>,
) -> PyResult<String> {
    Ok(py.detach(|| match message {
        MessageFile::Path(path) => crate::mailbox::maildir_deliver(&maildir, &path, hostname, create),
        MessageFile::Fd(fd) => {
            // SAFETY: the caller keeps `fd` open for this call; we read a duplicate of our own.
            let input = unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .map_err(|e| DmaError::io("reading the message", e))?;
            crate::mailbox::maildir_deliver_from(&maildir, File::from(input), hostname, create)
        }
    })?)
}

/// For a process about to hold `OAuth2` tokens: no core file and no ptrace or `/proc/PID/mem`
/// access by other processes of the same user (`PR_SET_DUMPABLE` 0 also stops a piped
/// `core_pattern`).
#[pyfunction]
fn no_core_dumps() -> PyResult<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process with valid arguments.
    if unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &raw const zero) != 0
            || libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
    } {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// One line to syslog's mail facility as `ident[pid]` (see syslog.rs).
#[pyfunction]
fn syslog(ident: &str, priority: i32, text: &str) {
    crate::syslog::send(ident, priority, text);
}

/// AUTH PLAIN initial response (base64 of `\0login\0password`).
#[pyfunction]
fn auth_plain(login: &str, password: &str) -> String {
    crate::auth::plain(login, password)
}

/// CRAM-MD5 response to a base64 challenge (base64 of `login SP hex-digest`).
#[pyfunction]
fn auth_cram_md5(login: &str, password: &str, challenge_b64: &str) -> PyResult<String> {
    crate::auth::cram_md5(login, password, challenge_b64).map_err(PyValueError::new_err)
}

/// XOAUTH2 initial response (base64).
#[pyfunction]
fn auth_xoauth2(login: &str, token: &str) -> String {
    crate::auth::xoauth2(login, token)
}

/// The extension module `dma._native`: everything it exports, in one place. `_native.pyi` describes
/// it, and `./dev lint` checks the two agree.
#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{
        auth_cram_md5, auth_plain, auth_xoauth2, check_address, clean_stale, journal_take, maildir_deliver,
        mbox_append, no_core_dumps, scan_queue, sync_spool, syslog, Incoming,
    };
    #[pymodule_export]
    use crate::py_bs::SmtpStdin;
    #[pymodule_export]
    use crate::py_delivery::{smtp_session, Connection, Outcome, SessionResult, Settings, Spool};
    #[pymodule_export]
    use crate::spool::Entry;

    #[pymodule_export]
    #[allow(non_upper_case_globals, reason = "Python's name for it")]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}

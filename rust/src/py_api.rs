//! The module `dma._native` (declared at the end) and its spool, mailbox, syslog and `-bs` reader:
//! converts arguments, releases the GIL around all I/O, and maps `DmaError` onto Python exceptions.
//! Nothing here calls back into Python.
#![allow(
    clippy::needless_pass_by_value,
    reason = "pyo3 hands arguments over as owned values"
)]

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::bs::SmtpInput;
use crate::errors::DmaError;
use crate::intake::{self, IntakeOptions};
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

/// A duplicate of the caller's descriptor `fd`: closing ours leaves theirs open.
fn dup(fd: RawFd) -> crate::errors::Result<File> {
    // SAFETY: `fd` is open for this call, and we own only the duplicate.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
    Ok(owned.map_err(|e| DmaError::io("reading the message", e))?.into())
}

fn finished() -> PyErr {
    PyValueError::new_err("this message is already committed or aborted")
}

/// Where a message comes from: a descriptor, bytes, a `-bs` DATA body (`S`: the reader, then the
/// input it lends while the GIL is released), or a bounce's text around a spooled original.
#[derive(FromPyObject)]
enum Source<S> {
    Fd(RawFd),
    Bytes(Vec<u8>),
    Smtp(S),
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
        source: Source<Bound<'_, SmtpStdin>>,
        prefix: Vec<u8>,
        add_if_missing: Vec<(String, Vec<u8>)>,
        dot_terminates: bool,
        collect_recipients: bool,
        rewrite_from: Option<String>,
    ) -> PyResult<(u64, Vec<String>)> {
        let inner = self.inner.as_mut().ok_or_else(finished)?;
        // The `-bs` reader lends its input while the GIL is released, and gets it back after.
        let (smtp, mut input) = match source {
            Source::Fd(fd) => (None, Source::Fd(fd)),
            Source::Bytes(data) => (None, Source::Bytes(data)),
            Source::Smtp(s) => {
                let body = s.borrow_mut().inner.take().ok_or_else(busy)?;
                (Some(s), Source::Smtp(body))
            }
            Source::Bounce(before, path, whole, after) => (None, Source::Bounce(before, path, whole, after)),
        };
        let result = py.detach(|| {
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
            match &mut input {
                Source::Fd(fd) => dup(*fd).and_then(|file| inner.receive(file, &opts)),
                Source::Bytes(data) => inner.receive(data.as_slice(), &opts),
                Source::Smtp(body) => inner.receive(body.data(), &opts),
                Source::Bounce(before, path, whole, after) => intake::quoted(path, *whole)
                    .and_then(|original| inner.receive(before.chain(original).chain(&after[..]), &opts)),
            }
        });
        if let (Some(s), Source::Smtp(body)) = (smtp, input) {
            s.borrow_mut().inner = Some(body);
        }
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

/// The reader that owns standard input during `sendmail -bs`; bodies go to `Incoming.receive`.
#[pyclass(module = "dma._native")]
struct SmtpStdin {
    /// `None` only while a body is being spooled with the GIL released.
    inner: Option<SmtpInput<File>>,
}

fn busy() -> PyErr {
    PyOSError::new_err("standard input is being read")
}

#[pymethods]
impl SmtpStdin {
    /// Read SMTP from a duplicate of descriptor `fd` (closing the duplicate leaves `fd` open).
    #[new]
    fn new(fd: RawFd) -> PyResult<Self> {
        Ok(SmtpStdin {
            inner: Some(SmtpInput::new(dup(fd)?)),
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

/// The entry ids in the delivered journals, and the journals to remove after them (journal.rs).
#[pyfunction]
fn journal_take(py: Python<'_>, spooldir: PathBuf) -> PyResult<(Vec<String>, Vec<OsString>)> {
    let (ids, journals) = py.detach(|| crate::journal::journal_take(&spooldir))?;
    Ok((ids, journals.into_iter().map(PathBuf::into_os_string).collect()))
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
            dup(fd).and_then(|input| crate::mailbox::maildir_deliver_from(&maildir, input, hostname, create))
        }
    })?)
}

/// For a process about to hold `OAuth2` tokens: no core file (not even to a piped `core_pattern`),
/// no ptrace or `/proc/PID/mem` access by other processes of the same user.
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

/// Everything `dma._native` exports; `./dev lint` checks that `_native.pyi` agrees.
#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{
        check_address, clean_stale, journal_take, maildir_deliver, mbox_append, no_core_dumps, scan_queue,
        sync_spool, syslog, Incoming, SmtpStdin,
    };
    #[pymodule_export]
    use crate::py_delivery::{Connection, Outcome, SessionResult, Spool};
    #[pymodule_export]
    use crate::spool::Entry;

    #[pymodule_export]
    #[allow(non_upper_case_globals, reason = "Python's name for it")]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}

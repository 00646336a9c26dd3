//! The module `dma._native` (declared at the end) and its spool, mailbox, syslog and `-bs` reader:
//! converts arguments, releases the GIL around all I/O, and maps `DmaError` onto Python exceptions
//! (an I/O failure becomes the `OSError` of its errno, which the CLI turns into a sysexits code;
//! bad input becomes `ValueError`, exit 65). Nothing here calls back into Python.
#![allow(
    clippy::needless_pass_by_value,
    reason = "pyo3 hands arguments over as owned values"
)]

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::bs::SmtpInput;
use crate::errors::{DmaError, IoContext};
use crate::intake::{self, IntakeOptions};
use crate::mailbox;
use crate::py_delivery::lock;
use crate::spool::{self, Entry, Incoming};

impl From<DmaError> for PyErr {
    fn from(err: DmaError) -> PyErr {
        match &err {
            DmaError::Io { source, .. } => {
                PyOSError::new_err((source.raw_os_error().unwrap_or(0), err.to_string()))
            }
            DmaError::Data(_) => PyValueError::new_err(err.to_string()),
        }
    }
}

/// A duplicate of the caller's descriptor `fd`: closing ours leaves theirs open.
fn dup(fd: RawFd) -> crate::errors::Result<File> {
    // SAFETY: `fd` is open for this call, and we own only the duplicate.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
    Ok(owned.context(|| "reading the message".into())?.into())
}

/// A descriptor, bytes, a `-bs` DATA body, or a bounce's text around a spooled original.
#[derive(FromPyObject)]
enum Source<'py> {
    Fd(RawFd),
    Bytes(Vec<u8>),
    Smtp(Bound<'py, SmtpStdin>),
    Bounce(Vec<u8>, PathBuf, bool, Vec<u8>),
}

#[pymethods]
impl Incoming {
    /// `durable=False` skips the syncs (the caller ends the batch with `sync_spool`); `name`
    /// replaces the fresh message id.
    #[new]
    #[pyo3(signature = (spooldir, durable=true, name=None))]
    fn new(py: Python<'_>, spooldir: PathBuf, durable: bool, name: Option<String>) -> PyResult<Self> {
        Ok(py.detach(|| Incoming::create(&spooldir, durable, name.as_deref()))?)
    }

    #[getter]
    fn get_id(&self) -> &str {
        &self.id
    }

    /// Read the message into the spool as the keywords (`IntakeOptions`) say; returns its size
    /// there and, with `collect_recipients`, the values of its `To:`, `Cc:` and `Bcc:`.
    #[pyo3(name = "receive", signature = (source, **opts))]
    fn py_receive(
        &mut self,
        py: Python<'_>,
        source: Source<'_>,
        opts: Option<IntakeOptions>,
    ) -> PyResult<(u64, Vec<String>)> {
        let opts = opts.ok_or_else(|| PyTypeError::new_err("receive() needs prefix= and add_if_missing="))?;
        Ok(match source {
            Source::Fd(fd) => py.detach(|| self.receive(dup(fd)?, &opts)),
            Source::Bytes(data) => py.detach(|| self.receive(&data[..], &opts)),
            Source::Bounce(before, path, whole, after) => py.detach(|| {
                let original = intake::quoted(&path, whole)?;
                self.receive(before.chain(original).chain(&after[..]), &opts)
            }),
            Source::Smtp(stdin) => {
                let stdin = stdin.get();
                py.detach(|| self.receive(lock(&stdin.0).data(), &opts))
            }
        }?)
    }

    /// Publish one queue entry per recipient and return their ids; with `drop` (system mode),
    /// publish into the drop directory for the runner instead and return the message id.
    /// Afterwards this object is spent.
    #[pyo3(name = "commit", signature = (sender, recipients, dsn=String::new(), drop=false))]
    fn py_commit(
        &mut self,
        py: Python<'_>,
        sender: String,
        recipients: Vec<String>,
        dsn: String,
        drop: bool,
    ) -> PyResult<Vec<String>> {
        Ok(py.detach(|| {
            if drop {
                self.commit_drop(&sender, &recipients, &dsn).map(|id| vec![id])
            } else {
                self.commit(&sender, &recipients, &dsn)
            }
        })?)
    }

    #[pyo3(name = "abort")]
    fn py_abort(&mut self) {
        self.abort();
    }

    /// The (sender, recipients, DSN parameters) of a drop's envelope, as `commit` writes it.
    #[staticmethod]
    fn drop_envelope(text: &[u8]) -> PyResult<(String, Vec<String>, String)> {
        Ok(intake::parse_envelope(text)?)
    }
}

/// The reader that owns standard input during `sendmail -bs`; bodies go to `Incoming.receive`.
#[pyclass(module = "dma._native", frozen)]
struct SmtpStdin(Mutex<SmtpInput<File>>);

#[pymethods]
impl SmtpStdin {
    #[new]
    fn new(fd: RawFd) -> PyResult<Self> {
        Ok(SmtpStdin(Mutex::new(SmtpInput::new(dup(fd)?))))
    }

    /// The next command line (without CRLF, at most `max` bytes) and whether it was whole, or
    /// `None` at the end of input.
    fn command(&self, py: Python<'_>, max: usize) -> PyResult<Option<(Vec<u8>, bool)>> {
        Ok(py.detach(|| lock(&self.0).command(max))?)
    }

    /// Read and discard the rest of a body whose spooling failed, so the session can go on.
    fn skip_data(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| lock(&self.0).skip_data())?)
    }
}

#[pymethods]
impl Entry {
    /// For the runner's grouping and bounces.
    #[getter]
    fn get_message_id(&self) -> &str {
        self.message_id()
    }
}

/// Every readable entry, or those of one message (its bounce), oldest first.
#[pyfunction]
#[pyo3(signature = (spooldir, message_id=None))]
fn scan_queue(py: Python<'_>, spooldir: PathBuf, message_id: Option<&str>) -> PyResult<Vec<Entry>> {
    Ok(py.detach(|| spool::scan(&spooldir, message_id))?)
}

/// Why `address` is not an address, or `None`: the check every way in applies.
#[pyfunction]
fn check_address(address: &str) -> Option<&'static str> {
    crate::address::check(address).err()
}

/// One `syncfs` for the spool's file system: makes a batch of `durable=False` messages durable.
#[pyfunction]
fn sync_spool(py: Python<'_>, spooldir: PathBuf) -> PyResult<()> {
    Ok(py.detach(|| spool::sync_spool(&spooldir))?)
}

/// `create` = `(uid, gid, mode)` for a missing mbox; `lock_timeout` in seconds (C dma: 100).
#[pyfunction]
fn mbox_append(
    py: Python<'_>,
    mbox: PathBuf,
    message: PathBuf,
    sender: &str,
    when: &str,
    create: (u32, u32, u32),
    #[pyo3(from_py_with = crate::py_delivery::seconds)] lock_timeout: Duration,
) -> PyResult<()> {
    Ok(py.detach(|| mailbox::mbox_append(&mbox, &message, sender, when, create, lock_timeout))?)
}

/// A spooled message: its path, or a descriptor opened by the caller (left open).
#[derive(FromPyObject)]
enum MessageFile {
    Fd(RawFd),
    Path(PathBuf),
}

/// Returns the file name in `new/`.
#[pyfunction]
fn maildir_deliver(
    py: Python<'_>,
    maildir: PathBuf,
    message: MessageFile,
    hostname: &str,
) -> PyResult<String> {
    Ok(py.detach(|| {
        let input = match message {
            MessageFile::Fd(fd) => dup(fd)?,
            MessageFile::Path(path) => {
                File::open(&path).context(|| format!("can not open {}", path.display()))?
            }
        };
        mailbox::maildir_deliver(&maildir, input, hostname)
    })?)
}

/// For a process about to hold `OAuth2` tokens: no core file (not even to a piped `core_pattern`),
/// no ptrace or `/proc/PID/mem` access by other processes of the same user.
#[pyfunction]
fn no_core_dumps() -> PyResult<()> {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, zero)
        .and_then(|()| set_dumpable_behavior(DumpableBehavior::NotDumpable))
        .map_err(|e| std::io::Error::from(e).into())
}

/// One line at `priority` (a `LOG_*` level) to the mail facility as `ident[pid]`, through the C
/// library: logging costs Python no module import on the submission path.
#[pyfunction]
fn syslog(ident: &str, priority: i32, text: &str) {
    /// The ident given to `openlog` must outlive every later `syslog` call: it is kept here, set
    /// once per process (one program, one `-L` tag).
    static IDENT: OnceLock<CString> = OnceLock::new();
    let ident = IDENT.get_or_init(|| CString::new(ident.replace('\0', "")).unwrap_or_default());
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    // SAFETY: NUL-terminated strings; `ident` is static, as openlog requires; the format
    // consumes exactly the one argument given.
    unsafe {
        libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_MAIL);
        libc::syslog(libc::LOG_MAIL | (priority & 7), c"%s".as_ptr(), text.as_ptr());
    }
}

/// Everything `dma._native` exports; `./dev lint` checks that `_native.pyi` agrees.
#[pymodule]
mod _native {
    #[pymodule_export]
    use super::{
        check_address, maildir_deliver, mbox_append, no_core_dumps, scan_queue, sync_spool, syslog, SmtpStdin,
    };
    #[pymodule_export]
    use crate::py_delivery::{Connection, Outcome, SessionResult, Spool};
    #[pymodule_export]
    use crate::spool::{Entry, Incoming};

    #[pymodule_export]
    #[allow(non_upper_case_globals, reason = "Python's name for it")]
    const __version__: &str = env!("CARGO_PKG_VERSION");
}

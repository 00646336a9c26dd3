//! The only file that touches pyo3: converts arguments, releases the GIL around all I/O, and maps
//! `DmaError` onto Python exceptions. Nothing here calls back into Python.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::errors::DmaError;
use crate::intake::{IntakeOptions, MessageInfo as RustMessageInfo};
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

// ---- spool ------------------------------------------------------------------------------------

/// A message being received into the spool (see `Incoming` in spool.rs).
#[pyclass(module = "dma._native")]
struct Incoming {
    inner: Option<spool::Incoming>,
    id: String,
}

#[pyclass(module = "dma._native", frozen, get_all)]
struct MessageInfo {
    input_bytes: u64,
    size: u64,
    eight_bit: bool,
    recipient_headers: Vec<String>,
}

impl From<RustMessageInfo> for MessageInfo {
    fn from(i: RustMessageInfo) -> Self {
        MessageInfo {
            input_bytes: i.input_bytes,
            size: i.size,
            eight_bit: i.eight_bit,
            recipient_headers: i.recipient_headers,
        }
    }
}

fn finished() -> PyErr {
    PyValueError::new_err("this message is already committed or aborted")
}

/// Where a message comes from: a file descriptor (standard input), bytes in memory, or the body
/// of a DATA under `sendmail -bs`.
#[derive(FromPyObject)]
enum Source<'py> {
    Fd(i32),
    Bytes(Vec<u8>),
    Smtp(Bound<'py, SmtpStdin>),
}

/// `Source` without its Python object, to be read with the GIL released.
enum Input {
    Fd(i32),
    Bytes(Vec<u8>),
    Smtp(crate::bs::SmtpInput<File>),
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

    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// Read the message from `source` (a file descriptor, left open, bytes, or the next body of an
    /// `SmtpStdin`) into the spool.
    #[pyo3(signature = (source, *, prefix, add_if_missing, dot_terminates, collect_recipients, rewrite_from=None))]
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &mut self,
        py: Python<'_>,
        source: Source,
        prefix: Vec<u8>,
        add_if_missing: Vec<(String, Vec<u8>)>,
        dot_terminates: bool,
        collect_recipients: bool,
        rewrite_from: Option<String>,
    ) -> PyResult<MessageInfo> {
        let mut inner = self.inner.take().ok_or_else(finished)?;
        // The `-bs` reader leaves its Python object while the GIL is released, and returns after.
        let (smtp, input) = match source {
            Source::Fd(fd) => (None, Input::Fd(fd)),
            Source::Bytes(data) => (None, Input::Bytes(data)),
            Source::Smtp(s) => {
                let body = s.borrow_mut().inner.take().ok_or_else(crate::py_bs::busy)?;
                (Some(s), Input::Smtp(body))
            }
        };
        let (inner, result, body) = py.detach(move || {
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
            let (result, body) = match input {
                Input::Fd(fd) => {
                    // SAFETY: the descriptor belongs to the caller; ManuallyDrop keeps it open.
                    let input = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
                    (inner.receive(&*input, &opts), None)
                }
                Input::Bytes(data) => (inner.receive(data.as_slice(), &opts), None),
                Input::Smtp(mut body) => (inner.receive(body.data(), &opts), Some(body)),
            };
            (inner, result, body)
        });
        if let Some(s) = smtp {
            s.borrow_mut().inner = body;
        }
        self.inner = Some(inner);
        Ok(result?.into())
    }

    /// Publish one queue entry per recipient; returns their ids. Afterwards this object is spent.
    #[pyo3(signature = (sender, recipients, dsn=String::new()))]
    fn commit(
        &mut self,
        py: Python<'_>,
        sender: String,
        recipients: Vec<String>,
        dsn: String,
    ) -> PyResult<Vec<String>> {
        let mut inner = self.inner.take().ok_or_else(finished)?;
        inner.dsn = dsn;
        Ok(py.detach(move || inner.commit(&sender, &recipients))?)
    }

    /// System mode: publish into the drop directory for the runner (see `commit_drop` in spool.rs).
    #[pyo3(signature = (sender, recipients, dsn=String::new()))]
    fn commit_drop(
        &mut self,
        py: Python<'_>,
        sender: String,
        recipients: Vec<String>,
        dsn: String,
    ) -> PyResult<String> {
        let mut inner = self.inner.take().ok_or_else(finished)?;
        inner.dsn = dsn;
        Ok(py.detach(move || inner.commit_drop(&sender, &recipients))?)
    }

    /// Give up: remove everything written so far.
    fn abort(&mut self) {
        self.inner = None;
    }
}

#[pyclass(module = "dma._native", frozen, get_all)]
struct QueueEntry {
    id: String,
    message_id: String,
    sender: String,
    recipient: String,
    created: u64,
    size: u64,
    attempts: u32,
    next_attempt: u64,
    last_error: String,
    state: String,
    dsn: String,
}

impl From<&Entry> for QueueEntry {
    fn from(e: &Entry) -> Self {
        QueueEntry {
            id: e.id.clone(),
            message_id: e.message_id().to_owned(),
            sender: e.sender.clone(),
            recipient: e.recipient.clone(),
            created: e.created,
            size: e.size,
            attempts: e.attempts,
            next_attempt: e.next_attempt,
            last_error: e.last_error.clone(),
            state: e.state.clone(),
            dsn: e.dsn.clone(),
        }
    }
}

/// Every readable entry (oldest first) and the names of unreadable queue files.
#[pyfunction]
fn scan_queue(py: Python<'_>, spooldir: PathBuf) -> PyResult<(Vec<QueueEntry>, Vec<String>)> {
    let (entries, malformed) = py.detach(|| spool::scan(&spooldir))?;
    Ok((entries.iter().map(QueueEntry::from).collect(), malformed))
}

/// An entry held by this process (see `Claim` in spool.rs).
#[pyclass(module = "dma._native")]
struct Claim {
    inner: Option<spool::Claim>,
}

fn released() -> PyErr {
    PyValueError::new_err("this entry is no longer claimed")
}

/// Take an entry unless another process holds it; `None` when held elsewhere or gone.
#[pyfunction]
fn claim(py: Python<'_>, spooldir: PathBuf, id: String) -> PyResult<Option<Claim>> {
    let claimed = py.detach(|| spool::claim(&spooldir, &id))?;
    Ok(claimed.map(|c| Claim { inner: Some(c) }))
}

#[pymethods]
impl Claim {
    #[getter]
    fn entry(&self) -> PyResult<QueueEntry> {
        Ok(QueueEntry::from(&self.inner.as_ref().ok_or_else(released)?.entry))
    }

    #[getter]
    fn message_path(&self) -> PyResult<PathBuf> {
        Ok(self.inner.as_ref().ok_or_else(released)?.message_path())
    }

    /// Durably record the entry's new state.
    #[pyo3(signature = (*, attempts, next_attempt, last_error, state))]
    fn record(
        &mut self,
        py: Python<'_>,
        attempts: u32,
        next_attempt: u64,
        last_error: String,
        state: String,
    ) -> PyResult<()> {
        let claim = self.inner.as_mut().ok_or_else(released)?;
        let entry = Entry {
            attempts,
            next_attempt,
            last_error,
            state,
            ..claim.entry.clone()
        };
        Ok(py.detach(|| claim.record(entry))?)
    }

    /// The entry is finished: remove it from the spool.
    /// The entry is finished: remove it from the spool. `sync=False` leaves the directory sync to
    /// a later `sync_dir` (for many removals at once).
    #[pyo3(signature = (sync=true))]
    fn remove(&mut self, py: Python<'_>, sync: bool) -> PyResult<()> {
        let claim = self.inner.take().ok_or_else(released)?;
        Ok(py.detach(move || claim.remove(sync))?)
    }

    /// Let other processes take the entry again.
    fn release(&mut self) {
        self.inner = None;
    }
}

/// Why `address` is not an address (address.rs), or `None`: the check every way in applies.
#[pyfunction]
fn check_address(address: &str) -> Option<&'static str> {
    crate::address::check(address).err()
}

/// Sync the spool directory itself (after removals made with `sync=False`).
#[pyfunction]
fn sync_dir(py: Python<'_>, spooldir: PathBuf) -> PyResult<()> {
    Ok(py.detach(|| spool::fsync_dir(&spooldir))?)
}

/// One `syncfs` for the spool's file system: makes a batch of `durable=False` messages durable.
#[pyfunction]
fn sync_spool(py: Python<'_>, spooldir: PathBuf) -> PyResult<()> {
    Ok(py.detach(|| spool::sync_spool(&spooldir))?)
}

/// The entry ids in the spool's delivered journals, and the journal files to remove once those
/// entries are gone (see journal.rs).
#[pyfunction]
fn journal_take(py: Python<'_>, spooldir: PathBuf) -> PyResult<(Vec<String>, Vec<PathBuf>)> {
    Ok(py.detach(|| crate::journal::journal_take(&spooldir))?)
}

/// Remove what crashes leave: message files without their entry, and temporary files (with the
/// entries of their uncommitted message) older than `max_age` seconds.
#[pyfunction]
fn clean_stale(py: Python<'_>, spooldir: PathBuf, max_age: u64) -> PyResult<Vec<String>> {
    Ok(py.detach(|| spool::clean_stale(&spooldir, max_age))?)
}

// ---- mailbox ----------------------------------------------------------------------------------

/// Append a spooled message to an mbox (C dma framing, mboxrd quoting), GIL released.
/// `create` = `(uid, gid, mode)` for a missing mbox; `lock_timeout` in seconds (C dma: 100).
#[pyfunction]
#[pyo3(signature = (mbox, message, sender, when, create=None, lock_timeout=100.0))]
fn mbox_append(
    py: Python<'_>,
    mbox: std::path::PathBuf,
    message: std::path::PathBuf,
    sender: &str,
    when: &str,
    create: Option<(u32, u32, u32)>,
    lock_timeout: f64,
) -> PyResult<()> {
    let timeout = std::time::Duration::try_from_secs_f64(lock_timeout)
        .map_err(|_| PyValueError::new_err(format!("invalid lock_timeout {lock_timeout}")))?;
    py.detach(|| crate::mailbox::mbox_append_timeout(&mbox, &message, sender, when, create, timeout))?;
    Ok(())
}

/// A spooled message: its path, or a descriptor opened by the caller (left open).
#[derive(FromPyObject)]
enum MessageFile {
    Fd(i32),
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
            // SAFETY: `fd` is the caller's open descriptor; we read a duplicate (close-on-exec,
            // as every descriptor we open) and close only that.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(crate::errors::DmaError::io(
                    "reading the message",
                    std::io::Error::last_os_error(),
                ));
            }
            let input = unsafe { File::from_raw_fd(dup) };
            crate::mailbox::maildir_deliver_from(&maildir, input, hostname, create)
        }
    })?)
}

// ---- syslog -----------------------------------------------------------------------------------

/// One line to syslog's mail facility as `ident[pid]` (see syslog.rs).
/// For a process about to hold OAuth2 tokens: no core file and no ptrace or /proc/PID/mem
/// access by other processes of the same user (PR_SET_DUMPABLE 0 also stops piped core_pattern).
#[pyfunction]
fn no_core_dumps() -> PyResult<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process with valid arguments.
    if unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 || libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
    } {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[pyfunction]
fn syslog(ident: &str, priority: i32, text: &str) {
    crate::syslog::send(ident, priority, text);
}

// ---- smtp -------------------------------------------------------------------------------------

/// What happened to one recipient in an SMTP session.
#[pyclass(module = "dma._native", frozen, get_all, skip_from_py_object)]
#[derive(Clone)]
struct Outcome {
    status: &'static str,
    stage: &'static str,
    code: u16,
    enhanced: Option<String>,
    text: String,
}

#[pymethods]
impl Outcome {
    fn __repr__(&self) -> String {
        format!(
            "Outcome(status={:?}, stage={:?}, code={}, enhanced={:?}, text={:?})",
            self.status, self.stage, self.code, self.enhanced, self.text
        )
    }
}

impl From<crate::smtp::Outcome> for Outcome {
    fn from(o: crate::smtp::Outcome) -> Self {
        Outcome {
            status: o.status.as_str(),
            stage: o.stage.as_str(),
            code: o.code,
            enhanced: o.enhanced,
            text: o.text,
        }
    }
}

/// The result of `smtp_session`: per-transaction, per-recipient outcomes and session facts.
#[pyclass(module = "dma._native", frozen, get_all)]
struct SessionResult {
    results: Vec<Vec<Outcome>>,
    address: Option<String>,
    tls_version: Option<String>,
    tls_cipher: Option<String>,
    peer_cert_sha256: Option<String>,
    auth_mechanism: Option<&'static str>,
    extensions: Vec<String>,
    failure: Option<Outcome>,
}

#[pymethods]
impl SessionResult {
    fn __repr__(&self) -> String {
        format!(
            "SessionResult(address={:?}, tls_version={:?}, auth_mechanism={:?}, results={} transactions)",
            self.address,
            self.tls_version,
            self.auth_mechanism,
            self.results.len()
        )
    }
}

impl From<crate::smtp::SessionReport> for SessionResult {
    fn from(r: crate::smtp::SessionReport) -> Self {
        let tls = r.tls;
        SessionResult {
            results: r
                .results
                .into_iter()
                .map(|tx| tx.into_iter().map(Outcome::from).collect())
                .collect(),
            address: r.address.map(|a| a.to_string()),
            tls_version: tls.as_ref().map(|t| t.version.clone()),
            tls_cipher: tls.as_ref().map(|t| t.cipher.clone()),
            peer_cert_sha256: tls.and_then(|t| t.peer_cert_sha256),
            auth_mechanism: r.auth_mechanism.map(crate::auth::Mechanism::name),
            extensions: r.extensions,
            failure: r.failure.map(Outcome::from),
        }
    }
}

fn smtp_value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

fn smtp_duration(name: &str, secs: f64) -> PyResult<std::time::Duration> {
    if secs.is_nan() || secs <= 0.0 {
        return Err(smtp_value_error(format!("{name} must be positive, not {secs}")));
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| smtp_value_error(format!("invalid {name} {secs}")))
}

/// One SMTP connection carrying whole transactions; the GIL is released for all of it.
#[pyfunction]
#[pyo3(signature = (
    host, addresses, port, helo, transactions, *, tls="none", verify_cert=false, ca_file=None,
    fingerprint=None, client_cert=None, login=None, secret=None, mechanisms=None,
    allow_insecure_auth=false, connect_timeout=30.0, command_timeout=300.0, verbose=false,
    journal=None, journal_ids=None, dsn=None
))]
#[allow(clippy::too_many_arguments)]
fn smtp_session(
    py: Python<'_>,
    host: String,
    addresses: Vec<String>,
    port: u16,
    helo: String,
    transactions: Vec<(String, Vec<String>, std::path::PathBuf)>,
    tls: &str,
    verify_cert: bool,
    ca_file: Option<std::path::PathBuf>,
    fingerprint: Option<Vec<u8>>,
    client_cert: Option<std::path::PathBuf>,
    login: Option<String>,
    secret: Option<String>,
    mechanisms: Option<Vec<String>>,
    allow_insecure_auth: bool,
    connect_timeout: f64,
    command_timeout: f64,
    verbose: bool,
    journal: Option<PathBuf>,
    journal_ids: Option<Vec<Vec<String>>>,
    dsn: Option<Vec<String>>,
) -> PyResult<SessionResult> {
    let addresses = addresses
        .iter()
        .map(|a| {
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map_err(|_| smtp_value_error(format!("not an IP address: {a:?}")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    if helo.is_empty() || helo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(smtp_value_error(format!("invalid helo name {helo:?}")));
    }
    let fingerprint = fingerprint
        .map(|f| {
            <[u8; 32]>::try_from(f.as_slice()).map_err(|_| {
                smtp_value_error(format!("fingerprint must be 32 bytes (SHA-256), not {}", f.len()))
            })
        })
        .transpose()?;
    let mechanisms = mechanisms
        .map(|names| {
            names
                .iter()
                .map(|n| n.parse::<crate::auth::Mechanism>().map_err(smtp_value_error))
                .collect::<PyResult<Vec<_>>>()
        })
        .transpose()?;
    let credentials = match (login, secret) {
        (Some(login), Some(secret)) => Some(crate::smtp::Credentials { login, secret }),
        (None, None) => None,
        _ => return Err(smtp_value_error("login and secret go together")),
    };
    let cfg = crate::smtp::SessionConfig {
        host,
        addresses,
        port,
        helo,
        tls_mode: tls.parse().map_err(smtp_value_error)?,
        tls: crate::tls::TlsPolicy {
            verify: verify_cert,
            ca_file,
            fingerprint,
            client_cert,
        },
        credentials,
        mechanisms,
        allow_insecure_auth,
        connect_timeout: smtp_duration("connect_timeout", connect_timeout)?,
        command_timeout: smtp_duration("command_timeout", command_timeout)?,
        verbose,
        journal,
    };
    let mut journal_ids = journal_ids.unwrap_or_default().into_iter();
    let mut dsn = dsn.unwrap_or_default().into_iter();
    let transactions: Vec<crate::smtp::Transaction> = transactions
        .into_iter()
        .map(|(sender, recipients, message)| crate::smtp::Transaction {
            sender,
            recipients,
            message,
            journal_ids: journal_ids.next().unwrap_or_default(),
            dsn: dsn.next().unwrap_or_default(),
        })
        .collect();
    let report = py.detach(|| crate::smtp::run_session(&cfg, &transactions));
    Ok(report.into())
}

// ---- auth -------------------------------------------------------------------------------------

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

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // spool registrations
    m.add_class::<Incoming>()?;
    m.add_class::<MessageInfo>()?;
    m.add_class::<QueueEntry>()?;
    m.add_class::<Claim>()?;
    m.add_class::<SmtpStdin>()?;
    m.add_function(wrap_pyfunction!(check_address, m)?)?;
    m.add_function(wrap_pyfunction!(scan_queue, m)?)?;
    m.add_function(wrap_pyfunction!(claim, m)?)?;
    m.add_function(wrap_pyfunction!(clean_stale, m)?)?;
    m.add_function(wrap_pyfunction!(journal_take, m)?)?;
    m.add_function(wrap_pyfunction!(sync_spool, m)?)?;
    m.add_function(wrap_pyfunction!(sync_dir, m)?)?;
    m.add_function(wrap_pyfunction!(syslog, m)?)?;
    m.add_function(wrap_pyfunction!(no_core_dumps, m)?)?;
    // mailbox registrations
    m.add_function(wrap_pyfunction!(mbox_append, m)?)?;
    m.add_function(wrap_pyfunction!(maildir_deliver, m)?)?;
    // smtp registrations
    m.add_class::<Outcome>()?;
    m.add_class::<SessionResult>()?;
    m.add_function(wrap_pyfunction!(smtp_session, m)?)?;
    // auth registrations
    m.add_function(wrap_pyfunction!(auth_plain, m)?)?;
    m.add_function(wrap_pyfunction!(auth_cram_md5, m)?)?;
    m.add_function(wrap_pyfunction!(auth_xoauth2, m)?)?;
    Ok(())
}

//! The delivery half of the Python API: the runner's spool object (due entries, claims, records,
//! the wake-up wait), per-destination SMTP settings, and connections kept open between batches.
//! Paths cross as `str`; the GIL is released for every wait and all I/O.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::py_api::{path_str, QueueEntry};
use crate::smtp::{Client, SessionConfig, Transaction};
use crate::spool::{self, Entry};
use crate::wake::Waker;

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
    /// For `Connection.send`: each entry id's outcome.
    entries: HashMap<String, Outcome>,
    address: Option<String>,
    tls_version: Option<String>,
    tls_cipher: Option<String>,
    peer_cert_sha256: Option<String>,
    tls_resumed: bool,
    auth_mechanism: Option<&'static str>,
    extensions: Vec<String>,
    failure: Option<Outcome>,
}

impl From<crate::smtp::SessionReport> for SessionResult {
    fn from(r: crate::smtp::SessionReport) -> Self {
        let tls = r.tls;
        SessionResult {
            entries: HashMap::new(),
            results: r
                .results
                .into_iter()
                .map(|tx| tx.into_iter().map(Outcome::from).collect())
                .collect(),
            address: r.address.map(|a| a.to_string()),
            tls_version: tls.as_ref().map(|t| t.version.clone()),
            tls_cipher: tls.as_ref().map(|t| t.cipher.clone()),
            tls_resumed: tls.as_ref().is_some_and(|t| t.resumed),
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

/// Everything a session to one destination needs: one object per destination and host.
#[pyclass(module = "dma._native", frozen)]
struct Settings(Arc<SessionConfig>);

#[pymethods]
impl Settings {
    #[new]
    #[pyo3(signature = (
        host, addresses, port, helo, *, tls="none", verify_cert=false, ca_file=None,
        fingerprint=None, client_cert=None, login=None, secret=None, mechanisms=None,
        allow_insecure_auth=false, connect_timeout=30.0, command_timeout=300.0, verbose=false,
        journal=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        addresses: Vec<String>,
        port: u16,
        helo: String,
        tls: &str,
        verify_cert: bool,
        ca_file: Option<PathBuf>,
        fingerprint: Option<Vec<u8>>,
        client_cert: Option<PathBuf>,
        login: Option<String>,
        secret: Option<String>,
        mechanisms: Option<Vec<String>>,
        allow_insecure_auth: bool,
        connect_timeout: f64,
        command_timeout: f64,
        verbose: bool,
        journal: Option<PathBuf>,
    ) -> PyResult<Self> {
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
        Ok(Settings(Arc::new(crate::smtp::SessionConfig {
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
        })))
    }
}

/// One SMTP connection carrying whole transactions `(sender, recipients, message file)`, then
/// QUIT; the GIL is released for all of it.
#[pyfunction]
fn smtp_session(
    py: Python<'_>,
    settings: &Settings,
    transactions: Vec<(String, Vec<String>, PathBuf)>,
) -> SessionResult {
    let transactions: Vec<Transaction> = transactions
        .into_iter()
        .map(|(sender, recipients, message)| Transaction {
            sender,
            recipients,
            message,
            journal_ids: Vec::new(),
            dsn: String::new(),
        })
        .collect();
    py.detach(|| crate::smtp::run_session(&settings.0, &transactions))
        .into()
}

/// A connection kept open between batches (the runner's connection cache).
#[pyclass(module = "dma._native", frozen)]
struct Connection(Mutex<Client>);

#[pymethods]
impl Connection {
    #[new]
    fn new(settings: &Settings) -> Self {
        Connection(Mutex::new(Client::new(settings.0.clone())))
    }

    /// Carry one transaction per group of claimed entries (the recipients of one message), on
    /// this connection while the server keeps it, else on a new one. Outcomes by entry id.
    fn send(&self, py: Python<'_>, spool: &Spool, groups: Vec<Vec<String>>) -> PyResult<SessionResult> {
        let transactions = {
            let claims = spool.claims();
            let mut transactions = Vec::with_capacity(groups.len());
            for ids in &groups {
                let entries = ids
                    .iter()
                    .map(|id| claims.get(id).ok_or_else(|| not_claimed(id)))
                    .collect::<PyResult<Vec<_>>>()?;
                let Some(first) = entries.first() else { continue };
                transactions.push(Transaction {
                    sender: first.entry.sender.clone(),
                    recipients: entries.iter().map(|c| c.entry.recipient.clone()).collect(),
                    message: first.message_path(),
                    journal_ids: ids.clone(),
                    // NOTIFY/RET/ENVID as submitted (`-N`, `-R`, `-V`): one message, one set.
                    dsn: first.entry.dsn.clone(),
                });
            }
            transactions
        };
        let report = py.detach(|| lock(&self.0).send(&transactions));
        let mut result = SessionResult::from(report);
        for (ids, outcomes) in groups.iter().filter(|g| !g.is_empty()).zip(&result.results) {
            result
                .entries
                .extend(ids.iter().cloned().zip(outcomes.iter().cloned()));
        }
        Ok(result)
    }

    /// QUIT, if open.
    fn close(&self, py: Python<'_>) {
        py.detach(|| lock(&self.0).close());
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn not_claimed(id: &str) -> PyErr {
    PyValueError::new_err(format!("entry {id} is not claimed"))
}

/// The runner's view of one spool: due entries, the claims it holds (by entry id), their records,
/// and the wait for new work.
#[pyclass(module = "dma._native", frozen)]
struct Spool {
    dir: PathBuf,
    claims: Mutex<HashMap<String, spool::Claim>>,
    waker: Waker,
    /// `<spool>/lock`, while this is the spool's one runner.
    lock: Mutex<Option<std::fs::File>>,
}

impl Spool {
    fn claims(&self) -> MutexGuard<'_, HashMap<String, spool::Claim>> {
        lock(&self.claims)
    }

    fn take(&self, id: &str) -> PyResult<spool::Claim> {
        self.claims().remove(id).ok_or_else(|| not_claimed(id))
    }
}

const FINAL_STATES: [&str; 2] = ["failed", "held"];

#[pymethods]
impl Spool {
    /// `drop`: the drop directory, whose new envelopes also wake `wait`.
    #[new]
    #[pyo3(signature = (spooldir, drop=None))]
    fn new(spooldir: PathBuf, drop: Option<PathBuf>) -> PyResult<Self> {
        let waker = Waker::new(&spooldir, drop.as_deref())
            .map_err(|e| crate::errors::DmaError::io(format!("can not watch `{}'", spooldir.display()), e))?;
        Ok(Spool {
            dir: spooldir,
            claims: Mutex::new(HashMap::new()),
            waker,
            lock: Mutex::new(None),
        })
    }

    /// Become the spool's one runner (`flock` on `<spool>/lock`); false if another process is.
    fn lock(&self) -> PyResult<bool> {
        let path = self.dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| crate::errors::DmaError::io(format!("can not open `{}'", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {
                *lock(&self.lock) = Some(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(crate::errors::DmaError::io(format!("can not lock `{}'", path.display()), e).into())
            }
        }
    }

    fn unlock(&self) {
        *lock(&self.lock) = None;
    }

    /// One scan: the entries due at `now` (all pending ones with `force`) that nobody holds
    /// here, oldest first; the earliest later retry; and the messages with a failed entry.
    fn due(
        &self,
        py: Python<'_>,
        now: u64,
        force: bool,
    ) -> PyResult<(Vec<QueueEntry>, Option<u64>, Vec<String>)> {
        let (entries, _) = py.detach(|| spool::scan(&self.dir))?;
        let held = self.claims();
        let (mut due, mut next, mut failed) = (Vec::new(), None::<u64>, Vec::new());
        for e in &entries {
            if e.state == "failed" && !failed.iter().any(|m: &String| m == e.message_id()) {
                failed.push(e.message_id().to_owned());
            }
            if FINAL_STATES.contains(&e.state.as_str()) || held.contains_key(&e.id) {
                continue;
            }
            if force || e.next_attempt <= now {
                due.push(QueueEntry::from(e));
            } else {
                next = Some(next.map_or(e.next_attempt, |n| n.min(e.next_attempt)));
            }
        }
        Ok((due, next, failed))
    }

    /// Every entry of one message, unclaimed: for deciding on its bounce.
    fn message_entries(&self, py: Python<'_>, message_id: &str) -> PyResult<Vec<QueueEntry>> {
        let (entries, _) = py.detach(|| spool::scan_message(&self.dir, &format!("{message_id}.")))?;
        Ok(entries.iter().map(QueueEntry::from).collect())
    }

    /// Claim these entries; returns the ones we now hold (others are held elsewhere, or gone).
    fn claim(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<Vec<QueueEntry>> {
        let claimed = py.detach(|| {
            ids.iter()
                .filter_map(|id| spool::claim(&self.dir, id).transpose())
                .collect::<crate::errors::Result<Vec<_>>>()
        })?;
        let entries = claimed.iter().map(|c| QueueEntry::from(&c.entry)).collect();
        self.claims()
            .extend(claimed.into_iter().map(|c| (c.entry.id.clone(), c)));
        Ok(entries)
    }

    fn message_path(&self, id: &str) -> PyResult<String> {
        let claims = self.claims();
        Ok(path_str(
            &claims.get(id).ok_or_else(|| not_claimed(id))?.message_path(),
        ))
    }

    /// Durably record a claimed entry's new state, and let it go.
    #[pyo3(signature = (id, *, attempts, next_attempt, last_error, state))]
    fn record(
        &self,
        py: Python<'_>,
        id: &str,
        attempts: u32,
        next_attempt: u64,
        last_error: String,
        state: String,
    ) -> PyResult<()> {
        let mut claim = self.take(id)?;
        let entry = Entry {
            attempts,
            next_attempt,
            last_error,
            state,
            ..claim.entry.clone()
        };
        Ok(py.detach(|| claim.record(entry))?)
    }

    /// A claimed entry is finished: remove it (made durable by the next `sync`).
    fn remove(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        let claim = self.take(id)?;
        Ok(py.detach(|| claim.remove(false))?)
    }

    /// Let a claimed entry go unchanged.
    fn release(&self, id: &str) {
        self.claims().remove(id);
    }

    /// Sync the spool directory (after removals).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| spool::fsync_dir(&self.dir))?)
    }

    /// Sleep until new mail, a `wake` or `flush`, a `notify`, a signal, or `timeout` seconds.
    /// Returns (work, flush); a signal handler's exception is raised here.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<(bool, bool)> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        let woken = py
            .detach(|| self.waker.wait(timeout))
            .map_err(|e| crate::errors::DmaError::io("waiting for mail", e))?;
        py.check_signals()?;
        Ok((woken.work, woken.flush))
    }

    /// Wake a `wait` (from a delivery thread whose work is done).
    fn notify(&self) {
        self.waker.notify();
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Outcome>()?;
    m.add_class::<SessionResult>()?;
    m.add_class::<Settings>()?;
    m.add_class::<Connection>()?;
    m.add_class::<Spool>()?;
    m.add_function(wrap_pyfunction!(smtp_session, m)?)?;
    Ok(())
}

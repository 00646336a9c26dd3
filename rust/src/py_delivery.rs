//! The delivery half of the Python API: the runner's spool object, and one SMTP connection per
//! destination kept open between batches. The GIL is released for every wait and all I/O.

use std::collections::HashMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::fs::{File, TryLockError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDict, PyString};

use crate::auth::Mechanism;
use crate::errors::IoContext;
use crate::smtp::{self, Client, SessionConfig, Stage, Status, TlsMode, Transaction};
pub use crate::smtp::{Outcome, SessionResult};
use crate::spool::{self, Claim, Entry};
use crate::wake::Waker;

/// Python reads a status, a stage or a mechanism as its name.
macro_rules! as_py_str {
    ($($t:ty: $name:path),*) => {$(
        impl<'py> IntoPyObject<'py> for $t {
            type Target = PyString;
            type Output = Bound<'py, PyString>;
            type Error = Infallible;

            fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
                Ok(PyString::new(py, &$name(self)))
            }
        }
    )*};
}

as_py_str!(Stage: smtp::name, Status: smtp::name, Mechanism: Mechanism::name);

/// Python gives a TLS mode or a mechanism by its name.
macro_rules! from_py_str {
    ($($t:ty),*) => {$(
        impl FromPyObject<'_, '_> for $t {
            type Error = PyErr;

            fn extract(ob: Borrowed<'_, '_, PyAny>) -> PyResult<Self> {
                ob.extract::<PyBackedStr>()?.parse().map_err(PyValueError::new_err)
            }
        }
    )*};
}

from_py_str!(TlsMode, Mechanism);

/// A timeout in seconds (a float).
pub(crate) fn seconds(ob: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let secs: f64 = ob.extract()?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| PyValueError::new_err(format!("a timeout must be positive, not {secs}")))
}

/// `SessionConfig`'s fields, the keywords `Connection` takes: any other is an error, not ignored.
const SETTINGS: &str = "host addresses port helo tls connect_timeout command_timeout credentials \
    allow_insecure_auth verbose";

/// One destination and host: its settings, and the connection kept open between batches.
#[pyclass(module = "dma._native", frozen)]
pub struct Connection {
    client: Mutex<Client>,
}

#[pymethods]
impl Connection {
    /// `settings`: the fields of `SessionConfig`, all of them. Any bad one or any other is a
    /// `ValueError` naming it, then why (the derived extraction's `TypeError` and its causes).
    #[new]
    #[pyo3(signature = (**settings))]
    fn new(py: Python<'_>, settings: Option<Bound<'_, PyDict>>) -> PyResult<Self> {
        let settings = settings.unwrap_or_else(|| PyDict::new(py));
        let mut keys = settings.keys().into_iter().map(|k| k.to_string());
        if let Some(unknown) = keys.find(|k| !SETTINGS.split(' ').any(|f| f == k)) {
            return Err(PyValueError::new_err(format!("unknown setting {unknown:?}")));
        }
        let cfg = settings.extract::<SessionConfig>().map_err(|err| {
            let chain = std::iter::successors(Some(err), |err| err.cause(py));
            PyValueError::new_err(chain.map(|err| err.to_string()).collect::<Vec<_>>().join(": "))
        })?;
        Ok(Connection {
            client: Mutex::new(Client::new(Arc::new(cfg))),
        })
    }

    /// Carry `(sender, recipients, message)`s (none: a probe), then QUIT.
    fn session(&self, py: Python<'_>, transactions: Vec<(String, Vec<String>, PathBuf)>) -> SessionResult {
        let transactions: Vec<Transaction> = transactions
            .into_iter()
            .map(|(sender, recipients, message)| Transaction {
                sender,
                recipients,
                message,
                ..Default::default()
            })
            .collect();
        py.detach(|| {
            let mut client = lock(&self.client);
            let report = client.send(&transactions, None);
            client.close();
            report
        })
    }

    /// One transaction per non-empty group of claimed entries (one message's recipients); the
    /// spool's delivered journal records the recipients the server took.
    fn send(&self, py: Python<'_>, spool: &Spool, groups: Vec<Vec<String>>) -> PyResult<SessionResult> {
        let claims = lock(&spool.claims);
        let mut transactions = Vec::with_capacity(groups.len());
        for ids in groups.into_iter().filter(|g| !g.is_empty()) {
            let entries = ids
                .iter()
                .map(|id| claims.get(id).ok_or_else(|| not_claimed(id)))
                .collect::<PyResult<Vec<_>>>()?;
            transactions.push(Transaction {
                sender: entries[0].entry.sender.clone(),
                recipients: entries.iter().map(|c| c.entry.recipient.clone()).collect(),
                message: entries[0].message_path(),
                journal_ids: ids,
                // NOTIFY/RET/ENVID as submitted (`-N`, `-R`, `-V`): one message, one set.
                dsn: entries[0].entry.dsn.clone(),
            });
        }
        drop(claims);
        Ok(py.detach(|| lock(&self.client).send(&transactions, Some(&spool.dir))))
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| lock(&self.client).close());
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_claimed(id: &str) -> PyErr {
    PyValueError::new_err(format!("entry {id} is not claimed"))
}

/// The runner's view of one spool: due entries, the claims it holds (by id), the wait for work.
#[pyclass(module = "dma._native", frozen)]
pub struct Spool {
    dir: PathBuf,
    claims: Mutex<HashMap<String, Claim>>,
    waker: Waker,
    /// `<spool>/lock`, while this is the spool's one runner.
    lock: Mutex<Option<File>>,
}

impl Spool {
    fn take(&self, id: &str) -> PyResult<Claim> {
        lock(&self.claims).remove(id).ok_or_else(|| not_claimed(id))
    }
}

#[pymethods]
impl Spool {
    /// `drop`: the drop directory, whose new envelopes also wake `wait`.
    #[new]
    #[pyo3(signature = (spooldir, drop=None))]
    #[allow(clippy::needless_pass_by_value)] // pyo3 extracts arguments by value
    fn new(spooldir: PathBuf, drop: Option<PathBuf>) -> PyResult<Self> {
        let waker = Waker::new(&spooldir, drop.as_deref())
            .context(|| format!("can not watch `{}'", spooldir.display()))?;
        Ok(Spool {
            dir: spooldir,
            claims: Mutex::default(),
            waker,
            lock: Mutex::default(),
        })
    }

    /// Become the spool's one runner (`flock` on `<spool>/lock`); false if another process is.
    fn lock(&self) -> PyResult<bool> {
        let path = self.dir.join("lock");
        let file =
            spool::open_append(&path, false).context(|| format!("can not open `{}'", path.display()))?;
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => return Ok(false),
            locked => locked.context(|| format!("can not lock `{}'", path.display()))?,
        }
        *lock(&self.lock) = Some(file);
        Ok(true)
    }

    fn unlock(&self) {
        *lock(&self.lock) = None;
    }

    /// One scan: the entries due at `now` (all pending ones with `force`) that nobody holds
    /// here, oldest first; the earliest later retry; and the messages with a failed entry.
    fn due(&self, py: Python<'_>, now: u64, force: bool) -> PyResult<(Vec<Entry>, Option<u64>, Vec<String>)> {
        let entries = py.detach(|| spool::scan(&self.dir, None))?;
        let mut failed = Vec::<String>::new();
        for e in entries.iter().filter(|e| e.state == "failed") {
            if !failed.iter().any(|m| m == e.message_id()) {
                failed.push(e.message_id().to_owned());
            }
        }
        let held = lock(&self.claims);
        let waiting = |e: &Entry| e.state != "failed" && e.state != "held" && !held.contains_key(&e.id);
        let (due, later): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .filter(waiting)
            .partition(|e| force || e.next_attempt <= now);
        Ok((due, later.iter().map(|e| e.next_attempt).min(), failed))
    }

    /// Claim these entries; returns the ones we now hold (others are held elsewhere, or gone).
    fn claim(&self, py: Python<'_>, ids: Vec<String>) -> PyResult<Vec<Entry>> {
        let claimed = py.detach(|| {
            ids.into_iter()
                .filter_map(|id| spool::claim(&self.dir, &id).transpose())
                .collect::<crate::errors::Result<Vec<_>>>()
        })?;
        let entries = claimed.iter().map(|c| c.entry.clone()).collect();
        lock(&self.claims).extend(claimed.into_iter().map(|c| (c.entry.id.clone(), c)));
        Ok(entries)
    }

    fn message_path(&self, id: &str) -> PyResult<String> {
        let claims = lock(&self.claims);
        let claim = claims.get(id).ok_or_else(|| not_claimed(id))?;
        Ok(claim.message_path().to_string_lossy().into_owned())
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
        let e = &mut claim.entry;
        (e.attempts, e.next_attempt, e.last_error, e.state) = (attempts, next_attempt, last_error, state);
        Ok(py.detach(|| claim.record())?)
    }

    /// A claimed entry is finished: remove it (made durable by the next `sync`).
    fn remove(&self, py: Python<'_>, id: &str) -> PyResult<()> {
        let claim = self.take(id)?;
        Ok(py.detach(|| claim.remove())?)
    }

    fn release(&self, id: &str) {
        lock(&self.claims).remove(id);
    }

    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| spool::fsync_dir(&self.dir))?)
    }

    /// Remove what crashes leave behind, uncommitted messages once `max_age` seconds old.
    fn clean_stale(&self, py: Python<'_>, max_age: u64) -> PyResult<Vec<String>> {
        Ok(py.detach(|| spool::clean_stale(&self.dir, max_age))?)
    }

    /// The entry ids in the delivered journals, and the journals to remove after them.
    fn journal_take(&self, py: Python<'_>) -> PyResult<(Vec<String>, Vec<OsString>)> {
        Ok(py.detach(|| crate::journal::journal_take(&self.dir))?)
    }

    /// Sleep until new mail, a `wake` or `flush`, a `notify`, a signal, or `timeout` seconds.
    /// Returns (work, flush); a signal handler's exception is raised here. Events that are no
    /// work (our own records, a message still being written) are waited past here, so that a
    /// message costs the runner one look at the queue, not one per file written.
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<(bool, bool)> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
            let woken = py
                .detach(|| self.waker.wait(left))
                .context(|| "waiting for mail".into())?;
            py.check_signals()?; // a handler that wants the loop to end `notify`s
            if woken.0 || left.is_zero() {
                return Ok(woken);
            }
        }
    }

    fn notify(&self) {
        self.waker.notify();
    }
}

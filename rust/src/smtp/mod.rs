//! The blocking SMTP client, over std sockets and rustls. Every failure becomes a per-recipient
//! `Outcome`; nothing here panics on hostile input or waits forever. `session`: socket, replies,
//! TLS, set-up, AUTH and QUIT; `transaction`: MAIL, RCPT, DATA; `data`: the encoding.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Mechanism;
use crate::journal::Journal;
use crate::reply::Reply;
pub use crate::tls::{TlsMode, TlsPolicy};

mod data;
mod session;
mod transaction;

pub use data::encode;
use session::Session;

/// Longest reply line we accept (RFC 5321 allows 512; be generous, not unbounded).
const MAX_LINE: usize = 4096;
/// Size of one DATA write, and of one read from the message file.
const CHUNK: usize = 64 * 1024;
/// Commands per pipelined write: few enough that their replies fit the server's socket buffer.
const PIPELINE_BATCH: usize = 100;
/// How long we wait for the reply to QUIT: its outcome changes nothing.
const QUIT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub sender: String,
    pub recipients: Vec<String>,
    /// A spool message file: the whole message with LF line endings.
    pub message: PathBuf,
    /// Per recipient: its entry for the delivered journal once the server took it (empty: none).
    pub journal_ids: Vec<String>,
    /// RFC 3461 parameters (`NOTIFY=... RET=... ENVID=...`), sent when the server offers DSN.
    pub dsn: String,
}

/// No `Debug`: the secret must not end up in a log. From Python: a dict of these fields, `tls`
/// one of `TlsPolicy`'s.
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject), pyo3(from_item_all))]
pub struct SessionConfig {
    /// Name for SNI, certificate checks and messages.
    pub host: String,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub helo: String,
    pub tls: TlsPolicy,
    #[cfg_attr(feature = "python", pyo3(from_py_with = crate::py_delivery::seconds))]
    pub connect_timeout: Duration,
    #[cfg_attr(feature = "python", pyo3(from_py_with = crate::py_delivery::seconds))]
    pub command_timeout: Duration,
    /// Login, secret (a password or an OAuth token), and the mechanisms we may use (`None`:
    /// CRAM-MD5, PLAIN and LOGIN).
    pub credentials: Option<(String, String, Option<Vec<Mechanism>>)>,
    pub allow_insecure_auth: bool,
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Temporary,
    Permanent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Tls,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Size,
    Mail,
    Rcpt,
    Data,
    Dot,
}

/// What Python and the messages call a status or a stage: its variant's name, in lower case.
pub fn name(value: impl std::fmt::Debug) -> String {
    format!("{value:?}").to_ascii_lowercase()
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(module = "dma._native", frozen, get_all, skip_from_py_object)
)]
pub struct Outcome {
    pub status: Status,
    pub stage: Stage,
    /// 0 when there was no reply.
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl Outcome {
    fn temporary(stage: Stage, text: impl Into<String>) -> Self {
        Outcome {
            status: Status::Temporary,
            stage,
            code: 0,
            enhanced: None,
            text: text.into(),
        }
    }

    fn permanent(stage: Stage, enhanced: &str, text: String) -> Self {
        let enhanced = Some(enhanced.to_owned());
        Outcome {
            status: Status::Permanent,
            enhanced,
            ..Outcome::temporary(stage, text)
        }
    }

    /// A reply outside the expected class: 5xx is permanent, anything else temporary.
    fn from_reply(stage: Stage, reply: &Reply) -> Self {
        let status = match reply.class() {
            2 => Status::Sent,
            5 => Status::Permanent,
            _ => Status::Temporary,
        };
        Outcome {
            status,
            stage,
            code: reply.code,
            enhanced: reply.enhanced.clone(),
            text: reply.text(),
        }
    }

    /// The same failure, made temporary, its text after `prefix`.
    fn temporary_with(mut self, prefix: &str) -> Self {
        self.status = Status::Temporary;
        self.text = format!("{prefix}{}", self.text);
        self
    }
}

#[derive(Debug, Clone, Default)]
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(module = "dma._native", frozen, get_all, skip_from_py_object)
)]
pub struct SessionResult {
    /// Per transaction, per recipient, in input order.
    pub results: Vec<Vec<Outcome>>,
    pub address: Option<String>,
    pub tls_version: Option<String>,
    pub tls_cipher: Option<String>,
    /// Lower-case hex SHA-256 of the leaf certificate, also when the handshake refused it.
    pub peer_cert_sha256: Option<String>,
    /// No full handshake: a reconnection within one runner.
    pub tls_resumed: bool,
    pub auth_mechanism: Option<Mechanism>,
    /// EHLO keywords, upper case (from the last EHLO, i.e. after STARTTLS).
    pub extensions: Vec<String>,
    /// Why the connection could not be used, if it could not: also what every recipient from
    /// that point got, and the only report of a session without transactions (a probe).
    pub failure: Option<Outcome>,
}

/// The runner's cached connection: opened when needed, reused while the server keeps it.
pub struct Client {
    cfg: Arc<SessionConfig>,
    session: Option<Session>,
}

impl Client {
    pub fn new(cfg: Arc<SessionConfig>) -> Self {
        Client { cfg, session: None }
    }

    /// Carry `transactions` (none: a probe); the connection stays open unless it broke. `spool`:
    /// the one whose delivered journal records the confirmed recipients (see `journal::Journal`).
    pub fn send(&mut self, transactions: &[Transaction], spool: Option<&Path>) -> SessionResult {
        let (mut session, failure) = match self.session.take().and_then(Session::reusable) {
            Some(session) => (session, None),
            None => match Session::open(&self.cfg) {
                Ok(opened) => opened,
                Err(failure) => return failed(SessionResult::default(), transactions, failure),
            },
        };
        session.journal = spool.map(Journal::new);
        let failure = failure.or_else(|| transactions.iter().find_map(|tx| session.transaction(tx)));
        let report = session.finish();
        let Some(failure) = failure else {
            self.session = Some(session);
            return report;
        };
        session.quit();
        failed(report, transactions, failure)
    }

    pub fn close(&mut self) {
        if let Some(mut s) = self.session.take() {
            s.quit();
        }
    }
}

/// The session's failure: also what every recipient of the transactions not yet reported gets.
fn failed(mut report: SessionResult, transactions: &[Transaction], failure: Outcome) -> SessionResult {
    for tx in &transactions[report.results.len()..] {
        report.results.push(vec![failure.clone(); tx.recipients.len()]);
    }
    report.failure = Some(failure);
    report
}

#[cfg(test)]
pub fn run_session(cfg: SessionConfig, transactions: &[Transaction]) -> SessionResult {
    let mut client = Client::new(Arc::new(cfg));
    let report = client.send(transactions, None);
    client.close();
    report
}

/// A session without TLS or AUTH to a test server on loopback.
#[cfg(test)]
fn plain_config(port: u16) -> SessionConfig {
    SessionConfig {
        host: "mx.test".into(),
        addresses: vec!["127.0.0.1".parse().unwrap()],
        port,
        helo: "client.test".into(),
        tls: TlsPolicy::default(),
        credentials: None,
        allow_insecure_auth: false,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        verbose: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_parse() {
        assert_eq!("implicit".parse::<TlsMode>().unwrap(), TlsMode::Implicit);
        assert!("tls".parse::<TlsMode>().is_err());
    }

    #[test]
    fn unreachable_addresses_fail_temporarily() {
        // Port 1 on loopback: refused at once.
        let cfg = plain_config(1);
        let tx = Transaction {
            sender: "a@b".into(),
            recipients: vec!["c@d".into(), "e@f".into()],
            message: "/nonexistent".into(),
            journal_ids: Vec::new(),
            dsn: String::new(),
        };
        let report = run_session(cfg, &[tx.clone(), tx]);
        assert_eq!(report.results.len(), 2);
        assert!(report
            .results
            .iter()
            .flatten()
            .all(|o| o.status == Status::Temporary && o.stage == Stage::Connect));
        assert_eq!(report.address, None);
    }
}

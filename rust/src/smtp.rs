//! The SMTP client: one blocking session per call over std sockets, optionally inside rustls.
//! Connect (trying each address in turn), greeting, EHLO with HELO fallback, STARTTLS or
//! implicit TLS, AUTH, then whole transactions (MAIL, RCPT..., DATA) over the same
//! connection, pipelined when the server allows, and QUIT. Every failure becomes a
//! per-recipient `Outcome`, temporary or permanent; nothing here panics on hostile input or
//! waits forever.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::auth::{self, Mechanism};
use crate::reply::{clean_text, Extensions, Reply, ReplyError, ReplyParser};
use crate::tls::{self, TlsInfo, TlsPolicy};

/// Longest reply line we accept (RFC 5321 allows 512; be generous, not unbounded).
const MAX_LINE: usize = 4096;
/// Size of one DATA write, and of one read from the message file.
const CHUNK: usize = 64 * 1024;
/// Commands per pipelined write: small enough that the server's replies to one batch
/// always fit its socket buffer, so neither side can block the other.
const PIPELINE_BATCH: usize = 100;
/// How long we wait for the reply to QUIT: its outcome changes nothing.
const QUIT_WAIT: Duration = Duration::from_secs(10);
/// Longest line on the wire, CRLF excluded (RFC 5321 4.5.3.1.6).
pub const LINE_LIMIT: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    None,
    /// STARTTLS is required: without it, fail temporarily before any mail is sent.
    StartTls,
    /// STARTTLS when offered and accepted, plain text otherwise.
    Opportunistic,
    /// TLS from the first byte (port 465).
    Implicit,
}

impl FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(TlsMode::None),
            "starttls" => Ok(TlsMode::StartTls),
            "opportunistic" => Ok(TlsMode::Opportunistic),
            "implicit" => Ok(TlsMode::Implicit),
            _ => Err(format!(
                "invalid tls mode {s:?} (none, starttls, opportunistic or implicit)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Transaction {
    pub sender: String,
    pub recipients: Vec<String>,
    /// A spool message file: the whole message with LF line endings.
    pub message: PathBuf,
    /// Per recipient: the queue entry to write to the delivered journal once the server has
    /// taken the message (empty: nothing to write).
    pub journal_ids: Vec<String>,
}

#[derive(Clone)]
pub struct Credentials {
    pub login: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <hidden>)", self.login)
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name for SNI, certificate checks and messages.
    pub host: String,
    /// Addresses to try, in order.
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub helo: String,
    pub tls_mode: TlsMode,
    pub tls: TlsPolicy,
    pub credentials: Option<Credentials>,
    /// Mechanisms we may use; `None` means CRAM-MD5, PLAIN and LOGIN.
    pub mechanisms: Option<Vec<Mechanism>>,
    pub allow_insecure_auth: bool,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub verbose: bool,
    /// The spool whose delivered journal records confirmed recipients (see `spool::journal_append`).
    pub journal: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Temporary,
    Permanent,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Temporary => "temporary",
            Status::Permanent => "permanent",
        }
    }
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
    Quit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Auth => "auth",
            Stage::Size => "size",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Dot => "dot",
            Stage::Quit => "quit",
        }
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    pub stage: Stage,
    /// The SMTP reply code, 0 when there was no reply.
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

    fn permanent(stage: Stage, enhanced: &str, text: impl Into<String>) -> Self {
        Outcome {
            status: Status::Permanent,
            stage,
            code: 0,
            enhanced: Some(enhanced.to_owned()),
            text: text.into(),
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

    fn with_text_prefix(mut self, prefix: &str) -> Self {
        self.text = format!("{prefix}{}", self.text);
        self
    }
}

/// Everything the caller learns from one session.
#[derive(Debug, Clone, Default)]
pub struct SessionReport {
    /// Per transaction, per recipient, in input order.
    pub results: Vec<Vec<Outcome>>,
    pub address: Option<IpAddr>,
    pub tls: Option<TlsInfo>,
    pub auth_mechanism: Option<Mechanism>,
    /// EHLO keywords, upper case (from the last EHLO, i.e. after STARTTLS).
    pub extensions: Vec<String>,
    /// Why the connection could not be used, if it could not: also what every recipient from
    /// that point got, and the only report of a session without transactions (a probe).
    pub failure: Option<Outcome>,
}

/// Run one whole session. Never fails as a whole: failures are recorded per recipient.
pub fn run_session(cfg: &SessionConfig, transactions: &[Transaction]) -> SessionReport {
    let mut report = SessionReport::default();
    let mut session = match Session::connect(cfg, &mut report) {
        Ok(session) => session,
        Err(failure) => {
            fill_from(&mut report, transactions, &failure);
            return report;
        }
    };
    if let Err(failure) = session.setup() {
        session.quit();
        session.finish(&mut report);
        fill_from(&mut report, transactions, &failure);
        return report;
    }
    for tx in transactions {
        let (outcomes, broken) = session.transaction(tx);
        report.results.push(outcomes);
        if let Some(failure) = broken {
            session.quit();
            session.finish(&mut report);
            fill_from(&mut report, transactions, &failure);
            return report;
        }
    }
    session.quit();
    session.finish(&mut report);
    report
}

/// Give every recipient of the transactions not yet reported the session's failure.
fn fill_from(report: &mut SessionReport, transactions: &[Transaction], failure: &Outcome) {
    report.failure = Some(failure.clone());
    for tx in &transactions[report.results.len()..] {
        report.results.push(vec![failure.clone(); tx.recipients.len()]);
    }
}

// ---- connection ------------------------------------------------------------------------------

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// Only while switching to TLS.
    Gone,
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref()),
            Stream::Gone => None,
        }
    }

    fn io(&mut self) -> io::Result<&mut dyn ReadWrite> {
        match self {
            Stream::Plain(s) => Ok(s),
            Stream::Tls(s) => Ok(s.as_mut()),
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Why the connection stopped being usable.
#[derive(Debug)]
enum ConnError {
    Timeout,
    Closed,
    LineTooLong,
    Reply(ReplyError),
    Io(io::Error),
}

impl ConnError {
    fn from_io(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Timeout,
            io::ErrorKind::UnexpectedEof => ConnError::Closed,
            _ => ConnError::Io(err),
        }
    }

    fn describe(&self, timeout: Duration) -> String {
        match self {
            ConnError::Timeout => format!("timeout ({} s) waiting for the server", timeout.as_secs_f64()),
            ConnError::Closed => "connection closed by the server".to_owned(),
            ConnError::LineTooLong => format!("reply line longer than {MAX_LINE} bytes"),
            ConnError::Reply(e) => e.to_string(),
            ConnError::Io(e) => format!("connection error: {e}"),
        }
    }
}

/// A socket with our own read buffer (so the bytes buffered before STARTTLS can be thrown
/// away) and an output buffer that is written in one go per command group.
struct Conn {
    stream: Stream,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    out: Vec<u8>,
    timeout: Duration,
    verbose: bool,
}

impl Conn {
    fn new(stream: Stream, timeout: Duration, verbose: bool) -> Self {
        Conn {
            stream,
            rbuf: vec![0; 4 * MAX_LINE].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            out: Vec::with_capacity(CHUNK),
            timeout,
            verbose,
        }
    }

    fn trace(&self, prefix: &str, text: &str) {
        if self.verbose {
            // Straight to fd 2; a closed stderr must not break delivery.
            let _ = writeln!(io::stderr().lock(), "{prefix}{text}");
        }
    }

    fn queue(&mut self, line: &str) {
        self.trace(">>> ", line);
        self.queue_raw(line);
    }

    /// Queue a line carrying credentials; the transcript shows `shown` instead.
    fn queue_secret(&mut self, line: &str, shown: &str) {
        self.trace(">>> ", shown);
        self.queue_raw(line);
    }

    fn queue_raw(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn flush(&mut self) -> Result<(), ConnError> {
        let io = self.stream.io().map_err(ConnError::Io)?;
        let result = io.write_all(&self.out).and_then(|()| io.flush());
        self.out.clear();
        result.map_err(ConnError::from_io)
    }

    fn command(&mut self, line: &str) -> Result<Reply, ConnError> {
        self.queue(line);
        self.flush()?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<Reply, ConnError> {
        self.read_reply_within(self.timeout)
    }

    /// One whole reply, which must complete within `wait` however the server trickles it.
    fn read_reply_within(&mut self, wait: Duration) -> Result<Reply, ConnError> {
        let deadline = Instant::now() + wait;
        let mut parser = ReplyParser::new();
        loop {
            let line = self.read_line(deadline)?;
            self.trace("<<< ", &clean_text(line.trim_ascii_end()));
            if let Some(reply) = parser.push(&line).map_err(ConnError::Reply)? {
                return Ok(reply);
            }
        }
    }

    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, ConnError> {
        loop {
            let pending = &self.rbuf[self.rstart..self.rend];
            if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line = pending[..=pos].to_vec();
                self.rstart += pos + 1;
                return Ok(line);
            }
            if pending.len() >= MAX_LINE {
                return Err(ConnError::LineTooLong);
            }
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout);
            }
            if let Some(tcp) = self.stream.tcp() {
                tcp.set_read_timeout(Some(left)).map_err(ConnError::Io)?;
            }
            let n = loop {
                match self.stream.io().and_then(|s| s.read(&mut self.rbuf[self.rend..])) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other.map_err(ConnError::from_io)?,
                }
            };
            if n == 0 {
                return Err(ConnError::Closed);
            }
            self.rend += n;
        }
    }

    /// Bytes the server sent that we have not read as replies yet.
    fn discard_buffered(&mut self) -> usize {
        let n = self.rend - self.rstart;
        self.rstart = 0;
        self.rend = 0;
        n
    }

    /// Wrap the socket in TLS and finish the handshake. Any bytes read before this point
    /// must already be discarded: they came over the unprotected channel.
    fn start_tls(&mut self, config: Arc<ClientConfig>, host: &str) -> Result<TlsInfo, String> {
        let Stream::Plain(mut sock) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err("TLS is already active".to_owned());
        };
        let name = tls::server_name(host)?;
        let mut tls = ClientConnection::new(config, name).map_err(|e| format!("TLS setup: {e}"))?;
        sock.set_read_timeout(Some(self.timeout))
            .map_err(|e| format!("TLS setup: {e}"))?;
        while tls.is_handshaking() {
            if let Err(err) = tls.complete_io(&mut sock) {
                // Let the server know why (rustls queues an alert), then give up.
                let _ = tls.write_tls(&mut sock);
                return Err(match ConnError::from_io(err) {
                    ConnError::Timeout => "timeout during the TLS handshake".to_owned(),
                    ConnError::Closed => "connection closed during the TLS handshake".to_owned(),
                    ConnError::Io(e) => format!("TLS handshake failed: {e}"),
                    other => other.describe(self.timeout),
                });
            }
        }
        let info = tls::session_info(&tls);
        self.stream = Stream::Tls(Box::new(StreamOwned::new(tls, sock)));
        Ok(info)
    }

    fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Send close_notify when TLS is up, then drop the socket.
    fn close(&mut self) {
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        self.stream = Stream::Gone;
    }
}

// ---- session ---------------------------------------------------------------------------------

struct Session<'a> {
    cfg: &'a SessionConfig,
    conn: Conn,
    tls_config: Option<Arc<ClientConfig>>,
    ext: Extensions,
    tls_info: Option<TlsInfo>,
    mechanism: Option<Mechanism>,
    /// The connection can no longer carry commands (error, timeout, 421).
    dead: bool,
    /// The server may hold state from a failed transaction: RSET before the next one.
    dirty: bool,
    journal: Option<crate::spool::Journal>,
}

impl<'a> Session<'a> {
    fn connect(cfg: &'a SessionConfig, report: &mut SessionReport) -> Result<Self, Outcome> {
        let tls_config = match cfg.tls_mode {
            TlsMode::None => None,
            _ => Some(tls::client_config(&cfg.tls).map_err(|e| Outcome::temporary(Stage::Tls, e))?),
        };
        let (sock, addr) = connect_any(cfg)?;
        report.address = Some(addr);
        let mut session = Session {
            cfg,
            conn: Conn::new(Stream::Plain(sock), cfg.command_timeout, cfg.verbose),
            tls_config,
            ext: Extensions::default(),
            tls_info: None,
            mechanism: None,
            dead: false,
            dirty: false,
            journal: cfg.journal.as_deref().map(crate::spool::Journal::new),
        };
        if cfg.tls_mode == TlsMode::Implicit {
            session.start_tls()?;
        }
        Ok(session)
    }

    fn setup(&mut self) -> Result<(), Outcome> {
        self.expect(Stage::Greeting, None, 2)?;
        self.hello()?;
        match self.cfg.tls_mode {
            TlsMode::StartTls => self.starttls(true)?,
            TlsMode::Opportunistic => self.starttls(false)?,
            TlsMode::None | TlsMode::Implicit => {}
        }
        self.authenticate()
    }

    /// Copy what the caller wants to know into the report.
    fn finish(&mut self, report: &mut SessionReport) {
        if let Some(journal) = &mut self.journal {
            if let Err(e) = journal.sync() {
                self.conn.trace("!!! ", &e.to_string());
            }
        }
        report.tls = self.tls_info.take();
        report.auth_mechanism = self.mechanism;
        report.extensions = std::mem::take(&mut self.ext.keywords);
        self.conn.close();
    }

    fn conn_failure(&mut self, stage: Stage, err: ConnError) -> Outcome {
        self.dead = true;
        let text = format!(
            "{}: {} during {}",
            self.cfg.host,
            err.describe(self.cfg.command_timeout),
            stage.as_str()
        );
        Outcome::temporary(stage, text)
    }

    /// Send `line` (if any), read the reply and check its class.
    fn expect(&mut self, stage: Stage, line: Option<&str>, class: u16) -> Result<Reply, Outcome> {
        let result = match line {
            Some(line) => self.conn.command(line),
            None => self.conn.read_reply(),
        };
        let reply = result.map_err(|e| self.conn_failure(stage, e))?;
        self.check(stage, reply, class)
    }

    fn check(&mut self, stage: Stage, reply: Reply, class: u16) -> Result<Reply, Outcome> {
        if reply.code == 421 {
            // The server is closing the channel.
            self.dead = true;
        }
        if reply.class() == class {
            return Ok(reply);
        }
        let mut outcome = Outcome::from_reply(stage, &reply);
        if outcome.status == Status::Sent {
            outcome.status = Status::Temporary;
            outcome = outcome.with_text_prefix("unexpected reply: ");
        }
        Err(outcome)
    }

    fn start_tls(&mut self) -> Result<(), Outcome> {
        let config = self.tls_config.clone().expect("TLS config built for TLS modes");
        let host = &self.cfg.host;
        let info = self.conn.start_tls(config, host).map_err(|e| {
            self.dead = true;
            Outcome::temporary(Stage::Tls, format!("{host}: {e}"))
        })?;
        self.conn
            .trace("*** ", &format!("TLS {} {}", info.version, info.cipher));
        self.tls_info = Some(info);
        Ok(())
    }

    /// EHLO; HELO when the server refuses EHLO permanently (an old or minimal server).
    fn hello(&mut self) -> Result<(), Outcome> {
        let helo = &self.cfg.helo;
        let reply = self
            .conn
            .command(&format!("EHLO {helo}"))
            .map_err(|e| self.conn_failure(Stage::Ehlo, e))?;
        if reply.class() == 2 {
            self.ext = Extensions::parse(&reply);
            return Ok(());
        }
        if reply.class() != 5 {
            return Err(self.check(Stage::Ehlo, reply, 2).unwrap_err());
        }
        self.expect(Stage::Ehlo, Some(&format!("HELO {helo}")), 2)?;
        self.ext = Extensions::default();
        Ok(())
    }

    fn starttls(&mut self, required: bool) -> Result<(), Outcome> {
        if !self.ext.has("STARTTLS") {
            if required {
                let text = format!("{}: STARTTLS is required but not offered", self.cfg.host);
                return Err(Outcome::temporary(Stage::StartTls, text));
            }
            return Ok(());
        }
        match self.expect(Stage::StartTls, Some("STARTTLS"), 2) {
            Ok(_) => {}
            Err(outcome) if required || self.dead => {
                let mut outcome = outcome.with_text_prefix("STARTTLS refused: ");
                outcome.status = Status::Temporary;
                return Err(outcome);
            }
            Err(_) => return Ok(()),
        }
        // Whatever followed the 220 in clear text is not from the TLS peer: an injection
        // attempt or a broken server. Never read it as a reply.
        let stray = self.conn.discard_buffered();
        if stray > 0 {
            self.conn.trace(
                "*** ",
                &format!("discarded {stray} bytes received after the STARTTLS reply"),
            );
        }
        self.start_tls()?;
        self.hello()
    }

    fn authenticate(&mut self) -> Result<(), Outcome> {
        let Some(creds) = &self.cfg.credentials else {
            return Ok(());
        };
        if !self.conn.is_tls() && !self.cfg.allow_insecure_auth {
            // Never send credentials in clear; the caller sees auth_mechanism None.
            return Ok(());
        }
        let allowed = self.cfg.mechanisms.as_deref().unwrap_or(&Mechanism::DEFAULT);
        let Some(mechanism) = auth::choose(&self.ext.auth, allowed) else {
            return Ok(());
        };
        self.auth_exchange(mechanism, creds).map_err(|outcome| {
            // A rejected login must not bounce the queue (Postfix's soft bounce): temporary.
            let mut outcome = outcome.with_text_prefix(&format!("AUTH {mechanism} failed: "));
            outcome.status = Status::Temporary;
            outcome
        })?;
        self.mechanism = Some(mechanism);
        Ok(())
    }

    fn auth_exchange(&mut self, mechanism: Mechanism, creds: &Credentials) -> Result<(), Outcome> {
        const HIDDEN: &str = "<authentication data hidden>";
        let (login, secret) = (creds.login.as_str(), creds.secret.as_str());
        let final_reply = match mechanism {
            Mechanism::Plain => {
                let payload = auth::plain(login, secret);
                let reply =
                    self.secret_step(&format!("AUTH PLAIN {payload}"), &format!("AUTH PLAIN {HIDDEN}"))?;
                if reply.class() == 3 && reply.first_text().trim().is_empty() {
                    // A server that ignores initial responses asks again with an empty 334.
                    self.secret_step(&payload, HIDDEN)?
                } else {
                    reply
                }
            }
            Mechanism::XOAuth2 => {
                let payload = auth::xoauth2(login, secret);
                let reply = self.secret_step(
                    &format!("AUTH XOAUTH2 {payload}"),
                    &format!("AUTH XOAUTH2 {HIDDEN}"),
                )?;
                if reply.class() == 3 {
                    // The server sent an error description; an empty line ends the exchange.
                    self.expect(Stage::Auth, Some(""), 2)?;
                }
                reply
            }
            Mechanism::Login => {
                self.expect(Stage::Auth, Some("AUTH LOGIN"), 3)?;
                self.expect_secret(&auth::login_step(login), 3)?;
                self.secret_step(&auth::login_step(secret), HIDDEN)?
            }
            Mechanism::CramMd5 => {
                let challenge = self.expect(Stage::Auth, Some("AUTH CRAM-MD5"), 3)?;
                match auth::cram_md5(login, secret, challenge.first_text()) {
                    Ok(response) => self.secret_step(&response, HIDDEN)?,
                    Err(e) => {
                        // Cancel the exchange (RFC 4954 "*") and report the bad challenge.
                        let _ = self.expect(Stage::Auth, Some("*"), 5);
                        return Err(Outcome::temporary(
                            Stage::Auth,
                            format!("bad CRAM-MD5 challenge: {e}"),
                        ));
                    }
                }
            }
        };
        self.check(Stage::Auth, final_reply, 2).map(drop)
    }

    /// Send a line holding credentials and return whatever reply comes.
    fn secret_step(&mut self, line: &str, shown: &str) -> Result<Reply, Outcome> {
        self.conn.queue_secret(line, shown);
        self.conn
            .flush()
            .and_then(|()| self.conn.read_reply())
            .map_err(|e| self.conn_failure(Stage::Auth, e))
    }

    fn expect_secret(&mut self, line: &str, class: u16) -> Result<Reply, Outcome> {
        let reply = self.secret_step(line, "<authentication data hidden>")?;
        self.check(Stage::Auth, reply, class)
    }

    /// QUIT and wait a little for its reply, which is only logged.
    fn quit(&mut self) {
        if self.dead {
            return;
        }
        self.conn.queue("QUIT");
        if self.conn.flush().is_ok() {
            let _ = self
                .conn
                .read_reply_within(QUIT_WAIT.min(self.cfg.command_timeout));
        }
        self.dead = true;
    }

    // ---- transactions ------------------------------------------------------------------------

    /// One transaction. Returns the per-recipient outcomes, and the failure to give every
    /// later transaction when the connection can no longer be used.
    fn transaction(&mut self, tx: &Transaction) -> (Vec<Outcome>, Option<Outcome>) {
        let mut rcpts: Vec<RcptState> = vec![RcptState::Pending; tx.recipients.len()];
        let result = self.try_transaction(tx, &mut rcpts);
        let (final_outcome, broken) = match result {
            Ok(outcome) => (outcome, None),
            Err(TxFailure::Transaction(outcome)) => (outcome, None),
            Err(TxFailure::Broken(outcome)) => (outcome.clone(), Some(outcome)),
        };
        let outcomes: Vec<Outcome> = rcpts
            .into_iter()
            .map(|state| match state {
                RcptState::Done(outcome) => outcome,
                RcptState::Pending | RcptState::Accepted => final_outcome.clone(),
            })
            .collect();
        self.journal(tx, &outcomes);
        let broken = broken.or_else(|| {
            self.dead.then(|| {
                Outcome::temporary(
                    Stage::Mail,
                    format!("{}: connection no longer usable", self.cfg.host),
                )
            })
        });
        (outcomes, broken)
    }

    /// Record the recipients the server took, before anything else can go wrong.
    fn journal(&mut self, tx: &Transaction, outcomes: &[Outcome]) {
        let Some(journal) = &mut self.journal else { return };
        let sent: Vec<&str> = outcomes
            .iter()
            .zip(&tx.journal_ids)
            .filter(|(o, id)| o.status == Status::Sent && !id.is_empty())
            .map(|(_, id)| id.as_str())
            .collect();
        if let Err(e) = journal.record(&sent) {
            // The runner still records the outcome; only a crash right now would repeat these.
            self.conn.trace("!!! ", &e.to_string());
        }
    }

    fn try_transaction(&mut self, tx: &Transaction, rcpts: &mut [RcptState]) -> Result<Outcome, TxFailure> {
        let prepared = self.prepare(tx, rcpts)?;
        if !rcpts.iter().any(|s| matches!(s, RcptState::Pending)) {
            // Nothing valid to send to; each recipient has its own refusal.
            return Err(TxFailure::Transaction(Outcome::temporary(
                Stage::Rcpt,
                "no valid recipient",
            )));
        }
        if self.dirty {
            self.reset()?;
        }
        self.dirty = true;
        let accepted = if self.ext.has("PIPELINING") {
            self.envelope_pipelined(&prepared, tx, rcpts)?
        } else {
            self.envelope_stepwise(&prepared, tx, rcpts)?
        };
        if !accepted {
            // Every recipient has its own refusal already.
            return Err(TxFailure::Transaction(Outcome::temporary(
                Stage::Rcpt,
                "no recipient accepted",
            )));
        }
        let outcome = self.send_body(prepared.file)?;
        self.dirty = false;
        Ok(outcome)
    }

    /// Local checks before anything is sent: addresses, message file, SIZE, SMTPUTF8.
    fn prepare(&mut self, tx: &Transaction, rcpts: &mut [RcptState]) -> Result<Prepared, TxFailure> {
        let fail = |o| Err(TxFailure::Transaction(o));
        if !valid_address(&tx.sender) {
            return fail(Outcome::permanent(
                Stage::Mail,
                "5.1.7",
                format!("invalid sender address {:?}", tx.sender),
            ));
        }
        for (state, rcpt) in rcpts.iter_mut().zip(&tx.recipients) {
            if !valid_address(rcpt) || rcpt.is_empty() {
                *state = RcptState::Done(Outcome::permanent(
                    Stage::Rcpt,
                    "5.1.3",
                    format!("invalid recipient address {rcpt:?}"),
                ));
            }
        }
        let (file, facts) = match open_message(&tx.message) {
            Ok(x) => x,
            Err(e) => {
                return fail(Outcome::temporary(
                    Stage::Data,
                    format!("cannot read message file {}: {e}", tx.message.display()),
                ))
            }
        };
        if let Some(limit) = self.ext.size_limit.filter(|&l| facts.wire_size > l) {
            return fail(Outcome::permanent(
                Stage::Size,
                "5.3.4",
                format!(
                    "message of {} octets exceeds the {limit}-octet limit of {}",
                    facts.wire_size, self.cfg.host
                ),
            ));
        }
        let utf8 = !tx.sender.is_ascii() || tx.recipients.iter().any(|r| !r.is_ascii());
        if utf8 && !self.ext.has("SMTPUTF8") {
            return fail(Outcome::permanent(
                Stage::Mail,
                "5.6.7",
                format!(
                    "{} does not offer SMTPUTF8, needed for a non-ASCII address",
                    self.cfg.host
                ),
            ));
        }
        let mut mail = format!("MAIL FROM:<{}>", tx.sender);
        if self.ext.has("SIZE") {
            mail.push_str(&format!(" SIZE={}", facts.wire_size));
        }
        if facts.eight_bit && self.ext.has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        Ok(Prepared { mail, file })
    }

    fn reset(&mut self) -> Result<(), TxFailure> {
        match self.expect(Stage::Mail, Some("RSET"), 2) {
            Ok(_) => {
                self.dirty = false;
                Ok(())
            }
            Err(outcome) => {
                // The server's state is unknown: give up on this connection.
                let mut outcome = outcome.with_text_prefix("RSET failed: ");
                outcome.status = Status::Temporary;
                Err(TxFailure::Broken(outcome))
            }
        }
    }

    /// MAIL, each RCPT and DATA, one reply at a time. Returns whether DATA was accepted.
    fn envelope_stepwise(
        &mut self,
        p: &Prepared,
        tx: &Transaction,
        rcpts: &mut [RcptState],
    ) -> Result<bool, TxFailure> {
        self.expect(Stage::Mail, Some(&p.mail), 2)
            .map_err(|o| self.tx_failure(o))?;
        for (state, rcpt) in rcpts.iter_mut().zip(&tx.recipients) {
            if matches!(state, RcptState::Pending) {
                let reply = self
                    .conn
                    .command(&format!("RCPT TO:<{rcpt}>"))
                    .map_err(|e| TxFailure::Broken(self.conn_failure(Stage::Rcpt, e)))?;
                *state = self.rcpt_state(reply).map_err(|o| self.tx_failure(o))?;
            }
        }
        if !rcpts.iter().any(|s| matches!(s, RcptState::Accepted)) {
            return Ok(false);
        }
        self.expect(Stage::Data, Some("DATA"), 3)
            .map_err(|o| self.tx_failure(o))?;
        Ok(true)
    }

    /// MAIL, every RCPT and DATA written together (RFC 2920), then the replies read in order.
    fn envelope_pipelined(
        &mut self,
        p: &Prepared,
        tx: &Transaction,
        rcpts: &mut [RcptState],
    ) -> Result<bool, TxFailure> {
        let mut commands = vec![p.mail.clone()];
        let wanted: Vec<usize> = (0..rcpts.len())
            .filter(|&i| matches!(rcpts[i], RcptState::Pending))
            .collect();
        commands.extend(wanted.iter().map(|&i| format!("RCPT TO:<{}>", tx.recipients[i])));
        commands.push("DATA".to_owned());
        let mut replies = Vec::with_capacity(commands.len());
        for batch in commands.chunks(PIPELINE_BATCH) {
            for command in batch {
                self.conn.queue(command);
            }
            let stage = if replies.is_empty() {
                Stage::Mail
            } else {
                Stage::Rcpt
            };
            self.conn
                .flush()
                .map_err(|e| TxFailure::Broken(self.conn_failure(stage, e)))?;
            for _ in batch {
                let stage = match replies.len() {
                    0 => Stage::Mail,
                    n if n > wanted.len() => Stage::Data,
                    _ => Stage::Rcpt,
                };
                let reply = self
                    .conn
                    .read_reply()
                    .map_err(|e| TxFailure::Broken(self.conn_failure(stage, e)))?;
                replies.push(reply);
            }
        }
        let data_reply = replies.pop().expect("DATA reply");
        let mail_reply = replies.remove(0);
        let mail_ok = self.check(Stage::Mail, mail_reply, 2);
        let mut accepted = false;
        if mail_ok.is_ok() {
            for (&i, reply) in wanted.iter().zip(replies) {
                rcpts[i] = self.rcpt_state(reply).map_err(|o| self.tx_failure(o))?;
                accepted |= matches!(rcpts[i], RcptState::Accepted);
            }
        }
        if !accepted {
            if data_reply.class() == 3 {
                // The server took DATA anyway: end it with an empty message (RFC 2920 3.1).
                let _ = self.expect(Stage::Data, Some("."), 2);
            }
            mail_ok.map_err(|o| self.tx_failure(o))?;
            return Ok(false);
        }
        self.check(Stage::Data, data_reply, 3)
            .map_err(|o| self.tx_failure(o))?;
        Ok(true)
    }

    fn rcpt_state(&mut self, reply: Reply) -> Result<RcptState, Outcome> {
        if reply.code == 421 {
            self.dead = true;
            return Err(Outcome::from_reply(Stage::Rcpt, &reply));
        }
        Ok(match self.check(Stage::Rcpt, reply, 2) {
            Ok(_) => RcptState::Accepted,
            Err(outcome) => RcptState::Done(outcome),
        })
    }

    /// A failure reply ends the transaction; after a 421 it ends the session too.
    fn tx_failure(&self, outcome: Outcome) -> TxFailure {
        if self.dead {
            TxFailure::Broken(outcome)
        } else {
            TxFailure::Transaction(outcome)
        }
    }

    /// Stream the message after DATA's 354, then the final dot and its reply.
    fn send_body(&mut self, mut file: File) -> Result<Outcome, TxFailure> {
        let mut encoder = DataEncoder::default();
        let mut chunk = vec![0u8; CHUNK];
        let mut sent: u64 = 0;
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // We cannot end DATA without delivering a truncated message: hang up.
                    self.dead = true;
                    return Err(TxFailure::Broken(Outcome::temporary(
                        Stage::Data,
                        format!("reading the message file: {e}"),
                    )));
                }
            };
            encoder.encode(&chunk[..n], &mut self.conn.out);
            if self.conn.out.len() >= CHUNK {
                sent += self.conn.out.len() as u64;
                self.conn
                    .flush()
                    .map_err(|e| TxFailure::Broken(self.conn_failure(Stage::Data, e)))?;
            }
        }
        encoder.finish(&mut self.conn.out);
        sent += self.conn.out.len() as u64 - 3;
        self.conn.trace(">>> ", &format!("<message body, {sent} octets>"));
        self.conn.trace(">>> ", ".");
        let reply = self
            .conn
            .flush()
            .and_then(|()| self.conn.read_reply())
            .map_err(|e| TxFailure::Broken(self.conn_failure(Stage::Dot, e)))?;
        let outcome = match self.check(Stage::Dot, reply, 2) {
            Ok(reply) => Outcome::from_reply(Stage::Dot, &reply),
            Err(outcome) => outcome,
        };
        if self.dead {
            return Err(TxFailure::Broken(outcome));
        }
        Ok(outcome)
    }
}

#[derive(Debug, Clone)]
enum RcptState {
    Pending,
    Accepted,
    Done(Outcome),
}

enum TxFailure {
    /// This transaction failed; the connection is still good for the next one.
    Transaction(Outcome),
    /// The connection is gone: this and every later transaction get the outcome.
    Broken(Outcome),
}

struct Prepared {
    mail: String,
    file: File,
}

/// No control characters in an envelope address: a CR or LF would inject commands.
fn valid_address(addr: &str) -> bool {
    !addr.chars().any(|c| c.is_control())
}

/// Try each address in turn; a connection failure moves on to the next one.
fn connect_any(cfg: &SessionConfig) -> Result<(TcpStream, IpAddr), Outcome> {
    let mut errors = Vec::new();
    for &ip in &cfg.addresses {
        let target = SocketAddr::new(ip, cfg.port);
        match TcpStream::connect_timeout(&target, cfg.connect_timeout) {
            Ok(sock) => {
                let setup = sock
                    .set_nodelay(true)
                    .and_then(|()| sock.set_write_timeout(Some(cfg.command_timeout)));
                match setup {
                    Ok(()) => return Ok((sock, ip)),
                    Err(e) => errors.push(format!("{target}: {e}")),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => errors
                .push(format!(
                    "{target}: connect timeout ({} s)",
                    cfg.connect_timeout.as_secs_f64()
                )),
            Err(e) => errors.push(format!("{target}: {e}")),
        }
    }
    if errors.is_empty() {
        errors.push("no address to connect to".to_owned());
    }
    Err(Outcome::temporary(
        Stage::Connect,
        format!("cannot connect to {}: {}", cfg.host, errors.join("; ")),
    ))
}

// ---- DATA encoding ----------------------------------------------------------------------------

/// Facts about a message that MAIL FROM needs before the body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageFacts {
    /// Octets on the wire (CRLF line ends, broken long lines), without the final dot line
    /// or stuffed dots, as RFC 1870 counts them.
    pub wire_size: u64,
    /// A byte above 127 somewhere: BODY=8BITMIME.
    pub eight_bit: bool,
}

/// Open the message and scan it once (the second read, for DATA, comes from the page
/// cache). The returned file is rewound.
fn open_message(path: &std::path::Path) -> io::Result<(File, MessageFacts)> {
    let mut file = File::open(path)?;
    let facts = scan(&mut file)?;
    file.rewind()?;
    Ok((file, facts))
}

pub fn scan(input: &mut impl Read) -> io::Result<MessageFacts> {
    let mut encoder = DataEncoder::default();
    let mut chunk = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(3 * CHUNK);
    let mut facts = MessageFacts {
        wire_size: 0,
        eight_bit: false,
    };
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        facts.eight_bit |= !chunk[..n].is_ascii();
        encoder.encode(&chunk[..n], &mut out);
        facts.wire_size += out.len() as u64;
        out.clear();
    }
    encoder.finish(&mut out);
    facts.wire_size += out.len() as u64 - 3;
    facts.wire_size -= encoder.stuffed;
    Ok(facts)
}

/// Turns the spool's LF-terminated text into the DATA stream, chunk by chunk: CRLF line
/// ends (a CR before LF, or a lone CR, also ends a line, so no bare CR reaches the wire),
/// dot-stuffing, and lines over 998 octets broken by inserting CRLF SP, as Postfix's
/// `smtp_line_length_limit` does (least harmful to MIME).
#[derive(Debug, Default)]
pub struct DataEncoder {
    /// Octets already on the current wire line.
    col: usize,
    /// The previous input byte was a CR whose line end is not written yet.
    pending_cr: bool,
    /// Dots added by stuffing, so far.
    pub stuffed: u64,
}

impl DataEncoder {
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while let Some((&first, tail)) = rest.split_first() {
            if self.pending_cr {
                self.pending_cr = false;
                self.end_line(out);
                if first == b'\n' {
                    rest = tail;
                    continue;
                }
            }
            match first {
                b'\n' => {
                    self.end_line(out);
                    rest = tail;
                }
                b'\r' => {
                    self.pending_cr = true;
                    rest = tail;
                }
                _ => {
                    let len = rest
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                        .unwrap_or(rest.len());
                    self.text(&rest[..len], out);
                    rest = &rest[len..];
                }
            }
        }
    }

    /// End the last line if it had no line end, and write the terminating dot.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || self.col > 0 {
            self.end_line(out);
        }
        self.pending_cr = false;
        out.extend_from_slice(b".\r\n");
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.col = 0;
    }

    /// Line content without CR or LF.
    fn text(&mut self, mut run: &[u8], out: &mut Vec<u8>) {
        while !run.is_empty() {
            if self.col == 0 && run[0] == b'.' {
                out.push(b'.');
                self.col = 1;
                self.stuffed += 1;
            }
            if self.col >= LINE_LIMIT {
                out.extend_from_slice(b"\r\n ");
                self.col = 1;
            }
            let take = (LINE_LIMIT - self.col).min(run.len());
            out.extend_from_slice(&run[..take]);
            self.col += take;
            run = &run[take..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let mut enc = DataEncoder::default();
        let mut out = Vec::new();
        for chunk in chunks {
            enc.encode(chunk, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn encode(input: &[u8]) -> Vec<u8> {
        encode_chunks(&[input])
    }

    #[test]
    fn crlf_and_terminator() {
        assert_eq!(encode(b"a\nb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(encode(b""), b".\r\n");
        assert_eq!(encode(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(encode(b"\n\n"), b"\r\n\r\n.\r\n");
    }

    #[test]
    fn existing_crlf_and_bare_cr() {
        assert_eq!(encode(b"a\r\nb\n"), b"a\r\nb\r\n.\r\n");
        // A lone CR becomes a line end, so "<CR>.<CR><LF>" cannot end DATA early anywhere.
        assert_eq!(encode(b"a\r.\r\nb\n"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode(b"x\r"), b"x\r\n.\r\n");
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(encode(b".\n..x\nx.\n"), b"..\r\n...x\r\nx.\r\n.\r\n");
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let input = b"hello\r\n.dot\nline\r\r\n.\n";
        let whole = encode(input);
        for split in 0..input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(encode_chunks(&[a, b]), whole, "split at {split}");
        }
    }

    #[test]
    fn long_lines_are_broken() {
        let exact = vec![b'x'; LINE_LIMIT];
        assert_eq!(encode(&exact), [&exact[..], b"\r\n.\r\n"].concat());
        let long = vec![b'y'; LINE_LIMIT + 1];
        let expected = [&long[..LINE_LIMIT], b"\r\n y\r\n.\r\n"].concat();
        assert_eq!(encode(&long), expected);
        // Continuation lines are also at most 998 octets, the SP included.
        let very = vec![b'z'; 2500];
        let out = encode(&very);
        let lengths: Vec<usize> = out.split(|&b| b == b'\n').map(<[u8]>::len).collect();
        // 998 + CR, SP + 997 + CR, SP + 505 + CR, ".\r", "".
        assert_eq!(lengths, [LINE_LIMIT + 1, LINE_LIMIT + 1, 507, 2, 0]);
        assert!(out[LINE_LIMIT + 2..].starts_with(b" z"));
        // A stuffed dot counts towards the wire line.
        let dotted = [&b"."[..], &vec![b'd'; LINE_LIMIT - 1]].concat();
        let out = encode(&dotted);
        assert!(out.starts_with(b".."));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 3);
    }

    #[test]
    fn scan_counts_wire_octets() {
        let input = b"Subject: x\n\n.hi\n\xc3\xa9\n";
        let facts = scan(&mut &input[..]).unwrap();
        // CRLF for each LF; the stuffed dot is not counted.
        assert_eq!(facts.wire_size, input.len() as u64 + 4);
        assert!(facts.eight_bit);
        assert!(!scan(&mut &b"plain\n"[..]).unwrap().eight_bit);
    }

    #[test]
    fn tls_modes_parse() {
        assert_eq!("implicit".parse::<TlsMode>().unwrap(), TlsMode::Implicit);
        assert!("tls".parse::<TlsMode>().is_err());
    }

    #[test]
    fn addresses_with_controls_are_refused() {
        assert!(valid_address("a@b"));
        assert!(valid_address("ü@b"));
        assert!(!valid_address("a@b\r\nRCPT TO:<x@y>"));
        assert!(!valid_address("a\0b"));
    }

    #[test]
    fn unreachable_addresses_fail_temporarily() {
        // Port 1 on loopback: refused at once.
        let cfg = SessionConfig {
            host: "mx.test".into(),
            addresses: vec!["127.0.0.1".parse().unwrap()],
            port: 1,
            helo: "client.test".into(),
            tls_mode: TlsMode::None,
            tls: TlsPolicy::default(),
            credentials: None,
            mechanisms: None,
            allow_insecure_auth: false,
            connect_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            verbose: false,
            journal: None,
        };
        let tx = Transaction {
            sender: "a@b".into(),
            recipients: vec!["c@d".into(), "e@f".into()],
            message: "/nonexistent".into(),
            journal_ids: Vec::new(),
        };
        let report = run_session(&cfg, &[tx.clone(), tx]);
        assert_eq!(report.results.len(), 2);
        assert!(report
            .results
            .iter()
            .flatten()
            .all(|o| o.status == Status::Temporary && o.stage == Stage::Connect));
        assert_eq!(report.address, None);
    }
}

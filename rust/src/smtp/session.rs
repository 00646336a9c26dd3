//! One session: its connection (a socket, plain or TLS, whose reads end by a deadline) and its
//! set-up: greeting, EHLO or HELO, STARTTLS or implicit TLS, AUTH; commands written in one go and
//! replies read within a deadline; QUIT.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection};
use sha2::{Digest, Sha256};

use super::{Outcome, SessionConfig, SessionResult, Stage, Status, TlsMode, MAX_LINE, QUIT_WAIT};
use crate::auth::{self, Mechanism};
use crate::journal::Journal;
use crate::reply::{clean_text, Extensions, Reply};
use crate::tls;

/// What the transcript shows instead of a line holding credentials.
const HIDDEN: &str = "<authentication data hidden>";

pub(super) struct Session {
    pub(super) cfg: Arc<SessionConfig>,
    /// Our read buffer, so that what is buffered before STARTTLS can be thrown away.
    reader: BufReader<Stream>,
    tls_config: Option<Arc<ClientConfig>>,
    pub(super) ext: Extensions,
    /// What the caller learns, kept up to date: of the session, and of this `send`'s transactions.
    pub(super) report: SessionResult,
    /// The connection can no longer carry commands (error, timeout, 421).
    pub(super) dead: bool,
    /// The server may hold state from a failed transaction: RSET before the next one.
    pub(super) dirty: bool,
    /// This `send`'s (see `Client::send`).
    pub(super) journal: Option<Journal>,
}

impl Session {
    /// Connect, and set the session up; a failure is what every recipient gets (after a failed
    /// set-up, with the session whose report the caller gets).
    pub(super) fn open(cfg: &Arc<SessionConfig>) -> Result<(Self, Option<Outcome>), Outcome> {
        let tls_config = (cfg.tls.mode != TlsMode::None)
            .then(|| tls::client_config(&cfg.tls).map_err(|e| Outcome::temporary(Stage::Tls, e)))
            .transpose()?;
        let (tcp, address) = connect(cfg)?;
        let sock = Socket {
            tcp,
            deadline: Instant::now(),
        };
        let mut session = Session {
            cfg: cfg.clone(),
            reader: BufReader::new(Stream { sock, tls: None }),
            tls_config,
            ext: Extensions::default(),
            report: SessionResult {
                address: Some(address.to_string()),
                ..SessionResult::default()
            },
            dead: false,
            dirty: false,
            journal: None,
        };
        let failure = session.setup().err();
        Ok((session, failure))
    }

    /// TLS, greeting, EHLO, STARTTLS and AUTH, all within one deadline: a server that trickles
    /// them byte by byte cannot hold the session longer than that.
    fn setup(&mut self) -> Result<(), Outcome> {
        self.start_clock(self.cfg.command_timeout);
        if self.cfg.tls.mode == TlsMode::Implicit {
            self.start_tls()?;
        }
        let greeting = self.read_reply(Stage::Greeting)?;
        self.check(Stage::Greeting, greeting, 2)?;
        self.hello()?;
        if matches!(self.cfg.tls.mode, TlsMode::StartTls | TlsMode::Opportunistic) {
            self.starttls(self.cfg.tls.mode == TlsMode::StartTls)?;
        }
        self.authenticate()
    }

    /// The report of this `send`.
    pub(super) fn finish(&mut self) -> SessionResult {
        let report = self.report.clone();
        self.report.results.clear();
        report
    }

    /// The transcript shows `shown` instead of `line`.
    pub(super) fn send(&mut self, stage: Stage, line: &str, shown: &str) -> Result<Reply, Outcome> {
        self.trace(">>> ", shown);
        self.write(stage, format!("{line}\r\n").as_bytes())?;
        self.read_reply(stage)
    }

    pub(super) fn expect(&mut self, stage: Stage, line: &str, class: u16) -> Result<Reply, Outcome> {
        let reply = self.send(stage, line, line)?;
        self.check(stage, reply, class)
    }

    /// The reply if of `class`, else its failure. A 421: the server is closing the channel.
    pub(super) fn check(&mut self, stage: Stage, reply: Reply, class: u16) -> Result<Reply, Outcome> {
        self.dead |= reply.code == 421;
        let outcome = Outcome::from_reply(stage, &reply);
        match outcome.status {
            _ if reply.class() == class => Ok(reply),
            Status::Sent => Err(outcome.temporary_with("unexpected reply: ")),
            _ => Err(outcome),
        }
    }

    /// EHLO; HELO when the server refuses EHLO permanently (an old or minimal server).
    fn hello(&mut self) -> Result<(), Outcome> {
        let ehlo = format!("EHLO {}", self.cfg.helo);
        let reply = self.send(Stage::Ehlo, &ehlo, &ehlo)?;
        self.ext = match reply.class() {
            2 => Extensions::parse(&reply),
            5 => {
                self.expect(Stage::Ehlo, &format!("HELO {}", self.cfg.helo), 2)?;
                Extensions::default()
            }
            _ => return self.check(Stage::Ehlo, reply, 2).map(drop),
        };
        self.report.extensions = self.ext.keywords.clone();
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
        match self.expect(Stage::StartTls, "STARTTLS", 2) {
            Ok(_) => {}
            Err(outcome) if required || self.dead => return Err(outcome.temporary_with("STARTTLS refused: ")),
            Err(_) => return Ok(()),
        }
        self.start_tls()?;
        self.hello()
    }

    fn authenticate(&mut self) -> Result<(), Outcome> {
        let cfg = self.cfg.clone();
        let Some((login, secret, mechanisms)) = &cfg.credentials else {
            return Ok(());
        };
        // Never send credentials in clear; the caller sees auth_mechanism None.
        let allowed = mechanisms.as_deref().unwrap_or(&Mechanism::DEFAULT);
        let usable = self.report.tls_version.is_some() || cfg.allow_insecure_auth;
        let Some(mechanism) = auth::choose(&self.ext.auth, allowed).filter(|_| usable) else {
            return Ok(());
        };
        // A rejected login must not bounce the queue (Postfix's soft bounce): temporary.
        self.auth_exchange(mechanism, login, secret)
            .map_err(|outcome| outcome.temporary_with(&format!("AUTH {} failed: ", mechanism.name())))?;
        self.report.auth_mechanism = Some(mechanism);
        Ok(())
    }

    fn auth_exchange(&mut self, mechanism: Mechanism, login: &str, secret: &str) -> Result<(), Outcome> {
        let name = mechanism.name();
        let initial = match mechanism {
            Mechanism::Plain => auth::plain(login, secret),
            Mechanism::XOAuth2 => auth::xoauth2(login, secret),
            Mechanism::OAuthBearer => auth::oauthbearer(login, &self.cfg.host, self.cfg.port, secret),
            Mechanism::Login | Mechanism::CramMd5 => String::new(),
        };
        let reply = if initial.is_empty() {
            self.expect(Stage::Auth, &format!("AUTH {name}"), 3)?
        } else {
            let line = format!("AUTH {name} {initial}");
            self.send(Stage::Auth, &line, &format!("AUTH {name} {HIDDEN}"))?
        };
        let challenged = reply.class() == 3;
        let reply = match mechanism {
            // A server that ignores initial responses asks again with an empty 334.
            Mechanism::Plain if challenged && reply.lines[0].trim().is_empty() => {
                self.send(Stage::Auth, &initial, HIDDEN)?
            }
            // The server sent an error description (JSON); the client ends the exchange
            // (XOAUTH2: an empty line; RFC 7628: a lone ^A) and the server's 5xx follows.
            Mechanism::XOAuth2 if challenged => self.expect(Stage::Auth, "", 2)?,
            Mechanism::OAuthBearer if challenged => self.expect(Stage::Auth, "AQ==", 2)?,
            Mechanism::Login => {
                let asked = self.send(Stage::Auth, &auth::b64(login), HIDDEN)?;
                self.check(Stage::Auth, asked, 3)?;
                self.send(Stage::Auth, &auth::b64(secret), HIDDEN)?
            }
            Mechanism::CramMd5 => match auth::cram_md5(login, secret, &reply.lines[0]) {
                Ok(response) => self.send(Stage::Auth, &response, HIDDEN)?,
                Err(e) => {
                    // Cancel the exchange (RFC 4954 "*") and report the bad challenge.
                    let _ = self.expect(Stage::Auth, "*", 5);
                    let text = format!("bad CRAM-MD5 challenge: {e}");
                    return Err(Outcome::temporary(Stage::Auth, text));
                }
            },
            _ => reply,
        };
        self.check(Stage::Auth, reply, 2).map(drop)
    }

    /// A cached connection, if RSET (which also clears a failed transaction) finds the server
    /// still keeps it; else QUIT.
    pub(super) fn reusable(mut self) -> Option<Self> {
        if !self.dead {
            self.start_clock(self.cfg.command_timeout);
            if self.expect(Stage::Mail, "RSET", 2).is_ok() {
                self.dirty = false;
                return Some(self);
            }
        }
        self.quit();
        None
    }

    pub(super) fn trace(&self, prefix: &str, text: &str) {
        if self.cfg.verbose {
            // Straight to fd 2; a closed stderr must not break delivery.
            let _ = writeln!(io::stderr().lock(), "{prefix}{text}");
        }
    }

    /// Every read from now on ends within `wait` in all.
    pub(super) fn start_clock(&mut self, wait: Duration) {
        self.reader.get_mut().sock.deadline = Instant::now() + wait;
    }

    pub(super) fn conn_failure(&mut self, stage: Stage, err: &str) -> Outcome {
        self.dead = true;
        let text = format!("{}: {err} during {}", self.cfg.host, super::name(stage));
        Outcome::temporary(stage, text)
    }

    pub(super) fn write(&mut self, stage: Stage, bytes: &[u8]) -> Result<(), Outcome> {
        let result = self.reader.get_mut().send(bytes);
        result.map_err(|e| self.conn_failure(stage, &describe(&e, self.cfg.command_timeout)))
    }

    pub(super) fn read_reply(&mut self, stage: Stage) -> Result<Reply, Outcome> {
        Reply::read(|| self.read_line()).map_err(|e| self.conn_failure(stage, &e))
    }

    fn read_line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        let mut limited = (&mut self.reader).take(MAX_LINE as u64);
        limited
            .read_until(b'\n', &mut line)
            .map_err(|e| describe(&e, self.cfg.command_timeout))?;
        if !line.ends_with(b"\n") {
            return Err(if line.len() == MAX_LINE {
                format!("reply line longer than {MAX_LINE} bytes")
            } else {
                "connection closed by the server".to_owned()
            });
        }
        self.trace("<<< ", &clean_text(line.trim_ascii_end()));
        Ok(line)
    }

    /// Wrap the connection in TLS. Clear text the server sent before (after a STARTTLS reply: an
    /// injection attempt or a broken server) is not from the TLS peer: thrown away unread.
    pub(super) fn start_tls(&mut self) -> Result<(), Outcome> {
        let stray = self.reader.buffer().len();
        if stray > 0 {
            let text = format!("discarded {stray} bytes received after the STARTTLS reply");
            self.trace("*** ", &text);
            self.reader.consume(stray);
        }
        let config = self.tls_config.clone().expect("TLS config built for TLS modes");
        let host = &self.cfg.host;
        let handshake = self.reader.get_mut().start_tls(config, host);
        let presented = tls::PRESENTED.take();
        let conn = match handshake {
            Ok(conn) => conn,
            Err(e) => {
                self.dead = true;
                // The certificate the checks refused, if it got that far (doctor shows it).
                self.report.peer_cert_sha256 = presented;
                return Err(Outcome::temporary(Stage::Tls, format!("{host}: {e}")));
            }
        };
        // rustls names them `TLSv1_3`, `TLS13_AES_256_GCM_SHA384`...
        let version = conn.protocol_version().and_then(|v| v.as_str());
        let cipher = conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str());
        let version = version.unwrap_or("unknown").replace('_', ".");
        let cipher = cipher.unwrap_or("unknown").to_owned();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        self.report.peer_cert_sha256 = leaf.map(|c| format!("{:x}", Sha256::digest(c)));
        self.report.tls_resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.trace("*** ", &format!("TLS {version} {cipher}"));
        (self.report.tls_version, self.report.tls_cipher) = (Some(version), Some(cipher));
        Ok(())
    }

    /// QUIT, and a short wait for its reply (only logged); then `close_notify` when TLS is up.
    pub(super) fn quit(&mut self) {
        if !self.dead {
            self.start_clock(QUIT_WAIT.min(self.cfg.command_timeout));
            // Failures here are never reported: any stage will do.
            let _ = self.send(Stage::Mail, "QUIT", "QUIT");
            self.dead = true;
        }
        self.reader.get_mut().close();
    }
}

/// The TCP socket, whose reads all end by `deadline`: a handshake or reply trickled a byte at
/// a time cannot outlast it (a timeout per read would restart with every byte).
struct Socket {
    tcp: TcpStream,
    deadline: Instant,
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

struct Stream {
    sock: Socket,
    tls: Option<ClientConnection>,
}

impl Stream {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => {
                let mut tls = rustls::Stream::new(tls, &mut self.sock);
                tls.write_all(bytes).and_then(|()| tls.flush())
            }
            None => self.sock.tcp.write_all(bytes),
        }
    }

    /// The TLS handshake, within the clock; from then on the stream reads and writes through it.
    /// (On a failed handshake, rustls has already sent the server its alert.)
    fn start_tls(&mut self, config: Arc<ClientConfig>, host: &str) -> Result<&ClientConnection, String> {
        let name = tls::server_name(host)?;
        let mut tls = ClientConnection::new(config, name).map_err(|e| format!("TLS setup: {e}"))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut self.sock).map_err(|err| match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    "timeout during the TLS handshake".to_owned()
                }
                io::ErrorKind::UnexpectedEof => "connection closed during the TLS handshake".to_owned(),
                _ => format!("TLS handshake failed: {err}"),
            })?;
        }
        Ok(self.tls.insert(tls))
    }

    fn close(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls.complete_io(&mut self.sock);
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.sock).read(buf),
            None => self.sock.read(buf),
        }
    }
}

/// The first address that takes the connection, without Nagle's delay (commands go in one write).
fn connect(cfg: &SessionConfig) -> Result<(TcpStream, IpAddr), Outcome> {
    let mut errors = Vec::new();
    for &ip in &cfg.addresses {
        let target = SocketAddr::new(ip, cfg.port);
        let tcp = TcpStream::connect_timeout(&target, cfg.connect_timeout).and_then(|tcp| {
            tcp.set_nodelay(true)?;
            tcp.set_write_timeout(Some(cfg.command_timeout))?;
            Ok(tcp)
        });
        match tcp {
            Ok(tcp) => return Ok((tcp, ip)),
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                let wait = cfg.connect_timeout.as_secs_f64();
                errors.push(format!("{target}: connect timeout ({wait} s)"));
            }
            Err(e) => errors.push(format!("{target}: {e}")),
        }
    }
    if errors.is_empty() {
        errors.push("no address to connect to".to_owned());
    }
    let text = format!("cannot connect to {}: {}", cfg.host, errors.join("; "));
    Err(Outcome::temporary(Stage::Connect, text))
}

/// What an I/O error means to the session; `timeout` is the wait that ran out.
fn describe(err: &io::Error, timeout: Duration) -> String {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timeout ({} s) waiting for the server", timeout.as_secs_f64())
        }
        io::ErrorKind::UnexpectedEof => "connection closed by the server".to_owned(),
        _ => format!("connection error: {err}"),
    }
}

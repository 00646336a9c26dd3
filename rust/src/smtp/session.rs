//! One session's connection state and its set-up and tear-down: connect, greeting, EHLO or
//! HELO, STARTTLS or implicit TLS, AUTH and QUIT. The transactions are in transaction.rs.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;

use rustls::ClientConfig;

use super::conn::{Conn, ConnError, Stream};
use super::{Credentials, Outcome, SessionConfig, SessionReport, Stage, Status, TlsMode, QUIT_WAIT};
use crate::auth::{self, Mechanism};
use crate::journal::Journal;
use crate::reply::{Extensions, Reply};
use crate::tls::{self, TlsInfo};

pub(super) struct Session<'a> {
    pub(super) cfg: &'a SessionConfig,
    pub(super) conn: Conn,
    tls_config: Option<Arc<ClientConfig>>,
    pub(super) ext: Extensions,
    tls_info: Option<TlsInfo>,
    mechanism: Option<Mechanism>,
    /// The connection can no longer carry commands (error, timeout, 421).
    pub(super) dead: bool,
    /// The server may hold state from a failed transaction: RSET before the next one.
    pub(super) dirty: bool,
    pub(super) journal: Option<Journal>,
}

impl<'a> Session<'a> {
    pub(super) fn connect(cfg: &'a SessionConfig, report: &mut SessionReport) -> Result<Self, Outcome> {
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
            journal: cfg.journal.as_deref().map(Journal::new),
        };
        if cfg.tls_mode == TlsMode::Implicit {
            session.start_tls()?;
        }
        Ok(session)
    }

    pub(super) fn setup(&mut self) -> Result<(), Outcome> {
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
    pub(super) fn finish(&mut self, report: &mut SessionReport) {
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

    pub(super) fn conn_failure(&mut self, stage: Stage, err: ConnError) -> Outcome {
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
    pub(super) fn expect(&mut self, stage: Stage, line: Option<&str>, class: u16) -> Result<Reply, Outcome> {
        let result = match line {
            Some(line) => self.conn.command(line),
            None => self.conn.read_reply(),
        };
        let reply = result.map_err(|e| self.conn_failure(stage, e))?;
        self.check(stage, reply, class)
    }

    pub(super) fn check(&mut self, stage: Stage, reply: Reply, class: u16) -> Result<Reply, Outcome> {
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
            Mechanism::XOAuth2 | Mechanism::OAuthBearer => {
                let (payload, cancel) = if mechanism == Mechanism::XOAuth2 {
                    (auth::xoauth2(login, secret), "")
                } else {
                    let cfg = self.cfg;
                    (auth::oauthbearer(login, &cfg.host, cfg.port, secret), "AQ==")
                };
                let reply = self.secret_step(
                    &format!("AUTH {mechanism} {payload}"),
                    &format!("AUTH {mechanism} {HIDDEN}"),
                )?;
                if reply.class() == 3 {
                    // The server sent an error description (JSON); the client ends the exchange
                    // (XOAUTH2: an empty line; RFC 7628: a lone ^A) and the server's 5xx follows.
                    self.expect(Stage::Auth, Some(cancel), 2)?
                } else {
                    reply
                }
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
    pub(super) fn quit(&mut self) {
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

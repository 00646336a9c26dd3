//! One session's connection state and its set-up and tear-down: connect, greeting, EHLO or
//! HELO, STARTTLS or implicit TLS, AUTH and QUIT. The transactions are in transaction.rs.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;

use super::conn::Conn;
use super::{Credentials, Outcome, SessionConfig, SessionReport, Stage, Status, TlsMode, QUIT_WAIT};
use crate::auth::{self, Mechanism};
use crate::journal::Journal;
use crate::reply::{Extensions, Reply};
use crate::tls::{self, TlsInfo};

/// What the transcript shows instead of a line holding credentials.
const HIDDEN: &str = "<authentication data hidden>";

pub(super) struct Session {
    pub(super) cfg: Arc<SessionConfig>,
    pub(super) conn: Conn,
    tls_config: Option<Arc<ClientConfig>>,
    address: IpAddr,
    pub(super) ext: Extensions,
    tls_info: Option<TlsInfo>,
    mechanism: Option<Mechanism>,
    /// The connection can no longer carry commands (error, timeout, 421).
    pub(super) dead: bool,
    /// The server may hold state from a failed transaction: RSET before the next one.
    pub(super) dirty: bool,
    pub(super) journal: Option<Journal>,
}

impl Session {
    /// Connect and set the session up; a failure is what every recipient gets.
    pub(super) fn open(cfg: &Arc<SessionConfig>, report: &mut SessionReport) -> Result<Self, Outcome> {
        let tls_config = match cfg.tls_mode {
            TlsMode::None => None,
            _ => Some(tls::client_config(&cfg.tls).map_err(|e| Outcome::temporary(Stage::Tls, e))?),
        };
        let (sock, address) = connect_any(cfg)?;
        report.address = Some(address);
        let mut session = Session {
            cfg: cfg.clone(),
            address,
            conn: Conn::new(sock, cfg.command_timeout, cfg.verbose),
            tls_config,
            ext: Extensions::default(),
            tls_info: None,
            mechanism: None,
            dead: false,
            dirty: false,
            journal: cfg.journal.as_deref().map(Journal::new),
        };
        if let Err(failure) = session.setup() {
            session.finish(report);
            session.quit();
            return Err(failure);
        }
        Ok(session)
    }

    /// TLS, greeting, EHLO, STARTTLS and AUTH, all within one deadline: a server that trickles
    /// them byte by byte cannot hold the session longer than that.
    fn setup(&mut self) -> Result<(), Outcome> {
        self.conn.deadline = Some(Instant::now() + self.cfg.command_timeout);
        if self.cfg.tls_mode == TlsMode::Implicit {
            self.start_tls()?;
        }
        let greeting = self
            .conn
            .read_reply()
            .map_err(|e| self.conn_failure(Stage::Greeting, &e))?;
        self.check(Stage::Greeting, greeting, 2)?;
        self.hello()?;
        if matches!(self.cfg.tls_mode, TlsMode::StartTls | TlsMode::Opportunistic) {
            self.starttls(self.cfg.tls_mode == TlsMode::StartTls)?;
        }
        self.authenticate()?;
        self.conn.deadline = None;
        Ok(())
    }

    /// Sync the journal and copy what the caller wants to know into the report.
    pub(super) fn finish(&mut self, report: &mut SessionReport) {
        if let Some(journal) = &mut self.journal {
            if let Err(e) = journal.sync() {
                self.conn.trace("!!! ", &e.to_string());
            }
        }
        report.address = Some(self.address);
        report.tls.clone_from(&self.tls_info);
        report.auth_mechanism = self.mechanism;
        report.extensions.clone_from(&self.ext.keywords);
    }

    /// The connection failed (`err` says how): it is dead.
    pub(super) fn conn_failure(&mut self, stage: Stage, err: &str) -> Outcome {
        self.dead = true;
        Outcome::temporary(
            stage,
            format!("{}: {err} during {}", self.cfg.host, stage.as_str()),
        )
    }

    /// Send `line` (the transcript shows `shown`) and read the reply, whatever it is.
    pub(super) fn send(&mut self, stage: Stage, line: &str, shown: &str) -> Result<Reply, Outcome> {
        self.conn.queue(line, shown);
        let reply = self.conn.write(&[]).and_then(|()| self.conn.read_reply());
        reply.map_err(|e| self.conn_failure(stage, &e))
    }

    /// Send `line`; its reply must be of `class`.
    pub(super) fn expect(&mut self, stage: Stage, line: &str, class: u16) -> Result<Reply, Outcome> {
        let reply = self.send(stage, line, line)?;
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
        let outcome = Outcome::from_reply(stage, &reply);
        if outcome.status == Status::Sent {
            return Err(outcome.temporary_with("unexpected reply: "));
        }
        Err(outcome)
    }

    fn start_tls(&mut self) -> Result<(), Outcome> {
        let config = self.tls_config.clone().expect("TLS config built for TLS modes");
        let info = self.conn.start_tls(config, &self.cfg.host).map_err(|e| {
            self.dead = true;
            Outcome::temporary(Stage::Tls, format!("{}: {e}", self.cfg.host))
        })?;
        self.conn
            .trace("*** ", &format!("TLS {} {}", info.version, info.cipher));
        self.tls_info = Some(info);
        Ok(())
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
        let Some(creds) = &cfg.credentials else {
            return Ok(());
        };
        // Never send credentials in clear; the caller sees auth_mechanism None.
        let allowed = cfg.mechanisms.as_deref().unwrap_or(&Mechanism::DEFAULT);
        let usable = self.conn.is_tls() || cfg.allow_insecure_auth;
        let Some(mechanism) = auth::choose(&self.ext.auth, allowed).filter(|_| usable) else {
            return Ok(());
        };
        // A rejected login must not bounce the queue (Postfix's soft bounce): temporary.
        self.auth_exchange(mechanism, creds)
            .map_err(|outcome| outcome.temporary_with(&format!("AUTH {mechanism} failed: ")))?;
        self.mechanism = Some(mechanism);
        Ok(())
    }

    fn auth_exchange(&mut self, mechanism: Mechanism, creds: &Credentials) -> Result<(), Outcome> {
        let (login, secret) = (creds.login.as_str(), creds.secret.as_str());
        let initial = match mechanism {
            Mechanism::Plain => auth::plain(login, secret),
            Mechanism::XOAuth2 => auth::xoauth2(login, secret),
            Mechanism::OAuthBearer => auth::oauthbearer(login, &self.cfg.host, self.cfg.port, secret),
            Mechanism::Login | Mechanism::CramMd5 => String::new(),
        };
        let reply = if initial.is_empty() {
            self.expect(Stage::Auth, &format!("AUTH {mechanism}"), 3)?
        } else {
            let line = format!("AUTH {mechanism} {initial}");
            self.send(Stage::Auth, &line, &format!("AUTH {mechanism} {HIDDEN}"))?
        };
        let challenged = reply.class() == 3;
        let reply = match mechanism {
            // A server that ignores initial responses asks again with an empty 334.
            Mechanism::Plain if challenged && reply.first_text().trim().is_empty() => {
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
            Mechanism::CramMd5 => match auth::cram_md5(login, secret, reply.first_text()) {
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

    /// QUIT and wait a little for its reply, which is only logged; then close.
    pub(super) fn quit(&mut self) {
        if !self.dead {
            self.dead = true;
            self.conn.queue("QUIT", "QUIT");
            if self.conn.write(&[]).is_ok() {
                self.conn.deadline = Some(self.conn.until(QUIT_WAIT));
                let _ = self.conn.read_reply();
            }
        }
        self.conn.close();
    }

    /// Before a cached connection carries more mail: RSET, which also finds out whether the
    /// server has dropped it meanwhile.
    pub(super) fn still_usable(&mut self) -> bool {
        if self.dead {
            return false;
        }
        self.conn.deadline = Some(Instant::now() + self.cfg.command_timeout);
        let ok = self.expect(Stage::Mail, "RSET", 2).is_ok();
        self.conn.deadline = None;
        self.dirty = !ok;
        ok
    }
}

/// Try each address in turn; a connection failure moves on to the next one.
fn connect_any(cfg: &SessionConfig) -> Result<(TcpStream, IpAddr), Outcome> {
    let mut errors = Vec::new();
    for &ip in &cfg.addresses {
        let target = SocketAddr::new(ip, cfg.port);
        let sock = TcpStream::connect_timeout(&target, cfg.connect_timeout).and_then(|sock| {
            sock.set_nodelay(true)?;
            sock.set_write_timeout(Some(cfg.command_timeout))?;
            Ok(sock)
        });
        match sock {
            Ok(sock) => return Ok((sock, ip)),
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
    Err(Outcome::temporary(
        Stage::Connect,
        format!("cannot connect to {}: {}", cfg.host, errors.join("; ")),
    ))
}

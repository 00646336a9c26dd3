//! One session's state and its set-up: greeting, EHLO or HELO, STARTTLS or implicit TLS, AUTH.

use std::io::BufReader;
use std::sync::Arc;

use rustls::ClientConfig;

use super::conn::{connect, Stream};
use super::{Outcome, SessionConfig, SessionResult, Stage, Status, TlsMode};
use crate::auth::{self, Mechanism};
use crate::journal::Journal;
use crate::reply::{Extensions, Reply};
use crate::tls;

/// What the transcript shows instead of a line holding credentials.
const HIDDEN: &str = "<authentication data hidden>";

pub(super) struct Session {
    pub(super) cfg: Arc<SessionConfig>,
    /// Our read buffer, so that what is buffered before STARTTLS can be thrown away.
    pub(super) reader: BufReader<Stream>,
    /// Commands queued to be written in one go.
    pub(super) out: Vec<u8>,
    pub(super) tls_config: Option<Arc<ClientConfig>>,
    pub(super) ext: Extensions,
    /// What the caller learns of the session (without results).
    pub(super) facts: SessionResult,
    /// The connection can no longer carry commands (error, timeout, 421).
    pub(super) dead: bool,
    /// The server may hold state from a failed transaction: RSET before the next one.
    pub(super) dirty: bool,
    pub(super) journal: Option<Journal>,
}

impl Session {
    /// Connect and set the session up; a failure is what every recipient gets.
    pub(super) fn open(cfg: &Arc<SessionConfig>, report: &mut SessionResult) -> Result<Self, Outcome> {
        let tls_config = match cfg.tls_mode {
            TlsMode::None => None,
            _ => Some(tls::client_config(&cfg.tls).map_err(|e| Outcome::temporary(Stage::Tls, e))?),
        };
        let (reader, address) = connect(cfg)?;
        let mut session = Session {
            cfg: cfg.clone(),
            reader,
            out: Vec::new(),
            tls_config,
            ext: Extensions::default(),
            facts: SessionResult {
                address: Some(address.to_string()),
                ..SessionResult::default()
            },
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
        self.start_clock(self.cfg.command_timeout);
        if self.cfg.tls_mode == TlsMode::Implicit {
            self.start_tls()?;
        }
        let greeting = self.read_reply(Stage::Greeting)?;
        self.check(Stage::Greeting, greeting, 2)?;
        self.hello()?;
        if matches!(self.cfg.tls_mode, TlsMode::StartTls | TlsMode::Opportunistic) {
            self.starttls(self.cfg.tls_mode == TlsMode::StartTls)?;
        }
        self.authenticate()
    }

    /// Sync the journal; tell the caller what the session found.
    pub(super) fn finish(&mut self, report: &mut SessionResult) {
        if let Some(journal) = &mut self.journal {
            if let Err(e) = journal.sync() {
                self.trace("!!! ", &e.to_string());
            }
        }
        *report = SessionResult {
            results: std::mem::take(&mut report.results),
            extensions: self.ext.keywords.clone(),
            ..self.facts.clone()
        };
    }

    /// Send `line` (the transcript shows `shown`) and read its reply.
    pub(super) fn send(&mut self, stage: Stage, line: &str, shown: &str) -> Result<Reply, Outcome> {
        self.queue(line, shown);
        self.write(stage, &[])?;
        self.read_reply(stage)
    }

    /// Send `line`; its reply must be of `class`.
    pub(super) fn expect(&mut self, stage: Stage, line: &str, class: u16) -> Result<Reply, Outcome> {
        let reply = self.send(stage, line, line)?;
        self.check(stage, reply, class)
    }

    /// The reply if of `class`, else its failure. A 421: the server is closing the channel.
    pub(super) fn check(&mut self, stage: Stage, reply: Reply, class: u16) -> Result<Reply, Outcome> {
        self.dead |= reply.code == 421;
        if reply.class() == class {
            return Ok(reply);
        }
        let outcome = Outcome::from_reply(stage, &reply);
        if outcome.status == Status::Sent {
            return Err(outcome.temporary_with("unexpected reply: "));
        }
        Err(outcome)
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
        let Some((login, secret)) = &cfg.credentials else {
            return Ok(());
        };
        // Never send credentials in clear; the caller sees auth_mechanism None.
        let allowed = cfg.mechanisms.as_deref().unwrap_or(&Mechanism::DEFAULT);
        let usable = self.facts.tls_version.is_some() || cfg.allow_insecure_auth;
        let Some(mechanism) = auth::choose(&self.ext.auth, allowed).filter(|_| usable) else {
            return Ok(());
        };
        // A rejected login must not bounce the queue (Postfix's soft bounce): temporary.
        self.auth_exchange(mechanism, login, secret)
            .map_err(|outcome| outcome.temporary_with(&format!("AUTH {} failed: ", mechanism.name())))?;
        self.facts.auth_mechanism = Some(mechanism);
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
}

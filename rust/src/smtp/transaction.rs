//! Whole transactions over an established session: local checks, MAIL, RCPT and DATA (one
//! reply at a time or pipelined), the body, and the delivered journal. Another `impl Session`
//! block, beside the one in session.rs.

use std::fs::File;
use std::io::{self, Read};

use super::data::{open_message, DataEncoder};
use super::session::Session;
use super::{Outcome, Stage, Status, Transaction, CHUNK, PIPELINE_BATCH};
use crate::address::check;
use crate::reply::Reply;

impl Session<'_> {
    /// One transaction. Returns the per-recipient outcomes, and the failure to give every
    /// later transaction when the connection can no longer be used.
    pub(super) fn transaction(&mut self, tx: &Transaction) -> (Vec<Outcome>, Option<Outcome>) {
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
            // A spool that takes no more writes cannot record what is sent either: stop here, so
            // that at most this transaction is sent again once it can.
            self.conn.trace("!!! ", &e.to_string());
            self.dead = true;
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
        // The one address check again, right before the lines are written (spool files from
        // elsewhere, C dma's among them, never passed it): nothing can add a parameter.
        if !tx.sender.is_empty() && check(&tx.sender).is_err() {
            return fail(Outcome::permanent(
                Stage::Mail,
                "5.1.7",
                format!("invalid sender address {:?}", tx.sender),
            ));
        }
        for (state, rcpt) in rcpts.iter_mut().zip(&tx.recipients) {
            if check(rcpt).is_err() {
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
        let mut rcpt_params = String::new();
        if self.ext.has("DSN") {
            for param in tx.dsn.split_whitespace() {
                let to = if param.starts_with("NOTIFY=") {
                    &mut rcpt_params
                } else {
                    &mut mail
                };
                to.push(' ');
                to.push_str(param);
            }
        }
        Ok(Prepared {
            mail,
            rcpt_params,
            file,
        })
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
                    .command(&format!("RCPT TO:<{rcpt}>{}", p.rcpt_params))
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
        commands.extend(
            wanted
                .iter()
                .map(|&i| format!("RCPT TO:<{}>{}", tx.recipients[i], p.rcpt_params)),
        );
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
    /// After each `RCPT TO:<...>`: DSN's NOTIFY.
    rcpt_params: String,
    file: File,
}

/// No control characters in an envelope address: a CR or LF would inject commands.
#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use crate::smtp::{plain_config, run_session, Stage, Status, Transaction};
    use crate::test_util::tempdir;

    /// A server that takes everything and answers 250 (354 to DATA); returns what it was sent.
    fn sink() -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let (mut seen, mut body) = (Vec::new(), false);
            out.write_all(b"220 mx.test\r\n").unwrap();
            for line in BufReader::new(stream).lines().map(Result::unwrap) {
                let reply: &[u8] = match line.as_str() {
                    "." if body => b"250 taken\r\n",
                    _ if body => b"",
                    l if l.starts_with("EHLO") => b"250-mx.test\r\n250 PIPELINING\r\n",
                    "DATA" => b"354 go on\r\n",
                    "QUIT" => b"221 bye\r\n",
                    _ => b"250 ok\r\n",
                };
                out.write_all(reply).unwrap();
                body = (body && line != ".") || line == "DATA";
                let quit = line == "QUIT";
                seen.push(line);
                if quit {
                    break;
                }
            }
            seen
        });
        (port, server)
    }

    #[test]
    fn an_address_that_would_add_a_parameter_never_reaches_the_wire() {
        let dir = tempdir("tx-address");
        let message = dir.join("M1");
        std::fs::write(&message, "Subject: x\n\nbody\n").unwrap();
        let tx = |sender: &str, recipients: &[&str]| Transaction {
            sender: sender.into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            message: message.clone(),
            journal_ids: Vec::new(),
            dsn: String::new(),
        };
        let injected = "b@x> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ceo@corp.example";
        let (port, server) = sink();
        let report = run_session(
            &plain_config(port),
            &[
                tx("a@x", &["ok@x", injected]),
                tx("rt_a@x> AUTH=<ceo@corp.example", &["ok@x"]),
            ],
        );
        let seen = server.join().unwrap();
        let statuses: Vec<Vec<_>> = report
            .results
            .iter()
            .map(|r| r.iter().map(|o| (o.status, o.stage)).collect())
            .collect();
        assert_eq!(
            statuses,
            [
                vec![(Status::Sent, Stage::Dot), (Status::Permanent, Stage::Rcpt)],
                vec![(Status::Permanent, Stage::Mail)]
            ]
        );
        let envelope: Vec<&String> = seen
            .iter()
            .filter(|l| l.starts_with("MAIL") || l.starts_with("RCPT"))
            .collect();
        assert_eq!(envelope, ["MAIL FROM:<a@x>", "RCPT TO:<ok@x>"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

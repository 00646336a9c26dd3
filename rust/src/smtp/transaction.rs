//! Whole transactions over an established session: local checks, MAIL, RCPT and DATA (pipelined
//! when offered), the body, and the delivered journal. Another `impl Session` block.

use std::fs::File;
use std::io::Seek;

use super::data;
use super::session::Session;
use super::{Outcome, Stage, Status, Transaction, PIPELINE_BATCH};
use crate::address::check;

impl Session {
    /// Report the per-recipient outcomes; return the failure for every later one if the connection
    /// broke.
    pub(super) fn transaction(&mut self, tx: &Transaction) -> Option<Outcome> {
        // Per recipient, its refusal (local or by the server), if any so far.
        let mut refused: Vec<Option<Outcome>> = vec![None; tx.recipients.len()];
        // The envelope's replies within one TIMEOUT in all (the final reply has its own).
        self.start_clock(self.cfg.command_timeout);
        let last = self.try_transaction(tx, &mut refused).unwrap_or_else(|o| o);
        let broken = self.dead.then(|| last.clone());
        let outcomes: Vec<Outcome> = refused
            .into_iter()
            .map(|r| r.unwrap_or_else(|| last.clone()))
            .collect();
        self.journal(tx, &outcomes);
        self.report.results.push(outcomes);
        broken.or_else(|| self.dead.then(|| self.unusable()))
    }

    fn unusable(&self) -> Outcome {
        let text = format!("{}: connection no longer usable", self.cfg.host);
        Outcome::temporary(Stage::Mail, text)
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
            // Stop here: at most this transaction is sent again once the spool takes writes.
            self.trace("!!! ", &e.to_string());
            self.dead = true;
        }
    }

    fn try_transaction(
        &mut self,
        tx: &Transaction,
        refused: &mut [Option<Outcome>],
    ) -> Result<Outcome, Outcome> {
        let (mail, rcpt_params, file) = self.prepare(tx, refused)?;
        if refused.iter().all(Option::is_some) {
            return Err(Outcome::temporary(Stage::Rcpt, "no valid recipient"));
        }
        if self.dirty {
            if let Err(outcome) = self.expect(Stage::Mail, "RSET", 2) {
                // The server's state is unknown: give up on this connection.
                self.quit();
                return Err(outcome.temporary_with("RSET failed: "));
            }
        }
        self.dirty = true;
        self.envelope(mail, &rcpt_params, tx, refused)?;
        let outcome = self.send_body(file)?;
        self.dirty = false;
        Ok(outcome)
    }

    /// Local checks (addresses, message file, SIZE, SMTPUTF8); the MAIL line, the parameters
    /// after each RCPT (DSN's NOTIFY) and the open message file.
    fn prepare(
        &mut self,
        tx: &Transaction,
        refused: &mut [Option<Outcome>],
    ) -> Result<(String, String, File), Outcome> {
        // Checked again right before the lines are written (C dma's spool files never were):
        // no address can add a parameter.
        if !tx.sender.is_empty() && check(&tx.sender).is_err() {
            let text = format!("invalid sender address {:?}", tx.sender);
            return Err(Outcome::permanent(Stage::Mail, "5.1.7", text));
        }
        for (state, rcpt) in refused.iter_mut().zip(&tx.recipients) {
            if check(rcpt).is_err() {
                let text = format!("invalid recipient address {rcpt:?}");
                *state = Some(Outcome::permanent(Stage::Rcpt, "5.1.3", text));
            }
        }
        // One pass for the facts MAIL FROM needs; the second, for DATA, reads the page cache.
        let opened = File::open(&tx.message).and_then(|mut file| {
            let facts = data::encode(&mut file, |e| e, |_, _| Ok(()))?;
            file.rewind()?;
            Ok((file, facts))
        });
        let (file, facts) = opened.map_err(|e| {
            let text = format!("cannot read message file {}: {e}", tx.message.display());
            Outcome::temporary(Stage::Data, text)
        })?;
        let (host, size) = (&self.cfg.host, facts.wire_size);
        if let Some(limit) = self.ext.size_limit.filter(|&l| size > l) {
            let text = format!("message of {size} octets exceeds the {limit}-octet limit of {host}");
            return Err(Outcome::permanent(Stage::Size, "5.3.4", text));
        }
        let utf8 = !tx.sender.is_ascii() || tx.recipients.iter().any(|r| !r.is_ascii());
        if utf8 && !self.ext.has("SMTPUTF8") {
            let text = format!("{host} does not offer SMTPUTF8, needed for a non-ASCII address");
            return Err(Outcome::permanent(Stage::Mail, "5.6.7", text));
        }
        let mut mail = format!("MAIL FROM:<{}>", tx.sender);
        if self.ext.has("SIZE") {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if facts.eight_bit && self.ext.has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        // DSN: NOTIFY goes after each RCPT, RET and ENVID after MAIL.
        let offered = self.ext.has("DSN");
        let (notify, other): (Vec<&str>, Vec<&str>) = tx
            .dsn
            .split_whitespace()
            .filter(|_| offered)
            .partition(|p| p.starts_with("NOTIFY="));
        mail.extend(other.iter().map(|p| format!(" {p}")));
        let rcpt_params = notify.iter().map(|p| format!(" {p}")).collect();
        Ok((mail, rcpt_params, file))
    }

    /// MAIL, each RCPT still wanted and DATA, in batches when the server offers PIPELINING (RFC 2920);
    /// the failure that ends the transaction before the body, if any.
    fn envelope(
        &mut self,
        mail: String,
        rcpt_params: &str,
        tx: &Transaction,
        refused: &mut [Option<Outcome>],
    ) -> Result<(), Outcome> {
        let wanted: Vec<usize> = (0..refused.len()).filter(|&i| refused[i].is_none()).collect();
        let mut commands = vec![mail];
        let rcpt = |&i: &usize| format!("RCPT TO:<{}>{rcpt_params}", tx.recipients[i]);
        commands.extend(wanted.iter().map(rcpt));
        commands.push("DATA".to_owned());
        let stage = |n: usize| match n {
            0 => Stage::Mail,
            n if n > wanted.len() => Stage::Data,
            _ => Stage::Rcpt,
        };
        let pipelined = self.ext.has("PIPELINING");
        let (mut mail_ok, mut data_reply, mut n) = (Ok(()), None, 0);
        for batch in commands.chunks(if pipelined { PIPELINE_BATCH } else { 1 }) {
            // One at a time, stop where a reply ends the transaction: a refused MAIL (or its 421),
            // or no recipient accepted before DATA.
            let nobody = n > wanted.len() && refused.iter().all(Option::is_some);
            if !pipelined && (mail_ok.is_err() || nobody) {
                break;
            }
            let lines: String = batch
                .iter()
                .inspect(|command| self.trace(">>> ", command))
                .map(|command| format!("{command}\r\n"))
                .collect();
            self.write(stage(n), lines.as_bytes())?;
            for _ in batch {
                let reply = self.read_reply(stage(n))?;
                match stage(n) {
                    Stage::Mail => mail_ok = self.check(Stage::Mail, reply, 2).map(drop),
                    Stage::Rcpt if mail_ok.is_ok() => match self.check(Stage::Rcpt, reply, 2) {
                        // The recipient's refusal, unless a 421 ends the session.
                        Err(outcome) if self.dead => return Err(outcome),
                        result => refused[wanted[n - 1]] = result.err(),
                    },
                    Stage::Data => data_reply = Some(reply),
                    _ => {}
                }
                n += 1;
            }
        }
        if mail_ok.is_err() || refused.iter().all(Option::is_some) {
            if data_reply.is_some_and(|r| r.class() == 3) {
                // The server took DATA anyway: end it with an empty message (RFC 2920 3.1).
                let _ = self.expect(Stage::Data, ".", 2);
            }
            mail_ok?;
            return Err(if self.dead {
                self.unusable()
            } else {
                Outcome::temporary(Stage::Rcpt, "no recipient accepted")
            });
        }
        self.check(Stage::Data, data_reply.expect("DATA reply"), 3)
            .map(drop)
    }

    /// The message after DATA's 354, and the final dot's reply.
    fn send_body(&mut self, mut file: File) -> Result<Outcome, Outcome> {
        let mut octets = 0;
        let read_failure = |e| Outcome::temporary(Stage::Data, format!("reading the message file: {e}"));
        let sent = data::encode(&mut file, read_failure, |chunk, last| {
            octets += chunk.len();
            let stage = if last {
                self.trace(">>> ", &format!("<message body, {} octets>", octets - 3));
                self.trace(">>> ", ".");
                Stage::Dot
            } else {
                Stage::Data
            };
            self.write(stage, chunk)
        });
        // A DATA cut short cannot be ended without delivering a truncated message: hang up.
        self.dead |= sent.is_err();
        sent?;
        self.start_clock(self.cfg.command_timeout);
        let reply = self.read_reply(Stage::Dot)?;
        // A refusal here fails only this transaction: the next one needs no RSET.
        let checked = self.check(Stage::Dot, reply, 2);
        Ok(checked.map_or_else(|o| o, |r| Outcome::from_reply(Stage::Dot, &r)))
    }
}

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
            recipients: recipients.iter().map(ToString::to_string).collect(),
            message: message.clone(),
            journal_ids: Vec::new(),
            dsn: String::new(),
        };
        let injected = "b@x> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ceo@corp.example";
        let (port, server) = sink();
        let report = run_session(
            plain_config(port),
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

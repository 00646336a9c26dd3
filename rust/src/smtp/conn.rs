//! The connection under a session: connect, the socket (plain or in rustls), replies read within
//! a deadline, the switch to TLS, and QUIT. Another `impl Session` block.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection};

use super::session::Session;
use super::{Outcome, SessionConfig, Stage, MAX_LINE, QUIT_WAIT};
use crate::reply::{clean_text, Reply};
use crate::tls;

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

/// The socket, and rustls over it once TLS is up. `Session::write` writes.
pub(super) struct Stream {
    sock: Socket,
    tls: Option<ClientConnection>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.sock).read(buf),
            None => self.sock.read(buf),
        }
    }
}

/// Try each address in turn.
pub(super) fn connect(cfg: &SessionConfig) -> Result<(BufReader<Stream>, IpAddr), Outcome> {
    let mut errors = Vec::new();
    for &ip in &cfg.addresses {
        let target = SocketAddr::new(ip, cfg.port);
        let tcp = TcpStream::connect_timeout(&target, cfg.connect_timeout).and_then(|tcp| {
            tcp.set_nodelay(true)?;
            tcp.set_write_timeout(Some(cfg.command_timeout))?;
            Ok(tcp)
        });
        match tcp {
            Ok(tcp) => {
                let sock = Socket {
                    tcp,
                    deadline: Instant::now(),
                };
                return Ok((BufReader::new(Stream { sock, tls: None }), ip));
            }
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

fn handshake(sock: &mut Socket, config: Arc<ClientConfig>, host: &str) -> Result<ClientConnection, String> {
    let mut tls =
        ClientConnection::new(config, tls::server_name(host)?).map_err(|e| format!("TLS setup: {e}"))?;
    while tls.is_handshaking() {
        if let Err(err) = tls.complete_io(sock) {
            // Let the server know why (rustls queues an alert), then give up.
            let _ = tls.write_tls(sock);
            return Err(match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    "timeout during the TLS handshake".to_owned()
                }
                io::ErrorKind::UnexpectedEof => "connection closed during the TLS handshake".to_owned(),
                _ => format!("TLS handshake failed: {err}"),
            });
        }
    }
    Ok(tls)
}

impl Session {
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
        let text = format!("{}: {err} during {}", self.cfg.host, stage.as_str());
        Outcome::temporary(stage, text)
    }

    /// Queue a command line; the transcript shows `shown`.
    pub(super) fn queue(&mut self, line: &str, shown: &str) {
        self.trace(">>> ", shown);
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Write what is queued, then `bytes`.
    pub(super) fn write(&mut self, stage: Stage, bytes: &[u8]) -> Result<(), Outcome> {
        self.out.extend_from_slice(bytes);
        let stream = self.reader.get_mut();
        let result = match &mut stream.tls {
            Some(tls) => {
                let mut tls = rustls::Stream::new(tls, &mut stream.sock);
                tls.write_all(&self.out).and_then(|()| tls.flush())
            }
            None => stream.sock.tcp.write_all(&self.out),
        };
        self.out.clear();
        result.map_err(|e| self.conn_failure(stage, &describe(&e, self.cfg.command_timeout)))
    }

    /// One whole reply, within the clock's deadline.
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
        let conn = handshake(&mut self.reader.get_mut().sock, config, &self.cfg.host).map_err(|e| {
            self.dead = true;
            Outcome::temporary(Stage::Tls, format!("{}: {e}", self.cfg.host))
        })?;
        // rustls names them `TLSv1_3`, `TLS13_AES_256_GCM_SHA384`...
        let unknown = || "unknown".to_owned();
        let version = conn
            .protocol_version()
            .map_or_else(unknown, |v| format!("{v:?}").replace('_', "."));
        let cipher = conn
            .negotiated_cipher_suite()
            .map_or_else(unknown, |s| format!("{:?}", s.suite()));
        self.trace("*** ", &format!("TLS {version} {cipher}"));
        let facts = &mut self.facts;
        (facts.tls_version, facts.tls_cipher) = (Some(version), Some(cipher));
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        facts.peer_cert_sha256 = leaf.map(|c| tls::sha256_hex(c));
        facts.tls_resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        self.reader.get_mut().tls = Some(conn);
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
        let stream = self.reader.get_mut();
        if let Some(tls) = &mut stream.tls {
            tls.send_close_notify();
            let _ = tls.complete_io(&mut stream.sock);
        }
    }
}

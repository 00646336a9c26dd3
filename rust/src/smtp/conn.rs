//! The connection under a session: connect, and the socket (plain or TLS) whose reads end by a deadline.

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection};

use super::{Outcome, SessionConfig, Stage};
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

pub(super) struct Stream {
    sock: Socket,
    tls: Option<ClientConnection>,
}

impl Stream {
    /// Every read from now on ends within `wait` in all.
    pub(super) fn start_clock(&mut self, wait: Duration) {
        self.sock.deadline = Instant::now() + wait;
    }

    pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
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
    pub(super) fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<&ClientConnection, String> {
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

    pub(super) fn close(&mut self) {
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
pub(super) fn describe(err: &io::Error, timeout: Duration) -> String {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timeout ({} s) waiting for the server", timeout.as_secs_f64())
        }
        io::ErrorKind::UnexpectedEof => "connection closed by the server".to_owned(),
        _ => format!("connection error: {err}"),
    }
}

//! The connection under a session: the socket, plain or inside rustls, buffered reads of whole
//! replies within a deadline, and the switch to TLS. Errors are the text the session reports.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::MAX_LINE;
use crate::reply::{clean_text, Reply};
use crate::tls::{self, TlsInfo};

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

/// The socket, and rustls over it once TLS is up.
struct Stream {
    sock: Socket,
    tls: Option<rustls::ClientConnection>,
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.sock).read(buf),
            None => self.sock.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.sock).write(buf),
            None => self.sock.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(tls) => rustls::Stream::new(tls, &mut self.sock).flush(),
            None => self.sock.flush(),
        }
    }
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

/// A stream behind our read buffer (so the bytes buffered before STARTTLS can be thrown away)
/// and an output buffer that is written in one go per command group.
pub(super) struct Conn {
    reader: BufReader<Stream>,
    out: Vec<u8>,
    timeout: Duration,
    /// When set, no read may end later than this, however the server trickles its bytes.
    pub(super) deadline: Option<Instant>,
    verbose: bool,
}

impl Conn {
    pub(super) fn new(tcp: TcpStream, timeout: Duration, verbose: bool) -> Self {
        let sock = Socket {
            tcp,
            deadline: Instant::now(),
        };
        Conn {
            reader: BufReader::new(Stream { sock, tls: None }),
            out: Vec::new(),
            timeout,
            deadline: None,
            verbose,
        }
    }

    pub(super) fn trace(&self, prefix: &str, text: &str) {
        if self.verbose {
            // Straight to fd 2; a closed stderr must not break delivery.
            let _ = writeln!(io::stderr().lock(), "{prefix}{text}");
        }
    }

    /// The end of a wait of `wait` from now, or the deadline if that comes first.
    pub(super) fn until(&self, wait: Duration) -> Instant {
        let end = Instant::now() + wait;
        self.deadline.map_or(end, |d| d.min(end))
    }

    /// Queue a command line; the transcript shows `shown` (credentials hidden).
    pub(super) fn queue(&mut self, line: &str, shown: &str) {
        self.trace(">>> ", shown);
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Write what is queued, then `bytes`.
    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.out.extend_from_slice(bytes);
        let stream = self.reader.get_mut();
        let result = stream.write_all(&self.out).and_then(|()| stream.flush());
        self.out.clear();
        result.map_err(|e| describe(&e, self.timeout))
    }

    /// One whole reply, within the command timeout (and the deadline, if set).
    pub(super) fn read_reply(&mut self) -> Result<Reply, String> {
        self.reader.get_mut().sock.deadline = self.until(self.timeout);
        Reply::read(|| self.read_line())
    }

    fn read_line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        let mut limited = (&mut self.reader).take(MAX_LINE as u64);
        limited
            .read_until(b'\n', &mut line)
            .map_err(|e| describe(&e, self.timeout))?;
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

    /// Wrap the connection in TLS and finish the handshake within the command timeout (and the
    /// deadline). Whatever the server sent before in clear text (after a STARTTLS reply: an
    /// injection attempt or a broken server) is not from the TLS peer: thrown away unread.
    pub(super) fn start_tls(&mut self, config: Arc<ClientConfig>, host: &str) -> Result<TlsInfo, String> {
        let stray = self.reader.buffer().len();
        if stray > 0 {
            self.trace(
                "*** ",
                &format!("discarded {stray} bytes received after the STARTTLS reply"),
            );
            self.reader.consume(stray);
        }
        let name = tls::server_name(host)?;
        let mut tls = rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS setup: {e}"))?;
        let deadline = self.until(self.timeout);
        let stream = self.reader.get_mut();
        stream.sock.deadline = deadline;
        while tls.is_handshaking() {
            if let Err(err) = tls.complete_io(&mut stream.sock) {
                // Let the server know why (rustls queues an alert), then give up.
                let _ = tls.write_tls(&mut stream.sock);
                return Err(match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        "timeout during the TLS handshake".to_owned()
                    }
                    io::ErrorKind::UnexpectedEof => "connection closed during the TLS handshake".to_owned(),
                    _ => format!("TLS handshake failed: {err}"),
                });
            }
        }
        let info = tls::session_info(&tls);
        stream.tls = Some(tls);
        Ok(info)
    }

    pub(super) fn is_tls(&self) -> bool {
        self.reader.get_ref().tls.is_some()
    }

    /// Send `close_notify` when TLS is up; the socket closes when the session is dropped.
    pub(super) fn close(&mut self) {
        let stream = self.reader.get_mut();
        if let Some(tls) = &mut stream.tls {
            tls.send_close_notify();
            let _ = tls.complete_io(&mut stream.sock);
        }
    }
}

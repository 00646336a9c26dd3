//! The connection under a session: the socket, plain or inside rustls, with our own read
//! buffer, replies read whole within a deadline, and the switch to TLS.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::{CHUNK, MAX_LINE};
use crate::reply::{clean_text, Reply, ReplyError, ReplyParser};
use crate::tls::{self, TlsInfo};

pub(super) enum Stream {
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

/// A socket whose reads all end by one deadline: a handshake trickled a byte at a time cannot
/// outlast it (a timeout per read would restart with every byte).
struct Timed<'a>(&'a mut TcpStream, Instant);

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.1.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.0.set_read_timeout(Some(left))?;
        self.0.read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Why the connection stopped being usable.
#[derive(Debug)]
pub(super) enum ConnError {
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

    pub(super) fn describe(&self, timeout: Duration) -> String {
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
pub(super) struct Conn {
    stream: Stream,
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    pub(super) out: Vec<u8>,
    timeout: Duration,
    /// When set, no read may end later than this, however the server trickles its bytes.
    pub(super) deadline: Option<Instant>,
    verbose: bool,
}

impl Conn {
    pub(super) fn new(stream: Stream, timeout: Duration, verbose: bool) -> Self {
        Conn {
            stream,
            rbuf: vec![0; 4 * MAX_LINE].into_boxed_slice(),
            rstart: 0,
            rend: 0,
            out: Vec::with_capacity(CHUNK),
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

    pub(super) fn queue(&mut self, line: &str) {
        self.trace(">>> ", line);
        self.queue_raw(line);
    }

    /// Queue a line carrying credentials; the transcript shows `shown` instead.
    pub(super) fn queue_secret(&mut self, line: &str, shown: &str) {
        self.trace(">>> ", shown);
        self.queue_raw(line);
    }

    fn queue_raw(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(super) fn flush(&mut self) -> Result<(), ConnError> {
        let io = self.stream.io().map_err(ConnError::Io)?;
        let result = io.write_all(&self.out).and_then(|()| io.flush());
        self.out.clear();
        result.map_err(ConnError::from_io)
    }

    pub(super) fn command(&mut self, line: &str) -> Result<Reply, ConnError> {
        self.queue(line);
        self.flush()?;
        self.read_reply()
    }

    pub(super) fn read_reply(&mut self) -> Result<Reply, ConnError> {
        self.read_reply_within(self.timeout)
    }

    /// One whole reply, which must complete within `wait` however the server trickles it.
    pub(super) fn read_reply_within(&mut self, wait: Duration) -> Result<Reply, ConnError> {
        let mut deadline = Instant::now() + wait;
        deadline = self.deadline.map_or(deadline, |d| d.min(deadline));
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
    pub(super) fn discard_buffered(&mut self) -> usize {
        let n = self.rend - self.rstart;
        self.rstart = 0;
        self.rend = 0;
        n
    }

    /// Wrap the socket in TLS and finish the handshake. Any bytes read before this point
    /// must already be discarded: they came over the unprotected channel.
    pub(super) fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        host: &str,
        deadline: Option<Instant>,
    ) -> Result<TlsInfo, String> {
        let Stream::Plain(mut sock) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err("TLS is already active".to_owned());
        };
        let name = tls::server_name(host)?;
        let mut tls = ClientConnection::new(config, name).map_err(|e| format!("TLS setup: {e}"))?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.timeout);
        while tls.is_handshaking() {
            let mut timed = Timed(&mut sock, deadline);
            if let Err(err) = tls.complete_io(&mut timed) {
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

    pub(super) fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Send close_notify when TLS is up, then drop the socket.
    pub(super) fn close(&mut self) {
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        self.stream = Stream::Gone;
    }
}

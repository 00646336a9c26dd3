//! `sendmail -bs`: the client's half of an SMTP session on standard input, read by one buffered
//! reader so that command lines and message bodies never lose a byte to each other's read-ahead.
//! A body that ends without its `.` line is an error: nothing of it may be queued. Lines of the
//! body end in CRLF only (RFC 5321): PHP's mailers send bodies with bare LFs and stuff dots after
//! CRLF only, so a dot after a bare LF is theirs and must stay.

use std::io::{self, BufRead, BufReader, ErrorKind, Read};

const CHUNK: usize = 64 * 1024;

pub struct SmtpInput<R> {
    src: BufReader<R>,
    /// In a body (after the 354 reply, until its `.` line): what was read of it.
    body: Option<Piece>,
    /// The last body read ended with its `.` line, and no command was read since.
    ended: bool,
}

/// Part of a body line: up to `CHUNK` bytes, up to and with its LF.
#[derive(Default)]
struct Piece {
    bytes: Vec<u8>,
    /// How much of it has been handed over.
    given: usize,
    /// The next piece continues a line (this one did not end in CRLF).
    mid_line: bool,
}

impl<R: Read> SmtpInput<R> {
    pub fn new(src: R) -> Self {
        SmtpInput {
            src: BufReader::with_capacity(CHUNK, src),
            body: None,
            ended: false,
        }
    }

    /// The next command line without its CRLF (or bare LF), at most `max` bytes of it, and whether
    /// it was whole; the rest of a longer line is read and thrown away. `None` at end of input.
    pub fn command(&mut self, max: usize) -> io::Result<Option<(Vec<u8>, bool)>> {
        // Room for the CR and LF of a line that is just long enough.
        let limit = max + 2;
        self.ended = false;
        let mut line = Vec::new();
        if (&mut self.src).take(limit as u64).read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        if line.pop_if(|b| *b == b'\n').is_some() {
            line.pop_if(|b| *b == b'\r');
        } else if line.len() == limit {
            self.src.skip_until(b'\n')?;
        }
        // (A last line without its end, the client gone, still counts.)
        let whole = line.len() <= max;
        line.truncate(max);
        Ok(Some((line, whole)))
    }

    /// The message body: a new one (after the 354 reply), or the rest of one under way.
    pub fn data(&mut self) -> Data<'_, R> {
        self.body.get_or_insert_with(Piece::default);
        Data(self)
    }

    /// Read and discard what is left of the body after a 354 reply whose spooling failed,
    /// whether it failed before reading any of it or part of the way through.
    pub fn skip_data(&mut self) -> io::Result<()> {
        if !self.ended {
            io::copy(&mut self.data(), &mut io::sink())?;
        }
        Ok(())
    }
}

/// The body of one DATA, dot-unstuffed; ends (reads 0) after the `.` line, fails if input ends first.
pub struct Data<'a, R>(&'a mut SmtpInput<R>);

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let SmtpInput { src, body, ended } = &mut *self.0;
        let Some(piece) = body else {
            return Ok(0);
        };
        while piece.given == piece.bytes.len() {
            let line_start = !piece.mid_line;
            let after_cr = piece.bytes.last() == Some(&b'\r');
            piece.bytes.clear();
            piece.given = 0;
            let mut line = (&mut *src).take(CHUNK as u64);
            if line.read_until(b'\n', &mut piece.bytes)? < CHUNK && !piece.bytes.ends_with(b"\n") {
                let msg = "the client closed the session before the end of the message";
                return Err(io::Error::new(ErrorKind::UnexpectedEof, msg));
            }
            // Only CRLF ends a line: a dot after a bare LF is content, never stuffing.
            piece.mid_line = !(piece.bytes.ends_with(b"\r\n") || (after_cr && piece.bytes == b"\n"));
            if line_start && piece.bytes.starts_with(b".") {
                if matches!(&piece.bytes[..], b".\r\n" | b".\n") {
                    *body = None;
                    *ended = true;
                    return Ok(0);
                }
                piece.given = 1;
            }
        }
        let n = (&piece.bytes[piece.given..]).read(out)?;
        piece.given += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_bodies_share_one_buffer() {
        let input: &[u8] = b"EHLO x\r\nDATA\r\nSubject: a\r\n\r\n..lead\r\n.\r\n..\r\n.\r\nQUIT\n";
        let mut s = SmtpInput::new(input);
        assert_eq!(s.command(512).unwrap(), Some((b"EHLO x".to_vec(), true)));
        assert_eq!(s.command(512).unwrap(), Some((b"DATA".to_vec(), true)));
        let mut body = Vec::new();
        s.data().read_to_end(&mut body).unwrap();
        assert_eq!(body, b"Subject: a\r\n\r\n.lead\r\n");
        assert!(s.body.is_none());
        let mut body = Vec::new();
        s.data().read_to_end(&mut body).unwrap();
        assert_eq!(body, b".\r\n");
        assert_eq!(s.command(512).unwrap(), Some((b"QUIT".to_vec(), true)));
        assert_eq!(s.command(512).unwrap(), None);
    }

    #[test]
    fn byte_by_byte_input_gives_the_same_body() {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        let input = b"a\r\n.\rb\r\n..\r\n.x\n.\n..\r\n.\r\nNOOP\r\n";
        let mut s = SmtpInput::new(OneByte(input));
        let mut body = Vec::new();
        s.data().read_to_end(&mut body).unwrap();
        // After a bare LF, dots are content.
        assert_eq!(body, b"a\r\n\rb\r\n.\r\nx\n.\n..\r\n");
        assert_eq!(s.command(512).unwrap(), Some((b"NOOP".to_vec(), true)));
    }

    #[test]
    fn a_crlf_split_by_the_chunk_limit_still_ends_the_line() {
        for len in [CHUNK - 2, CHUNK - 1, CHUNK, CHUNK + 1] {
            let mut input = vec![b'a'; len];
            input.extend_from_slice(b"\r\n..x\r\n.\r\nNOOP\r\n");
            let mut s = SmtpInput::new(&input[..]);
            let mut body = Vec::new();
            s.data().read_to_end(&mut body).unwrap();
            assert_eq!(body.len(), len + 6, "{len}");
            assert!(body.ends_with(b"a\r\n.x\r\n"), "{len}");
            assert_eq!(s.command(512).unwrap(), Some((b"NOOP".to_vec(), true)));
        }
    }

    #[test]
    fn skip_data_skips_a_body_not_begun_or_half_read_but_never_the_next_commands() {
        let input: &[u8] = b"DATA\r\nRSET\r\n.\r\nDATA\r\nab\r\ncd\r\n.\r\nDATA\r\nx\r\n.\r\nNOOP\r\n";
        let mut s = SmtpInput::new(input);
        assert_eq!(s.command(512).unwrap(), Some((b"DATA".to_vec(), true)));
        s.skip_data().unwrap(); // failed before reading any of it
        assert_eq!(s.command(512).unwrap(), Some((b"DATA".to_vec(), true)));
        let mut first = [0; 2];
        s.data().read_exact(&mut first).unwrap(); // failed part of the way
        s.skip_data().unwrap();
        assert_eq!(s.command(512).unwrap(), Some((b"DATA".to_vec(), true)));
        s.data().read_to_end(&mut Vec::new()).unwrap(); // read whole, then failed
        s.skip_data().unwrap();
        assert_eq!(s.command(512).unwrap(), Some((b"NOOP".to_vec(), true)));
    }

    #[test]
    fn a_body_without_its_dot_line_fails() {
        let mut s = SmtpInput::new(&b"Subject: a\r\n\r\nhalf a mess"[..]);
        let err = s.data().read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
        assert!(s.body.is_some());
    }

    #[test]
    fn long_command_lines_are_cut_and_the_rest_skipped() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\nRSET\r\nlast");
        let mut s = SmtpInput::new(&input[..]);
        let (line, whole) = s.command(512).unwrap().unwrap();
        assert_eq!((line.len(), whole), (512, false));
        assert_eq!(s.command(512).unwrap(), Some((b"RSET".to_vec(), true)));
        assert_eq!(s.command(512).unwrap(), Some((b"last".to_vec(), true)));
        let exact = [vec![b'y'; 512], b"\r\n".to_vec()].concat();
        let mut s = SmtpInput::new(&exact[..]);
        assert_eq!(s.command(512).unwrap(), Some((vec![b'y'; 512], true)));
        // Cut the same when it is the last one and its end never comes.
        let mut s = SmtpInput::new(&[b'z'; 513][..]);
        assert_eq!(s.command(512).unwrap(), Some((vec![b'z'; 512], false)));
        assert_eq!(s.command(512).unwrap(), None);
    }
}

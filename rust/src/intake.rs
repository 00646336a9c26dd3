//! What submitters give us, as we spool it. The message goes in one pass with constant memory,
//! whatever the size of the message or of a line: CRLF and bare CR become LF, a leading `From `
//! line is dropped, a lone `.` ends the input unless `-i`, `Bcc:` is removed, the `To:`/`Cc:`/`Bcc:`
//! values are collected for `-t`, and missing headers are added at the end of the header block.
//! Long lines are kept whole: the SMTP writer breaks them on the wire.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Seek, Write};
use std::path::Path;

use crate::errors::{DmaError, IoContext, Result};

/// How much of a line we look at before deciding what it is; the rest of the line streams.
const LINE_HEAD: usize = 1024;
const CHUNK: usize = 64 * 1024;
/// What `-t` keeps of one `To:`/`Cc:`/`Bcc:` field, and of all of them: memory stays bounded
/// whatever the input (C dma refused any line over 997 bytes).
const MAX_FIELD: usize = 1 << 20;
const MAX_COLLECTED: usize = 4 << 20;

/// The keyword arguments of `Incoming.receive` (`py_api`), the unset ones false or none.
#[cfg_attr(feature = "python", derive(pyo3::FromPyObject), pyo3(from_item_all))]
pub struct IntakeOptions {
    /// A line holding only `.` ends the message (no `-i`).
    #[cfg_attr(feature = "python", pyo3(default))]
    pub dot_terminates: bool,
    /// Collect the values of `To:`, `Cc:` and `Bcc:` (for `-t`).
    #[cfg_attr(feature = "python", pyo3(default))]
    pub collect_recipients: bool,
    /// Written before the message (our `Received:` header).
    pub prefix: Vec<u8>,
    /// Header lines (ending in LF) to add when the message lacks a field of their name.
    pub add_if_missing: Vec<Vec<u8>>,
    /// REWRITEFROM: the first `From:` becomes this address, keeping its display name.
    #[cfg_attr(feature = "python", pyo3(default))]
    pub rewrite_from: Option<String>,
}

/// What becomes of a line, and of the header lines that continue it: kept, collected for `-t`,
/// captured (the `From:` being rewritten).
#[derive(Clone, Copy)]
struct Fate {
    keep: bool,
    collect: bool,
    capture: bool,
}

const KEEP: Fate = Fate {
    keep: true,
    collect: false,
    capture: false,
};
const DROP: Fate = Fate { keep: false, ..KEEP };

struct Intake<'a, W> {
    out: W,
    opts: &'a IntakeOptions,
    /// Bytes written to the spool.
    size: u64,
    /// Unfolded values of `To:`, `Cc:` and `Bcc:`, when asked for.
    recipients: Vec<String>,
    /// Still in the header block; what became of its last field.
    headers: bool,
    field: Fate,
    /// The `add_if_missing` headers not seen yet.
    missing: Vec<&'a Vec<u8>>,
    /// The first `From:` while it is rewritten (bounded).
    from: Option<Vec<u8>>,
    collected: usize,
}

impl<W: Write> Intake<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.size += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .context(|| "writing the spool file".into())
    }

    /// A line's fate, from its head (without its line end).
    fn fate(&mut self, head: &[u8], first: bool) -> Result<Fate> {
        if !self.headers {
            return Ok(KEEP);
        }
        if first && is_from_line(head) {
            return Ok(DROP);
        }
        if !first && is_continuation(head) {
            return Ok(self.field);
        }
        let Some(name) = field_name(head) else {
            // The empty line ends the header block (`close_headers` writes it); any other line
            // that is not a field starts the body of a message without a separator.
            self.close_headers()?;
            return Ok(if head.is_empty() { DROP } else { KEEP });
        };
        self.missing
            .retain(|line| !field_name(line).is_some_and(|n| n.eq_ignore_ascii_case(name)));
        let name = name.to_ascii_lowercase();
        let collect = self.opts.collect_recipients;
        self.field = match &name[..] {
            b"from" if self.opts.rewrite_from.is_some() && self.from.is_none() => {
                self.from = Some(Vec::new());
                Fate {
                    capture: true,
                    ..DROP
                }
            }
            b"bcc" => Fate { collect, ..DROP },
            b"to" | b"cc" => Fate { collect, ..KEEP },
            _ => KEEP,
        };
        Ok(self.field)
    }

    /// Write, collect or capture part of a line as its fate says (`head`: the line's first part).
    fn take(&mut self, fate: Fate, piece: &[u8], head: bool) -> Result<()> {
        if let (true, Some(from)) = (fate.capture, self.from.as_mut()) {
            let room = LINE_HEAD.saturating_sub(from.len()).min(piece.len());
            from.extend_from_slice(&piece[..room]);
        }
        if fate.keep {
            self.write(piece)?;
        }
        if !fate.collect {
            return Ok(());
        }
        let fields = &mut self.recipients;
        let mut value = piece;
        if head && !is_continuation(piece) {
            // A new field: its value starts after the colon.
            fields.push(String::new());
            value = piece.splitn(2, |&b| b == b':').nth(1).unwrap_or_default();
        }
        self.collected += value.len();
        let field = fields.last_mut().expect("a field is being collected");
        if field.len() + value.len() > MAX_FIELD || self.collected > MAX_COLLECTED {
            return Err(DmaError::Data(format!(
                "To:, Cc: and Bcc: over {} MiB in a field or {} MiB in all, for -t",
                MAX_FIELD >> 20,
                MAX_COLLECTED >> 20
            )));
        }
        field.push_str(&String::from_utf8_lossy(value));
        Ok(())
    }

    /// End the header block: the rewritten `From:`, what is missing, then the empty line.
    fn close_headers(&mut self) -> Result<()> {
        self.headers = false;
        if let (Some(address), Some(value)) = (&self.opts.rewrite_from, self.from.take()) {
            self.write(&rewritten_from(&value, address))?;
        }
        for line in std::mem::take(&mut self.missing) {
            self.write(line)?;
        }
        self.write(b"\n")
    }
}

/// The input with CRLF and bare CR as LF; a NUL byte is an error.
struct Lf<R> {
    inner: R,
    after_cr: bool,
}

impl<R: Read> Read for Lf<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if buf[..n].contains(&0) {
                let nul = io::Error::new(ErrorKind::InvalidData, "message contains a NUL byte");
                return Err(nul);
            }
            let mut kept = 0;
            for i in 0..n {
                let byte = buf[i];
                if !(self.after_cr && byte == b'\n') {
                    buf[kept] = if byte == b'\r' { b'\n' } else { byte };
                    kept += 1;
                }
                self.after_cr = byte == b'\r';
            }
            // Nothing but the LF of a CRLF: read on (0 would mean the end of the input).
            if kept > 0 || n == 0 {
                return Ok(kept);
            }
        }
    }
}

/// Up to `limit` bytes of the current line, its LF included, into `buf` (emptied first).
fn read_piece(input: &mut impl BufRead, limit: usize, buf: &mut Vec<u8>) -> Result<usize> {
    buf.clear();
    input
        .by_ref()
        .take(limit as u64)
        .read_until(b'\n', buf)
        .or_else(|e| match e.kind() {
            // Only `Lf` says InvalidData (a NUL byte): the system never does.
            ErrorKind::InvalidData => Err(DmaError::Data(e.to_string())),
            _ => Err(e).context(|| "reading the message".into()),
        })
}

/// `From: <display name> <address>`: the display name of `header` (a whole `From:` field) is the
/// phrase before its `<`, else the old value itself when it has a comment (cron's
/// `root (Cron Daemon)`, quoted), else there is none.
fn rewritten_from(header: &[u8], address: &str) -> Vec<u8> {
    let value = header.splitn(2, |&b| b == b':').nth(1).unwrap_or_default();
    let text = String::from_utf8_lossy(value);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let name = match text.find('<') {
        Some(i) => text[..i].trim().to_owned(),
        None if text.contains('(') => format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")),
        None => String::new(),
    };
    let space = if name.is_empty() { "" } else { " " };
    format!("From: {name}{space}<{address}>\n").into_bytes()
}

fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// RFC 976 `From ` (or `>From `) envelope line that some programs put first.
fn is_from_line(line: &[u8]) -> bool {
    let line = line.strip_prefix(b">").unwrap_or(line);
    line.get(..5)
        .is_some_and(|head| head.eq_ignore_ascii_case(b"from "))
}

/// The field name of a header line (`Name:`, allowing blanks before the colon), if it is one.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    let printable = |b: &u8| (33..=126).contains(b) && *b != b':';
    (!name.is_empty() && name.iter().all(printable)).then_some(name)
}

/// Spool the message from `input` into `out` (buffered here) as `opts` say; returns its size there
/// and, with `collect_recipients`, the values of its `To:`, `Cc:` and `Bcc:`.
pub fn copy_message(input: impl Read, out: impl Write, opts: &IntakeOptions) -> Result<(u64, Vec<String>)> {
    let lf = Lf {
        inner: input,
        after_cr: false,
    };
    let mut input = BufReader::with_capacity(CHUNK, lf);
    let mut intake = Intake {
        out: BufWriter::with_capacity(CHUNK, out),
        opts,
        size: 0,
        recipients: Vec::new(),
        headers: true,
        field: KEEP,
        missing: opts.add_if_missing.iter().collect(),
        from: None,
        collected: 0,
    };
    intake.write(&opts.prefix)?;
    let mut piece = Vec::with_capacity(CHUNK);
    let mut first = true;
    // Each line: its head decides its fate, then the rest of it follows in chunks.
    while read_piece(&mut input, LINE_HEAD, &mut piece)? > 0 {
        if opts.dot_terminates && piece == b".\n" {
            break;
        }
        let mut whole = piece.ends_with(b"\n");
        let head = &piece[..piece.len() - usize::from(whole)];
        let fate = intake.fate(head, first)?;
        intake.take(fate, head, true)?;
        while !whole {
            whole = read_piece(&mut input, CHUNK, &mut piece)? == 0 || piece.ends_with(b"\n");
            intake.take(fate, piece.strip_suffix(b"\n").unwrap_or(&piece), false)?;
        }
        if fate.keep {
            intake.write(b"\n")?;
        }
        first = false;
    }
    if intake.headers {
        intake.close_headers()?;
    }
    intake.out.flush().context(|| "writing the spool file".into())?;
    Ok((intake.size, intake.recipients))
}

/// A spooled message as a bounce quotes it: whole, or its header block (RET=HDRS).
pub fn quoted(path: &Path, whole: bool) -> Result<io::Take<File>> {
    let context = || format!("reading `{}'", path.display());
    let mut file = File::open(path).context(context)?;
    let mut len = u64::MAX;
    if !whole {
        len = 0;
        let mut lines = BufReader::new(&file);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).context(context)? > 0
            && !matches!(&line[..], b"\n" | b"\r\n")
        {
            len += line.len() as u64;
            line.clear();
        }
        file.rewind().context(context)?;
    }
    Ok(file.take(len))
}

/// A drop's (sender, recipients, DSN parameters) in the one shape `commit_drop` writes: a user
/// wrote it, so anything else refuses the drop.
pub fn parse_envelope(text: &[u8]) -> Result<(String, Vec<String>, String)> {
    let text = std::str::from_utf8(text).map_err(|_| DmaError::Data("the envelope is not UTF-8".into()))?;
    let text = text
        .strip_suffix('\n')
        .ok_or_else(|| DmaError::Data("the envelope is incomplete".into()))?;
    let (mut sender, mut recipients, mut dsn) = (None, Vec::new(), None);
    for line in text.split('\n') {
        let (key, value) = line.split_once(':').unwrap_or_default();
        let value = value.strip_prefix(' ').unwrap_or(value);
        match key {
            "Sender" if sender.is_none() => sender = Some(value.to_owned()),
            "Recipient" if !value.is_empty() => recipients.push(value.to_owned()),
            "DSN" if dsn.is_none() && dsn_valid(value) => dsn = Some(value.to_owned()),
            _ => {
                let shown: String = line.chars().take(80).collect();
                return Err(DmaError::Data(format!("unexpected envelope line {shown:?}")));
            }
        }
    }
    let sender = sender
        .filter(|_| !recipients.is_empty())
        .ok_or_else(|| DmaError::Data("the envelope lacks a sender or recipients".into()))?;
    crate::address::check_envelope(&sender, &recipients).map_err(|(address, why)| {
        let address = address.escape_debug();
        DmaError::Data(format!("invalid envelope address `{address}': {why}"))
    })?;
    Ok((sender, recipients, dsn.unwrap_or_default()))
}

/// DSN parameters as `sendmail -N/-R/-V` writes them (bounce.py): a drop's `DSN:` line is a user's.
fn dsn_valid(params: &str) -> bool {
    let among = |words: &str, allowed: &[&str]| words.split(',').all(|w| allowed.contains(&w));
    params.split(' ').all(|param| match param.split_once('=') {
        Some(("NOTIFY", words)) => among(words, &["NEVER", "SUCCESS", "FAILURE", "DELAY"]),
        Some(("RET", words)) => among(words, &["HDRS", "FULL"]),
        Some(("ENVID", id)) => !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic() && b != b'='),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::VERBATIM;

    fn add() -> Vec<Vec<u8>> {
        vec![b"Date: D\n".to_vec(), b"Message-Id: <M>\n".to_vec()]
    }

    fn run(input: &[u8], dot: bool, collect: bool) -> (String, (u64, Vec<String>)) {
        let opts = IntakeOptions {
            dot_terminates: dot,
            collect_recipients: collect,
            prefix: b"Received: x\n".to_vec(),
            add_if_missing: add(),
            rewrite_from: None,
        };
        let mut out = Vec::new();
        let info = copy_message(input, &mut out, &opts).unwrap();
        (String::from_utf8(out).unwrap(), info)
    }

    /// Feed the same input one byte at a time: chunk boundaries must not matter.
    fn run_bytewise(input: &[u8], dot: bool) -> String {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let opts = IntakeOptions {
            dot_terminates: dot,
            collect_recipients: false,
            prefix: Vec::new(),
            add_if_missing: add(),
            rewrite_from: None,
        };
        let mut out = Vec::new();
        copy_message(OneByte(input), &mut out, &opts).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn adds_missing_headers_before_the_separator() {
        let (out, (size, _)) = run(b"Subject: hi\nDate: x\n\nbody\n", false, false);
        assert_eq!(
            out,
            "Received: x\nSubject: hi\nDate: x\nMessage-Id: <M>\n\nbody\n"
        );
        assert_eq!(size, out.len() as u64);
    }

    #[test]
    fn crlf_and_bare_cr_become_lf() {
        let (out, _) = run(b"Subject: a\r\n\r\nx\ry\r\n", false, false);
        assert_eq!(out, "Received: x\nSubject: a\nDate: D\nMessage-Id: <M>\n\nx\ny\n");
        assert_eq!(
            run_bytewise(b"Subject: a\r\n\r\nx\ry\r\n", false),
            &out["Received: x\n".len()..]
        );
    }

    #[test]
    fn drops_bcc_with_continuations_and_collects_recipients() {
        let input = b"To: a@x,\n b@y\nBcc: c@z,\n\td@w\nCc: e@v\nSubject: s\n\nTo: not@header\n";
        let (out, (_, recipients)) = run(input, false, true);
        assert_eq!(
            out,
            "Received: x\nTo: a@x,\n b@y\nCc: e@v\nSubject: s\nDate: D\nMessage-Id: <M>\n\nTo: not@header\n"
        );
        assert_eq!(recipients, vec![" a@x, b@y", " c@z,\td@w", " e@v"]);
        let (out2, (_, recipients2)) = run(input, false, false);
        assert_eq!(out, out2);
        assert!(recipients2.is_empty());
    }

    #[test]
    fn dot_line_ends_input_only_without_dash_i() {
        let (out, _) = run(b"S: a\n\nx\n.\nafter\n", true, false);
        assert!(out.ends_with("\nx\n"), "{out}");
        let (out, _) = run(b"S: a\n\nx\n.\nafter\n", false, false);
        assert!(out.ends_with("\nx\n.\nafter\n"), "{out}");
        // CRLF normalisation applies before the dot test, and `..` is not a terminator.
        let (out, _) = run(b"S: a\r\n\r\n..\r\n.\r\nafter\r\n", true, false);
        assert!(out.ends_with("\n\n..\n"), "{out}");
        // A dot in the header block ends the input too; the header block is still closed.
        let (out, _) = run(b"S: a\n.\nafter\n", true, false);
        assert_eq!(out, "Received: x\nS: a\nDate: D\nMessage-Id: <M>\n\n");
        // A final `.` without its line end is content, as in C dma.
        let (out, _) = run(b"S: a\n\nend\n.", true, false);
        assert!(out.ends_with("\n\nend\n.\n"), "{out}");
    }

    #[test]
    fn rewrite_from_keeps_the_display_name() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"From: root (Cron Daemon)\nS: a\n\nb\n",
                "From: \"root (Cron Daemon)\" <n@x>\n",
            ),
            (
                b"S: a\nfrom: \"A, B\"\n <a@b>\nFrom: c@d\n\nb\n",
                "From: c@d\nFrom: \"A, B\" <n@x>\n",
            ),
            (b"From: a@b\nS: a\n\nb\n", "From: <n@x>\n"),
        ];
        for (input, want) in cases {
            let opts = IntakeOptions {
                rewrite_from: Some("n@x".into()),
                ..VERBATIM
            };
            let mut out = Vec::new();
            copy_message(*input, &mut out, &opts).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(
                out.contains(&format!("{want}\nb\n"))
                    && out.matches("From:").count() == want.matches("From:").count(),
                "{out}"
            );
        }
    }

    #[test]
    fn leading_from_line_is_dropped() {
        let (out, _) = run(b"From someone Wed Nov 25\nS: a\n\nFrom here\n", false, false);
        assert_eq!(out, "Received: x\nS: a\nDate: D\nMessage-Id: <M>\n\nFrom here\n");
        let (out, _) = run(b">from x\n\nb\n", false, false);
        assert!(out.starts_with("Received: x\nDate: D\n"), "{out}");
    }

    #[test]
    fn headers_only_empty_and_unterminated_input() {
        let (out, _) = run(b"Subject: only", false, false);
        assert_eq!(out, "Received: x\nSubject: only\nDate: D\nMessage-Id: <M>\n\n");
        let (out, _) = run(b"", false, false);
        assert_eq!(out, "Received: x\nDate: D\nMessage-Id: <M>\n\n");
        let (out, _) = run(b"S: a\n\nno newline", false, false);
        assert!(out.ends_with("\n\nno newline\n"));
    }

    #[test]
    fn a_message_without_separator_gets_one() {
        let (out, _) = run(b"just text, no header\nsecond\n", false, false);
        assert_eq!(
            out,
            "Received: x\nDate: D\nMessage-Id: <M>\n\njust text, no header\nsecond\n"
        );
    }

    #[test]
    fn presence_is_case_insensitive_and_allows_blank_before_colon() {
        let (out, _) = run(b"DATE : d\nmessage-ID:m\n\n", false, false);
        assert_eq!(out, "Received: x\nDATE : d\nmessage-ID:m\n\n");
    }

    #[test]
    fn what_t_collects_is_bounded() {
        let opts = |collect| IntakeOptions {
            collect_recipients: collect,
            ..crate::test_util::VERBATIM
        };
        let field = |n: usize| format!("To: {}\n", "a".repeat(n));
        let refused = |input: String| copy_message(input.as_bytes(), io::sink(), &opts(true)).is_err();
        assert!(!refused(field(MAX_FIELD - 1)));
        assert!(refused(field(MAX_FIELD + 1)));
        let folded = format!("Cc: a\n{}", format!(" {}\n", "b".repeat(MAX_FIELD / 4)).repeat(4));
        assert!(refused(folded.clone()));
        assert!(refused(
            field(MAX_FIELD - 10).repeat(MAX_COLLECTED / MAX_FIELD + 1)
        ));
        // Without -t nothing is kept, and a giant field streams.
        assert!(copy_message(folded.as_bytes(), io::sink(), &opts(false)).is_ok());
    }

    #[test]
    fn long_lines_stream_whole() {
        let long = "y".repeat(300_000);
        let input = format!("To: {long}\nSubject: s\n\n{long}\n");
        let (out, (_, recipients)) = run(input.as_bytes(), true, true);
        assert!(out.contains(&format!("\n\n{long}\n")));
        assert_eq!(recipients, vec![format!(" {long}")]);
        assert_eq!(
            run_bytewise(input.as_bytes(), true),
            &out["Received: x\n".len()..]
        );
    }

    #[test]
    fn nul_is_refused() {
        assert!(matches!(
            copy_message(&b"a\0b\n"[..], io::sink(), &VERBATIM),
            Err(DmaError::Data(_))
        ));
    }

    #[test]
    fn a_bounce_quotes_the_whole_original_or_its_header_block() {
        let dir = crate::test_util::tempdir("quoted");
        let path = dir.join("M1");
        let read = |whole| {
            let mut text = String::new();
            quoted(&path, whole).unwrap().read_to_string(&mut text).unwrap();
            text
        };
        std::fs::write(&path, "A: 1\nB: 2\n\nbody\n\nmore\n").unwrap();
        assert_eq!(read(false), "A: 1\nB: 2\n");
        assert_eq!(read(true), "A: 1\nB: 2\n\nbody\n\nmore\n");
        std::fs::write(&path, "A: 1\r\n\r\nbody\r\n").unwrap();
        assert_eq!(read(false), "A: 1\r\n");
        std::fs::write(&path, "A: 1\nno end").unwrap();
        assert_eq!(read(false), "A: 1\nno end");
        assert!(quoted(&dir.join("gone"), true).is_err());
    }

    #[test]
    fn a_drop_envelope_is_read_as_commit_drop_writes_it() {
        let parse = |text: &str| parse_envelope(text.as_bytes());
        let good = "NOTIFY=SUCCESS,DELAY RET=FULL ENVID=x+2By";
        assert_eq!(
            parse(&format!(
                "Sender: a@x\nRecipient: b@y\nRecipient:c@z\nDSN: {good}\n"
            ))
            .unwrap(),
            ("a@x".into(), vec!["b@y".into(), "c@z".into()], good.into())
        );
        assert_eq!(parse("Sender: \nRecipient: b@y\n").unwrap().0, "");
        for bad in [
            "Sender: a@x\nRecipient: b@y",
            "Sender: a@x\n",
            "Recipient: b@y\n",
            "Sender: a@x\nSender: a@x\nRecipient: b@y\n",
            "Sender: a@x\nRecipient: b@y\nOther: 1\n",
            "Sender: a@x\nRecipient: \n",
            "Sender: a@x\nRecipient: b@y> NOTIFY=NEVER\n",
            "Sender: a@x\rRecipient: b@y\n",
            "Sender: a@x\nRecipient: b@y\nDSN: RET=ALL\n",
            "Sender: a@x\nRecipient: b@y\nDSN: NOTIFY=NEVER  RET=FULL\n",
            "Sender: a@x\nRecipient: b@y\nDSN: ENVID=a=b\n",
        ] {
            assert!(matches!(parse(bad), Err(DmaError::Data(_))), "{bad:?}");
        }
        assert!(parse_envelope(b"Sender: \xff\nRecipient: b@y\n").is_err());
    }

    #[test]
    fn what_commit_drop_writes_reads_back() {
        let dir = crate::test_util::tempdir("envelope");
        let mut incoming = crate::spool::Incoming::create(&dir, true, None).unwrap();
        incoming.receive(&b"x\n"[..], &VERBATIM).unwrap();
        let recipients = vec!["b@y".to_owned(), "\"c d\"@z".to_owned()];
        let id = incoming
            .commit_drop("", &recipients, "NOTIFY=NEVER RET=HDRS")
            .unwrap();
        let text = std::fs::read(dir.join(format!("E{id}"))).unwrap();
        assert_eq!(
            parse_envelope(&text).unwrap(),
            (String::new(), recipients, "NOTIFY=NEVER RET=HDRS".into())
        );
    }
}

//! Turning what a submitter pipes into `sendmail` into the message we spool.
//!
//! One pass over the input with constant memory, whatever the size of the message or of a line:
//! CRLF and bare CR become LF, a leading `From ` line is dropped, a lone `.` ends the input unless
//! `-i`, `Bcc:` is removed, the `To:`/`Cc:`/`Bcc:` values are collected for `-t`, and missing
//! headers are added at the end of the header block. Long lines are kept whole here: the SMTP
//! writer breaks them on the wire.

use std::io::{self, Read, Write};

use crate::errors::{DmaError, IoContext, Result};

/// How much of a line we look at before deciding what it is; the rest of the line streams.
const LINE_HEAD: usize = 1024;
const CHUNK: usize = 64 * 1024;
/// What `-t` keeps of one `To:`/`Cc:`/`Bcc:` field, and of all of them: memory stays bounded
/// whatever the input (C dma refused any line over 997 bytes).
const MAX_FIELD: usize = 1 << 20;
const MAX_COLLECTED: usize = 4 << 20;

pub struct IntakeOptions<'a> {
    /// A line holding only `.` ends the message (no `-i`).
    pub dot_terminates: bool,
    /// Collect the values of `To:`, `Cc:` and `Bcc:` (for `-t`).
    pub collect_recipients: bool,
    /// Written before the message (our `Received:` header).
    pub prefix: &'a [u8],
    /// Headers to add when the message lacks them: (lower-case name, whole line ending in LF).
    pub add_if_missing: &'a [(&'a str, &'a [u8])],
    /// REWRITEFROM: the first `From:` becomes this address, keeping its display name.
    pub rewrite_from: Option<&'a str>,
}

#[derive(Debug, Default)]
pub struct MessageInfo {
    /// Bytes read from the submitter.
    pub input_bytes: u64,
    /// Bytes written to the spool (the message as it will be sent, LF line endings).
    pub size: u64,
    pub eight_bit: bool,
    /// Unfolded values of `To:`, `Cc:` and `Bcc:`, when asked for.
    pub recipient_headers: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Headers,
    Body,
    Done,
}

/// What to do with the rest of a line once its head has been classified.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fate {
    Keep,
    KeepAndCollect,
    Drop,
    DropAndCollect,
}

impl Fate {
    fn keeps(self) -> bool {
        matches!(self, Fate::Keep | Fate::KeepAndCollect)
    }
    fn collects(self) -> bool {
        matches!(self, Fate::KeepAndCollect | Fate::DropAndCollect)
    }
}

struct Transformer<'a, W: Write> {
    out: W,
    opts: &'a IntakeOptions<'a>,
    info: MessageInfo,
    part: Part,
    first_line: bool,
    /// The head of the current line, until it is classified.
    head: Vec<u8>,
    /// The fate of the current line once classified; `None` while still reading its head.
    fate: Option<Fate>,
    /// The fate of the previous header line, which continuation lines inherit.
    header_fate: Fate,
    present: Vec<bool>,
    pending_cr: bool,
    /// The first `From:` being rewritten (bounded), while its lines are read.
    from_value: Option<Vec<u8>>,
    capturing: bool,
    /// Bytes collected for `-t` so far.
    collected: usize,
}

impl<'a, W: Write> Transformer<'a, W> {
    fn new(out: W, opts: &'a IntakeOptions<'a>) -> Self {
        Transformer {
            out,
            opts,
            info: MessageInfo::default(),
            part: Part::Headers,
            first_line: true,
            head: Vec::with_capacity(LINE_HEAD),
            fate: None,
            header_fate: Fate::Keep,
            present: vec![false; opts.add_if_missing.len()],
            pending_cr: false,
            from_value: None,
            capturing: false,
            collected: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.info.eight_bit && bytes.iter().any(|&b| b >= 0x80) {
            self.info.eight_bit = true;
        }
        self.info.size += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Feed raw input; line endings are normalised here.
    fn feed(&mut self, raw: &[u8]) -> Result<()> {
        self.info.input_bytes += raw.len() as u64;
        if raw.contains(&0) {
            return Err(DmaError::Data("message contains a NUL byte".into()));
        }
        let mut start = 0;
        let mut i = 0;
        while i < raw.len() && self.part != Part::Done {
            if self.pending_cr {
                // A CR ended the previous chunk: it is a line end whether or not LF follows.
                self.pending_cr = false;
                self.end_line()?;
                if raw[i] == b'\n' {
                    i += 1;
                }
                start = i;
                continue;
            }
            match raw[i] {
                b'\n' => {
                    self.push(&raw[start..i])?;
                    self.end_line()?;
                    i += 1;
                    start = i;
                }
                b'\r' => {
                    self.push(&raw[start..i])?;
                    if i + 1 == raw.len() {
                        self.pending_cr = true;
                        i += 1;
                    } else {
                        self.end_line()?;
                        i += if raw[i + 1] == b'\n' { 2 } else { 1 };
                    }
                    start = i;
                }
                _ => i += 1,
            }
        }
        if self.part != Part::Done && start < i {
            self.push(&raw[start..i])?;
        }
        Ok(())
    }

    /// Part of a line (without its end).
    fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        if self.fate.is_none() {
            let take = bytes.len().min(LINE_HEAD - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.head.len() < LINE_HEAD {
                return Ok(());
            }
            self.classify()?;
        }
        self.stream(bytes)
    }

    /// Write (or drop, or collect) the rest of an already classified line.
    fn stream(&mut self, bytes: &[u8]) -> Result<()> {
        self.capture(bytes);
        let fate = self.fate.unwrap_or(Fate::Keep);
        if fate.collects() {
            self.collect(bytes, false)?;
        }
        if fate.keeps() && !bytes.is_empty() {
            self.write(bytes).context(|| "writing the spool file".into())?;
        }
        Ok(())
    }

    /// Keep part of a `To:`/`Cc:`/`Bcc:` value for `-t` (`new`: a field's first part).
    fn collect(&mut self, bytes: &[u8], new: bool) -> Result<()> {
        if new {
            self.info.recipient_headers.push(String::new());
        }
        self.collected += bytes.len();
        let field = self
            .info
            .recipient_headers
            .last_mut()
            .expect("a field is being collected");
        if field.len() + bytes.len() > MAX_FIELD || self.collected > MAX_COLLECTED {
            return Err(DmaError::Data(format!(
                "To:, Cc: and Bcc: over {} MiB in a field or {} MiB in all, for -t",
                MAX_FIELD >> 20,
                MAX_COLLECTED >> 20
            )));
        }
        field.push_str(&String::from_utf8_lossy(bytes));
        Ok(())
    }

    fn end_line(&mut self) -> Result<()> {
        if self.part == Part::Done {
            return Ok(());
        }
        if self.fate.is_none() {
            if self.is_terminator() {
                self.head.clear();
                return self.finish_part();
            }
            self.classify()?;
            if self.part == Part::Done {
                return Ok(());
            }
        }
        if self.fate.unwrap_or(Fate::Keep).keeps() {
            self.write(b"\n").context(|| "writing the spool file".into())?;
        }
        self.fate = None;
        self.first_line = false;
        Ok(())
    }

    fn is_terminator(&self) -> bool {
        self.opts.dot_terminates && self.head == b"."
    }

    /// Decide what the current line is from its head, and write the head accordingly.
    fn classify(&mut self) -> Result<()> {
        let head = std::mem::take(&mut self.head);
        let fate = match self.part {
            Part::Body => Fate::Keep,
            Part::Done => Fate::Drop,
            Part::Headers => self.classify_header(&head)?,
        };
        self.capture(&head);
        self.fate = Some(fate);
        if fate.collects() {
            let new = !is_continuation(&head) || self.info.recipient_headers.is_empty();
            let colon = head.iter().position(|&b| b == b':').filter(|_| new);
            self.collect(&head[colon.map_or(0, |p| p + 1)..], new)?;
        }
        if fate.keeps() {
            self.write(&head).context(|| "writing the spool file".into())?;
        }
        self.head = head;
        self.head.clear();
        Ok(())
    }

    fn classify_header(&mut self, head: &[u8]) -> Result<Fate> {
        if self.first_line && is_from_line(head) {
            return Ok(Fate::Drop);
        }
        if head.is_empty() {
            // The separator: close the header block (this writes the empty line itself).
            self.close_headers()?;
            return Ok(Fate::Drop);
        }
        if is_continuation(head) && !self.first_line {
            return Ok(self.header_fate);
        }
        let Some(name) = field_name(head) else {
            // Not a header field: the message has no separator, so its body starts here.
            self.close_headers()?;
            return Ok(Fate::Keep);
        };
        let name = name.to_ascii_lowercase();
        for (i, (wanted, _)) in self.opts.add_if_missing.iter().enumerate() {
            if name == wanted.as_bytes() {
                self.present[i] = true;
            }
        }
        self.capturing = name == b"from" && self.opts.rewrite_from.is_some() && self.from_value.is_none();
        if self.capturing {
            self.from_value = Some(Vec::new());
            self.header_fate = Fate::Drop;
            return Ok(Fate::Drop);
        }
        let collect = self.opts.collect_recipients;
        let fate = match &name[..] {
            b"bcc" if collect => Fate::DropAndCollect,
            b"bcc" => Fate::Drop,
            b"to" | b"cc" if collect => Fate::KeepAndCollect,
            _ => Fate::Keep,
        };
        self.header_fate = fate;
        Ok(fate)
    }

    fn capture(&mut self, bytes: &[u8]) {
        if let (true, Some(value)) = (self.capturing, self.from_value.as_mut()) {
            let room = LINE_HEAD.saturating_sub(value.len()).min(bytes.len());
            value.extend_from_slice(&bytes[..room]);
        }
    }

    /// End the header block: add what is missing, then the empty line.
    fn close_headers(&mut self) -> Result<()> {
        self.capturing = false;
        if let (Some(address), Some(value)) = (self.opts.rewrite_from, self.from_value.take()) {
            self.write(&rewritten_from(&value, address))
                .context(|| "writing the spool file".into())?;
        }
        for (i, (_, line)) in self.opts.add_if_missing.iter().enumerate() {
            if !self.present[i] {
                self.write(line).context(|| "writing the spool file".into())?;
            }
        }
        self.write(b"\n").context(|| "writing the spool file".into())?;
        self.part = Part::Body;
        Ok(())
    }

    /// A terminating `.` line, or the end of the input.
    fn finish_part(&mut self) -> Result<()> {
        if self.part == Part::Headers {
            self.close_headers()?;
        }
        self.part = Part::Done;
        Ok(())
    }

    fn finish(mut self) -> Result<(MessageInfo, W)> {
        if self.pending_cr {
            self.pending_cr = false;
            self.end_line()?;
        }
        if self.part != Part::Done && (self.fate.is_some() || !self.head.is_empty()) {
            // The last line had no line end: it gets one, and is never a terminating `.`.
            if self.fate.is_none() {
                self.classify()?;
            }
            self.end_line()?;
        }
        if self.part != Part::Done {
            self.finish_part()?;
        }
        Ok((self.info, self.out))
    }
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
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"from ")
}

/// The field name of a header line (`Name:`, allowing blanks before the colon), if it is one.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    let printable = |b: &u8| (33..=126).contains(b) && *b != b':';
    (!name.is_empty() && name.iter().all(printable)).then_some(name)
}

/// Copy a message from `input` to `out`, applying everything described at the top of this file.
pub fn copy_message<R: Read, W: Write>(
    mut input: R,
    mut out: W,
    opts: &IntakeOptions<'_>,
) -> Result<(MessageInfo, W)> {
    out.write_all(opts.prefix)
        .context(|| "writing the spool file".into())?;
    let mut t = Transformer::new(out, opts);
    t.info.size = opts.prefix.len() as u64;
    let mut buf = vec![0u8; CHUNK];
    while t.part != Part::Done {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DmaError::io("reading the message", e)),
        };
        t.feed(&buf[..n])?;
    }
    t.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::VERBATIM;

    const ADD: &[(&str, &[u8])] = &[("date", b"Date: D\n"), ("message-id", b"Message-Id: <M>\n")];

    fn run(input: &[u8], dot: bool, collect: bool) -> (String, MessageInfo) {
        let opts = IntakeOptions {
            dot_terminates: dot,
            collect_recipients: collect,
            prefix: b"Received: x\n",
            add_if_missing: ADD,
            rewrite_from: None,
        };
        let (info, out) = copy_message(input, Vec::new(), &opts).unwrap();
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
            prefix: b"",
            add_if_missing: ADD,
            rewrite_from: None,
        };
        String::from_utf8(copy_message(OneByte(input), Vec::new(), &opts).unwrap().1).unwrap()
    }

    #[test]
    fn adds_missing_headers_before_the_separator() {
        let (out, info) = run(b"Subject: hi\nDate: x\n\nbody\n", false, false);
        assert_eq!(
            out,
            "Received: x\nSubject: hi\nDate: x\nMessage-Id: <M>\n\nbody\n"
        );
        assert_eq!(info.size, out.len() as u64);
        assert!(!info.eight_bit);
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
        let (out, info) = run(input, false, true);
        assert_eq!(
            out,
            "Received: x\nTo: a@x,\n b@y\nCc: e@v\nSubject: s\nDate: D\nMessage-Id: <M>\n\nTo: not@header\n"
        );
        assert_eq!(info.recipient_headers, vec![" a@x, b@y", " c@z,\td@w", " e@v"]);
        let (out2, info2) = run(input, false, false);
        assert_eq!(out, out2);
        assert!(info2.recipient_headers.is_empty());
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
                rewrite_from: Some("n@x"),
                ..VERBATIM
            };
            let out = String::from_utf8(copy_message(*input, Vec::new(), &opts).unwrap().1).unwrap();
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
        let (out, info) = run(b"", false, false);
        assert_eq!(out, "Received: x\nDate: D\nMessage-Id: <M>\n\n");
        assert_eq!(info.input_bytes, 0);
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
        let (out, info) = run(input.as_bytes(), true, true);
        assert!(out.contains(&format!("\n\n{long}\n")));
        assert_eq!(info.recipient_headers, vec![format!(" {long}")]);
        assert_eq!(
            run_bytewise(input.as_bytes(), true),
            &out["Received: x\n".len()..]
        );
    }

    #[test]
    fn nul_is_refused_and_eight_bit_noticed() {
        let opts = VERBATIM;
        assert!(matches!(
            copy_message(&b"a\0b\n"[..], Vec::new(), &opts),
            Err(DmaError::Data(_))
        ));
        let (_, info) = run("Subject: café\n\n".as_bytes(), false, false);
        assert!(info.eight_bit);
    }
}

//! The checks behind each fuzz target, shared with the stable-Rust corpus test (tests/corpus.rs).
//! Each function must never panic, whatever the input; the assertions are the properties.

use _native::intake::{copy_message, IntakeOptions};
use _native::reply::{clean_text, enhanced_code, Extensions, Reply};
use _native::smtp::encode;
use _native::spool::Entry;

const LINE_LIMIT: usize = 998;

/// SMTP replies from a hostile server, line by line (LF-split, as the reader delivers them).
pub fn reply(data: &[u8]) {
    let mut lines = data.split_inclusive(|&b| b == b'\n');
    while lines.clone().next().is_some() {
        let next = || lines.next().map(<[u8]>::to_vec).ok_or_else(|| "end".to_owned());
        if let Ok(reply) = Reply::read(next) {
            assert!((200..600).contains(&reply.code));
            let text = reply.text();
            assert!(!text.contains('\r') && !text.contains('\n') || reply.lines.len() > 1);
            assert!(!reply.lines.is_empty());
            let _ = Extensions::parse(&reply);
            for l in &reply.lines {
                assert!(!l.contains('\r') && !l.contains('\n'), "{l:?}");
            }
        }
    }
    let text = clean_text(data);
    assert!(!text.contains('\r') && !text.contains('\n'));
    let _ = enhanced_code(&String::from_utf8_lossy(data));
}

/// A queue file as read back from the spool.
pub fn spool_entry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(e) = Entry::parse(&text, 42) {
        assert!(!e.id.is_empty() && !e.recipient.is_empty());
        let _ = e.message_id();
    }
}

/// A message piped into sendmail. The first byte picks the options.
pub fn intake(data: &[u8]) {
    let (flags, input) = data.split_first().map_or((0, data), |(f, rest)| (*f, rest));
    let opts = IntakeOptions {
        dot_terminates: flags & 1 != 0,
        collect_recipients: flags & 2 != 0,
        prefix: if flags & 4 != 0 { b"Received: test\n".to_vec() } else { Vec::new() },
        add_if_missing: if flags & 8 != 0 {
            vec![b"Date: now\n".to_vec(), b"Message-Id: <x@y>\n".to_vec()]
        } else {
            Vec::new()
        },
        rewrite_from: None,
    };
    // A reader that returns small chunks, to exercise the chunk boundaries.
    let step = usize::from(flags >> 4) + 1;
    let reader = Chunked { data: input, step };
    let mut out = Vec::new();
    if let Ok((size, recipients)) = copy_message(reader, &mut out, &opts) {
        assert!(!out.contains(&b'\r'), "a CR reached the spool");
        assert!(!out.contains(&0), "a NUL reached the spool");
        assert_eq!(size, out.len() as u64);
        assert!(out.is_empty() || out.ends_with(b"\n"), "half a line in the spool");
        for v in &recipients {
            assert!(!v.contains('\r') && !v.contains('\n'), "{v:?}");
        }
    }
}

struct Chunked<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The DATA stream for a spooled message, fed in chunks whose size the first byte picks.
pub fn data_encoder(data: &[u8]) {
    let (step, input) = data.split_first().map_or((1, data), |(f, rest)| (usize::from(*f) + 1, rest));
    let mut out = Vec::new();
    let emit = |chunk: &[u8], _| {
        out.extend_from_slice(chunk);
        Ok(())
    };
    let facts = encode(&mut Chunked { data: input, step }, |e| e, emit).expect("reading memory");
    assert!(facts.wire_size <= out.len() as u64);
    assert!(out.ends_with(b".\r\n"));
    let body = &out[..out.len() - 3];
    assert!(body.is_empty() || body.ends_with(b"\r\n"));
    // Every line ends in CRLF, holds no bare CR or LF, fits the limit, and only the last is a lone dot.
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    for line in &lines[..lines.len() - 1] {
        let line = line.strip_suffix(b"\r").expect("LF without CR on the wire");
        assert!(!line.contains(&b'\r'), "bare CR on the wire");
        assert!(line.len() <= LINE_LIMIT, "line of {} octets", line.len());
        assert!(line != b".", "an unstuffed dot line would end DATA early");
    }
}

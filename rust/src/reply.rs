//! SMTP reply parsing (RFC 5321 section 4.2, RFC 3463 enhanced codes) and the EHLO keyword
//! list. Pure functions over byte lines: the session in `smtp` does the reading and caps a
//! single line; this module caps a whole reply, so a server that never ends its greeting
//! fails cleanly instead of filling memory.

use std::fmt;

/// Most lines a reply may have; a real EHLO reply has about 15.
pub const MAX_REPLY_LINES: usize = 500;
/// Most bytes a reply may have, summed over its lines.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `X.Y.Z` from the first line, when it carries one.
    pub enhanced: Option<String>,
    /// The text of each line after `NNN-` / `NNN ` (lossy UTF-8, control characters
    /// replaced), enhanced code still included: AUTH challenges need it raw.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The text on one line, without the enhanced code, for logs and outcomes.
    pub fn text(&self) -> String {
        let stripped = self.lines.iter().map(|line| match &self.enhanced {
            Some(code) => line
                .strip_prefix(code.as_str())
                .map(str::trim_start)
                .unwrap_or(line),
            None => line,
        });
        let parts: Vec<&str> = stripped.map(str::trim).filter(|s| !s.is_empty()).collect();
        parts.join(" ")
    }

    /// The first line's raw text (an AUTH challenge).
    pub fn first_text(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Why a reply could not be parsed. All of these are temporary failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    Malformed(String),
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Malformed(line) => write!(f, "malformed reply line {line:?}"),
            ReplyError::TooLong => write!(
                f,
                "reply too long (over {MAX_REPLY_LINES} lines or {MAX_REPLY_BYTES} bytes)"
            ),
        }
    }
}

/// Accumulates the lines of one reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
    bytes: usize,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one line (CRLF or LF already removed or not: trailing CR/LF are stripped).
    /// Returns the reply once its last line (`NNN ` or a bare `NNN`) arrives.
    pub fn push(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = trim_eol(raw);
        self.bytes += line.len();
        if self.lines.len() >= MAX_REPLY_LINES || self.bytes > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let malformed = || ReplyError::Malformed(clean_text(&line[..line.len().min(80)]));
        let code = parse_code(line).ok_or_else(malformed)?;
        if self.code.is_some_and(|c| c != code) {
            return Err(malformed());
        }
        self.code = Some(code);
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(malformed()),
        };
        self.lines.push(clean_text(line.get(4..).unwrap_or_default()));
        if !last {
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        let enhanced = lines.first().and_then(|l| enhanced_code(l));
        self.code = None;
        self.bytes = 0;
        Ok(Some(Reply {
            code,
            enhanced,
            lines,
        }))
    }
}

fn trim_eol(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = line {
        line = rest;
    }
    line
}

/// Three digits, the first 2 to 5 (RFC 5321 4.2: 1yz is not used in SMTP).
fn parse_code(line: &[u8]) -> Option<u16> {
    match line.get(..3)? {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

/// `class.subject.detail` (RFC 3463) at the start of `text`, followed by a blank or the end.
pub fn enhanced_code(text: &str) -> Option<String> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    let valid =
        matches!(class, "2" | "4" | "5") && number(subject) && number(detail) && parts.next().is_none();
    valid.then(|| word.to_owned())
}

/// Lossy UTF-8 with control characters replaced, so hostile text cannot forge log lines.
pub fn clean_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What a server's EHLO reply tells us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Every keyword, upper case, in the order offered.
    pub keywords: Vec<String>,
    /// AUTH mechanisms, upper case (both `AUTH x y` and the old `AUTH=x y`).
    pub auth: Vec<String>,
    /// The SIZE limit; `None` when SIZE was not offered or offered without a limit.
    pub size_limit: Option<u64>,
}

impl Extensions {
    pub fn parse(reply: &Reply) -> Self {
        let mut ext = Extensions::default();
        // The first line is the server's name and greeting text.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            let (keyword, inline) = match first.split_once('=') {
                Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
                None => (first.to_ascii_uppercase(), None),
            };
            let params: Vec<&str> = inline.into_iter().chain(words).collect();
            match keyword.as_str() {
                "AUTH" => ext.auth.extend(
                    params
                        .iter()
                        .map(|m| m.to_ascii_uppercase())
                        .filter(|m| !m.is_empty()),
                ),
                "SIZE" => {
                    ext.size_limit = params
                        .first()
                        .and_then(|n| n.parse::<u64>().ok())
                        .filter(|&n| n > 0);
                }
                _ => {}
            }
            if !ext.keywords.contains(&keyword) {
                ext.keywords.push(keyword);
            }
        }
        ext.auth.dedup();
        ext
    }

    pub fn has(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|k| k == keyword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[&[u8]]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut replies = Vec::new();
        for line in input {
            if let Some(reply) = parser.push(line)? {
                replies.push(reply);
            }
        }
        Ok(replies)
    }

    #[test]
    fn single_and_multi_line() {
        let r = parse_all(&[b"220 mx.test ESMTP ready\r\n"]).unwrap();
        assert_eq!(r[0].code, 220);
        assert_eq!(r[0].text(), "mx.test ESMTP ready");
        let r = parse_all(&[b"250-mx.test\r\n", b"250-PIPELINING\r\n", b"250 SIZE 1000\r\n"]).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].lines, ["mx.test", "PIPELINING", "SIZE 1000"]);
    }

    #[test]
    fn bare_code_and_lf_only() {
        let r = parse_all(&[b"354\n"]).unwrap();
        assert_eq!(r[0].code, 354);
        assert_eq!(r[0].text(), "");
    }

    #[test]
    fn enhanced_codes() {
        let r = parse_all(&[b"550-5.1.1 no such user\r\n", b"550 5.1.1 see docs\r\n"]).unwrap();
        assert_eq!(r[0].enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r[0].text(), "no such user see docs");
        assert_eq!(r[0].to_string(), "550 5.1.1 no such user see docs");
        assert_eq!(enhanced_code("2.0.0 ok"), Some("2.0.0".into()));
        assert_eq!(enhanced_code("2.0.0"), Some("2.0.0".into()));
        assert_eq!(enhanced_code("3.0.0 x"), None);
        assert_eq!(enhanced_code("2.0 x"), None);
        assert_eq!(enhanced_code("2.0.0.1 x"), None);
        assert_eq!(enhanced_code("2.1000.0"), None);
        assert_eq!(enhanced_code("ok 2.0.0"), None);
    }

    #[test]
    fn invalid_codes() {
        for bad in [
            &b"abc hello\r\n"[..],
            b"199 x\r\n",
            b"620 x\r\n",
            b"25\r\n",
            b"250x\r\n",
            b"\r\n",
        ] {
            assert!(
                matches!(parse_all(&[bad]), Err(ReplyError::Malformed(_))),
                "{bad:?}"
            );
        }
        // A continuation line with another code.
        assert!(parse_all(&[b"250-a\r\n", b"251 b\r\n"]).is_err());
    }

    #[test]
    fn non_utf8_and_controls_are_cleaned() {
        let r = parse_all(&[b"250 caf\xe9 \x1b[31m\r\n"]).unwrap();
        assert_eq!(r[0].text(), "caf\u{fffd} ?[31m");
    }

    #[test]
    fn endless_reply_is_capped() {
        let mut parser = ReplyParser::new();
        let mut result = Ok(None);
        for _ in 0..=MAX_REPLY_LINES {
            result = parser.push(b"220-still talking\r\n");
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ReplyError::TooLong));
        let mut parser = ReplyParser::new();
        let long = [b"220-".as_slice(), &[b'x'; 4000]].concat();
        let err = (0..20).find_map(|_| parser.push(&long).err());
        assert_eq!(err, Some(ReplyError::TooLong));
    }

    #[test]
    fn parser_resets_between_replies() {
        let r = parse_all(&[b"250 a\r\n", b"354 b\r\n"]).unwrap();
        assert_eq!((r[0].code, r[1].code), (250, 354));
    }

    #[test]
    fn ehlo_extensions() {
        let r = &parse_all(&[
            b"250-mx.test hello\r\n",
            b"250-pipelining\r\n",
            b"250-SIZE 10240000\r\n",
            b"250-AUTH PLAIN login\r\n",
            b"250-AUTH=CRAM-MD5\r\n",
            b"250-8BITMIME\r\n",
            b"250 STARTTLS\r\n",
        ])
        .unwrap()[0];
        let ext = Extensions::parse(r);
        assert_eq!(
            ext.keywords,
            ["PIPELINING", "SIZE", "AUTH", "8BITMIME", "STARTTLS"]
        );
        assert_eq!(ext.auth, ["PLAIN", "LOGIN", "CRAM-MD5"]);
        assert_eq!(ext.size_limit, Some(10_240_000));
        assert!(ext.has("STARTTLS") && !ext.has("SMTPUTF8"));
    }

    #[test]
    fn size_without_limit() {
        let r = &parse_all(&[b"250-mx\r\n", b"250 SIZE\r\n"]).unwrap()[0];
        assert_eq!(Extensions::parse(r).size_limit, None);
        let r = &parse_all(&[b"250-mx\r\n", b"250 SIZE 0\r\n"]).unwrap()[0];
        assert_eq!(Extensions::parse(r).size_limit, None);
        let r = &parse_all(&[b"250 mx\r\n"]).unwrap()[0];
        assert_eq!(Extensions::parse(r), Extensions::default());
    }
}

//! SMTP replies (RFC 5321 4.2, RFC 3463 enhanced codes) and the EHLO keyword list. `Reply::read`
//! caps the whole reply, so a server that never ends its greeting cannot fill memory.

/// Most lines a reply may have (a real EHLO reply has about 15), and bytes over all its lines.
const MAX_REPLY_LINES: usize = 500;
const MAX_REPLY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `X.Y.Z` from the first line, when it carries one.
    pub enhanced: Option<String>,
    /// The text of each line after `NNN-` / `NNN ` (lossy UTF-8, control characters
    /// replaced), enhanced code still included: AUTH challenges need it raw. Never empty.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn read(mut next_line: impl FnMut() -> Result<Vec<u8>, String>) -> Result<Reply, String> {
        let (mut first, mut lines, mut bytes) = (None, Vec::new(), 0);
        loop {
            let raw = next_line()?;
            let line = raw.trim_ascii_end();
            bytes += line.len();
            if lines.len() >= MAX_REPLY_LINES || bytes > MAX_REPLY_BYTES {
                return Err(format!(
                    "reply too long (over {MAX_REPLY_LINES} lines or {MAX_REPLY_BYTES} bytes)"
                ));
            }
            let head = line.get(..80).unwrap_or(line);
            let malformed = || format!("malformed reply line {:?}", clean_text(head));
            let code = parse_code(line).ok_or_else(malformed)?;
            let last = match line.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(malformed()),
            };
            if *first.get_or_insert(code) != code {
                return Err(malformed());
            }
            lines.push(clean_text(line.get(4..).unwrap_or_default()));
            if last {
                let enhanced = enhanced_code(&lines[0]);
                return Ok(Reply {
                    code,
                    enhanced,
                    lines,
                });
            }
        }
    }

    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// The text on one line, without the enhanced code, for logs and outcomes.
    pub fn text(&self) -> String {
        let code = self.enhanced.as_deref().unwrap_or_default();
        let parts = self
            .lines
            .iter()
            .map(|l| l.strip_prefix(code).unwrap_or(l).trim());
        parts.filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
    }
}

/// Three digits, the first 2 to 5 (RFC 5321 4.2: 1yz is not used in SMTP).
fn parse_code(line: &[u8]) -> Option<u16> {
    let code: u16 = std::str::from_utf8(line.get(..3)?).ok()?.parse().ok()?;
    (200..600).contains(&code).then_some(code)
}

/// `class.subject.detail` (RFC 3463) at the start of `text`, followed by a blank or the end.
pub fn enhanced_code(text: &str) -> Option<String> {
    let word = text.split(' ').next()?;
    let parts: Vec<&str> = word.split('.').collect();
    let number = |s: &&str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let valid = parts.len() == 3 && matches!(parts[0], "2" | "4" | "5") && parts[1..].iter().all(number);
    valid.then(|| word.to_owned())
}

/// Lossy UTF-8 with control characters replaced, so hostile text cannot forge log lines.
pub fn clean_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Upper case, in the order offered.
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
            // No keyword or parameter we read holds a `=`: splitting there reads `AUTH=x y` too.
            let mut words = line
                .split(|c: char| c.is_whitespace() || c == '=')
                .filter(|w| !w.is_empty());
            let Some(first) = words.next() else { continue };
            let keyword = first.to_ascii_uppercase();
            match keyword.as_str() {
                "AUTH" => ext.auth.extend(words.map(str::to_ascii_uppercase)),
                "SIZE" => ext.size_limit = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
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

    fn parse_all(input: &[&[u8]]) -> Result<Vec<Reply>, String> {
        let mut lines = input.iter();
        let mut replies = Vec::new();
        while lines.len() > 0 {
            replies.push(Reply::read(|| {
                lines
                    .next()
                    .map(|l| l.to_vec())
                    .ok_or_else(|| "end of input".to_owned())
            })?);
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
            let err = parse_all(&[bad]).unwrap_err();
            assert!(err.starts_with("malformed reply line"), "{bad:?}: {err}");
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
        let err = Reply::read(|| Ok(b"220-still talking\r\n".to_vec())).unwrap_err();
        assert!(err.starts_with("reply too long"), "{err}");
        let long = [b"220-".as_slice(), &[b'x'; 4000]].concat();
        let err = Reply::read(|| Ok(long.clone())).unwrap_err();
        assert!(err.starts_with("reply too long"), "{err}");
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

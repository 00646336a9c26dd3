//! The one address check, applied at every way in (through `check_address` in Python), again when
//! a queue entry is written, and again before a MAIL or RCPT line goes out: an RFC 5321 mailbox
//! (UTF-8 allowed, RFC 6531) whose local part is a dot-atom or a quoted string, with an optional
//! domain of labels or an address literal. Nothing that passes can end the `<path>` early or add
//! an ESMTP parameter or a command.

/// Why `addr` is not an address, or `Ok`.
pub fn check(addr: &str) -> Result<(), &'static str> {
    if addr.len() > 998 {
        // C dma refused 1000 bytes and more.
        return Err("longer than 998 bytes");
    }
    let control = |c: char| c.is_control() || (c.is_whitespace() && c != ' ');
    if addr.chars().any(control) {
        return Err("control characters");
    }
    let (local_ok, rest) = if let Some(quoted) = addr.strip_prefix('"') {
        quoted_local(quoted)
    } else {
        let end = addr.find('@').unwrap_or(addr.len());
        (dot_atom(&addr[..end]), &addr[end..])
    };
    if !local_ok {
        return Err("bad local part");
    }
    match rest.strip_prefix('@') {
        None if rest.is_empty() => Ok(()),
        Some(domain) if valid_domain(domain) => Ok(()),
        _ => Err("bad domain"),
    }
}

/// The first address of an envelope that fails `check`, and why; the sender may be null.
pub fn check_envelope<'a>(sender: &'a str, recipients: &'a [String]) -> Result<(), (&'a str, &'static str)> {
    let sender = Some(sender).filter(|s| !s.is_empty());
    let mut addresses = sender.into_iter().chain(recipients.iter().map(String::as_str));
    addresses.try_for_each(|address| check(address).map_err(|why| (address, why)))
}

/// A quoted local part (after its opening quote): whether it is well formed, and what follows it.
fn quoted_local(text: &str) -> (bool, &str) {
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (i > 0, &text[i + 1..]),
            '\\' if chars.next().is_some() => {}
            '\\' => break,
            _ => {}
        }
    }
    (false, "")
}

fn dot_atom(text: &str) -> bool {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    text.split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

fn valid_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ok = |c: char| c.is_ascii_alphanumeric() || ".:-".contains(c);
        return !literal.is_empty() && literal.chars().all(ok);
    }
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    };
    domain.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn mailboxes_are_taken() {
        for ok in [
            "a@b",
            "root",
            "first.last+tag@mail.example",
            "ü@bücher.example",
            "\"quoted @ <local> part\"@x.example",
            "\"a\\\"b\"@x",
            "x@[192.0.2.1]",
            "x@[IPv6:2001:db8::1]",
            "o'hara{1}|~@x-y.example",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn nothing_that_could_add_a_parameter_or_a_command() {
        for (bad, why) in [
            ("rt_a@x> AUTH=<ceo@corp.example", "bad domain"),
            ("a@x> AUTH=<ceo@corp.example>", "bad domain"),
            ("a@x NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y", "bad domain"),
            ("a b@x", "bad local part"),
            ("a\\>@x", "bad local part"),
            ("a@b\r\nRCPT TO:<x@y>", "control characters"),
            ("a\0b", "control characters"),
            ("a\u{2028}b@x", "control characters"),
            ("a@[1.2.3.4] SIZE=1]", "bad domain"),
            ("\"unterminated@x", "bad local part"),
            ("\"\"@x", "bad local part"),
            ("\"a\"b@x", "bad domain"),
            ("a..b@x", "bad local part"),
            ("@x", "bad local part"),
            ("a@", "bad domain"),
            ("a@-x.example", "bad domain"),
            ("a@x..example", "bad domain"),
        ] {
            assert_eq!(check(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            check(&format!("{}@x", "a".repeat(997))),
            Err("longer than 998 bytes")
        );
    }
}

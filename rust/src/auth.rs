//! SMTP AUTH (RFC 4954) payload encoders, no I/O: the session in `smtp` drives the exchange.

use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;

/// The SASL mechanisms we can speak, in the order we prefer them: the standard OAuth one
/// (RFC 7628) first; CRAM-MD5 never sends the password, so it beats PLAIN even inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// Only used when the caller asks for it (as XOAUTH2): the secret is then a bearer token.
    OAuthBearer,
    XOAuth2,
    CramMd5,
    Plain,
    Login,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
    ];

    /// What a password-based configuration allows when the caller names nothing.
    pub const DEFAULT: [Mechanism; 3] = [Mechanism::CramMd5, Mechanism::Plain, Mechanism::Login];

    pub fn name(self) -> &'static str {
        ["OAUTHBEARER", "XOAUTH2", "CRAM-MD5", "PLAIN", "LOGIN"][self as usize]
    }
}

impl FromStr for Mechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown AUTH mechanism {s:?}"))
    }
}

/// The strongest mechanism in `allowed` that the server offers (EHLO's AUTH, any case).
pub fn choose(offered: &[String], allowed: &[Mechanism]) -> Option<Mechanism> {
    let offers = |m: &Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
    Mechanism::ALL
        .into_iter()
        .find(|m| allowed.contains(m) && offers(m))
}

pub fn b64(data: impl AsRef<[u8]>) -> String {
    STANDARD.encode(data)
}

/// AUTH PLAIN initial response (RFC 4616) with an empty authorization identity.
pub fn plain(login: &str, password: &str) -> String {
    b64(format!("\0{login}\0{password}"))
}

/// CRAM-MD5 response (RFC 2195).
pub fn cram_md5(login: &str, password: &str, challenge_b64: &str) -> Result<String, String> {
    let challenge = STANDARD
        .decode(challenge_b64.trim())
        .map_err(|e| format!("invalid base64 ({e})"))?;
    let mut mac = Hmac::<Md5>::new_from_slice(password.as_bytes()).expect("any key length");
    mac.update(&challenge);
    Ok(b64(format!("{login} {:x}", mac.finalize().into_bytes())))
}

/// XOAUTH2 initial response (Google's SASL profile for OAuth 2.0 bearer tokens).
pub fn xoauth2(login: &str, token: &str) -> String {
    b64(format!("user={login}\x01auth=Bearer {token}\x01\x01"))
}

/// OAUTHBEARER initial response (RFC 7628): a GS2 header naming the user (`,` and `=` escaped
/// as RFC 5801 says), then the host, port and bearer token as ^A-separated pairs.
pub fn oauthbearer(login: &str, host: &str, port: u16, token: &str) -> String {
    let user = login.replace('=', "=3D").replace(',', "=2C");
    b64(format!(
        "n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64_decode(text: &str) -> Vec<u8> {
        STANDARD.decode(text).unwrap()
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        let challenge = b64(b"<1896.697170952@postoffice.reston.mci.net>");
        assert_eq!(
            cram_md5("tim", "tanstaaftanstaaf", &challenge).unwrap(),
            "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"
        );
    }

    #[test]
    fn cram_md5_rejects_bad_challenge() {
        assert!(cram_md5("tim", "x", "not base64!").is_err());
    }

    #[test]
    fn plain_rfc4616_examples() {
        // RFC 4616 section 4: "\0tim\0tanstaaftanstaaf" (empty authzid).
        assert_eq!(
            b64_decode(&plain("tim", "tanstaaftanstaaf")),
            b"\0tim\0tanstaaftanstaaf"
        );
        assert_eq!(plain("tim", "tanstaaftanstaaf"), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    }

    #[test]
    fn login_steps() {
        assert_eq!(b64("tim"), "dGlt");
        assert_eq!(b64(""), "");
    }

    #[test]
    fn xoauth2_google_example() {
        // From Google's "OAuth 2.0 Mechanism" page (XOAUTH2 SASL).
        let expected = "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==";
        assert_eq!(
            xoauth2(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
            ),
            expected
        );
    }

    #[test]
    fn oauthbearer_rfc7628_example() {
        // RFC 7628 section 4.1, with the user name's `,` escaped.
        let raw = b64_decode(&oauthbearer(
            "u,ser@example.com",
            "server.example.com",
            587,
            "vF9dft4q",
        ));
        assert_eq!(
            raw,
            b"n,a=u=2Cser@example.com,\x01host=server.example.com\x01port=587\x01auth=Bearer vF9dft4q\x01\x01"
        );
    }

    #[test]
    fn mechanism_choice() {
        let offered = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let default = &Mechanism::DEFAULT;
        assert_eq!(
            choose(&offered("LOGIN PLAIN CRAM-MD5"), default),
            Some(Mechanism::CramMd5)
        );
        assert_eq!(choose(&offered("login plain"), default), Some(Mechanism::Plain));
        assert_eq!(choose(&offered("LOGIN"), default), Some(Mechanism::Login));
        assert_eq!(choose(&offered("XOAUTH2 GSSAPI"), default), None);
        assert_eq!(
            choose(&offered("XOAUTH2 PLAIN"), &Mechanism::ALL),
            Some(Mechanism::XOAuth2)
        );
        let oauth = [Mechanism::XOAuth2, Mechanism::OAuthBearer];
        assert_eq!(
            choose(&offered("XOAUTH2 OAUTHBEARER"), &oauth),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            choose(&offered("PLAIN XOAUTH2"), &oauth),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(
            choose(&offered("PLAIN CRAM-MD5"), &[Mechanism::Plain]),
            Some(Mechanism::Plain)
        );
        assert_eq!(choose(&[], default), None);
    }

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(m.name().parse::<Mechanism>().unwrap(), m);
        }
        assert_eq!("cram-md5".parse::<Mechanism>().unwrap(), Mechanism::CramMd5);
        assert!("GSSAPI".parse::<Mechanism>().is_err());
    }
}

"""dma.conf and auth.conf: every key, every error, C dma's quirks kept and fixed (real files)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from dma import config
from dma.config import Config, sanitize_hostname
from dma.errors import EX_CONFIG, EX_NOINPUT, ConfigError, Fatal
from dma.mail.authconf import AuthTable
from hypothesis import given, settings
from hypothesis import strategies as st

SYSTEM_HOST = sanitize_hostname(os.uname().nodename)


def conf(tmp_path: Path, text: str, *, user_mode: bool | None = False) -> Config:
    p = tmp_path / "dma.conf"
    p.write_text(text)
    return Config(str(p), user_mode=user_mode)


def conf_error(tmp_path: Path, text: str, line: int | None, key: str | None) -> ConfigError:
    """Load `text`, expect a ConfigError at `line` for `key`, and check its code and text."""
    p = tmp_path / "dma.conf"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config(str(p), user_mode=False)
    e = info.value
    assert e.code == EX_CONFIG == 78
    assert (e.path, e.line, e.key) == (str(p), line, key)
    where = str(p) if line is None else f"{p}:{line}"
    prefix = f"{where}: {key}: " if key is not None else f"{where}: "
    assert str(e).startswith(prefix) and e.message == str(e)
    assert "\n" not in str(e)
    return e


# ---- file selection and defaults ---------------------------------------------------------------


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    cfg = Config(str(tmp_path / "nope.conf"), user_mode=False)
    assert cfg.path == str(tmp_path / "nope.conf")
    assert cfg.file_exists is False
    assert cfg.smarthost is None
    assert cfg.port == 25
    assert cfg.aliases == "/etc/aliases"
    assert cfg.spooldir == "/var/spool/dma"
    assert cfg.mboxdir == "/var/mail"
    assert cfg.authpath is None and cfg.certfile is None
    assert cfg.mailname == cfg.system_hostname == SYSTEM_HOST
    assert cfg.masquerade_user is None and cfg.masquerade_host is None
    assert cfg.fingerprint is None
    for flag in (
        "securetransfer",
        "starttls",
        "opportunistic_tls",
        "verifycert",
        "insecure",
        "defer",
        "fullbounce",
        "nullclient",
    ):
        assert getattr(cfg, flag) is False, flag
    assert cfg.maildir is None and cfg.cafile is None
    assert cfg.dns_servers == []
    assert (cfg.retry_min, cfg.retry_max, cfg.max_queue_time) == (300, 10800, 432000)
    assert (cfg.concurrency, cfg.host_concurrency) == (8, 2)
    assert cfg.connect_timeout == 30.0 and isinstance(cfg.connect_timeout, float)
    assert cfg.timeout == 300.0 and isinstance(cfg.timeout, float)
    assert cfg.xoauth2_command is None and cfg.helo_name is None
    assert cfg.key_lines == {}


def test_empty_file_exists(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "")
    assert cfg.file_exists is True
    assert cfg.smarthost is None


def test_path_from_argument_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a.conf"
    b = tmp_path / "b.conf"
    a.write_text("SMARTHOST a.example\n")
    b.write_text("SMARTHOST b.example\n")
    monkeypatch.setenv("DMA_CONF", str(b))
    assert Config(str(a)).smarthost == "a.example"
    assert Config().smarthost == "b.example"
    assert Config().path == str(b)
    monkeypatch.setenv("DMA_CONF", "")
    assert Config().path == config.DEFAULT_CONF == "/etc/dma/dma.conf"
    monkeypatch.delenv("DMA_CONF")
    assert Config().path == "/etc/dma/dma.conf"


def test_unreadable_config_is_fatal_noinput(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root: a real "exists but unreadable".
    d = tmp_path / "dir.conf"
    d.mkdir()
    with pytest.raises(Fatal) as info:
        Config(str(d))
    assert info.value.code == EX_NOINPUT == 66
    assert str(d) in info.value.message
    assert not isinstance(info.value, ConfigError)


def test_user_mode_follows_euid(tmp_path: Path) -> None:
    assert Config(str(tmp_path / "x")).user_mode is (os.geteuid() != 0)


# ---- user mode and the state directory -------------------------------------------------------


def test_user_mode_defaults_under_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMA_STATE_DIR", str(tmp_path / "state"))
    cfg = Config(str(tmp_path / "none"), user_mode=True)
    assert cfg.user_mode is True
    assert config.state_dir() == str(tmp_path / "state")
    assert cfg.spooldir == str(tmp_path / "state" / "spool")
    assert cfg.mboxdir == str(tmp_path / "state" / "mail")


def test_system_mode_defaults(tmp_path: Path) -> None:
    cfg = Config(str(tmp_path / "none"), user_mode=False)
    assert cfg.user_mode is False
    assert (cfg.spooldir, cfg.mboxdir) == ("/var/spool/dma", "/var/mail")


def test_file_values_win_in_both_modes(tmp_path: Path) -> None:
    text = f"SPOOLDIR {tmp_path}/q\nMBOXDIR {tmp_path}/m\n"
    for mode in (True, False):
        cfg = conf(tmp_path, text, user_mode=mode)
        assert (cfg.spooldir, cfg.mboxdir) == (f"{tmp_path}/q", f"{tmp_path}/m")


def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMA_STATE_DIR", "/x/state")
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    monkeypatch.setenv("HOME", "/home/someone")
    assert config.state_dir() == "/x/state"
    monkeypatch.delenv("DMA_STATE_DIR")
    assert config.state_dir() == "/xdg/dma"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert config.state_dir() == "/home/someone/.local/state/dma"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert config.state_dir() == "/home/someone/.local/state/dma"
    monkeypatch.delenv("HOME")
    home = pwd.getpwuid(os.geteuid()).pw_dir
    assert config.state_dir() == os.path.join(home, ".local", "state", "dma")


# ---- every key -------------------------------------------------------------------------------


def test_every_c_dma_key(tmp_path: Path) -> None:
    fp = "AB" * 32
    cfg = conf(
        tmp_path,
        "\n".join(
            [
                "SMARTHOST mail.example.net",
                "PORT 587",
                "ALIASES /etc/mail/aliases",
                "SPOOLDIR /var/spool/dma2",
                "AUTHPATH /etc/dma/auth.conf",
                "CERTFILE /etc/dma/client.pem",
                "MAILNAME box.example.org",
                "MASQUERADE john@example.org",
                f"FINGERPRINT {fp}",
                "SECURETRANSFER",
                "STARTTLS",
                "OPPORTUNISTIC_TLS",
                "VERIFYCERT",
                "INSECURE",
                "DEFER",
                "FULLBOUNCE",
                "NULLCLIENT",
                "",
            ]
        ),
    )
    assert cfg.smarthost == "mail.example.net"
    assert cfg.port == 587
    assert cfg.aliases == "/etc/mail/aliases"
    assert cfg.spooldir == "/var/spool/dma2"
    assert cfg.authpath == "/etc/dma/auth.conf"
    assert cfg.certfile == "/etc/dma/client.pem"
    assert cfg.mailname == "box.example.org"
    assert (cfg.masquerade_user, cfg.masquerade_host) == ("john", "example.org")
    assert cfg.fingerprint == bytes([0xAB]) * 32
    assert cfg.securetransfer and cfg.starttls and cfg.opportunistic_tls and cfg.verifycert
    assert cfg.insecure and cfg.defer and cfg.fullbounce and cfg.nullclient
    assert cfg.key_lines["SMARTHOST"] == 1 and cfg.key_lines["NULLCLIENT"] == 17


def test_every_added_key(tmp_path: Path) -> None:
    cfg = conf(
        tmp_path,
        "\n".join(
            [
                "MBOXDIR /srv/mail",
                "MAILDIR ~/Maildir",
                "CAFILE /etc/dma/ca.pem",
                "DNS_SERVER 127.0.0.1:5353, 10.0.0.1,[::1]:53 ::1,[fe80::1]",
                "RETRY_MIN 1m",
                "RETRY_MAX 2h",
                "MAX_QUEUE_TIME 3d",
                "CONCURRENCY 16",
                "HOST_CONCURRENCY 4",
                "CONNECT_TIMEOUT 2.5",
                "TIMEOUT 60",
                "XOAUTH2_COMMAND /usr/bin/oauth-token  --account  me",
                "HELO_NAME relay.example.org",
                "MAXUSERMSGS 0",
                "MAXUSERBYTES 64M",
            ]
        ),
    )
    assert cfg.mboxdir == "/srv/mail"
    assert cfg.maildir == "~/Maildir"
    assert cfg.cafile == "/etc/dma/ca.pem"
    assert cfg.dns_servers == [
        ("127.0.0.1", 5353),
        ("10.0.0.1", 53),
        ("::1", 53),
        ("::1", 53),
        ("fe80::1", 53),
    ]
    assert (cfg.retry_min, cfg.retry_max, cfg.max_queue_time) == (60, 7200, 3 * 86400)
    assert (cfg.concurrency, cfg.host_concurrency) == (16, 4)
    assert cfg.connect_timeout == 2.5
    assert cfg.timeout == 60.0 and isinstance(cfg.timeout, float)
    assert cfg.xoauth2_command == ["/usr/bin/oauth-token", "--account", "me"]
    assert cfg.helo_name == "relay.example.org"
    assert (cfg.max_user_msgs, cfg.max_user_bytes) == (0, 64 << 20)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("45s", 45), ("5m", 300), ("3h", 10800), ("5d", 432000), ("1", 1)],
)
def test_duration_forms(tmp_path: Path, text: str, seconds: int) -> None:
    assert conf(tmp_path, f"MAX_QUEUE_TIME {text}\n").max_queue_time == seconds


def test_maildir_templates(tmp_path: Path) -> None:
    assert conf(tmp_path, "MAILDIR /srv/maildirs/%u\n").maildir == "/srv/maildirs/%u"
    assert conf(tmp_path, "MAILDIR ~\n").maildir == "~"


def test_fingerprint_forms(tmp_path: Path) -> None:
    digest = bytes(range(32))
    assert conf(tmp_path, f"FINGERPRINT {digest.hex()}\n").fingerprint == digest
    assert conf(tmp_path, f"FINGERPRINT {digest.hex().upper()}\n").fingerprint == digest
    colons = ":".join(f"{b:02X}" for b in digest)  # as `openssl x509 -fingerprint -sha256` prints it
    assert conf(tmp_path, f"FINGERPRINT {colons}\n").fingerprint == digest


# ---- C dma syntax: kept ------------------------------------------------------------------------


def test_hash_anywhere_starts_a_comment(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "# a comment\nSMARTHOST mx.example#not.this\nSTARTTLS # no value\n")
    assert cfg.smarthost == "mx.example"
    assert cfg.starttls is True


def test_lines_starting_with_whitespace_are_ignored(tmp_path: Path) -> None:
    cfg = conf(tmp_path, " SMARTHOST ignored.example\n\tDEFER\n   bogus keyword\n")
    assert cfg.smarthost is None and cfg.defer is False


def test_repeated_string_key_overrides_and_booleans_accumulate(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "SMARTHOST a.example\nDEFER\nSMARTHOST b.example\nDEFER\n")
    assert cfg.smarthost == "b.example" and cfg.defer is True
    assert cfg.key_lines["SMARTHOST"] == 3


def test_tab_separates_keyword(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "SMARTHOST\tmx.example\nALIASES\t/etc/my aliases\n")
    assert cfg.smarthost == "mx.example"
    assert cfg.aliases == "/etc/my aliases"


def test_boolean_with_only_blanks_after_it(tmp_path: Path) -> None:
    assert conf(tmp_path, "DEFER   \n").defer is True


def test_verifycert_stays_off_by_default(tmp_path: Path) -> None:
    # Kept from C dma so a copied config behaves the same; docs/configuration.md says to set it.
    assert conf(tmp_path, "SECURETRANSFER\nSTARTTLS\n").verifycert is False


# ---- C dma syntax: fixed -----------------------------------------------------------------------


def test_values_are_stripped(tmp_path: Path) -> None:
    # C dma kept "x " and "  x" verbatim.
    cfg = conf(tmp_path, "SMARTHOST    mx.example   # comment\nSPOOLDIR /q \t\n")
    assert cfg.smarthost == "mx.example"
    assert cfg.spooldir == "/q"


def test_crlf_lines(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "SMARTHOST mx.example\r\nDEFER\r\n\r\n")
    assert cfg.smarthost == "mx.example" and cfg.defer is True


def test_missing_final_newline(tmp_path: Path) -> None:
    assert conf(tmp_path, "PORT 2525").port == 2525


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("FOO bar\n", 1, "FOO", "unknown keyword"),
        ("# c\nsmarthost x\n", 2, "smarthost", "case-sensitive"),
        ("SECURE\n", 1, "SECURE", "INSECURE"),
        ("SECURETRANS\n", 1, "SECURETRANS", "SECURETRANSFER"),
        ("MAILNAMEFILE /etc/mailname\n", 1, "MAILNAMEFILE", "unknown keyword"),
        ("SMARTHOST\n", 1, "SMARTHOST", "missing value"),
        ("SMARTHOST   # nothing\n", 1, "SMARTHOST", "missing value"),
        ("DEFER\nSTARTTLS yes\n", 2, "STARTTLS", "takes no value"),
        ("FINGERPRINT\n", 1, "FINGERPRINT", "missing value"),
        ("FINGERPRINT abcd\n", 1, "FINGERPRINT", "64 hex"),
        ("FINGERPRINT " + "g" * 64 + "\n", 1, "FINGERPRINT", "not hexadecimal"),
        ("PORT 0\n", 1, "PORT", "port number"),
        ("PORT 65536\n", 1, "PORT", "port number"),
        ("PORT smtp\n", 1, "PORT", "port number"),
        ("PORT -25\n", 1, "PORT", "port number"),
        ("PORT 25 587\n", 1, "PORT", "port number"),
        ("SMARTHOST mx.example 587\n", 1, "SMARTHOST", "PORT"),
        ("HELO_NAME a b\n", 1, "HELO_NAME", "single host name"),
        ("MAILNAME my host\n", 1, "MAILNAME", "blanks"),
        ("MAILNAME " + "a" * 256 + "\n", 1, "MAILNAME", "255"),
        ("MASQUERADE a b@c\n", 1, "MASQUERADE", "blanks"),
        ("RETRY_MIN 0\n", 1, "RETRY_MIN", "duration"),
        ("RETRY_MIN 5w\n", 1, "RETRY_MIN", "duration"),
        ("RETRY_MAX m\n", 1, "RETRY_MAX", "duration"),
        ("MAX_QUEUE_TIME -1\n", 1, "MAX_QUEUE_TIME", "duration"),
        ("MAX_QUEUE_TIME 1.5h\n", 1, "MAX_QUEUE_TIME", "duration"),
        ("CONCURRENCY 0\n", 1, "CONCURRENCY", "positive whole number"),
        ("HOST_CONCURRENCY two\n", 1, "HOST_CONCURRENCY", "positive whole number"),
        ("MAXUSERBYTES 1T\n", 1, "MAXUSERBYTES", "whole number"),
        ("MAXUSERMSGS K\n", 1, "MAXUSERMSGS", "whole number"),
        ("CONNECT_TIMEOUT 0\n", 1, "CONNECT_TIMEOUT", "seconds"),
        ("TIMEOUT nan\n", 1, "TIMEOUT", "seconds"),
        ("TIMEOUT inf\n", 1, "TIMEOUT", "seconds"),
        ("TIMEOUT soon\n", 1, "TIMEOUT", "seconds"),
        ("DNS_SERVER ns.example\n", 1, "DNS_SERVER", "IP address"),
        ("DNS_SERVER 127.0.0.1:0\n", 1, "DNS_SERVER", "port"),
        ("DNS_SERVER [::1\n", 1, "DNS_SERVER", "]"),
        ("DNS_SERVER [::1]x\n", 1, "DNS_SERVER", "port"),
        ("DNS_SERVER 127.0.0.1,,10.0.0.1\n", 1, "DNS_SERVER", "empty"),
        ("MAILDIR Maildir\n", 1, "MAILDIR", "absolute"),
        ("MAILDIR ~user/Maildir\n", 1, "MAILDIR", "absolute"),
        ("SMARTHOST a\x00b\n", 1, "SMARTHOST", "control character"),
        ("NULLCLIENT\n", 1, "NULLCLIENT", "requires SMARTHOST"),
        ("DEFER\nRETRY_MIN 2h\nRETRY_MAX 1h\n", 2, "RETRY_MIN", "larger than RETRY_MAX"),
        ("RETRY_MAX 1m\n", 1, "RETRY_MAX", "larger than RETRY_MAX"),
        ("REWRITEFROM root\n", 1, "REWRITEFROM", "not an address"),
        ("SMARTHOST a b:x\n", 1, "SMARTHOST", "bad port"),
        ("SMARTHOST [::1\n", 1, "SMARTHOST", "]"),
        ("SMARTHOST relay:\n", 1, "SMARTHOST", "bad port"),
        ("SMARTHOST a,,b\n", 1, "SMARTHOST", "empty"),
        ("DNS_SERVER 127.0.0.1:\n", 1, "DNS_SERVER", "bad port"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    e = conf_error(tmp_path, text, line, key)
    assert fragment in e.detail


def test_nullclient_with_smarthost_is_fine(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "NULLCLIENT\nSMARTHOST relay.example\n")
    assert cfg.nullclient and cfg.smarthost == "relay.example"


def test_unknown_keyword_with_control_characters_is_printable(tmp_path: Path) -> None:
    p = tmp_path / "dma.conf"
    p.write_text("\x1b[31mRED x\n")
    with pytest.raises(ConfigError) as info:
        Config(str(p))
    assert "\x1b" not in str(info.value) and info.value.line == 1


# ---- MAILNAME and the host name (6.4) ----------------------------------------------------------


def test_sanitize_hostname() -> None:
    assert sanitize_hostname("host.example") == "host.example"
    assert sanitize_hostname("my.file.example extra") == "my.file.example"
    assert sanitize_hostname("a_b-c.d\n") == "a_b-c.d"
    assert sanitize_hostname("") == "unknown-hostname"
    assert sanitize_hostname(" leading") == "unknown-hostname"
    assert sanitize_hostname("héllo") == "h"


def test_mailname_literal_is_verbatim(tmp_path: Path) -> None:
    # Not sanitised, as in C dma (only the surrounding blanks go).
    assert conf(tmp_path, "MAILNAME Weird_Name.example!\n").mailname == "Weird_Name.example!"


def test_mailname_file_first_line_cut(tmp_path: Path) -> None:
    (tmp_path / "mailname").write_text("my.file.example extra\nsecond.line\n")
    cfg = conf(tmp_path, f"MAILNAME {tmp_path}/mailname\n")
    assert cfg.mailname == "my.file.example"
    assert cfg.system_hostname == SYSTEM_HOST


def test_mailname_file_without_newline(tmp_path: Path) -> None:
    (tmp_path / "mailname").write_text("bare.example")
    assert conf(tmp_path, f"MAILNAME {tmp_path}/mailname\n").mailname == "bare.example"


@pytest.mark.parametrize("content", [None, "", "\n", " starts.with.blank\n"])
def test_mailname_file_missing_or_empty_falls_back(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "mailname").write_text(content)
    cfg = conf(tmp_path, f"MAILNAME {tmp_path}/mailname\n")
    assert cfg.mailname == SYSTEM_HOST


def test_mailname_last_one_wins(tmp_path: Path) -> None:
    (tmp_path / "mailname").write_text("from.file\n")
    cfg = conf(tmp_path, f"MAILNAME {tmp_path}/mailname\nMAILNAME literal.example\n")
    assert cfg.mailname == "literal.example"
    cfg = conf(tmp_path, f"MAILNAME literal.example\nMAILNAME {tmp_path}/mailname\n")
    assert cfg.mailname == "from.file"


# ---- MASQUERADE --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "user", "host"),
    [
        ("john@example.org", "john", "example.org"),
        ("john@", "john", None),
        ("example.org", None, "example.org"),
        ("@example.org", None, "example.org"),
        ("a@b@example.org", "a@b", "example.org"),
        ("@", None, None),
    ],
)
def test_masquerade_forms(tmp_path: Path, value: str, user: str | None, host: str | None) -> None:
    cfg = conf(tmp_path, f"MASQUERADE {value}\n")
    assert (cfg.masquerade_user, cfg.masquerade_host) == (user, host)


def test_masquerade_repeated_overrides_both(tmp_path: Path) -> None:
    cfg = conf(tmp_path, "MASQUERADE john@example.org\nMASQUERADE other.example\n")
    assert (cfg.masquerade_user, cfg.masquerade_host) == (None, "other.example")


# ---- auth.conf ---------------------------------------------------------------------------------


def auth_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "auth.conf"
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    return str(p)


def test_auth_separators_and_verbatim_passwords(tmp_path: Path) -> None:
    table = AuthTable(
        auth_file(
            tmp_path,
            "# comment line\n"
            "\n"
            "alice|smtp.example:s3cret\n"
            "bob@example.org|mx1.example|pass with spaces  \n"
            "carol|mx2.example pa:ss:word\n"
            "dave|mx3.example\t#not a comment\n"
            "  \n"
            "eve|mx4.example:\n",
        )
    )
    assert table.lookup("smtp.example") == ("alice", "s3cret")
    assert table.lookup("mx1.example") == ("bob@example.org", "pass with spaces  ")
    assert table.lookup("mx2.example") == ("carol", "pa:ss:word")
    assert table.lookup("mx3.example") == ("dave", "#not a comment")
    assert table.lookup("mx4.example") == ("eve", "")
    assert len(table) == 5


def test_auth_lookup_is_exact_and_last_wins(tmp_path: Path) -> None:
    table = AuthTable(auth_file(tmp_path, "a|h.example:one\nb|h.example:two\nc|other:x\n"))
    assert table.lookup("h.example") == ("b", "two")
    assert table.lookup("H.EXAMPLE") is None
    assert table.lookup("example") is None
    assert table.lookup("nothere") is None


def test_auth_password_keeps_carriage_return_and_non_utf8(tmp_path: Path) -> None:
    table = AuthTable(auth_file(tmp_path, "u|h:pw\r\nv|g:caf\udce9"))  # no final newline either
    assert table.lookup("h") == ("u", "pw\r")
    login_pw = table.lookup("g")
    assert login_pw is not None
    assert os.fsencode(login_pw[1]) == b"caf\xe9"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("user host:pw\n", 1, "login|host:password"),
        ("# c\n\nuser|host\n", 3, "no `:'"),
        ("|host:pw\n", 1, "empty login"),
        ("user|:pw\n", 1, "empty host"),
        ("ok|h:p\n x|y\n", 2, "no `:'"),
    ],
)
def test_auth_syntax_errors(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = auth_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        AuthTable(path)
    e = info.value
    assert e.code == EX_CONFIG
    assert (e.path, e.line) == (path, line)
    assert str(e).startswith(f"{path}:{line}: ")
    assert fragment in e.detail


def test_auth_unreadable_or_missing_is_noinput(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.conf", tmp_path):
        with pytest.raises(Fatal) as info:
            AuthTable(str(path))
        assert info.value.code == EX_NOINPUT
        assert str(path) in info.value.message


def test_auth_is_loaded_lazily(tmp_path: Path) -> None:
    # C dma read auth.conf at start-up, so an unreadable one broke even mailq.
    broken = tmp_path / "authdir"
    broken.mkdir()
    cfg = conf(tmp_path, f"AUTHPATH {broken}\n")
    assert cfg.authpath == str(broken)
    with pytest.raises(Fatal) as info:
        cfg.auth()
    assert info.value.code == EX_NOINPUT


def test_config_auth_table(tmp_path: Path) -> None:
    auth = auth_file(tmp_path, "u|relay.example:pw\n")
    cfg = conf(tmp_path, f"AUTHPATH {auth}\n")
    table = cfg.auth()
    assert table.lookup("relay.example") == ("u", "pw")
    assert cfg.auth() is table
    empty = conf(tmp_path, "").auth()
    assert isinstance(empty, AuthTable) and len(empty) == 0


# ---- properties --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hypothesis")


KEYWORDS = [*sorted(config._KEYS), "FOO", "smarthost", ""]
value_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(KEYWORDS), st.sampled_from([" ", "\t", "  ", ""]), value_text),
        max_size=8,
    ),
    junk=st.binary(max_size=200),
)
def test_config_parser_only_raises_config_errors(
    hdir: Path, lines: list[tuple[str, str, str]], junk: bytes
) -> None:
    p = hdir / "prop.conf"
    for data in ("\n".join(k + sep + v for k, sep, v in lines).encode("utf-8", "surrogateescape"), junk):
        p.write_bytes(data)
        try:
            cfg = Config(str(p), user_mode=True)
        except ConfigError as e:
            assert e.code == EX_CONFIG and e.line is not None and "\n" not in str(e)
        except Fatal:
            pass
        else:
            assert isinstance(cfg.mailname, str) and cfg.mailname
            assert 1 <= cfg.port <= 65535


utf8 = st.characters(codec="utf-8")
auth_login = st.text(utf8, min_size=1, max_size=30).filter(
    lambda s: "|" not in s and "\n" not in s and not s.startswith("#")
)
auth_host = st.text(utf8, min_size=1, max_size=30).filter(lambda s: not set(s) & set(":| \t\n"))
auth_password = st.text(utf8, max_size=40).filter(lambda s: "\n" not in s)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.tuples(auth_login, auth_host, st.sampled_from(":| \t"), auth_password), max_size=6)
)
def test_auth_round_trip(hdir: Path, entries: list[tuple[str, str, str, str]]) -> None:
    p = hdir / "auth.conf"
    p.write_bytes("".join(f"{lo}|{h}{sep}{pw}\n" for lo, h, sep, pw in entries).encode())
    table = AuthTable(str(p))
    expected: dict[str, tuple[str, str]] = {}
    for lo, h, _, pw in entries:
        expected[h] = (lo, pw)
    assert len(table) == len(expected)
    for h, lp in expected.items():
        assert table.lookup(h) == lp

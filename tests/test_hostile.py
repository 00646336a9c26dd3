"""Hostile input (issue 5 item 5): the corpus in tests/hostile/ and generated giants, fed to the
real `sendmail`. For each: the exit code, the one-line error (or none) and the spool afterwards are
checked; never a traceback, never a hang (every run has a timeout), never a half-written spool.

Delivery is deferred (DEFER) so the spool shows exactly what the submission left.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dma import _native
from dma_fixtures import DmaEnv, one_line_error, program

CORPUS = Path(__file__).parent / "hostile"

EX_OK, EX_DATAERR, EX_NOINPUT, EX_CONFIG = 0, 65, 66, 78


@pytest.fixture
def env(dma_env: DmaEnv) -> DmaEnv:
    dma_env.write_conf("DEFER")
    return dma_env


def check_spool(env: DmaEnv, queued: bool) -> bytes:
    """Whole or nothing: no temporary file; every Q file parses and has its M file; returns the
    message when one was queued."""
    names = [n for n in env.files() if n != "lock"]
    assert not [n for n in names if n.startswith("tmp_")], names
    entries = _native.scan_queue(str(env.spool))
    qs = [n for n in names if n.startswith("Q")]
    ms = [n for n in names if n.startswith("M")]
    assert len(qs) == len(entries) == len(ms), names
    if not queued:
        assert qs == [] and ms == [], names
        return b""
    assert qs, names
    return env.message()


def run(env: DmaEnv, args: list[str], data: bytes, timeout: float = 60) -> tuple[int, str]:
    r = env.run(args, input=data, timeout=timeout)
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    err = one_line_error(r) if r.stderr else ""
    return r.returncode, err


def body_of(msg: bytes) -> bytes:
    return msg.split(b"\n\n", 1)[1] if b"\n\n" in msg else b""


Check = Callable[[bytes], None]


def no_after_dot(msg: bytes) -> None:
    assert b"AFTER-DOT" not in msg and b"after the dot" not in msg, msg


def has(*parts: bytes) -> Check:
    def check(msg: bytes) -> None:
        for p in parts:
            assert p in msg, (p, msg)

    return check


def no_cr(msg: bytes) -> None:
    assert b"\r" not in msg, msg


def ends_with(tail: bytes) -> Check:
    def check(msg: bytes) -> None:
        assert msg.endswith(tail), msg[-80:]

    return check


def our_received_first(msg: bytes) -> None:
    # Ours (complete, with the envelope and our id) on top; the submitter's own below it, as written.
    assert msg.startswith(b"Received: from root (uid 0)\n\t(envelope-from "), msg[:200]
    assert b"\nReceived: from root (uid 0)\nSubject: forged\n" in msg


def from_line_dropped(msg: bytes) -> None:
    assert b"evil@example.com Thu" not in msg
    assert b"\nFrom inside body\n" in msg


# file, extra args, exit code, error (substring; "" = no output at all), checks on the message
MESSAGES: list[tuple[str, list[str], int, str, list[Check]]] = [
    ("nul-in-body.eml", ["root"], EX_DATAERR, "bad mail input format: message contains a NUL byte", []),
    ("nul-in-header.eml", ["root"], EX_DATAERR, "bad mail input format: message contains a NUL byte", []),
    ("invalid-utf8-header.eml", ["root"], EX_OK, "", [has(b"Subject: \xff\xfe\xc3( broken \xed\xa0\x80")]),
    ("utf8-headers.eml", ["root"], EX_OK, "", [has("Subject: ünïcödé ✉".encode(), "bödy".encode())]),
    ("eight-bit-body.eml", ["root"], EX_OK, "", [has(b"\x80\x81\xfe\xff latin-1 \xe9\n")]),
    ("dot-first-line.eml", ["root"], EX_OK, "", [no_after_dot, ends_with(b">\n\n")]),
    ("dot-first-line.eml", ["-i", "root"], EX_OK, "", [has(b"\n\n.\nSubject: after the dot\n")]),
    ("dot-in-headers.eml", ["root"], EX_OK, "", [no_after_dot, has(b"Subject: kept\n")]),
    ("dot-after-separator.eml", ["root"], EX_OK, "", [no_after_dot, ends_with(b"\n\n")]),
    ("dot-crlf.eml", ["root"], EX_OK, "", [no_after_dot, no_cr, ends_with(b"\n\nbody\n")]),
    # A final `.` without a line end is text, not the end mark; the line end is added.
    ("dot-last-line-no-newline.eml", ["root"], EX_OK, "", [ends_with(b"\n\nbody\n.\n")]),
    # Submission is not SMTP: `..` is not un-stuffed, with or without -i.
    ("dotdot.eml", ["root"], EX_OK, "", [ends_with(b"\n\n..\n.. two\n...\nend\n")]),
    ("dotdot.eml", ["-i", "root"], EX_OK, "", [ends_with(b"\n\n..\n.. two\n...\nend\n")]),
    # No separator: the header block ends at the first line that is not a header.
    (
        "no-separator.eml",
        ["root"],
        EX_OK,
        "",
        [has(b"Subject: no separator\n"), ends_with(b"\n\nthis line is not a header\nmore\n")],
    ),
    ("no-headers-at-all.eml", ["root"], EX_OK, "", [ends_with(b"\n\njust text, no header, no separator\n")]),
    ("only-headers.eml", ["root"], EX_OK, "", [has(b"Subject: only headers\nX-A: b\n"), ends_with(b">\n\n")]),
    ("bare-cr.eml", ["root"], EX_OK, "", [no_cr]),
    ("received-forged.eml", ["root"], EX_OK, "", [our_received_first]),
    ("from-line.eml", ["root"], EX_OK, "", [from_line_dropped]),
    # -t: recipients from headers.
    ("to-crlf-in-quotes.eml", ["-t"], EX_DATAERR, "invalid address in header", []),
    ("to-nul.eml", ["-t"], EX_DATAERR, "NUL byte", []),
    ("to-unbalanced.eml", ["-t"], EX_NOINPUT, "no recipients from headers", []),
    ("to-garbage.eml", ["-t"], EX_NOINPUT, "no recipients from headers", []),
    ("to-control-chars.eml", ["-t"], EX_DATAERR, "control characters", []),
]


@pytest.mark.parametrize(
    "name,args,code,error,checks", MESSAGES, ids=[f"{m[0]}{''.join(m[1][:-1])}" for m in MESSAGES]
)
def test_hostile_message(
    env: DmaEnv, name: str, args: list[str], code: int, error: str, checks: list[Check]
) -> None:
    rc, err = run(env, args, (CORPUS / name).read_bytes())
    assert rc == code, err
    if error:
        assert error in err, err
    else:
        assert err == ""
    msg = check_spool(env, queued=code == EX_OK)
    for check in checks:
        check(msg)


def test_corpus_is_all_used() -> None:
    used = {m[0] for m in MESSAGES} | {a[0] for a in ALIASES}
    present = {p.name for p in CORPUS.iterdir() if p.name != "README"}
    assert present == used, present ^ used


# ---- command-line arguments ----------------------------------------------------------------------

ARGS: list[tuple[list[str], int, str]] = [
    (
        ["-f", "a@example.com\r\nRCPT TO:<x@evil.example>", "root"],
        EX_DATAERR,
        "the sender contains a line break or NUL",
    ),
    (["-f", "a@example.com\nx", "root"], EX_DATAERR, "the sender contains a line break or NUL"),
    (["-F", "Name\r\nBcc: x@evil.example", "root"], EX_DATAERR, "the full name contains a line break or NUL"),
    (["-F", "Name\rBcc: x@evil.example", "root"], EX_DATAERR, "the full name contains a line break or NUL"),
    (["root\r\nRCPT TO:<x@evil.example>"], EX_DATAERR, "a recipient contains a line break or NUL"),
    (["root\nx@evil.example"], EX_DATAERR, "a recipient contains a line break or NUL"),
    (["x@evil.example\r"], EX_DATAERR, "a recipient contains a line break or NUL"),
    (["ro\x1bot@example.com"], EX_DATAERR, "control characters"),
    ([""], EX_NOINPUT, "no recipients from command line"),
    (["<>"], EX_NOINPUT, "no recipients from command line"),
    (["../../etc/x"], EX_DATAERR, "invalid recipient"),
    (["x@-bad-.example"], EX_DATAERR, "bad domain"),
]


@pytest.mark.parametrize("args,code,error", ARGS, ids=[repr(a[0])[:40] for a in ARGS])
def test_hostile_arguments(env: DmaEnv, args: list[str], code: int, error: str) -> None:
    rc, err = run(env, args, b"Subject: x\n\nbody\n")
    assert rc == code, err
    assert error in err, err
    check_spool(env, queued=False)


def test_invalid_utf8_argument(env: DmaEnv) -> None:
    """An argument that is not UTF-8 (a byte 0xff): refused with one line, nothing queued."""
    r = env.run([os.fsdecode(b"\xff@example.com")], input=b"Subject: x\n\nbody\n")  # type: ignore[list-item]
    assert b"Traceback" not in r.stderr
    assert r.returncode == EX_DATAERR
    one_line_error(r)
    check_spool(env, queued=False)


@pytest.mark.parametrize(
    "sender,rcpt",
    [("jörg@exämple.org", "ünï@exämple.org"), ("ä@b.example", "root"), ("a@example.com", "x@[192.0.2.1]")],
)
def test_eight_bit_addresses_queued_verbatim(env: DmaEnv, sender: str, rcpt: str) -> None:
    rc, err = run(env, ["-f", sender, rcpt], b"Subject: x\n\nbody\n")
    assert (rc, err) == (EX_OK, "")
    check_spool(env, queued=True)
    [entry] = env.entries()
    assert (entry.sender, entry.recipient) == (sender, rcpt)


# ---- aliases ---------------------------------------------------------------------------------------

ALIASES: list[tuple[str, str, int, str]] = [
    ("aliases-loop", "a", EX_DATAERR, "alias loop a -> b -> c -> a"),
    ("aliases-self-loop", "loop", EX_DATAERR, "alias loop loop -> loop"),
    ("aliases-crlf", "evil", EX_CONFIG, "syntax error"),
    ("aliases-path", "evil", EX_DATAERR, "is neither an alias nor a local user"),
    ("aliases-path", "slash", EX_DATAERR, "file destinations are not supported"),
    ("aliases-garbage", "root", EX_CONFIG, "control character"),
    ("aliases-deep", "d0", EX_DATAERR, "aliases nested more than 64 deep"),
    ("aliases-fanout", "f0", EX_DATAERR, "alias loop"),
]


@pytest.mark.parametrize("name,rcpt,code,error", ALIASES, ids=[f"{a[0]}-{a[1]}" for a in ALIASES])
def test_hostile_aliases(env: DmaEnv, name: str, rcpt: str, code: int, error: str) -> None:
    env.aliases.write_bytes((CORPUS / name).read_bytes())
    t0 = time.monotonic()
    rc, err = run(env, [rcpt], b"Subject: x\n\nbody\n", timeout=30)
    assert time.monotonic() - t0 < 20
    assert rc == code, err
    assert error in err, err
    check_spool(env, queued=False)


# ---- giants: time and memory stay bounded ------------------------------------------------------------

MB = 1 << 20


def peak_rss_mb(env: DmaEnv, args: list[str], data: bytes, timeout: float) -> float:
    """The submitting process's own peak RSS, from /usr/bin/time: a child forked from this (large)
    test process would report this process's size as its peak (Linux keeps it across exec)."""
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", program("sendmail"), *args],
        input=data,
        capture_output=True,
        env=env.env,
        timeout=timeout,
        check=False,
    )
    return int(done.stderr.decode().strip().splitlines()[-1]) / 1024


def giant(
    env: DmaEnv, args: list[str], data: bytes, seconds: float, rss_mb: float = 150
) -> tuple[int, str, bytes]:
    t0 = time.monotonic()
    rc, err = run(env, args, data, timeout=seconds * 3)
    elapsed = time.monotonic() - t0
    assert elapsed < seconds, elapsed
    spooled = check_spool(env, queued=rc == EX_OK)
    for name in env.files():  # the same submission once more, measured, into an empty spool
        if name[0] in "QM":
            (env.spool / name).unlink()
    peak = peak_rss_mb(env, args, data, seconds * 3)
    assert peak < rss_mb, peak
    return rc, err, spooled


def test_header_line_of_several_megabytes(env: DmaEnv) -> None:
    data = b"Subject: " + b"h" * (8 * MB) + b"\n\nbody\n"
    rc, err, msg = giant(env, ["root"], data, 30)
    assert (rc, err) == (EX_OK, "")
    assert b"h" * (8 * MB) + b"\n" in msg and msg.endswith(b"\n\nbody\n")


def test_folded_header_of_several_megabytes(env: DmaEnv) -> None:
    data = b"X-Big: start\n" + b"\tfolded continuation line of the big header\n" * 200_000 + b"\nbody\n"
    rc, err, msg = giant(env, ["root"], data, 30)
    assert (rc, err) == (EX_OK, "")
    assert msg.count(b"\tfolded continuation") == 200_000


def test_body_line_of_several_megabytes(env: DmaEnv) -> None:
    data = b"Subject: long line\n\n" + b"b" * (16 * MB) + b"\nend\n"
    rc, err, msg = giant(env, ["root"], data, 30)
    assert (rc, err) == (EX_OK, "")
    assert msg.endswith(b"b" * (16 * MB) + b"\nend\n")


def test_giant_to_header_for_t_is_refused_in_flat_memory(env: DmaEnv) -> None:
    """`-t` keeps at most 1 MiB of a To:/Cc:/Bcc: field (4 MiB of them all): a 100 MB To: line is
    refused at once, in the memory of a small message (it took twice its size before)."""
    data = b"To: " + b"a" * (100 * MB) + b"\nSubject: giant\n\nbody\n"
    rc, err, _ = giant(env, ["-t"], data, 30, rss_mb=60)
    assert rc == EX_DATAERR and "over 1 MiB in a field" in err, err


def test_many_recipients_in_one_to_header(env: DmaEnv) -> None:
    """10,000 distinct recipients in one `-t` To: header: queued, one entry each, in bounded time.

    (100,000 were measured by hand: see SECURITY.md. A million cannot go on a command line, and in
    one header they would need a million queue files.)"""
    n = 10_000
    to = ", ".join(f"user{i}@example.com" for i in range(n)).encode()
    data = b"To: " + to + b"\nSubject: many\n\nbody\n"
    rc, err, _ = giant(env, ["-t"], data, 60)
    assert (rc, err) == (EX_OK, "")
    assert len(env.entries()) == n


def test_many_duplicate_recipients_collapse(env: DmaEnv) -> None:
    to = b", ".join([b"same@example.com"] * 50_000)
    rc, err, _ = giant(env, ["-t"], b"To: " + to + b"\n\nbody\n", 30)
    assert (rc, err) == (EX_OK, "")
    assert [e.recipient for e in env.entries()] == ["same@example.com"]

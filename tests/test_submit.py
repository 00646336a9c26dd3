"""Submission through the real `sendmail`: the message as spooled (headers added and removed, line
handling), the envelope (sender and recipient rules), and refusals that must leave the spool as it
was (dma-behaviour.md 3, 4.1-4.3 and 6, with our deliberate fixes)."""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dma.config import sanitize_hostname
from dma_fixtures import MAILNAME, ME, DmaEnv, one_line_error, program

MSG = b"Subject: test\n\nhello\n"
SYSTEM_HOST = sanitize_hostname(os.uname().nodename)
AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


def submit(env: DmaEnv, args: list[str], msg: bytes = MSG) -> bytes:
    """Queue with -bq, expect success, return the spooled message."""
    r = env.run(["-bq", *args], msg)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    return env.message()


def split(m: bytes) -> tuple[list[bytes], bytes]:
    """(header lines, body) of a spooled message; the first header is our Received (5 lines)."""
    head, sep, body = m.partition(b"\n\n")
    assert sep, m
    return head.split(b"\n"), body


def snapshot(spool: Path) -> dict[str, bytes]:
    return {n: (spool / n).read_bytes() for n in sorted(os.listdir(spool))}


# ---- headers ------------------------------------------------------------------------------------


def test_received_header_is_prepended(dma_env: DmaEnv) -> None:
    before = time.time()
    m = submit(dma_env, ["-f", "alice@src.example", "root"], b"Subject: s\n\nb\n")
    (entry,) = dma_env.entries()
    lines = m.split(b"\n")
    assert lines[0] == f"Received: from {ME} (uid {os.getuid()})".encode()
    assert lines[1] == b"\t(envelope-from alice@src.example)"
    assert lines[2] == f"\tid {entry.message_id}".encode()
    assert re.fullmatch(
        rf"\tby {re.escape(MAILNAME)} \(.*\bon {re.escape(SYSTEM_HOST)}\);".encode(), lines[3]
    ), lines[3]
    assert lines[4].startswith(b"\t")
    when = email.utils.parsedate_to_datetime(lines[4][1:].decode()).timestamp()
    assert before - 2 <= when <= time.time() + 2
    assert lines[5] == b"Subject: s"


def test_date_message_id_from_added_before_the_blank_line(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["root"], b"Subject: s\nX-A: 1\n\nbody\n")
    (entry,) = dma_env.entries()
    head, body = split(m)
    assert body == b"body\n"
    assert head[5:7] == [b"Subject: s", b"X-A: 1"]
    assert [h.split(b":")[0] for h in head[7:]] == [b"Date", b"Message-Id", b"From"]
    email.utils.parsedate_to_datetime(head[7][6:].decode())
    assert re.fullmatch(
        rf"Message-Id: <{re.escape(entry.message_id)}\.[0-9a-f]+@{re.escape(MAILNAME)}>".encode(), head[8]
    ), head[8]
    assert head[9] == f"From: <{ME}@{MAILNAME}>".encode()


@pytest.mark.parametrize(
    ("present", "added"),
    [
        (b"DATE: Mon, 1 Jan 2024 00:00:00 +0000", [b"Message-Id", b"From"]),
        (b"message-id: <x@y>", [b"Date", b"From"]),
        (b"fRoM: someone <s@h.example>", [b"Date", b"Message-Id"]),
    ],
)
def test_headers_added_only_when_missing(dma_env: DmaEnv, present: bytes, added: list[bytes]) -> None:
    m = submit(dma_env, ["root"], b"Subject: s\n" + present + b"\n\nbody\n")
    head, _ = split(m)
    assert head[5:7] == [b"Subject: s", present]
    assert [h.split(b":")[0] for h in head[7:]] == added


def test_nothing_added_when_all_present(dma_env: DmaEnv) -> None:
    msg = b"From: a <a@h.example>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <1@h>\n\nbody\n"
    m = submit(dma_env, ["root"], msg)
    assert m.split(b"\n", 5)[5] == msg


@pytest.mark.parametrize("flag", [[], ["-t"]])
def test_bcc_removed_with_continuations(dma_env: DmaEnv, flag: list[str]) -> None:
    msg = (
        b"To: root\nBcc: hidden1@x.example,\n hidden2@x.example,\n\thidden3@x.example\n"
        b"Subject: s\nbcc:\n\n Bcc: not a header\n"
    )
    m = submit(dma_env, [*flag, "root"], msg)
    head, body = split(m)
    assert b"hidden" not in m
    assert not any(h.lower().startswith(b"bcc") for h in head)
    assert b"To: root" in head and b"Subject: s" in head
    assert body == b" Bcc: not a header\n"
    expected = ["root"] + (["hidden1@x.example", "hidden2@x.example", "hidden3@x.example"] if flag else [])
    assert sorted(dma_env.recipients()) == sorted(expected)


@pytest.mark.parametrize(
    "first", [b"From alice@x.example Mon Jan  1 00:00:00 2024\n", b">From bob Mon\n", b"FROM x\n"]
)
def test_leading_from_line_dropped(dma_env: DmaEnv, first: bytes) -> None:
    m = submit(dma_env, ["root"], first + b"Subject: s\n\nFrom the body\n")
    head, body = split(m)
    assert head[5] == b"Subject: s"
    assert first.strip() not in m
    assert body == b"From the body\n"


def test_crlf_normalised_and_dot_crlf_ends_input(dma_env: DmaEnv) -> None:
    msg = b"Subject: crlf\r\nBcc: x@y.example\r\n\r\nline 1\r\nline 2\r\n.\r\nnot this\r\n"
    m = submit(dma_env, ["root"], msg)
    assert b"\r" not in m
    head, body = split(m)
    assert head[5] == b"Subject: crlf" and b"x@y.example" not in m
    assert [h.split(b":")[0] for h in head[6:]] == [b"Date", b"Message-Id", b"From"]
    assert body == b"line 1\nline 2\n"


def test_crlf_with_i_keeps_the_dot(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["-i", "root"], b"Subject: s\r\n\r\na\r\n.\r\nb\r\n")
    assert split(m)[1] == b"a\n.\nb\n"


@pytest.mark.parametrize("size", [998, 5000, 2 * 1024 * 1024])
def test_long_lines_stored_whole(dma_env: DmaEnv, size: int) -> None:
    line = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    m = submit(dma_env, ["root"], b"Subject: long\n\n" + line + b"\nend\n")
    assert split(m)[1] == line + b"\nend\n"
    (entry,) = dma_env.entries()
    assert entry.size == len(m)


def test_long_header_line_stored_whole(dma_env: DmaEnv) -> None:
    value = b"x" * 5000
    m = submit(dma_env, ["root"], b"X-Long: " + value + b"\nSubject: s\n\nb\n")
    head, _ = split(m)
    assert head[5] == b"X-Long: " + value and head[6] == b"Subject: s"


def test_missing_final_newline_added(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["root"], b"Subject: s\n\nno newline")
    assert m.endswith(b"\n\nno newline\n")


def test_headers_only_message(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["root"], b"Subject: only headers\n")
    head, body = split(m)
    assert body == b""
    assert m.endswith(b"\n\n")
    assert head[5] == b"Subject: only headers"
    assert [h.split(b":")[0] for h in head[6:]] == [b"Date", b"Message-Id", b"From"]


@pytest.mark.parametrize("flag", [[], ["-t"]])
def test_empty_message_is_queued_with_our_headers(dma_env: DmaEnv, flag: list[str]) -> None:
    """As C dma (dma-behaviour.md 4.1): nothing on standard input is still a message."""
    head, body = split(submit(dma_env, [*flag, "root"], b""))
    assert body == b""
    assert [h.split(b":")[0] for h in head[5:]] == [b"Date", b"Message-Id", b"From"]


def test_closed_stdin_is_no_message(dma_env: DmaEnv) -> None:
    """A closed descriptor 0 is not an empty message: exit 66, nothing queued."""
    r = subprocess.run(
        [program("sendmail"), "-bq", "root"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dma_env.env,
        preexec_fn=lambda: os.close(0),
        check=False,
    )
    assert (r.returncode, one_line_error(r)) == (66, "standard input is closed, nothing queued")
    assert dma_env.files() == []


def test_missing_separator_inserted_before_the_first_non_header(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["root"], b"Subject: s\nX-B: 2\nThis is the body, not a header\nSecond: line\n")
    head, body = split(m)
    assert head[5:7] == [b"Subject: s", b"X-B: 2"]
    assert [h.split(b":")[0] for h in head[7:]] == [b"Date", b"Message-Id", b"From"]
    assert body == b"This is the body, not a header\nSecond: line\n"


def test_body_only_message(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["root"], b"just text\n")
    head, body = split(m)
    assert len(head) == 8 and body == b"just text\n"


@pytest.mark.parametrize(("flag", "body"), [([], b"a\n"), (["-i"], b"a\n.\nb\n"), (["-oi"], b"a\n.\nb\n")])
def test_lone_dot(dma_env: DmaEnv, flag: list[str], body: bytes) -> None:
    m = submit(dma_env, [*flag, "root"], b"Subject: s\n\na\n.\nb\n")
    assert split(m)[1] == body


def test_dot_variants_that_never_end_input(dma_env: DmaEnv) -> None:
    m = submit(dma_env, ["root"], b"Subject: s\n\n..\n. \n.x\n x\nend\n")
    assert split(m)[1] == b"..\n. \n.x\n x\nend\n"


def test_final_dot_without_newline_is_kept(dma_env: DmaEnv) -> None:
    # dma-behaviour.md 4.1: only `.` followed by a line end ends the input; a final `.` without
    # LF is message content (it gets its LF like any unterminated last line).
    m = submit(dma_env, ["root"], b"Subject: s\n\nend\n.")
    assert split(m)[1] == b"end\n.\n"


def test_eight_bit_body_unchanged(dma_env: DmaEnv) -> None:
    body = "Grüße, 日本語\n".encode() + bytes(range(0x80, 0x100)).replace(b"\r", b"") + b"\n"
    m = submit(dma_env, ["root"], b"Subject: =?utf-8?q?x?=\n\n" + body)
    assert split(m)[1] == body


# ---- the envelope sender -------------------------------------------------------------------------


def sender_of(env: DmaEnv) -> str:
    (entry,) = env.entries()
    return entry.sender


@pytest.mark.parametrize(
    "given", ["a@b.example", "<a@b.example>", "Name <a@b.example>", '"A, B" <a@b.example>']
)
def test_sender_forms(dma_env: DmaEnv, given: str) -> None:
    m = submit(dma_env, ["-f", given, "root"])
    assert sender_of(dma_env) == "a@b.example"
    assert b"\t(envelope-from a@b.example)\n" in m
    assert b"\nFrom: <a@b.example>\n" in m


@pytest.mark.parametrize("given", ["", "<>"])
def test_null_sender(dma_env: DmaEnv, given: str) -> None:
    m = submit(dma_env, ["-f", given, "root"])
    assert sender_of(dma_env) == ""
    (q,) = dma_env.q_files().values()
    assert q["Sender"] == ""
    assert f"\nFrom: <MAILER-DAEMON@{MAILNAME}>\n".encode() in m
    r = dma_env.run([], prog="mailq")
    assert b"From\t: \n" in r.stdout


def test_default_sender_is_login_at_mailname(dma_env: DmaEnv) -> None:
    submit(dma_env, ["root"])
    assert sender_of(dma_env) == f"{ME}@{MAILNAME}"


def test_EMAIL_used_without_f(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "root"], MSG, env={"EMAIL": "env@e.example"})
    assert r.returncode == 0, r.stderr
    assert sender_of(dma_env) == "env@e.example"
    assert b"\nFrom: <env@e.example>\n" in dma_env.message()


def test_f_wins_over_EMAIL(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "-f", "flag@f.example", "root"], MSG, env={"EMAIL": "env@e.example"})
    assert r.returncode == 0, r.stderr
    assert sender_of(dma_env) == "flag@f.example"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["-f", "user"], {}, f"user@{MAILNAME}"),
        ([], {"EMAIL": "justuser"}, f"justuser@{MAILNAME}"),
        ([], {"EMAIL": "@dom.example"}, f"{ME}@dom.example"),
    ],
)
def test_sender_qualified_with_mailname(
    dma_env: DmaEnv, args: list[str], env: dict[str, str], expected: str
) -> None:
    r = dma_env.run(["-bq", *args, "root"], MSG, env=env)
    assert r.returncode == 0, r.stderr
    assert sender_of(dma_env) == expected


@pytest.mark.parametrize(
    ("masquerade", "expected"),
    [
        ("john@", "john@flag.example"),
        ("percolator.example", "f@percolator.example"),
        ("u@h.example", "u@h.example"),
    ],
)
def test_masquerade_overrides_f(dma_env: DmaEnv, masquerade: str, expected: str) -> None:
    dma_env.write_conf(f"MASQUERADE {masquerade}")
    m = submit(dma_env, ["-f", "f@flag.example", "root"])
    assert sender_of(dma_env) == expected
    assert f"\nFrom: <{expected}>\n".encode() in m


def test_masquerade_without_f(dma_env: DmaEnv) -> None:
    dma_env.write_conf("MASQUERADE john@")
    submit(dma_env, ["root"])
    assert sender_of(dma_env) == f"john@{MAILNAME}"


def test_mailname_from_a_file(dma_env: DmaEnv) -> None:
    name_file = dma_env.root / "mailname"
    name_file.write_text("my.file.example extra words\nsecond.line\n")
    dma_env.write_conf(mailname=str(name_file))
    m = submit(dma_env, ["-f", "someone", "root@my.file.example"])
    assert sender_of(dma_env) == "someone@my.file.example"
    assert dma_env.recipients() == ["root"]
    assert b"\tby my.file.example (" in m
    assert re.search(rb"\nMessage-Id: <[0-9a-f.]+@my\.file\.example>\n", m), m


def test_mailname_file_missing_falls_back_to_the_system_name(dma_env: DmaEnv) -> None:
    dma_env.write_conf(mailname=str(dma_env.root / "no-such-file"))
    m = submit(dma_env, ["-f", "someone", "root"])
    assert sender_of(dma_env) == f"someone@{SYSTEM_HOST}"
    assert f"\tby {SYSTEM_HOST} (".encode() in m


def test_mailname_literal(dma_env: DmaEnv) -> None:
    dma_env.write_conf(mailname="literal.example")
    m = submit(dma_env, ["root@literal.example"])
    assert sender_of(dma_env) == f"{ME}@literal.example"
    assert dma_env.recipients() == ["root"]
    assert b"\tby literal.example (" in m and b"@literal.example>\n" in m


# ---- recipients -----------------------------------------------------------------------------------


def test_recipient_forms(dma_env: DmaEnv) -> None:
    submit(
        dma_env,
        [
            "<a@x.example>",
            "b@y.example, c@z.example",
            "a@x.example",
            "root@localhost",
            f"root@{MAILNAME}",
            "root",
        ],
    )
    assert sorted(dma_env.recipients()) == ["a@x.example", "b@y.example", "c@z.example", "root"]
    assert len(dma_env.entries()) == 4


def test_mailname_domain_matched_case_insensitively(dma_env: DmaEnv) -> None:
    submit(dma_env, [f"root@{MAILNAME.upper()}", "nobody@LOCALHOST"])
    assert sorted(dma_env.recipients()) == ["nobody", "root"]


@pytest.mark.parametrize(
    "args", [["nosuchuser-dma"], ["root", "nosuchuser-dma"], ["a@x.example", "nosuchuser-dma@localhost"]]
)
def test_unknown_local_user_refused_and_nothing_spooled(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run(["-bq", *args], MSG)
    assert r.returncode == 65
    assert one_line_error(r) == "invalid recipient `nosuchuser-dma'"
    assert dma_env.files() == []


def test_unknown_local_user_from_t_refused(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "-t"], b"To: root, nosuchuser-dma\n\nb\n")
    assert r.returncode == 65
    assert "nosuchuser-dma" in one_line_error(r)
    assert dma_env.files() == []


def test_aliases_expand_to_remote_and_local(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text(
        "team: a@x.example, root, inner\ninner: b@y.example, nobody\npostmaster: root\n"
    )
    submit(dma_env, ["team", "postmaster@localhost"])
    assert sorted(dma_env.recipients()) == ["a@x.example", "b@y.example", "nobody", "root"]


def test_alias_catch_all(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("*: catch@x.example\nknown: root\n")
    submit(dma_env, ["anything-at-all", "nobody", "known"])
    # `*` applies to unknown names and, as C dma, to existing users without an alias of their own.
    assert sorted(dma_env.recipients()) == ["catch@x.example", "root"]


def test_alias_to_unknown_user_refused(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("bad: nosuchuser-dma\n")
    r = dma_env.run(["-bq", "bad"], MSG)
    assert r.returncode == 65
    assert "bad" in one_line_error(r)
    assert dma_env.files() == []


def test_nullclient_qualifies_and_skips_aliases(dma_env: DmaEnv) -> None:
    dma_env.write_conf("NULLCLIENT")
    dma_env.aliases.write_text("root: a@x.example\n")
    submit(dma_env, ["root", "nosuchuser-dma", "b@y.example"])
    assert sorted(dma_env.recipients()) == sorted(
        [f"root@{MAILNAME}", f"nosuchuser-dma@{MAILNAME}", "b@y.example"]
    )


# ---- refusals leave the spool as it was -----------------------------------------------------------

REFUSED = [
    (["-f", "a@b.example\nX-Injected: 1", "root"], MSG, 65, None),
    (["-f", "a@b.example\r", "root"], MSG, 65, None),
    (["root\nX: y"], MSG, 65, None),
    (["a@x.example\rRCPT TO:<b@y.example>"], MSG, 65, None),
    (["-F", "Name\nBcc: x@y.example", "root"], MSG, 65, None),
    (["-F", "Name\r", "root"], MSG, 65, None),
    (["root"], b"Subject: s\n\nnul \0 here\n", 65, None),
    # A short id: the test's id goes into the environment (PYTEST_CURRENT_TEST), limited to 128 KiB.
    pytest.param(["root"], b"Subject: s\n\n" + b"x" * 200000 + b"\0\n", 65, None, id="nul-after-200k"),
    (["a@"], MSG, 65, None),
    (["@b.example"], MSG, 65, None),
    (["a@b..c"], MSG, 65, None),
    (["a@-b.example"], MSG, 65, None),
    (["a@b-.example"], MSG, 65, None),
    (["a\x01b@c.example"], MSG, 65, None),
    (["a@b\x7f.example"], MSG, 65, None),
    (["a@x.example, @b"], MSG, 65, None),
    (["<a@x.example"], MSG, 65, None),
    ([], MSG, 66, "no recipients from command line"),
    (["-t"], b"Subject: s\nX-To: a@x.example\n\nTo: body@x.example\n", 66, "no recipients from headers"),
    (["-t"], b"To: a@x.example (unbalanced))\n\nb\n", 65, None),
]


@pytest.mark.parametrize(("args", "msg", "code", "text"), REFUSED)
def test_refused_and_spool_untouched(
    dma_env: DmaEnv, args: list[str], msg: bytes, code: int, text: str | None
) -> None:
    submit(dma_env, ["root"])  # something already queued, which must stay exactly as it is
    before = snapshot(dma_env.spool)
    r = dma_env.run(["-bq", *args], msg)
    assert r.returncode == code, r.stderr
    message = one_line_error(r)
    if text is not None:
        assert message == text
    assert snapshot(dma_env.spool) == before


def test_spool_missing_in_system_mode(dma_env: DmaEnv) -> None:
    missing = dma_env.root / "no-such-spool"
    dma_env.write_conf(spool=missing)
    r = dma_env.run(["-bq", "root"], MSG)
    assert r.returncode == 73
    assert str(missing) in one_line_error(r)
    assert not missing.exists()


def test_spool_not_writable(traversable: None) -> None:
    base = Path(tempfile.mkdtemp(prefix="dma-nobody-", dir="/tmp"))
    try:
        base.chmod(0o755)
        env = DmaEnv(base)
        for d in (env.spool, env.root):
            d.chmod(0o755)
        (env.state).chmod(0o777)
        before = snapshot(env.spool)
        r = subprocess.run(
            [*AS_NOBODY, program("sendmail"), "-bq", "root"],
            input=MSG,
            capture_output=True,
            env={**env.env, "HOME": str(env.state)},
            timeout=30,
            check=False,
        )
        assert r.returncode == 73, r.stderr
        assert str(env.spool) in one_line_error(r)
        assert snapshot(env.spool) == before
    finally:
        shutil.rmtree(base)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_is_temporary_and_leaves_nothing(dma_env: DmaEnv, small_tmpfs: Path) -> None:
    dma_env.write_conf(spool=small_tmpfs)
    body = (b"x" * 99 + b"\n") * 10_000  # 1 MB
    r = dma_env.run(["-bq", "root", "a@x.example"], b"Subject: big\n\n" + body)
    assert r.returncode == 75, r.stderr
    one_line_error(r)
    assert os.listdir(small_tmpfs) == []
    # A message that fits still goes in afterwards.
    r = dma_env.run(["-bq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert len(dma_env.entries(small_tmpfs)) == 1


@pytest.mark.parametrize(
    ("lines", "bad_line", "key"),
    [
        (["NOSUCHKEY value"], 0, "NOSUCHKEY"),
        (["# comment", "", "FINGERPRINT"], 2, "FINGERPRINT"),
        (["spooldir /x"], 0, "spooldir"),
        (["PORT 99999"], 0, "PORT"),
    ],
)
def test_config_errors_name_file_and_line(dma_env: DmaEnv, lines: list[str], bad_line: int, key: str) -> None:
    dma_env.write_conf(*lines)
    text = dma_env.conf.read_text().split("\n")
    bad_line += text.index(lines[0]) + 1
    assert text[bad_line - 1].startswith(key), text
    r = dma_env.run(["-bq", "root"], MSG)
    assert r.returncode == 78
    assert one_line_error(r).startswith(f"{dma_env.conf}:{bad_line}: {key}:")
    assert dma_env.files() == []


def test_nullclient_without_smarthost(dma_env: DmaEnv) -> None:
    dma_env.conf.write_text(f"SPOOLDIR {dma_env.spool}\nNULLCLIENT\n")
    for args, prog in ((["-bq", "root"], "sendmail"), ([], "mailq")):
        r = dma_env.run(args, MSG, prog=prog)
        assert r.returncode == 78
        assert one_line_error(r, prog).startswith(f"{dma_env.conf}:2: NULLCLIENT:")
    assert dma_env.files() == []


# ---- what a successful submission leaves --------------------------------------------------------


def test_one_message_three_recipients_three_links(dma_env: DmaEnv) -> None:
    submit(dma_env, ["root", "a@x.example", "b@y.example"])
    names = dma_env.files()
    qs = [n for n in names if n.startswith("Q")]
    ms = [n for n in names if n.startswith("M")]
    assert len(qs) == 3 and len(ms) == 3
    assert sorted(n[1:] for n in qs) == sorted(n[1:] for n in ms)
    assert not [n for n in names if n.startswith("tmp_") or n.endswith(".new")]
    stats = [os.stat(dma_env.spool / n) for n in ms]
    assert len({s.st_ino for s in stats}) == 1
    assert all(s.st_nlink == 3 for s in stats)
    assert all(stat.S_ISREG(s.st_mode) for s in stats)
    ids = {e.message_id for e in dma_env.entries()}
    assert len(ids) == 1
    (mid,) = ids
    assert all(n[1:].startswith(mid + ".") for n in qs), (mid, qs)


def test_each_message_gets_its_own_id(dma_env: DmaEnv) -> None:
    for _ in range(2):
        assert dma_env.run(["-bq", "root"], MSG).returncode == 0
    entries = dma_env.entries()
    assert len(entries) == 2
    assert entries[0].message_id != entries[1].message_id
    assert len({e.id for e in entries}) == 2


def test_after_exit_0_files_exist_and_no_temp_file(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "root"], MSG)
    assert r.returncode == 0
    names = dma_env.files()
    assert [n[0] for n in names] == ["M", "Q"], names
    assert (dma_env.spool / names[0]).stat().st_size > len(MSG)
    assert (dma_env.spool / names[1]).read_text().startswith(f"ID: {names[1][1:]}\n")

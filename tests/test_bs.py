"""`sendmail -bs`: SMTP on standard input and output, driven through the real program.

Every session here writes all its commands at once (a pipelining client), so a reader that read
ahead of a DATA would lose bytes; replies are checked in order, and what was queued in the spool.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from dma_fixtures import MAILNAME, ME, DmaEnv, program
from servers import SmtpSink

EHLO_REPLY = [
    f"250-{MAILNAME}",
    "250-PIPELINING",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-ENHANCEDSTATUSCODES",
    "250 SIZE",
]


def session(env: DmaEnv, script: bytes, *args: str) -> list[str]:
    """Run `sendmail -bs` (queue only unless `args` say otherwise) on `script`; the reply lines."""
    r = env.run(["-bs", *(args or ["-bq"])], script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\r\n")
    assert lines.pop() == "", r.stdout  # every reply ends in CRLF
    assert lines[0] == f"220 {MAILNAME} ESMTP dma"
    return lines[1:]


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode()


def bodies(env: DmaEnv) -> dict[str, bytes]:
    """Message id -> the body as spooled (after our headers)."""
    found = {}
    for e in env.entries():
        content = (env.spool / f"M{e.id}").read_bytes()
        found[e.message_id] = content.split(b"\n\n", 1)[1]
    return found


def test_ehlo_helo_and_the_small_commands(dma_env: DmaEnv) -> None:
    replies = session(
        dma_env, crlf("EHLO client.test", "HELO client.test", "NOOP", "VRFY root", "HELP", "RSET", "QUIT")
    )
    assert replies == [
        *EHLO_REPLY,
        f"250 {MAILNAME}",
        "250 2.0.0 ok",
        "252 2.1.5 will not verify, but will accept the message",
        "214 2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
        "250 2.0.0 ok",
        "221 2.0.0 bye",
    ]
    assert dma_env.files() == []


BODY = "Subject: dots\r\n\r\n..leading dot\r\n..\r\nFrom the start of a line\r\nGrüße ☃\r\n...\r\n"


def test_pipelined_transactions_each_queue_one_message(dma_env: DmaEnv) -> None:
    script = (
        crlf(
            "EHLO client.test",
            "MAIL FROM:<alice@src.example> BODY=8BITMIME SIZE=200",
            "RCPT TO:<a@x.example>",
            "RCPT TO:<b@y.example>",
            "DATA",
        )
        + BODY.encode()
        + crlf(
            ".",
            "MAIL FROM:<>",
            "RCPT TO:<c@z.example>",
            "DATA",
            ".",  # an empty message is a message
            "QUIT",
        )
    )
    replies = session(dma_env, script)
    ids = [r.rpartition(" ")[2] for r in replies if r.startswith("250 2.0.0 queued as ")]
    assert replies == [
        *EHLO_REPLY,
        "250 2.1.0 ok",
        "250 2.1.5 ok",
        "250 2.1.5 ok",
        "354 end data with <CR><LF>.<CR><LF>",
        f"250 2.0.0 queued as {ids[0]}",
        "250 2.1.0 ok",
        "250 2.1.5 ok",
        "354 end data with <CR><LF>.<CR><LF>",
        f"250 2.0.0 queued as {ids[1]}",
        "221 2.0.0 bye",
    ]
    entries = sorted((e.message_id, e.sender, e.recipient) for e in dma_env.entries())
    assert entries == sorted(
        [
            (ids[0], "alice@src.example", "a@x.example"),
            (ids[0], "alice@src.example", "b@y.example"),
            (ids[1], "", "c@z.example"),
        ]
    )
    got = bodies(dma_env)
    assert got[ids[0]] == ".leading dot\n.\nFrom the start of a line\nGrüße ☃\n..\n".encode()
    assert got[ids[1]] == b""
    # The calling user is who submitted, whatever MAIL FROM says (as with -f).
    first = next(e for e in dma_env.entries() if e.message_id == ids[0])
    assert (
        (dma_env.spool / f"M{first.id}")
        .read_bytes()
        .startswith(f"Received: from {ME} (uid {os.getuid()})\n".encode())
    )


def test_bad_commands_and_sequences_get_5xx_and_the_session_goes_on(dma_env: DmaEnv) -> None:
    script = (
        crlf(
            "RCPT TO:<a@x.example>",
            "DATA",
            "FOO bar",
            "EHLO",
            "MAIL FROM:alice@src.example",
            "MAIL FROM:<alice@src.example> NOTIFY=NEVER",
            "MAIL FROM:<a b@src.example>",
            "MAIL FROM:<two@a.example,three@b.example>",
            "MAIL FROM:<alice@src.example>",
            "MAIL FROM:<alice@src.example>",
            "DATA",
            "RCPT TO:<a@x.example> ORCPT=rfc822;a@x.example",
            "RCPT TO:<>",
            "RCPT TO:<nosuchuser>",
            "RCPT TO:<@relay.example:a@x.example>",
            "DATA now",
            "RSET",
            "DATA",
            "X" * 3000,
        )
        + b"NOOP\0\r\nNOOP\rRCPT TO:<x@y>\r\nNOOP \xff\r\n"
        + crlf("QUIT")
    )
    assert session(dma_env, script) == [
        "503 5.5.1 MAIL first",
        "503 5.5.1 MAIL first",
        "500 5.5.1 unrecognised command",
        "501 5.5.4 EHLO needs a domain",
        "501 5.5.4 syntax: FROM:<address>",
        "555 5.5.4 unsupported parameter NOTIFY=NEVER",
        "501 5.5.4 syntax: FROM:<address>",
        "553 5.1.7 invalid sender `two@a.example,three@b.example'",
        "250 2.1.0 ok",
        "503 5.5.1 MAIL already given",
        "503 5.5.1 RCPT first",
        "555 5.5.4 unsupported parameter ORCPT=rfc822;a@x.example",
        "550 5.1.1 invalid recipient `'",
        "550 5.1.1 invalid recipient `nosuchuser'",
        "250 2.1.5 ok",
        "501 5.5.4 DATA takes no argument",
        "250 2.0.0 ok",
        "503 5.5.1 MAIL first",
        "500 5.5.2 line too long",
        "500 5.5.2 control characters in command",
        "500 5.5.2 control characters in command",
        "500 5.5.2 command is not UTF-8",
        "221 2.0.0 bye",
    ]
    assert dma_env.files() == []


def test_recipients_resolve_through_aliases(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("team: a@x.example, b@y.example\n")
    script = crlf(
        "HELO c", "MAIL FROM:<s@src.example>", "RCPT TO:<team>", "DATA", "Subject: s", "", "hi", ".", "QUIT"
    )
    assert session(dma_env, script)[:3] == [f"250 {MAILNAME}", "250 2.1.0 ok", "250 2.1.5 ok"]
    assert sorted(dma_env.recipients()) == ["a@x.example", "b@y.example"]


def test_a_client_that_closes_mid_data_queues_nothing_of_that_message(dma_env: DmaEnv) -> None:
    script = crlf(
        "HELO c",
        "MAIL FROM:<s@src.example>",
        "RCPT TO:<a@x.example>",
        "DATA",
        "Subject: one",
        "",
        "kept",
        ".",
    )
    script += crlf("MAIL FROM:<s@src.example>", "RCPT TO:<b@y.example>", "DATA", "Subject: two", "", "half a")
    replies = session(dma_env, script)
    assert replies[-1] == "354 end data with <CR><LF>.<CR><LF>"
    assert dma_env.recipients() == ["a@x.example"]
    assert list(bodies(dma_env).values()) == [b"kept\n"]
    assert [n for n in dma_env.files() if not n.startswith(("Q", "M"))] == []  # no temporary file left


def test_a_refused_body_is_read_to_its_end_and_the_session_goes_on(dma_env: DmaEnv) -> None:
    script = crlf("HELO c", "MAIL FROM:<s@src.example>", "RCPT TO:<a@x.example>", "DATA")
    script += b"Subject: nul\r\n\r\nbad \0 byte\r\nMAIL FROM:<x@y.example>\r\n.\r\n"
    script += crlf(
        "MAIL FROM:<s@src.example>", "RCPT TO:<b@y.example>", "DATA", "Subject: ok", "", "fine", ".", "QUIT"
    )
    replies = session(dma_env, script)
    assert replies[4] == "554 5.6.0 bad mail input format: message contains a NUL byte"
    assert replies[5:8] == ["250 2.1.0 ok", "250 2.1.5 ok", "354 end data with <CR><LF>.<CR><LF>"]
    assert replies[8].startswith("250 2.0.0 queued as ")
    assert dma_env.recipients() == ["b@y.example"]


def test_a_body_refused_before_it_is_read_is_skipped_not_taken_as_commands(dma_env: DmaEnv) -> None:
    blocker = dma_env.root / "not-a-directory"
    blocker.write_text("")
    dma_env.write_conf(spool=blocker / "spool")  # the spool can not be made: DATA fails at once
    script = crlf("HELO c", "MAIL FROM:<s@src.example>", "RCPT TO:<a@x.example>", "DATA")
    script += crlf("Subject: s", "", "RSET", "QUIT", ".", "NOOP", "QUIT")
    replies = session(dma_env, script)
    assert replies[3] == "354 end data with <CR><LF>.<CR><LF>"
    assert replies[4].startswith("451 4.3.0 can not create "), replies
    assert replies[5:] == ["250 2.0.0 ok", "221 2.0.0 bye"]  # the NOOP and QUIT after the body


def test_size_beyond_the_spool_free_space_and_endless_rcpt_are_refused(dma_env: DmaEnv) -> None:
    script = crlf("EHLO c", f"MAIL FROM:<s@src.example> SIZE={10**30}", "MAIL FROM:<s@src.example> SIZE=1000")
    script += crlf(*(f"RCPT TO:<r{i}@x.example>" for i in range(1001)), "QUIT")
    replies = session(dma_env, script)[len(EHLO_REPLY) :]
    assert replies[:2] == ["452 4.3.1 insufficient system storage", "250 2.1.0 ok"]
    assert replies[2:-2] == ["250 2.1.5 ok"] * 1000
    assert replies[-2:] == ["452 4.5.3 too many recipients", "221 2.0.0 bye"]


def test_smtputf8_and_eight_bit_addresses(dma_env: DmaEnv) -> None:
    script = crlf(
        "EHLO c",
        "MAIL FROM:<jösé@exämple.test> SMTPUTF8 BODY=8BITMIME",
        "RCPT TO:<ünï@bücher.example>",
        'RCPT TO:<"a>b"@x.example>',
        "DATA",
        "Subject: ☃",
        "",
        "8-bit body: ü",
        ".",
        "QUIT",
    )
    replies = session(dma_env, script)
    assert replies[len(EHLO_REPLY) : len(EHLO_REPLY) + 4] == [
        "250 2.1.0 ok",
        "250 2.1.5 ok",
        "250 2.1.5 ok",
        "354 end data with <CR><LF>.<CR><LF>",
    ]
    assert sorted((e.sender, e.recipient) for e in dma_env.entries()) == [
        ("jösé@exämple.test", '"a>b"@x.example'),
        ("jösé@exämple.test", "ünï@bücher.example"),
    ]
    assert list(bodies(dma_env).values()) == ["8-bit body: ü\n".encode()]


def test_recipients_with_bs_are_a_usage_error_and_bs_i_works(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bs", "a@x.example"], crlf("QUIT"))
    assert (r.returncode, r.stdout) == (64, b"")
    assert dma_env.files() == []
    script = crlf(
        "HELO c", "MAIL FROM:<s@src.example>", "RCPT TO:<a@x.example>", "DATA", "a", ".", "b", ".", "QUIT"
    )
    assert session(dma_env, script, "-i", "-bq")[-1] == "221 2.0.0 bye"
    assert list(bodies(dma_env).values()) == [b"a\n"]


def test_an_interactive_client_is_answered_line_by_line(dma_env: DmaEnv) -> None:
    """A client that waits for each reply before it writes (as PHP's mailers do) never deadlocks."""
    with subprocess.Popen(
        [program("sendmail"), "-bs", "-bq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dma_env.env
    ) as p:
        assert p.stdin is not None and p.stdout is not None
        stdin, stdout = p.stdin, p.stdout

        def say(line: str) -> str:
            stdin.write(line.encode() + b"\r\n")
            stdin.flush()
            return stdout.readline().decode()

        assert stdout.readline().decode() == f"220 {MAILNAME} ESMTP dma\r\n"
        assert say("HELO c") == f"250 {MAILNAME}\r\n"
        assert say("MAIL FROM:<s@src.example>") == "250 2.1.0 ok\r\n"
        assert say("RCPT TO:<a@x.example>") == "250 2.1.5 ok\r\n"
        assert say("DATA").startswith("354 ")
        assert say("Subject: s\r\n\r\nbody\r\n.").startswith("250 2.0.0 queued as ")
        assert say("QUIT") == "221 2.0.0 bye\r\n"
        assert p.wait(10) == 0
    assert dma_env.recipients() == ["a@x.example"]


@pytest.mark.parametrize("flag", ["-i", "-D"])
def test_delivery_after_quit(dma_env: DmaEnv, flag: str) -> None:
    """Without -bq the runner is started once the session ends (with -D: this process delivers),
    and every message arrives once."""
    sink = SmtpSink().start()
    try:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {sink.port}"
        dma_env.write_conf()
        script = crlf("EHLO c")
        for n in (1, 2):
            script += crlf(
                f"MAIL FROM:<s{n}@src.example>",
                f"RCPT TO:<r{n}@x.example>",
                "DATA",
                f"Subject: {n}",
                "",
                "..",
                ".",
            )
        replies = session(dma_env, script + crlf("QUIT"), flag)
        assert replies[-1] == "221 2.0.0 bye"
        deadline = time.monotonic() + 20
        while len(sink.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a duplicate would arrive now
        assert dma_env.entries() == []
        got = sorted(
            (m.mail_from, m.rcpt_tos, m.content.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1])
            for m in sink.messages
        )
        assert got == [
            ("s1@src.example", ["r1@x.example"], b".\n"),
            ("s2@src.example", ["r2@x.example"], b".\n"),
        ]
    finally:
        sink.stop()


def test_closed_stdin_with_bs(dma_env: DmaEnv) -> None:
    r = subprocess.run(
        [program("sendmail"), "-bs"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dma_env.env,
        preexec_fn=lambda: os.close(0),
        check=False,
    )
    assert (r.returncode, r.stdout) == (66, b"")


def test_floods_are_answered_in_bounded_memory(dma_env: DmaEnv, tmp_path: Path) -> None:
    """A 64 MiB command line, 100,000 pipelined commands and a 50 MB body: constant memory, every
    command answered, the message queued whole."""
    line = b"x" * 998 + b"\r\n"
    script = crlf("EHLO c") + b"A" * (64 << 20) + b"\r\n" + crlf("NOOP") * 100_000
    script += (
        crlf("MAIL FROM:<s@src.example>", "RCPT TO:<a@x.example>", "DATA") + line * 50_000 + crlf(".", "QUIT")
    )
    rss = tmp_path / "rss"
    sendmail = [program("sendmail"), "-bs", "-bq"]
    r = subprocess.run(
        ["/usr/bin/time", "-o", str(rss), "-f", "%M", *sendmail],
        input=script,
        capture_output=True,
        env=dma_env.env,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    replies = r.stdout.decode().split("\r\n")
    assert replies.count("500 5.5.2 line too long") == 1 and replies.count("250 2.0.0 ok") == 100_000
    assert replies[-3].startswith("250 2.0.0 queued as ") and replies[-2] == "221 2.0.0 bye"
    assert list(bodies(dma_env).values()) == [line.replace(b"\r\n", b"\n") * 50_000]
    assert int(rss.read_text()) < 40_000  # KiB: the submission path's own size, whatever the input

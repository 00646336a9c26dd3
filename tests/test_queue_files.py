"""Queue files shared with C dma 0.13/0.14 (dma-behaviour.md 3 and docs/spool.md): a spool written
by C dma is listed and delivered by us, and the Q files we write hold nothing C dma could not parse."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dma_fixtures import MAILNAME, DmaEnv

DOCS = Path(__file__).resolve().parent.parent / "docs" / "spool.md"
C_MESSAGE = (
    b"Received: from alice (uid 1000)\n"
    b"\t(envelope-from alice@x)\n"
    b"\tid 20c096\n"
    b"\tby vm (DragonFly Mail Agent v0.13);\n"
    b"\tWed, 25 Nov 2026 11:59:04 +0000\n"
    b"Subject: from C dma\n"
    b"Date: Wed, 25 Nov 2026 11:59:04 +0000\n"
    b"Message-Id: <6b06cde9.20c096.772701f@vm>\n"
    b"From: <alice@x>\n"
    b"\n"
    b"left by C dma\n"
)


def write_c_entry(
    spool: Path, qid: str, text: str, message: bytes | None = C_MESSAGE, mtime: int | None = None
) -> None:
    (spool / f"Q{qid}").write_text(text)
    if message is not None:
        (spool / f"M{qid}").write_bytes(message)
    if mtime is not None:
        os.utime(spool / f"Q{qid}", (mtime, mtime))


def documented_keys() -> list[str]:
    text = DOCS.read_text()
    section = text.split("## `Q` file", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split(":", 1)[0] for line in block.strip().splitlines() if ":" in line]


def test_mailq_lists_c_dma_entries(dma_env: DmaEnv) -> None:
    write_c_entry(
        dma_env.spool,
        "20c096.5622a4e04090",
        "ID: 20c096.5622a4e04090\nSender: alice@x\nRecipient: root\n",
        mtime=1000,
    )
    write_c_entry(
        dma_env.spool,
        "20c097.5622a4e040c0",
        "ID: 20c097.5622a4e040c0\nSender: \nRecipient: bob@y.example\n",
        mtime=2000,
    )
    r = dma_env.run([], prog="mailq")
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout == (
        b"ID\t: 20c096.5622a4e04090\nFrom\t: alice@x\nTo\t: root\n"
        b"--\n"
        b"ID\t: 20c097.5622a4e040c0\nFrom\t: \nTo\t: bob@y.example\n"
    )


def test_q_run_delivers_a_c_dma_entry_and_removes_it(dma_env: DmaEnv) -> None:
    write_c_entry(
        dma_env.spool, "20c096.5622a4e04090", "ID: 20c096.5622a4e04090\nSender: alice@x\nRecipient: root\n"
    )
    r = dma_env.run(["-q", "-D"])
    assert r.returncode == 0, r.stderr
    mbox = dma_env.mbox()
    assert mbox.startswith(b"From alice@x ")
    assert C_MESSAGE in mbox
    assert not [n for n in dma_env.files() if n.startswith(("Q", "M"))], dma_env.files()


def test_q_run_c_dma_bounce_and_unknown_keys(dma_env: DmaEnv) -> None:
    # A C dma bounce (empty Sender), and a Q file with a key we do not know: both delivered.
    write_c_entry(dma_env.spool, "30a1.7f00", "ID: 30a1.7f00\nSender: \nRecipient: root\n")
    write_c_entry(
        dma_env.spool, "30a2.7f01", "ID: 30a2.7f01\nX-Future: something\nSender: carol@z\nRecipient: nobody\n"
    )
    r = dma_env.run(["-q", "-D"])
    assert r.returncode == 0, r.stderr
    assert dma_env.mbox().startswith(b"From MAILER-DAEMON ")
    assert dma_env.mbox("nobody").startswith(b"From carol@z ")
    assert not [n for n in dma_env.files() if n.startswith(("Q", "M"))]


def test_q_run_leaves_a_c_dma_remote_entry_queued(dma_env: DmaEnv) -> None:
    write_c_entry(dma_env.spool, "40b1.1", "ID: 40b1.1\nSender: alice@x\nRecipient: bob@y.example\n")
    r = dma_env.run(["-q", "-D"])
    assert r.returncode == 0, r.stderr
    (entry,) = dma_env.entries()
    assert (entry.id, entry.sender, entry.recipient) == ("40b1.1", "alice@x", "bob@y.example")
    assert entry.attempts == 1 and entry.last_error
    assert (dma_env.spool / "M40b1.1").read_bytes() == C_MESSAGE
    # Still a file C dma reads: `Key: value` lines, its three keys first.
    lines = (dma_env.spool / "Q40b1.1").read_text().splitlines()
    assert lines[:3] == ["ID: 40b1.1", "Sender: alice@x", "Recipient: bob@y.example"]
    assert all(re.fullmatch(r"[A-Za-z-]+: .*", line) for line in lines), lines


def test_bad_entries_skipped_without_error(dma_env: DmaEnv) -> None:
    spool = dma_env.spool
    write_c_entry(spool, "50c1.1", "ID: 50c1.1\nSender: alice@x\nRecipient: root\n", mtime=1000)
    write_c_entry(spool, "50c2.1", "ID: 50c2.1\nSender: alice@x\nRecipient: root\n", message=None)  # no M
    write_c_entry(spool, "50c3.1", "ID: 50c3.1\nthis line has no colon\nRecipient: root\n")  # malformed
    write_c_entry(spool, "50c4.1", "ID: 50c4.1\nSender: alice@x\n")  # no recipient
    write_c_entry(spool, "50c5.1", "")  # empty
    (spool / "Q50c6.1").mkdir()  # not a regular file
    (spool / "M50c6.1").write_bytes(C_MESSAGE)
    (spool / "tmp_stale").write_bytes(b"half a message")
    for args, prog in (([], "mailq"), (["-bp"], "sendmail")):
        r = dma_env.run(args, prog=prog)
        assert r.returncode == 0 and r.stderr == b"", (prog, r.stderr)
        assert r.stdout == b"ID\t: 50c1.1\nFrom\t: alice@x\nTo\t: root\n", prog
    r = dma_env.run(["-q", "-D"])
    assert r.returncode == 0, r.stderr
    assert b"left by C dma" in dma_env.mbox()
    left = set(dma_env.files())
    assert "Q50c1.1" not in left and "M50c1.1" not in left
    # What cannot be read is not ours to delete.
    assert {"Q50c2.1", "Q50c3.1", "M50c3.1", "Q50c4.1", "Q50c5.1", "Q50c6.1"} <= left


def test_only_bad_entries_is_an_empty_queue(dma_env: DmaEnv) -> None:
    write_c_entry(dma_env.spool, "60d1.1", "garbage\n")
    write_c_entry(dma_env.spool, "60d2.1", "ID: 60d2.1\nRecipient: root\n", message=None)
    r = dma_env.run([], prog="mailq")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"Mail queue is empty\n", b"")


def test_our_q_files_hold_the_documented_keys(dma_env: DmaEnv) -> None:
    keys = documented_keys()
    assert keys[:3] == ["ID", "Sender", "Recipient"], keys
    r = dma_env.run(["-bq", "-f", "alice@src.example", "root", "b@y.example"], b"Subject: s\n\nplain ascii\n")
    assert r.returncode == 0, r.stderr
    r = dma_env.run(["-bq", "root"], "Subject: s\n\n8-bit: Grüße\n".encode())
    assert r.returncode == 0, r.stderr
    qs = dma_env.q_files()
    assert len(qs) == 3
    for name, fields in qs.items():
        text = (dma_env.spool / name).read_text()
        lines = text.splitlines()
        # Every line is `Key: value` (C dma splits at the first `:` and needs ID and Recipient).
        assert all(re.fullmatch(r"[A-Za-z-]+: ?.*", line) for line in lines), lines
        assert all(len(line) < 999 for line in lines)
        assert [line.split(":")[0] for line in lines[:3]] == ["ID", "Sender", "Recipient"]
        assert set(fields) <= set(keys), set(fields) - set(keys)
        assert fields["ID"] == name[1:]
        m = dma_env.spool / f"M{name[1:]}"
        assert int(fields["Size"]) == m.stat().st_size
        assert abs(int(fields["Created"]) - int(m.stat().st_mtime)) <= 5
        # docs/spool.md: written at submission: ID, Sender, Recipient, Created, Size.
        assert {"ID", "Sender", "Recipient", "Created", "Size"} <= set(fields), fields
        # Not yet attempted: no state keys.
        assert not {"Attempts", "Next-Attempt", "Last-Error", "State"} & set(fields)


def test_our_q_files_after_a_deferral(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-D", "b@y.example"], b"Subject: s\n\nx\n")
    assert r.returncode == 75, r.stderr
    ((name, fields),) = dma_env.q_files().items()
    assert set(fields) <= set(documented_keys())
    assert fields["Attempts"] == "1"
    assert int(fields["Next-Attempt"]) > int(fields["Created"])
    assert fields["Last-Error"]
    lines = (dma_env.spool / name).read_text().splitlines()
    assert lines[:3] == [f"ID: {name[1:]}", f"Sender: root@{MAILNAME}", "Recipient: b@y.example"]
    # mailq still shows it (C dma format).
    out = dma_env.run([], prog="mailq").stdout
    assert out == f"ID\t: {name[1:]}\nFrom\t: root@{MAILNAME}\nTo\t: b@y.example\n".encode()


def test_no_leftovers_in_the_spool_after_submission(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "root", "a@x.example"], b"Subject: s\n\nx\n")
    assert r.returncode == 0, r.stderr
    names = dma_env.files()
    assert all(re.fullmatch(r"[QM][0-9a-f]+\.[0-9a-f]+", n) for n in names), names

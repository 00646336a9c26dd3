"""The command line of the real installed programs.

C dma's options (`:A:b:B:C:d:Df:F:h:iL:N:no:O:q:r:R:tUV:vX:`), the modes chosen by program name,
exit codes and messages (dma-behaviour.md section 1), plus our deliberate fixes (-F used, -oi
working).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from dma_fixtures import MAILNAME, DmaEnv, one_line_error, program

MSG = b"Subject: test\n\nhello\n"


def queue(env: DmaEnv, *rcpts: str, msg: bytes = MSG) -> None:
    r = env.run(["-bq", *rcpts], msg)
    assert r.returncode == 0, r.stderr


def expected_listing(env: DmaEnv) -> bytes:
    blocks = [f"ID\t: {e.id}\nFrom\t: {e.sender}\nTo\t: {e.recipient}\n" for e in env.entries()]
    return "--\n".join(blocks).encode() if blocks else b"Mail queue is empty\n"


# ---- -b and -A --------------------------------------------------------------------------------


def test_bp_lists_the_queue(dma_env: DmaEnv) -> None:
    queue(dma_env, "root", "a@x.example")
    queue(dma_env, "b@y.example")
    r = dma_env.run(["-bp"])
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout == expected_listing(dma_env)
    assert r.stdout.count(b"ID\t: ") == 3 and r.stdout.count(b"--\n") == 2
    assert not r.stdout.endswith(b"--\n")
    assert b"To\t: a@x.example\n" in r.stdout and b"To\t: root\n" in r.stdout
    assert f"From\t: root@{MAILNAME}\n".encode() in r.stdout


def test_bp_and_mailq_on_an_empty_queue(dma_env: DmaEnv) -> None:
    for args, prog in ((["-bp"], "sendmail"), ([], "mailq"), (["-bp", "-bp"], "sendmail")):
        r = dma_env.run(args, prog=prog)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"Mail queue is empty\n", b""), args


def test_bq_spools_without_delivering(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "root"], MSG)
    assert r.returncode == 0 and r.stderr == b""
    time.sleep(0.3)
    assert dma_env.recipients() == ["root"]
    assert not (dma_env.mboxdir / "root").exists()


@pytest.mark.parametrize("b", ["-bm", "-bi", "-bd", "-bv", "-Ax"])
def test_other_b_values_are_a_foreground_submission(dma_env: DmaEnv, b: str) -> None:
    # -bi does not rebuild aliases: stdin is the message, delivered in the foreground (-D), so the
    # mbox is written before the program exits. (-bs speaks SMTP: test_bs.py.)
    r = dma_env.run([b, "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert b"\n\nhello\n" in dma_env.mbox()
    assert not [n for n in dma_env.files() if n[0] in "QM"]


def test_bi_without_recipients(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bi"], MSG)
    assert r.returncode == 66
    assert one_line_error(r) == "no recipients from command line"


@pytest.mark.parametrize("a", ["-Ac", "-Am"])
def test_Ac_Am_are_ignored(dma_env: DmaEnv, a: str) -> None:
    r = dma_env.run([a, "-bq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert dma_env.recipients() == ["root"]
    # Alone they change nothing either: with DEFER the message is only queued (no -D from -A).
    dma_env.write_conf("DEFER")
    r = dma_env.run([a, "b@y.example"], MSG)
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == ["b@y.example", "root"]


def test_Ap_lists_and_Aq_spools(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-Aq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    assert not (dma_env.mboxdir / "root").exists()
    r = dma_env.run(["-Ap"])
    assert r.returncode == 0 and r.stdout == expected_listing(dma_env)
    assert b"To\t: root\n" in r.stdout


# ---- -D ---------------------------------------------------------------------------------------


def test_D_local_success_exits_0_after_delivery(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-D", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert dma_env.mbox().startswith(f"From root@{MAILNAME} ".encode())
    assert not [n for n in dma_env.files() if n[0] in "QM" or n.startswith("tmp_")]


def test_D_remote_is_deferred_75_and_stays_queued(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-D", "a@x.example"], MSG)
    assert r.returncode == 75, r.stderr
    (q,) = dma_env.q_files().values()
    assert q["Recipient"] == "a@x.example"
    assert q["Attempts"] == "1"


def test_D_mixed_local_and_remote(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-D", "root", "a@x.example"], MSG)
    assert r.returncode == 75, r.stderr
    assert b"hello" in dma_env.mbox()
    assert dma_env.recipients() == ["a@x.example"]


def test_D_permanent_failure_exits_69(dma_env: DmaEnv) -> None:
    """A local user that disappears between submission and delivery: a permanent failure.

    The user is made with useradd and deleted while sendmail waits for its message on stdin
    (command-line recipients are checked before the message is read).
    """
    if not (Path("/usr/sbin/useradd").exists() and Path("/usr/sbin/userdel").exists()):
        pytest.skip("needs useradd/userdel")
    user = f"dmat{os.getpid() % 100000}"
    made = subprocess.run(["useradd", "-M", "-N", "-r", "-s", "/usr/sbin/nologin", user], capture_output=True)
    assert made.returncode == 0, made.stderr
    try:
        proc = subprocess.Popen(
            [program("sendmail"), "-D", user],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dma_env.env,
        )
        assert proc.stdin is not None
        proc.stdin.write(b"Subject: gone\n\n")
        proc.stdin.flush()
        deadline = time.time() + 10
        while not any(n.startswith("tmp_") for n in dma_env.files()):
            assert time.time() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.01)
    finally:
        subprocess.run(["userdel", user], capture_output=True)
    _, err = proc.communicate(b"body\n", timeout=30)
    assert proc.returncode == 69, err
    assert user in err.decode()
    # Not dropped silently: the entry stays marked failed, or a bounce to the sender (root, local)
    # is queued or delivered.
    entries = dma_env.entries()
    kept = [e for e in entries if e.recipient == user]
    bounces = [e for e in entries if e.sender == "" and e.recipient == "root"]
    mbox = dma_env.mboxdir / "root"
    delivered = mbox.exists() and user.encode() in mbox.read_bytes()
    assert (kept and kept[0].state == "failed") or bounces or delivered, (entries, err)


# ---- sender, name, dots, ignored options --------------------------------------------------------


@pytest.mark.parametrize("opt", ["-f", "-r"])
def test_f_and_r_set_the_sender(dma_env: DmaEnv, opt: str) -> None:
    r = dma_env.run([opt, "alice@src.example", "-bq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert [e.sender for e in dma_env.entries()] == ["alice@src.example"]
    assert b"From: <alice@src.example>\n" in dma_env.message()
    # The joined form works too (getopt).
    r = dma_env.run([opt + "bob@src.example", "-bq", "a@x.example"], MSG)
    assert r.returncode == 0, r.stderr
    assert sorted(e.sender for e in dma_env.entries()) == ["alice@src.example", "bob@src.example"]


@pytest.mark.parametrize(
    ("args", "recipients"),
    [
        (["b@example.test", "-f", "a@example.test", "-bq"], ["b@example.test"]),
        (
            ["b@example.test", "-bq", "c@example.test", "-fa@example.test"],
            ["b@example.test", "c@example.test"],
        ),
        (["-f", "a@example.test", "-bq", "--", "b@example.test"], ["b@example.test"]),
    ],
)
def test_options_after_recipients_as_glibc_getopt(
    dma_env: DmaEnv, args: list[str], recipients: list[str]
) -> None:
    """dma-behaviour.md 1.2: getopt permutes argv, so options may follow the recipients."""
    r = dma_env.run(args, MSG)
    assert r.returncode == 0, r.stderr
    assert sorted((e.sender, e.recipient) for e in dma_env.entries()) == [
        ("a@example.test", x) for x in recipients
    ]


def test_double_dash_ends_options_after_recipients_too(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "--", "root", "-f"], MSG)
    assert r.returncode == 65 and b"`-f'" in r.stderr, r.stderr
    assert dma_env.entries() == []


def test_F_is_the_display_name_of_an_added_from(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-F", "Cron Daemon", "-f", "cron@h.example", "-bq", "root"], b"Subject: s\n\nb\n")
    assert r.returncode == 0, r.stderr
    assert b'\nFrom: "Cron Daemon" <cron@h.example>\n' in dma_env.message()


def test_F_does_not_touch_an_existing_from(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-F", "Other", "-bq", "root"], b"from: me <me@h.example>\n\nb\n")
    assert r.returncode == 0, r.stderr
    m = dma_env.message()
    assert b"from: me <me@h.example>\n" in m
    assert b"Other" not in m and b"\nFrom:" not in m


DOTTED = b"Subject: dots\n\nbefore\n.\nafter\n"


@pytest.mark.parametrize("args", [["-i"], ["-oi"], ["-o", "i"], ["-Uib", "q"]])
def test_i_and_oi_keep_a_lone_dot(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run([*args, "-bq", "root"], DOTTED)
    assert r.returncode == 0, r.stderr
    assert dma_env.message().endswith(b"\n\nbefore\n.\nafter\n")


@pytest.mark.parametrize("args", [[], ["-odb"], ["-oem"], ["-oQ/x"], ["-o", "em"]])
def test_without_i_a_lone_dot_ends_input_and_other_o_is_ignored(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run([*args, "-bq", "root"], DOTTED)
    assert r.returncode == 0, r.stderr
    assert dma_env.message().endswith(b"\n\nbefore\n")
    assert dma_env.recipients() == ["root"]


def test_O_takes_an_argument_and_ignores_it(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-O", "root", "-bq", "a@x.example"], MSG)
    assert r.returncode == 0, r.stderr
    assert dma_env.recipients() == ["a@x.example"]
    r = dma_env.run(["-ODeliveryMode=b", "-bq", "b@y.example"], MSG)
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == ["a@x.example", "b@y.example"]


def test_L_tag_is_accepted(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-L", "mytag", "-bq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert dma_env.recipients() == ["root"]


@pytest.mark.parametrize(
    "args",
    [
        ["-B", "8BITMIME"],
        ["-d", "0.1"],
        ["-h", "17"],
        ["-N", "never"],
        ["-R", "hdrs"],
        ["-V", "envid"],
        ["-X", "traffic.log"],
        ["-B8BITMIME"],
        ["-n"],
        ["-U"],
        ["-v"],
        ["-nUv"],
    ],
)
def test_accepted_and_ignored_options(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run([*args, "-bq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert dma_env.recipients() == ["root"]


# ---- -q ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [["-q", "-D"], ["-q30m", "-D"], ["-qf", "-D"], ["-D", "-qI"], ["-q", "foo", "-D"]]
)
def test_q_runs_the_queue(dma_env: DmaEnv, args: list[str]) -> None:
    queue(dma_env, "root")
    r = dma_env.run(args)
    assert r.returncode == 0, r.stderr
    assert b"\n\nhello\n" in dma_env.mbox()
    assert not [n for n in dma_env.files() if n[0] in "QM"]


def test_q_swallows_a_non_dash_word(dma_env: DmaEnv) -> None:
    # `-q root`: root is -q's argument, not a recipient, so this is a queue run, not an error.
    r = dma_env.run(["-q", "root", "-D"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    assert not [n for n in dma_env.files() if n[0] in "QM"]


def test_q_does_not_swallow_a_dash_word(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-q", "-Z"])
    assert r.returncode == 64
    assert "invalid argument" in one_line_error(r) and "-Z" in r.stderr.decode()
    r = dma_env.run(["-q", "-X"])  # -X needs an argument: -q did not take it
    assert r.returncode == 64
    one_line_error(r)
    # -v after -q is the verbose flag, and the run still happens.
    queue(dma_env, "root")
    r = dma_env.run(["-q", "-v", "-D"])
    assert r.returncode == 0, r.stderr
    assert b"hello" in dma_env.mbox()


# ---- -t ---------------------------------------------------------------------------------------


def test_t_reads_to_cc_bcc_with_folding_and_adds_command_line(dma_env: DmaEnv) -> None:
    msg = (
        b"To: a@x.example,\n"
        b"\tb@x.example\n"
        b"Subject: t\n"
        b"cc: c@x.example\n"
        b"BCC: d@x.example,\n"
        b"  e@x.example\n"
        b"X-To: not@x.example\n"
        b"\n"
        b"To: body@x.example\n"
    )
    r = dma_env.run(["-t", "-bq", "cmd@x.example"], msg)
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == sorted(
        ["cmd@x.example", "a@x.example", "b@x.example", "c@x.example", "d@x.example", "e@x.example"]
    )
    m = dma_env.message()
    assert b"BCC" not in m and b"d@x.example" not in m and b"e@x.example" not in m
    assert b"To: a@x.example,\n\tb@x.example\n" in m and b"cc: c@x.example\n" in m


def test_t_address_list_syntax(dma_env: DmaEnv) -> None:
    msg = b'To: "Doe, John" <jd@a>, x@b (c), Group: g1@c, g2@c;\n\nbody\n'
    r = dma_env.run(["-t", "-bq"], msg)
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == ["g1@c", "g2@c", "jd@a", "x@b"]


def test_t_duplicates_with_command_line_are_dropped(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-t", "-bq", "a@x.example"], b"To: a@x.example, root@localhost\nCc: root\n\nb\n")
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == ["a@x.example", "root"]


# ---- -C and DMA_CONF ----------------------------------------------------------------------------


def test_C_selects_the_config_and_wins_over_DMA_CONF(dma_env: DmaEnv, tmp_path: Path) -> None:
    other_spool = tmp_path / "other-spool"
    other_spool.mkdir()
    other = dma_env.write_conf(path=tmp_path / "other.conf", spool=other_spool)
    r = dma_env.run(["-C", str(other), "-bq", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert [e.recipient for e in dma_env.entries(other_spool)] == ["root"]
    assert dma_env.entries() == []
    # DMA_CONF alone selects the file too.
    r = dma_env.run(["-bq", "root"], MSG, env={"DMA_CONF": str(other)})
    assert r.returncode == 0, r.stderr
    assert len(dma_env.entries(other_spool)) == 2 and dma_env.entries() == []
    # A config error in the -C file shows that -C is read even with a good DMA_CONF.
    bad = tmp_path / "bad.conf"
    bad.write_text("NOSUCHKEY 1\n")
    r = dma_env.run([f"-C{bad}", "-bq", "root"], MSG)
    assert r.returncode == 78
    assert str(bad) in one_line_error(r)


# ---- the end of the options ---------------------------------------------------------------------


def test_double_dash_ends_options(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "--", "-user@x.example", "root"], MSG)
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == ["-user@x.example", "root"]


def test_unknown_option(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-Z", "root"], MSG)
    assert r.returncode == 64
    assert one_line_error(r) == "invalid argument: `-Z'"
    r = dma_env.run(["-bq", "-iZ", "root"], MSG)
    assert r.returncode == 64
    assert "`-Z'" in one_line_error(r)
    assert dma_env.files() == []


@pytest.mark.parametrize("opt", ["-f", "-r", "-F", "-C", "-b", "-o", "-O", "-L", "-B", "-X"])
def test_missing_option_argument(dma_env: DmaEnv, opt: str) -> None:
    r = dma_env.run([opt], MSG)
    assert r.returncode == 64
    assert opt in one_line_error(r)
    assert dma_env.files() == []


@pytest.mark.parametrize("args", [["-bp", "root"], ["-q", "-D", "root"], ["-qf", "root"], ["-Ap", "root"]])
def test_recipients_with_queue_operations(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run(args, MSG)
    assert r.returncode == 64
    assert one_line_error(r) == "sending mail and queue operations are mutually exclusive"
    assert dma_env.files() == []


@pytest.mark.parametrize("args", [["-bp", "-q"], ["-q", "-bp"], ["-qf", "-Ap"]])
def test_bp_with_q_conflicts(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run(args)
    assert r.returncode == 64
    assert one_line_error(r) == "conflicting queue operations"


# ---- mailq and newaliases -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["-v"], ["root"], ["-bp"]])
def test_mailq_with_arguments(dma_env: DmaEnv, args: list[str]) -> None:
    r = dma_env.run(args, prog="mailq")
    assert r.returncode == 64
    assert one_line_error(r, "mailq") == "invalid arguments"
    assert r.stdout == b""


def test_mailq_format_byte_for_byte(dma_env: DmaEnv) -> None:
    spool = dma_env.spool
    rows = [
        ("20c096.5622a4e04090", "alice@src.example", "bob@dst.example", 1000),
        ("20c097.1", "", "root", 2000),
        ("6925a1b020c098.2", "carol@src.example", "dave@dst.example", 3000),
    ]
    for qid, sender, rcpt, mtime in rows:
        (spool / f"Q{qid}").write_text(f"ID: {qid}\nSender: {sender}\nRecipient: {rcpt}\n")
        (spool / f"M{qid}").write_text("Subject: x\n\nbody\n")
        os.utime(spool / f"Q{qid}", (mtime, mtime))
    r = dma_env.run([], prog="mailq")
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout == (
        b"ID\t: 20c096.5622a4e04090\nFrom\t: alice@src.example\nTo\t: bob@dst.example\n"
        b"--\n"
        b"ID\t: 20c097.1\nFrom\t: \nTo\t: root\n"
        b"--\n"
        b"ID\t: 6925a1b020c098.2\nFrom\t: carol@src.example\nTo\t: dave@dst.example\n"
    )
    assert dma_env.run(["-bp"]).stdout == r.stdout


def test_newaliases_good_file(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("# comment\npostmaster: root\nteam: a@x.example,\n  root\n*: root\n")
    r = dma_env.run([], prog="newaliases")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    # Arguments are ignored (no options are parsed).
    r = dma_env.run(["-v", "whatever"], prog="newaliases")
    assert r.returncode == 0, r.stderr


def test_newaliases_syntax_error(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("ok: root\n\nbroken root\n")
    r = dma_env.run([], prog="newaliases")
    assert r.returncode == 78
    msg = one_line_error(r, "newaliases")
    assert msg.startswith(f"{dma_env.aliases}:3: broken:"), msg
    assert "syntax error" in msg


def test_newaliases_refuses_a_command_destination(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("ok: root\npipe: root, |/usr/bin/procmail\n")
    r = dma_env.run([], prog="newaliases")
    assert r.returncode == 78
    msg = one_line_error(r, "newaliases")
    assert msg.startswith(f"{dma_env.aliases}:2: pipe:"), msg
    assert "|/usr/bin/procmail" in msg


def test_newaliases_uses_the_configured_aliases(dma_env: DmaEnv) -> None:
    other = dma_env.root / "other-aliases"
    other.write_text("x y z\n")
    dma_env.write_conf()  # ALIASES = the good (empty) file
    assert dma_env.run([], prog="newaliases").returncode == 0
    dma_env.conf.write_text(dma_env.conf_text().replace(str(dma_env.aliases), str(other)))
    r = dma_env.run([], prog="newaliases")
    assert r.returncode == 78 and str(other) in one_line_error(r, "newaliases")


# ---- modes by program name ------------------------------------------------------------------------


def link(env: DmaEnv, name: str) -> str:
    path = env.root / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.symlink_to(program("dma"))
    return str(path)


def test_mode_by_name_mailq_symlink(dma_env: DmaEnv) -> None:
    mailq = link(dma_env, "mailq")
    assert dma_env.run([], prog=mailq).stdout == b"Mail queue is empty\n"
    queue(dma_env, "root")
    r = dma_env.run([], prog=mailq)
    assert r.returncode == 0 and r.stdout == expected_listing(dma_env)
    r = dma_env.run(["-bq"], prog=mailq)
    assert r.returncode == 64 and one_line_error(r, "mailq") == "invalid arguments"


def test_mode_by_name_newaliases_symlink(dma_env: DmaEnv) -> None:
    newaliases = link(dma_env, "newaliases")
    dma_env.aliases.write_text("a: root\n")
    assert dma_env.run([], prog=newaliases).returncode == 0
    dma_env.aliases.write_text("a root\n")
    r = dma_env.run([], prog=newaliases)
    assert r.returncode == 78
    one_line_error(r, "newaliases")


@pytest.mark.parametrize("name", ["send-mail", "sendmail", "dma"])
def test_mode_by_name_sendmail(dma_env: DmaEnv, name: str) -> None:
    prog = link(dma_env, name)
    r = dma_env.run(["-bq", "root"], MSG, prog=prog)
    assert r.returncode == 0, r.stderr
    assert dma_env.recipients() == ["root"]
    r = dma_env.run(["-Z"], prog=prog)
    assert r.returncode == 64 and one_line_error(r, name) == "invalid argument: `-Z'"
    r = dma_env.run(["-bp"], prog=prog)
    assert r.returncode == 0 and r.stdout == expected_listing(dma_env)


def test_installed_dma_script_is_sendmail_mode(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-bq", "root"], MSG, prog="dma")
    assert r.returncode == 0, r.stderr
    assert dma_env.recipients() == ["root"]


def test_t_long_header_lines(dma_env: DmaEnv) -> None:
    # Header lines longer than the intake's look-ahead (1 KiB) are collected and dropped whole.
    to = [f"u{i}@x{i}.example" for i in range(150)]
    bcc = [f"h{i}@z.example" for i in range(100)]
    msg = f"To: {', '.join(to)}\nBcc: {', '.join(bcc)}\nSubject: s\n\nbody\n".encode()
    assert len(msg) > 4000
    r = dma_env.run(["-t", "-bq"], msg)
    assert r.returncode == 0, r.stderr
    assert sorted(dma_env.recipients()) == sorted(to + bcc)
    m = dma_env.message()
    assert b"h99@z.example" not in m and b"z.example" not in m
    assert f"To: {', '.join(to)}\n".encode() in m

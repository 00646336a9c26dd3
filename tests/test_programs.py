"""Real programs that mail through `/usr/sbin/sendmail`, delivered by dma to a real SMTP server.

Each test runs the program, as installed from Debian, in a private mount namespace where an overlay
puts dma's launcher at /usr/sbin/sendmail and a tmpfs holds /etc/dma/dma.conf (cron and sudo give
their mailer no environment of ours). No MTA is installed: bsd-mailx, which hard-depends on one, is
unpacked into /opt/bsd-mailx-root by `./dev test`. Each test checks the envelope, every header but
Date, Message-Id, Received and User-Agent byte for byte, the body byte for byte, and one copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import in_private_namespace
from smtp_servers import Received, Smtpd

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root")

INNER = r"""
import json, os, subprocess, sys
from dma.admin.install import script, write_atomically

spec = json.loads(sys.argv[1])
tmp = spec["tmp"]
def mount(*args):
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode:
        print(json.dumps({"skip": f"mount {args}: {r.stderr.strip()}"})); sys.exit(0)
for n, d in enumerate(["/usr/sbin", *spec.get("overlays", [])]):
    os.makedirs(f"{tmp}/up{n}"); os.makedirs(f"{tmp}/work{n}")
    mount("-t", "overlay", "overlay", "-o", f"lowerdir={d},upperdir={tmp}/up{n},workdir={tmp}/work{n}", d)
for d in ["/etc/dma", "/run", *spec.get("tmpfs", [])]:
    os.makedirs(d, exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", d)
write_atomically("/usr/sbin/sendmail", script("sendmail"), 0o755)
for path, text in spec["files"].items():
    with open(path, "w") as f:
        f.write(text)
env = {"PATH": spec["path"], "LANG": "C.UTF-8", "HOME": tmp, **spec.get("env", {})}
r = subprocess.run(["sh", "-ec", spec["script"]], input=spec.get("input", "").encode(), capture_output=True,
                   env=env, cwd=tmp, timeout=90)
print(json.dumps({"rc": r.returncode, "out": r.stdout.decode(errors="replace"),
                  "err": r.stderr.decode(errors="replace")}))
"""

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the programs' PATH (never a venv's or /usr/local's)
# What every body carries: a lone dot, a leading dot, a `From ` line and UTF-8.
BOB = "bob@example.test"
BODY = "first line\n.\n.leading dot\nFrom the start of a line\nüñïçødé\nlast line\n"


def drive(
    tmp_path: Path, script: str, *, files: dict[str, str] | None = None, count: int = 1, **spec: Any
) -> list[Received]:
    """Run `script` (sh) in the namespace with dma as /usr/sbin/sendmail; return the `count` messages
    that arrived (in order), checking that no more came and that nothing is left in the queue."""
    tmp_path.chmod(0o755)
    with Smtpd() as server:
        conf = (
            f"SPOOLDIR {tmp_path}/spool\nSMARTHOST 127.0.0.1\nPORT {server.port}\nMAILNAME mail.example\n"
            f"ALIASES {tmp_path}/aliases\nMBOXDIR {tmp_path}\n"
        )
        (tmp_path / "spool").mkdir()
        (tmp_path / "aliases").write_text("")
        full = {
            "tmp": str(tmp_path),
            "path": PATH,
            "script": script,
            "files": {"/etc/dma/dma.conf": conf, **(files or {})},
        }
        report = in_private_namespace(INNER, json.dumps({**full, **spec}))
        deadline = time.monotonic() + 30
        while len(server.handler.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second copy would come now
    assert report["rc"] == 0, report
    assert len(server.handler.messages) == count, (report, server.handler.messages)
    assert [n for n in os.listdir(tmp_path / "spool") if n[0] in "QM"] == [], "left in the queue"
    return server.handler.messages


def split(content: bytes) -> tuple[list[bytes], bytes]:
    """The header lines (folded lines kept whole, CRLF) other than the variable ones, and the body."""
    head, _, body = content.partition(b"\r\n\r\n")
    headers: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            headers[-1] += b"\r\n" + line
        else:
            headers.append(line)
    skip = (b"date:", b"message-id:", b"received:", b"user-agent:")
    return [h for h in headers if not h.lower().startswith(skip)], body


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def check(got: Received, sender: str, rcpts: list[str], headers: list[str], body: bytes | str) -> None:
    assert (got.mail_from, got.rcpt_tos) == (sender, rcpts)
    assert split(got.content) == (
        [h.encode() for h in headers],
        crlf(body) if isinstance(body, str) else body,
    )


def test_php_mail(tmp_path: Path) -> None:
    text = json.dumps(BODY, ensure_ascii=False)
    php = f"mail('bob@example.test', 'Grüße', {text}, ['From' => 'Web <web@example.test>']);"
    [got] = drive(tmp_path, 'php -r "$PHP"', env={"PHP": php})
    headers = ["To: bob@example.test", "Subject: Grüße", "From: Web <web@example.test>"]
    check(got, "root@mail.example", [BOB], headers, BODY + "\n")  # PHP ends with a newline of its own


def test_mutt_with_dash_oi_and_an_attachment(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("attached\n")
    (tmp_path / "body").write_text(BODY)
    script = (
        "mutt -n -F /dev/null -e 'set from=alice@example.test realname=Alice use_domain=no' "
        "-e 'set sendmail=\"/usr/sbin/sendmail -oi\" send_charset=utf-8' "
        "-s 'Grüße' -a note.txt -- bob@example.test < body"
    )
    [got] = drive(tmp_path, script)
    boundary = got.content.split(b'boundary="', 1)[1][:16].decode()
    headers = [
        "From: Alice <alice@example.test>",
        "To: bob@example.test",
        "Subject: =?utf-8?B?R3LDvMOfZQ==?=",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "Content-Disposition: inline",
        "Content-Transfer-Encoding: 8bit",
    ]
    part = "Content-Type: text/plain; charset=utf-8\nContent-Disposition:"
    body = (
        f"\n--{boundary}\n{part} inline\nContent-Transfer-Encoding: 8bit\n\n{BODY}\n"
        f'--{boundary}\n{part} attachment; filename="note.txt"\n\nattached\n\n--{boundary}--\n'
    )
    check(got, "root@mail.example", [BOB], headers, body)


def test_s_nail(tmp_path: Path) -> None:
    script = "s-nail -:/ -Sttycharset=utf-8 -Sfrom=alice@example.test -s 'Grüße' bob@example.test"
    [got] = drive(tmp_path, script, input=BODY)
    headers = [
        "From: alice@example.test",
        "To: bob@example.test",
        "Subject: =?utf-8?B?R3LDvMOfZQ==?=",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
    ]
    body = "first line\n=2E\n.leading dot\n=46rom the start of a line\n"
    body += "=C3=BC=C3=B1=C3=AF=C3=A7=C3=B8d=C3=A9\nlast line\n"
    check(got, "root@mail.example", [BOB], headers, body)


def test_gnu_mailutils_mail_with_only_stdin_open(tmp_path: Path) -> None:
    # mailutils runs sendmail with descriptors 1 and 2 closed: the exit status must still be 0.
    script = "mail.mailutils -n -s 'Grüße' -a From:alice@example.test bob@example.test"
    [got] = drive(tmp_path, script, input=BODY)
    headers = ["Subject: Grüße", "From: alice@example.test", "To: <bob@example.test>"]
    check(got, "alice@example.test", [BOB], headers, BODY)


def test_bsd_mailx(tmp_path: Path) -> None:
    if not os.path.exists("/opt/bsd-mailx-root/usr/bin/bsd-mailx"):
        pytest.fail("bsd-mailx is not unpacked: run ./dev test once")
    [got] = drive(
        tmp_path, "/opt/bsd-mailx-root/usr/bin/bsd-mailx -n -s 'Grüße' bob@example.test", input=BODY
    )
    headers = [
        "To: bob@example.test",
        "Subject: Grüße",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="UTF-8"',
        "Content-Transfer-Encoding: 8bit",
        "From: <root@mail.example>",
    ]
    check(got, "root@mail.example", [BOB], headers, BODY)


def test_sudo_mail_always(tmp_path: Path) -> None:
    rule = "Defaults mail_always, mailto=bob@example.test, mailerpath=/usr/sbin/sendmail\n"
    # sudo mails twice: when it runs the command and when the command exits.
    mails = drive(
        tmp_path,
        "sudo -u nobody true",
        tmpfs=["/etc/sudoers.d"],
        files={"/etc/sudoers.d/mail": rule},
        count=2,
    )
    host = os.uname().nodename
    headers = [
        "To: bob@example.test",
        "From: root",
        "Auto-Submitted: auto-generated",
        f"Subject: *** SECURITY information for {host} ***",
    ]
    mails.sort(key=lambda m: len(m.content))
    for end, got in ((" ; EXIT=0" if got is mails[1] else "", got) for got in mails):
        line = split(got.content)[1].decode().split(" : ")
        assert line[0] == host and line[2:] == [
            "root",
            f"PWD={tmp_path} ; USER=nobody ; COMMAND=/usr/bin/true{end}\r\n\r\n",
        ]
        check(got, "root@mail.example", [BOB], headers, split(got.content)[1])


def test_cron_mails_a_jobs_output(tmp_path: Path) -> None:
    # Debian's cron runs `@reboot` jobs when it starts and /run/crond.reboot is absent (a tmpfs
    # here): no waiting for the next minute.
    (tmp_path / "job").write_text(BODY)
    tab = f"MAILTO=bob@example.test\n@reboot root cat {tmp_path}/job\n"
    script = "cron -f & for i in $(seq 100); do ls spool | grep -q '^M' && break; sleep 0.1; done; kill $!"
    [got] = drive(tmp_path, script, tmpfs=["/etc/cron.d"], files={"/etc/cron.d/job": tab})
    headers = [
        "From: root (Cron Daemon)",
        "To: bob@example.test",
        f"Subject: Cron <root@{os.uname().nodename}> cat {tmp_path}/job",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "X-Cron-Env: <MAILTO=bob@example.test>",
        "X-Cron-Env: <SHELL=/bin/sh>",
        "X-Cron-Env: <HOME=/root>",
        "X-Cron-Env: <PATH=/usr/bin:/bin>",
        "X-Cron-Env: <LOGNAME=root>",
    ]
    check(got, "root@mail.example", [BOB], headers, BODY)


def test_git_send_email(tmp_path: Path) -> None:
    (tmp_path / "msg").write_text(f"Grüße\n\n{BODY}")
    script = (
        "git init -q repo && cd repo && git config user.name Alice"
        " && git config user.email alice@example.test"
        ' && printf %s "$BODY" > file && git add file && git commit -qF ../msg && git format-patch -q -1'
        " && git send-email --quiet --confirm=never --to=bob@example.test 0001-*.patch"
    )
    [got] = drive(tmp_path, script, env={"BODY": BODY})
    version = subprocess.run(
        [shutil.which("git", path=PATH) or "git", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[2]
    headers = [
        "From: Alice <alice@example.test>",
        "To: bob@example.test",
        "Cc: Alice <alice@example.test>",
        "Subject: [PATCH] =?UTF-8?q?Gr=C3=BC=C3=9Fe?=",
        f"X-Mailer: git-send-email {version}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    diff = "".join(f"+{line}\n" for line in BODY.splitlines())
    body = (
        f"{BODY}---\n file | 6 ++++++\n 1 file changed, 6 insertions(+)\n create mode 100644 file\n\n"
        "diff --git a/file b/file\nnew file mode 100644\nindex 0000000..30987c9\n--- /dev/null\n+++ b/file\n"
        f"@@ -0,0 +1,6 @@\n{diff}-- \n{version}\n\n"
    )
    check(got, "root@mail.example", [BOB, "alice@example.test"], headers, body)

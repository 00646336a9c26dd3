"""Symfony Mailer and SwiftMailer, as Debian ships them, sending through `/usr/sbin/sendmail`: a
private mount namespace puts ours there, and the runner it starts relays to an aiosmtpd server on
loopback. Their default transport speaks SMTP to `sendmail -bs`; Laravel's default command is
`sendmail -bs -i` (through Symfony Mailer); Symfony's other mode pipes the message to
`sendmail -t -i`. Each test checks the envelope, the headers and the body byte for byte
(against the library's own record of what it sent, and against literal values), and that exactly
one copy arrived.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import in_private_namespace
from dma_fixtures import DmaEnv, program
from servers import SmtpSink

LIBRARIES = {"symfony": "/usr/share/php/Symfony/Component/Mailer", "swift": "/usr/share/php/Swift"}

# Lines end in CRLF, as both libraries send them: a lone dot, a leading dot, a `From ` line, UTF-8.
# No line end after the last line: both end DATA with CRLF `.` CRLF, so a final CRLF would be an
# empty line of theirs (whatever the server).
BODY = ".\r\n.leading dot\r\nFrom the start of a line\r\nGrüße ☃\r\n..\r\nend"

SCRIPTS = {
    "symfony": r"""<?php
require 'Symfony/Component/Mailer/autoload.php';
use Symfony\Component\Mailer\Transport\SendmailTransport;
use Symfony\Component\Mime\Address;
use Symfony\Component\Mime\Header\Headers;
use Symfony\Component\Mime\Message;
use Symfony\Component\Mime\Part\TextPart;
$headers = (new Headers())
    ->addMailboxListHeader('From', [new Address('sender@src.example', 'Sänder')])
    ->addMailboxListHeader('To', ['rcpt@dst.example'])
    ->addMailboxListHeader('Cc', [new Address('cc@dst.example', 'Copy')])
    ->addMailboxListHeader('Bcc', ['hidden@dst.example'])
    ->addTextHeader('Subject', 'Grüße ☃ from PHP');
$body = new TextPart(file_get_contents($argv[2]), 'utf-8', 'plain', '8bit');
$transport = new SendmailTransport($argv[3] === '' ? null : $argv[3]);
file_put_contents($argv[1], $transport->send(new Message($headers, $body))->toString());
""",
    "swift": r"""<?php
require 'Swift/autoload.php';
$message = (new Swift_Message('Grüße ☃ from PHP'))
    ->setFrom(['sender@src.example' => 'Sänder'])
    ->setTo(['rcpt@dst.example'])
    ->setCc(['cc@dst.example' => 'Copy'])
    ->setBcc(['hidden@dst.example'])
    ->setEncoder(new Swift_Mime_ContentEncoder_PlainContentEncoder('8bit'))
    ->setBody(file_get_contents($argv[2]), 'text/plain', 'utf-8');
if ((new Swift_Mailer(new Swift_SendmailTransport()))->send($message) !== 3) {
    exit(1);
}
file_put_contents($argv[1], $message->toString());
""",
}

INNER = r"""
import json, os, subprocess, sys
root, sendmail, *command = sys.argv[1:]
os.makedirs(f"{root}/usr-sbin/up")
os.makedirs(f"{root}/usr-sbin/work")
options = f"lowerdir=/usr/sbin,upperdir={root}/usr-sbin/up,workdir={root}/usr-sbin/work"
subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, "/usr/sbin"], check=True)
if os.path.lexists("/usr/sbin/sendmail"):
    os.remove("/usr/sbin/sendmail")
os.symlink(sendmail, "/usr/sbin/sendmail")
r = subprocess.run(command, capture_output=True, text=True, timeout=60)
print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))
"""


def without(message: bytes, *names: bytes) -> bytes:
    """`message` without the header lines that start with one of `names` (none of them folded)."""
    return b"".join(line for line in message.splitlines(keepends=True) if not line.startswith(names))


def unfold_headers(message: bytes) -> dict[str, bytes]:
    head = message.split(b"\n\n", 1)[0]
    fields: dict[str, bytes] = {}
    for line in head.replace(b"\n ", b" ").split(b"\n"):
        name, _, value = line.partition(b":")
        fields[name.decode().lower()] = value.strip()
    return fields


@pytest.mark.parametrize(
    ("library", "command"),
    [
        ("symfony", ""),
        ("symfony", "/usr/sbin/sendmail -t -i"),
        ("symfony", "/usr/sbin/sendmail -bs -i"),
        ("swift", ""),
    ],
    ids=["symfony-bs", "symfony-t", "laravel-bs-i", "swiftmailer-bs"],
)
def test_php_mailer_through_usr_sbin_sendmail(
    dma_env: DmaEnv, tmp_path: Path, library: str, command: str
) -> None:
    if not shutil.which("php") or not os.path.isdir(LIBRARIES[library]):
        pytest.skip(f"php and {LIBRARIES[library]} are needed (tests/system-packages.txt)")
    sink = SmtpSink().start()
    try:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {sink.port}"
        dma_env.write_conf()
        script, body, sent = tmp_path / "send.php", tmp_path / "body.txt", tmp_path / "sent.eml"
        script.write_text(SCRIPTS[library])
        body.write_text(BODY)
        env = [f"{k}={v}" for k, v in dma_env.env.items() if k.startswith("DMA_")]
        php = ["env", *env, "php", str(script), str(sent), str(body), command]
        report = in_private_namespace(INNER, str(tmp_path), program("sendmail"), *php)
        assert (report["rc"], report["stderr"]) == (0, ""), report
        deadline = time.monotonic() + 20
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # a second copy would have arrived by now
        assert len(sink.messages) == 1
        got = sink.messages[0]
    finally:
        sink.stop()
    assert got.mail_from == "sender@src.example"
    assert sorted(got.rcpt_tos) == ["cc@dst.example", "hidden@dst.example", "rcpt@dst.example"]
    delivered = got.content.replace(b"\r\n", b"\n")
    received, _, message = delivered.partition(b"\n\t(envelope-from sender@src.example)\n")
    assert received.startswith(b"Received: from ")
    message = message.split(b"\n", 3)[3]  # the rest of our Received header: id, by, date
    # What the library says it sent arrived unchanged (its last line with the line end that SMTP,
    # or our intake, gives it), but for the Bcc header it keeps, and Date and Message-Id (Swift
    # makes a new one after sending).
    expected = sent.read_bytes().replace(b"\r\n", b"\n") + b"\n"
    assert without(message, b"Date:", b"Message-ID:") == without(expected, b"Date:", b"Message-ID:", b"Bcc:")
    assert message.split(b"\n\n", 1)[1] == BODY.replace("\r\n", "\n").encode() + b"\n"
    fields = unfold_headers(message)
    assert "bcc" not in fields
    assert fields["from"] == b"=?utf-8?Q?S=C3=A4nder?= <sender@src.example>"
    assert (fields["to"], fields["cc"]) == (b"rcpt@dst.example", b"Copy <cc@dst.example>")
    assert fields["subject"].replace(b" ", b"").lower() == b"=?utf-8?q?gr=c3=bc=c3=9fe_=e2=98=83?=fromphp"
    assert fields["content-transfer-encoding"] == b"8bit"

"""`./dev demo`: the main job on an embedded default, with real programs and a real server.

It starts an SMTP server on 127.0.0.1 that wants STARTTLS and a password (aiosmtpd, with a
certificate from a throw-away CA), writes a dma.conf for it in a throw-away state directory, then:
1. `sendmail -v -D` sends a message through it (STARTTLS, certificate verified, AUTH) and shows the
   dialogue, with the password hidden;
2. `sendmail -D` delivers a message for postmaster (an alias of you) to your local mailbox;
3. `sendmail -bq` queues one without sending, `mailq` lists it, and `dma -q -D` sends it.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import ssl
import subprocess
import sys
import tempfile

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

LOGIN, PASSWORD = "demo@example.org", "demo-password-never-shown"


class Sink:
    """Keeps what the server was given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
        return "250 2.0.0 Ok: queued"


def check_password(
    server: object, session: object, envelope: object, mechanism: str, data: object
) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login.decode() == LOGIN
        and data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    argv: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    shown = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv))
    print(f"$ {shown}" + (" < message" if stdin is not None else ""), flush=True)
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    sys.stdout.write(done.stdout.decode(errors="replace"))
    sys.stdout.write(done.stderr.decode(errors="replace"))
    print(f"  (exit status {done.returncode})\n", flush=True)
    return done


def main() -> int:
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's own deprecation chatter
    bindir = os.path.dirname(sys.executable)
    sendmail, mailq, dma = (os.path.join(bindir, name) for name in ("sendmail", "mailq", "dma"))
    user = pwd.getpwuid(os.getuid()).pw_name
    with tempfile.TemporaryDirectory(prefix="dma-demo-") as state:
        ca = trustme.CA()
        ca_file = os.path.join(state, "ca.pem")
        ca.cert_pem.write_to_path(ca_file)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", "127.0.0.1").configure_cert(tls)
        sink, port = Sink(), free_port()
        server = Controller(
            sink,
            hostname="127.0.0.1",
            port=port,
            server_hostname="localhost",
            tls_context=tls,
            require_starttls=True,
            authenticator=check_password,
            auth_require_tls=True,
        )
        server.start()
        try:
            conf = os.path.join(state, "dma.conf")
            with open(conf, "w") as f:
                f.write(
                    f"SMARTHOST 127.0.0.1\nPORT {port}\nSECURETRANSFER\nSTARTTLS\nVERIFYCERT\n"
                    f"CAFILE {ca_file}\nAUTHPATH {state}/auth.conf\n"
                    f"SPOOLDIR {state}/spool\nMBOXDIR {state}/mail\nALIASES {state}/aliases\n"
                )
            with open(os.path.join(state, "auth.conf"), "w") as f:
                f.write(f"{LOGIN}|127.0.0.1:{PASSWORD}\n")
            with open(os.path.join(state, "aliases"), "w") as f:
                f.write(f"postmaster: {user}\n")
            for sub in ("spool", "mail"):
                os.mkdir(os.path.join(state, sub), 0o700)
            env = dict(os.environ, DMA_CONF=conf, DMA_STATE_DIR=state)
            message = b"Subject: hello from dma\n\nSent by sendmail through the Rust spool and SMTP client.\n"

            print(f"# an SMTP server on 127.0.0.1:{port} (STARTTLS required, then AUTH); config {conf}\n")
            print("# 1. send a message over STARTTLS with AUTH, showing the dialogue (-v)")
            sent = run([sendmail, "-v", "-D", "-f", "demo@example.org", "friend@example.net"], env, message)
            print("# 2. deliver one to postmaster, an alias of you, into your local mailbox")
            local = run([sendmail, "-D", "postmaster"], env, message)
            print("# 3. queue one for later (-bq), list the queue, then flush it")
            queued = run([sendmail, "-bq", "-f", "demo@example.org", "later@example.net"], env, message)
            listing = run([mailq], env)
            flushed = run([dma, "-q", "-D"], env)
            empty = run([mailq], env)
        finally:
            server.stop()
        print("# what the SMTP server received")
        for sender, rcpts, _ in sink.messages:
            print(f"  from <{sender}> to {', '.join(f'<{r}>' for r in rcpts)}")
        mbox = os.path.join(state, "mail", user)
        with open(mbox) as f:
            print(f"\n# your mailbox {mbox}\n{f.read()}")
        ok = (
            all(r.returncode == 0 for r in (sent, local, queued, listing, flushed, empty))
            and PASSWORD.encode() not in sent.stderr
            and b"later@example.net" in listing.stdout
            and b"Mail queue is empty" in empty.stdout
            and [m[1] for m in sink.messages] == [["friend@example.net"], ["later@example.net"]]
        )
    print("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Real SMTP servers on loopback for the tests.

- `Smtpd`: aiosmtpd in a thread (STARTTLS, implicit TLS, AUTH PLAIN/LOGIN plus CRAM-MD5 and
  XOAUTH2 handlers, PIPELINING on request, SIZE, SMTPUTF8), recording what it received.
- `RawServer`: a plain-socket server running a Python function per connection, for exact
  byte checks and hostile behaviour (silence, endless replies, garbage, dropped links).
- `Certs`: a trustme CA with certificates for mx.test (127.0.0.1, ::1) and other.test.

Everything binds to 127.0.0.1 or ::1 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword

LOGIN = "user@example.test"
PASSWORD = "s3cret-Pa55word"
TOKEN = "ya29.token-never-logged"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---- certificates -------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: trustme.CA
    ca_file: str
    mx: trustme.LeafCert
    other: trustme.LeafCert
    client_file: str

    @classmethod
    def create(cls, directory: Path) -> Certs:
        ca = trustme.CA()
        ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        client = ca.issue_cert("client.test")
        client_file = directory / "client.pem"
        client.private_key_and_cert_chain_pem.write_to_path(str(client_file))
        return cls(
            ca=ca,
            ca_file=str(ca_file),
            mx=ca.issue_cert("mx.test", "127.0.0.1", "::1"),
            other=ca.issue_cert("other.test"),
            client_file=str(client_file),
        )

    def server_context(
        self, leaf: trustme.LeafCert | None = None, *, require_client: bool = False
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (leaf or self.mx).configure_cert(ctx)
        if require_client:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx

    @staticmethod
    def sha256(leaf: trustme.LeafCert) -> bytes:
        der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        return hashlib.sha256(der).digest()


# ---- aiosmtpd -----------------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    content: bytes
    session: Any


@dataclass
class Recorder:
    """aiosmtpd handler: records every MAIL, RCPT and message, and answers as configured."""

    pipelining: bool = False
    #: replies by address for RCPT (e.g. {"bad@x.test": "550 5.1.1 no such user"})
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    dot_reply: str | None = None
    mails: list[str] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    auth_seen: list[str] = field(default_factory=list)
    ehlo_count: int = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_count += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mails.append(address)
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.dot_reply:
            return self.dot_reply
        self.messages.append(
            Received(
                envelope.mail_from,
                list(envelope.mail_options),
                list(envelope.rcpt_tos),
                envelope.original_content,
                session,
            )
        )
        return "250 2.0.0 queued"

    def check_password(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        self.auth_seen.append(mechanism)
        ok = (
            isinstance(data, LoginPassword)
            and data.login == LOGIN.encode()
            and data.password == PASSWORD.encode()
        )
        return AuthResult(success=ok, auth_data=data)

    async def auth_CRAM__MD5(self, server: Any, args: list[str]) -> AuthResult:
        self.auth_seen.append("CRAM-MD5")
        challenge = b"<1896.697170952@mx.test>"
        response = await server.challenge_auth(challenge)
        if response is MISSING:
            return AuthResult(success=False, handled=True)
        login, _, digest = response.partition(b" ")
        expected = hmac.new(PASSWORD.encode(), challenge, hashlib.md5).hexdigest().encode()
        ok = login == LOGIN.encode() and hmac.compare_digest(digest, expected)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login, b""))

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        self.auth_seen.append("XOAUTH2")
        blob = base64.b64decode(args[1]) if len(args) == 2 else await server.challenge_auth("")
        if blob == f"user={LOGIN}\x01auth=Bearer {TOKEN}\x01\x01".encode():
            return AuthResult(success=True, auth_data=LoginPassword(LOGIN.encode(), b""))
        # Google's way: a JSON error as a challenge, then 535 after the client's empty line.
        await server.challenge_auth('{"status":"401","schemes":"bearer"}')
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Username and Password not accepted"
        )


class Smtpd:
    """aiosmtpd on a free loopback port. Use as a context manager."""

    def __init__(
        self, handler: Recorder | None = None, *, host: str = "127.0.0.1", **smtp_kwargs: Any
    ) -> None:
        self.handler = handler or Recorder()
        self.host = host
        self.port = free_port(host)
        smtp_kwargs.setdefault("authenticator", self.handler.check_password)
        smtp_kwargs.setdefault("decode_data", False)
        self.controller = Controller(
            self.handler, hostname=host, port=self.port, server_hostname="mx.test", **smtp_kwargs
        )

    def __enter__(self) -> Smtpd:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    @property
    def sessions_with_mail(self) -> int:
        """Connections that carried at least one delivered message."""
        return len({id(m.session) for m in self.handler.messages})


# ---- raw socket servers ---------------------------------------------------------------------------


class Peer:
    """One accepted connection, seen from the server side."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.buf = b""
        self.commands: list[str] = []
        self.data: list[bytes] = []
        #: every recv() result, to see how the client grouped its writes
        self.chunks: list[bytes] = []

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
            if not data.endswith(b"\n"):
                data += b"\r\n"
        self.sock.sendall(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return b""
            if not chunk:
                return b""
            self.chunks.append(chunk)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read_data(self) -> bytes:
        """The raw DATA stream up to and including the final `.` line."""
        lines = []
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            if line == b".\r\n":
                break
        raw = b"".join(lines)
        self.data.append(raw)
        return raw

    def start_tls(self, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self.buf = b""


class RawServer:
    """Runs `session(peer)` in a thread for each connection to 127.0.0.1:<port>."""

    def __init__(self, session: Callable[[Peer], None], host: str = "127.0.0.1") -> None:
        self.session = session
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.port = self.listener.getsockname()[1]
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Stop the accept loop before the descriptor is closed: a thread still blocked in (or about
        # to enter) accept() on a closed descriptor number takes connections meant for whatever
        # socket reuses that number next, such as the next test's server.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=5)
        self.listener.close()
        for peer in self.peers:
            try:
                peer.sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            peer = Peer(sock)
            self.peers.append(peer)
            threading.Thread(target=self._run, args=(peer,), daemon=True).start()

    def _run(self, peer: Peer) -> None:
        try:
            self.session(peer)
        except (OSError, ssl.SSLError):
            pass
        except BaseException as e:  # surfaced by the tests
            self.errors.append(e)
        finally:
            try:
                peer.sock.close()
            except OSError:
                pass

    @property
    def commands(self) -> list[str]:
        return [c for p in self.peers for c in p.commands]


def scripted(
    *,
    ext: tuple[str, ...] = (),
    replies: dict[str, str] | None = None,
    greeting: str = "220 raw.test ESMTP",
    tls: ssl.SSLContext | None = None,
    tls_ext: tuple[str, ...] = ("AFTER-TLS",),
    after_starttls: bytes = b"",
) -> Callable[[Peer], None]:
    """A minimal SMTP server: EHLO offers `ext` (`tls_ext` once TLS is up); `replies`
    overrides the reply to a verb ("EHLO", "MAIL", "RCPT", "DATA", "DOT", "RSET", ...), to one
    sender ("MAIL <addr>") or to one recipient ("RCPT <addr>"). With `tls`, STARTTLS is
    honoured, and `after_starttls` is sent in the same write as its 220 reply."""
    answers = {"DATA": "354 go ahead", "DOT": "250 2.0.0 queued", "QUIT": "221 bye", **(replies or {})}

    def run(peer: Peer) -> None:
        peer.send(greeting)
        offered = ext
        while line := peer.readline():
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            peer.commands.append(command)
            verb = command.split(" ", 1)[0].upper()
            if verb == "EHLO" and "EHLO" not in answers:
                peer.send("".join(f"250-{e}\r\n" for e in ("raw.test", *offered)) + "250 HELP\r\n")
            elif verb == "STARTTLS" and tls is not None and "STARTTLS" not in answers:
                peer.send(b"220 2.0.0 ready\r\n" + after_starttls)
                peer.start_tls(tls)
                offered = tls_ext
            elif verb == "MAIL" and f"MAIL {_address(command)}" in answers:
                peer.send(answers[f"MAIL {_address(command)}"])
            elif verb == "RCPT":
                peer.send(answers.get(f"RCPT {_address(command)}", answers.get("RCPT", "250 2.1.5 ok")))
            elif verb == "DATA":
                peer.send(answers["DATA"])
                if answers["DATA"].startswith("354"):
                    peer.read_data()
                    peer.send(answers["DOT"])
            elif verb == "QUIT":
                peer.send(answers["QUIT"])
                return
            else:
                peer.send(answers.get(verb, "250 ok"))

    return run


def _address(command: str) -> str:
    return command.partition(":")[2].split(" ")[0].strip("<>")

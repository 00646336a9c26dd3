"""Servers the routing and remote-delivery tests start on loopback (or inside a private network
namespace): an authoritative DNS server with a per-test zone, aiosmtpd sinks (STARTTLS, implicit TLS,
AUTH, scripted replies, connection counting), raw scripted SMTP servers, a trustme CA, a real Postfix
from Debian's package, and `python servers.py netns SPEC` which serves all of them inside
`unshare --net` for direct-MX tests on port 25.

Nothing here binds or talks to an address outside 127.0.0.0/8 and ::1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# ---- DNS ------------------------------------------------------------------------------------------


class Zone:
    """Records by owner name (lowercase, no final dot): `{"a.test": [("MX", 10, "mx.a.test"), ("A",
    "127.0.0.1"), ("AAAA", "::1"), ("CNAME", "b.test")]}`. Names in `servfail`, `refused` or `timeout`
    get that behaviour for every query type (`timeout`: no reply at all), or for one type when
    given as `name/TYPE` (`mx.test/AAAA`); other unknown names are
    NXDOMAIN, and a known name without records of the asked type is NODATA."""

    def __init__(
        self,
        records: dict[str, list[tuple[Any, ...]]] | None = None,
        *,
        servfail: set[str] | None = None,
        refused: set[str] | None = None,
        timeout: set[str] | None = None,
    ) -> None:
        self.records = {k.lower().rstrip("."): list(v) for k, v in (records or {}).items()}
        self.servfail = {n.lower() for n in servfail or ()}
        self.refused = {n.lower() for n in refused or ()}
        self.timeout = {n.lower() for n in timeout or ()}

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "servfail": sorted(self.servfail),
            "refused": sorted(self.refused),
            "timeout": sorted(self.timeout),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Zone:
        return cls(
            {k: [tuple(r) for r in v] for k, v in data["records"].items()},
            servfail=set(data["servfail"]),
            refused=set(data["refused"]),
            timeout=set(data["timeout"]),
        )


class DnsServer:
    """An authoritative UDP DNS server for one `Zone`, in a thread. `queries` logs (name, type)."""

    def __init__(self, zone: Zone, host: str = "127.0.0.1", port: int = 0) -> None:
        self.zone = zone
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def conf(self) -> str:
        """The dma.conf line that points dma at this server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"DNS_SERVER {host}:{self.port}"

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        self.sock.settimeout(0.05)  # so that stop() is noticed at once
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:  # TimeoutError from 3.10 on
                continue
            except OSError:
                return
            try:
                reply = self.answer(data)
            except Exception as e:  # a broken query must not kill the server
                sys.stderr.write(f"dns server: {e!r}\n")
                continue
            if reply is not None:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    return

    def answer(self, data: bytes) -> bytes | None:
        from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, A, DNSRecord

        request = DNSRecord.parse(data)
        qname = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((qname, qtype))
        typed = f"{qname}/{qtype.lower()}"
        if qname in self.zone.timeout or typed in self.zone.timeout:
            return None
        reply = request.reply()  # aa=1, ra=1
        if qname in self.zone.servfail or typed in self.zone.servfail:
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        if qname in self.zone.refused:
            reply.header.rcode = RCODE.REFUSED
            return reply.pack()
        name = qname
        for _ in range(8):
            records = self.zone.records.get(name)
            if records is None:
                if name == qname:
                    reply.header.rcode = RCODE.NXDOMAIN
                break
            cname = [r for r in records if r[0] == "CNAME"]
            if cname and qtype != "CNAME":
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(cname[0][1]), ttl=60))
                name = cname[0][1].lower().rstrip(".")
                continue
            for r in records:
                if r[0] != qtype:
                    continue
                if qtype == "A":
                    rdata: Any = A(r[1])
                elif qtype == "AAAA":
                    rdata = AAAA(r[1])
                elif qtype == "MX":
                    rdata = MX(r[2], r[1])
                elif qtype == "CNAME":
                    rdata = CNAME(r[1])
                else:
                    continue
                reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=rdata, ttl=60))
            break
        return reply.pack()


# ---- TLS ------------------------------------------------------------------------------------------

SERVER_NAMES = ("localhost", "relay.test", "mx1.example.test", "mx2.example.test", "127.0.0.1", "::1")


class Pki:
    """A trustme CA and one server certificate for `SERVER_NAMES`; `cafile` is the CA in PEM."""

    def __init__(self, directory: Path, names: tuple[str, ...] = SERVER_NAMES) -> None:
        import trustme

        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(*names)
        self.cafile = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.cafile))
        self.certfile = directory / "server.pem"
        self.keyfile = directory / "server.key"
        self.cert.cert_chain_pems[0].write_to_path(str(self.certfile))
        self.cert.private_key_pem.write_to_path(str(self.keyfile))

    def server_context(self) -> Any:
        import ssl

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    def fingerprint(self) -> str:
        """SHA-256 of the server certificate (DER), hex with colons, as FINGERPRINT takes it."""
        import hashlib
        import ssl

        der = ssl.PEM_cert_to_DER_cert(self.cert.cert_chain_pems[0].bytes().decode())
        return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


# ---- SMTP -----------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Received:
    """One accepted message as the sink saw it."""

    def __init__(
        self,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes,
        login: str | None,
        tls: bool,
        peer: Any = None,
    ) -> None:
        self.peer = peer  # the client's (address, port): equal for messages of one connection
        self.mail_from = mail_from
        self.rcpt_tos = rcpt_tos
        self.content = content
        self.login = login
        self.tls = tls

    def to_json(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": self.rcpt_tos,
            "content": self.content.decode("utf-8", "surrogateescape"),
            "login": self.login,
            "tls": self.tls,
        }


class SmtpSink:
    """An aiosmtpd server on `host:port` that keeps what it accepts.

    tls: None, "starttls" (offered, required before AUTH) or "implicit". users: login -> password
    for AUTH (PLAIN and LOGIN). rcpt_replies: recipient -> reply (e.g. "550 5.1.1 no such user").
    data_reply: a reply to give at the end of DATA instead of accepting; data_replies: the same
    for transactions that include a given recipient. auth_mechanisms: the ones to offer (PLAIN,
    LOGIN; default both). `connections` counts the
    sessions that said EHLO or HELO (the controller's own readiness probe never does).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        tls: str | None = None,
        pki: Pki | None = None,
        users: dict[str, str] | None = None,
        rcpt_replies: dict[str, str] | None = None,
        data_reply: str | None = None,
        data_replies: dict[str, str] | None = None,
        auth_mechanisms: list[str] | None = None,
        hostname: str = "sink.test",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.pki = pki
        self.users = users
        self.rcpt_replies = dict(rcpt_replies or {})
        self.data_reply = data_reply
        self.data_replies = dict(data_replies or {})
        self.auth_mechanisms = auth_mechanisms
        self.hostname = hostname
        self.messages: list[Received] = []
        self.connections = 0
        self._peers: set[Any] = set()
        self.auth_attempts: list[tuple[str, str, bool]] = []  # (mechanism, login, success)
        self.controller: Any = None

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        sink = self

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
                sink._count(session)
                session.host_name = hostname
                return responses

            async def handle_HELO(self, server, session, envelope, hostname):  # type: ignore[no-untyped-def]
                sink._count(session)
                session.host_name = hostname
                return f"250 {sink.hostname}"

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
                reply = sink.rcpt_replies.get(address)
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                if sink.data_reply:
                    return sink.data_reply
                for rcpt in envelope.rcpt_tos:
                    if rcpt in sink.data_replies:
                        return sink.data_replies[rcpt]
                login = getattr(session, "_dma_login", None)
                transport = server.transport
                tls = session.ssl is not None or (
                    transport is not None and transport.get_extra_info("ssl_object") is not None
                )
                content = envelope.original_content or envelope.content
                sink.messages.append(
                    Received(
                        envelope.mail_from,
                        list(envelope.rcpt_tos),
                        bytes(content),
                        login,
                        tls,
                        session.peer,
                    )
                )
                return "250 2.0.0 accepted"

        def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
            login = auth_data.login.decode() if isinstance(auth_data.login, bytes) else str(auth_data.login)
            password = auth_data.password.decode() if isinstance(auth_data.password, bytes) else ""
            ok = sink.users is not None and sink.users.get(login) == password
            sink.auth_attempts.append((mechanism, login, ok))
            if ok:
                session._dma_login = login
            return AuthResult(success=ok, handled=False)

        kwargs: dict[str, Any] = {"hostname": self.host, "port": self.port, "server_hostname": self.hostname}
        if self.users is not None:
            kwargs["authenticator"] = authenticator
            kwargs["auth_require_tls"] = self.tls == "starttls"
            if self.auth_mechanisms is not None:
                kwargs["auth_exclude_mechanism"] = [
                    m for m in ("PLAIN", "LOGIN") if m not in self.auth_mechanisms
                ]
        if self.tls == "starttls":
            assert self.pki is not None
            kwargs["tls_context"] = self.pki.server_context()
            kwargs["require_starttls"] = False
        elif self.tls == "implicit":
            assert self.pki is not None
            kwargs["ssl_context"] = self.pki.server_context()
        self.controller = Controller(Handler(), **kwargs)
        self.controller.start()
        return self

    def _count(self, session: Any) -> None:
        # aiosmtpd makes a new Session after STARTTLS: count client addresses (ip, port) instead.
        if session.peer not in self._peers:
            self._peers.add(session.peer)
            self.connections += 1

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_json(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "messages": [m.to_json() for m in self.messages],
            "auth_attempts": self.auth_attempts,
        }


class ScriptedServer:
    """A raw TCP server that answers every connection with `greeting` (e.g. "421 busy") and closes
    it, or with `greeting=None` accepts and says nothing. `connections` counts accepted sockets."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, greeting: str | None = "421 4.3.2 busy"
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.connections = 0
        self.lines: list[bytes] = []
        self._held: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self.sock.settimeout(0.05)  # so that stop() is noticed at once
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:  # TimeoutError from 3.10 on
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections += 1
            if self.greeting is None:
                self._held.append(conn)
                continue
            try:
                conn.sendall(self.greeting.encode() + b"\r\n")
                conn.settimeout(1.0)
                try:
                    data = conn.recv(4096)
                    if data:
                        self.lines.append(data)
                except OSError:
                    pass
            finally:
                conn.close()

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(2)
        self.sock.close()
        for c in self._held:
            c.close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_json(self) -> dict[str, Any]:
        return {"connections": self.connections}


class Blackhole:
    """A port whose SYNs go unanswered, so that a connect() to it times out: a listening socket
    that never accepts, its one-slot backlog filled by connections of our own."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, port))
        self.sock.listen(0)
        self.fillers: list[socket.socket] = []
        for _ in range(2):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect((host, port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.1)

    def stop(self) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()

    def to_json(self) -> dict[str, Any]:
        return {}


# ---- Postfix --------------------------------------------------------------------------------------

POSTFIX_ROOT = Path(os.environ.get("POSTFIX_ROOT", "/opt/postfix-root"))
POSTFIX_SBIN = POSTFIX_ROOT / "usr/sbin"
POSTFIX_LIB = POSTFIX_ROOT / "usr/lib/postfix"


def postfix_problem() -> str | None:
    """Why Postfix cannot run here (None when it can): .ci/run sets it up."""
    if not (POSTFIX_SBIN / "postfix").exists():
        return (
            f"Postfix is not unpacked in {POSTFIX_ROOT} (see .ci/run: apt-get download postfix; dpkg-deb -x)"
        )
    import grp
    import pwd

    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or postdrop group is missing (see .ci/run)"
    return None


def postfix_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(POSTFIX_LIB)
    return env


class Postfix:
    """A Postfix instance with its own config and queue directories under `root`, listening on
    127.0.0.1:`port` and relaying everything to `relayhost` (host:port) without DNS."""

    def __init__(
        self,
        root: Path,
        relayhost: str,
        port: int | None = None,
        *,
        pki: Pki | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.relayhost = relayhost
        self.pki = pki
        self.extra = extra
        self.config = root / "etc"
        # Postfix opens its queue and data directories as the postfix user, which cannot get
        # through pytest's 0700 temporary directories: those two live in a directory of their own.
        self.rundir: Path | None = None
        self.queue = Path("/nonexistent")
        self.data = Path("/nonexistent")

    def postconf(self) -> str:
        lib = POSTFIX_LIB
        return "\n".join(
            [
                "compatibility_level = 3.6",
                f"queue_directory = {self.queue}",
                f"data_directory = {self.data}",
                f"command_directory = {POSTFIX_SBIN}",
                f"daemon_directory = {lib}/sbin",
                f"shlib_directory = {lib}",
                f"meta_directory = {self.config}",
                f"sendmail_path = {POSTFIX_SBIN}/sendmail",
                f"mailq_path = {POSTFIX_SBIN}/mailq",
                f"newaliases_path = {POSTFIX_SBIN}/newaliases",
                f"manpage_directory = {POSTFIX_ROOT}/usr/share/man",
                "sample_directory = no",
                "readme_directory = no",
                "html_directory = no",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                f"import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH={lib}",
                f"maillog_file = {self.root}/maillog",
                f"maillog_file_prefixes = {self.root}",
                "myhostname = postfix.test",
                "mydomain = test",
                "myorigin = postfix.test",
                "mydestination =",
                "mynetworks = 127.0.0.0/8 [::1]/128",
                "inet_interfaces = loopback-only",
                "inet_protocols = ipv4",
                f"relayhost = [{self.relayhost.rpartition(':')[0]}]:{self.relayhost.rpartition(':')[2]}",
                "smtp_dns_support_level = disabled",
                "disable_dns_lookups = yes",
                "smtp_tls_security_level = none",
                "alias_maps =",
                "alias_database =",
                "local_recipient_maps =",
                "smtputf8_enable = no",
                "biff = no",
                "queue_run_delay = 1s",
                "minimal_backoff_time = 1s",
                "maximal_backoff_time = 2s",
                "smtpd_relay_restrictions = permit_mynetworks, reject",
                *(
                    [
                        f"smtpd_tls_chain_files = {self.pki.keyfile}, {self.pki.certfile}",
                        "smtpd_tls_security_level = may",
                        "smtpd_tls_received_header = yes",
                    ]
                    if self.pki
                    else ["smtpd_tls_security_level = none"]
                ),
                *self.extra,
                "",
            ]
        )

    def mastercf(self) -> str:
        return "\n".join(
            [
                f"127.0.0.1:{self.port} inet n - n - - smtpd",
                "pickup unix n - n 60 1 pickup",
                "cleanup unix n - n - 0 cleanup",
                "qmgr unix n - n 300 1 qmgr",
                "tlsmgr unix - - n 1000? 1 tlsmgr",
                "rewrite unix - - n - - trivial-rewrite",
                "bounce unix - - n - 0 bounce",
                "defer unix - - n - 0 bounce",
                "trace unix - - n - 0 bounce",
                "verify unix - - n - 1 verify",
                "flush unix n - n 1000? 0 flush",
                "proxymap unix - - n - - proxymap",
                "proxywrite unix - - n - 1 proxymap",
                "smtp unix - - n - - smtp",
                "relay unix - - n - - smtp",
                "showq unix n - n - - showq",
                "error unix - - n - - error",
                "retry unix - - n - - error",
                "discard unix - - n - - discard",
                "local unix - n n - - local",
                "virtual unix - n n - - virtual",
                "lmtp unix - - n - - lmtp",
                "anvil unix - - n - 1 anvil",
                "scache unix - - n - 1 scache",
                "postlog unix-dgram n - n - 1 postlogd",
                "",
            ]
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(POSTFIX_SBIN / "postfix"), "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            env=postfix_env(),
            timeout=30,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"postfix {' '.join(args)} failed ({done.returncode}): {done.stderr}{self.log()}"
            )
        return done

    def log(self) -> str:
        try:
            return (self.root / "maillog").read_text()
        except OSError:
            return ""

    def start(self) -> Postfix:
        problem = postfix_problem()
        if problem:
            raise RuntimeError(problem)
        import tempfile

        self.rundir = Path(tempfile.mkdtemp(prefix="dma-test-postfix-"))
        os.chmod(self.rundir, 0o755)
        self.queue = self.rundir / "queue"
        self.data = self.rundir / "data"
        for d in (self.config, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        (self.config / "main.cf").write_text(self.postconf())
        (self.config / "master.cf").write_text(self.mastercf())
        # postfix-files lists what `postfix set-permissions`/`check` manage; the packaged one is fine.
        shutil.copy(POSTFIX_ROOT / "etc/postfix/postfix-files", self.config / "postfix-files")
        shutil.chown(self.data, "postfix")
        self.run("start")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix did not start listening on 127.0.0.1:{self.port}\n{self.log()}")

    def stop(self) -> None:
        self.run("stop", check=False)
        # `postfix stop` returns before master exits; wait for its pid file to go.
        pidfile = self.queue / "pid/master.pid"
        deadline = time.monotonic() + 10
        while pidfile.exists() and time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                break
            time.sleep(0.1)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None


class PostfixSmtpSink:
    """Postfix's `smtp-sink` on 127.0.0.1:`port` with `-v`: every command it receives is logged on
    its stderr, which `commands()` returns (`ehlo ...`, `mail FROM:<...>`, `rcpt TO:<...>`, `.`)."""

    def __init__(self, root: Path, port: int | None = None, options: tuple[str, ...] = ()) -> None:
        self.root = root
        self.port = port or free_port()
        self.options = options
        self.errfile = root / "smtp-sink.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PostfixSmtpSink:
        problem = postfix_problem()
        if problem:
            raise RuntimeError(problem)
        with open(self.errfile, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    str(POSTFIX_SBIN / "smtp-sink"),
                    "-u",
                    "postfix",
                    "-v",
                    *self.options,
                    f"127.0.0.1:{self.port}",
                    "100",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=postfix_env(),
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if f"[127.0.0.1]:{self.port}" in self.errfile.read_text() and self._listening():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not start: {self.errfile.read_text()}")

    def _listening(self) -> bool:
        # Ask the kernel instead of connecting (a probe would show up in the log).
        with open("/proc/net/tcp") as f:
            return any(
                line.split()[1] == f"0100007F:{self.port:04X}" and line.split()[3] == "0A"
                for line in f.readlines()[1:]
            )

    def commands(self) -> list[str]:
        prefix = f"{POSTFIX_SBIN / 'smtp-sink'}: "
        return [
            line[len(prefix) :] for line in self.errfile.read_text().splitlines() if line.startswith(prefix)
        ]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    def __enter__(self) -> PostfixSmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- private network namespace --------------------------------------------------------------------


class Netns:
    """`unshare --net` running `python servers.py netns`: a private network namespace with `lo` up,
    a DNS server on 127.0.0.1:53 serving `zone`, and the servers in `spec`. `run()` runs a command
    inside the namespace (nsenter); `dump()` returns what the servers saw (JSON)."""

    def __init__(self, zone: Zone, servers: list[dict[str, Any]], pki_dir: Path | None = None) -> None:
        self.spec = {"zone": zone.to_json(), "servers": servers, "pki_dir": str(pki_dir) if pki_dir else None}
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> Netns:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RuntimeError("unshare (util-linux) is not installed")
        self.proc = subprocess.Popen(
            [unshare, "--net", sys.executable, __file__, "netns", json.dumps(self.spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.proc.wait(5)
            raise RuntimeError(
                f"could not start servers in a private network namespace (`unshare --net`, "
                f"exit {self.proc.returncode}); this test needs root and unshare(CLONE_NEWNET): {err}"
            )
        self.info = json.loads(line)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def run(
        self, argv: list[str], *, input: bytes = b"", env: dict[str, str] | None = None, timeout: float = 30
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv],
            input=input,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def dump(self) -> list[dict[str, Any]]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        return list(json.loads(self.proc.stdout.readline())["servers"])

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        self.proc = None

    def __enter__(self) -> Netns:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _netns_main(spec: dict[str, Any]) -> None:
    """Inside the namespace: lo up, start the servers, report, then answer `dump`/`quit` on stdin."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # ::1 is usable only once lo is up and DAD is done (no DAD on lo); wait until we can bind it.
    for _ in range(50):
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.bind(("::1", 0))
            break
        except OSError:
            time.sleep(0.05)
    dns = DnsServer(Zone.from_json(spec["zone"]), "127.0.0.1", 53).start()
    pki = Pki(Path(spec["pki_dir"])) if spec.get("pki_dir") else None
    servers: list[Any] = []
    for s in spec["servers"]:
        kind = s.get("kind", "sink")
        if kind == "sink":
            servers.append(
                SmtpSink(
                    s["host"],
                    s.get("port", 25),
                    tls=s.get("tls"),
                    pki=pki,
                    rcpt_replies=s.get("rcpt_replies"),
                    data_reply=s.get("data_reply"),
                    hostname=s.get("hostname", "sink.test"),
                ).start()
            )
        elif kind == "blackhole":
            servers.append(Blackhole(s["host"], s.get("port", 25)))
        elif kind == "scripted":
            servers.append(ScriptedServer(s["host"], s.get("port", 25), s.get("greeting")).start())
        else:
            raise ValueError(kind)
    print(json.dumps({"pid": os.getpid(), "dns": "127.0.0.1:53"}), flush=True)
    for line in sys.stdin:
        if line.strip() == "dump":
            print(json.dumps({"servers": [sv.to_json() for sv in servers]}), flush=True)
        elif line.strip() == "quit":
            break
    for sv in servers:
        sv.stop()
    dns.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "netns":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _netns_main(json.loads(sys.argv[2]))
    else:
        sys.stderr.write("usage: servers.py netns SPEC_JSON\n")
        sys.exit(64)

"""An aiosmtpd sink for the benchmarks: python aiosink.py PORT [--tls DIR] [--auth]

Listens on 127.0.0.1:PORT and throws messages away. With --tls DIR (cert.pem, key.pem) STARTTLS
is offered and required; with --auth, AUTH (PLAIN or LOGIN, any password) is required too.
Prints "SESSIONS MESSAGES" on stdout after every message, for the benchmark to follow.
"""

from __future__ import annotations

import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Counter:
    def __init__(self) -> None:
        self.messages = 0
        self.sessions = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages += 1
        sys.stdout.write(f"{self.sessions} {self.messages}\n")
        sys.stdout.flush()
        return "250 OK"


def main() -> None:
    port = int(sys.argv[1])
    args = sys.argv[2:]
    tls = None
    if "--tls" in args:
        d = args[args.index("--tls") + 1]
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(os.path.join(d, "cert.pem"), os.path.join(d, "key.pem"))
    auth = "--auth" in args
    handler = Counter()

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        return AuthResult(success=True)

    class CountingController(Controller):
        def factory(self):  # type: ignore[no-untyped-def]
            handler.sessions += 1
            sys.stdout.write(f"{handler.sessions} {handler.messages}\n")
            sys.stdout.flush()
            return super().factory()

    kw: dict[str, object] = {"data_size_limit": 64 * 1024 * 1024}
    if tls:
        kw.update(tls_context=tls, require_starttls=True)
    if auth:
        kw.update(authenticator=authenticator, auth_required=True, auth_require_tls=bool(tls))
    controller = CountingController(handler, hostname="127.0.0.1", port=port, ready_timeout=10, **kw)
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main()

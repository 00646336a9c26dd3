"""A recording SMTP sink for queue-runner tests: aiosmtpd in the pytest process, on a fixed loopback
port, that outlives the dma processes it serves.

- every accepted message is kept with its envelope, content, Message-Id, connection number and the
  time it was accepted; `count(mid)` / `counts()` say how often each Message-Id arrived;
- replies on demand: per recipient always (`rcpt_replies`) or for its next attempts only
  (`rcpt_once`), at the final dot always (`data_reply`) or for the next transactions only
  (`data_once`);
- `stop()` takes it down (open sessions are cut, new connections refused) and `start()` brings it
  back on the same port; `down_after=N` takes it down by itself right after the N-th message;
- `connections` counts the sessions that said EHLO/HELO (the controller's readiness probe never
  does).

No TLS, no AUTH: it is meant to be fast.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message_id(content: bytes) -> str | None:
    """The Message-Id header of `content` (LF line endings), or None."""
    head = content.split(b"\n\n", 1)[0]
    found = _MESSAGE_ID.search(head)
    return found.group(1).decode("utf-8", "replace") if found else None


def body(content: bytes) -> bytes:
    return content.split(b"\n\n", 1)[1] if b"\n\n" in content else b""


@dataclass
class Accepted:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes  # LF line endings, dot-unstuffed
    message_id: str | None
    connection: int
    at: float

    @property
    def body(self) -> bytes:
        return body(self.content)

    def header(self, name: str) -> str | None:
        head = self.content.split(b"\n\n", 1)[0].decode("utf-8", "replace")
        for line in head.split("\n"):
            key, sep, value = line.partition(":")
            if sep and key.lower() == name.lower():
                return value.strip()
        return None


@dataclass
class Sink:
    port: int = field(default_factory=free_port)
    #: recipient -> reply given at every RCPT for it (e.g. "550 5.1.1 no such user")
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    #: recipient -> replies given at its next RCPTs, one each; 250 once used up
    rcpt_once: dict[str, list[str]] = field(default_factory=dict)
    #: reply at the final dot of every transaction instead of accepting it
    data_reply: str | None = None
    #: replies at the final dot of the next transactions, one each
    data_once: list[str] = field(default_factory=list)
    #: go down by itself right after accepting this many messages in all
    down_after: int | None = None

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[Accepted] = []
        self.rcpt_log: list[tuple[str, str]] = []  # (recipient, reply) for every RCPT
        self.connections = 0
        self.transports: set[Any] = set()
        self.controller: Controller | None = None
        self.went_down = threading.Event()

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Sink:
        assert self.controller is None
        self.went_down.clear()
        self.controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="sink.test",
            decode_data=False,
            ready_timeout=10,
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        with self.lock:
            controller, self.controller = self.controller, None
        if controller is not None:
            # Cut the open sessions as a crashed server would, then stop listening.
            done = threading.Event()

            def cut() -> None:
                for transport in list(self.transports):
                    transport.abort()
                self.transports.clear()
                done.set()

            controller.loop.call_soon_threadsafe(cut)
            done.wait(5)
            controller.stop()
        self.went_down.set()

    @property
    def running(self) -> bool:
        return self.controller is not None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what arrived ---------------------------------------------------------------------------

    def counts(self) -> Counter[str | None]:
        with self.lock:
            return Counter(a.message_id for a in self.accepted)

    def count(self, mid: str) -> int:
        return self.counts()[mid]

    def messages(self) -> list[Accepted]:
        with self.lock:
            return list(self.accepted)

    def to(self, rcpt: str) -> list[Accepted]:
        return [a for a in self.messages() if rcpt in a.rcpt_tos]

    def wait_for(self, predicate: Any, timeout: float = 20.0, step: float = 0.05) -> bool:
        """Poll `predicate()` until it is true or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(step)
        return bool(predicate())

    # ---- the handler's side -----------------------------------------------------------------------

    def _new_connection(self, server: Any) -> int:
        with self.lock:
            if server.transport is not None:
                self.transports.add(server.transport)
            self.connections += 1
            return self.connections

    def _rcpt(self, address: str) -> str | None:
        with self.lock:
            reply = self.rcpt_replies.get(address)
            once = self.rcpt_once.get(address)
            if reply is None and once:
                reply = once.pop(0)
            self.rcpt_log.append((address, reply or "250"))
            return reply

    def _data(self, envelope: Any, connection: int) -> str:
        content = bytes(envelope.original_content or envelope.content).replace(b"\r\n", b"\n")
        with self.lock:
            if self.data_reply:
                return self.data_reply
            if self.data_once:
                return self.data_once.pop(0)
            self.accepted.append(
                Accepted(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    content,
                    message_id(content),
                    connection,
                    time.monotonic(),
                )
            )
            down = self.down_after is not None and len(self.accepted) >= self.down_after
            if down:
                self.down_after = None
        if down:
            # Not from the event loop's own thread: stopping joins it.
            threading.Thread(target=self.stop, daemon=True).start()
        return "250 2.0.0 accepted"


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.dma_connection = self.sink._new_connection(server)
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        session.dma_connection = self.sink._new_connection(server)
        session.host_name = hostname
        return "250 sink.test"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.sink._rcpt(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.sink._data(envelope, getattr(session, "dma_connection", 0))

"""Direct-MX delivery (no SMARTHOST) on port 25, as dma does it, inside a private network namespace
(`unshare --net`, root): there `lo` is ours alone, so the test servers can listen on 127.0.0.x:25
and [::1]:25 and the DNS server on 127.0.0.1:53 without touching the machine's own services.

The namespace is made by tests/servers.py (`Netns`); `sendmail` and `dma` run in it through
`nsenter --net`. If the machine does not allow that, the tests fail (they do not skip).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dma.errors import EX_TEMPFAIL, EX_UNAVAILABLE
from dma_fixtures import DmaEnv, program
from servers import Netns, Zone

SENDER = "sender@client.test"
MSG = b"Subject: direct\n\nstraight to the MX\n"


class World:
    """A dma env plus a running namespace; `send()` runs `sendmail -D` inside it."""

    def __init__(self, root: Path, zone: Zone, servers: list[dict[str, Any]], *conf: str) -> None:
        self.env = DmaEnv(root)
        self.env.smarthost = ""  # direct MX: drop the shared fixture's default smarthost, if any
        self.pki_dir = root / "pki"
        self.pki_dir.mkdir()
        self.netns = Netns(zone, servers, self.pki_dir).start()
        self.env.write_conf("DNS_SERVER 127.0.0.1:53", "CONNECT_TIMEOUT 5", "TIMEOUT 10", *conf)

    def run(self, args: list[str], prog: str = "sendmail", msg: bytes = MSG):  # type: ignore[no-untyped-def]
        return self.netns.run([program(prog), *args], input=msg, env=self.env.env)

    def send(self, *rcpts: str, args: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        return self.run(["-D", *args, "-f", SENDER, *rcpts])

    def servers(self) -> list[dict[str, Any]]:
        return self.netns.dump()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Any]:
    made: list[World] = []

    def make(zone: Zone, servers: list[dict[str, Any]], *conf: str) -> World:
        w = World(tmp_path / f"w{len(made)}", zone, servers, *conf)
        made.append(w)
        return w

    yield make
    for w in made:
        w.netns.stop()


def sink(host: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "sink", "host": host, "port": 25, **kw}


def test_delivery_to_the_mx_on_port_25(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test")],
            "mx1.example.test": [("A", "127.0.0.1")],
        }
    )
    w = world(zone, [sink("127.0.0.1")])
    r = w.send("user@example.test")
    assert r.returncode == 0, r.stderr
    [s] = w.servers()
    assert [(m["mail_from"], m["rcpt_tos"]) for m in s["messages"]] == [(SENDER, ["user@example.test"])]
    assert "straight to the MX" in s["messages"][0]["content"]
    assert w.env.entries() == []


def test_ipv6_address_of_the_mx_first(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test")],
            "mx1.example.test": [("A", "127.0.0.1"), ("AAAA", "::1")],
        }
    )
    w = world(zone, [sink("127.0.0.1"), sink("::1")])
    r = w.send("user@example.test")
    assert r.returncode == 0, r.stderr
    v4, v6 = w.servers()
    assert v4["messages"] == [] and v4["connections"] == 0
    assert [m["rcpt_tos"] for m in v6["messages"]] == [["user@example.test"]]


def test_next_mx_after_refused_connection_and_421_greeting(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [
                ("MX", 10, "mx1.example.test"),
                ("MX", 20, "mx2.example.test"),
                ("MX", 30, "mx3.example.test"),
            ],
            "mx1.example.test": [("A", "127.0.0.2")],  # nothing listens: connection refused
            "mx2.example.test": [("A", "127.0.0.3")],
            "mx3.example.test": [("AAAA", "::1")],
        }
    )
    w = world(zone, [{"kind": "scripted", "host": "127.0.0.3", "greeting": "421 4.3.2 busy"}, sink("::1")])
    r = w.send("user@example.test", args=("-v",))
    assert r.returncode == 0, r.stderr
    busy, good = w.servers()
    assert busy["connections"] == 1
    assert [m["rcpt_tos"] for m in good["messages"]] == [["user@example.test"]]
    assert w.env.entries() == []


def test_every_mx_failing_is_temporary(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test"), ("MX", 20, "mx2.example.test")],
            "mx1.example.test": [("A", "127.0.0.2")],
            "mx2.example.test": [("A", "127.0.0.3")],
        }
    )
    w = world(zone, [{"kind": "scripted", "host": "127.0.0.3", "greeting": "421 4.3.2 busy"}])
    r = w.send("user@example.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    [busy] = w.servers()
    assert busy["connections"] == 1
    [entry] = w.env.entries()
    assert entry.attempts == 1 and entry.state == ""
    assert "421" in entry.last_error or "mx2.example.test" in entry.last_error, entry.last_error


def test_5xx_at_the_first_mx_does_not_try_the_next(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test"), ("MX", 20, "mx2.example.test")],
            "mx1.example.test": [("A", "127.0.0.1")],
            "mx2.example.test": [("A", "127.0.0.2")],
        }
    )
    w = world(
        zone,
        [sink("127.0.0.1", rcpt_replies={"user@example.test": "550 5.1.1 no such user"}), sink("127.0.0.2")],
    )
    r = w.send("user@example.test")
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    first, second = w.servers()
    assert first["connections"] == 1 and first["messages"] == []
    assert second["connections"] == 0
    # a bounce to the sender is queued, naming the 550
    [bounce] = w.env.entries()
    assert (bounce.sender, bounce.recipient) == ("", SENDER)
    assert b"550 5.1.1" in w.env.message()


@pytest.mark.parametrize(("domain", "words"), [("nullmx.test", "null MX"), ("nosuch.test", "does not exist")])
def test_null_mx_and_nxdomain_fail_at_once(world: Any, domain: str, words: str) -> None:
    zone = Zone({"nullmx.test": [("MX", 0, ".")]})
    w = world(zone, [])
    r = w.send(f"user@{domain}")
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    assert words.encode() in r.stderr
    [bounce] = w.env.entries()
    assert bounce.recipient == SENDER
    assert words.encode() in w.env.message()


def test_dns_servfail_is_temporary(world: Any) -> None:
    w = world(Zone({}, servfail={"example.test"}), [])
    r = w.send("user@example.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    [entry] = w.env.entries()
    assert entry.recipient == "user@example.test" and entry.attempts == 1


def test_address_literal_goes_to_port_25_of_that_address(world: Any) -> None:
    w = world(Zone({}), [sink("127.0.0.5")])
    r = w.send("user@[127.0.0.5]")
    assert r.returncode == 0, r.stderr
    [s] = w.servers()
    assert [m["rcpt_tos"] for m in s["messages"]] == [["user@[127.0.0.5]"]]


def test_starttls_to_the_mx_verifies_the_mx_name(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test")],
            "mx1.example.test": [("A", "127.0.0.1")],
        }
    )
    w = world(zone, [sink("127.0.0.1", tls="starttls")])
    w.env.write_conf(
        "DNS_SERVER 127.0.0.1:53",
        "SECURETRANSFER",
        "STARTTLS",
        "VERIFYCERT",
        f"CAFILE {w.pki_dir / 'ca.pem'}",
    )
    r = w.send("user@example.test")
    assert r.returncode == 0, r.stderr
    [s] = w.servers()
    assert [(m["rcpt_tos"], m["tls"]) for m in s["messages"]] == [(["user@example.test"], True)]


def test_queue_run_to_one_mx_shares_the_connection(world: Any) -> None:
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test")],
            "mx1.example.test": [("A", "127.0.0.1")],
        }
    )
    w = world(zone, [sink("127.0.0.1")], "HOST_CONCURRENCY 1")
    for i in range(4):
        r = w.run(["-bq", "-f", SENDER, f"u{i}@example.test", f"v{i}@example.test"])
        assert r.returncode == 0, r.stderr
    r = w.run(["-q", "-D"], prog="dma", msg=b"")
    assert r.returncode == 0, r.stderr
    [s] = w.servers()
    assert s["connections"] == 1
    assert sorted(sorted(m["rcpt_tos"]) for m in s["messages"]) == [
        [f"u{i}@example.test", f"v{i}@example.test"] for i in range(4)
    ]
    assert w.env.entries() == []


@pytest.mark.parametrize("literal", ["[not-an-ip]", "[300.1.1.1]"])
def test_bad_address_literal_fails_that_recipient_only(world: Any, literal: str) -> None:
    # An address literal that is no IP address is a permanent failure of that recipient; it must
    # neither crash the runner nor hold up (or re-send) the other mail of the same run.
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test")],
            "mx1.example.test": [("A", "127.0.0.1")],
        }
    )
    w = world(zone, [sink("127.0.0.1")], "HOST_CONCURRENCY 1")
    for rcpt in ("first@example.test", f"user@{literal}", "second@example.test"):
        r = w.run(["-bq", "-f", SENDER, rcpt])
        assert r.returncode == 0, r.stderr
    r = w.run(["-q", "-D"], prog="dma", msg=b"")
    assert r.returncode == 0, r.stderr
    assert b"Traceback" not in r.stderr
    r = w.run(["-q", "-D"], prog="dma", msg=b"")  # a second run sends nothing again
    assert r.returncode == 0, r.stderr
    [s] = w.servers()
    delivered = sorted(rc for m in s["messages"] for rc in m["rcpt_tos"])
    assert delivered == ["first@example.test", "second@example.test"]
    # what is left is the bounce for the bad recipient (client.test has no DNS here: deferred)
    [bounce] = w.env.entries()
    assert (bounce.sender, bounce.recipient) == ("", SENDER)
    assert literal.encode() in w.env.message()


def test_sendmail_D_to_a_bad_address_literal_exits_69(world: Any) -> None:
    w = world(Zone({}), [])
    r = w.send("user@[not-an-ip]")
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    assert b"Traceback" not in r.stderr


def test_connect_timeout_moves_on_to_the_next_mx(world: Any) -> None:
    # C dma had no connect timeout: one MX that drops SYNs stalled delivery for minutes.
    zone = Zone(
        {
            "example.test": [("MX", 10, "mx1.example.test"), ("MX", 20, "mx2.example.test")],
            "mx1.example.test": [("A", "127.0.0.2")],
            "mx2.example.test": [("A", "127.0.0.3")],
        }
    )
    w = world(zone, [{"kind": "blackhole", "host": "127.0.0.2"}, sink("127.0.0.3")], "CONNECT_TIMEOUT 1")
    start = time.monotonic()
    r = w.send("user@example.test")
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert 0.9 < elapsed < 8, elapsed
    _, good = w.servers()
    assert [m["rcpt_tos"] for m in good["messages"]] == [["user@example.test"]]

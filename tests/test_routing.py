"""Remote routing (dma-behaviour.md 4.7): `routing.targets_for`, `mx_hosts` and `resolve_host`
against a real authoritative DNS server on a loopback UDP port (tests/servers.py), reached through
`DNS_SERVER 127.0.0.1:<port>` in the test's own dma.conf."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dma import config
from dma.mail import routing
from dma.mail.remote import Destination
from dma.mail.routing import RouteError
from servers import DnsServer, Zone

ZONE = Zone(
    {
        # three preferences, two hosts sharing preference 10
        "example.test": [
            ("MX", 20, "mx3.example.test"),
            ("MX", 10, "mx1.example.test"),
            ("MX", 10, "mx2.example.test"),
            ("MX", 30, "mx4.example.test"),
        ],
        "mx1.example.test": [("A", "127.0.0.1"), ("AAAA", "::1")],
        "mx2.example.test": [("A", "127.0.0.2")],
        "mx3.example.test": [("AAAA", "::1")],
        "mx4.example.test": [("A", "127.0.0.4"), ("A", "127.0.0.5")],
        # no MX, but addresses: the domain is its own host
        "implicit.test": [("A", "127.0.0.7"), ("AAAA", "::1")],
        # exists, but neither MX nor addresses
        "empty.test": [("TXT", "nothing")],
        # RFC 7505 null MX
        "nullmx.test": [("MX", 0, ".")],
        # MX hosts: one does not exist, one lives
        "halfbroken.test": [("MX", 5, "gone.halfbroken.test"), ("MX", 10, "mx1.example.test")],
        # MX hosts that all fail to resolve
        "lame.test": [("MX", 5, "gone.lame.test"), ("MX", 10, "also-gone.lame.test")],
        "smarthost.test": [("A", "127.0.0.9"), ("AAAA", "::1")],
        "mxfail.test": [("MX", 10, "broken-mx.test")],
        "alias.test": [("CNAME", "implicit.test")],
    },
    servfail={"servfail.test", "broken-mx.test"},
    refused={"refused.test"},
    timeout={"timeout.test"},
)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as server:
        yield server


def make_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *lines: str) -> config.Config:
    monkeypatch.setenv("DMA_STATE_DIR", str(tmp_path))
    conf = tmp_path / "dma.conf"
    conf.write_text(
        "\n".join(
            [
                f"SPOOLDIR {tmp_path / 'spool'}",
                f"MBOXDIR {tmp_path / 'mail'}",
                f"ALIASES {tmp_path / 'aliases'}",
                "MAILNAME mail.example",
                *lines,
            ]
        )
        + "\n"
    )
    return config.Config(str(conf))


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns: DnsServer) -> config.Config:
    return make_cfg(tmp_path, monkeypatch, dns.conf)


def summary(targets: list[routing.Target]) -> list[tuple[str, list[str], int, int]]:
    return [(t.name, t.addresses, t.port, t.preference) for t in targets]


# ---- MX ---------------------------------------------------------------------------------------


def test_mx_hosts_lists_every_exchange(cfg: config.Config, dns: DnsServer) -> None:
    assert sorted(routing.mx_hosts("example.test", cfg)) == [
        (10, "mx1.example.test"),
        (10, "mx2.example.test"),
        (20, "mx3.example.test"),
        (30, "mx4.example.test"),
    ]
    assert ("example.test", "MX") in dns.queries


def test_targets_in_preference_order_with_ipv6_and_ipv4(cfg: config.Config) -> None:
    targets = routing.targets_for("example.test", cfg)
    assert [t.preference for t in targets] == [10, 10, 20, 30]
    by_name = {t.name: t for t in targets}
    assert set(by_name) == {f"mx{i}.example.test" for i in (1, 2, 3, 4)}
    assert [t.name for t in targets[2:]] == ["mx3.example.test", "mx4.example.test"]
    # AAAA before A (as C dma: IPv6 first), every address of the host
    assert by_name["mx1.example.test"].addresses == ["::1", "127.0.0.1"]
    assert by_name["mx2.example.test"].addresses == ["127.0.0.2"]
    assert by_name["mx3.example.test"].addresses == ["::1"]
    assert sorted(by_name["mx4.example.test"].addresses) == ["127.0.0.4", "127.0.0.5"]
    # MX delivery is always port 25
    assert {t.port for t in targets} == {25}


def test_equal_preferences_are_shuffled(cfg: config.Config) -> None:
    firsts = set()
    for _ in range(60):
        targets = routing.targets_for("example.test", cfg)
        assert [t.preference for t in targets] == [10, 10, 20, 30]
        firsts.add(targets[0].name)
        if len(firsts) == 2:
            break
    # 60 tries of a fair coin: both orders appear (probability of failure 2**-59)
    assert firsts == {"mx1.example.test", "mx2.example.test"}


def test_implicit_mx_is_the_domain_itself(cfg: config.Config) -> None:
    assert routing.mx_hosts("implicit.test", cfg) == [(0, "implicit.test")]
    assert summary(routing.targets_for("implicit.test", cfg)) == [
        ("implicit.test", ["::1", "127.0.0.7"], 25, 0)
    ]


def test_implicit_mx_through_a_cname(cfg: config.Config) -> None:
    targets = routing.targets_for("alias.test", cfg)
    assert len(targets) == 1
    assert sorted(targets[0].addresses) == ["127.0.0.7", "::1"]


def test_domain_without_mx_or_addresses_is_temporary(cfg: config.Config) -> None:
    with pytest.raises(RouteError) as e:
        routing.targets_for("empty.test", cfg)
    assert e.value.permanent is False


def test_null_mx_is_permanent(cfg: config.Config) -> None:
    with pytest.raises(RouteError) as e:
        routing.mx_hosts("nullmx.test", cfg)
    assert e.value.permanent is True
    assert "null MX" in str(e.value)
    with pytest.raises(RouteError) as e:
        routing.targets_for("nullmx.test", cfg)
    assert e.value.permanent is True


def test_nxdomain_is_permanent(cfg: config.Config) -> None:
    with pytest.raises(RouteError) as e:
        routing.targets_for("nosuch.test", cfg)
    assert e.value.permanent is True
    assert "nosuch.test" in str(e.value)


@pytest.mark.parametrize("domain", ["servfail.test", "refused.test"])
def test_servfail_and_refused_are_temporary(cfg: config.Config, domain: str) -> None:
    # A resolver that answers REFUSED must not make mail bounce (OpenSMTPD #742 lost mail that way).
    with pytest.raises(RouteError) as e:
        routing.targets_for(domain, cfg)
    assert e.value.permanent is False and "will retry" in str(e.value)


def test_timeout_is_temporary(cfg: config.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    # routing._resolver hard-codes timeout 2 s and lifetime 10 s (no dma.conf key reaches them);
    # shorten them here to keep the test fast.
    real = routing._resolver

    def quick(c: config.Config):  # type: ignore[no-untyped-def]
        res = real(c)
        res.timeout = 0.2
        res.lifetime = 0.5
        return res

    monkeypatch.setattr(routing, "_resolver", quick)
    start = time.monotonic()
    with pytest.raises(RouteError) as e:
        routing.targets_for("timeout.test", cfg)
    assert e.value.permanent is False
    assert time.monotonic() - start < 5


def test_one_unresolvable_mx_host_is_skipped(cfg: config.Config) -> None:
    assert summary(routing.targets_for("halfbroken.test", cfg)) == [
        ("mx1.example.test", ["::1", "127.0.0.1"], 25, 10)
    ]


def test_no_mx_host_resolves_is_temporary(cfg: config.Config) -> None:
    with pytest.raises(RouteError) as e:
        routing.targets_for("lame.test", cfg)
    assert e.value.permanent is False
    assert "gone.lame.test" in str(e.value)


def test_mx_host_lookup_servfail_is_temporary(cfg: config.Config) -> None:
    with pytest.raises(RouteError) as e:
        routing.targets_for("mxfail.test", cfg)
    assert e.value.permanent is False


# ---- resolve_host ------------------------------------------------------------------------------


def test_resolve_host(cfg: config.Config) -> None:
    assert routing.resolve_host("mx1.example.test", cfg, 25) == ["::1", "127.0.0.1"]
    assert routing.resolve_host("mx2.example.test", cfg, 25) == ["127.0.0.2"]
    assert routing.resolve_host("mx3.example.test", cfg, 25) == ["::1"]
    assert routing.resolve_host("127.0.0.3", cfg, 25) == ["127.0.0.3"]
    assert routing.resolve_host("::1", cfg, 25) == ["::1"]


@pytest.mark.parametrize("host", ["nosuch.test", "servfail.test", "empty.test"])
def test_resolve_host_failures_are_temporary(cfg: config.Config, host: str) -> None:
    with pytest.raises(RouteError) as e:
        routing.resolve_host(host, cfg, 25)
    assert e.value.permanent is False


# ---- smarthost ---------------------------------------------------------------------------------


def test_smarthost_ip_literal_is_used_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns: DnsServer
) -> None:
    cfg = make_cfg(tmp_path, monkeypatch, dns.conf, "SMARTHOST 127.0.0.8", "PORT 2525")
    assert summary(routing.targets_for("example.test", cfg)) == [("127.0.0.8", ["127.0.0.8"], 2525, 0)]
    assert dns.queries == []  # neither MX nor A lookups


def test_smarthost_ipv6_literal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns: DnsServer) -> None:
    cfg = make_cfg(tmp_path, monkeypatch, dns.conf, "SMARTHOST ::1", "PORT 587")
    assert summary(routing.targets_for("whatever.test", cfg)) == [("::1", ["::1"], 587, 0)]
    assert dns.queries == []


def test_smarthost_name_resolved_through_dns_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns: DnsServer
) -> None:
    cfg = make_cfg(tmp_path, monkeypatch, dns.conf, "SMARTHOST smarthost.test", "PORT 465")
    # the recipient domain does not matter, even a null-MX or non-existent one
    for domain in ("example.test", "nullmx.test", "nosuch.test"):
        assert summary(routing.targets_for(domain, cfg)) == [("smarthost.test", ["::1", "127.0.0.9"], 465, 0)]
    assert {q[0] for q in dns.queries} == {"smarthost.test"}


@pytest.mark.parametrize("host", ["nosuch.test", "servfail.test"])
def test_unresolvable_smarthost_is_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns: DnsServer, host: str
) -> None:
    # C dma #30: an unresolvable smarthost bounced mail; it must be retried.
    cfg = make_cfg(tmp_path, monkeypatch, dns.conf, f"SMARTHOST {host}")
    with pytest.raises(RouteError) as e:
        routing.targets_for("example.test", cfg)
    assert e.value.permanent is False


# ---- address literals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "address"),
    [("[127.0.0.1]", "127.0.0.1"), ("[IPv6:::1]", "::1"), ("[ipv6:::1]", "::1")],
)
def test_address_literal_domains(cfg: config.Config, dns: DnsServer, domain: str, address: str) -> None:
    assert summary(routing.targets_for(domain, cfg)) == [(address, [address], 25, 0)]
    assert dns.queries == []


def test_address_literal_route_key_keeps_the_brackets(cfg: config.Config) -> None:
    assert Destination(cfg, "", "user@[127.0.0.1]").domain == "[127.0.0.1]"
    assert Destination(cfg, "", "a@b@example.test").domain == "example.test"


@pytest.mark.parametrize("domain", ["[not-an-ip]", "[300.1.1.1]", "[IPv6:zz::zz]", "[]"])
def test_invalid_address_literal_is_permanent(cfg: config.Config, dns: DnsServer, domain: str) -> None:
    with pytest.raises(RouteError) as e:
        routing.targets_for(domain, cfg)
    assert e.value.permanent is True
    assert dns.queries == []


# ---- resolver details ---------------------------------------------------------------------------


def test_dns_server_on_ipv6_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with DnsServer(ZONE, "::1") as dns6:
        assert dns6.conf.startswith("DNS_SERVER [::1]:")
        cfg = make_cfg(tmp_path, monkeypatch, dns6.conf)
        assert summary(routing.targets_for("implicit.test", cfg)) == [
            ("implicit.test", ["::1", "127.0.0.7"], 25, 0)
        ]
        assert dns6.queries


def test_second_dns_server_answers_when_the_first_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dns: DnsServer
) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    # Nothing answers on the first server: each query waits for the per-server timeout, which
    # routing._resolver hard-codes to 2 s; shortened here to keep the test fast.
    real = routing._resolver

    def quick(c: config.Config):  # type: ignore[no-untyped-def]
        res = real(c)
        res.timeout = 0.2
        return res

    monkeypatch.setattr(routing, "_resolver", quick)
    cfg = make_cfg(tmp_path, monkeypatch, f"DNS_SERVER 127.0.0.1:{dead}, 127.0.0.1:{dns.port}")
    start = time.monotonic()
    assert summary(routing.targets_for("implicit.test", cfg)) == [
        ("implicit.test", ["::1", "127.0.0.7"], 25, 0)
    ]
    assert time.monotonic() - start < 5


def test_internationalized_domain_is_looked_up_by_its_a_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = Zone(
        {"xn--bcher-kva.test": [("MX", 10, "mx1.example.test")], "mx1.example.test": [("A", "127.0.0.1")]}
    )
    with DnsServer(zone) as dns:
        cfg = make_cfg(tmp_path, monkeypatch, dns.conf)
        targets = routing.targets_for("bücher.test", cfg)
        assert [(t.name, t.addresses) for t in targets] == [("mx1.example.test", ["127.0.0.1"])]
        assert ("xn--bcher-kva.test", "MX") in dns.queries


def test_servfail_on_aaaa_still_uses_the_a_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Some resolvers and middleboxes fail AAAA queries; the host's IPv4 addresses still work
    # (C dma uses getaddrinfo, which returns the A records then).
    zone = Zone(
        {
            "v4only.test": [("MX", 10, "mx.v4only.test")],
            "mx.v4only.test": [("A", "127.0.0.1")],
        },
        servfail={"mx.v4only.test/AAAA"},
    )
    with DnsServer(zone) as dns:
        cfg = make_cfg(tmp_path, monkeypatch, dns.conf)
        assert [(t.name, t.addresses) for t in routing.targets_for("v4only.test", cfg)] == [
            ("mx.v4only.test", ["127.0.0.1"])
        ]

"""Where each recipient goes: a local mailbox (after aliases) or a remote address, which ROUTE line
applies, and which hosts take mail for a remote domain."""

from __future__ import annotations

from dma.errors import RouteError

from .message import strip_local_domain

TYPE_CHECKING = False
if TYPE_CHECKING:
    import dns.resolver

    from dma.config import Config, Route

    from .aliases import Aliases


class RecipientResolver:
    """Expands recipients into envelope recipients, reading the aliases file at most once."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._aliases: Aliases | None = None

    def resolve(self, recipients: list[str]) -> list[str]:
        """Local user names and remote addresses for `recipients`, deduplicated."""
        result: dict[str, None] = {}
        for given in recipients:
            address = strip_local_domain(given, self.cfg.mailname)
            if "@" in address:
                expanded = [address]
            elif self.cfg.nullclient:
                # Everything goes to the smarthost; a bare name is qualified (C dma sent `RCPT TO:<root>`).
                expanded = [f"{address}@{self.cfg.mailname}"]
            else:
                from .aliases import Aliases
                from .local import is_local_user

                if self._aliases is None:
                    self._aliases = Aliases(self.cfg.aliases)
                expanded = self._aliases.expand(
                    address, is_local_user=is_local_user, mailname=self.cfg.mailname
                )
            result.update(dict.fromkeys(expanded))
        return list(result)


def choose(routes: list[Route], sender: str, recipient: str) -> Route | None:
    """The first route that matches, or None for the global SMARTHOST or MX delivery."""
    return next((route for route in routes if route.matches(sender, recipient)), None)


class Target:
    """One host to try: its name (for TLS, auth.conf and messages), addresses and port."""

    __slots__ = ("addresses", "name", "port", "preference")

    def __init__(self, name: str, addresses: list[str], port: int, preference: int = 0) -> None:
        self.name = name
        self.addresses = addresses
        self.port = port
        self.preference = preference


def targets_for(domain: str, cfg: Config, route: Route | None = None) -> list[Target]:
    """The hosts to try for `domain`, in order, skipping names that do not resolve: `route`'s relays
    (else the smarthosts), or the MX hosts by preference, shuffled among equals (RFC 5321 5.1).
    Raises `RouteError`."""
    hosts = cfg.smarthosts() if route is None else route.hosts
    if hosts:
        candidates, none = [(0, name, port) for name, port in hosts], "no usable smarthost"
    elif domain.startswith("[") and domain.endswith("]"):
        import ipaddress

        # RFC 5321 4.1.3: `[192.0.2.1]` is IPv4, `[IPv6:2001:db8::1]` IPv6; anything else cannot
        # be delivered to (and must not reach the SMTP session, which refuses it).
        v6 = domain[1:6].lower() == "ipv6:"
        literal = domain[6 if v6 else 1 : -1]
        try:
            (ipaddress.IPv6Address if v6 else ipaddress.IPv4Address)(literal)
        except ValueError:
            raise RouteError(f"invalid address literal {domain}", permanent=True) from None
        return [Target(literal, [literal], 25)]
    else:
        import random

        exchanges = sorted(mx_hosts(domain, cfg), key=lambda pref_host: (pref_host[0], random.random()))
        candidates, none = [(pref, host, 25) for pref, host in exchanges], f"no usable MX host for {domain}"
    targets: list[Target] = []
    failures: list[str] = []
    for preference, host, port in candidates:
        try:
            targets.append(Target(host, resolve_host(host, cfg, port), port, preference))
        except RouteError as e:
            failures.append(str(e))
    if not targets:  # retry: a lame MX host or smarthost may come back (as C dma)
        raise RouteError("; ".join(failures) or none, permanent=False)
    return targets


def _resolver(cfg: Config) -> dns.resolver.Resolver:
    import dns.nameserver
    import dns.resolver

    if not cfg.dns_servers:
        return dns.resolver.Resolver()
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in cfg.dns_servers]
    # One server gets at most 2 s; the whole lookup at most CONNECT_TIMEOUT.
    res.timeout = min(2.0, cfg.connect_timeout)
    res.lifetime = cfg.connect_timeout
    return res


def mx_hosts(domain: str, cfg: Config) -> list[tuple[int, str]]:
    """(preference, host) pairs for `domain`; the domain itself when it has no MX (implicit MX)."""
    import dns.exception
    import dns.resolver

    try:
        answer = _resolver(cfg).resolve(domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        raise RouteError(f"DNS lookup failure: domain {domain} does not exist", permanent=True) from None
    except dns.resolver.NoAnswer:
        return [(0, domain)]
    except dns.exception.DNSException as e:  # SERVFAIL, REFUSED, a timeout: may pass
        raise RouteError(f"DNS lookup of {domain} failed, will retry: {e}", permanent=False) from None
    records = [(int(r.preference), r.exchange.to_text(omit_final_dot=True)) for r in answer]
    if any(host in ("", ".") for _, host in records):  # RFC 7505 null MX: the domain takes no mail
        raise RouteError(f"domain {domain} does not accept mail (null MX)", permanent=True)
    return records


def resolve_host(host: str, cfg: Config, port: int) -> list[str]:
    """IPv6 and IPv4 addresses of `host`, through the configured DNS servers, else the system's
    resolver (which reads /etc/hosts too). Failures are temporary: an unresolvable smarthost must
    not bounce mail (C dma #30)."""
    if ":" in host or host.replace(".", "").isdigit():  # an IP address: nothing to look up
        return [host[5:] if host[:5].lower() == "ipv6:" else host]  # a relay written `[IPv6:...]`
    if not cfg.dns_servers:
        import socket

        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise RouteError(f"can not resolve {host}: {e.strerror}", permanent=False) from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    import dns.exception
    import dns.resolver

    res = _resolver(cfg)
    addresses: list[str] = []
    failure: str | None = None
    for rdtype in ("AAAA", "A"):
        try:
            addresses += [r.to_text() for r in res.resolve(host, rdtype, search=False)]
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except dns.exception.DNSException as e:
            # One family failing (a resolver that chokes on AAAA) must not hide the other's addresses.
            failure = f"can not resolve {host}: {e}"
    if not addresses:
        raise RouteError(failure or f"host {host} not found", permanent=False)
    return addresses

"""Remote delivery policy: which host to try next, with which TLS and credentials.

Rust does the SMTP session (a `Connection` carries whole transactions of claimed entries, and
stays open for the runner's connection cache); this module builds each destination's `Settings`
from the configuration, moves on to the next MX host when a host cannot be used at all, and turns
the per-recipient results into outcomes for the queue runner.
"""

from __future__ import annotations

from dma import _native

from .routes import choose
from .routing import RouteError, Target, recipient_domain, targets_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

    from .log import Log
    from .routes import Route

# Failures that say nothing about the message: another host may well take it.
_TRY_NEXT_HOST = {"connect", "tls", "greeting", "ehlo", "starttls", "auth"}


class Destination:
    """Where a group of recipients goes: a ROUTE, the SMARTHOST, or a domain's MX hosts.

    Recipients with equal keys go to the same hosts with the same settings, so their messages
    may share connections.
    """

    __slots__ = ("domain", "key", "route")

    def __init__(self, route: Route | None, domain: str, key: str) -> None:
        self.route = route
        self.domain = domain
        self.key = key


def destination(cfg: Config, sender: str, recipient: str) -> Destination:
    domain = recipient_domain(recipient).lower()
    route = choose(cfg.routes, sender, recipient)
    if route is not None:
        return Destination(route, domain, f"route {route.line}" + ("" if route.hosts else f" {domain}"))
    return Destination(None, domain, "smarthost" if cfg.smarthost else domain)


def tls_mode(cfg: Config, route: Route | None = None) -> str:
    if route is not None and route.tls is not None:
        return route.tls
    if not cfg.securetransfer:
        return "none"
    if not cfg.starttls:
        return "implicit"
    return "opportunistic" if cfg.opportunistic_tls else "starttls"


def xoauth2_token(cfg: Config) -> str:
    """Run XOAUTH2_COMMAND (no shell) and return the token it prints."""
    import subprocess

    argv = cfg.xoauth2_command or []
    try:
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RouteError(f"XOAUTH2_COMMAND failed: {e}", permanent=False) from None
    token = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0 or not token or "\n" in token:
        raise RouteError(f"XOAUTH2_COMMAND exited {done.returncode} without a token", permanent=False)
    return token


def credentials(
    cfg: Config, host: str, route: Route | None = None, rejected: str | None = None
) -> tuple[str | None, str | None, list[str] | None]:
    """(login, secret, mechanisms) from auth.conf for `host`; XOAUTH2 when a token command is set,
    OAuth2 (oauth.py) or a secret kept elsewhere for a `{...}` password. `rejected`: the secret
    the server just refused, to be renewed."""
    found = cfg.auth().lookup(host, route.login if route is not None else None)
    if found is None:
        return None, None, None
    login, password = found
    if cfg.xoauth2_command:
        return login, xoauth2_token(cfg), ["XOAUTH2"]
    if password.startswith("{"):
        from .oauth import resolve

        return (login, *resolve(cfg, password, rejected))
    return login, password, None


def describe(outcome: _native.Outcome, host: str, address: str | None) -> str:
    """One line for logs and bounces: who said what at which stage."""
    where = f"{host} [{address}]" if address else host
    if outcome.code:
        enhanced = f" {outcome.enhanced}" if outcome.enhanced else ""
        return f"{where} said at {outcome.stage}: {outcome.code}{enhanced} {outcome.text}"
    return f"{where}: {outcome.stage}: {outcome.text}"


def targets(cfg: Config, dest: Destination) -> list[Target]:
    route = dest.route
    if route is None or not route.hosts:
        return targets_for(dest.domain, cfg, mx=route is not None)
    return targets_for(dest.domain, cfg, hosts=route.hosts)


def failed_all(groups: list[list[str]], status: str, text: str) -> dict[str, tuple[str, str]]:
    return {eid: (status, text) for ids in groups for eid in ids}


class Link:
    """An open connection to one host of a destination, kept between batches (the cache)."""

    __slots__ = ("conn", "failure", "target")

    def __init__(self, conn: _native.Connection, target: Target) -> None:
        self.conn: _native.Connection | None = conn  # None once the connection broke
        self.target = target
        self.failure: _native.Outcome | None = None  # why it broke


def deliver(
    cfg: Config,
    spool: _native.Spool,
    dest: Destination,
    groups: list[list[str]],
    link: Link | None = None,
    *,
    verbose: bool = False,
    events: Log | None = None,
) -> tuple[dict[str, tuple[str, str]], Link | None]:
    """Deliver `groups` (claimed entry ids, one group per message; all for `dest`): over `link`
    when given and still good, else to each host, and each of its addresses, in turn while the
    failure is one another host may not have (refused, 4xx greeting, TLS, AUTH). Returns entry
    id -> (status, text), and the connection left open for more mail, if any."""
    outcomes: dict[str, tuple[str, str]] = {}
    pending = groups
    if link is not None:
        pending = attempt(spool, link, pending, outcomes, events)
        if not pending:
            return outcomes, link if link.conn is not None else None
    try:
        hosts = targets(cfg, dest)
    except RouteError as e:
        outcomes.update(failed_all(pending, "permanent" if e.permanent else "temporary", str(e)))
        return outcomes, None
    for target in hosts:
        try:
            creds = credentials(cfg, target.name, dest.route)
        except RouteError as e:
            outcomes.update(failed_all(pending, "temporary", str(e)))
            return outcomes, None
        for address in target.addresses:
            for renewed in (False, True):
                setup = settings(cfg, target, [address], dest.route, creds, verbose, journal=True)
                link = Link(_native.Connection(setup), target)
                pending = attempt(spool, link, pending, outcomes, events)
                if not pending:
                    return outcomes, link if link.conn is not None else None
                fresh = None if renewed else renew(cfg, target, dest.route, creds, link.failure)
                if fresh is None:
                    break
                creds = fresh
    return outcomes, None


def renew(
    cfg: Config,
    target: Target,
    route: Route | None,
    creds: tuple[str | None, str | None, list[str] | None],
    failure: _native.Outcome | None,
) -> tuple[str | None, str | None, list[str] | None] | None:
    """After the server refused a token at AUTH (expired early, revoked): renewed credentials to
    try once more, or None."""
    _, secret, mechanisms = creds
    if not (mechanisms and secret and failure is not None and failure.stage == "auth" and failure.code):
        return None
    try:
        return credentials(cfg, target.name, route, secret)
    except RouteError:
        return None


def attempt(
    spool: _native.Spool,
    link: Link,
    groups: list[list[str]],
    outcomes: dict[str, tuple[str, str]],
    events: Log | None,
) -> list[list[str]]:
    """One `send` over `link`: record its outcomes; return what another host should still try.
    A connection that broke is dropped from the link."""
    assert link.conn is not None
    result = link.conn.send(spool, groups)
    link.failure = result.failure
    if result.failure is not None:
        link.conn = None
    if events is not None:
        log_attempt(events, link.target, result)
    retry_elsewhere: list[list[str]] = []
    for ids in groups:
        again = []
        for eid in ids:
            outcome = result.entries[eid]
            outcomes[eid] = (outcome.status, describe(outcome, link.target.name, result.address))
            if outcome.status == "temporary" and outcome.stage in _TRY_NEXT_HOST:
                again.append(eid)
        if again:
            retry_elsewhere.append(again)
    return retry_elsewhere


def settings(
    cfg: Config,
    target: Target,
    addresses: list[str],
    route: Route | None,
    creds: tuple[str | None, str | None, list[str] | None] = (None, None, None),
    verbose: bool = False,
    *,
    journal: bool = False,
) -> _native.Settings:
    """The session settings for `target` with this configuration's (or `route`'s) TLS and AUTH;
    `journal`: confirmed recipients go to the spool's delivered journal."""
    login, secret, mechanisms = creds
    return _native.Settings(
        target.name,
        addresses,
        target.port,
        cfg.helo_name or cfg.mailname,
        tls=tls_mode(cfg, route),
        verify_cert=cfg.verifycert if route is None or route.verify is None else route.verify,
        ca_file=cfg.cafile,
        fingerprint=route.fingerprint if route is not None and route.fingerprint else cfg.fingerprint,
        client_cert=cfg.certfile,
        login=login,
        secret=secret,
        mechanisms=mechanisms,
        allow_insecure_auth=cfg.insecure,
        connect_timeout=cfg.connect_timeout,
        command_timeout=cfg.timeout,
        verbose=verbose,
        journal=cfg.spooldir if journal else None,
    )


def log_attempt(events: Log, target: Target, result: _native.SessionResult) -> None:
    statuses = [o.status for results in result.results for o in results]
    sent, deferred, failed = (statuses.count(s) for s in ("sent", "temporary", "permanent"))
    events.event(
        "info",
        "attempt",
        f"{target.name} [{result.address or '-'}]:{target.port} tls={result.tls_version or 'none'}"
        f" auth={result.auth_mechanism or 'none'}: {sent} sent, {deferred} deferred, {failed} failed",
        host=target.name,
        address=result.address,
        port=target.port,
        tls=result.tls_version,
        auth=result.auth_mechanism,
        sent=sent,
        deferred=deferred,
        failed=failed,
    )

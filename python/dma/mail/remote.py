"""Remote delivery policy: which host to try next, with which TLS and credentials. Rust does the
SMTP session; a `Connection` stays open for the runner's connection cache."""

from __future__ import annotations

from dma import _native
from dma.errors import RouteError

from .routing import Target, choose, targets_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from dma.config import Config, Route

    from .log import Log

    Link = tuple[_native.Connection, Target]  # an open connection to one host of a destination
    Creds = Optional[tuple[str, str, Optional[list[str]]]]  # (login, secret, mechanisms), or none

# Failures that say nothing about the message: another host may well take it.
_TRY_NEXT_HOST = {"connect", "tls", "greeting", "ehlo", "starttls", "auth"}


class Destination:
    """A ROUTE, the SMARTHOST, or a domain's MX hosts. Recipients with equal keys go to the same
    hosts with the same settings, so their messages may share connections."""

    __slots__ = ("domain", "key", "route")

    def __init__(self, cfg: Config, sender: str, recipient: str) -> None:
        self.domain = recipient.rpartition("@")[2].lower()
        self.route = route = choose(cfg.routes, sender, recipient)
        if route is not None:
            self.key = f"route {route.line}" + ("" if route.hosts else f" {self.domain}")
        else:
            self.key = "smarthost" if cfg.smarthost else self.domain


def tls_mode(cfg: Config, route: Route | None = None) -> str:
    if route is not None and route.tls is not None:
        return route.tls
    if not cfg.securetransfer:
        return "none"
    if not cfg.starttls:
        return "implicit"
    return "opportunistic" if cfg.opportunistic_tls else "starttls"


def credentials(cfg: Config, host: str, route: Route | None = None, rejected: str | None = None) -> Creds:
    """(login, secret, mechanisms) from auth.conf for `host`, if any; XOAUTH2_COMMAND, if set, wins.
    `rejected`: the secret the server just refused, to be renewed."""
    found = cfg.auth().lookup(host, route.login if route is not None else None)
    if found is None:
        return None
    login, password = found
    if not (cfg.xoauth2_command or password.startswith("{")):
        return login, password, None
    from . import oauth

    if cfg.xoauth2_command:
        return login, oauth.run(cfg.xoauth2_command, 60, "XOAUTH2_COMMAND", "a token"), ["XOAUTH2"]
    if password.startswith("{oauth2}"):
        return login, oauth.access_token(cfg, password[8:], rejected), ["OAUTHBEARER", "XOAUTH2"]
    return login, oauth.secret(password), None


def renew(
    cfg: Config, target: Target, route: Route | None, creds: Creds, failure: _native.Outcome | None
) -> Creds:
    """Credentials to try once more after the server refused a token at AUTH (expired, revoked)."""
    _, secret, mechanisms = creds or (None, None, None)
    if not (mechanisms and secret and failure is not None and failure.stage == "auth" and failure.code):
        return None
    try:
        return credentials(cfg, target.name, route, secret)
    except RouteError:
        return None


def describe(outcome: _native.Outcome, host: str, address: str | None) -> str:
    """One line for logs and bounces: who said what at which stage."""
    where = f"{host} [{address}]" if address else host
    if outcome.code:
        enhanced = f" {outcome.enhanced}" if outcome.enhanced else ""
        return f"{where} said at {outcome.stage}: {outcome.code}{enhanced} {outcome.text}"
    return f"{where}: {outcome.stage}: {outcome.text}"


def settings(
    cfg: Config,
    target: Target,
    addresses: list[str],
    route: Route | None,
    creds: Creds,
    verbose: bool,
) -> _native.Connection:
    """The connection (not yet open) to `target` with this configuration's (or `route`'s) TLS and AUTH."""
    return _native.Connection(
        host=target.name,
        addresses=addresses,
        port=target.port,
        helo=cfg.helo_name or cfg.mailname,
        tls={
            "mode": tls_mode(cfg, route),
            "verify_cert": cfg.verifycert if route is None or route.verify is None else route.verify,
            "ca_file": cfg.cafile,
            "fingerprint": route.fingerprint if route is not None and route.fingerprint else cfg.fingerprint,
            "client_cert": cfg.certfile,
        },
        credentials=creds,
        allow_insecure_auth=cfg.insecure,
        connect_timeout=cfg.connect_timeout,
        command_timeout=cfg.timeout,
        verbose=verbose,
    )


def deliver(
    cfg: Config,
    spool: _native.Spool,
    dest: Destination,
    groups: list[list[str]],
    link: Link | None,
    events: Log,
    *,
    verbose: bool = False,
) -> tuple[dict[str, tuple[str, str]], Link | None]:
    """Deliver `groups` (entry ids, one group per message) over `link`, else to each host and address
    of `dest` while another host may do better; entry id -> (status, text), and the open connection."""
    outcomes: dict[str, tuple[str, str]] = {}

    def attempt(conn: _native.Connection, target: Target) -> _native.Outcome | None:
        """One `send`: record its outcomes, keep in `groups` what another host should still try."""
        nonlocal groups
        result = conn.send(spool, groups)
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
        elsewhere: set[str] = set()
        for eid, outcome in zip([e for ids in groups for e in ids], [o for tx in result.results for o in tx]):
            outcomes[eid] = (outcome.status, describe(outcome, target.name, result.address))
            if outcome.status == "temporary" and outcome.stage in _TRY_NEXT_HOST:
                elsewhere.add(eid)
        groups = [kept for kept in ([eid for eid in ids if eid in elsewhere] for ids in groups) if kept]
        return result.failure

    if link is not None:
        failure = attempt(*link)
        if not groups:
            return outcomes, None if failure else link
    try:
        for target in targets_for(dest.domain, cfg, dest.route):
            creds = credentials(cfg, target.name, dest.route)
            for address in target.addresses:
                for renewed in (False, True):
                    conn = settings(cfg, target, [address], dest.route, creds, verbose)
                    failure = attempt(conn, target)
                    if not groups:
                        return outcomes, None if failure else (conn, target)
                    fresh = None if renewed else renew(cfg, target, dest.route, creds, failure)
                    if fresh is None:
                        break
                    creds = fresh
    except RouteError as e:  # no host (or none left), or no credentials (always temporary)
        status = "permanent" if e.permanent else "temporary"
        outcomes.update({eid: (status, str(e)) for ids in groups for eid in ids})
    return outcomes, None

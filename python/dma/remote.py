"""Remote delivery policy: which host to try next, with which TLS and credentials.

Rust does the SMTP session (one call per connection, several whole transactions in it); this module
builds the calls from the configuration, moves on to the next MX host when a host cannot be used at
all, and turns the per-recipient results into outcomes for the queue runner.
"""

from __future__ import annotations

import subprocess

from . import _native
from .routes import choose
from .routing import RouteError, Target, recipient_domain, targets_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Config
    from .log import Log
    from .routes import Route

# Failures that say nothing about the message: another host may well take it.
_TRY_NEXT_HOST = {"connect", "tls", "greeting", "ehlo", "starttls", "auth"}


class Transaction:
    """One message to some of its recipients: the entries share the message file."""

    __slots__ = ("dsn", "entry_ids", "message_path", "recipients", "sender")

    def __init__(self, sender: str, message_path: str, dsn: str = "") -> None:
        self.sender = sender
        self.message_path = message_path
        self.dsn = dsn
        self.recipients: list[str] = []
        self.entry_ids: list[str] = []


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


def failed_all(transactions: list[Transaction], status: str, text: str) -> dict[str, tuple[str, str]]:
    return {eid: (status, text) for t in transactions for eid in t.entry_ids}


def deliver(
    cfg: Config,
    dest: Destination,
    transactions: list[Transaction],
    *,
    verbose: bool = False,
    events: Log | None = None,
) -> dict[str, tuple[str, str]]:
    """Deliver `transactions` (all for `dest`); returns entry id -> (status, text).

    Each host, and each of its addresses, is tried in turn while the failure is one another host
    may not have (refused, 4xx greeting, TLS, AUTH); each try is one `attempt` event.
    """
    try:
        hosts = targets(cfg, dest)
    except RouteError as e:
        return failed_all(transactions, "permanent" if e.permanent else "temporary", str(e))
    outcomes: dict[str, tuple[str, str]] = {}
    pending = transactions
    route = dest.route
    for target in hosts:
        try:
            login, secret, mechanisms = credentials(cfg, target.name, route)
        except RouteError as e:
            outcomes.update(failed_all(pending, "temporary", str(e)))
            return outcomes
        for address in target.addresses:
            result = session(
                cfg,
                target,
                [address],
                pending,
                route=route,
                auth=(login, secret, mechanisms),
                verbose=verbose,
            )
            if events is not None:
                log_attempt(events, target, result)
            pending = take_results(pending, result, target.name, outcomes)
            if not pending:
                return outcomes
    return outcomes


def session(
    cfg: Config,
    target: Target,
    addresses: list[str],
    transactions: list[Transaction],
    *,
    route: Route | None = None,
    auth: tuple[str | None, str | None, list[str] | None] = (None, None, None),
    verbose: bool = False,
) -> _native.SessionResult:
    """One SMTP connection to `target` with this configuration's (or `route`'s) TLS and AUTH,
    carrying `transactions`; without any it only probes (connects, EHLO, STARTTLS, AUTH, QUIT)."""
    login, secret, mechanisms = auth
    for renewed in (False, True):
        result = _native.smtp_session(
            target.name,
            addresses,
            target.port,
            cfg.helo_name or cfg.mailname,
            [(t.sender, t.recipients, t.message_path) for t in transactions],
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
            journal=cfg.spooldir if transactions else None,
            journal_ids=[t.entry_ids for t in transactions],
            dsn=[t.dsn for t in transactions],
        )
        failure = result.failure
        if renewed or not (mechanisms and secret and failure and failure.stage == "auth" and failure.code):
            break
        # A token refused (expired early, revoked): renew it once and try again.
        try:
            login, secret, mechanisms = credentials(cfg, target.name, route, secret)
        except RouteError:
            break
    return result


def take_results(
    pending: list[Transaction], result: _native.SessionResult, host: str, outcomes: dict[str, tuple[str, str]]
) -> list[Transaction]:
    """Record a session's outcomes; return what another host or address should still try."""
    retry_elsewhere: list[Transaction] = []
    for transaction, results in zip(pending, result.results):
        again = Transaction(transaction.sender, transaction.message_path, transaction.dsn)
        for rcpt, eid, outcome in zip(transaction.recipients, transaction.entry_ids, results):
            outcomes[eid] = (outcome.status, describe(outcome, host, result.address))
            if outcome.status == "temporary" and outcome.stage in _TRY_NEXT_HOST:
                again.recipients.append(rcpt)
                again.entry_ids.append(eid)
        if again.recipients:
            retry_elsewhere.append(again)
    return retry_elsewhere


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

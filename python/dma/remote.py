"""Remote delivery policy: which host to try next, with which TLS and credentials.

Rust does the SMTP session (one call per connection, several whole transactions in it); this module
builds the calls from the configuration, moves on to the next MX host when a host cannot be used at
all, and turns the per-recipient results into outcomes for the queue runner.
"""

from __future__ import annotations

import subprocess

from . import _native
from .routing import RouteError, recipient_domain, targets_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Config
    from .log import Log

# Failures that say nothing about the message: another host may well take it.
_TRY_NEXT_HOST = {"connect", "tls", "greeting", "ehlo", "starttls", "auth"}


class Transaction:
    """One message to some of its recipients: the entries share the message file."""

    __slots__ = ("entry_ids", "message_path", "recipients", "sender")

    def __init__(self, sender: str, message_path: str) -> None:
        self.sender = sender
        self.message_path = message_path
        self.recipients: list[str] = []
        self.entry_ids: list[str] = []


def route_key(recipient: str, cfg: Config) -> str:
    """Recipients with the same key go to the same hosts and may share a connection."""
    return "" if cfg.smarthost else recipient_domain(recipient).lower()


def tls_mode(cfg: Config) -> str:
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


def credentials(cfg: Config, host: str) -> tuple[str | None, str | None, list[str] | None]:
    """(login, secret, mechanisms) from auth.conf for `host`; XOAUTH2 when a token command is set."""
    found = cfg.auth().lookup(host)
    if found is None:
        return None, None, None
    login, password = found
    if cfg.xoauth2_command:
        return login, xoauth2_token(cfg), ["XOAUTH2"]
    return login, password, None


def describe(outcome: _native.Outcome, host: str, address: str | None) -> str:
    """One line for logs and bounces: who said what at which stage."""
    where = f"{host} [{address}]" if address else host
    if outcome.code:
        enhanced = f" {outcome.enhanced}" if outcome.enhanced else ""
        return f"{where} said at {outcome.stage}: {outcome.code}{enhanced} {outcome.text}"
    return f"{where}: {outcome.stage}: {outcome.text}"


def deliver(
    cfg: Config,
    key: str,
    transactions: list[Transaction],
    *,
    verbose: bool = False,
    events: Log | None = None,
) -> dict[str, tuple[str, str]]:
    """Deliver `transactions` (all for route `key`); returns entry id -> (status, text).

    Each connection attempt is one `attempt` event: the host, what TLS and AUTH it had, and how
    many recipients it took.
    """
    outcomes: dict[str, tuple[str, str]] = {}
    try:
        targets = targets_for(key, cfg)
    except RouteError as e:
        status = "permanent" if e.permanent else "temporary"
        return {eid: (status, str(e)) for t in transactions for eid in t.entry_ids}
    pending = transactions
    for target in targets:
        try:
            login, secret, mechanisms = credentials(cfg, target.name)
        except RouteError as e:
            return {eid: ("temporary", str(e)) for t in pending for eid in t.entry_ids}
        result = _native.smtp_session(
            target.name,
            target.addresses,
            target.port,
            cfg.helo_name or cfg.mailname,
            [(t.sender, t.recipients, t.message_path) for t in pending],
            tls=tls_mode(cfg),
            verify_cert=cfg.verifycert,
            ca_file=cfg.cafile,
            fingerprint=cfg.fingerprint,
            client_cert=cfg.certfile,
            login=login,
            secret=secret,
            mechanisms=mechanisms,
            allow_insecure_auth=cfg.insecure,
            connect_timeout=cfg.connect_timeout,
            command_timeout=cfg.timeout,
            verbose=verbose,
            journal=cfg.spooldir,
            journal_ids=[t.entry_ids for t in pending],
        )
        if events is not None:
            statuses = [o.status for results in result.results for o in results]
            events.event(
                "info",
                "attempt",
                f"{target.name} [{result.address or '-'}]:{target.port} tls={result.tls_version or 'none'}"
                f" auth={result.auth_mechanism or 'none'}: {statuses.count('sent')} sent,"
                f" {statuses.count('temporary')} deferred, {statuses.count('permanent')} failed",
                host=target.name,
                address=result.address,
                port=target.port,
                tls=result.tls_version,
                auth=result.auth_mechanism,
                sent=statuses.count("sent"),
                deferred=statuses.count("temporary"),
                failed=statuses.count("permanent"),
            )
        retry_elsewhere: list[Transaction] = []
        for transaction, results in zip(pending, result.results, strict=True):
            again = Transaction(transaction.sender, transaction.message_path)
            for rcpt, eid, outcome in zip(
                transaction.recipients, transaction.entry_ids, results, strict=True
            ):
                outcomes[eid] = (outcome.status, describe(outcome, target.name, result.address))
                if outcome.status == "temporary" and outcome.stage in _TRY_NEXT_HOST:
                    again.recipients.append(rcpt)
                    again.entry_ids.append(eid)
            if again.recipients:
                retry_elsewhere.append(again)
        pending = retry_elsewhere
        if not pending:
            break
    return outcomes

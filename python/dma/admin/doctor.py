"""`dma doctor`: check the configuration and the way out, one finding a line (docs/dma.8)."""

from __future__ import annotations

import os
import pwd
import stat
from typing import Any, Callable, TypeVar

from dma import config
from dma.config import Config, Route
from dma.errors import EX_CONFIG, ConfigError, Fatal, RouteError, getopts
from dma.mail.aliases import Aliases
from dma.mail.local import DeliveryFailure, expand_maildir
from dma.mail.message import strip_local_domain
from dma.mail.oauth import renew_now
from dma.mail.remote import Destination, credentials, describe, renew, settings, tls_mode
from dma.mail.routing import RecipientResolver, Target, targets_for

USAGE = "usage: dma doctor [-C FILE] [-v] [-n] [ADDRESS...]"
T = TypeVar("T")


class Report:
    """Called with each finding: prints it (never a known secret) and keeps the exit status."""

    def __init__(self) -> None:
        self.code = 0
        self.secrets: list[str] = []

    def __call__(self, status: str, topic: str, text: str, *details: str, config: bool = False) -> None:
        if status == "FAIL":
            self.code = max(self.code, EX_CONFIG if config else 1)
        for line in (f"{status:<4}  {topic:<9} {text}", *(f"{'':15} {detail}" for detail in details)):
            for secret in self.secrets:
                line = line.replace(secret, "<hidden>")
            print(line, flush=True)

    def attempt(self, topic: str, prefix: str, check: Callable[..., T], *args: Any) -> T | None:
        """`check(*args)`, or None after a FAIL line that says why."""
        try:
            return check(*args)
        except (Fatal, RouteError) as e:
            self("FAIL", topic, prefix + str(e), config=isinstance(e, ConfigError))
            return None


def command(prog: str, name: str, args: list[str]) -> int:
    opts, addresses = getopts(args, USAGE, "vnC:")
    report = Report()
    try:
        cfg = config.Config(opts.get("-C"))
    except Fatal as e:
        path = opts.get("-C") or os.environ.get("DMA_CONF") or config.DEFAULT_CONF
        report("FAIL", "config", f"{path}: can not be used", str(e), config=True)
        return e.code
    check_config(cfg, report)
    check_aliases(cfg, report)
    check_auth(cfg, report)
    targets = check_routes(cfg, addresses, report)
    if "-n" not in opts:
        for target, route in targets:
            probe(cfg, target, route, report, verbose="-v" in opts)
    elif targets:
        report("INFO", "smtp", "not connecting (-n)")
    return report.code


def check_config(cfg: Config, report: Report) -> None:
    mode = "user mode" if cfg.user_mode else "system mode"
    why = "euid is not 0" if os.geteuid() != 0 else "running as root"
    if cfg.file_exists:
        report("PASS", "config", f"{cfg.path} loaded ({mode}: {why})")
    else:
        report("WARN", "config", f"{cfg.path} does not exist: every default applies ({mode}: {why})")
    if cfg.smarthost:
        route = f"SMARTHOST {cfg.smarthost} PORT {cfg.port}"
    else:
        route = "no SMARTHOST: remote mail goes to each domain's MX hosts on port 25"
    report("INFO", "settings", f"MAILNAME {cfg.mailname}", route, f"TLS: {describe_tls(cfg)}")
    check_dir(report, "spool", cfg.spooldir, creatable=cfg.user_mode)
    if cfg.maildir:
        report("INFO", "mailbox", f"Maildir {cfg.maildir} (per user)")
    else:
        check_dir(report, "mailbox", cfg.mboxdir, creatable=cfg.user_mode)


def describe_tls(cfg: Config) -> str:
    mode = tls_mode(cfg)
    text = {
        "none": "none (SECURETRANSFER not set)",
        "implicit": "TLS from the first byte (SECURETRANSFER)",
        "starttls": "STARTTLS required",
        "opportunistic": "STARTTLS when offered (OPPORTUNISTIC_TLS)",
    }[mode]
    if mode == "none":
        return text
    checks = []
    if cfg.verifycert:
        checks.append("certificate verified (VERIFYCERT" + (f", CAFILE {cfg.cafile})" if cfg.cafile else ")"))
    if cfg.fingerprint:
        checks.append(f"pinned FINGERPRINT {cfg.fingerprint.hex()}")
    return f"{text}; {'; '.join(checks) or 'certificate not checked'}"


def check_dir(report: Report, topic: str, path: str, *, creatable: bool) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if creatable:
            report("INFO", topic, f"{path} does not exist yet (created on first use in user mode)")
        else:
            report("FAIL", topic, f"{path} does not exist")
    except OSError as e:
        report("FAIL", topic, f"{path}: {e.strerror or e}")
    else:
        if not stat.S_ISDIR(st.st_mode):
            report("FAIL", topic, f"{path} is not a directory")
        elif not os.access(path, os.W_OK | os.X_OK):
            report("FAIL", topic, f"{path} exists but is not writable by uid {os.geteuid()}")
        else:
            report("PASS", topic, f"{path} exists and is writable")


def check_aliases(cfg: Config, report: Report) -> None:
    if cfg.nullclient:
        report("INFO", "aliases", "not used (NULLCLIENT)")
        return
    aliases = report.attempt("aliases", "", Aliases, cfg.aliases)
    if aliases is None:
        return
    if not os.path.exists(cfg.aliases):
        report("INFO", "aliases", f"{cfg.aliases} does not exist (no aliases)")
        return
    problems = aliases.check()
    for problem in problems:
        report("FAIL", "aliases", str(problem), config=True)
    if not problems:
        report("PASS", "aliases", f"{cfg.aliases}: {len(aliases)} aliases, all deliverable")


def check_auth(cfg: Config, report: Report) -> None:
    if not cfg.authpath:
        report("INFO", "auth.conf", "AUTHPATH not set: no SMTP AUTH")
        return
    table = report.attempt("auth.conf", "", cfg.auth)
    if table is None:
        return
    report("PASS", "auth.conf", f"{cfg.authpath} readable: credentials for {len(table)} host(s)")
    private(report, "auth.conf", cfg.authpath)
    if table and not (cfg.verifycert or cfg.fingerprint):
        report(
            "WARN" if cfg.insecure else "FAIL",
            "auth.conf",
            "AUTH without VERIFYCERT or FINGERPRINT: a man in the middle gets the password"
            + (" (INSECURE)" if cfg.insecure else ""),
            "fix: VERIFYCERT (and CAFILE for a private CA), or FINGERPRINT; INSECURE takes the risk",
        )
    for host in [h for h, _ in cfg.smarthosts() if table.lookup(h) is None]:
        report("INFO", "auth.conf", f"no credentials for the smarthost `{host}' (hosts match exactly)")
    for login, host, password in table.items():
        if password.startswith("{oauth2}"):
            if os.path.exists(password[8:]):
                private(report, "oauth2", password[8:])
            renewed = report.attempt("oauth2", f"{login}|{host}: ", renew_now, cfg, password[8:])
            if renewed is not None:
                report("PASS", "oauth2", f"{login}|{host}: {renewed}")


def private(report: Report, topic: str, path: str) -> None:
    """Warn when a file of secrets is readable by others or not owned by the runner's user."""
    st = os.stat(path)
    euid = os.geteuid()
    if st.st_mode & 0o077:
        report(
            "WARN",
            topic,
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: readable by group or others",
            f"fix: chmod 600 {path}",
        )
    if st.st_uid != euid:
        report("WARN", topic, f"{path} is owned by uid {st.st_uid}, not by the queue runner's uid {euid}")


def check_routes(cfg: Config, addresses: list[str], report: Report) -> list[tuple[Target, Route | None]]:
    """Print where each address (or the smarthost) goes; returns the hosts to probe, with their ROUTE."""
    found: dict[tuple[str, int], tuple[Target, Route | None]] = {}
    if not addresses and not cfg.smarthost:
        report("INFO", "route", "no SMARTHOST and no ADDRESS given: nothing to connect to")
    elif not addresses:
        return check_remote(cfg, "remote mail", "", report)
    resolver = RecipientResolver(cfg)
    for given in addresses:
        address = strip_local_domain(given, cfg.mailname)
        expanded = report.attempt("route", f"{given}: ", resolver.resolve, [address])
        if expanded is None:
            continue
        expands = "@" not in address and expanded != [address]
        if expands and cfg.nullclient:
            report("INFO", "route", f"{given}: NULLCLIENT sends it to the smarthost as {expanded[0]}")
        elif expands or ("@" not in address and address in Aliases(cfg.aliases)):  # `root: root` too
            report("INFO", "route", f"{given}: alias, expands to {', '.join(expanded)}")
        indent = "  " if expands and not cfg.nullclient else ""
        for rcpt in expanded:
            if "@" in rcpt:
                for t, route in check_remote(cfg, indent + rcpt, rcpt, report):
                    found.setdefault((t.name, t.port), (t, route))
            else:
                report("PASS", "route", f"{indent}{rcpt} -> local {mailbox_of(cfg, rcpt)}")
    return list(found.values())


def check_remote(cfg: Config, label: str, address: str, report: Report) -> list[tuple[Target, Route | None]]:
    """Print the hosts mail to a remote `address` goes to, as `label`'s; returns them, with their ROUTE.
    No ROUTE matches the empty address: its hosts are the smarthost's."""
    dest = Destination(cfg, "", address)
    hosts = report.attempt("route", f"{label}: ", targets_for, dest.domain, cfg, dest.route)
    if hosts is None:
        return []
    route = dest.route
    via = f" (ROUTE at line {route.line})" if route is not None else ""
    if (route is not None and route.hosts) or (route is None and cfg.smarthost):
        t = hosts[0]
        kind = "smarthost" if route is None else "relay"
        text, details = f"{kind} {t.name} port {t.port}", [", ".join(t.addresses)]
    else:
        text = f"{len(hosts)} host(s) for {dest.domain}, port 25"
        details = [f"MX {t.preference} {t.name}: {', '.join(t.addresses)}" for t in hosts]
    report("PASS", "route", f"{label} -> {text}{via}", *details)
    return [(t, route) for t in hosts]


def mailbox_of(cfg: Config, user: str) -> str:
    if not cfg.maildir:
        return "mbox " + os.path.join(cfg.mboxdir, user)
    try:
        return "Maildir " + expand_maildir(cfg.maildir, pwd.getpwnam(user))
    except (KeyError, DeliveryFailure):
        return f"Maildir {cfg.maildir}"


def probe(cfg: Config, target: Target, route: Route | None, report: Report, *, verbose: bool) -> None:
    """One SMTP session to `target` that sends no mail; prints what the server offers."""
    where = f"{target.name} port {target.port}"
    creds = report.attempt("auth", f"{where}: ", credentials, cfg, target.name, route)
    login, secret, mechanisms = creds or (None, None, None)
    if secret and len(secret) >= 3:  # shorter ones would hide letters of every word
        report.secrets.append(secret)
    mode = tls_mode(cfg, route)
    try:
        # A probe: no transactions, so greeting, EHLO, STARTTLS, AUTH and QUIT; no mail.
        result = settings(cfg, target, target.addresses, route, creds, verbose).session([])
        fresh = renew(cfg, target, route, creds, result.failure)
        if fresh is not None:  # a token refused: renewed once, as the runner does
            result = settings(cfg, target, target.addresses, route, fresh, verbose).session([])
    except ValueError as e:
        report("FAIL", "smtp", f"{where}: {e}")
        return
    outcome = result.failure
    ok = outcome is None
    if result.address is None:
        report("FAIL", "connect", f"{where}: {outcome.text if outcome else 'no connection'}")
        return
    report("PASS", "connect", f"{target.name} [{result.address}] port {target.port}")
    if result.extensions:
        report("INFO", "ehlo", ", ".join(result.extensions))
    if outcome is not None:
        report("FAIL", outcome.stage, describe(outcome, target.name, result.address))
        if outcome.stage == "auth" and outcome.code == 535 and "OAUTHBEARER" in (mechanisms or ()):
            report(
                "INFO",
                "auth",
                "the server refused a freshly issued token: SMTP AUTH is disabled for this mailbox"
                " (Microsoft 365 default: enable Authenticated SMTP for it), or the scope lacks SMTP",
            )
    if result.tls_version is not None:
        how = "from the first byte" if mode == "implicit" else "after STARTTLS"
        report("PASS", "tls", f"{result.tls_version} {result.tls_cipher} ({how})")
    elif mode == "opportunistic" and ok:
        report("WARN", "tls", "not used: the server offers no STARTTLS (OPPORTUNISTIC_TLS: plain text)")
    elif mode == "none" and ok:
        report("INFO", "tls", "not used (SECURETRANSFER not set)")
    # Also the certificate a failed check refused: what the server presents instead.
    cert_lines(cfg, result.peer_cert_sha256, report, verified=ok)
    if not ok:
        return
    offered = "AUTH" in result.extensions  # EHLO keywords only, not AUTH's list of mechanisms
    if login is None:
        if offered:
            report("INFO", "auth", "the server offers AUTH; auth.conf has no credentials for this host")
    elif result.auth_mechanism:
        report("PASS", "auth", f"AUTH {result.auth_mechanism} as {login} accepted")
    else:
        if not offered:
            why = "the server offers no AUTH" + ("" if result.tls_version else " (before TLS, at least)")
        elif result.tls_version is None:
            why = "no TLS, and INSECURE is not set: the password is never sent in clear"
        else:
            why = "no mechanism in common with the server's"
        report("WARN", "auth", f"credentials for {login} not used: {why}")


def cert_lines(cfg: Config, sha256: str | None, report: Report, *, verified: bool) -> None:
    if sha256 is None:
        return
    report("INFO", "cert", f"SHA-256 {sha256}", f"dma.conf: FINGERPRINT {sha256}")
    if cfg.fingerprint == bytes.fromhex(sha256):
        report("PASS", "cert", "matches FINGERPRINT")
    elif cfg.fingerprint is not None:
        report("FAIL", "cert", f"does not match FINGERPRINT {cfg.fingerprint.hex()}")
    if verified and cfg.verifycert:
        report("PASS", "cert", "chain and host name verified (VERIFYCERT)")
    elif verified and cfg.fingerprint is None:
        report("WARN", "cert", "not verified: set VERIFYCERT (and CAFILE for a private CA), or FINGERPRINT")

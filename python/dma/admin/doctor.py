"""`dma doctor [-C FILE] [-v] [-n] [ADDRESS...]`: check the configuration and the way out.

One line per finding, `PASS`, `WARN`, `FAIL` or `INFO`, then indented details. Checks, in order:
dma.conf (path, mode, spool and mailbox directories), the aliases file, auth.conf (readable, not
readable by others, owned by the queue runner's user), then the route of each ADDRESS (local
mailbox, alias expansion, smarthost or MX hosts) or of the smarthost, and for each remote host a
real SMTP session without mail: connect, EHLO, STARTTLS, AUTH, QUIT. `-v` shows that dialogue on
stderr (credentials hidden); `-n` shows the routes without connecting.

Exit status: 0 when nothing failed, 78 (EX_CONFIG) when a configuration file is broken, 1 for any
other failure (a host that cannot be used, an address without a route).
"""

from __future__ import annotations

import os
import stat
import sys

from dma.errors import EX_CONFIG, EX_USAGE, ConfigError, Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from dma import _native
    from dma.config import Config
    from dma.mail.routes import Route
    from dma.mail.routing import Target

USAGE = "usage: dma doctor [-C FILE] [-v] [-n] [ADDRESS...]"


class Report:
    """Prints findings and remembers whether anything failed. Never prints a known secret."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False
        self.config_broken = False
        self.secrets: list[str] = []

    def line(self, status: str, topic: str, text: str, *details: str) -> None:
        if status == "FAIL":
            self.failed = True
        self.out.write(self.scrub(f"{status:<4}  {topic:<9} {text}\n"))
        for detail in details:
            self.out.write(self.scrub(f"{'':15} {detail}\n"))
        self.out.flush()

    def passed(self, topic: str, text: str, *details: str) -> None:
        self.line("PASS", topic, text, *details)

    def warn(self, topic: str, text: str, *details: str) -> None:
        self.line("WARN", topic, text, *details)

    def fail(self, topic: str, text: str, *details: str, config: bool = False) -> None:
        self.config_broken |= config
        self.line("FAIL", topic, text, *details)

    def info(self, topic: str, text: str, *details: str) -> None:
        self.line("INFO", topic, text, *details)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if len(secret) >= 3:
                text = text.replace(secret, "<hidden>")
        return text

    @property
    def code(self) -> int:
        if self.config_broken:
            return EX_CONFIG
        return 1 if self.failed else 0


class Options:
    __slots__ = ("addresses", "config", "connect", "verbose")

    def __init__(self) -> None:
        self.config: str | None = None
        self.verbose = False
        self.connect = True
        self.addresses: list[str] = []


def parse_args(args: list[str]) -> Options:
    import getopt

    try:
        pairs, rest = getopt.getopt(args, "hvnC:", ["help"])
    except getopt.GetoptError as e:
        raise Fatal(EX_USAGE, f"{e} ({USAGE})") from None
    opts = Options()
    for flag, value in pairs:
        if flag in ("-h", "--help"):
            raise Fatal(EX_USAGE, USAGE)
        if flag == "-v":
            opts.verbose = True
        elif flag == "-n":
            opts.connect = False
        else:
            opts.config = value
    opts.addresses = rest
    return opts


def command(prog: str, name: str, args: list[str]) -> int:
    opts = parse_args(args)
    return run(opts, sys.stdout)


def run(opts: Options, out: TextIO) -> int:
    from dma import config

    report = Report(out)
    try:
        cfg = config.load(opts.config)
    except Fatal as e:
        path = opts.config or os.environ.get("DMA_CONF") or config.DEFAULT_CONF
        report.fail("config", f"{path}: can not be used", str(e), config=True)
        return e.code
    check_config(cfg, report)
    check_aliases(cfg, report)
    check_auth(cfg, report)
    targets = check_routes(cfg, opts.addresses, report)
    if opts.connect:
        for target, route in targets:
            probe(cfg, target, report, verbose=opts.verbose, route=route)
    elif targets:
        report.info("smtp", "not connecting (-n)")
    return report.code


# ---- configuration files ------------------------------------------------------------------------


def check_config(cfg: Config, report: Report) -> None:
    mode = "user mode" if cfg.user_mode else "system mode"
    why = "euid is not 0" if os.geteuid() != 0 else "running as root"
    if cfg.file_exists:
        report.passed("config", f"{cfg.path} loaded ({mode}: {why})")
    else:
        report.warn("config", f"{cfg.path} does not exist: every default applies ({mode}: {why})")
    details = [f"MAILNAME {cfg.mailname}"]
    if cfg.smarthost:
        details.append(f"SMARTHOST {cfg.smarthost} PORT {cfg.port}")
    else:
        details.append("no SMARTHOST: remote mail goes to each domain's MX hosts on port 25")
    details.append(f"TLS: {describe_tls(cfg)}")
    report.info("settings", details[0], *details[1:])
    check_dir(report, "spool", cfg.spooldir, creatable=cfg.user_mode)
    if cfg.maildir:
        report.info("mailbox", f"Maildir {cfg.maildir} (per user)")
    else:
        check_dir(report, "mailbox", cfg.mboxdir, creatable=cfg.user_mode)


def describe_tls(cfg: Config) -> str:
    from dma.mail.remote import tls_mode

    mode = tls_mode(cfg)
    text = {
        "none": "none (SECURETRANSFER not set)",
        "implicit": "TLS from the first byte (SECURETRANSFER)",
        "starttls": "STARTTLS required",
        "opportunistic": "STARTTLS when offered (OPPORTUNISTIC_TLS)",
    }[mode]
    if mode != "none":
        checks = []
        if cfg.verifycert:
            checks.append(
                "certificate verified (VERIFYCERT" + (f", CAFILE {cfg.cafile})" if cfg.cafile else ")")
            )
        if cfg.fingerprint:
            checks.append(f"pinned FINGERPRINT {cfg.fingerprint.hex()}")
        text += "; " + ("; ".join(checks) if checks else "certificate not checked")
    return text


def check_dir(report: Report, topic: str, path: str, *, creatable: bool) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if creatable:
            report.info(topic, f"{path} does not exist yet (created on first use in user mode)")
        else:
            report.fail(topic, f"{path} does not exist")
        return
    except OSError as e:
        report.fail(topic, f"{path}: {e.strerror or e}")
        return
    if not stat.S_ISDIR(st.st_mode):
        report.fail(topic, f"{path} is not a directory")
    elif not os.access(path, os.W_OK | os.X_OK):
        report.fail(topic, f"{path} exists but is not writable by uid {os.geteuid()}")
    else:
        report.passed(topic, f"{path} exists and is writable")


def check_aliases(cfg: Config, report: Report) -> None:
    from dma.mail.aliases import parse

    if cfg.nullclient:
        report.info("aliases", "not used (NULLCLIENT)")
        return
    try:
        aliases = parse(cfg.aliases)
    except ConfigError as e:
        report.fail("aliases", str(e), config=True)
        return
    except Fatal as e:
        report.fail("aliases", str(e))
        return
    if not os.path.exists(cfg.aliases):
        report.info("aliases", f"{cfg.aliases} does not exist (no aliases)")
        return
    problems = aliases.check()
    for problem in problems:
        report.fail("aliases", str(problem), config=True)
    if not problems:
        report.passed("aliases", f"{cfg.aliases}: {len(aliases)} aliases, all deliverable")


def check_auth(cfg: Config, report: Report) -> None:
    from dma.mail.authconf import load_auth

    if not cfg.authpath:
        report.info("auth.conf", "AUTHPATH not set: no SMTP AUTH")
        return
    path = cfg.authpath
    try:
        table = load_auth(path)
    except ConfigError as e:
        report.fail("auth.conf", str(e), config=True)
        return
    except Fatal as e:
        report.fail("auth.conf", str(e))
        return
    report.passed("auth.conf", f"{path} readable: credentials for {len(table)} host(s)")
    private(report, "auth.conf", path)
    if table and not (cfg.verifycert or cfg.fingerprint):
        # C dma's default, but a man in the middle then gets the password: refused unless INSECURE.
        (report.warn if cfg.insecure else report.fail)(
            "auth.conf",
            "AUTH without VERIFYCERT or FINGERPRINT: a man in the middle gets the password"
            + (" (INSECURE)" if cfg.insecure else ""),
            "fix: VERIFYCERT (and CAFILE for a private CA), or FINGERPRINT; INSECURE takes the risk",
        )
    for host in [h for h, _ in cfg.smarthosts() if table.lookup(h) is None]:
        report.info("auth.conf", f"no credentials for the smarthost `{host}' (hosts match exactly)")
    from dma.mail.oauth import renew_now
    from dma.mail.routing import RouteError

    for login, host, password in table.items():
        if password.startswith("{oauth2}"):
            if os.path.exists(password[8:]):
                private(report, "oauth2", password[8:])
            try:
                report.passed("oauth2", f"{login}|{host}: {renew_now(cfg, password[8:])}")
            except (RouteError, Fatal) as e:
                report.fail("oauth2", f"{login}|{host}: {e}")


def private(report: Report, topic: str, path: str) -> None:
    """Warn when a file of secrets is readable by others or not owned by the runner's user."""
    st = os.stat(path)
    euid = os.geteuid()
    if st.st_mode & 0o077:
        report.warn(
            topic,
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: readable by group or others",
            f"fix: chmod 600 {path}",
        )
    if st.st_uid != euid:
        report.warn(topic, f"{path} is owned by uid {st.st_uid}, not by the queue runner's uid {euid}")


# ---- routes -------------------------------------------------------------------------------------


def check_routes(cfg: Config, addresses: list[str], report: Report) -> list[tuple[Target, Route | None]]:
    """Print where each address goes; returns the remote hosts to probe (with the ROUTE that
    leads there, if one does), without repeats."""
    from dma.mail.remote import destination, targets
    from dma.mail.routing import RouteError, targets_for

    found_hosts: dict[tuple[str, int], tuple[Target, Route | None]] = {}

    def remote(address: str, indent: str) -> None:
        dest = destination(cfg, "", address)
        try:
            found = targets(cfg, dest)
        except RouteError as e:
            report.fail("route", f"{indent}{address}: {e}")
            return
        route = dest.route
        via = f" (ROUTE at line {route.line})" if route is not None else ""
        if (route is not None and route.hosts) or (route is None and cfg.smarthost):
            t = found[0]
            kind = "smarthost" if route is None else "relay"
            report.passed("route", f"{indent}{address} -> {kind} {t.name} port {t.port}{via}", addrs(t))
        else:
            report.passed(
                "route",
                f"{indent}{address} -> {len(found)} host(s) for {dest.domain}, port 25{via}",
                *(f"MX {t.preference} {t.name}: {addrs(t)}" for t in found),
            )
        for t in found:
            found_hosts.setdefault((t.name, t.port), (t, route))

    if not addresses:
        if cfg.smarthost:
            try:
                t = targets_for("", cfg)[0]
            except RouteError as e:
                report.fail("route", f"smarthost {cfg.smarthost}: {e}")
            else:
                report.passed("route", f"smarthost {t.name} port {t.port}: {addrs(t)}")
                found_hosts[(t.name, t.port)] = (t, None)
        else:
            report.info("route", "no SMARTHOST and no ADDRESS given: nothing to connect to")
        return list(found_hosts.values())
    for given in addresses:
        route_one(cfg, given, report, remote)
    return list(found_hosts.values())


def addrs(target: Target) -> str:
    return ", ".join(target.addresses)


def route_one(cfg: Config, given: str, report: Report, remote: Callable[[str, str], None]) -> None:
    from dma.mail.local import is_local_user
    from dma.mail.message import strip_local_domain

    address = strip_local_domain(given, cfg.mailname)
    if "@" in address:
        remote(address, "")
        return
    if cfg.nullclient:
        report.info("route", f"{given}: NULLCLIENT sends it to the smarthost as {address}@{cfg.mailname}")
        remote(f"{address}@{cfg.mailname}", "")
        return
    from dma.mail.aliases import parse

    try:
        aliases = parse(cfg.aliases)
        expanded = aliases.expand(address, is_local_user=is_local_user, wildcard=True, mailname=cfg.mailname)
    except Fatal as e:
        report.fail("route", f"{given}: {e}")
        return
    if expanded != [address] or address in aliases:
        report.info("route", f"{given}: alias, expands to {', '.join(expanded)}")
    for rcpt in expanded:
        if "@" in rcpt:
            remote(rcpt, "  ")
        else:
            report.passed(
                "route", f"{'  ' if expanded != [address] else ''}{rcpt} -> local {mailbox_of(cfg, rcpt)}"
            )


def mailbox_of(cfg: Config, user: str) -> str:
    import pwd

    if cfg.maildir:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return f"Maildir {cfg.maildir}"
        path = cfg.maildir
        if path == "~" or path.startswith("~/"):
            path = pw.pw_dir + path[1:]
        return "Maildir " + path.replace("%u", pw.pw_name)
    return "mbox " + os.path.join(cfg.mboxdir, user)


# ---- SMTP ---------------------------------------------------------------------------------------


def probe(cfg: Config, target: Target, report: Report, *, verbose: bool, route: Route | None = None) -> None:
    """One SMTP session to `target` that sends no mail; prints what the server offers."""
    from dma import _native
    from dma.mail.remote import credentials, describe, renew, settings, tls_mode
    from dma.mail.routing import RouteError

    where = f"{target.name} port {target.port}"
    try:
        login, secret, mechanisms = credentials(cfg, target.name, route)
    except (RouteError, Fatal) as e:
        report.fail("auth", f"{where}: {e}")
        login = secret = mechanisms = None
    if secret:
        report.secrets.append(secret)
    mode = tls_mode(cfg, route)
    try:
        # A probe: no transactions, so greeting, EHLO, STARTTLS, AUTH and QUIT; no mail.
        creds = (login, secret, mechanisms)
        result = _native.smtp_session(settings(cfg, target, target.addresses, route, creds, verbose), [])
        fresh = renew(cfg, target, route, creds, result.failure)
        if fresh is not None:  # a token refused: renewed once, as the runner does
            result = _native.smtp_session(settings(cfg, target, target.addresses, route, fresh, verbose), [])
    except ValueError as e:
        report.fail("smtp", f"{where}: {e}")
        return
    outcome = result.failure
    ok = outcome is None
    if result.address is None:
        report.fail("connect", f"{where}: {outcome.text if outcome else 'no connection'}")
        return
    report.passed("connect", f"{target.name} [{result.address}] port {target.port}")
    if result.extensions:
        report.info("ehlo", ", ".join(result.extensions))
    if outcome is not None:
        report.fail(outcome.stage, describe(outcome, target.name, result.address))
        if outcome.stage == "auth" and outcome.code == 535 and "OAUTHBEARER" in (mechanisms or ()):
            report.info(
                "auth",
                "the server refused a freshly issued token: SMTP AUTH is disabled for this mailbox"
                " (Microsoft 365 default: enable Authenticated SMTP for it), or the scope lacks SMTP",
            )
        if outcome.stage == "tls" and result.tls_version is None:
            inspect(cfg, target, mode, report)
    tls_lines(cfg, mode, result, report, ok=ok)
    if ok:
        auth_line(login, result, report)


def tls_lines(cfg: Config, mode: str, result: _native.SessionResult, report: Report, *, ok: bool) -> None:
    if result.tls_version is None:
        if mode == "opportunistic" and ok:
            report.warn("tls", "not used: the server offers no STARTTLS (OPPORTUNISTIC_TLS: plain text)")
        elif mode == "none" and ok:
            report.info("tls", "not used (SECURETRANSFER not set)")
        return
    how = "from the first byte" if mode == "implicit" else "after STARTTLS"
    report.passed("tls", f"{result.tls_version} {result.tls_cipher} ({how})")
    cert_lines(cfg, result.peer_cert_sha256, report, verified=ok)


def cert_lines(cfg: Config, sha256: str | None, report: Report, *, verified: bool) -> None:
    if sha256 is None:
        return
    report.info("cert", f"SHA-256 {sha256}", f"dma.conf: FINGERPRINT {sha256}")
    if cfg.fingerprint is not None:
        if bytes.fromhex(sha256) == cfg.fingerprint:
            report.passed("cert", "matches FINGERPRINT")
        else:
            report.fail("cert", f"does not match FINGERPRINT {cfg.fingerprint.hex()}")
    if verified and cfg.verifycert:
        report.passed("cert", "chain and host name verified (VERIFYCERT)")
    elif verified and cfg.fingerprint is None:
        report.warn("cert", "not verified: set VERIFYCERT (and CAFILE for a private CA), or FINGERPRINT")


def inspect(cfg: Config, target: Target, mode: str, report: Report) -> None:
    """After a TLS failure: handshake again without any check, and no credentials, to show the
    certificate the server presents (as posttls-finger does)."""
    from dma import _native

    try:
        seen = _native.smtp_session(
            _native.Settings(
                target.name,
                target.addresses,
                target.port,
                cfg.helo_name or cfg.mailname,
                tls=mode,
                connect_timeout=cfg.connect_timeout,
                command_timeout=cfg.timeout,
            ),
            [],
        )
    except ValueError:
        return
    if seen.tls_version is not None:
        report.info("tls", f"without certificate checks: {seen.tls_version} {seen.tls_cipher}")
        cert_lines(cfg, seen.peer_cert_sha256, report, verified=False)


def auth_line(login: str | None, result: _native.SessionResult, report: Report) -> None:
    # The transport reports EHLO keywords only: "AUTH", not its list of mechanisms.
    offered = "AUTH" in result.extensions
    if login is None:
        if offered:
            report.info("auth", "the server offers AUTH; auth.conf has no credentials for this host")
        return
    if result.auth_mechanism:
        report.passed("auth", f"AUTH {result.auth_mechanism} as {login} accepted")
        return
    if not offered:
        why = "the server offers no AUTH" + ("" if result.tls_version else " (before TLS, at least)")
    elif result.tls_version is None:
        why = "no TLS, and INSECURE is not set: the password is never sent in clear"
    else:
        why = "no mechanism in common with the server's"
    report.warn("auth", f"credentials for {login} not used: {why}")

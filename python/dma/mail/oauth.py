"""OAuth2 for SMTP AUTH and secrets kept elsewhere (docs/configuration.md). With a good cached
token the runner reads one small file under a lock; json, ssl and urllib only ask the endpoint."""

from __future__ import annotations

import fcntl
import os
import sys
import time

from dma import _native
from dma.config import Config
from dma.errors import EX_CONFIG, EX_UNAVAILABLE, EX_USAGE, ConfigError, Fatal, RouteError, getopts, read_text

MARGIN = 300  # renew an access token this many seconds before it expires
MS = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/"
PRESETS: dict[str, dict[str, str]] = {
    "google": {
        "auth_endpoint": "https://accounts.google.com/o/oauth2/v2/auth",
        "token_endpoint": "https://oauth2.googleapis.com/token",
        "scope": "https://mail.google.com/",
        "redirect_uri": "http://localhost",
        "smtp": "smtp.gmail.com 587",
    },
    "microsoft": {
        "auth_endpoint": MS + "authorize",
        "token_endpoint": MS + "token",
        "device_endpoint": MS + "devicecode",
        "scope": "https://outlook.office.com/SMTP.Send offline_access",
        "smtp": "smtp.office365.com 587",
    },
    "generic": {},
}
KEYS = {"provider", "tenant", "client_id", "client_secret", "refresh_token", "redirect_uri"}
KEYS.update(PRESETS["microsoft"])
HINTS = {
    "invalid_grant": "the refresh token was revoked or has expired: run `dma oauth login` again",
    "unauthorized_client": "this client id may not use this grant: check the app registration",
    "invalid_client": "the provider does not know this client id, or the client secret is wrong",
}


class OAuthError(RouteError):
    """A token could not be had: mail waits (a temporary failure) and the text says what to do."""

    def __init__(self, text: str, error: str = "") -> None:
        hint = HINTS.get(error)
        super().__init__(f"{text} ({hint})" if hint else text, permanent=False)
        self.error = error


def run(argv: list[str], timeout: int, what: str, wanted: str) -> str:
    """The one line `argv` prints; an error shows its stderr, never its stdout (the secret)."""
    import subprocess

    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise OAuthError(f"{what} failed: {e}") from None
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode or not out or "\n" in out:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        tail = f": {err[-1]}" if err else ""
        raise OAuthError(f"{what} exited {done.returncode} without {wanted}{tail}")
    return out


def secret(value: str) -> str:
    """`{command}ARGV`'s one line of output, `{credential}NAME`'s file, or `value` itself."""
    if value.startswith("{credential}"):
        name = value[12:]
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder or "/" in name:
            raise OAuthError(f"no systemd credential `{name}' (unit without LoadCredential={name}?)")
        try:
            return read_text(f"{folder}/{name}").strip()
        except OSError as e:
            raise OAuthError(f"can not read credential `{name}': {e.strerror}") from None
    if not value.startswith("{command}"):
        return value
    import shlex

    argv = shlex.split(value[9:])
    return run(argv, 30, f"secret command {argv[:1]}", "one line of output")


def read_credential(path: str, presets: bool = True) -> dict[str, str]:
    """The file's fields, with the provider's preset if `presets`; secrets not yet run."""
    try:
        lines = read_text(path).splitlines()
    except OSError as e:
        raise OAuthError(f"can not read OAuth2 credential `{path}': {e.strerror}") from None
    fields = {}
    for lineno, line in enumerate(lines, 1):
        key, _, value = line.strip().partition(" ")
        if not key or key.startswith("#"):
            continue
        if key not in KEYS or not value.strip():
            raise ConfigError(path, lineno, key, "unknown key" if key not in KEYS else "missing value")
        fields[key] = value.strip()
    return expand(path, fields) if presets else fields


def expand(path: str, fields: dict[str, str]) -> dict[str, str]:
    provider = fields.setdefault("provider", "generic")
    if provider not in PRESETS:
        raise ConfigError(path, None, "provider", f"`{provider}' is none of {', '.join(PRESETS)}")
    out = {**PRESETS[provider], **fields}
    tenant = out.get("tenant", "common")
    for key, value in out.items():
        out[key] = value.replace("{tenant}", tenant)
        if key.endswith("_endpoint") and not value.startswith("https://"):
            raise ConfigError(path, None, key, "must be an https:// URL")
    for key in ("client_id", "token_endpoint"):
        if key not in out:
            raise ConfigError(path, None, key, "missing")
    return out


def cache_path(cfg: Config, credential: str) -> str:
    return f"{cfg.spooldir}/oauth-{credential.strip('/').replace('/', '_')}"


def read_cache(path: str, origin: str | None = None) -> dict[str, str]:
    """The cache's fields; {} if missing, unreadable, not ours, readable by others or of another `origin`."""
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW)) as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o177077 != 0o100000:
                return {}
            text = f.read(65536).decode(errors="replace")
    except OSError:
        return {}
    fields = dict(line.partition(" ")[::2] for line in text.splitlines())
    return fields if origin in (None, fields.get("origin")) else {}


def write_fields(path: str, fields: dict[str, str], uid: int = -1) -> None:
    """Replace `path` by a 0600 file of `key value` lines: temporary file, fsync, rename, fsync dir."""
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)  # a crash's leftover
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            os.fchown(fd, uid, -1)
            f.write("".join(f"{k} {v}\n" for k, v in fields.items()))
            f.flush()
            os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def access_token(cfg: Config, credential: str, rejected: str | None = None) -> str:
    """The cached access token unless it is `rejected` or expires within MARGIN, else a new one;
    the lock makes processes that find the same stale token refresh it once."""
    _native.no_core_dumps()
    cache = cache_path(cfg, credential)
    fields = read_credential(credential)
    if "refresh_token" not in fields:
        raise OAuthError("no refresh_token in the OAuth2 credential: run `dma oauth login` first")
    try:
        lock = os.open(f"{cache}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise OAuthError(f"can not lock the OAuth2 token cache {cache}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entry = read_cache(cache, fields["refresh_token"])
        if entry.get("access", rejected) != rejected and int(entry.get("expires", 0)) - time.time() > MARGIN:
            return entry["access"]
        refresh_token = entry.get("refresh") or secret(fields["refresh_token"])
        try:
            answer = grant(cfg, fields, grant_type="refresh_token", refresh_token=refresh_token)
        except OAuthError as e:
            if e.error != "invalid_grant" or not entry:
                raise
            # The rotated token we kept is dead; the file's may be a new login's.
            refresh_token = secret(fields["refresh_token"])
            answer = grant(cfg, fields, grant_type="refresh_token", refresh_token=refresh_token)
        lifetime = answer.get("expires_in", "")
        expires = int(time.time()) + (int(lifetime) if lifetime.isdigit() else 3600)
        entry = {"origin": fields["refresh_token"], "refresh": answer.get("refresh_token") or refresh_token}
        entry.update(access=answer["access_token"], expires=str(expires))
        try:
            write_fields(cache, entry)
        except OSError as e:
            # The refresh token on disk is still the one in use (a provider keeps it valid until the
            # new one is first used), so the mail waits and the next try asks again.
            raise OAuthError(f"can not store the OAuth2 token cache {cache}: {e.strerror}") from None
        return entry["access"]
    finally:
        os.close(lock)


def grant(cfg: Config, fields: dict[str, str], **form: str) -> dict[str, str]:
    form["client_id"] = fields["client_id"]
    if "client_secret" in fields:
        form["client_secret"] = secret(fields["client_secret"])
    if "scope" in fields and form["grant_type"] == "refresh_token":
        form["scope"] = fields["scope"]
    answer = post(cfg, fields["token_endpoint"], form)
    tokens = [answer.get("access_token", ""), answer.get("refresh_token", "x")]
    if not all(t.isprintable() and t.strip() and " " not in t for t in tokens):
        raise OAuthError("the token endpoint's answer holds no well-formed access_token")
    return answer


def post(cfg: Config, url: str, form: dict[str, str]) -> dict[str, str]:
    """POST a form over verified HTTPS (system store plus CAFILE); the JSON answer's strings.
    An error names the endpoint and the OAuth2 error code, never a value that was sent."""
    import json
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    ctx = ssl.create_default_context()
    host = urllib.parse.urlsplit(url).netloc
    try:
        if cfg.cafile:
            ctx.load_verify_locations(cfg.cafile)
        data = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(url, data, {"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout, context=ctx) as r:
                status, body = r.status, r.read(1 << 20)
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read(1 << 20)
    except OSError as e:  # URLError, timeouts, TLS failures
        raise OAuthError(f"token endpoint {host}: {getattr(e, 'reason', None) or e}") from None
    try:
        answer = json.loads(body)
        error = str(answer.get("error", ""))
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        raise OAuthError(f"token endpoint {host} answered HTTP {status} without JSON") from None
    if error or status != 200:
        raise OAuthError(f"token endpoint {host} answered HTTP {status} {error or 'no error code'}", error)
    return {k: str(v) for k, v in answer.items()}


USAGE = "usage: dma oauth [-C FILE] login PROVIDER CREDENTIAL-FILE | dma oauth [-C FILE] status"


def command(prog: str, name: str, args: list[str]) -> int:
    opts, args = getopts(args, USAGE, "C:")
    cfg = Config(opts.get("-C"))
    if args[:1] == ["login"] and len(args) == 3 and args[1] in PRESETS:
        try:
            login(cfg, args[1], args[2])
        except OAuthError as e:
            raise Fatal(EX_UNAVAILABLE, str(e)) from None
        return 0
    if args != ["status"]:
        raise Fatal(EX_USAGE, USAGE)
    failed = 0
    for user, host, password in cfg.auth().items():
        if not password.startswith("{oauth2}"):
            continue
        path = password[8:]
        try:
            fields = read_credential(path)
            print(f"{user}|{host}: {path}: {fields['provider']}, client id {fields['client_id']}")
            print(f"  token endpoint {fields['token_endpoint']}")
            expires = int(read_cache(cache_path(cfg, path)).get("expires", 0))
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires))
            print(f"  access token cached, expires {when}" if expires else "  no access token cached")
            print(f"  refresh: OK, {renew_now(cfg, path)}")
        except (OAuthError, Fatal) as e:
            print(f"  refresh: FAILED: {e}")
            failed = 1
    return failed


def renew_now(cfg: Config, path: str) -> str:
    """Force a refresh (`status`, doctor) and say what came of it, without a secret."""
    cache = cache_path(cfg, path)
    before = read_cache(cache)
    access_token(cfg, path, before.get("access", ""))
    after = read_cache(cache)
    minutes = (int(after["expires"]) - time.time()) / 60
    rotated = ", refresh token rotated" if before and after["refresh"] != before.get("refresh") else ""
    return f"new access token valid for {minutes:.0f} min{rotated}"


def login(cfg: Config, provider: str, path: str) -> None:
    """Get a first refresh token and write it into `path`, 0600, owned by the runner's user."""
    existing = read_credential(path, False) if os.path.exists(path) else {}
    existing["provider"] = provider
    if "client_id" not in existing:
        existing["client_id"] = ask("client id: ")
        if provider == "google":
            existing["client_secret"] = ask("client secret: ", hidden=True)
    fields = expand(path, existing)
    if "device_endpoint" in fields:
        answer = device_flow(cfg, fields)
    elif "auth_endpoint" in fields:
        answer = code_flow(cfg, fields)
    else:
        raise Fatal(EX_CONFIG, f"{path}: neither device_endpoint nor auth_endpoint: no way to log in")
    if not answer.get("refresh_token"):
        raise Fatal(EX_CONFIG, "the provider issued no refresh token (is `offline_access' in the scope?)")
    existing["refresh_token"] = answer["refresh_token"]
    write_fields(path, existing, os.stat(cfg.spooldir).st_uid if os.geteuid() == 0 else -1)
    host = fields.get("smtp", "HOST").split()[0]
    sys.stdout.write(f"{path}: refresh token stored; auth.conf: LOGIN|{host}:{{oauth2}}{path}\n")


def ask(prompt: str, *, hidden: bool = False) -> str:
    if hidden and sys.stdin.isatty():
        import getpass

        answer = getpass.getpass(prompt).strip()
    else:
        sys.stdout.flush()  # what was printed before the question (a pipe does not flush by itself)
        print(prompt, end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip()
    if not answer:
        raise Fatal(EX_USAGE, f"no answer to `{prompt.rstrip(': ')}'")
    return answer


def device_flow(cfg: Config, fields: dict[str, str]) -> dict[str, str]:
    """RFC 8628: show a code to enter on another device, then poll until the admin has."""
    form = {"client_id": fields["client_id"], "scope": fields.get("scope", "")}
    device = post(cfg, fields["device_endpoint"], form)
    uri = device.get("verification_uri") or device.get("verification_url", "")
    print(f"On any device, open {uri} and enter the code {device.get('user_code')}", flush=True)
    interval = float(device.get("interval") or 5)
    deadline = time.time() + float(device.get("expires_in") or 900)
    device_grant = "urn:ietf:params:oauth:grant-type:device_code"
    while time.time() < deadline:
        time.sleep(interval)
        try:
            return grant(cfg, fields, grant_type=device_grant, device_code=device.get("device_code", ""))
        except OAuthError as e:
            if e.error == "slow_down":
                interval += 5
            elif e.error != "authorization_pending":
                raise
    raise Fatal(EX_UNAVAILABLE, "the code was not entered in time")


def code_flow(cfg: Config, fields: dict[str, str]) -> dict[str, str]:
    """RFC 6749 authorization code with PKCE (RFC 7636): the admin pastes back where the browser went."""
    import base64
    import hashlib
    import secrets
    import urllib.parse

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {
        "response_type": "code",
        "client_id": fields["client_id"],
        "redirect_uri": fields.get("redirect_uri", "http://localhost"),
        "scope": fields.get("scope", ""),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": secrets.token_urlsafe(16),
        "access_type": "offline",
        "prompt": "consent",
    }
    sys.stdout.write(f"Open in a browser:\n{fields['auth_endpoint']}?{urllib.parse.urlencode(query)}\n")
    code = ask("then paste the address the browser was sent to (or the code): ")
    if "?" in code:
        got = urllib.parse.parse_qs(urllib.parse.urlsplit(code).query)
        if got.get("state") != [query["state"]]:
            raise Fatal(EX_USAGE, "that address is not the answer to this login (state differs)")
        if "code" not in got:
            raise Fatal(EX_CONFIG, f"the provider refused: {got.get('error', ['?'])[0]}")
        code = got["code"][0]
    form = {"code": code, "redirect_uri": query["redirect_uri"], "code_verifier": verifier}
    return grant(cfg, fields, grant_type="authorization_code", **form)


def credential_names(cfg: Config) -> list[str]:
    """The systemd credentials auth.conf and its OAuth2 files use (for `LoadCredential=`)."""
    try:
        values = [p for _, _, p in cfg.auth().items()]
    except Fatal:
        return []  # doctor explains it
    for value in list(values):
        if value.startswith("{oauth2}") and os.path.exists(value[8:]):
            values += read_credential(value[8:], False).values()
    return sorted({v[12:] for v in values if v.startswith("{credential}")})

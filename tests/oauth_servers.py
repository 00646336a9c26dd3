"""An OAuth2 token endpoint and an SMTP server that takes its tokens, both real, on loopback.

- `TokenServer`: HTTPS (a trustme certificate for 127.0.0.1) with the refresh-token, device-code
  and authorization-code (PKCE) grants. It issues, expires, rotates (as Microsoft does: the old
  refresh token stays valid until the new one is first used; `strict` kills it at issue, as some
  providers do) and revokes tokens, and fails on request in each way the tests need.
- `OAuthRecorder`: aiosmtpd handler accepting XOAUTH2 and OAUTHBEARER only with a token the
  TokenServer issued and that has not expired.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword
from smtp_servers import LOGIN, Recorder

CLIENT_ID = "dma-test-client"
CLIENT_SECRET = "client-Secret-never-logged"


class TokenServer:
    """Use as a context manager; `url` is the base (`/token`, `/device`)."""

    def __init__(self, ctx: ssl.SSLContext, *, expires_in: int = 3600, rotate: bool = True) -> None:
        self.expires_in = expires_in
        self.rotate = rotate
        self.strict = False
        self.fail: str | None = None
        self.grants: dict[str, bool] = {}
        self.previous: dict[str, str] = {}  # new refresh token -> the one it replaces
        self.access: dict[str, float] = {}
        self.requests: list[str] = []
        self.device_polls = 0
        self.codes: dict[str, str] = {}  # authorization code -> PKCE challenge
        self.on_issue: Callable[[], None] | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(size).decode()))
                status, body = server.answer(self.path, form)
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if body[:1] == "{" else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body.encode())
                except OSError:
                    pass  # the client was killed (the crash tests)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def new_grant(self) -> str:
        token = "rt-" + secrets.token_hex(12)
        self.grants[token] = True
        return token

    def valid(self, access_token: str) -> bool:
        return self.access.get(access_token, 0) > time.time()

    def revoke(self) -> None:
        self.grants = dict.fromkeys(self.grants, False)

    @property
    def live_grants(self) -> list[str]:
        return [t for t, ok in self.grants.items() if ok]

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        with self.lock:
            self.requests.append(form.get("grant_type", path))
            fail = self.fail
        if fail == "slow":
            time.sleep(4)
        failures = {
            "invalid_grant": (400, '{"error":"invalid_grant","error_description":"AADSTS70008: expired"}'),
            "unauthorized_client": (400, '{"error":"unauthorized_client"}'),
            "401": (401, '{"error":"invalid_client"}'),
            "500": (500, "Internal Server Error"),
            "json": (200, '{"access_token": "at-'),
            "token": (200, '{"access_token": "at-1\\r\\nQUIT", "expires_in": "soon"}'),
            "html": (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        }
        if fail in failures:
            return failures[fail]
        if form.get("client_id") != CLIENT_ID:
            return 401, '{"error":"invalid_client"}'
        with self.lock:
            if path == "/device":
                return 200, json.dumps(
                    {
                        "device_code": "dev-1",
                        "user_code": "WDJB-MJHT",
                        "expires_in": 60,
                        "interval": 0,
                        "verification_uri": "https://127.0.0.1/devicelogin",
                    }
                )
            return self.token(form)

    def token(self, form: dict[str, str]) -> tuple[int, str]:
        grant = form.get("grant_type")
        old = None
        if grant == "refresh_token":
            old = form.get("refresh_token", "")
            if not self.grants.get(old):
                return 400, '{"error":"invalid_grant","error_description":"revoked"}'
            # Using a refresh token retires the one it replaced.
            if old in self.previous:
                self.grants[self.previous.pop(old)] = False
        elif grant == "urn:ietf:params:oauth:grant-type:device_code":
            self.device_polls += 1
            if self.device_polls < 3:
                return 400, '{"error":"authorization_pending"}'
        elif grant == "authorization_code":
            challenge = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "").encode()
            mine = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            if challenge is None or challenge != mine:
                return 400, '{"error":"invalid_grant"}'
        else:
            return 400, '{"error":"unsupported_grant_type"}'
        access = "at-" + secrets.token_hex(12)
        self.access[access] = time.time() + self.expires_in
        answer: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if old is None or self.rotate:
            new = answer["refresh_token"] = self.new_grant()
            if old is not None:
                self.previous[new] = old
                if self.strict:
                    self.grants[old] = False
        if self.on_issue is not None:
            self.on_issue()
        return 200, json.dumps(answer)


@dataclass
class OAuthRecorder(Recorder):
    """Accepts XOAUTH2 and OAUTHBEARER with a token `valid()` says is good, nothing else."""

    valid: Callable[[str], bool] = lambda token: False
    cancels: list[bytes] = field(default_factory=list)

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        self.auth_seen.append("XOAUTH2")
        blob = base64.b64decode(args[1])
        user, _, rest = blob.partition(b"\x01auth=Bearer ")
        return await self.judge(server, user == f"user={LOGIN}".encode(), rest.rstrip(b"\x01"))

    async def auth_OAUTHBEARER(self, server: Any, args: list[str]) -> AuthResult:
        self.auth_seen.append("OAUTHBEARER")
        header, *pairs = base64.b64decode(args[1]).split(b"\x01")
        kv = dict(p.partition(b"=")[::2] for p in pairs if p)
        token = kv.get(b"auth", b"").removeprefix(b"Bearer ")
        ok_user = header == f"n,a={LOGIN},".encode() and b"host" in kv and b"port" in kv
        return await self.judge(server, ok_user, token)

    async def judge(self, server: Any, ok_user: bool, token: bytes) -> AuthResult:
        if ok_user and self.valid(token.decode()):
            return AuthResult(success=True, auth_data=LoginPassword(LOGIN.encode(), b""))
        # RFC 7628 3.2.2: a JSON error as a challenge; the client answers ^A (XOAUTH2: empty).
        self.cancels.append(await server.challenge_auth('{"status":"invalid_token","schemes":"bearer"}'))
        return AuthResult(success=False, handled=False, message="535 5.7.8 Authentication unsuccessful")

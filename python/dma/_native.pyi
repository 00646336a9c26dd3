# Type stub of the Rust extension (rust/src/py_api.rs declares the module, its docstrings say what
# each call does); `./dev lint` checks the two agree. Paths cross as `str`.
from typing import TypedDict, final

__version__: str

# ---- spool ----
@final
class Incoming:
    def __new__(cls, spooldir: str, durable: bool = True, name: str | None = None) -> Incoming: ...
    @property
    def id(self) -> str: ...
    def receive(
        self,
        source: int | bytes | SmtpStdin | tuple[bytes, str, bool, bytes],
        *,
        prefix: bytes,
        add_if_missing: list[bytes],
        dot_terminates: bool = False,
        collect_recipients: bool = False,
        rewrite_from: str | None = None,
    ) -> tuple[int, list[str]]: ...
    def commit(self, sender: str, recipients: list[str], dsn: str = ..., drop: bool = False) -> list[str]: ...
    def abort(self) -> None: ...
    @staticmethod
    def drop_envelope(text: bytes) -> tuple[str, list[str], str]: ...

@final
class SmtpStdin:
    def __new__(cls, fd: int) -> SmtpStdin: ...
    def command(self, max: int) -> tuple[bytes, bool] | None: ...
    def skip_data(self) -> None: ...

@final
class QueueEntry:
    id: str
    message_id: str
    sender: str
    recipient: str
    created: int
    size: int
    attempts: int
    next_attempt: int
    last_error: str
    state: str
    dsn: str

def check_address(address: str) -> str | None: ...
def scan_queue(spooldir: str, message_id: str | None = None) -> list[QueueEntry]: ...
def sync_spool(spooldir: str) -> None: ...
def syslog(ident: str, priority: int, text: str) -> None: ...

# ---- mailbox ----
def mbox_append(
    mbox: str, message: str, sender: str, when: str, create: tuple[int, int, int], lock_timeout: float
) -> None: ...
def maildir_deliver(maildir: str, message: int | str, hostname: str) -> str: ...

# ---- smtp ----
@final
class Outcome:
    status: str  # "sent" | "temporary" | "permanent"
    # "connect" "tls" "greeting" "ehlo" "starttls" "auth" "size" "mail" "rcpt" "data" "dot"
    stage: str
    code: int  # SMTP reply code, 0 when there was none (connect error, timeout, TLS, local check)
    enhanced: str | None  # "5.1.1"
    text: str  # the server's reply text, or our explanation; one line

@final
class SessionResult:
    results: list[list[Outcome]]  # a session failure before a transaction is all its recipients get
    address: str | None  # the address we connected to
    tls_version: str | None  # "TLSv1.3"
    tls_cipher: str | None
    peer_cert_sha256: str | None  # lower-case hex of the leaf certificate's SHA-256
    tls_resumed: bool  # the TLS session was resumed (a reconnection within one process)
    auth_mechanism: str | None  # None: not authenticated (not configured, not offered, or no TLS)
    extensions: list[str]  # EHLO keywords, upper case (after STARTTLS when TLS was started)
    failure: Outcome | None  # why the connection could not be used

class _TlsPolicy(TypedDict):
    mode: str  # "none" | "starttls" | "opportunistic" | "implicit"
    verify_cert: bool
    ca_file: str | None
    fingerprint: bytes | None  # SHA-256 of the leaf certificate, 32 bytes
    client_cert: str | None  # one PEM file: chain and private key

@final
class Connection:
    def __new__(
        cls,
        *,
        host: str,
        addresses: list[str],
        port: int,
        helo: str,
        tls: _TlsPolicy,
        connect_timeout: float,
        command_timeout: float,  # per reply, and for the whole set-up and each transaction
        # login, secret, mechanisms (None: CRAM-MD5, PLAIN, LOGIN; XOAUTH2 only if named)
        credentials: tuple[str, str, list[str] | None] | None,
        allow_insecure_auth: bool,
        verbose: bool,  # dialogue on stderr as "<<< " / ">>> " lines, credentials hidden
    ) -> Connection: ...
    def session(self, transactions: list[tuple[str, list[str], str]]) -> SessionResult: ...
    def send(self, spool: Spool, groups: list[list[str]]) -> SessionResult: ...
    def close(self) -> None: ...

@final
class Spool:
    def __new__(cls, spooldir: str, drop: str | None = None) -> Spool: ...
    def lock(self) -> bool: ...
    def unlock(self) -> None: ...
    def due(self, now: int, force: bool) -> tuple[list[QueueEntry], int | None, list[str]]: ...
    def claim(self, ids: list[str]) -> list[QueueEntry]: ...
    def message_path(self, id: str) -> str: ...
    def record(self, id: str, *, attempts: int, next_attempt: int, last_error: str, state: str) -> None: ...
    def remove(self, id: str) -> None: ...
    def release(self, id: str) -> None: ...
    def sync(self) -> None: ...
    def clean_stale(self, max_age: int) -> list[str]: ...
    def journal_take(self) -> tuple[list[str], list[str]]: ...
    def wait(self, timeout: float) -> tuple[bool, bool]: ...
    def notify(self) -> None: ...

def no_core_dumps() -> None: ...

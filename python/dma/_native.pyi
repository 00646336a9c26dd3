# Type stub of the Rust extension. Each part is owned by the module that uses it.
from os import PathLike

__version__: str

# ---- spool ----
class MessageInfo:
    input_bytes: int
    size: int
    eight_bit: bool
    recipient_headers: list[str]

class Incoming:
    def __init__(self, spooldir: str | PathLike[str]) -> None: ...
    @property
    def id(self) -> str: ...
    def receive(
        self,
        fd: int,
        *,
        prefix: bytes,
        add_if_missing: list[tuple[str, bytes]],
        dot_terminates: bool,
        collect_recipients: bool,
    ) -> MessageInfo: ...
    def commit(self, sender: str, recipients: list[str]) -> list[str]: ...
    def abort(self) -> None: ...

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

class Claim:
    @property
    def entry(self) -> QueueEntry: ...
    @property
    def message_path(self) -> str: ...
    def record(self, *, attempts: int, next_attempt: int, last_error: str, state: str) -> None: ...
    def remove(self) -> None: ...
    def release(self) -> None: ...

def scan_queue(spooldir: str | PathLike[str]) -> tuple[list[QueueEntry], list[str]]: ...
def claim(spooldir: str | PathLike[str], id: str) -> Claim | None: ...
def clean_stale(spooldir: str | PathLike[str], max_age: int) -> list[str]: ...


# ---- mailbox ----
def mbox_append(
    mbox: str | PathLike[str],
    message: str | PathLike[str],
    sender: str,
    when: str,
    create: tuple[int, int, int] | None = None,
    lock_timeout: float = 100.0,
) -> None: ...
def maildir_deliver(
    maildir: str | PathLike[str],
    message: str | PathLike[str],
    hostname: str,
    create: tuple[int, int] | None = None,
) -> str: ...

"""Logging: one syslog line per event (facility `mail`, the `-L` tag; through Rust, so a
submission's log line imports nothing), and the same event as a JSON line to `LOGFILE` when set.
Events never carry a password or token."""

from __future__ import annotations

import posix
import time

from dma import _native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

# syslog(3) levels.
_PRIORITIES = {"crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6}
_ESCAPES = {**{c: f"\\u{c:04x}" for c in range(32)}, ord('"'): '\\"', ord("\\"): "\\\\"}


def _json(value: str | int | None) -> str:
    if value is None or isinstance(value, int):
        return "null" if value is None else str(value)
    # backslashreplace writes a lone surrogate as its JSON escape, `\udcff`
    return '"' + value.translate(_ESCAPES).encode("utf-8", "backslashreplace").decode() + '"'


def json_line(fields: dict[str, str | int | None]) -> str:
    """A flat JSON object on one line, without importing `json` (which imports `re`)."""
    return "{" + ", ".join(f"{_json(key)}: {_json(value)}" for key, value in fields.items()) + "}\n"


class Log:
    """Where this process's events go. `tag` is the syslog identity (`-L`, default `dma`)."""

    def __init__(self, cfg: Config, tag: str = "dma") -> None:
        self.tag = tag
        self.logfile = cfg.logfile

    def event(self, level: str, event: str, text: str, **fields: str | int | None) -> None:
        """`text` is the human line; `fields` are the structured details (also in the JSON)."""
        queue_id = fields.get("id")
        _native.syslog(self.tag, _PRIORITIES.get(level, 6), f"{queue_id}: {text}" if queue_id else text)
        if not self.logfile:
            return
        record: dict[str, str | int | None] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tag": self.tag,
            "pid": posix.getpid(),
            "level": level,
            "event": event,
            **fields,
            "text": text,
        }
        flags = posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC
        # The event has happened (mail queued, sent): a LOGFILE that fails must not fail it too.
        fd = 2
        try:
            if self.logfile != "-":
                fd = posix.open(self.logfile, flags, 0o640)
            posix.write(fd, json_line(record).encode())  # one O_APPEND write: concurrent lines stay whole
        except OSError as e:
            _native.syslog(self.tag, 3, f"can not write LOGFILE {self.logfile}: {e.strerror}")  # err
        finally:
            if fd != 2:
                posix.close(fd)

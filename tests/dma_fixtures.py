"""Shared helpers for the command-line tests: a private dma.conf, spool, mbox dir and aliases file
per test, and a runner for the real installed programs (`sendmail`, `mailq`, `newaliases`, `dma`).

Tests run as root, so `config.Config()` would use the system paths: every run here gets
`DMA_CONF` (and `DMA_STATE_DIR`) pointing into the test's own directory.

Use it from a test module with `from dma_fixtures import dma_env  # noqa: F401`.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dma import _native

BIN = Path(sys.executable).parent
ME = pwd.getpwuid(os.getuid()).pw_name
MAILNAME = "mail.example"


def closed_port() -> int:
    """A local TCP port with nobody listening (connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def program(name: str) -> str:
    path = BIN / name
    if not path.exists():  # pragma: no cover - a broken install, not a test outcome
        raise RuntimeError(f"{path} is missing: install the package in {BIN.parent}")
    return str(path)


class DmaEnv:
    """One test's dma world. `run()` runs a real program with this world's config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.mboxdir = root / "mail"
        self.state = root / "state"
        self.aliases = root / "aliases"
        self.conf = root / "dma.conf"
        # Remote delivery never leaves the machine: a smarthost that refuses connections (a
        # temporary failure), so no test depends on DNS or the network.
        self.smarthost = f"SMARTHOST 127.0.0.1\nPORT {closed_port()}"
        for d in (self.spool, self.mboxdir, self.state):
            d.mkdir(parents=True, exist_ok=True)
        self.aliases.write_text("")
        self.write_conf()
        self.env = {k: v for k, v in os.environ.items() if k not in ("EMAIL", "DMA_CONF", "DMA_STATE_DIR")}
        self.env["DMA_CONF"] = str(self.conf)
        self.env["DMA_STATE_DIR"] = str(self.state)

    def conf_text(self, *extra: str, spool: Path | str | None = None, mailname: str | None = MAILNAME) -> str:
        lines = [
            f"SPOOLDIR {spool or self.spool}",
            f"MBOXDIR {self.mboxdir}",
            f"ALIASES {self.aliases}",
            self.smarthost,
        ]
        if mailname:
            lines.append(f"MAILNAME {mailname}")
        return "\n".join([*lines, *extra]) + "\n"

    def write_conf(self, *extra: str, path: Path | None = None, **kw: object) -> Path:
        path = path or self.conf
        path.write_text(self.conf_text(*extra, **kw))  # type: ignore[arg-type]
        return path

    def run(
        self,
        args: list[str],
        input: bytes = b"",
        prog: str = "sendmail",
        env: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `prog` (a name in the venv, or a path) with `args`; stdin is `input`."""
        exe = prog if "/" in prog else program(prog)
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        return subprocess.run(
            [exe, *args],
            input=input,
            capture_output=True,
            env=full_env,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )

    # ---- the spool ------------------------------------------------------------------------------

    def files(self, spool: Path | None = None) -> list[str]:
        return sorted(os.listdir(spool or self.spool))

    def entries(self, spool: Path | None = None) -> list[_native.QueueEntry]:
        return _native.scan_queue(str(spool or self.spool))

    def recipients(self) -> list[str]:
        return [e.recipient for e in self.entries()]

    def q_files(self) -> dict[str, dict[str, str]]:
        """Every Q file, parsed as `Key: value` lines (asserting that shape)."""
        out: dict[str, dict[str, str]] = {}
        for name in self.files():
            if not name.startswith("Q"):
                continue
            text = (self.spool / name).read_text()
            assert text.endswith("\n"), (name, text)
            fields: dict[str, str] = {}
            for line in text.splitlines():
                key, sep, value = line.partition(": ")
                assert sep or line.endswith(":"), (name, line)
                fields[key.rstrip(":")] = value
            out[name] = fields
        return out

    def message(self) -> bytes:
        """The content of the one message in the spool (all M files are links to it)."""
        ms = [n for n in self.files() if n.startswith("M")]
        assert ms, self.files()
        data = {(self.spool / m).read_bytes() for m in ms}
        assert len(data) == 1
        return data.pop()

    def mbox(self, user: str = "root") -> bytes:
        return (self.mboxdir / user).read_bytes()


def one_line_error(result: subprocess.CompletedProcess[bytes], prog: str = "sendmail") -> str:
    """stderr must be exactly one line `<prog>: <message>`; returns the message."""
    err = result.stderr.decode("utf-8", "replace")
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"{prog}: "), err
    return err[len(prog) + 2 : -1]


@pytest.fixture
def dma_env(tmp_path: Path) -> DmaEnv:
    return DmaEnv(tmp_path)

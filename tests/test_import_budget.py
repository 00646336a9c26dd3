"""The submission path and `mailq` stay light: they must not import what only delivery needs
(dnspython, ssl, sockets, email, logging) nor costly standard modules (typing, re, enum, ...).

Checked in a fresh interpreter that runs the real code paths, and through the installed
`sendmail` script with PYTHONPROFILEIMPORTTIME."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dma_fixtures import DmaEnv, program
from sink import Sink

FORBIDDEN = [
    "dns",
    "ssl",
    "email",
    "logging",
    "typing",
    "re",
    "asyncio",
    "dataclasses",
    "enum",
    "argparse",
    "socket",
]
MSG = b"Subject: budget\nTo: root\n\nhello\n"

MARK = "\n@@modules@@"
RUNNER = textwrap.dedent(
    f"""
    import sys
    from dma.cli import main
    code = main(sys.argv[1:])
    modules = sorted(sys.modules)
    sys.stdout.write({MARK!r} + repr({{"code": code, "modules": modules}}))
    """
)


def modules_after(env: DmaEnv, argv: list[str], stdin: bytes = b"") -> tuple[int, list[str], bytes]:
    """Run `main(argv)` in a fresh interpreter; returns (exit code, sys.modules, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *argv],
        input=stdin,
        capture_output=True,
        env=env.env,
        timeout=30,
        check=False,
    )
    out = proc.stdout.decode()
    assert MARK in out, proc.stderr
    result = ast.literal_eval(out.rsplit(MARK, 1)[1])
    return result["code"], result["modules"], proc.stderr


def heavy(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["sendmail", "-bq", "root"], MSG),
        (
            [
                "sendmail",
                "-bq",
                "-f",
                "Name <a@b.example>",
                "-F",
                "Full Name",
                "root",
                "a@x.example, <b@y.example>",
            ],
            MSG,
        ),
        (["sendmail", "-bq", "-t", "-i"], MSG),
        (["sendmail", "-bp"], b""),
        (["mailq"], b""),
    ],
)
def test_submission_and_listing_import_nothing_heavy(dma_env: DmaEnv, argv: list[str], stdin: bytes) -> None:
    dma_env.aliases.write_text("postmaster: root\n")
    code, modules, err = modules_after(
        dma_env, [argv[0], "-C", str(dma_env.conf), *argv[1:]] if argv[0] == "sendmail" else argv, stdin
    )
    assert code == 0, err
    assert heavy(modules) == []
    if "-bq" in argv:
        assert dma_env.entries(), "the message was queued"


def test_submission_with_aliases_and_masquerade(dma_env: DmaEnv) -> None:
    dma_env.write_conf("MASQUERADE john@")
    dma_env.aliases.write_text("team: root, a@x.example\n*: root\n")
    code, modules, err = modules_after(dma_env, ["sendmail", "-bq", "team", "whoever"], MSG)
    assert code == 0, err
    assert heavy(modules) == []
    assert sorted(dma_env.recipients()) == ["a@x.example", "root"]


def test_a_refused_submission_imports_nothing_heavy(dma_env: DmaEnv) -> None:
    code, modules, err = modules_after(dma_env, ["sendmail", "-bq", "nosuchuser-dma"], MSG)
    assert code == 65, err
    assert heavy(modules) == []


@pytest.mark.parametrize(("prog", "args", "stdin"), [("sendmail", ["-bq", "root"], MSG), ("mailq", [], b"")])
def test_installed_scripts_import_nothing_heavy(
    dma_env: DmaEnv, prog: str, args: list[str], stdin: bytes, tmp_path: Path
) -> None:
    # pip installs wheel-data/scripts as they are: a shell script that runs the interpreter beside
    # it isolated and without `site`. Run its Python code the same way, with -X importtime.
    script = Path(program(prog))
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and '"$d/python" -I -S -c' in text
    code = text.split("-I -S -c '", 1)[1].split('\' "$d"', 1)[0]
    python = str(script.parent / "python")
    argv = [python, "-X", "importtime", "-I", "-S", "-c", code, str(script.parent), prog, *args]
    r = subprocess.run(argv, input=stdin, capture_output=True, env=dma_env.env, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    imported = []
    for line in r.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                imported.append(name)
    assert "dma.cli" in imported, r.stderr[-2000:]
    assert heavy(imported) == []
    # The script itself, also reached through a symlink (as /usr/sbin/sendmail would be).
    link = tmp_path / prog
    link.symlink_to(script)
    for exe in (script, link):
        r = dma_env.run(args, stdin, prog=str(exe))
        assert r.returncode == 0, r.stderr


# A runner delivering one message over plain SMTP: only what that delivery uses.
RUNNER_FORBIDDEN = [*FORBIDDEN, "pathlib", "concurrent", "subprocess", "traceback", "threading", "random"]


def test_a_runner_delivering_one_message_imports_only_what_it_uses(dma_env: DmaEnv) -> None:
    sink = Sink().start()
    try:
        dma_env.write_conf(f"SMARTHOST 127.0.0.1\nPORT {sink.port}")
        assert dma_env.run(["-bq", "a@remote.example"], MSG).returncode == 0
        code, modules, err = modules_after(dma_env, ["dma", "-q", "-D"])
        assert code == 0, err
        assert len(sink.messages()) == 1, err
        assert dma_env.entries() == []
        assert sorted(m for m in modules if m.split(".")[0] in RUNNER_FORBIDDEN) == []
    finally:
        sink.stop()

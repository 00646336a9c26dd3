"""The documentation keeps up with the code.

The man page (docs/dma.8) renders without a single groff warning; every dma.conf key the parser
knows is documented in docs/configuration.md and in the man page or the migration guide; every
option letter the command line accepts, and every `dma <command>`, is in the man page; the README
starts with the two commands a newcomer runs.

Rendering needs groff (Debian: groff-base). It is not skipped when missing: the test fails and
says what to install. When man-db's `man` is there too, the page is also rendered through it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dma import cli, config

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "docs" / "dma.8"
CONFIGURATION = ROOT / "docs" / "configuration.md"
MIGRATION = ROOT / "docs" / "migration.md"
README = ROOT / "README.md"
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "FILES", "ENVIRONMENT"]
SECTIONS += ["EXIT STATUS", "SEE ALSO"]

# A fixed, plain environment: no pager, no colours, the same width everywhere.
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}


def groff() -> str:
    path = shutil.which("groff")
    if path is None:
        pytest.fail("groff is not installed, the man page cannot be checked: apt-get install groff-base")
    return path


def render(*device_options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [groff(), "-man", "-ww", "-Tutf8", *device_options, str(MAN)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )


@functools.cache
def plain_text() -> str:
    """The page as a reader sees it, without bold/underline overstrikes (grotty -c -b -u)."""
    done = render("-P-c", "-P-b", "-P-u")
    assert done.returncode == 0, done.stderr
    # Any Unicode hyphen or minus in the output is typed as '-' by the reader.
    return done.stdout.replace("\u2010", "-").replace("\u2212", "-")


def section(text: str, title: str) -> str:
    """A top-level section of the rendered page: from its heading to the next heading."""
    match = re.search(rf"^{re.escape(title)}\n(.*?)(?=^\S)", text, flags=re.M | re.S)
    assert match, f"no {title} section in {MAN.name}"
    return match.group(1)


def mentions(text: str, key: str) -> bool:
    """`key` as a whole word (so TIMEOUT is not found inside CONNECT_TIMEOUT)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", text) is not None


def test_man_page_renders_without_warnings() -> None:
    done = render("-z")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"groff -ww warns about {MAN.name}:\n{done.stderr}"


def test_man_page_renders_through_man() -> None:
    groff()  # man-db renders with groff: the same requirement, the same message
    man = shutil.which("man")
    if man is None:
        return  # man-db is optional: test_man_page_renders_without_warnings is the check that matters
    done = subprocess.run(
        [man, "--warnings", "-l", str(MAN)], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"man --warnings -l {MAN.name}:\n{done.stderr}"
    assert "SYNOPSIS" in done.stdout


def test_man_page_has_the_sections_of_a_man_page() -> None:
    text = plain_text()
    headings = re.findall(r"^([A-Z][A-Z ]+)$", text, flags=re.M)
    for title in SECTIONS:
        assert title in headings, f"{MAN.name} has no {title} section (has {headings})"
    name = section(text, "NAME")
    for program in ("dma", "sendmail", "mailq", "newaliases"):
        assert mentions(name, program), f"NAME does not list {program}"


@pytest.mark.parametrize("key", sorted(config._KEYS))
def test_every_config_key_is_documented(key: str) -> None:
    table_row = re.compile(rf"^\|\s*`{re.escape(key)}[ `]", flags=re.M)
    assert table_row.search(CONFIGURATION.read_text()), f"{key} has no row in docs/configuration.md"
    man_or_guide = plain_text() + MIGRATION.read_text()
    assert mentions(man_or_guide, key), f"{key} is neither in docs/dma.8 nor in docs/migration.md"


def test_man_page_lists_no_unknown_config_key() -> None:
    """Each key described in the CONFIGURATION section is one the parser accepts."""
    described = re.findall(r"^ {7}([A-Z][A-Z0-9_]+)\b", section(plain_text(), "CONFIGURATION"), flags=re.M)
    assert described, "no keys found in the CONFIGURATION section"
    assert set(described) <= set(config._KEYS), set(described) - set(config._KEYS)
    assert set(described) == set(config._KEYS), set(config._KEYS) - set(described)


@pytest.mark.parametrize("letter", sorted(cli.WITH_ARGUMENT | cli.FLAGS))
def test_every_option_letter_is_in_the_options_section(letter: str) -> None:
    options = section(plain_text(), "OPTIONS")
    # `-b mode`, `-bp`, `-q[arg]`, `-n,`: the letter right after a dash that starts a word.
    assert re.search(rf"(?<![\w-])-{letter}", options), f"-{letter} is not in OPTIONS of {MAN.name}"


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_dma_command_is_in_the_commands_section(command: str) -> None:
    assert re.search(rf"^ {{7}}dma {command}\b", section(plain_text(), "COMMANDS"), flags=re.M), (
        f"`dma {command}' has no entry in the COMMANDS section of {MAN.name}"
    )


@pytest.mark.parametrize("variable", ["DMA_CONF", "DMA_STATE_DIR", "EMAIL", "LOGNAME", "USER"])
def test_environment_is_documented(variable: str) -> None:
    assert mentions(section(plain_text(), "ENVIRONMENT"), variable)


def test_readme_starts_with_demo_then_test() -> None:
    commands: list[str] = []
    fenced = re.compile(r"^```(?:sh|bash|console|shell)?\n(.*?)^```", flags=re.M | re.S)
    for block in fenced.findall(README.read_text()):
        for line in block.splitlines():
            command = line.partition("#")[0].strip()
            if command:
                commands.append(command)
    assert commands[:2] == ["./dev demo", "./dev test"], commands[:2]


def test_docs_link_to_each_other() -> None:
    readme = README.read_text()
    for path in ("docs/dma.8", "docs/migration.md", "docs/configuration.md"):
        assert path in readme, f"README does not point to {path}"
    assert "configuration.md" in MIGRATION.read_text()

"""The aliases file (C dma's grammar) and alias expansion.

Grammar, as C dma's flex/bison parser (dma-behaviour.md 2.5):

* an entry is ``name: dest[, dest]*``; destinations are separated only by commas;
* an identifier is a run of characters other than ``:``, ``,``, ``#``, whitespace and control
  characters (so ``|``, ``/``, ``"``, ``@``, ``*`` and ``\\`` may appear in one);
* ``#`` starts a comment that runs to the end of the line;
* a line starting with a blank continues the previous entry, and so does a line after one that
  ends in a ``\\`` standing on its own (after whitespace, ``:`` or ``,``);
* several entries with the same name are concatenated.

Fixed against C dma: the last entry need not end in a newline; blank and comment lines inside a
continued entry are skipped instead of ending it; errors give the right line number and are
`ConfigError` (exit 78, not 70).

Imported on the submission hot path: module level imports only `errors`.
"""

from __future__ import annotations

from dma.errors import EX_DATAERR, EX_NOINPUT, ConfigError, Fatal

from .message import strip_local_domain

# Not `from typing import TYPE_CHECKING`: importing typing costs milliseconds on the hot path.
# Type checkers treat any name TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["MAX_DEPTH", "Aliases", "parse"]

MAX_DEPTH = 64
WILDCARD = "*"

_BLANKS = " \t\r\v\f"
_TO_SPACE = str.maketrans("\t\r\v\f", "    ")

# Destinations C dma accepts in the file but cannot deliver to (they fail as unknown users there).
_UNSUPPORTED = {
    "|": "command destinations are not supported",
    "/": "file destinations are not supported",
    "\\": "`\\user' destinations are not supported",
}


def _unsupported(dest: str) -> str | None:
    """Why `dest` cannot be delivered to, or None. A leading `"` is looked through."""
    first = dest[1:2] if dest.startswith('"') else dest[:1]
    return _UNSUPPORTED.get(first)


class Aliases:
    """A parsed aliases file: name -> destinations, each remembered with its line number."""

    __slots__ = ("_entries", "path")

    path: str
    _entries: dict[str, list[tuple[str, int]]]

    def __init__(self, path: str, entries: dict[str, list[tuple[str, int]]] | None = None) -> None:
        self.path = path
        self._entries = entries if entries is not None else {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"<Aliases {self.path!r} names={len(self._entries)}>"

    def lookup(self, name: str) -> list[str] | None:
        """The destinations of alias `name` in file order (exact, case-sensitive), or None."""
        dests = self._entries.get(name)
        return None if dests is None else [d for d, _ in dests]

    def check(self) -> list[ConfigError]:
        """Destinations that parse but cannot be delivered to (for `newaliases`), in file order."""
        problems: list[tuple[int, ConfigError]] = []
        for name, dests in self._entries.items():
            for dest, line in dests:
                why = _unsupported(dest)
                if why is not None:
                    problems.append((line, ConfigError(self.path, line, name, f"`{dest}': {why}")))
        problems.sort(key=lambda p: p[0])
        return [e for _, e in problems]

    def expand(
        self,
        recipient: str,
        *,
        is_local_user: Callable[[str], bool],
        wildcard: bool,
        mailname: str | None = None,
    ) -> list[str]:
        """The final recipients of `recipient`: remote addresses and local user names.

        `recipient` is a local name (the caller has already applied `strip_local_domain`);
        one holding an ``@`` is returned as it is. Destinations are stripped of ``@localhost``
        and, when `mailname` is given, of ``@<mailname>``; those still holding an ``@`` are
        remote and returned as they are, the rest are expanded again. A name that is neither
        an alias nor a local user (`is_local_user`) makes the whole recipient invalid.

        The ``*`` alias applies only when `wildcard` is true (recipients from the command line,
        ``-t`` headers and bounces) and `recipient` has no alias of its own, even when it is a
        local user. A name that reappears in its own expansion chain goes to the local user of
        that name (``root: root, admin@x`` keeps a local copy). Duplicates are dropped, order kept.

        Raises `Fatal` (EX_DATAERR) for an invalid recipient, an alias loop with no local user to
        end it, nesting deeper than `MAX_DEPTH`, or an unsupported destination.
        """
        if "@" in recipient:
            return [recipient]
        out: dict[str, None] = {}
        if recipient in self._entries:
            self._expand_into(out, recipient, [recipient], recipient, is_local_user, mailname)
        elif wildcard and WILDCARD in self._entries:
            self._expand_into(out, WILDCARD, [recipient, WILDCARD], recipient, is_local_user, mailname)
        elif is_local_user(recipient):
            out[recipient] = None
        else:
            raise Fatal(EX_DATAERR, f"invalid recipient `{recipient}'")
        return list(out)

    def _expand_into(
        self,
        out: dict[str, None],
        name: str,
        chain: list[str],
        original: str,
        is_local_user: Callable[[str], bool],
        mailname: str | None,
    ) -> None:
        if len(chain) > MAX_DEPTH:
            raise Fatal(
                EX_DATAERR,
                f"invalid recipient `{original}': aliases nested more than {MAX_DEPTH} deep "
                f"({' -> '.join(chain[:3])} -> ...)",
            )
        for dest, line in self._entries[name]:
            why = _unsupported(dest)
            if why is not None:
                raise Fatal(EX_DATAERR, f"`{dest}' in {self.path}:{line} (alias {name}): {why}")
            target = strip_local_domain(dest, mailname)
            if "@" in target:
                out[target] = None
            elif target in chain:
                # Back to a name being expanded: deliver to that user rather than loop.
                if not is_local_user(target):
                    raise Fatal(
                        EX_DATAERR,
                        f"invalid recipient `{original}': alias loop "
                        f"{' -> '.join([*chain, target])} ({self.path}:{line}) "
                        f"and `{target}' is not a local user",
                    )
                out[target] = None
            elif target in self._entries:
                chain.append(target)
                self._expand_into(out, target, chain, original, is_local_user, mailname)
                chain.pop()
            elif is_local_user(target):
                out[target] = None
            else:
                raise Fatal(
                    EX_DATAERR,
                    f"invalid recipient `{original}': `{target}' (alias {name} in {self.path}:{line}) "
                    "is neither an alias nor a local user",
                )


# ---- parser -----------------------------------------------------------------------------------


def parse(path: str) -> Aliases:
    """Read the aliases file at `path`. A missing file gives an empty table.

    Raises `ConfigError` (EX_CONFIG) on a syntax error and `Fatal` (EX_NOINPUT) when the file
    exists but cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return Aliases(path)
    except OSError as e:
        raise Fatal(EX_NOINPUT, f"can not read aliases file `{path}': {e.strerror or e}") from None
    return parse_text(data.decode("utf-8", "surrogateescape"), path)


def parse_text(text: str, path: str = "<aliases>") -> Aliases:
    """Parse aliases from a string; `path` is only used in error messages."""
    entries: dict[str, list[tuple[str, int]]] = {}
    # The logical line being collected: (token, line) pairs, tokens are ":", "," or identifiers.
    tokens: list[tuple[str, int]] = []
    backslash = False  # the previous line ended in a continuation backslash
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.partition("#")[0]
        if not line.isprintable():
            line = _check_controls(line, path, lineno)
        continues = backslash or (line[:1] in (" ", "\t"))
        backslash = False
        body = line.rstrip(_BLANKS)
        if body.endswith("\\") and (len(body) == 1 or body[-2] in " \t\r\v\f:,"):
            backslash = True
            body = body[:-1]
        if not body.strip(_BLANKS):
            continue  # blank or comment-only: neither starts nor ends an entry
        if not continues and tokens:
            _entry(tokens, entries, path)
            tokens = []
        _tokenize(body, lineno, tokens)
    if tokens:
        _entry(tokens, entries, path)
    return Aliases(path, entries)


def _check_controls(line: str, path: str, lineno: int) -> str:
    """Reject ASCII control characters other than blanks (C dma: a syntax error)."""
    for ch in line:
        if (ch < " " and ch not in _BLANKS) or ch == "\x7f":
            raise ConfigError(path, lineno, None, f"syntax error: control character {ch!r}")
    return line


def _tokenize(body: str, lineno: int, out: list[tuple[str, int]]) -> None:
    for word in body.translate(_TO_SPACE).split(" "):
        if not word:
            continue
        if ":" not in word and "," not in word:
            out.append((word, lineno))
            continue
        start = 0
        for i, ch in enumerate(word):
            if ch == ":" or ch == ",":
                if i > start:
                    out.append((word[start:i], lineno))
                out.append((ch, lineno))
                start = i + 1
        if start < len(word):
            out.append((word[start:], lineno))


def _entry(tokens: list[tuple[str, int]], entries: dict[str, list[tuple[str, int]]], path: str) -> None:
    """Check one logical line against ``name ':' dest (',' dest)*`` and record it."""
    name, line = tokens[0]
    if name in (":", ","):
        raise ConfigError(path, line, None, f"syntax error: expected an alias name before `{name}'")
    if len(tokens) < 2 or tokens[1][0] != ":":
        at = tokens[1][1] if len(tokens) > 1 else line
        raise ConfigError(path, at, name, "syntax error: expected `:' after the alias name")
    if len(tokens) < 3:
        raise ConfigError(path, tokens[1][1], name, "syntax error: no destination")
    dests: list[tuple[str, int]] = []
    expect_dest = True
    for i in range(2, len(tokens)):
        tok, tline = tokens[i]
        if expect_dest:
            if tok == ":":
                if i + 1 < len(tokens) and tokens[i + 1][0] == "include":
                    raise ConfigError(path, tline, name, ":include: is not supported")
                raise ConfigError(path, tline, name, "syntax error: unexpected `:'")
            if tok == ",":
                raise ConfigError(path, tline, name, "syntax error: empty destination")
            dests.append((tok, tline))
            expect_dest = False
        elif tok == ",":
            expect_dest = True
        elif tok == ":":
            raise ConfigError(path, tline, name, "syntax error: unexpected `:'")
        else:
            raise ConfigError(
                path, tline, name, f"syntax error: destinations are separated by commas (before `{tok}')"
            )
    if expect_dest:
        raise ConfigError(path, tokens[-1][1], name, "syntax error: missing destination after `,'")
    known = entries.get(name)
    if known is None:
        entries[name] = dests
    else:
        known.extend(dests)

"""The aliases file and alias expansion (docs/configuration.md, "The aliases file"), in C dma's
grammar with its bugs fixed. On the submission hot path: module level imports only `errors` and `message`."""

from __future__ import annotations

from dma.errors import EX_DATAERR, ConfigError, Fatal, read_config

from .message import strip_local_domain

# Not `from typing import TYPE_CHECKING`: importing typing costs milliseconds on the hot path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_DEPTH = 64
_BLANKS = " \t\r\v\f"
_TOKENS = str.maketrans({"\t": " ", "\r": " ", "\v": " ", "\f": " ", ":": " : ", ",": " , "})

# Destinations C dma accepts in the file but cannot deliver to (they fail as unknown users there).
_UNSUPPORTED = {
    "|": "command destinations are not supported",
    "/": "file destinations are not supported",
    "\\": "`\\user' destinations are not supported",
}


def _unsupported(dest: str) -> str | None:
    """Why `dest` cannot be delivered to, or None. A leading `"` is looked through."""
    return _UNSUPPORTED.get(dest[1:2] if dest.startswith('"') else dest[:1])


class Aliases(dict[str, list[tuple[str, int]]]):
    """The aliases file at `path` (or `text`, when given): name -> destinations, each with its line
    number; a missing file gives an empty table."""

    def __init__(self, path: str, text: str | None = None) -> None:
        super().__init__()
        self.path = path
        if text is None:
            text = read_config(path, "read aliases file") or ""
        # The logical line being collected: (token, line) pairs, tokens are ":", "," or identifiers.
        tokens: list[tuple[str, int]] = []
        backslash = False  # the previous line ended in a continuation backslash
        for lineno, raw in enumerate(text.split("\n"), 1):
            line = raw.partition("#")[0]
            if not line.isprintable():
                for ch in line:
                    if (ch < " " and ch not in _BLANKS) or ch == "\x7f":
                        raise ConfigError(path, lineno, None, f"syntax error: control character {ch!r}")
            continues = backslash or (line[:1] in (" ", "\t"))
            body = line.rstrip(_BLANKS)
            backslash = body.endswith("\\") and (len(body) == 1 or body[-2] in _BLANKS + ":,")
            if backslash:
                body = body[:-1]
            if not body.strip(_BLANKS):
                continue  # blank or comment-only: neither starts nor ends an entry
            if not continues and tokens:
                self._add(tokens)
                tokens = []
            tokens += [(word, lineno) for word in body.translate(_TOKENS).split(" ") if word]
        if tokens:
            self._add(tokens)

    def _add(self, tokens: list[tuple[str, int]]) -> None:
        """Check one logical line against ``name ':' dest (',' dest)*`` and record it."""
        path, (name, line), rest = self.path, tokens[0], tokens[1:]
        if name in (":", ","):
            raise ConfigError(path, line, None, f"syntax error: expected an alias name before `{name}'")
        if not rest or rest[0][0] != ":":
            raise ConfigError(
                path, rest[0][1] if rest else line, name, "syntax error: expected `:' after the alias name"
            )
        if len(rest) < 2:
            raise ConfigError(path, rest[0][1], name, "syntax error: no destination")
        for i, (tok, tline) in enumerate(rest[1:]):  # even i: a destination, odd i: a comma
            if tok == ":":
                include = i % 2 == 0 and i + 2 < len(rest) and rest[i + 2][0] == "include"
                why = ":include: is not supported" if include else "syntax error: unexpected `:'"
                raise ConfigError(path, tline, name, why)
            if i % 2 == 0 and tok == ",":
                raise ConfigError(path, tline, name, "syntax error: empty destination")
            if i % 2 and tok != ",":
                why = f"syntax error: destinations are separated by commas (before `{tok}')"
                raise ConfigError(path, tline, name, why)
        if len(rest) % 2:
            raise ConfigError(path, tokens[-1][1], name, "syntax error: missing destination after `,'")
        self.setdefault(name, []).extend(rest[1::2])

    def check(self) -> list[ConfigError]:
        """Destinations that parse but cannot be delivered to (for `newaliases`), in file order."""
        problems = [
            ConfigError(self.path, line, name, f"`{dest}': {why}")
            for name, dests in self.items()
            for dest, line in dests
            if (why := _unsupported(dest))
        ]
        return sorted(problems, key=lambda e: e.line or 0)

    def expand(
        self,
        recipient: str,
        *,
        is_local_user: Callable[[str], bool],
        mailname: str | None = None,
    ) -> list[str]:
        """The remote addresses and local user names local name `recipient` goes to, deduplicated
        (docs/configuration.md, "Expansion"); `*` catches what has no alias. Raises `Fatal`."""
        out: dict[str, None] = {}
        invalid = f"invalid recipient `{recipient}'"

        def walk(name: str, chain: list[str]) -> None:
            if len(chain) > MAX_DEPTH:
                nested = f"aliases nested more than {MAX_DEPTH} deep ({' -> '.join(chain[:3])} -> ...)"
                raise Fatal(EX_DATAERR, f"{invalid}: {nested}")
            for dest, line in self[name]:
                where = f"{self.path}:{line}"
                why = _unsupported(dest)
                if why is not None:
                    raise Fatal(EX_DATAERR, f"`{dest}' in {where} (alias {name}): {why}")
                target = strip_local_domain(dest, mailname)
                if "@" in target:
                    out[target] = None
                elif target in self and target not in chain:
                    walk(target, [*chain, target])
                elif is_local_user(target):  # also a name back in its own chain: that user, not a loop
                    out[target] = None
                elif target in chain:
                    loop = " -> ".join([*chain, target])
                    why = f"alias loop {loop} ({where}) and `{target}' is not a local user"
                    raise Fatal(EX_DATAERR, f"{invalid}: {why}")
                else:
                    why = f"`{target}' (alias {name} in {where}) is neither an alias nor a local user"
                    raise Fatal(EX_DATAERR, f"{invalid}: {why}")

        if recipient in self:
            walk(recipient, [recipient])
        elif "*" in self:
            walk("*", [recipient, "*"])
        elif is_local_user(recipient):
            out[recipient] = None
        else:
            raise Fatal(EX_DATAERR, invalid)
        return list(out)

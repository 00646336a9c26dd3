"""The aliases file: C dma's grammar (with its bugs fixed) and expansion, on real files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from dma.config import Config
from dma.errors import EX_CONFIG, EX_DATAERR, EX_NOINPUT, ConfigError, Fatal
from dma.mail.aliases import MAX_DEPTH, Aliases
from dma.mail.message import strip_local_domain
from dma.mail.routing import RecipientResolver
from hypothesis import given, settings
from hypothesis import strategies as st

USERS = {"root", "alice", "bob", "carol"}


def is_user(name: str) -> bool:
    return name in USERS


def aliases(tmp_path: Path, text: str) -> Aliases:
    p = tmp_path / "aliases"
    p.write_text(text)
    return Aliases(str(p))


def table(a: Aliases) -> dict[str, list[str]]:
    return {name: [dest for dest, _ in dests] for name, dests in a.items()}


def syntax_error(tmp_path: Path, text: str, line: int, key: str | None) -> ConfigError:
    p = tmp_path / "aliases"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        Aliases(str(p))
    e = info.value
    assert e.code == EX_CONFIG == 78
    assert (e.path, e.line, e.key) == (str(p), line, key)
    prefix = f"{p}:{line}: {key}: " if key is not None else f"{p}:{line}: "
    assert str(e).startswith(prefix)
    return e


# ---- grammar -----------------------------------------------------------------------------------


def test_simple_entries_and_comments(tmp_path: Path) -> None:
    a = aliases(
        tmp_path,
        "# /etc/aliases\n\npostmaster: root\nroot: alice, bob@example.org   # admins\n   \n# end\n",
    )
    assert table(a) == {"postmaster": ["root"], "root": ["alice", "bob@example.org"]}
    assert len(a) == 2 and "root" in a and "nobody" not in a
    assert table(a).get("nobody") is None
    assert a.path == str(tmp_path / "aliases")


def test_no_space_needed_around_separators(tmp_path: Path) -> None:
    assert table(aliases(tmp_path, "a:b,c\n")) == {"a": ["b", "c"]}


def test_identifiers_may_hold_unusual_characters(tmp_path: Path) -> None:
    a = aliases(tmp_path, 'w*: x|y, "q/r", a\\b, u@h@i, caf\u00e9\n')
    assert table(a)["w*"] == ["x|y", '"q/r"', "a\\b", "u@h@i", "caf\u00e9"]


def test_continuation_with_leading_blanks(tmp_path: Path) -> None:
    a = aliases(tmp_path, "staff: alice,\n   bob,\n\tcarol\nother: root\n")
    assert table(a) == {"staff": ["alice", "bob", "carol"], "other": ["root"]}


def test_continuation_with_backslash(tmp_path: Path) -> None:
    a = aliases(tmp_path, "staff: alice, \\\nbob,\\\ncarol\nother:\\\n root\n")
    assert table(a) == {"staff": ["alice", "bob", "carol"], "other": ["root"]}


def test_backslash_after_an_identifier_is_part_of_it(tmp_path: Path) -> None:
    # C dma: `\` continues a line only when not glued to an identifier.
    a = aliases(tmp_path, "a: b\\\nc: d\n")
    assert table(a) == {"a": ["b\\"], "c": ["d"]}


def test_comment_and_blank_lines_inside_a_continued_entry(tmp_path: Path) -> None:
    a = aliases(tmp_path, "staff: alice,\n# who else?\n\n   bob\n")
    assert table(a) == {"staff": ["alice", "bob"]}


def test_same_name_on_several_lines_concatenates(tmp_path: Path) -> None:
    a = aliases(tmp_path, "multi: alice\nother: root\nmulti: bob, carol\n")
    assert table(a)["multi"] == ["alice", "bob", "carol"]


def test_last_entry_needs_no_newline(tmp_path: Path) -> None:
    # C dma: a syntax error, and every submission failed.
    assert table(aliases(tmp_path, "a: b\nc: d")) == {"a": ["b"], "c": ["d"]}
    assert table(aliases(tmp_path, "a: b,\n  c")) == {"a": ["b", "c"]}


def test_indented_first_entry(tmp_path: Path) -> None:
    assert table(aliases(tmp_path, "  a: b\n")) == {"a": ["b"]}


def test_crlf_file(tmp_path: Path) -> None:
    assert table(aliases(tmp_path, "a: b,\r\n c\r\nd: e\r\n")) == {"a": ["b", "c"], "d": ["e"]}


def test_empty_and_missing_files(tmp_path: Path) -> None:
    assert len(aliases(tmp_path, "")) == 0
    assert len(aliases(tmp_path, "# only comments\n\n")) == 0
    missing = Aliases(str(tmp_path / "missing"))
    assert len(missing) == 0 and missing.path == str(tmp_path / "missing")


def test_unreadable_file_is_fatal(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(Fatal) as info:
        Aliases(str(d))
    assert info.value.code == EX_NOINPUT
    assert str(d) in info.value.message


def test_parse_text() -> None:
    a = Aliases("/x/aliases", "a: b\n")
    assert a.path == "/x/aliases" and table(a)["a"] == ["b"]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [
        ("a: x y\n", 1, "a", "separated by commas"),
        ("# c\n\nroot: alice bob\n", 3, "root", "separated by commas"),
        ("a b: c\n", 1, "a", "expected `:'"),
        ("a\n", 1, "a", "expected `:'"),
        ("ok: x\na:\n", 2, "a", "no destination"),
        ("a: b,\n", 1, "a", "missing destination after `,'"),
        ("a: b,\n\nc: d\n", 1, "a", "missing destination after `,'"),
        ("a: b,, c\n", 1, "a", "empty destination"),
        ("a: , b\n", 1, "a", "empty destination"),
        (": b\n", 1, None, "alias name"),
        (", b\n", 1, None, "alias name"),
        ("a: b: c\n", 1, "a", "unexpected `:'"),
        ("a: ::b\n", 1, "a", "unexpected `:'"),
        ("x: y\nlist: :include:/etc/mail/list\n", 2, "list", ":include: is not supported"),
        ("list: a,\n  :include: /etc/list\n", 2, "list", ":include: is not supported"),
        ("a: b\nc: d\x01e\n", 2, None, "control character"),
        ("a: b,\n  c,\n  d e\n", 3, "a", "separated by commas"),
    ],
)
def test_syntax_errors(tmp_path: Path, text: str, line: int, key: str | None, fragment: str) -> None:
    e = syntax_error(tmp_path, text, line, key)
    assert fragment in e.detail


# ---- strip_local_domain ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("root@vm.example", "root"),
        ("root@VM.Example", "root"),  # C dma compared case-sensitively
        ("root@localhost", "root"),
        ("root@LocalHost", "root"),
        ("x@y.example@vm.example", "x@y.example"),
        ("root@other.example", "root@other.example"),
        ("root", "root"),
        ("@vm.example", ""),
    ],
)
def test_strip_local_domain(addr: str, expected: str) -> None:
    assert strip_local_domain(addr, "vm.example") == expected


def test_strip_local_domain_without_mailname() -> None:
    assert strip_local_domain("root@localhost", None) == "root"
    assert strip_local_domain("root@vm.example", None) == "root@vm.example"


# ---- expansion ---------------------------------------------------------------------------------


def expand(a: Aliases, rcpt: str, *, users: Callable[[str], bool] = is_user) -> list[str]:
    return a.expand(rcpt, is_local_user=users)


def test_local_user_without_alias(tmp_path: Path) -> None:
    a = aliases(tmp_path, "")
    assert expand(a, "alice") == ["alice"]


def test_unknown_recipient_is_dataerr(tmp_path: Path) -> None:
    a = aliases(tmp_path, "")
    with pytest.raises(Fatal) as info:
        expand(a, "nobody")
    assert info.value.code == EX_DATAERR == 65
    assert info.value.message == "invalid recipient `nobody'"


def test_remote_recipient_passes_through(tmp_path: Path) -> None:
    # The resolver never hands a remote address to the aliases, not even to `*`.
    cfg = Config(str(tmp_path / "dma.conf"), user_mode=True)
    cfg.aliases = str(tmp_path / "aliases")
    (tmp_path / "aliases").write_text("*: root\n")
    assert RecipientResolver(cfg).resolve(["someone@example.org"]) == ["someone@example.org"]


def test_recursive_expansion(tmp_path: Path) -> None:
    a = aliases(
        tmp_path,
        "postmaster: root\nroot: admins, ops@example.org\nadmins: alice, bob\n",
    )
    assert expand(a, "postmaster") == ["alice", "bob", "ops@example.org"]


def test_lookup_is_case_sensitive(tmp_path: Path) -> None:
    a = aliases(tmp_path, "Alice: bob\n")
    assert expand(a, "alice", users=lambda n: n == "alice") == ["alice"]
    assert expand(a, "Alice") == ["bob"]


def test_destinations_with_local_domains_are_local(tmp_path: Path) -> None:
    a = aliases(tmp_path, "x: alice@localhost, bob@vm.example, carol@VM.EXAMPLE, d@else.example\n")
    got = a.expand("x", is_local_user=is_user, mailname="vm.example")
    assert got == ["alice", "bob", "carol", "d@else.example"]
    # Without a mailname only @localhost is local.
    assert expand(a, "x") == ["alice", "bob@vm.example", "carol@VM.EXAMPLE", "d@else.example"]


def test_results_are_deduplicated_in_order(tmp_path: Path) -> None:
    a = aliases(tmp_path, "all: bob, team, alice, x@example.org\nteam: alice, bob, x@example.org\n")
    assert expand(a, "all") == ["bob", "alice", "x@example.org"]


def test_invalid_destination_names_the_original_recipient(tmp_path: Path) -> None:
    p = tmp_path / "aliases"
    a = aliases(tmp_path, "postmaster: root\nroot: ghost\n")
    with pytest.raises(Fatal) as info:
        expand(a, "postmaster")
    assert info.value.code == EX_DATAERR
    msg = info.value.message
    assert msg.startswith("invalid recipient `postmaster': `ghost'")
    assert f"{p}:2" in msg and "alias root" in msg


# ---- the `*` catch-all ---------------------------------------------------------------------------


def test_wildcard_catches_unknown_names(tmp_path: Path) -> None:
    a = aliases(tmp_path, "*: alice\n")
    assert expand(a, "nobody") == ["alice"]


def test_wildcard_catches_existing_users_too(tmp_path: Path) -> None:
    # C dma semantics, kept: containers rely on it.
    a = aliases(tmp_path, "*: alice\n")
    assert expand(a, "bob") == ["alice"]


def test_exact_alias_beats_wildcard(tmp_path: Path) -> None:
    a = aliases(tmp_path, "*: alice\nbob: carol\n")
    assert expand(a, "bob") == ["carol"]


def test_wildcard_not_applied_to_expanded_names(tmp_path: Path) -> None:
    a = aliases(tmp_path, "*: alice\nlist: bob, ghost\n")
    with pytest.raises(Fatal) as info:
        expand(a, "list")
    assert "`ghost'" in info.value.message


def test_wildcard_destinations_are_expanded(tmp_path: Path) -> None:
    a = aliases(tmp_path, "*: catchall\ncatchall: alice, archive@example.org\n")
    assert expand(a, "whoever") == ["alice", "archive@example.org"]


def test_wildcard_back_to_the_recipient(tmp_path: Path) -> None:
    a = aliases(tmp_path, "*: root, copy@example.org\n")
    assert expand(a, "root") == ["root", "copy@example.org"]


# ---- loops and depth ---------------------------------------------------------------------------


def test_self_reference_keeps_a_local_copy(tmp_path: Path) -> None:
    # C dma dropped the local copy; sendmail and Postfix keep it.
    a = aliases(tmp_path, "root: root, admin@example.org\n")
    assert expand(a, "root") == ["root", "admin@example.org"]


def test_indirect_loop_ends_at_an_existing_user(tmp_path: Path) -> None:
    a = aliases(tmp_path, "alice: team\nteam: alice, bob\n")
    assert expand(a, "alice") == ["alice", "bob"]


def test_loop_without_a_user_is_an_error(tmp_path: Path) -> None:
    a = aliases(tmp_path, "loop1: loop2\nloop2: loop1\n")
    with pytest.raises(Fatal) as info:
        expand(a, "loop1")
    assert info.value.code == EX_DATAERR
    msg = info.value.message
    assert msg.startswith("invalid recipient `loop1': alias loop")
    assert "loop1 -> loop2 -> loop1" in msg


def test_siblings_are_not_loops(tmp_path: Path) -> None:
    a = aliases(tmp_path, "a: b, c\nb: c\nc: alice\n")
    assert expand(a, "a") == ["alice"]


def test_depth_limit(tmp_path: Path) -> None:
    def chain(n: int) -> str:
        return "".join(f"a{i}: a{i + 1}\n" for i in range(n)) + f"a{n}: alice\n"

    ok = aliases(tmp_path, chain(MAX_DEPTH - 1))
    assert expand(ok, "a0") == ["alice"]
    deep = aliases(tmp_path, chain(MAX_DEPTH))
    with pytest.raises(Fatal) as info:
        expand(deep, "a0")
    assert info.value.code == EX_DATAERR
    assert f"more than {MAX_DEPTH} deep" in info.value.message


# ---- unsupported destinations ----------------------------------------------------------------


UNSUPPORTED = (
    "# header\n"
    "pipe: alice\n"
    "root: |/usr/bin/procmail\n"
    "file: /var/log/mail.copy\n"
    'quoted: bob, "|/bin/cat"\n'
    "noalias: \\alice\n"
)


def test_unsupported_destinations_parse(tmp_path: Path) -> None:
    a = aliases(tmp_path, UNSUPPORTED)
    assert table(a)["root"] == ["|/usr/bin/procmail"]
    assert expand(a, "pipe") == ["alice"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("root", "`|/usr/bin/procmail' in {p}:3 (alias root): command destinations are not supported"),
        ("file", "`/var/log/mail.copy' in {p}:4 (alias file): file destinations are not supported"),
        ("quoted", '`"|/bin/cat"\' in {p}:5 (alias quoted): command destinations are not supported'),
        ("noalias", "`\\alice' in {p}:6 (alias noalias): `\\user' destinations are not supported"),
    ],
)
def test_expanding_to_unsupported_destination_fails(tmp_path: Path, name: str, message: str) -> None:
    a = aliases(tmp_path, UNSUPPORTED)
    with pytest.raises(Fatal) as info:
        expand(a, name)
    assert info.value.code == EX_DATAERR
    assert info.value.message == message.format(p=tmp_path / "aliases")


def test_check_reports_unsupported_destinations(tmp_path: Path) -> None:
    a = aliases(tmp_path, UNSUPPORTED)
    problems = a.check()
    p = str(tmp_path / "aliases")
    assert [(e.path, e.line, e.key) for e in problems] == [
        (p, 3, "root"),
        (p, 4, "file"),
        (p, 5, "quoted"),
        (p, 6, "noalias"),
    ]
    assert all(isinstance(e, ConfigError) and e.code == EX_CONFIG for e in problems)
    assert str(problems[0]) == f"{p}:3: root: `|/usr/bin/procmail': command destinations are not supported"
    assert aliases(tmp_path, "a: b, c@d\n").check() == []


# ---- properties --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hypothesis")


alias_pieces = st.sampled_from([*'ab*|/\\@"x:,# \t\r\n\x01\u00e9', " \\\n", "\n  ", ":include:"])
alias_text = st.lists(alias_pieces, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=alias_text | st.text(max_size=60), raw=st.binary(max_size=100))
def test_parser_only_raises_config_errors(hdir: Path, text: str, raw: bytes) -> None:
    for data in (text.encode("utf-8", "surrogatepass"), raw):
        p = hdir / "aliases"
        p.write_bytes(data)
        try:
            a = Aliases(str(p))
        except ConfigError as e:
            assert e.code == EX_CONFIG and e.line is not None and e.line >= 1
            assert "\n" not in str(e)
            continue
        for name in a:
            try:
                got = a.expand(name, is_local_user=lambda n: n.isalpha())
            except Fatal as e:
                assert e.code == EX_DATAERR
            else:
                assert len(got) == len(set(got))
        a.check()


ident = st.text(st.sampled_from('abcXYZ019._-+|/\\*"@\u00e9'), min_size=1, max_size=8).filter(
    lambda s: s != "\\"  # a lone `\` at the end of a line is a continuation, as in C dma
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.tuples(ident, st.lists(ident, min_size=1, max_size=4)), max_size=6),
    style=st.sampled_from(["plain", "blanks", "backslash"]),
    final_newline=st.booleans(),
)
def test_generated_files_parse_back(
    hdir: Path, entries: list[tuple[str, list[str]]], style: str, final_newline: bool
) -> None:
    sep = {"plain": ", ", "blanks": ",\n\t", "backslash": ", \\\n"}[style]
    text = "\n".join(f"{name}: {sep.join(dests)}" for name, dests in entries)
    if final_newline and text:
        text += "\n"
    p = hdir / "gen"
    p.write_text(text)
    a = Aliases(str(p))
    expected: dict[str, list[str]] = {}
    for name, dests in entries:
        expected.setdefault(name, []).extend(dests)
    assert table(a) == expected

"""Property tests (hypothesis) for the parsers that untrusted input reaches, extending the ones in
test_config.py (config parser) and test_aliases.py (aliases parser):

* `message.parse_addresses` raises nothing but `Fatal`, and what it returns, once accepted by the
  checks every caller applies, holds no CR, LF or NUL, and cannot end its `<path>` or add an SMTP
  parameter: outside a quoted local part no `<`, `>`, blank, quote or backslash;
* `_native.Incoming.drop_envelope` (the system runner's reader of a user's hand-written envelope)
  raises only `ValueError` (which `drop.envelope` turns into a refusal), and returns only such addresses;
* alias expansion on arbitrary alias text terminates and raises only `Fatal`/`ConfigError`;
* the DATA round trip: what `_native.Connection.session` puts on the wire to a real local socket server,
  un-dot-stuffed, CRLF -> LF and the inserted `CRLF SP` breaks undone, equals the spooled message.
"""

from __future__ import annotations

import os
import tempfile

from dma import _native
from dma.errors import ConfigError, Fatal
from dma.mail import message
from dma.mail.aliases import Aliases
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from smtp_servers import Peer, RawServer, scripted

LINE_LIMIT = 998  # rust/src/smtp.rs
UNSAFE = ("\r", "\n", "\0")

address_chars = st.sampled_from(
    [*'abc@.<>()",;:\\ \t\r\n\0\x7fé-[]=', "x@y.example", "root", "\u2028", "\xa0", " AUTH=<", " NOTIFY="]
)
address_text = st.lists(address_chars, max_size=40).map("".join) | st.text(max_size=60)


def assert_wire_safe(address: str) -> None:
    """Written as `<address>` in MAIL or RCPT, nothing of it can be read as a parameter."""
    assert not any(c in address for c in UNSAFE) and not any(ord(c) < 32 or ord(c) == 127 for c in address)
    rest = address
    if address.startswith('"'):  # RFC 5321 quoted-string: anything printable, `\` escapes
        i = 1
        while address[i] != '"':
            i += 2 if address[i] == "\\" else 1
        rest = address[i + 1 :]
    assert not any(c in '<>"\\' or c.isspace() for c in rest), address


@settings(max_examples=500, deadline=None)
@given(text=address_text)
def test_parse_addresses_only_raises_fatal_and_checked_results_are_line_safe(text: str) -> None:
    try:
        found = message.parse_addresses(text, "recipient")
    except Fatal as e:
        assert "\n" not in str(e).replace("\\n", "")
        return
    assert isinstance(found, list)
    for address in found:
        assert isinstance(address, str) and address
        # Whatever reaches the envelope passes these; then it must be line safe.
        try:
            message.check_line_safe("a recipient", address)
            message.check_address(address, "recipient")
        except Fatal:
            continue
        assert_wire_safe(address)


@settings(max_examples=300, deadline=None)
@given(text=address_text.filter(lambda t: not any(c in t for c in UNSAFE)))
def test_parse_addresses_of_line_safe_text_is_line_safe(text: str) -> None:
    """Without CR/LF/NUL in the input, none can appear in an address (no escape decoding)."""
    try:
        found = message.parse_addresses(text)
    except Fatal:
        return
    for address in found:
        assert not any(c in address for c in UNSAFE), address


envelope_line = st.one_of(
    st.builds(lambda v: f"Sender: {v}", address_text),
    st.builds(lambda v: f"Recipient: {v}", address_text),
    st.text(max_size=30),
    st.sampled_from(["Sender:", "Recipient:", "Sender: <>", "Recipient: root", "Recipient: a@b.example"]),
)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(envelope_line, max_size=6), end=st.sampled_from(["\n", "", "\r\n"]))
def test_drop_envelope_parser(lines: list[str], end: str) -> None:
    text = "\n".join(lines) + end
    try:
        sender, recipients, _ = _native.Incoming.drop_envelope(text.encode("utf-8", "surrogateescape"))
    except ValueError:
        return
    assert recipients
    for address in [sender, *recipients]:
        assert_wire_safe(address)


alias_name = st.sampled_from(
    ["a", "b", "c", "root", "*", "x@y.example", "nobody-here", "../x", "/etc/x", "|cmd"]
)


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.tuples(alias_name, st.lists(alias_name, min_size=1, max_size=4)), max_size=8),
    junk=st.text(max_size=40),
    recipient=alias_name,
)
def test_alias_expansion_terminates_and_raises_only_fatal(
    entries: list[tuple[str, list[str]]], junk: str, recipient: str
) -> None:
    text = "".join(f"{name}: {', '.join(dests)}\n" for name, dests in entries) + junk
    try:
        aliases = Aliases("<aliases>", text)
    except (ConfigError, Fatal):
        return
    try:
        out = aliases.expand(recipient, is_local_user=lambda n: n == "root", mailname="m.example")
    except Fatal:
        return
    for r in out:
        assert "@" in r or r == "root", (r, out)


# ---- DATA: dot-stuffing and line breaking round trip over a real socket ------------------------------


def undo_wire(raw: bytes) -> bytes:
    """Invert the DATA encoding: split CRLF lines, drop the final `.`, join `CRLF SP` breaks after a
    full-length line, un-stuff the dots at logical line starts."""
    assert raw.endswith(b".\r\n"), raw[-20:]
    body = raw[: -len(b".\r\n")]
    if not body:
        return b""
    assert body.endswith(b"\r\n")
    wire_lines = body[:-2].split(b"\r\n")
    out: list[bytes] = []
    prev_len = -1
    for w in wire_lines:
        assert b"\r" not in w and b"\n" not in w
        assert len(w) <= LINE_LIMIT, len(w)
        if prev_len == LINE_LIMIT and w.startswith(b" "):
            out[-1] += w[1:]
        else:
            out.append(w[1:] if w.startswith(b".") else w)
        prev_len = len(w)
    return b"\n".join(out) + b"\n"


line_content = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b".", b"..", b". x", b".\x00", b" ", b"\xff\xfe", b"From x"]),
    st.integers(LINE_LIMIT - 3, LINE_LIMIT + 3).map(lambda n: b"y" * n),
    st.integers(LINE_LIMIT - 2, 3 * LINE_LIMIT + 2).flatmap(
        lambda n: st.sampled_from([b"." + b"d" * n, b"z" * n + b" tail", b" " * n])
    ),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def ambiguous(lines: list[bytes]) -> bool:
    """A real line of exactly LINE_LIMIT wire octets followed by a line starting with a space reads
    like a broken line: the decoder cannot tell them apart, so such inputs are left out."""
    for first, second in zip(lines, lines[1:]):
        wire = len(first) + first.startswith(b".")
        if wire > 0 and wire % LINE_LIMIT in (0,) and second.startswith(b" "):
            return True
        if wire > LINE_LIMIT and (wire - LINE_LIMIT) % (LINE_LIMIT - 1) == 0 and second.startswith(b" "):
            return True
    return False


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(line_content, max_size=12), final_newline=st.booleans())
def test_data_round_trip_over_a_socket(lines: list[bytes], final_newline: bool) -> None:
    assume(not ambiguous(lines))
    spooled = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "M1")
        with open(path, "wb") as f:
            f.write(spooled)
        with RawServer(scripted(ext=("8BITMIME", "SIZE 100000000"))) as srv:
            result = _native.Connection(
                host="mx.test",
                addresses=["127.0.0.1"],
                port=srv.port,
                helo="client.test",
                tls={
                    "mode": "none",
                    "verify_cert": False,
                    "ca_file": None,
                    "fingerprint": None,
                    "client_cert": None,
                },
                connect_timeout=5.0,
                command_timeout=5.0,
                credentials=None,
                allow_insecure_auth=False,
                verbose=False,
            ).session([("a@example.com", ["b@example.com"], path)])
            [[outcome]] = result.results
            assert outcome.status == "sent", outcome
            peers: list[Peer] = srv.peers
            [raw] = [d for p in peers for d in p.data]
    expected = spooled if not spooled or spooled.endswith(b"\n") else spooled + b"\n"
    assert undo_wire(raw) == expected

"""Delivery status notification requests (RFC 3461): sendmail's `-N`, `-R` and `-V`.

They are kept as the ESMTP parameters themselves (`NOTIFY=FAILURE,DELAY RET=HDRS ENVID=x`): in the
queue entry's `DSN:` line, on MAIL and RCPT when the server offers DSN, and read by our own bounces.
"""

from __future__ import annotations

from dma.errors import EX_USAGE, Fatal


def parameters(notify: str | None, ret: str | None, envid: str | None) -> str:
    params: list[str] = []
    if notify is not None:
        words = [w.strip().upper() for w in notify.split(",")]
        if words != ["NEVER"] and not (set(words) <= {"SUCCESS", "FAILURE", "DELAY"}):
            raise Fatal(EX_USAGE, f"-N takes `never' or some of `success,failure,delay', not `{notify}'")
        params.append("NOTIFY=" + ",".join(words))
    if ret is not None:
        if ret.upper() not in ("HDRS", "FULL"):
            raise Fatal(EX_USAGE, f"-R takes `hdrs' or `full', not `{ret}'")
        params.append("RET=" + ret.upper())
    if envid is not None:
        if not 0 < len(envid) <= 100 or not all(" " <= c <= "~" for c in envid):
            raise Fatal(EX_USAGE, "-V takes an envelope id of 1 to 100 printable ASCII characters")
        params.append("ENVID=" + xtext(envid))
    return " ".join(params)


def xtext(text: str) -> str:
    """RFC 3461 4: `+`, `=` and what is not printable ASCII become `+XX`. A value that is xtext
    already is kept: sendmail takes `-V` in xtext."""
    escapes = text.split("+")[1:]
    if all(len(e) >= 2 and set(e[:2]) <= set("0123456789ABCDEF") for e in escapes):
        if all("!" <= c <= "~" and c != "=" for c in text):
            return text
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


def value(params: str, name: str) -> str | None:
    for param in params.split():
        key, _, val = param.partition("=")
        if key == name:
            return val
    return None


def wants_failure_report(params: str) -> bool:
    """No NOTIFY, or one that names FAILURE (NOTIFY=NEVER and NOTIFY=SUCCESS,DELAY do not)."""
    notify = value(params, "NOTIFY")
    return notify is None or "FAILURE" in notify.split(",")


def full_content(params: str, default: bool) -> bool:
    """RET=FULL or RET=HDRS as asked, else FULLBOUNCE's choice."""
    ret = value(params, "RET")
    return default if ret is None else ret == "FULL"

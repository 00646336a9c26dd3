"""Delivery status notifications: the RFC 3461 requests of `-N`, `-R` and `-V`, kept as the ESMTP
parameters themselves (`NOTIFY=FAILURE,DELAY RET=HDRS ENVID=x`) in the queue entry's `DSN:` line,
and the RFC 3464 bounce, from MAILER-DAEMON with the null sender, for mail that cannot be delivered."""

from __future__ import annotations

from dma.errors import EX_USAGE, Fatal

from . import message
from .routing import RecipientResolver
from .submit import Spooling

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma import _native
    from dma.config import Config


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


def status_code(text: str, expired: bool) -> str:
    """The RFC 3463 status for a failure: the server's enhanced code when it gave one."""
    for word in text.split():
        parts = word.split(".")
        if len(parts) == 3 and parts[0] in ("4", "5") and all(p.isdigit() for p in parts):
            return word
    return "4.4.7" if expired else "5.0.0"


def report(cfg: Config, failed: list[_native.QueueEntry], msg: Spooling, full: bool) -> tuple[bytes, bytes]:
    """The bounce before and after the original message's text."""
    first, boundary, notes, status = failed[0], f"{msg.id}/{cfg.mailname}", "", ""
    for entry in failed:
        error, too_old = entry.last_error, msg.now - entry.created > cfg.max_queue_time
        why = "gave up after trying for too long: " if too_old else ""
        notes += f"<{entry.recipient}>: {why}{error}\n\n"
        rcpt = entry.recipient if "@" in entry.recipient else f"{entry.recipient}@{cfg.mailname}"
        status += f"\nFinal-Recipient: rfc822; {rcpt}\nAction: failed\n"
        status += f"Status: {status_code(error, too_old)}\n"
        host, _, rest = error.partition(" ")
        _, said, reply = error.partition(": ")
        if host and rest.startswith(("[", "said")):  # a remote failure: `host [addr] said: reply`
            code = reply if said and reply[:3].isdigit() else error
            status += f"Remote-MTA: dns; {host}\nDiagnostic-Code: smtp; {code}\n"
        else:
            status += f"Diagnostic-Code: x-dma; {error}\n"
    before = f"""From: Mail Delivery System <MAILER-DAEMON@{cfg.mailname}>
To: <{first.sender}>
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8

This is the mail system (dma) at {cfg.mailname}.

Your message could not be delivered to one or more recipients.

{notes}--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {cfg.mailname}
Arrival-Date: {message.rfc822_date(first.created)}
{status}
--{boundary}
Content-Description: Undelivered Message{"" if full else " Headers"}
Content-Type: {"message/rfc822" if full else "text/rfc822-headers"}

"""
    return before.encode("utf-8", "surrogateescape"), f"\n--{boundary}--\n".encode()


def send(cfg: Config, failed: list[_native.QueueEntry], message_path: str) -> str | None:
    """Queue a bounce for `failed` (entries of one message, same sender); returns its message id,
    or None when NOTIFY asks for none (NOTIFY=NEVER and NOTIFY=SUCCESS,DELAY do not name FAILURE).
    Raises Fatal or OSError when it cannot be queued; the caller then keeps the original."""
    sender = failed[0].sender
    dsn = {key: val for key, _, val in (param.partition("=") for param in failed[0].dsn.split())}
    if "NOTIFY" in dsn and "FAILURE" not in dsn["NOTIFY"].split(","):
        return None
    try:
        message.check_address(sender, "sender")  # an entry from elsewhere (C dma's) never passed it
        recipients = RecipientResolver(cfg).resolve([sender])
    except Fatal:
        recipients = RecipientResolver(cfg).resolve(["postmaster"])
    with Spooling(cfg, "") as msg:
        full = dsn["RET"] == "FULL" if "RET" in dsn else cfg.fullbounce
        before, after = report(cfg, failed, msg, full)
        msg.receive((before, message_path, full, after), "MAILER-DAEMON")  # Rust reads the original
        msg.incoming.commit("", recipients)
    return msg.id

"""Delivery status notifications (RFC 3464) for mail that cannot be delivered.

One bounce per original message, sent once none of its recipients is still being tried, listing
every recipient that failed. It comes from MAILER-DAEMON with the null sender and goes back in
through the ordinary spool writer. A message whose sender is null (a bounce itself) gets no bounce:
it is kept in the queue, held, for the postmaster to see, as is one whose bounce cannot be queued.
Mail is never dropped without a trace.
"""

from __future__ import annotations

from dma.errors import Fatal

from . import message
from .dsn import full_content
from .dsn import wants_failure_report as wants_failure_report  # for the runner
from .routing import RecipientResolver
from .submit import Spooling

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma import _native
    from dma.config import Config


def status_code(text: str, expired: bool) -> str:
    """The RFC 3463 status for a failure: the server's enhanced code when it gave one."""
    for word in text.split():
        parts = word.split(".")
        if len(parts) == 3 and parts[0] in ("4", "5") and all(p.isdigit() for p in parts):
            return word
    return "4.4.7" if expired else "5.0.0"


def diagnostic(text: str) -> str:
    """The server's reply in a failure text, else the whole text."""
    _, found, reply = text.partition(": ")
    return reply if found and reply[:3].isdigit() else text


def report(
    cfg: Config,
    failed: list[_native.QueueEntry],
    now: float,
    boundary: str,
    full: bool,
) -> tuple[bytes, bytes]:
    """The bounce before and after the original message's text."""
    first = failed[0]
    notes: list[str] = []
    status: list[str] = []
    for entry in failed:
        too_old = now - entry.created > cfg.max_queue_time
        why = "gave up after trying for too long: " if too_old else ""
        notes += [f"<{entry.recipient}>: {why}{entry.last_error}", ""]
        rcpt = entry.recipient if "@" in entry.recipient else f"{entry.recipient}@{cfg.mailname}"
        status += ["", f"Final-Recipient: rfc822; {rcpt}", "Action: failed"]
        status.append(f"Status: {status_code(entry.last_error, too_old)}")
        host, _, rest = entry.last_error.partition(" ")
        if host and rest.startswith(("[", "said")):  # a remote failure: `host [addr] said: reply`
            status.append(f"Remote-MTA: dns; {host}")
            status.append(f"Diagnostic-Code: smtp; {diagnostic(entry.last_error)}")
        else:
            status.append(f"Diagnostic-Code: x-dma; {entry.last_error}")
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{cfg.mailname}>",
        f"To: <{first.sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system (dma) at {cfg.mailname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
        *notes,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {cfg.mailname}",
        f"Arrival-Date: {message.rfc822_date(first.created)}",
        *status,
    ]
    kind = "message/rfc822" if full else "text/rfc822-headers"
    what = "Undelivered Message" if full else "Undelivered Message Headers"
    lines += ["", f"--{boundary}", f"Content-Description: {what}", f"Content-Type: {kind}", "", ""]
    before = "\n".join(lines).encode("utf-8", "surrogateescape")
    after = f"\n--{boundary}--\n".encode()
    return before, after


def discard(spool: _native.Spool, failed: list[_native.QueueEntry]) -> str:
    """The sender asked for no failure report (NOTIFY): remove the failed entries (claimed by
    the runner); a line for the log."""
    for e in failed:
        spool.remove(e.id)
    spool.sync()
    return f"{failed[0].message_id}: failed, not bounced, as asked ({failed[0].dsn})"


def send(cfg: Config, failed: list[_native.QueueEntry], message_path: str) -> str:
    """Queue a bounce for `failed` (entries of one message, same sender); returns its message id.

    Raises Fatal or OSError when it cannot be queued; the caller then keeps the original.
    """
    sender = failed[0].sender
    try:
        message.check_address(sender, "sender")  # an entry from elsewhere (C dma's) never passed it
        recipients = RecipientResolver(cfg).resolve([sender])
    except Fatal:
        recipients = RecipientResolver(cfg).resolve(["postmaster"])
    with Spooling(cfg, "") as msg:
        full = full_content(failed[0].dsn, cfg.fullbounce)
        before, after = report(cfg, failed, msg.now, f"{msg.id}/{cfg.mailname}", full)
        msg.receive((before, message_path, full, after), "MAILER-DAEMON")  # Rust reads the original
        msg.incoming.commit("", recipients)
    return msg.id

"""`sendmail -bs` (Symfony Mailer, SwiftMailer, Laravel): SMTP on standard input and output, as
the calling user: MAIL FROM is taken as `-f` is, each DATA is one `submit`. Rust owns descriptor 0
(`_native.SmtpStdin`): it hands us command lines and streams each body into the spool."""

from __future__ import annotations

import posix

from dma import _native
from dma.errors import EX_DATAERR, EX_NOINPUT, Fatal

from . import Submission, message
from .routing import RecipientResolver
from .submit import submit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

# RFC 5321 asks for 512 octets at least; SMTPUTF8 addresses with parameters need more.
MAX_LINE = 2048
MAX_RECIPIENTS = 1000
MAIL_PARAMS = {"BODY=7BIT", "BODY=8BITMIME", "SMTPUTF8"}
FIXED = {  # {} is MAILNAME
    "EHLO": "250-{}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE",
    "HELO": "250 {}",
    "RSET": "250 2.0.0 ok",
    "NOOP": "250 2.0.0 ok",
    "VRFY": "252 2.1.5 will not verify, but will accept the message",
    "HELP": "214 2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
    "QUIT": "221 2.0.0 bye",
}


class Reply(Exception):
    """A command's answer (`code enhanced text`): every command ends by raising one."""


class Session:
    def __init__(self, cfg: Config, full_name: str | None, tag: str) -> None:
        self.cfg = cfg
        self.full_name = full_name
        self.tag = tag
        self.stdin = _native.SmtpStdin(0)
        self.resolver = RecipientResolver(cfg)
        self.transaction: Submission | None = None  # from MAIL to the end of DATA
        self.queued: list[str] = []

    def send(self, reply: str) -> None:
        data = (reply + "\r\n").encode("utf-8", "surrogateescape")
        while data:
            data = data[posix.write(1, data) :]

    def run(self) -> list[str]:
        """Serve until QUIT or the end of input; returns the ids of the messages queued."""
        try:
            self.send(f"220 {self.cfg.mailname} ESMTP dma")
            while (got := self.stdin.command(MAX_LINE)) is not None:
                try:
                    self.handle(*got)
                except Reply as r:
                    self.send(str(r))
                    if str(r).startswith("221 "):
                        break
        except OSError:
            pass  # the client went away: what it saw acknowledged is queued, nothing else
        return self.queued

    def handle(self, raw: bytes, whole: bool) -> None:
        if not whole:
            raise Reply("500 5.5.2 line too long")
        if any((b < 32 and b != 9) or b == 127 for b in raw):
            raise Reply("500 5.5.2 control characters in command")
        try:
            verb, _, arg = raw.decode().strip().partition(" ")
        except UnicodeDecodeError:
            raise Reply("500 5.5.2 command is not UTF-8") from None
        verb, arg = verb.upper(), arg.strip()
        if verb in ("EHLO", "HELO") and not arg:
            raise Reply(f"501 5.5.4 {verb} needs a domain")
        if verb in ("EHLO", "HELO", "RSET"):
            self.transaction = None
        if verb in ("MAIL", "RCPT", "DATA"):
            getattr(self, verb.lower())(arg)  # each raises its Reply
        raise Reply(FIXED.get(verb, "500 5.5.1 unrecognised command").format(self.cfg.mailname))

    def mail(self, arg: str) -> None:
        if self.transaction is not None:
            raise Reply("503 5.5.1 MAIL already given")
        path, params = split_path(arg, "FROM:")
        for param in params:
            key, _, value = param.upper().partition("=")
            if key == "SIZE" and value.isdigit():
                st = posix.statvfs(self.cfg.spooldir) if posix.access(self.cfg.spooldir, posix.F_OK) else None
                if st and int(value) > st.f_bavail * st.f_frsize:
                    raise Reply("452 4.3.1 insufficient system storage")
            elif param.upper() not in MAIL_PARAMS:
                raise Reply(f"555 5.5.4 unsupported parameter {param}")
        try:  # as `-f`: any sender the command line would take
            message.envelope_sender(path, self.cfg)
        except Fatal as e:
            raise Reply(f"553 5.1.7 {e}") from None
        self.transaction = Submission([], path, dot_terminates=False, full_name=self.full_name, tag=self.tag)
        raise Reply("250 2.1.0 ok")

    def rcpt(self, arg: str) -> None:
        mail = self.transaction
        if mail is None:
            raise Reply("503 5.5.1 MAIL first")
        path, params = split_path(arg, "TO:")
        if params:
            raise Reply(f"555 5.5.4 unsupported parameter {params[0]}")
        if len(mail.recipients) >= MAX_RECIPIENTS:
            raise Reply("452 4.5.3 too many recipients")
        try:
            addresses = message.parse_addresses(path, "recipient")
            if len(addresses) != 1:
                raise Fatal(EX_DATAERR, f"invalid recipient `{path}'")
            self.resolver.resolve(addresses)
        except Fatal as e:
            raise failure(e, "550 5.1.1") from None
        mail.recipients.append(addresses[0])
        raise Reply("250 2.1.5 ok")

    def data(self, arg: str) -> None:
        if arg:
            raise Reply("501 5.5.4 DATA takes no argument")
        mail = self.transaction
        if mail is None or not mail.recipients:
            raise Reply(f"503 5.5.1 {'RCPT' if mail is not None else 'MAIL'} first")
        self.send("354 end data with <CR><LF>.<CR><LF>")
        self.transaction = None
        try:
            message_id = submit(self.cfg, mail, self.stdin, resolver=self.resolver)
        except Fatal as e:
            self.stdin.skip_data()  # raises OSError, ending the session, if the client has gone
            raise failure(e, "554 5.6.0") from None
        self.queued.append(message_id)
        raise Reply(f"250 2.0.0 queued as {message_id}")


def failure(e: Fatal, permanent: str) -> Reply:
    """The reply for a submission check that failed: bad input is permanent, the rest may pass."""
    return Reply(f"{permanent if e.code in (EX_DATAERR, EX_NOINPUT) else '451 4.3.0'} {e}")


def split_path(arg: str, keyword: str) -> tuple[str, list[str]]:
    """`FROM:<path> PARAM...` -> the path without brackets (and source route), and the parameters."""
    rest = arg[len(keyword) :].lstrip() if arg[: len(keyword)].upper() == keyword else ""
    quoted, end = False, len(rest)
    for i, c in enumerate(rest):
        if c == '"' and rest[i - 1 : i] != "\\":
            quoted = not quoted
        elif not quoted and (c == ">" or c.isspace()):
            end = i
            break
    if not rest.startswith("<") or rest[end : end + 1] != ">":
        raise Reply(f"501 5.5.4 syntax: {keyword}<address>")
    path = rest[1:end]
    if path.startswith("@"):  # an RFC 5321 source route, to be ignored
        path = path.partition(":")[2]
    return path, rest[end + 1 :].split()

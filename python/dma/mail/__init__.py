"""The path a message takes: submission, the queue, delivery (SMTP, local), bounces."""

from __future__ import annotations


class Submission:
    """What `sendmail` (its `cli.Options`), `-bs` or `dma.api` asks for one message; `submit.submit`
    queues it. Here, not in submit.py, so that the command line has it without importing submission."""

    def __init__(
        self,
        recipients: list[str],
        sender: str | None = None,
        *,
        dot_terminates: bool = True,
        from_headers: bool = False,
        full_name: str | None = None,
        tag: str = "dma",
    ) -> None:
        self.recipients = recipients
        self.tag = tag  # the syslog identity (`-L`)
        self.sender = sender
        self.dot_terminates = dot_terminates
        self.from_headers = from_headers
        self.full_name = full_name
        self.dsn = ""  # RFC 3461 parameters (bounce.py)

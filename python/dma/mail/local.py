"""Local delivery policy: which mailbox, which owner, which failures are final.

The queue runner calls `deliver` for a recipient that routing found local. The bytes are moved by
Rust (`dma._native.mbox_append` / `maildir_deliver`), streaming the spooled ``M`` file; nothing of
the message passes through Python.

mbox (the default, as C dma): ``<mboxdir>/<user>``, C dma's ``From `` line and mboxrd quoting, one
empty line after each message, exclusive ``flock`` waited for up to 100 s. A missing mbox is
created: in system mode owned by the user, group ``mail`` (the user's group if there is no
``mail`` group), mode 0620, like C dma's ``dma-mbox-create``; in user mode owned by us, 0600.

Maildir (an addition; C dma has none): when ``cfg.maildir`` is set, a template where a leading
``~`` is the user's home directory and ``%u`` the user name, e.g. ``~/Maildir``.

Failures raise `DeliveryFailure`; ``permanent`` says whether to bounce now (unknown user, unsafe
name, bad data) or retry later (any OS error: lock timeout, disk full, a refused symlink...).
"""

from __future__ import annotations

import grp
import os
import pwd
import time

from dma import _native

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

__all__ = ["DEFAULT_LOCK_TIMEOUT", "DeliveryFailure", "deliver", "is_local_user"]

#: Seconds to wait for an mbox lock (C dma's alarm).
DEFAULT_LOCK_TIMEOUT = 100.0

#: Mode of an mbox created in system mode: ``rw--w----`` user:mail, as ``dma-mbox-create``.
SYSTEM_MBOX_MODE = 0o620
#: Mode of an mbox created in user mode.
USER_MBOX_MODE = 0o600


class DeliveryFailure(Exception):
    """Local delivery failed: ``permanent`` = bounce now, otherwise retry later."""

    permanent: bool

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def is_local_user(name: str) -> bool:
    """Whether ``name`` is a user of this system that we would deliver to."""
    if not _safe_name(name):
        return False
    try:
        pwd.getpwnam(name)
    except (KeyError, ValueError):
        return False
    return True


def deliver(
    user: str,
    sender: str,
    message_path: str,
    cfg: Config,
    *,
    when: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Deliver the spooled message at ``message_path`` to local ``user``.

    ``sender`` is the envelope sender (empty for a bounce: written ``MAILER-DAEMON``). ``when`` is
    the ``From `` line's date, ``ctime()`` form; default now, local time.
    Raises `DeliveryFailure`.
    """
    pw = _lookup(user)
    try:
        if cfg.maildir:
            path = _expand_maildir(cfg.maildir, pw)
            if os.geteuid() == 0 and pw.pw_uid != 0:
                _maildir_as_user(pw, path, message_path, cfg)
            else:
                _native.maildir_deliver(path, message_path, cfg.mailname, None)
        else:
            mbox = os.path.join(cfg.mboxdir, pw.pw_name)
            if cfg.user_mode:
                # Our own state directory: make it on first use. (/var/mail is the system's.)
                os.makedirs(cfg.mboxdir, mode=0o700, exist_ok=True)
                create = (os.getuid(), os.getgid(), USER_MBOX_MODE)
            else:
                create = (pw.pw_uid, _mail_gid(pw), SYSTEM_MBOX_MODE)
            if when is None:
                when = time.strftime("%a %b %e %H:%M:%S %Y")
            _native.mbox_append(mbox, message_path, sender, when, create, lock_timeout)
    except OSError as e:
        raise DeliveryFailure(f"local delivery to {user} failed: {e.strerror or e}", permanent=False) from e
    except ValueError as e:
        raise DeliveryFailure(f"local delivery to {user} failed: {e}", permanent=True) from e


def _maildir_as_user(pw: pwd.struct_passwd, path: str, message_path: str, cfg: Config) -> None:
    """Deliver into a Maildir in the user's own tree as that user, never as root: whatever the
    user did to the directories on the way (a symlink to a root-only place, say), the kernel
    checks our access as theirs. A forked child opens the spooled message while still root, then
    gives up root and delivers from the open file.

    The user may stop or slow that child: it keeps none of the runner's descriptors (no lock of
    the queue or of a claimed entry), and is killed once TIMEOUT has passed (a temporary failure).
    """
    import select
    import signal

    message_fd = os.open(message_path, os.O_RDONLY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe and its exit status
            status = 0
            try:
                _keep_only(message_fd, write_end)
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                _native.maildir_deliver(path, message_fd, cfg.mailname, None)
            except OSError as e:
                os.write(write_end, f"{e.errno}:{e.strerror or e}".encode("utf-8", "replace"))
                status = 1
            except ValueError as e:
                os.write(write_end, f"0:{e}".encode("utf-8", "replace"))
                status = 2
            finally:
                os._exit(status)
        os.close(write_end)
        write_end = -1
        report = b""
        end = time.monotonic() + cfg.timeout
        poll = select.poll()
        poll.register(read_end, select.POLLIN)
        while True:  # the pipe ends when the child does
            left = end - time.monotonic()
            if left <= 0 or not poll.poll(left * 1000 + 1):
                os.kill(pid, signal.SIGKILL)  # stopped or not, it ends here
                os.waitpid(pid, 0)
                raise OSError(0, f"delivery as {pw.pw_name} took over {cfg.timeout:g} s (TIMEOUT): killed")
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            report += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(message_fd)
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    code = os.waitstatus_to_exitcode(status)
    text = report.decode("utf-8", "replace")
    if code == 2:
        raise ValueError(text.partition(":")[2])
    if code != 0:
        errno_text, _, why = text.partition(":")
        raise OSError(
            int(errno_text) if errno_text.isdigit() else 0, why or f"delivery process ended with {code}"
        )


def _keep_only(*fds: int) -> None:  # pragma: no cover - runs in the forked child
    """Close every descriptor but `fds`, and put /dev/null on 0, 1 and 2."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    start = 3
    for fd in sorted(fds):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def _lookup(user: str) -> pwd.struct_passwd:
    if not _safe_name(user):
        raise DeliveryFailure(f"invalid local user name {user!r}", permanent=True)
    try:
        pw = pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise DeliveryFailure(f"unknown local user {user!r}", permanent=True) from None
    # The name from the passwd database names the mbox (NSS may match names loosely).
    if not _safe_name(pw.pw_name):
        raise DeliveryFailure(f"invalid local user name {pw.pw_name!r}", permanent=True)
    return pw


def _mail_gid(pw: pwd.struct_passwd) -> int:
    try:
        return grp.getgrnam("mail").gr_gid
    except KeyError:
        return pw.pw_gid


def _expand_maildir(template: str, pw: pwd.struct_passwd) -> str:
    path = template
    if path == "~" or path.startswith("~/"):
        path = pw.pw_dir + path[1:]
    path = path.replace("%u", pw.pw_name)
    if not os.path.isabs(path):
        # A configuration mistake, not the message's fault: retry once the admin fixes it.
        raise DeliveryFailure(f"Maildir path {path!r} for {pw.pw_name} is not absolute", permanent=False)
    return path

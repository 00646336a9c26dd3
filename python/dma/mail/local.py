"""Local delivery policy: which mailbox (MBOXDIR or MAILDIR), which owner, which failures are
final; Rust moves the bytes. A missing mbox is created as C dma's ``dma-mbox-create`` does."""

from __future__ import annotations

import os
import pwd
import time

from dma import _native
from dma.errors import RouteError

DeliveryFailure = RouteError  # `permanent`: unknown user, bad data; else (an OS error) retry later

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config


def is_local_user(name: str) -> bool:
    try:
        _lookup(name)
    except DeliveryFailure:
        return False
    return True


def deliver(
    user: str,
    sender: str,
    message_path: str,
    cfg: Config,
    *,
    when: str | None = None,
    lock_timeout: float = 3.0,
) -> None:
    """Deliver the spooled message to local ``user``, or raise `DeliveryFailure`. ``when``: the
    ``From `` line's date (default now); ``lock_timeout``: the wait for the mbox lock, then the
    delivery is retried later (a user's lock must not hold up anyone's mail)."""
    pw = _lookup(user)
    try:
        if cfg.maildir:
            path = expand_maildir(cfg.maildir, pw)
            if os.geteuid() == 0 and pw.pw_uid != 0:
                _maildir_as_user(pw, path, message_path, cfg)
            else:
                _native.maildir_deliver(path, message_path, cfg.mailname)
            return
        if cfg.user_mode:  # our own state directory, made on first use (/var/mail is the system's)
            os.makedirs(cfg.mboxdir, mode=0o700, exist_ok=True)
            create = (os.getuid(), os.getgid(), 0o600)
        else:
            import grp

            try:
                gid = grp.getgrnam("mail").gr_gid
            except KeyError:
                gid = pw.pw_gid
            create = (pw.pw_uid, gid, 0o620)
        when = when or time.strftime("%a %b %e %H:%M:%S %Y")
        _native.mbox_append(
            os.path.join(cfg.mboxdir, pw.pw_name), message_path, sender, when, create, lock_timeout
        )
    except OSError as e:
        raise DeliveryFailure(f"local delivery to {user} failed: {e.strerror or e}", permanent=False) from e
    except ValueError as e:
        raise DeliveryFailure(f"local delivery to {user} failed: {e}", permanent=True) from e


def _maildir_as_user(pw: pwd.struct_passwd, path: str, message_path: str, cfg: Config) -> None:
    """Deliver into a Maildir in the user's own tree as that user (a forked child that opens the
    message as root, then drops to the user), so the kernel checks our access as theirs whatever
    they did to the directories. It keeps no descriptor of ours and is killed after TIMEOUT."""
    import select
    import signal

    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe and its exit status
            status = 0
            try:
                devnull = os.open(os.devnull, os.O_RDWR)  # on 0, 1 and 2; no other descriptor of ours
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.closerange(3, write_end)
                os.closerange(write_end + 1, os.sysconf("SC_OPEN_MAX"))
                message_fd = os.open(message_path, os.O_RDONLY | os.O_CLOEXEC)
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                _native.maildir_deliver(path, message_fd, cfg.mailname)
            except OSError as e:
                os.write(write_end, str(e.strerror or e).encode("utf-8", "replace"))
                status = 1
            except ValueError as e:  # the message's fault: final
                os.write(write_end, str(e).encode("utf-8", "replace"))
                status = 2
            finally:
                os._exit(status)
        os.close(write_end)
        write_end = -1
        report = b""
        end = time.monotonic() + cfg.timeout
        poll = select.poll()
        poll.register(read_end, select.POLLIN)
        while (left := end - time.monotonic()) > 0 and poll.poll(left * 1000 + 1):
            chunk = os.read(read_end, 4096)
            if not chunk:  # the pipe ends when the child does
                break
            report += chunk
        else:
            os.kill(pid, signal.SIGKILL)  # stopped or not, it ends here
            os.waitpid(pid, 0)
            raise OSError(0, f"delivery as {pw.pw_name} took over {cfg.timeout:g} s (TIMEOUT): killed")
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    text = report.decode("utf-8", "replace")
    if code == 2:
        raise ValueError(text)
    if code != 0:
        raise OSError(0, text or f"delivery process ended with {code}")


def _lookup(user: str) -> pwd.struct_passwd:
    def safe(name: str) -> bool:
        return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")

    if not safe(user):
        raise DeliveryFailure(f"invalid local user name {user!r}", permanent=True)
    try:
        pw = pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise DeliveryFailure(f"unknown local user {user!r}", permanent=True) from None
    if not safe(pw.pw_name):  # the passwd database's name names the mbox (NSS may match loosely)
        raise DeliveryFailure(f"invalid local user name {pw.pw_name!r}", permanent=True)
    return pw


def expand_maildir(template: str, pw: pwd.struct_passwd) -> str:
    path = template
    if path == "~" or path.startswith("~/"):
        path = pw.pw_dir + path[1:]
    path = path.replace("%u", pw.pw_name)
    if not os.path.isabs(path):  # a configuration mistake, not the message's: retry once it is fixed
        raise DeliveryFailure(f"Maildir path {path!r} for {pw.pw_name} is not absolute", permanent=False)
    return path

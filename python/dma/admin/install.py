"""`dma install` and `dma uninstall` (docs/install.md): idempotent, one line printed per change;
the manifest records each change (paths as seen inside the root) for `uninstall` to undo.

The launchers it writes run `python -IS` with only dma's directories on `sys.path`, since reading
every `.pth` file (`site`) costs a third more than the start-up itself."""

from __future__ import annotations

import contextlib
import filecmp
import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from dma import config
from dma.errors import EX_CONFIG, EX_NOPERM, EX_SOFTWARE, EX_USAGE, ConfigError, Fatal, getopts
from dma.mail.oauth import credential_names

LIBEXEC = "/usr/local/libexec/dma"
PROGRAMS = ("sendmail", "mailq", "newaliases", "dma")
LINKS = {
    "/usr/sbin/sendmail": "sendmail",
    "/usr/lib/sendmail": "sendmail",
    "/usr/bin/mailq": "mailq",
    "/usr/bin/newaliases": "newaliases",
}
SAVED = ".dma-saved"
# The verbs `say` counts as changes; the others (kept, note, warning, run, done) report.
CHANGES = frozenset({"created", "fixed", "wrote", "removed", "saved", "linked", "restored"})
CONF = "/etc/dma/dma.conf"
MANIFEST = "/var/lib/dma/install.manifest"
UNIT_DIR = "/etc/systemd/system"
UNITS = ("dma.service", "dma.path", "dma.timer")
ENABLE = ("dma.path", "dma.timer")
# What a spool holds when no mail is in it (an empty drop directory aside).
SPOOL_HOUSEKEEPING = frozenset({"lock", "flush", "wake"})
DATA = Path(__file__).resolve().parent / "data"
LAUNCHER = """#!{python} -IS
# Written by `dma install`: runs dma without `site`, for a fast start. Rewrite with `dma install`.
import sys
sys.path[:0] = {paths!r}
sys.argv[0] = {name!r}
from dma.cli import run
run()
"""

USAGE = {
    "install": "usage: dma install [--root DIR] [--systemd | --no-systemd]",
    "uninstall": "usage: dma uninstall [--root DIR]",
}


def command(prog: str, name: str, args: list[str]) -> int:
    long = ("root=", "systemd", "no-systemd") if name == "install" else ("root=",)
    opts, _ = getopts(args, USAGE[name], "", long, operands=False)
    systemd = [opt == "--systemd" for opt in opts if opt.endswith("systemd")]
    if opts.get("--root") == "" or len(systemd) > 1:
        raise Fatal(EX_USAGE, USAGE[name])
    if os.geteuid() != 0:
        raise Fatal(EX_NOPERM, f"{name} must run as root")
    inst = Installer(os.path.abspath(opts.get("--root", "/")))
    if name == "install":
        inst.install(systemd[0] if systemd else None)
    else:
        inst.uninstall()
    return 0


def environment_paths() -> list[str]:
    """Where the launchers' interpreter and the packages they import live, links resolved."""
    paths = [sys.executable, sys.prefix, *search_path()]
    return [os.path.realpath(p) for p in paths] + [os.path.abspath(p) for p in paths]


def search_path() -> list[str]:
    """The directories that hold dma and what it imports (dnspython), as this interpreter sees them."""
    import dns

    import dma

    dirs = (os.path.dirname(os.path.dirname(os.path.abspath(m.__file__ or ""))) for m in (dma, dns))
    return list(dict.fromkeys(dirs))


def script(name: str) -> str:
    """The launcher that runs dma as program `name` with this interpreter."""
    return LAUNCHER.format(python=sys.executable, paths=search_path(), name=name)


def write_atomically(path: str, text: str, mode: int) -> None:
    """Write `text` at `path` with `mode`: a reader finds the old file or the new one."""
    tmp = f"{path}.dma-new"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def same(a: str, b: str) -> bool:
    if os.path.islink(a) or os.path.islink(b):
        return os.path.islink(a) and os.path.islink(b) and os.readlink(a) == os.readlink(b)
    return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)


def mail_gid() -> int:
    try:
        return grp.getgrnam("mail").gr_gid
    except KeyError:
        return 0


def describe(st: os.stat_result) -> str:
    """`0755 root:root`: the mode and the owner's names (numbers where there are none)."""

    def name(lookup: Any, ident: int) -> str:
        try:
            return str(lookup(ident)[0])
        except KeyError:
            return str(ident)

    return f"{stat.S_IMODE(st.st_mode):04o} {name(pwd.getpwuid, st.st_uid)}:{name(grp.getgrgid, st.st_gid)}"


class Installer:
    """One install or uninstall into `root` ("/" for the running system)."""

    def __init__(self, root: str) -> None:
        self.prefix = root.rstrip("/")  # before a path inside the root, for the path on this machine
        self.changes = 0
        self.manifest: dict[str, Any] = {
            "version": 1,
            "dirs": [],  # created by us, in creation order
            "files": {},  # written by us: path -> sha256 when written
            "links": {},  # created by us: path -> target
            "saved": {},  # path -> where what was there went
            "modes": {},  # directories we changed: path -> [mode, uid, gid] before
        }
        self.systemd_running = not self.prefix and os.path.isdir("/run/systemd/system")

    def p(self, path: str) -> str:
        return self.prefix + path

    def say(self, verb: str, what: str) -> None:
        self.changes += verb in CHANGES
        print(f"{verb:<9}{what}", flush=True)

    def load_manifest(self) -> bool:
        try:
            with open(self.p(MANIFEST)) as f:
                self.manifest.update(json.load(f))
        except FileNotFoundError:
            return False
        except ValueError as e:  # not JSON, or not UTF-8
            raise Fatal(EX_SOFTWARE, f"{self.p(MANIFEST)}: unreadable manifest: {e}") from None
        return True

    def save_manifest(self) -> None:
        self.makedirs(os.path.dirname(MANIFEST), 0o755)  # before the text: recorded in it too
        self.write_file(MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    def makedirs(self, path: str, mode: int, gid: int = 0, *, fix: bool = False) -> None:
        """Create `path` and its missing parents (0755 root:root); with `fix`, an existing `path`
        is made a root:root directory with `mode`, its files kept."""
        real = self.p(path)
        if not os.path.isdir(real):
            parent = os.path.dirname(path)
            if parent != path:
                self.makedirs(parent, 0o755)
            os.mkdir(real)
            os.chown(real, 0, gid)
            os.chmod(real, mode)  # after chown, which clears the set-id bits; and without the umask
            self.manifest["dirs"].append(path)
            self.say("created", f"{real} ({describe(os.stat(real))})")
            return
        st = os.lstat(real)
        if fix and not stat.S_ISDIR(st.st_mode):
            raise Fatal(EX_CONFIG, f"{real} is not a directory")
        if not fix or (stat.S_IMODE(st.st_mode) == mode and st.st_uid == 0 and st.st_gid == 0):
            return
        self.manifest["modes"].setdefault(path, [stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid])
        os.chown(real, 0, 0)
        os.chmod(real, mode)
        self.say("fixed", f"{real}: {describe(st)} -> {describe(os.stat(real))} (files inside kept)")

    def write_file(self, path: str, text: str, mode: int = 0o644, note: str = "") -> None:
        """Write `text` at `path` with `mode` unless it is there already."""
        real = self.p(path)
        with contextlib.suppress(FileNotFoundError, UnicodeDecodeError), open(real) as f:
            if f.read() == text and stat.S_IMODE(os.fstat(f.fileno()).st_mode) == mode:
                return
        self.makedirs(os.path.dirname(path), 0o755)
        write_atomically(real, text, mode)
        if path != MANIFEST:  # not a file for uninstall to remove, nor a change
            self.manifest["files"][path] = sha256(real)
            self.say("wrote", real + note)

    def systemctl(self, *args: str) -> None:
        self.say("run", "systemctl " + " ".join(args))
        result = subprocess.run(["systemctl", *args], check=False)
        if result.returncode:
            self.say("warning", f"systemctl {args[0]} exited {result.returncode}")

    def install(self, systemd: bool | None) -> None:
        self.load_manifest()
        try:
            cfg = config.Config(self.p(CONF), user_mode=False)
        except ConfigError as e:
            raise Fatal(EX_CONFIG, f"{e} (fix it, then run dma install again)") from None
        if systemd is None:
            systemd = os.path.isdir(self.p("/run/systemd/system"))
        conflicts = [
            f"{self.p(path)}: both it and {self.p(path)}{SAVED} exist; move one away"
            for path in LINKS
            if self.link_conflict(path)
        ]
        if conflicts:
            raise Fatal(EX_CONFIG, "; ".join(conflicts))
        try:
            self.makedirs(cfg.spooldir, 0o711, fix=True)
            self.makedirs(f"{cfg.spooldir}/incoming", 0o1733, fix=True)  # the drop directory
            self.manifest["spool"] = cfg.spooldir
            self.makedirs(cfg.mboxdir, 0o2775, mail_gid())  # an existing one is left as it is
            for name in PROGRAMS:
                self.write_file(f"{LIBEXEC}/{name}", script(name), 0o755, f" (runs {sys.executable})")
            for path, name in LINKS.items():
                self.install_link(path, f"{LIBEXEC}/{name}")
            if not os.path.lexists(self.p(CONF)):
                self.write_file(CONF, (DATA / "dma.conf").read_text())
            elif CONF not in self.manifest["files"]:
                self.say("kept", f"{self.p(CONF)} (it exists; never overwritten)")
            if systemd:
                self.install_units(cfg.spooldir, credential_names(cfg))
        finally:
            self.save_manifest()
        if os.path.exists(self.p("/etc/cron.d/dma")):
            self.say(
                "note",
                f"{self.p('/etc/cron.d/dma')} runs C dma's queue runner on the same spool every "
                "five minutes; remove the C dma package or that file once this install is in use",
            )
        if self.changes:
            self.say("done", f"{self.changes} changes; record in {self.p(MANIFEST)}")
        else:
            self.say("done", "nothing to change: dma is installed")

    def link_conflict(self, path: str) -> bool:
        """Something not ours is at `path`, and a different saved file: one would be lost. (The same
        thing as the saved one is what a package upgrade puts back: it can go.)"""
        real = self.p(path)
        if not os.path.lexists(real) or not os.path.lexists(real + SAVED):
            return False
        if os.path.islink(real) and os.readlink(real) == self.manifest["links"].get(path):
            return False
        return not (path in self.manifest["saved"] and same(real, real + SAVED))

    def install_link(self, path: str, target: str) -> None:
        real = self.p(path)
        if os.path.islink(real) and os.readlink(real) == target:
            return
        self.makedirs(os.path.dirname(path), 0o755)
        if os.path.lexists(real):
            if os.path.lexists(real + SAVED):
                # The one we saved is still there (link_conflict checked): this is what a package
                # upgrade put back. It goes; the saved one stays what uninstall restores.
                os.unlink(real)
                self.say("removed", f"{real} (put back since the install; {real}{SAVED} kept)")
            else:
                was = f" (-> {os.readlink(real)})" if os.path.islink(real) else ""
                os.rename(real, real + SAVED)
                self.manifest["saved"][path] = path + SAVED
                self.say("saved", f"{real}{was} as {real}{SAVED}")
        os.symlink(target, real)
        self.manifest["links"][path] = target
        self.say("linked", f"{real} -> {target}")

    def install_units(self, spooldir: str, credentials: list[str]) -> None:
        before = self.changes
        # The service's private /tmp would hide an environment that lives in the shared one.
        under_tmp = sorted({p for p in environment_paths() if p.startswith(("/tmp/", "/var/tmp/"))})
        # Secrets auth.conf takes from systemd credentials.
        loads = "".join(f"LoadCredential={c}:/etc/credstore/{c}\n" for c in credentials)
        for unit in UNITS:
            text = (DATA / unit).read_text().replace("@LIBEXEC@", LIBEXEC).replace("@SPOOLDIR@", spooldir)
            text = text.replace("[Service]\n", f"[Service]\n{loads}")
            self.write_file(f"{UNIT_DIR}/{unit}", text.replace("PrivateTmp=yes\n", "") if under_tmp else text)
        changed = self.changes != before
        if under_tmp and changed:
            self.say("note", f"dma.service runs without PrivateTmp=yes, which would hide {under_tmp[0]}")
        if self.systemd_running:
            if changed:
                self.systemctl("daemon-reload")
            if changed or any(
                subprocess.call(["systemctl", "--quiet", verb, *ENABLE], stdout=subprocess.DEVNULL)
                for verb in ("is-enabled", "is-active")
            ):
                self.changes += 1
                self.systemctl("enable", "--now", *ENABLE)
        elif changed and self.prefix:
            enable = f"systemctl --root={self.prefix} enable {' '.join(ENABLE)}"
            self.say("note", f"units not enabled in an image: {enable}")
        elif changed:
            self.say("note", "systemd is not running: the units are neither enabled nor started")

    def uninstall(self) -> None:
        if not self.load_manifest():
            self.say("done", f"nothing to undo: no {self.p(MANIFEST)}")
            return
        m = self.manifest
        units = self.systemd_running and any(path.startswith(UNIT_DIR + "/") for path in m["files"])
        if units:
            self.systemctl("disable", "--now", *UNITS)
        # The directories the manifest is in go last, with it.
        last = [d for d in m["dirs"] if MANIFEST.startswith(d + "/")]
        try:
            for path, target in list(m["links"].items()):
                real = self.p(path)
                if os.path.islink(real) and os.readlink(real) == target:
                    os.unlink(real)
                    self.say("removed", real)
                elif os.path.lexists(real):
                    self.say("kept", f"{real} (changed since the install)")
                del m["links"][path]
            for path, saved in list(m["saved"].items()):
                real = self.p(path)
                if not os.path.lexists(self.p(saved)):
                    self.say("warning", f"{self.p(saved)} is gone; nothing to put back at {real}")
                elif os.path.lexists(real):
                    self.say("kept", f"{self.p(saved)} ({real} is taken)")
                    continue
                else:
                    os.rename(self.p(saved), real)
                    self.say("restored", real)
                del m["saved"][path]
            for path, digest in list(m["files"].items()):
                real = self.p(path)
                if path == CONF and os.path.exists(real) and sha256(real) != digest:
                    self.say("kept", f"{real} (edited since the install)")
                elif os.path.lexists(real):
                    os.unlink(real)
                    self.say("removed", real)
                del m["files"][path]
            if units:
                self.systemctl("daemon-reload")
            for path, (mode, uid, gid) in list(m["modes"].items()):
                real = self.p(path)
                if os.path.isdir(real) and not os.path.islink(real):
                    os.chown(real, uid, gid)
                    os.chmod(real, mode)
                    self.say("restored", f"{real} ({describe(os.stat(real))})")
                del m["modes"][path]
            # Children first. A spool that still holds mail stays recorded, with its parents, for the
            # next uninstall; a directory that holds what is not ours (an edited dma.conf) is the admin's.
            for path in reversed([d for d in m["dirs"] if d not in last]):
                spool = path == m.get("spool")
                if self.remove_dir(path, spool=spool) or not (
                    spool or any(d.startswith(path + "/") for d in m["dirs"])
                ):
                    m["dirs"].remove(path)
        finally:
            done = m["dirs"] == last and not (m["links"] or m["saved"] or m["files"] or m["modes"])
            if done:
                os.unlink(self.p(MANIFEST))
                for path in reversed(last):
                    self.remove_dir(path)
            else:
                self.save_manifest()
        self.say("done", f"{self.changes} changes" if self.changes else "nothing to undo")

    def remove_dir(self, path: str, *, spool: bool = False) -> bool:
        """Remove a directory we created if nothing else is in it; a spool, if it holds no mail."""
        real = self.p(path)
        if not os.path.isdir(real):
            return True
        names = os.listdir(real)
        drop = os.path.join(real, "incoming")
        empty_drop = "incoming" not in names or (os.path.isdir(drop) and not os.listdir(drop))
        if spool and set(names) <= SPOOL_HOUSEKEEPING | {"incoming"} and empty_drop:
            if "incoming" in names:
                os.rmdir(drop)
            for name in SPOOL_HOUSEKEEPING.intersection(names):
                os.unlink(os.path.join(real, name))
        elif names:
            self.say("kept", f"{real} (not empty: {len(names)} entries)")
            return False
        os.rmdir(real)
        self.say("removed", real)
        return True

"""`dma install` / `dma uninstall`.

Most tests install into a throwaway root (`--root`), so they never touch this machine's own
/usr/sbin. `test_live_install_in_a_private_mount_namespace` runs the real thing (no `--root`)
inside a private mount namespace, with overlays over /usr, /etc and /var (so what it writes
vanishes with the namespace) and fresh tmpfs over /var/spool, /var/mail and /etc/dma: it
checks the links and directories, then mails through the installed /usr/sbin/sendmail as
`nobody` into the drop directory, delivers with `dma serve` as root, and uninstalls.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_private_namespace
from dma import config
from dma.admin import install
from dma.errors import EX_CONFIG, EX_NOPERM, EX_USAGE, Fatal

BIN = Path(sys.executable).parent
LINKS = ["usr/sbin/sendmail", "usr/lib/sendmail", "usr/bin/mailq", "usr/bin/newaliases"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dma install runs as root")
MAIL_GID = grp.getgrnam("mail").gr_gid if "mail" in {g.gr_name for g in grp.getgrall()} else 0


def run(name: str, *args: str) -> str:
    """`dma install|uninstall --root args[0] [args[1]]` in this process; returns what it printed."""
    out = io.StringIO()
    inst = install.Installer(args[0])
    with contextlib.redirect_stdout(out):
        if name == "install":
            inst.install({"--systemd": True, "--no-systemd": False}.get(args[1]) if len(args) > 1 else None)
        else:
            inst.uninstall()
    return out.getvalue()


def dma(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DMA_CONF", "DMA_STATE_DIR")}
    return subprocess.run([str(BIN / "dma"), *args], capture_output=True, text=True, env=env, check=False)


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree that an idempotent second run must leave alone."""
    result: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = None
        result[str(path.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            st.st_ino,
            what,
        )
    return result


def mode(path: Path) -> tuple[int, int, int]:
    st = path.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def c_dma_root(root: Path) -> None:
    """A system with C dma's Debian package: its links, spool with a queued message, mbox dir, config."""
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/sbin/dma").write_bytes(b"\x7fELF C dma")
    (root / "usr/sbin/sendmail").symlink_to("dma")
    for link in ("usr/lib/sendmail", "usr/bin/mailq", "usr/bin/newaliases"):
        (root / link).symlink_to("../sbin/dma")
    spool = root / "var/spool/dma"
    spool.mkdir(parents=True)
    os.chown(spool, 0, MAIL_GID)
    spool.chmod(0o2770)
    for name, text in (
        ("Q1a2b.3c4d", "ID: 1a2b.3c4d\nSender: root@h\nRecipient: x@example.org\n"),
        ("M1a2b.3c4d", "Subject: queued\n\nhi\n"),
    ):
        (spool / name).write_text(text)
        os.chown(spool / name, 0, MAIL_GID)
        (spool / name).chmod(0o660)
    (root / "var/mail").mkdir(parents=True)
    os.chown(root / "var/mail", 0, MAIL_GID)
    (root / "var/mail").chmod(0o2775)
    (root / "var/lib").mkdir(parents=True)
    (root / "etc/dma").mkdir(parents=True)
    (root / "etc/dma/dma.conf").write_text("SMARTHOST relay.example.org\nPORT 587\n")
    (root / "etc/dma/dma.conf").chmod(0o640)


# ---- in a throwaway root ---------------------------------------------------------------------


@ROOT_ONLY
def test_fresh_install_twice_then_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = dma("install", "--root", str(root), "--systemd")
    assert proc.returncode == 0, proc.stderr
    assert "linked   " in proc.stdout and "done" in proc.stdout
    assert mode(root / "var/spool/dma") == (0o711, 0, 0)
    assert mode(root / "var/spool/dma/incoming") == (0o1733, 0, 0)
    assert mode(root / "var/mail") == (0o2775, 0, MAIL_GID)
    libexec = root / "usr/local/libexec/dma"
    for name in ("sendmail", "mailq", "newaliases", "dma"):
        text = (libexec / name).read_text()
        shebang, _, rest = text.partition("\n")
        assert shebang.startswith("#!") and shebang.endswith(" -IS") and f"sys.argv[0] = {name!r}" in rest
        assert os.path.realpath(shebang[2:-4]) == os.path.realpath(sys.executable)
        assert mode(libexec / name)[0] == 0o755
    for link in LINKS:
        name = "sendmail" if "sendmail" in link else link.rpartition("/")[2]
        assert os.readlink(root / link) == f"{install.LIBEXEC}/{name}"  # as seen inside the root
    # The sample config: VERIFYCERT on, everything else at its default.
    cfg = config.Config(str(root / "etc/dma/dma.conf"), user_mode=False)
    assert cfg.key_lines.keys() == {"VERIFYCERT"} and cfg.verifycert
    service = (root / "etc/systemd/system/dma.service").read_text()
    assert f"ExecStart={install.LIBEXEC}/dma serve\n" in service and "ProtectSystem=full" in service
    assert "PathExistsGlob=/var/spool/dma/incoming/E*\n" in (root / "etc/systemd/system/dma.path").read_text()
    assert "OnCalendar=*:0/5\n" in (root / "etc/systemd/system/dma.timer").read_text()
    manifest = json.loads((root / "var/lib/dma/install.manifest").read_text())
    assert manifest["saved"] == {} and set(manifest["links"]) == {f"/{link}" for link in LINKS}
    assert "/var/lib/dma" in manifest["dirs"]

    # Twice: nothing changes, not even a time stamp.
    before = snapshot(tmp_path)
    proc = dma("install", "--root", str(root), "--systemd")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done     nothing to change: dma is installed\n"
    assert snapshot(tmp_path) == before

    # The runner leaves its lock file: still an empty spool.
    (root / "var/spool/dma/lock").write_text("")
    proc = dma("uninstall", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert list(root.iterdir()) == []
    proc = dma("uninstall", "--root", str(root))
    assert proc.returncode == 0 and "nothing to undo" in proc.stdout


@ROOT_ONLY
@pytest.mark.parametrize("prefix", ["/opt/dma", "/tmp/ci/.venv", "/var/tmp/venv"])
def test_private_tmp_unless_the_environment_lives_in_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    """dma.service has PrivateTmp=yes, which would hide an interpreter or packages under /tmp or
    /var/tmp from the runner: then the line is left out, and the install says so."""
    monkeypatch.setattr(install, "environment_paths", lambda: [f"{prefix}/bin/python3", f"{prefix}/lib"])
    out = run("install", str(tmp_path), "--systemd")
    service = (tmp_path / "etc/systemd/system/dma.service").read_text()
    if prefix == "/opt/dma":
        assert "PrivateTmp=yes\n" in service and "PrivateTmp" not in out
    else:
        assert "PrivateTmp" not in service and "ProtectSystem=full\n" in service
        assert f"note     dma.service runs without PrivateTmp=yes, which would hide {prefix}/" in out, out


@ROOT_ONLY
def test_over_c_dma_keeps_and_restores_everything(tmp_path: Path) -> None:
    c_dma_root(tmp_path)
    original = snapshot(tmp_path)
    spool = tmp_path / "var/spool/dma"
    queue = {name: snapshot(tmp_path)[f"var/spool/dma/{name}"] for name in ("Q1a2b.3c4d", "M1a2b.3c4d")}

    out = run("install", str(tmp_path), "--no-systemd")
    assert f"saved    {tmp_path}/usr/sbin/sendmail (-> dma) as {tmp_path}/usr/sbin/sendmail.dma-saved" in out
    assert f"kept     {tmp_path}/etc/dma/dma.conf (it exists; never overwritten)" in out
    assert "fixed    " in out and "(files inside kept)" in out
    for link in LINKS:
        assert os.readlink(tmp_path / link).startswith(install.LIBEXEC)
        assert (tmp_path / f"{link}.dma-saved").is_symlink()
    assert mode(spool) == (0o711, 0, 0)
    assert mode(spool / "incoming") == (0o1733, 0, 0)
    now = snapshot(tmp_path)
    assert {name: now[f"var/spool/dma/{name}"] for name in queue} == queue  # the queue, untouched
    for kept in ("var/mail", "etc/dma/dma.conf", "etc/dma", "usr/sbin/dma"):
        assert now[kept] == original[kept]
    assert not (tmp_path / "etc/systemd").exists()

    before = snapshot(tmp_path)
    out = run("install", str(tmp_path), "--no-systemd")
    assert out.endswith("nothing to change: dma is installed\n")
    assert snapshot(tmp_path) == before

    out = run("uninstall", str(tmp_path))
    after = snapshot(tmp_path)
    # Everything as it was, but the directories' change times and the restored links' inodes.
    assert after.keys() == original.keys()
    for path, (st_mode, uid, gid, _, _, what) in original.items():
        assert after[path][:3] == (st_mode, uid, gid) and after[path][5] == what, path
    assert mode(spool) == (0o2770, 0, MAIL_GID)


@ROOT_ONLY
def test_uninstall_keeps_mail_and_an_edited_config(tmp_path: Path) -> None:
    out = run("install", str(tmp_path), "--no-systemd")
    conf = tmp_path / "etc/dma/dma.conf"
    conf.write_text(conf.read_text() + "SMARTHOST relay.example.org\n")
    (tmp_path / "var/spool/dma/Q1.1").write_text("ID: 1.1\n")
    out = run("uninstall", str(tmp_path))
    assert f"kept     {conf} (edited since the install)" in out
    assert f"kept     {tmp_path}/var/spool/dma (not empty: 1 entries)" in out
    assert conf.exists() and (tmp_path / "var/spool/dma/Q1.1").exists()
    assert not (tmp_path / "usr/sbin/sendmail").exists()
    # What is left to undo stays recorded; once the mail is gone, the next uninstall finishes.
    manifest = json.loads((tmp_path / "var/lib/dma/install.manifest").read_text())
    assert "/var/spool/dma" in manifest["dirs"] and manifest["files"] == {}
    (tmp_path / "var/spool/dma/Q1.1").unlink()
    out = run("uninstall", str(tmp_path))
    assert not (tmp_path / "var/spool").exists() and not (tmp_path / "var/lib").exists()
    assert conf.exists()  # never ours to remove once edited


@ROOT_ONLY
def test_a_link_put_back_by_a_package_upgrade(tmp_path: Path) -> None:
    c_dma_root(tmp_path)
    run("install", str(tmp_path), "--no-systemd")
    sendmail = tmp_path / "usr/sbin/sendmail"
    sendmail.unlink()
    sendmail.symlink_to("dma")  # what `apt upgrade dma` does
    out = run("install", str(tmp_path), "--no-systemd")
    assert f"removed  {sendmail} (put back since the install; {sendmail}.dma-saved kept)" in out
    assert os.readlink(sendmail) == f"{install.LIBEXEC}/sendmail"
    run("uninstall", str(tmp_path))
    assert os.readlink(sendmail) == "dma" and not (tmp_path / "usr/sbin/sendmail.dma-saved").exists()


@ROOT_ONLY
def test_refuses_to_lose_a_saved_file(tmp_path: Path) -> None:
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/sendmail").write_text("another MTA")
    (tmp_path / "usr/sbin/sendmail.dma-saved").write_text("an older one")
    with pytest.raises(Fatal) as e:
        run("install", str(tmp_path), "--no-systemd")
    assert e.value.code == EX_CONFIG and "sendmail.dma-saved exist; move one away" in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sbin", "sendmail", "sendmail.dma-saved", "usr"]


def test_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for args in (["--root"], ["--bogus"], ["--root", str(tmp_path), "extra"]):
        with pytest.raises(Fatal) as e:
            install.command("dma", "install", args)
        assert e.value.code == EX_USAGE
    with pytest.raises(Fatal) as e:
        install.command("dma", "uninstall", ["--systemd"])
    assert e.value.code == EX_USAGE and str(e.value) == "usage: dma uninstall [--root DIR]"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(Fatal) as e:
        install.command("dma", "install", ["--root", str(tmp_path)])
    assert e.value.code == EX_NOPERM and list(tmp_path.iterdir()) == []


def test_sample_config_lists_every_key() -> None:
    text = (Path(install.DATA) / "dma.conf").read_text()
    listed = {line.lstrip("#").split()[0] for line in text.splitlines() if line.lstrip("#")[:1].isupper()}
    missing = set(config._KEYS) - listed
    assert not missing
    assert len(text.splitlines()) < 60


def test_sample_config_makes_auth_verify_the_server(tmp_path: Path) -> None:
    """VERIFYCERT is on in the sample, and the AUTH keys say why and what `dma doctor` does without it."""
    text = (Path(install.DATA) / "dma.conf").read_text()
    conf = tmp_path / "dma.conf"
    conf.write_text(text + f"AUTHPATH {tmp_path / 'auth.conf'}\n")
    assert config.Config(str(conf), user_mode=False).verifycert
    before_auth = text.partition("#AUTHPATH")[0].rsplit("\n\n", 1)[1]
    assert "take the password" in before_auth and "`dma doctor` fails unless INSECURE" in before_auth


def test_a_broken_config_stops_the_install(tmp_path: Path) -> None:
    (tmp_path / "etc/dma").mkdir(parents=True)
    (tmp_path / "etc/dma/dma.conf").write_text("PORT smtp\n")
    with pytest.raises(Fatal) as e:
        run("install", str(tmp_path))
    assert e.value.code == EX_CONFIG and "PORT" in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dma", "dma.conf", "etc"]


# ---- the real thing, in a private mount namespace ------------------------------------------

INNER = r"""
import json, os, subprocess, sys

tmp, dma_bin = sys.argv[1], sys.argv[2]
report = {}

def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, check=False, **kw)

def readlink(path):
    return os.readlink(path) if os.path.islink(path) else None

LINKS = ("/usr/sbin/sendmail", "/usr/lib/sendmail", "/usr/bin/mailq", "/usr/bin/newaliases")
before = {p: readlink(p) for p in LINKS}
for d in ("usr", "etc", "var"):
    os.makedirs(f"{tmp}/{d}-up"); os.makedirs(f"{tmp}/{d}-work")
    r = sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir=/{d},upperdir={tmp}/{d}-up,workdir={tmp}/{d}-work", f"/{d}")
    if r.returncode:
        print(json.dumps({"skip": f"overlay on /{d}: {r.stderr.strip()}"})); sys.exit(0)
for d in ("/var/spool", "/var/mail", "/etc/dma"):
    os.makedirs(d, exist_ok=True)
    r = sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d)
    assert r.returncode == 0, r.stderr
# Our own aliases file: the host's may map `nobody: root`, as Debian's does.
open("/etc/aliases", "w").close()
import grp
os.chown("/var/mail", 0, grp.getgrnam("mail").gr_gid)
os.chmod("/var/mail", 0o2775)

env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
first = sh(dma_bin, "install", "--systemd", env=env)
second = sh(dma_bin, "install", "--systemd", env=env)
report["install"] = [first.returncode, first.stdout, first.stderr]
report["again"] = [second.returncode, second.stdout, second.stderr]
report["links"] = {p: readlink(p) for p in before}
report["before"] = before
report["saved"] = {p: readlink(p + ".dma-saved") for p in before}
def st(p):
    s = os.stat(p)
    return [s.st_mode & 0o7777, s.st_uid, s.st_gid]
report["dirs"] = {p: st(p) for p in ("/var/spool/dma", "/var/spool/dma/incoming", "/var/mail")}
report["units"] = sorted(n for n in os.listdir("/etc/systemd/system") if n.startswith("dma."))

msg = "Subject: from nobody\n\nhello from an unprivileged user\n"
sub = sh("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         "/usr/sbin/sendmail", "nobody", input=msg, env=env, cwd="/")
report["submit"] = [sub.returncode, sub.stdout, sub.stderr]
report["drops"] = sorted((n[0], os.lstat("/var/spool/dma/incoming/" + n).st_uid)
                         for n in os.listdir("/var/spool/dma/incoming"))
mailq = sh("/usr/bin/mailq", env=env, cwd="/")
report["mailq"] = [mailq.returncode, mailq.stdout, mailq.stderr]
serve = sh("/usr/local/libexec/dma/dma", "serve", env=env, cwd="/", timeout=60)
report["serve"] = [serve.returncode, serve.stdout, serve.stderr]
report["after_serve"] = os.listdir("/var/spool/dma/incoming")
try:
    report["mbox"] = open("/var/mail/nobody").read()
    report["mbox_mode"] = st("/var/mail/nobody")
except OSError as e:
    report["mbox"] = repr(e)

un = sh(dma_bin, "uninstall", env=env)
report["uninstall"] = [un.returncode, un.stdout, un.stderr]
report["restored"] = {p: readlink(p) for p in before}
ours = ("/usr/local/libexec/dma", "/var/lib/dma", "/etc/systemd/system/dma.service")
report["left"] = [os.path.exists(p) for p in ours]
print(json.dumps(report))
"""


@ROOT_ONLY
@pytest.mark.skipif(
    not (shutil.which("unshare") and shutil.which("setpriv")), reason="needs unshare and setpriv"
)
def test_live_install_in_a_private_mount_namespace(tmp_path: Path, traversable: None) -> None:
    tmp_path.chmod(0o755)
    report = in_private_namespace(INNER, str(tmp_path), str(BIN / "dma"))
    assert report["install"][0] == 0, report["install"]
    assert report["again"][0] == 0, report["again"]
    lines = report["again"][1].splitlines()
    assert lines[-1] == "done     nothing to change: dma is installed", lines
    assert all(line.startswith("note") for line in lines[:-1]), lines
    assert report["links"] == {
        "/usr/sbin/sendmail": "/usr/local/libexec/dma/sendmail",
        "/usr/lib/sendmail": "/usr/local/libexec/dma/sendmail",
        "/usr/bin/mailq": "/usr/local/libexec/dma/mailq",
        "/usr/bin/newaliases": "/usr/local/libexec/dma/newaliases",
    }
    # What was there (this machine's C dma links, if any) was saved, and comes back at uninstall.
    assert report["saved"] == report["before"] == report["restored"]
    assert report["dirs"] == {
        "/var/spool/dma": [0o711, 0, 0],
        "/var/spool/dma/incoming": [0o1733, 0, 0],
        "/var/mail": [0o2775, 0, MAIL_GID],
    }
    assert report["units"] == ["dma.path", "dma.service", "dma.timer"]
    assert "systemd is not running" in report["install"][1]
    assert report["submit"] == [0, "", ""]
    assert report["drops"] == [["D", 65534], ["E", 65534]]
    assert report["serve"][0] == 0, report["serve"]
    assert report["after_serve"] == []
    mbox = report["mbox"]
    assert "Received: from nobody (uid 65534)\n" in mbox and "hello from an unprivileged user" in mbox, mbox
    assert report["mbox_mode"] == [0o620, 65534, MAIL_GID]
    assert report["uninstall"][0] == 0, report["uninstall"]
    assert report["left"] == [False, False, False]

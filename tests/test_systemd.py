"""The systemd units that `dma install` writes, run by a real systemd.

Inside a private mount and network namespace (overlays over /usr, /etc and /var, tmpfs over /run,
/var/spool, /var/mail and /etc/dma), systemd is started as PID 1 of a new PID namespace, as a
container manager would start it: /sys read-only, /dev/console a file of ours, `container=` set.
Its unit directory holds only the distribution's targets and slices (no services, mounts or
sockets), so nothing but dma's own units ever runs: no tmpfiles cleaning, no sysctl, no udev, no
remount of the host's file systems. Then, as a user would: `dma install` (which finds systemd
running, reloads it and enables dma.path and dma.timer), a message from `nobody` through
/usr/sbin/sendmail, delivered by the dma.service that dma.path starts, and `dma uninstall`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import in_private_namespace

BIN = Path(sys.executable).parent
SYSTEMD = "/lib/systemd/systemd"

INNER = r"""
import glob, grp, json, os, shutil, subprocess, sys, time

tmp, dma_bin = sys.argv[1], sys.argv[2]
report = {}


def sh(*args, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, check=False, **kw)


def must(*args):
    r = sh(*args)
    if r.returncode:
        print(json.dumps({"skip": f"{' '.join(args)}: {r.stderr.strip()}"}))
        sys.exit(0)


for d in ("usr", "etc", "var"):
    os.makedirs(f"{tmp}/{d}-up"); os.makedirs(f"{tmp}/{d}-work")
    must("mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir=/{d},upperdir={tmp}/{d}-up,workdir={tmp}/{d}-work", f"/{d}")
# Only targets and slices: what dma's units depend on, and nothing that could act on the host.
units = "/usr/lib/systemd/system"
kept = {p: open(p).read() for p in glob.glob(f"{units}/*.target") + glob.glob(f"{units}/*.slice")
        if os.path.isfile(p)}
for d in ("/run", "/var/spool", "/var/mail", "/etc/dma", units):
    os.makedirs(d, exist_ok=True)
    must("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d)
for p, text in kept.items():
    with open(p, "w") as f:
        f.write(text)
# Our own aliases file: the host's may map `nobody: root`, as Debian's does.
open("/etc/aliases", "w").close()
os.chown("/var/mail", 0, grp.getgrnam("mail").gr_gid)
os.chmod("/var/mail", 0o2775)
must("mount", "-o", "remount,bind,ro", "/sys")
open(f"{tmp}/console", "w").close()
must("mount", "--bind", f"{tmp}/console", "/dev/console")
with open("/etc/systemd/system/dma-test.target", "w") as f:
    f.write("[Unit]\nDescription=dma's test: start nothing else\n")
systemd_out = open(f"{tmp}/systemd.out", "w+")

hierarchies = [p for p in glob.glob("/sys/fs/cgroup/*") if os.path.isdir(p)]
cgroups_before = {h: set(os.listdir(h)) for h in hierarchies}
unshare = subprocess.Popen(
    ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "unchanged",
     "/usr/bin/env", "container=dma-test", "/lib/systemd/systemd", "--system",
     "--unit=dma-test.target"],
    stdin=subprocess.DEVNULL, stdout=systemd_out, stderr=subprocess.STDOUT)
pid = None
try:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not os.path.exists("/run/systemd/private"):
        time.sleep(0.1)
    children = sh("pgrep", "-P", str(unshare.pid)).stdout.split()
    if not children or not os.path.exists("/run/systemd/private"):
        systemd_out.seek(0)
        raise RuntimeError("systemd did not start: " + systemd_out.read()[-500:])
    pid = children[0]
    inside = ["nsenter", "-t", pid, "-p", "-m"]
    report["state"] = sh(*inside, "systemctl", "is-system-running", "--wait", timeout=60).stdout.strip()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    r = sh(*inside, dma_bin, "install", env=env)
    report["install"] = [r.returncode, r.stdout, r.stderr]
    if r.returncode == 0:  # else the test reports why
        report["enabled"] = sh(*inside, "systemctl", "is-enabled", "dma.path", "dma.timer").stdout.split()
        report["active"] = sh(*inside, "systemctl", "is-active", "dma.path", "dma.timer").stdout.split()
        t0 = time.monotonic()
        r = sh("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
               "/usr/sbin/sendmail", "nobody", input="Subject: via systemd\n\nhello through dma.path\n",
               env=env, cwd="/")
        report["submit"] = [r.returncode, r.stdout, r.stderr]
        mbox = ""
        while time.monotonic() < t0 + 60 and "hello through dma.path" not in mbox:
            time.sleep(0.2)
            try:
                mbox = open("/var/mail/nobody").read()
            except FileNotFoundError:
                pass
        report["mbox"] = mbox
        # A user plants what is not a drop, of every type, then sends again: dma.path must not
        # be driven into its start limit, and the mail still arrives.
        plant = ("import os, socket; b = '/var/spool/dma/incoming'\n"
                 "os.makedirs(b + '/Ejunk/a/b'); open(b + '/Ejunk/a/b/f', 'w').write('x')\n"
                 "os.symlink('/etc', b + '/Esym'); os.mkfifo(b + '/Efifo')\n"
                 "socket.socket(socket.AF_UNIX).bind(b + '/Esock'); os.mkdir(b + '/Edir')")
        nobody = ("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups")
        report["plant"] = sh(*nobody, sys.executable, "-c", plant, cwd="/").stderr
        t0 = time.monotonic()
        again = "Subject: again\n\nafter the junk\n"
        sh(*nobody, "/usr/sbin/sendmail", "nobody", input=again, env=env, cwd="/")
        while time.monotonic() < t0 + 60 and "after the junk" not in open("/var/mail/nobody").read():
            time.sleep(0.2)
        report["after_junk"] = [time.monotonic() - t0, "after the junk" in open("/var/mail/nobody").read()]
        time.sleep(5)  # long enough for a restart loop to reach the start limit
        show = sh(*inside, "systemctl", "show", "dma.path", "dma.service", "-p", "Result")
        report["path_result"] = show.stdout.split()
        report["drops_left"] = os.listdir("/var/spool/dma/incoming")
        # The service ran and exited cleanly once the queue was idle.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            show = dict(line.split("=", 1) for line in sh(
                *inside, "systemctl", "show", "dma.service",
                "-p", "Result", "-p", "ActiveState", "-p", "ExecMainStatus",
                "-p", "ExecMainStartTimestampMonotonic",
            ).stdout.split())
            if show.get("ActiveState") in ("inactive", "failed"):
                break
            time.sleep(0.2)
        report["service"] = show
        report["status"] = sh(*inside, "systemctl", "status", "dma.service", "--no-pager").stdout
        r = sh(*inside, dma_bin, "uninstall", env=env)
        report["uninstall"] = [r.returncode, r.stdout, r.stderr]
        report["after"] = sh(*inside, "systemctl", "list-unit-files", "--no-legend", "dma.*").stdout.strip()
        report["units_left"] = sorted(n for n in os.listdir("/etc/systemd/system") if n.startswith("dma."))
except RuntimeError as e:
    report = {"skip": str(e)}
finally:
    if pid:
        sh("kill", "-KILL", pid)
    unshare.wait(timeout=30)
    # systemd made cgroups next to the host's: remove the ones it added, deepest first.
    for h, before in cgroups_before.items():
        for name in set(os.listdir(h)) - before:
            for path, _, _ in sorted(os.walk(f"{h}/{name}"), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
print(json.dumps(report))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="starts systemd as PID 1 of a namespace: root only")
@pytest.mark.skipif(
    not all(map(shutil.which, ("unshare", "nsenter", "setpriv", "systemctl"))) or not os.path.exists(SYSTEMD),
    reason="needs systemd, unshare, nsenter and setpriv",
)
def test_units_under_a_real_systemd(tmp_path: Path, traversable: None) -> None:
    tmp_path.chmod(0o755)
    report = in_private_namespace(INNER, str(tmp_path), str(BIN / "dma"), net=True, timeout=240)
    assert report["state"] == "running", report
    assert report["install"][0] == 0, report["install"]
    # With systemd running, install reloads it and enables the units (no "not running" note).
    assert "systemd is not running" not in report["install"][1], report["install"]
    assert report["enabled"] == ["enabled", "enabled"], report
    assert report["active"] == ["active", "active"], report
    assert report["submit"] == [0, "", ""], report["submit"]
    mbox = report["mbox"]
    assert "Received: from nobody (uid 65534)" in mbox and "hello through dma.path" in mbox, report
    assert report["drops_left"] == [], report
    assert report["plant"] == "" and report["after_junk"][1], report
    assert report["path_result"] == ["Result=success", "Result=success"], report["path_result"]
    assert report["service"]["Result"] == "success", report["status"]
    assert report["service"]["ExecMainStatus"] == "0", report["status"]
    assert int(report["service"]["ExecMainStartTimestampMonotonic"]) > 0, "dma.path never started dma.service"
    assert report["uninstall"][0] == 0, report["uninstall"]
    assert report["units_left"] == [], report
    assert "run      systemctl disable --now dma.service dma.path dma.timer" in report["uninstall"][1]
    assert report["after"] == "", "systemd still knows dma's units after uninstall"

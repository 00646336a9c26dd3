"""`./dev demo`: the main job on an embedded default, in a throw-away user-mode state directory.

It runs the real programs: `sendmail` delivers one message to your local mailbox, `sendmail -bq`
queues another for later, and `mailq` lists what is waiting.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile

MESSAGE = b"""Subject: hello from dma
To: {user}

This message went through sendmail, the Rust spool and local delivery.
From here on, a line starting with "From " is quoted in the mbox.
"""


def run(
    argv: list[str], env: dict[str, str], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    print(f"$ {' '.join(argv)}" + (" < message" if stdin is not None else ""), flush=True)
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    sys.stdout.write(done.stdout.decode(errors="replace"))
    sys.stderr.write(done.stderr.decode(errors="replace"))
    print(f"  (exit status {done.returncode})\n", flush=True)
    return done


def main() -> int:
    bindir = os.path.dirname(sys.executable)
    user = pwd.getpwuid(os.getuid()).pw_name
    with tempfile.TemporaryDirectory(prefix="dma-demo-") as state:
        conf = os.path.join(state, "dma.conf")
        with open(conf, "w") as f:
            f.write(f"SPOOLDIR {state}/spool\nMBOXDIR {state}/mail\nALIASES {state}/aliases\n")
        with open(os.path.join(state, "aliases"), "w") as f:
            f.write(f"postmaster: {user}\n")
        for sub in ("spool", "mail"):
            os.mkdir(os.path.join(state, sub), 0o700)
        env = dict(os.environ, DMA_CONF=conf, DMA_STATE_DIR=state)
        message = MESSAGE.replace(b"{user}", user.encode())
        sendmail, mailq = os.path.join(bindir, "sendmail"), os.path.join(bindir, "mailq")

        print(f"# state directory {state}, config {conf}\n")
        print("# 1. deliver a message to postmaster (an alias of you) in the foreground")
        first = run([sendmail, "-D", "postmaster"], env, message)
        print("# 2. queue one for later without delivering it (-bq)")
        second = run([sendmail, "-bq", "-f", "demo@example.org", "someone@example.net"], env, message)
        print("# 3. what is waiting in the queue")
        listing = run([mailq], env)
        mbox = os.path.join(state, "mail", user)
        print(f"# 4. your mailbox {mbox}")
        with open(mbox) as f:
            print(f.read())
        ok = first.returncode == 0 and second.returncode == 0 and b"someone@example.net" in listing.stdout
    print("demo " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

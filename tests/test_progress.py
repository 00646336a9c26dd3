"""`dma -q -D`: a progress line and a summary on a terminal; silence without one unless -v."""

from __future__ import annotations

import os
import pty
import subprocess

from dma_fixtures import DmaEnv, program
from smtp_servers import Smtpd


def queue_three(dma_env: DmaEnv, server: Smtpd) -> None:
    dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
    dma_env.write_conf()
    for n in range(3):
        assert dma_env.run(["-bq", f"r{n}@remote.test"], b"Subject: p\n\nx\n").returncode == 0


def test_progress_and_summary_on_a_terminal(dma_env: DmaEnv) -> None:
    with Smtpd() as server:
        queue_three(dma_env, server)
        leader, follower = pty.openpty()
        try:
            done = subprocess.run(
                [program("dma"), "-q", "-D"],
                stderr=follower,
                stdout=subprocess.DEVNULL,
                env=dma_env.env,
                timeout=60,
            )
            os.close(follower)
            follower = -1
            shown = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal's other end is closed: all read
                    break
                if not chunk:
                    break
                shown += chunk
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
    assert done.returncode == 0
    text = shown.decode()
    assert "\r3 sent, 0 deferred, 0 failed, 0 remaining" in text, text
    assert text.rstrip().endswith("dma: 3 sent, 0 deferred, 0 failed, 0 bounces queued"), text


def test_silent_without_a_terminal_unless_verbose(dma_env: DmaEnv) -> None:
    with Smtpd() as server:
        queue_three(dma_env, server)
        quiet = dma_env.run(["-q", "-D"], prog="dma")
        assert quiet.returncode == 0 and quiet.stderr == b"", quiet.stderr
        queue_three(dma_env, server)
        verbose = dma_env.run(["-q", "-D", "-v"], prog="dma")
    lines = verbose.stderr.decode().splitlines()
    assert sum("delivered to r" in line for line in lines) == 3, lines
    assert lines[-1] == "dma: 3 sent, 0 deferred, 0 failed, 0 bounces queued", lines

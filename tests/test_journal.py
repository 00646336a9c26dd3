"""The delivered journal: confirmed recipients are not sent twice, and nothing else is removed."""

from __future__ import annotations

from dma_fixtures import DmaEnv
from smtp_servers import Smtpd

MESSAGE = b"Subject: journal\n\nbody\n"


def use(dma_env: DmaEnv, server: Smtpd) -> None:
    dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
    dma_env.write_conf()


def test_a_message_after_a_delivered_one_is_not_mistaken_for_it(dma_env: DmaEnv) -> None:
    # Regression: ids came from the reused inode of the temporary file, so a message queued right
    # after a delivery got the delivered one's id and the journal replay removed it unsent.
    with Smtpd() as server:
        use(dma_env, server)
        assert dma_env.run(["-D", "a@remote.test"], MESSAGE).returncode == 0
        for n in range(5):
            assert dma_env.run(["-bq", f"b{n}@remote.test"], MESSAGE).returncode == 0
        run = dma_env.run(["-q", "-D"], prog="dma")
        assert run.returncode == 0, run.stderr
        received = sorted(r for m in server.handler.messages for r in m.rcpt_tos)
    assert received == ["a@remote.test"] + [f"b{n}@remote.test" for n in range(5)]
    assert dma_env.entries() == []


def test_journal_replay_removes_confirmed_entries_without_sending(dma_env: DmaEnv) -> None:
    # A runner killed between the server's final reply and recording it leaves the entry queued
    # and its id in the journal; the next run must not send it again.
    assert dma_env.run(["-bq", "x@remote.test", "y@remote.test"], MESSAGE).returncode == 0
    confirmed, _ = sorted(e.id for e in dma_env.entries())
    (dma_env.spool / "delivered").write_text(f"{confirmed}\nnot-in-the-queue.1\n")
    with Smtpd() as server:
        use(dma_env, server)
        run = dma_env.run(["-q", "-D"], prog="dma")
        assert run.returncode == 0, run.stderr
        received = [r for m in server.handler.messages for r in m.rcpt_tos]
    assert dma_env.entries() == []
    assert received == ["y@remote.test"], "only the unconfirmed recipient is sent"
    # The journal was consumed, and so was this run's own confirmation of the other once recorded:
    # a runner replays (and so empties) the journal whenever its deliveries have all ended.
    assert not (dma_env.spool / "delivered").exists()

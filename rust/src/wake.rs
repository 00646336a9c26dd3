//! How a lingering runner learns, at once and without polling, that there is work: inotify on the
//! spool directory (a committed message is renamed to `M<id>`; `wake` and `flush` are touched)
//! and on the drop directory (an envelope `E<id>` is renamed into place), plus an eventfd that the
//! runner's own delivery threads write to when a session ends.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

pub struct Waker {
    inotify: OwnedFd,
    /// Watch descriptor of the drop directory.
    drop_wd: Option<i32>,
    /// Counts the `notify` calls not yet seen by a `wait`.
    notified: OwnedFd,
}

impl Waker {
    pub fn new(spool: &Path, drop: Option<&Path>) -> io::Result<Waker> {
        let inotify = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        // Not CLOSE_WRITE: every file the spool's writers close (a message being written, its Q
        // file, the journal) would wake the runner for nothing, several times a message.
        let spool_events = WatchFlags::MOVED_TO | WatchFlags::ATTRIB;
        inotify::add_watch(&inotify, spool, spool_events)?;
        let drop_wd = drop.map(|dir| inotify::add_watch(&inotify, dir, WatchFlags::MOVED_TO));
        let notified = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Waker {
            inotify,
            drop_wd: drop_wd.transpose()?,
            notified,
        })
    }

    pub fn notify(&self) {
        let _ = rustix::io::write(&self.notified, &1u64.to_ne_bytes());
    }

    /// Wait until there is work, `timeout` passes, or a signal arrives (reported as work: the
    /// caller checks its signals). Returns (work: new mail, a `wake` or a finished session, so
    /// look at the queue again; flush: `flush` was touched by `dma -q`, every deferred entry is
    /// due now). Every pending event is read at once, so a flood of events costs one wake-up.
    pub fn wait(&self, timeout: Duration) -> io::Result<(bool, bool)> {
        let mut fds = [
            PollFd::new(&self.inotify, PollFlags::IN),
            PollFd::new(&self.notified, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, Timespec::try_from(timeout).ok().as_ref()) {
            // A signal: the caller checks it, the events wait for the next call.
            Err(rustix::io::Errno::INTR) => return Ok((true, false)),
            polled => _ = polled?,
        }
        let mut work = rustix::io::read(&self.notified, &mut [0u8; 8]).is_ok();
        let mut flush = false;
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.inotify, &mut buf);
        while let Ok(event) = events.next() {
            let name = event.file_name().map_or(&b""[..], CStr::to_bytes);
            if event.events().contains(ReadFlags::QUEUE_OVERFLOW) {
                work = true; // events were lost: look at everything
            } else if Some(event.wd()) == self.drop_wd {
                work |= name.starts_with(b"E");
            } else if name == b"flush" {
                flush = true;
            } else {
                let moved = event.events().contains(ReadFlags::MOVED_TO);
                work |= name == b"wake" || (moved && name.starts_with(b"M"));
            }
        }
        Ok((work || flush, flush))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    #[test]
    fn wakes_on_commit_wake_flush_and_notify_only() {
        let dir = crate::test_util::tempdir("wake");
        let waker = Waker::new(&dir, None).unwrap();
        let nothing = waker.wait(Duration::from_millis(10)).unwrap();
        assert_eq!(nothing, (false, false));
        // A record rewrites Q files: no wake-up for our own work.
        fs::write(dir.join("tmp_Q1"), "x").unwrap();
        fs::rename(dir.join("tmp_Q1"), dir.join("Q1")).unwrap();
        assert!(!waker.wait(Duration::from_millis(10)).unwrap().0);
        // A message still being written, its Q file and the journal do not even end the wait.
        for name in ["tmp_1", "Q1.1", "delivered"] {
            fs::write(dir.join(name), "x").unwrap();
        }
        let start = Instant::now();
        assert!(!waker.wait(Duration::from_millis(50)).unwrap().0);
        assert!(
            start.elapsed() >= Duration::from_millis(45),
            "woken by a closed file"
        );
        fs::rename(dir.join("tmp_1"), dir.join("M1.1")).unwrap();
        assert!(waker.wait(Duration::from_secs(1)).unwrap().0);
        // As queue.py's `wake` (or `touch`) does it: created, then both its times set.
        let now = std::time::SystemTime::now();
        let times = fs::FileTimes::new().set_accessed(now).set_modified(now);
        fs::File::create(dir.join("flush"))
            .unwrap()
            .set_times(times)
            .unwrap();
        let w = waker.wait(Duration::from_secs(1)).unwrap();
        assert_eq!(w, (true, true));
        let start = Instant::now();
        waker.notify();
        waker.notify();
        assert!(waker.wait(Duration::from_secs(5)).unwrap().0);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(!waker.wait(Duration::from_millis(10)).unwrap().0, "drained");
    }
}

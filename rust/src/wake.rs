//! How a lingering runner learns, at once and without polling, that there is work: inotify on the
//! spool directory (a committed message is renamed to `M<id>`; `wake` and `flush` are touched)
//! and on the drop directory (an envelope `E<id>` is renamed into place), plus a pipe that the
//! runner's own delivery threads write to when a session ends.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// What a wait saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// New mail, a `wake`, or a finished session: look at the queue again.
    pub work: bool,
    /// `flush` was touched (`dma -q`): every deferred entry is due now.
    pub flush: bool,
}

pub struct Waker {
    inotify: OwnedFd,
    /// Watch descriptor of the drop directory, whose `E` files count as new mail.
    drop_wd: i32,
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn add_watch(fd: &OwnedFd, dir: &Path, mask: u32) -> io::Result<i32> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid descriptor and a NUL-terminated path.
    check(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) })
}

impl Waker {
    pub fn new(spool: &Path, drop: Option<&Path>) -> io::Result<Waker> {
        // SAFETY: plain system calls; the descriptors are owned from here on.
        let inotify = unsafe {
            OwnedFd::from_raw_fd(check(libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))?)
        };
        add_watch(
            &inotify,
            spool,
            libc::IN_MOVED_TO | libc::IN_ATTRIB | libc::IN_CLOSE_WRITE,
        )?;
        let drop_wd = match drop {
            Some(dir) => add_watch(&inotify, dir, libc::IN_MOVED_TO)?,
            None => -1,
        };
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
        // SAFETY: both were just created and are ours.
        let (pipe_read, pipe_write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Waker {
            inotify,
            drop_wd,
            pipe_read,
            pipe_write,
        })
    }

    /// Wake a `wait` in another thread (a full pipe already says so).
    pub fn notify(&self) {
        // SAFETY: one byte from a valid buffer to our own pipe.
        unsafe { libc::write(self.pipe_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// Wait until there is work, `timeout` passes, or a signal arrives (reported as work: the
    /// caller checks its signals). Every pending event is read at once, so a flood of events
    /// costs one wake-up, not one per event.
    pub fn wait(&self, timeout: Duration) -> io::Result<Woken> {
        let mut fds = [
            libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.pipe_read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of two pollfd.
        if let Err(e) = check(unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) }) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Woken {
                    work: true,
                    flush: false,
                });
            }
            return Err(e);
        }
        let mut woken = Woken {
            work: drain(&self.pipe_read) > 0,
            ..Woken::default()
        };
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our own buffer.
            let n = unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            self.parse(&buf[..n], &mut woken);
        }
        Ok(woken)
    }

    fn parse(&self, mut events: &[u8], woken: &mut Woken) {
        let header = std::mem::size_of::<libc::inotify_event>();
        while events.len() >= header {
            // SAFETY: the kernel writes whole events; read_unaligned copes with any alignment.
            let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(events.as_ptr().cast()) };
            let end = (header + event.len as usize).min(events.len());
            let name = &events[header..end];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                woken.work = true; // events were lost: look at everything
            } else if event.wd == self.drop_wd {
                woken.work |= name.first() == Some(&b'E');
            } else if name == b"flush" {
                woken.flush = true;
                woken.work = true;
            } else {
                woken.work |=
                    name == b"wake" || (event.mask & libc::IN_MOVED_TO != 0 && name.first() == Some(&b'M'));
            }
            events = &events[end..];
        }
    }
}

fn drain(fd: &OwnedFd) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => total += n,
            _ => return total,
        }
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
        assert_eq!(nothing, Woken::default());
        // A record rewrites Q files: no wake-up for our own work.
        fs::write(dir.join("tmp_Q1"), "x").unwrap();
        fs::rename(dir.join("tmp_Q1"), dir.join("Q1")).unwrap();
        assert!(!waker.wait(Duration::from_millis(10)).unwrap().work);
        fs::write(dir.join("tmp_1"), "x").unwrap();
        fs::rename(dir.join("tmp_1"), dir.join("M1.1")).unwrap();
        assert!(waker.wait(Duration::from_secs(1)).unwrap().work);
        fs::write(dir.join("flush"), "").unwrap();
        let w = waker.wait(Duration::from_secs(1)).unwrap();
        assert!(w.work && w.flush);
        let start = Instant::now();
        waker.notify();
        waker.notify();
        assert!(waker.wait(Duration::from_secs(5)).unwrap().work);
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(!waker.wait(Duration::from_millis(10)).unwrap().work, "drained");
    }
}

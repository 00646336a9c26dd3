//! Local mailboxes: append to an mbox (C dma's `From ` line, mboxrd quoting, one empty line after
//! each message) or deliver into a Maildir; the policy (who, where, which owner) is local.py's.
//!
//! Both stream the spooled `M` file in constant memory and never follow a symlink in the last path
//! component; an mbox that is not a regular file or has more than one hard link is refused (the
//! 2016 symlink/hard-link class of attacks on `/var/mail`).

use std::fs::{File, OpenOptions, Permissions, TryLockError};
use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{fchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use crate::errors::{DmaError, IoContext, Result};

const CHUNK: usize = 64 * 1024;

/// Append `message` to `mbox` under an exclusive `flock` awaited up to `lock_timeout` (then
/// `EWOULDBLOCK`), and fsync it; a failure truncates the mbox back to the size found under the
/// lock. `create`: the (uid, gid, mode) of a missing mbox.
pub fn mbox_append(
    mbox: &Path,
    message: &Path,
    envelope_sender: &str,
    when: &str,
    create: (u32, u32, u32),
    lock_timeout: Duration,
) -> Result<()> {
    let sender = Some(envelope_sender)
        .filter(|s| !s.is_empty())
        .unwrap_or("MAILER-DAEMON");
    // The `From ` line is one line: a CR, LF or NUL in its fields would forge mbox structure.
    for (what, value) in [("envelope sender", sender), ("date", when)] {
        if value.bytes().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
            return Err(DmaError::Data(format!("invalid {what} for mbox: {value:?}")));
        }
    }
    // Open the message first: a missing M file must not touch the mbox at all.
    let input = File::open(message).context(|| format!("can not open {}", message.display()))?;
    let out = open_mbox(mbox, create)?;
    lock_with_timeout(&out, lock_timeout).context(|| format!("can not lock {}", mbox.display()))?;
    // Size under the lock: nobody else appends between here and our last write.
    let size = out
        .metadata()
        .context(|| format!("can not stat {}", mbox.display()))?
        .len();
    let result = write_mbox_entry(&out, input, &format!("From {sender} {when}\n"))
        .and_then(|()| out.sync_data())
        .context(|| format!("error writing {}", mbox.display()));
    if result.is_err() && out.set_len(size).is_ok() {
        // Best effort: leave the mbox exactly as we found it. The write error is what we report.
        let _ = out.sync_data();
    }
    result
}

/// Open the mbox for appending, creating it exclusively with `create`'s owner and mode. Refused:
/// anything but a regular file, more than one hard link, and another owner than that one or root.
fn open_mbox(mbox: &Path, (uid, gid, mode): (u32, u32, u32)) -> Result<File> {
    // O_NONBLOCK so that a FIFO planted in place of the mbox cannot hang us in open(); O_NOCTTY
    // so that a tty cannot become our controlling terminal. Neither changes anything for the
    // regular file that the fstat below insists on.
    let open = |new: bool| {
        OpenOptions::new()
            .append(true)
            .create_new(new)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(mbox)
    };
    let ctx = |what: &str| format!("can not {what} {}", mbox.display());
    let file = match open(true) {
        Ok(f) => {
            fchown(&f, Some(uid), Some(gid)).context(|| ctx("chown"))?;
            f.set_permissions(Permissions::from_mode(mode))
                .context(|| ctx("chmod"))?;
            f
        }
        // It exists (or somebody else created it meanwhile): use it, with all checks.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => open(false).context(|| ctx("open"))?,
        Err(e) => return Err(e).context(|| ctx("create")),
    };
    let meta = file.metadata().context(|| ctx("stat"))?;
    let owner = meta.uid();
    let (errno, why) = if !meta.file_type().is_file() {
        (libc::EINVAL, "not a regular file".to_owned())
    } else if meta.nlink() > 1 {
        (libc::EMLINK, "it has more than one hard link".to_owned())
    } else if owner != uid && owner != 0 {
        (libc::EPERM, format!("owned by uid {owner}, expected {uid}"))
    } else {
        return Ok(file);
    };
    Err(io::Error::from_raw_os_error(errno)).context(|| format!("refusing mbox {}: {why}", mbox.display()))
}

/// Exclusive `flock` (std's `try_lock` is `flock` on Linux), polled until `timeout`: C dma blocks
/// under a 100 s alarm; polling gives the same wait without signals.
fn lock_with_timeout(file: &File, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => {}
            locked => return locked.map_err(io::Error::from),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from_raw_os_error(libc::EWOULDBLOCK));
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Write `from_line`, the message with mboxrd quoting (a line matching `^>*From ` gets one more
/// `>`), a final LF if the message lacks one, then one empty line. A line is read in pieces of at
/// most `CHUNK` octets, and its first piece decides: a run of `>` longer than that is not quoted.
fn write_mbox_entry(out: impl Write, input: impl Read, from_line: &str) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(CHUNK, out);
    out.write_all(from_line.as_bytes())?;
    let mut input = BufReader::with_capacity(CHUNK, input);
    let (mut piece, mut line_start) = (Vec::new(), true);
    while (&mut input).take(CHUNK as u64).read_until(b'\n', &mut piece)? > 0 {
        let quotes = piece.iter().take_while(|&&b| b == b'>').count();
        if line_start && piece[quotes..].starts_with(b"From ") {
            out.write_all(b">")?;
        }
        out.write_all(&piece)?;
        line_start = piece.ends_with(b"\n");
        piece.clear();
    }
    if !line_start {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")?;
    out.flush()
}

/// Deliver `input` into `maildir` as spooled, making it and its `tmp`, `new` and `cur` (0700) if
/// missing; returns the file name in `new/`. The caller opened `input`: a process that gave up root
/// to deliver as the mailbox's owner can still read the spool's copy.
pub fn maildir_deliver(maildir: &Path, mut input: File, hostname: &str) -> Result<String> {
    let top = open_or_make_dir(CWD, maildir, |what| {
        format!("can not {what} {}", maildir.display())
    })?;
    let sub = |name: &str| {
        let bad = |_: &str| format!("bad Maildir directory {}/{name}", maildir.display());
        open_or_make_dir(&top, Path::new(name), bad)
    };
    let (tmp, new, _) = (sub("tmp")?, sub("new")?, sub("cur")?);
    let unique = unique_name(hostname);
    let ctx = |what: &str| format!("{what} {}/tmp/{unique}", maildir.display());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = rustix::fs::openat(&tmp, &unique, flags, Mode::from(0o600));
    let mut file = File::from(file.context(|| ctx("can not create"))?);
    let written = (|| -> Result<()> {
        // std's `io::copy` uses `copy_file_range`/`sendfile` between files.
        io::copy(&mut input, &mut file).context(|| ctx("error writing"))?;
        file.sync_all().context(|| ctx("can not fsync"))?;
        rustix::fs::linkat(&tmp, &unique, &new, &unique, AtFlags::empty())
            .context(|| format!("can not link {unique} into {}/new", maildir.display()))?;
        rustix::fs::fsync(&new).context(|| format!("can not fsync {}/new", maildir.display()))
    })();
    // Delivered or not, the tmp name goes (a stray one is ignored by Maildir readers).
    let _ = rustix::fs::unlinkat(&tmp, &unique, AtFlags::empty());
    written.map(|()| unique)
}

/// The Maildir convention's unique name; `/` and `:` in the host name are written `\057` and `\072`.
fn unique_name(hostname: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = UNIX_EPOCH.elapsed().unwrap_or_default();
    let host: String = hostname.chars().filter(|c| !c.is_control()).collect();
    let host = host.replace('/', "\\057").replace(':', "\\072");
    let host = if host.is_empty() { "localhost" } else { &host };
    let (secs, micros, pid) = (now.as_secs(), now.subsec_micros(), std::process::id());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{secs}.M{micros}P{pid}Q{n}.{host}")
}

/// Open a directory without following a symlink in its last component, made (0700) when missing.
fn open_or_make_dir(parent: impl AsFd, path: &Path, ctx: impl Fn(&str) -> String) -> Result<OwnedFd> {
    let made = match rustix::fs::mkdirat(&parent, path, Mode::from(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(e).context(|| ctx("create directory")),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&parent, path, flags, Mode::empty()).context(|| ctx("open directory"))?;
    if made {
        // mkdir's mode is filtered by the umask; we want exactly 0700.
        rustix::fs::fchmod(&fd, Mode::from(0o700)).context(|| ctx("chmod"))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Ours, as a user's own mbox in user mode.
    fn mine() -> (u32, u32, u32) {
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        (uid.as_raw(), gid.as_raw(), 0o600)
    }

    fn append(mbox: &Path, m: &Path, sender: &str, when: &str, create: (u32, u32, u32)) -> Result<()> {
        mbox_append(mbox, m, sender, when, create, Duration::from_secs(100))
    }

    /// The quoted message as `write_mbox_entry` writes it when it reads these chunks.
    fn quote(chunks: &[&[u8]]) -> Vec<u8> {
        struct Chunks<'a>(std::slice::Iter<'a, &'a [u8]>);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let chunk = self.0.find(|c| !c.is_empty()).map_or(&[][..], |c| *c);
                buf[..chunk.len()].copy_from_slice(chunk);
                Ok(chunk.len())
            }
        }
        let mut out = Vec::new();
        write_mbox_entry(&mut out, Chunks(chunks.iter()), "").unwrap();
        assert_eq!(out.pop(), Some(b'\n'), "the empty line after the message");
        out
    }

    /// Quote `input` split at every possible position and in single bytes: all must agree.
    fn quote_all_splits(input: &[u8]) -> Vec<u8> {
        let whole = quote(&[input]);
        for cut in 0..=input.len() {
            assert_eq!(quote(&[&input[..cut], &input[cut..]]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(quote(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn mailbox_quoting_edge_cases() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"From x\n", b">From x\n"),
            (b">From x\n", b">>From x\n"),
            (b">>From x\n", b">>>From x\n"),
            (b">>>From x\n", b">>>>From x\n"),
            (b"Fromage\n", b"Fromage\n"),
            (b" From x\n", b" From x\n"),
            (b"From\n", b"From\n"),
            (b"From", b"From\n"),
            (b"From ", b">From \n"),
            (b"Fro", b"Fro\n"),
            (b">From", b">From\n"),
            (b"FFrom x\n", b"FFrom x\n"),
            (b">\n>From \n", b">\n>>From \n"),
            (b"a From b\nFrom c\n", b"a From b\n>From c\n"),
            (b"\n\nFrom \n\n", b"\n\n>From \n\n"),
            (b"no newline at end", b"no newline at end\n"),
            (b"", b""),
            (b"x>From y\n", b"x>From y\n"),
            (b"from x\n", b"from x\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                quote_all_splits(input),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn mailbox_from_line_at_chunk_boundary() {
        // A From_ line starting exactly at a CHUNK boundary, and one straddling it.
        for offset in [0usize, 1, 2, 3, 4, 5] {
            let mut msg = vec![b'a'; CHUNK - 1 - offset];
            msg.push(b'\n');
            msg.extend_from_slice(b">From here\nend\n");
            let dir = tempdir();
            let m = write(&dir, "M", &msg);
            let mbox = write(&dir, "mbox", b"");
            append(&mbox, &m, "s@x", "Wed Nov 25 12:00:41 2026", mine()).unwrap();
            let got = std::fs::read(&mbox).unwrap();
            let mut want = b"From s@x Wed Nov 25 12:00:41 2026\n".to_vec();
            want.extend_from_slice(&vec![b'a'; CHUNK - 1 - offset]);
            want.extend_from_slice(b"\n>>From here\nend\n\n");
            assert_eq!(got, want, "offset {offset}");
        }
    }

    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn tempdir() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "dma-mailbox-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn mailbox_framing_two_messages_and_empty_sender() {
        let dir = tempdir();
        let m = write(&dir, "M", b"Subject: a\n\nFrom here\nlast");
        let mbox = write(&dir, "mbox", b"");
        append(&mbox, &m, "", "Thu Jan  1 00:00:00 1970", mine()).unwrap();
        append(&mbox, &m, "a@b", "Thu Jan  1 00:00:01 1970", mine()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&mbox).unwrap(),
            "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nSubject: a\n\n>From here\nlast\n\n\
             From a@b Thu Jan  1 00:00:01 1970\nSubject: a\n\n>From here\nlast\n\n"
        );
    }

    #[test]
    fn mailbox_refuses_newline_in_sender() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let mbox = write(&dir, "mbox", b"");
        let err = append(&mbox, &m, "a\nFrom evil", "now", mine()).unwrap_err();
        assert!(matches!(err, DmaError::Data(_)));
        assert_eq!(std::fs::read(&mbox).unwrap(), b"");
    }

    #[test]
    fn mailbox_created_with_mode() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let mbox = dir.join("mbox");
        let me = std::fs::metadata(&m).unwrap();
        let (uid, gid) = (me.uid(), me.gid());
        append(&mbox, &m, "a", "now", (uid, gid, 0o620)).unwrap();
        let meta = std::fs::metadata(&mbox).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o620);
        assert_eq!(std::fs::read(&mbox).unwrap(), b"From a now\nx\n\n");
    }

    #[test]
    fn mailbox_symlink_refused() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let target = write(&dir, "target", b"precious\n");
        let mbox = dir.join("mbox");
        symlink(&target, &mbox).unwrap();
        // With create too: O_EXCL|O_NOFOLLOW must not follow a dangling or live link.
        let err = append(&mbox, &m, "a", "now", (0, 0, 0o600)).unwrap_err();
        assert!(matches!(&err, DmaError::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious\n");
        let dangling = dir.join("dangling");
        symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(append(&dangling, &m, "a", "now", (0, 0, 0o600)).is_err());
        assert!(!dir.join("nowhere").exists());
    }

    #[test]
    fn mailbox_hard_link_and_non_regular_refused() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let target = write(&dir, "target", b"precious\n");
        let mbox = dir.join("mbox");
        std::fs::hard_link(&target, &mbox).unwrap();
        let err = append(&mbox, &m, "a", "now", mine()).unwrap_err();
        assert!(matches!(&err, DmaError::Io { source, .. } if source.raw_os_error() == Some(libc::EMLINK)));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious\n");
        // A directory is not even openable for writing; a FIFO must not hang us.
        let fifo = dir.join("fifo");
        rustix::fs::mkfifoat(CWD, &fifo, Mode::from(0o600)).unwrap();
        assert!(append(&fifo, &m, "a", "now", mine()).is_err());
    }

    #[test]
    fn mailbox_truncates_on_failure() {
        // A message we cannot read half-way (a directory reads as EISDIR) after the From_ line
        // has been written: the mbox must go back to its previous size.
        let dir = tempdir();
        let m = dir.join("Mdir");
        std::fs::create_dir(&m).unwrap();
        let mbox = write(&dir, "mbox", b"From old\nold\n\n");
        let err = append(&mbox, &m, "a", "now", mine()).unwrap_err();
        assert!(matches!(err, DmaError::Io { .. }), "{err}");
        assert_eq!(std::fs::read(&mbox).unwrap(), b"From old\nold\n\n");
    }

    #[test]
    fn mailbox_lock_timeout() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let mbox = write(&dir, "mbox", b"");
        let holder = File::open(&mbox).unwrap();
        holder.lock().unwrap();
        let start = Instant::now();
        let err = mbox_append(&mbox, &m, "a", "now", mine(), Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(
            matches!(&err, DmaError::Io { source, .. } if source.raw_os_error() == Some(libc::EWOULDBLOCK))
        );
        assert_eq!(std::fs::read(&mbox).unwrap(), b"");
        drop(holder);
        mbox_append(&mbox, &m, "a", "now", mine(), Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn mailbox_maildir_layout() {
        let dir = tempdir();
        let content = b"From x\nSubject: y\n\nbody without newline";
        let m = write(&dir, "M", content);
        let md = dir.join("Maildir");
        let a = maildir_deliver(&md, File::open(&m).unwrap(), "host/with:odd").unwrap();
        let b = maildir_deliver(&md, File::open(&m).unwrap(), "host/with:odd").unwrap();
        assert_ne!(a, b);
        assert!(a.ends_with(".host\\057with\\072odd"), "{a}");
        assert!(a.contains(&format!("P{}Q", std::process::id())));
        for sub in ["tmp", "new", "cur"] {
            let meta = std::fs::symlink_metadata(md.join(sub)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.mode() & 0o7777, 0o700);
        }
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 2);
        let f = md.join("new").join(&a);
        assert_eq!(std::fs::read(&f).unwrap(), content);
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn mailbox_maildir_symlinked_subdir_refused() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let md = dir.join("Maildir");
        let elsewhere = dir.join("elsewhere");
        std::fs::create_dir_all(&md).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        symlink(&elsewhere, md.join("new")).unwrap();
        assert!(maildir_deliver(&md, File::open(&m).unwrap(), "h").is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        let linked = dir.join("linked");
        symlink(&md, &linked).unwrap();
        assert!(maildir_deliver(&linked, File::open(&m).unwrap(), "h").is_err());
    }
}

//! Local mailboxes: append to an mbox (C dma's `From ` line, mboxrd quoting, one empty line after
//! each message) and deliver into a Maildir. Plain Rust, no pyo3; the policy (who, where, which
//! owner) lives in `python/dma/local.py`.
//!
//! Both deliveries stream the spooled `M` file in fixed-size chunks: memory does not grow with
//! the message size. Neither follows a symlink in the last path component, and an mbox that is
//! not a regular file or has more than one hard link is refused (the 2016 symlink/hard-link class
//! of attacks on `/var/mail`).

use std::ffi::CString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::errors::{DmaError, IoContext, Result};

/// How long C dma waits for the mbox lock before giving up (temporary failure).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(100);

/// Read and write chunk size. Lines may cross chunk boundaries; the quoting state machine carries
/// at most the four bytes of a partial `From` over.
const CHUNK: usize = 64 * 1024;

// ---- mbox ---------------------------------------------------------------------------------------

/// Append `message` (an `M` file, LF line endings) to `mbox` with C dma's framing. See
/// [`mbox_append_timeout`]; this one waits up to [`DEFAULT_LOCK_TIMEOUT`] for the lock.
pub fn mbox_append(
    mbox: &Path,
    message: &Path,
    envelope_sender: &str,
    when: &str,
    create: Option<(u32, u32, u32)>,
) -> Result<()> {
    mbox_append_timeout(mbox, message, envelope_sender, when, create, DEFAULT_LOCK_TIMEOUT)
}

/// Append `message` to `mbox`:
///
/// * open it write-only, append, `O_NOFOLLOW` (no `O_CREAT`); if it does not exist and `create`
///   is `Some((uid, gid, mode))`, create it exclusively and give it that owner and mode;
/// * refuse anything that is not a regular file or has more than one hard link, and, when
///   `create` names an owner, a file owned by anyone else than that owner or root;
/// * take an exclusive `flock`, waiting up to `lock_timeout` (`EWOULDBLOCK` after that);
/// * write `From <sender or MAILER-DAEMON> <when>\n`, the message with mboxrd quoting (every
///   line matching `^>*From ` gets one more `>`), a final LF if the message lacks one, then one
///   empty line;
/// * fsync; on any failure after the first write, truncate back to the size found under the lock.
pub fn mbox_append_timeout(
    mbox: &Path,
    message: &Path,
    envelope_sender: &str,
    when: &str,
    create: Option<(u32, u32, u32)>,
    lock_timeout: Duration,
) -> Result<()> {
    let sender = if envelope_sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        envelope_sender
    };
    check_header_field("envelope sender", sender)?;
    check_header_field("date", when)?;

    // Open the message first: a missing M file must not touch the mbox at all.
    let mut input = File::open(message).context(|| format!("can not open {}", message.display()))?;

    let out = open_mbox(mbox, create)?;
    lock_with_timeout(&out, lock_timeout).context(|| format!("can not lock {}", mbox.display()))?;
    // Size under the lock: nobody else appends between here and our last write.
    let size = out
        .metadata()
        .context(|| format!("can not stat {}", mbox.display()))?
        .len();

    let result = write_mbox_entry(&out, &mut input, sender, when)
        .and_then(|()| out.sync_data())
        .context(|| format!("error writing {}", mbox.display()));
    if let Err(err) = result {
        // Best effort: leave the mbox exactly as we found it. The write error is what we report.
        if out.set_len(size).is_ok() {
            let _ = out.sync_data();
        }
        return Err(err);
    }
    Ok(())
    // The lock goes with the descriptor.
}

/// The `From ` line is one line: a CR, LF or NUL in its fields would forge mbox structure.
fn check_header_field(what: &str, value: &str) -> Result<()> {
    if value.bytes().any(|b| matches!(b, b'\n' | b'\r' | 0)) {
        return Err(DmaError::Data(format!("invalid {what} for mbox: {value:?}")));
    }
    Ok(())
}

fn open_mbox(mbox: &Path, create: Option<(u32, u32, u32)>) -> Result<File> {
    // O_NONBLOCK so that a FIFO planted in place of the mbox cannot hang us in open(); O_NOCTTY
    // so that a tty cannot become our controlling terminal. Both are cleared/irrelevant once the
    // fstat below has shown a regular file.
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let opened = OpenOptions::new().append(true).custom_flags(flags).open(mbox);
    let (file, created) = match opened {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create.is_some() => {
            let (uid, gid, mode) = create.unwrap_or_default();
            match OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(flags)
                .open(mbox)
            {
                Ok(f) => {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                        .context(|| format!("can not chown {}", mbox.display()))?;
                    f.set_permissions(std::fs::Permissions::from_mode(mode))
                        .context(|| format!("can not chmod {}", mbox.display()))?;
                    (f, true)
                }
                // Somebody else created it between our two opens: use theirs, with all checks.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let f = OpenOptions::new()
                        .append(true)
                        .custom_flags(flags)
                        .open(mbox)
                        .context(|| format!("can not open {}", mbox.display()))?;
                    (f, false)
                }
                Err(e) => return Err(DmaError::io(format!("can not create {}", mbox.display()), e)),
            }
        }
        Err(e) => return Err(DmaError::io(format!("can not open {}", mbox.display()), e)),
    };
    let meta = file
        .metadata()
        .context(|| format!("can not stat {}", mbox.display()))?;
    let refuse = |errno: i32, why: &str| {
        DmaError::io(
            format!("refusing mbox {}: {why}", mbox.display()),
            io::Error::from_raw_os_error(errno),
        )
    };
    if !meta.file_type().is_file() {
        return Err(refuse(libc::EINVAL, "not a regular file"));
    }
    if meta.nlink() > 1 {
        return Err(refuse(libc::EMLINK, "it has more than one hard link"));
    }
    if let Some((uid, _, _)) = create {
        if !created && meta.uid() != uid && meta.uid() != 0 {
            return Err(refuse(
                libc::EPERM,
                &format!("owned by uid {}, expected {uid}", meta.uid()),
            ));
        }
    }
    clear_nonblock(file.as_raw_fd()).context(|| format!("can not fcntl {}", mbox.display()))?;
    Ok(file)
}

fn clear_nonblock(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Exclusive `flock` (std's `try_lock` is `flock` on Linux), polled until `timeout`: C dma blocks
/// under a 100 s alarm; polling gives the same wait without signals.
fn lock_with_timeout(file: &File, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::Error(e)) => return Err(e),
            Err(TryLockError::WouldBlock) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::from_raw_os_error(libc::EWOULDBLOCK));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

fn write_mbox_entry(out: &File, input: &mut impl Read, sender: &str, when: &str) -> io::Result<()> {
    let mut out = out;
    let mut quoter = MboxQuoter::new();
    let mut obuf = Vec::with_capacity(CHUNK + CHUNK / 4);
    obuf.extend_from_slice(format!("From {sender} {when}\n").as_bytes());
    let mut ibuf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut ibuf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        quoter.push(&ibuf[..n], &mut obuf);
        if obuf.len() >= CHUNK {
            out.write_all(&obuf)?;
            obuf.clear();
        }
    }
    quoter.finish(&mut obuf);
    obuf.push(b'\n');
    out.write_all(&obuf)
}

/// Streaming mboxrd quoting. The extra `>` is inserted at the end of a line's leading run of `>`
/// (which is the same bytes as inserting it in front), so the `>` run can be passed through as it
/// comes and only a partial `From` (at most four bytes) is ever held back across chunks.
#[derive(Debug)]
pub struct MboxQuoter {
    state: QuoteState,
    /// Last byte emitted, to know whether the message ended with LF (`None`: nothing yet).
    last: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    /// At the start of a line, or inside its leading run of `>`.
    LineStart,
    /// `FROM[..n]` seen right after the leading `>` run, held back.
    Matching(usize),
    /// Anywhere else in a line.
    Middle,
}

const FROM: &[u8] = b"From ";

impl Default for MboxQuoter {
    fn default() -> Self {
        Self::new()
    }
}

impl MboxQuoter {
    pub fn new() -> Self {
        MboxQuoter {
            state: QuoteState::LineStart,
            last: None,
        }
    }

    /// Quote `input`, appending to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                QuoteState::Middle => {
                    // Copy through the end of the line (or of the chunk) in one go.
                    match input[i..].iter().position(|&b| b == b'\n') {
                        Some(p) => {
                            out.extend_from_slice(&input[i..=i + p]);
                            i += p + 1;
                            self.state = QuoteState::LineStart;
                        }
                        None => {
                            out.extend_from_slice(&input[i..]);
                            i = input.len();
                        }
                    }
                }
                QuoteState::LineStart => {
                    let b = input[i];
                    match b {
                        b'>' => out.push(b),
                        b'F' => self.state = QuoteState::Matching(1),
                        b'\n' => out.push(b),
                        _ => {
                            out.push(b);
                            self.state = QuoteState::Middle;
                        }
                    }
                    i += 1;
                }
                QuoteState::Matching(n) => {
                    if input[i] == FROM[n] {
                        i += 1;
                        if n + 1 == FROM.len() {
                            out.push(b'>');
                            out.extend_from_slice(FROM);
                            self.state = QuoteState::Middle;
                        } else {
                            self.state = QuoteState::Matching(n + 1);
                        }
                    } else {
                        // Not a From_ line: release what was held; the byte is reprocessed
                        // mid-line (a LF there ends the line as usual).
                        out.extend_from_slice(&FROM[..n]);
                        self.state = QuoteState::Middle;
                    }
                }
            }
        }
        if let Some(&b) = input.last() {
            self.last = Some(b);
        }
    }

    /// Flush what is held back and make sure the output ends with LF (unless it is empty).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let QuoteState::Matching(n) = self.state {
            out.extend_from_slice(&FROM[..n]);
        }
        if self.last.is_some_and(|b| b != b'\n') {
            out.push(b'\n');
        }
        self.state = QuoteState::LineStart;
        self.last = None;
    }
}

// ---- Maildir ------------------------------------------------------------------------------------

static MAILDIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Deliver `message` into the Maildir `maildir`: create it and its `tmp`, `new` and `cur` if
/// missing (mode 0700; owned by `create`'s uid:gid when given), never through a symlink; write
/// `tmp/<unique>` (0600, exclusive), fsync, link it to `new/<unique>`, fsync `new`, unlink the tmp
/// name. Returns `<unique>`. The message goes in as spooled: no `From ` line, no quoting.
pub fn maildir_deliver(
    maildir: &Path,
    message: &Path,
    hostname: &str,
    create: Option<(u32, u32)>,
) -> Result<String> {
    let input = File::open(message).context(|| format!("can not open {}", message.display()))?;
    maildir_deliver_from(maildir, input, hostname, create)
}

/// `maildir_deliver` from a message file opened by the caller: a process that gave up root to
/// deliver as the mailbox's owner can still read the spool's copy it opened before.
pub fn maildir_deliver_from(
    maildir: &Path,
    mut input: File,
    hostname: &str,
    create: Option<(u32, u32)>,
) -> Result<String> {
    let top = open_or_make_dir(None, maildir, create)?;
    let tmp =
        open_or_make_dir(Some(&top), Path::new("tmp"), create).map_err(|e| rename_ctx(e, maildir, "tmp"))?;
    let new =
        open_or_make_dir(Some(&top), Path::new("new"), create).map_err(|e| rename_ctx(e, maildir, "new"))?;
    open_or_make_dir(Some(&top), Path::new("cur"), create).map_err(|e| rename_ctx(e, maildir, "cur"))?;

    let unique = unique_name(hostname);
    let name = cstring(Path::new(&unique))?;
    let ctx = |what: &str| format!("{what} {}/tmp/{unique}", maildir.display());

    // SAFETY: openat with a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            tmp.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(DmaError::io(ctx("can not create"), io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };

    let written = (|| -> Result<()> {
        if let Some((uid, gid)) = create {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).context(|| ctx("can not chown"))?;
        }
        copy_stream(&mut input, &mut file).context(|| ctx("error writing"))?;
        file.sync_all().context(|| ctx("can not fsync"))?;
        drop(file);
        // SAFETY: both descriptors are open directories; names are NUL-terminated.
        let rc = unsafe { libc::linkat(tmp.as_raw_fd(), name.as_ptr(), new.as_raw_fd(), name.as_ptr(), 0) };
        if rc != 0 {
            return Err(DmaError::io(
                format!("can not link {unique} into {}/new", maildir.display()),
                io::Error::last_os_error(),
            ));
        }
        fsync_fd(&new).context(|| format!("can not fsync {}/new", maildir.display()))
    })();
    // SAFETY: unlinkat on an open directory descriptor and a NUL-terminated name. Whether the
    // delivery worked or not, the tmp name has to go; a failure here leaves only a stray tmp file,
    // which Maildir readers ignore.
    unsafe { libc::unlinkat(tmp.as_raw_fd(), name.as_ptr(), 0) };
    written.map(|()| unique)
}

fn rename_ctx(err: DmaError, maildir: &Path, sub: &str) -> DmaError {
    match err {
        DmaError::Io { source, .. } => DmaError::io(
            format!("bad Maildir directory {}/{sub}", maildir.display()),
            source,
        ),
        other => other,
    }
}

/// `<secs>.M<micros>P<pid>Q<counter>.<host>` as in the Maildir convention; `/` and `:` in the
/// host name are written `\057` and `\072`.
fn unique_name(hostname: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let counter = MAILDIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut host = String::with_capacity(hostname.len());
    for c in hostname.chars() {
        match c {
            '/' => host.push_str("\\057"),
            ':' => host.push_str("\\072"),
            c if c.is_control() => {}
            c => host.push(c),
        }
    }
    if host.is_empty() {
        host.push_str("localhost");
    }
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        counter,
        host
    )
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| DmaError::Data(format!("NUL byte in path {:?}", path.display())))
}

/// Open a directory without following a symlink in its last component, creating it (0700, then
/// chowned to `create`) when missing. `parent` = `None`: `path` is taken as is.
fn open_or_make_dir(parent: Option<&OwnedFd>, path: &Path, create: Option<(u32, u32)>) -> Result<OwnedFd> {
    let c = cstring(path)?;
    let dirfd = parent.map_or(libc::AT_FDCWD, |p| p.as_raw_fd());
    let open = || {
        // SAFETY: valid directory descriptor (or AT_FDCWD) and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dirfd,
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a fresh descriptor nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    let ctx = || format!("can not open directory {}", path.display());
    match open() {
        Ok(fd) => Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // SAFETY: as above.
            let made = unsafe { libc::mkdirat(dirfd, c.as_ptr(), 0o700) } == 0;
            if !made {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(DmaError::io(
                        format!("can not create directory {}", path.display()),
                        e,
                    ));
                }
            }
            let fd = open().context(ctx)?;
            if made {
                // mkdir's mode is filtered by the umask; we want exactly 0700.
                // SAFETY: fchmod/fchown on a descriptor we own.
                if unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) } != 0 {
                    return Err(DmaError::io(
                        format!("can not chmod {}", path.display()),
                        io::Error::last_os_error(),
                    ));
                }
                if let Some((uid, gid)) = create {
                    // SAFETY: as above.
                    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
                        return Err(DmaError::io(
                            format!("can not chown {}", path.display()),
                            io::Error::last_os_error(),
                        ));
                    }
                }
            }
            Ok(fd)
        }
        Err(e) => Err(DmaError::io(ctx(), e)),
    }
}

fn fsync_fd(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fsync on a descriptor we own.
    if unsafe { libc::fsync(fd.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Constant-memory copy (std's `io::copy` may use `copy_file_range`/`sendfile` between files).
fn copy_stream(input: &mut File, output: &mut File) -> io::Result<u64> {
    io::copy(input, output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn quote(chunks: &[&[u8]]) -> Vec<u8> {
        let mut q = MboxQuoter::new();
        let mut out = Vec::new();
        for c in chunks {
            q.push(c, &mut out);
        }
        q.finish(&mut out);
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
            mbox_append(&mbox, &m, "s@x", "Wed Nov 25 12:00:41 2026", None).unwrap();
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
        mbox_append(&mbox, &m, "", "Thu Jan  1 00:00:00 1970", None).unwrap();
        mbox_append(&mbox, &m, "a@b", "Thu Jan  1 00:00:01 1970", None).unwrap();
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
        let err = mbox_append(&mbox, &m, "a\nFrom evil", "now", None).unwrap_err();
        assert!(matches!(err, DmaError::Data(_)));
        assert_eq!(std::fs::read(&mbox).unwrap(), b"");
    }

    #[test]
    fn mailbox_missing_without_create_and_created_with_mode() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let mbox = dir.join("mbox");
        let err = mbox_append(&mbox, &m, "a", "now", None).unwrap_err();
        assert!(matches!(&err, DmaError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound));
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        mbox_append(&mbox, &m, "a", "now", Some((uid, gid, 0o620))).unwrap();
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
        let err = mbox_append(&mbox, &m, "a", "now", Some((0, 0, 0o600))).unwrap_err();
        assert!(matches!(&err, DmaError::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious\n");
        let dangling = dir.join("dangling");
        symlink(dir.join("nowhere"), &dangling).unwrap();
        assert!(mbox_append(&dangling, &m, "a", "now", Some((0, 0, 0o600))).is_err());
        assert!(!dir.join("nowhere").exists());
    }

    #[test]
    fn mailbox_hard_link_and_non_regular_refused() {
        let dir = tempdir();
        let m = write(&dir, "M", b"x\n");
        let target = write(&dir, "target", b"precious\n");
        let mbox = dir.join("mbox");
        std::fs::hard_link(&target, &mbox).unwrap();
        let err = mbox_append(&mbox, &m, "a", "now", None).unwrap_err();
        assert!(matches!(&err, DmaError::Io { source, .. } if source.raw_os_error() == Some(libc::EMLINK)));
        assert_eq!(std::fs::read(&target).unwrap(), b"precious\n");
        // A directory is not even openable for writing; a FIFO must not hang us.
        let fifo = dir.join("fifo");
        let c = cstring(&fifo).unwrap();
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(mbox_append(&fifo, &m, "a", "now", None).is_err());
    }

    #[test]
    fn mailbox_truncates_on_failure() {
        // A message we cannot read half-way (a directory reads as EISDIR) after the From_ line
        // has been written: the mbox must go back to its previous size.
        let dir = tempdir();
        let m = dir.join("Mdir");
        std::fs::create_dir(&m).unwrap();
        let mbox = write(&dir, "mbox", b"From old\nold\n\n");
        let err = mbox_append(&mbox, &m, "a", "now", None).unwrap_err();
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
        let err = mbox_append_timeout(&mbox, &m, "a", "now", None, Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(
            matches!(&err, DmaError::Io { source, .. } if source.raw_os_error() == Some(libc::EWOULDBLOCK))
        );
        assert_eq!(std::fs::read(&mbox).unwrap(), b"");
        drop(holder);
        mbox_append_timeout(&mbox, &m, "a", "now", None, Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn mailbox_maildir_layout() {
        let dir = tempdir();
        let content = b"From x\nSubject: y\n\nbody without newline";
        let m = write(&dir, "M", content);
        let md = dir.join("Maildir");
        let a = maildir_deliver(&md, &m, "host/with:odd", None).unwrap();
        let b = maildir_deliver(&md, &m, "host/with:odd", None).unwrap();
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
        assert!(maildir_deliver(&md, &m, "h", None).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        let linked = dir.join("linked");
        symlink(&md, &linked).unwrap();
        assert!(maildir_deliver(&linked, &m, "h", None).is_err());
    }
}

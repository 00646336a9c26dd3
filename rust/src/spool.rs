//! The spool directory: durable submission, queue entries with per-recipient state, locks and
//! listing. The format, shared with C dma 0.13/0.14, is described in docs/spool.md.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::errors::{DmaError, IoContext, Result};
use crate::intake::{self, IntakeOptions, MessageInfo};

const TMP_PREFIX: &str = "tmp_";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing `{}'", dir.display()))
}

/// A value that goes on one line of a queue file.
fn check_field(what: &str, value: &str) -> Result<()> {
    if value.bytes().any(|b| matches!(b, b'\n' | b'\r' | b'\0')) {
        return Err(DmaError::Data(format!("{what} contains a line break or NUL")));
    }
    Ok(())
}

/// Every address of an envelope passes the one address check (address.rs); the sender may be null.
fn check_envelope(sender: &str, recipients: &[String], dsn: &str) -> Result<()> {
    if !dsn.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(DmaError::Data(format!("invalid DSN parameters {dsn:?}")));
    }
    let null = sender.is_empty();
    for address in std::iter::once(sender)
        .skip(null as usize)
        .chain(recipients.iter().map(String::as_str))
    {
        let invalid = |why| DmaError::Data(format!("invalid address {address:?}: {why}"));
        crate::address::check(address).map_err(invalid)?;
    }
    Ok(())
}

/// A message being received, until it is committed to the queue. Dropping it uncommitted removes
/// everything it wrote.
pub struct Incoming {
    dir: PathBuf,
    /// Sync every file and the directory before returning (off for a batch, which ends with one
    /// `sync_spool`).
    durable: bool,
    tmp: PathBuf,
    file: Option<File>,
    id: String,
    created: u64,
    size: u64,
    published: Vec<PathBuf>,
    /// The temporary file is gone (renamed or removed): nothing is left to clean up.
    finished: bool,
    /// Written into each entry (`Entry::dsn`).
    pub dsn: String,
}

impl Incoming {
    /// Create the temporary file in `dir` under a fresh id, or under `name` (the runner's pickup:
    /// the id names the drop, so a pickup repeated after a crash finds the message it queued; an
    /// uncommitted leftover under that name is removed first).
    pub fn create(dir: &Path, durable: bool, name: Option<&str>) -> Result<Incoming> {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (created, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
        let mut attempt = 0u32;
        loop {
            // Unique over time (the delivered journal relies on it) and unguessable (nobody can
            // take another user's drop name first): seconds, microseconds, 64 random bits.
            let id = match name {
                Some(name) => name.to_owned(),
                None => format!("{created:08x}{micros:05x}{:016x}", random_u64()),
            };
            // The temporary file is named after the message: while it exists, the message is not
            // committed and its entries are not listed (see `committed`).
            let tmp = dir.join(format!("{TMP_PREFIX}{id}"));
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp);
            match opened {
                Ok(file) => {
                    return Ok(Incoming {
                        dir: dir.to_owned(),
                        durable,
                        tmp,
                        file: Some(file),
                        id,
                        created,
                        size: 0,
                        published: Vec::new(),
                        finished: false,
                        dsn: String::new(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                    if name.is_some() {
                        remove_uncommitted(dir, &id);
                    }
                }
                Err(e) => {
                    return Err(DmaError::io(
                        format!("can not create temp file in `{}'", dir.display()),
                        e,
                    ))
                }
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stream the message from `input` into the temporary file and make it durable.
    pub fn receive(&mut self, input: impl Read, opts: &IntakeOptions<'_>) -> Result<MessageInfo> {
        let file = self
            .file
            .take()
            .ok_or_else(|| DmaError::Data("message already received".into()))?;
        let out = BufWriter::with_capacity(64 * 1024, file);
        let (info, out) = intake::copy_message(input, out, opts)?;
        let file = out
            .into_inner()
            .map_err(|e| DmaError::io("writing the spool file", e.into_error()))?;
        if self.durable {
            file.sync_all()
                .context(|| format!("syncing `{}'", self.tmp.display()))?;
        }
        self.size = info.size;
        Ok(info)
    }

    /// Publish one queue entry per recipient, durably; returns the entry ids.
    pub fn commit(&mut self, sender: &str, recipients: &[String]) -> Result<Vec<String>> {
        check_envelope(sender, recipients, &self.dsn)?;
        if recipients.is_empty() {
            return Err(DmaError::Data("no recipients".into()));
        }
        let last = recipients.len() - 1;
        let entry_id = |n: usize| format!("{}.{}", self.id, n + 1);
        // The entries are written in place: the temporary file hides them until the commit.
        for (n, recipient) in recipients.iter().enumerate() {
            let entry = Entry {
                id: entry_id(n),
                sender: sender.to_owned(),
                recipient: recipient.clone(),
                created: self.created,
                size: self.size,
                dsn: self.dsn.clone(),
                ..Entry::default()
            };
            self.published
                .push(create_entry_file(&self.dir, &entry, self.durable)?);
        }
        for n in 0..last {
            let m = self.dir.join(format!("M{}", entry_id(n)));
            fs::hard_link(&self.tmp, &m).context(|| format!("can not create `{}'", m.display()))?;
            self.published.push(m);
        }
        // The commit: the message file takes its last recipient's name, and with the temporary
        // name gone every entry of the message becomes visible at once (a process killed before
        // this leaves none of them listed). One directory sync after it makes every name change
        // above durable too.
        let m = self.dir.join(format!("M{}", entry_id(last)));
        fs::rename(&self.tmp, &m).context(|| format!("can not commit `{}'", m.display()))?;
        self.finished = true;
        self.published.clear();
        if self.durable {
            fsync_dir(&self.dir)?;
        }
        Ok((0..recipients.len()).map(entry_id).collect())
    }

    /// System mode, an unprivileged submitter: publish into the drop directory instead of the
    /// spool, as `D<id>` (the message) and then `E<id>` (its envelope: `Sender:` and `Recipient:`
    /// lines), which the runner picks up. Returns the id.
    pub fn commit_drop(&mut self, sender: &str, recipients: &[String]) -> Result<String> {
        check_envelope(sender, recipients, &self.dsn)?;
        let mut envelope = format!("Sender: {sender}\n");
        for r in recipients {
            envelope.push_str(&format!("Recipient: {r}\n"));
        }
        if !self.dsn.is_empty() {
            envelope.push_str(&format!("DSN: {}\n", self.dsn));
        }
        let data = self.dir.join(format!("D{}", self.id));
        fs::hard_link(&self.tmp, &data).context(|| format!("can not create `{}'", data.display()))?;
        self.published.push(data);
        let tmp = self.dir.join(format!("{TMP_PREFIX}E{}", self.id));
        let env = self.dir.join(format!("E{}", self.id));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(envelope.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &env)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            DmaError::io(format!("can not create `{}'", env.display()), e)
        })?;
        // The drop directory is not readable by submitters, so it cannot be synced by them: the
        // files themselves are, and the runner syncs the spool once it has taken the message.
        let _ = fsync_dir(&self.dir);
        self.published.clear();
        let _ = fs::remove_file(&self.tmp);
        self.finished = true;
        Ok(self.id.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        for path in self.published.iter().rev() {
            let _ = fs::remove_file(path);
        }
        if !self.finished {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: writes at most buf.len() bytes into buf. Should it fail, the time part still
    // makes the id unique, and create_new refuses a taken name.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    u64::from_ne_bytes(buf)
}

/// What a process killed before its commit left under message `id`: the temporary file and the
/// entries and message names written before it (hidden while the temporary file exists).
fn remove_uncommitted(dir: &Path, id: &str) {
    for n in 1.. {
        let q = fs::remove_file(dir.join(format!("Q{id}.{n}")));
        let m = fs::remove_file(dir.join(format!("M{id}.{n}")));
        if q.is_err() && m.is_err() {
            break;
        }
    }
    let _ = fs::remove_file(dir.join(format!("{TMP_PREFIX}{id}")));
}

/// The envelope and state of one recipient of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "python",
    pyo3::pyclass(
        name = "QueueEntry",
        module = "dma._native",
        frozen,
        get_all,
        skip_from_py_object
    )
)]
pub struct Entry {
    pub id: String,
    pub sender: String,
    pub recipient: String,
    pub created: u64,
    pub size: u64,
    pub attempts: u32,
    pub next_attempt: u64,
    pub last_error: String,
    pub state: String,
    /// RFC 3461 parameters from `-N`, `-R`, `-V` (`NOTIFY=... RET=... ENVID=...`), or empty.
    pub dsn: String,
}

/// The message part of an entry id (`<message id>.<n>`).
fn message_id_of(entry_id: &str) -> &str {
    entry_id.rsplit_once('.').map_or(entry_id, |(m, _)| m)
}

/// A message is committed once the temporary file named after it is gone.
fn committed(dir: &Path, entry_id: &str) -> bool {
    fs::symlink_metadata(dir.join(format!("{TMP_PREFIX}{}", message_id_of(entry_id)))).is_err()
}

impl Entry {
    pub fn message_id(&self) -> &str {
        message_id_of(&self.id)
    }

    fn render(&self) -> String {
        let mut s = format!(
            "ID: {}\nSender: {}\nRecipient: {}\nCreated: {}\nSize: {}\n",
            self.id, self.sender, self.recipient, self.created, self.size
        );
        if self.attempts > 0 {
            s.push_str(&format!("Attempts: {}\n", self.attempts));
        }
        if self.next_attempt > 0 {
            s.push_str(&format!("Next-Attempt: {}\n", self.next_attempt));
        }
        if !self.last_error.is_empty() {
            s.push_str(&format!("Last-Error: {}\n", self.last_error));
        }
        if !self.state.is_empty() {
            s.push_str(&format!("State: {}\n", self.state));
        }
        if !self.dsn.is_empty() {
            s.push_str(&format!("DSN: {}\n", self.dsn));
        }
        s
    }

    /// Parse a queue file as C dma does: `Key: value` lines, unknown keys ignored, a line
    /// without `:` makes the file malformed. `mtime` stands in for a missing `Created`.
    pub fn parse(text: &str, mtime: u64) -> Option<Entry> {
        let mut e = Entry {
            created: mtime,
            ..Entry::default()
        };
        for line in text.lines() {
            let (key, value) = line.split_once(':')?;
            let value = value.trim_start();
            let number = || value.trim().parse().unwrap_or(0);
            match key {
                "ID" => e.id = value.to_owned(),
                "Sender" => e.sender = value.to_owned(),
                "Recipient" => e.recipient = value.to_owned(),
                "Created" => e.created = number(),
                "Size" => e.size = number(),
                "Attempts" => e.attempts = u32::try_from(number()).unwrap_or(u32::MAX),
                "Next-Attempt" => e.next_attempt = number(),
                "Last-Error" => e.last_error = value.to_owned(),
                "State" => e.state = value.to_owned(),
                "DSN" => e.dsn = value.to_owned(),
                _ => {}
            }
        }
        (!e.id.is_empty() && !e.recipient.is_empty()).then_some(e)
    }
}

/// Create the `Q` file of a new entry, which its message's temporary file still hides from every
/// reader; returns its path.
fn create_entry_file(dir: &Path, entry: &Entry, sync: bool) -> Result<PathBuf> {
    let q = dir.join(format!("Q{}", entry.id));
    let write = |f: &mut File| -> std::io::Result<()> {
        f.write_all(entry.render().as_bytes())?;
        if sync {
            f.sync_all()?;
        }
        Ok(())
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&q)
        .and_then(|mut f| {
            write(&mut f).inspect_err(|_| {
                let _ = fs::remove_file(&q);
            })
        })
        .map_err(|e| DmaError::io(format!("can not create `{}'", q.display()), e))?;
    Ok(q)
}

/// Replace `Q<id>` atomically: a locked temporary file, synced, renamed into place. Returns the
/// new file, still locked.
fn replace_entry_file(dir: &Path, entry: &Entry) -> Result<File> {
    let tmp = dir.join(format!("{TMP_PREFIX}Q{}", entry.id));
    let q = dir.join(format!("Q{}", entry.id));
    let write = || -> std::io::Result<File> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.lock()?;
        f.write_all(entry.render().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &q)?;
        Ok(f)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DmaError::io(format!("can not create `{}'", q.display()), e)
    })
}

/// One pass over the spool: every readable entry whose message file exists, oldest first, and
/// the names of the queue files that could not be read.
pub fn scan(dir: &Path) -> Result<(Vec<Entry>, Vec<String>)> {
    scan_message(dir, "")
}

/// `scan`, limited to the entries whose id starts with `prefix` (a message id: that message's).
pub fn scan_message(dir: &Path, prefix: &str) -> Result<(Vec<Entry>, Vec<String>)> {
    let mut entries = Vec::new();
    let mut malformed = Vec::new();
    let listing = fs::read_dir(dir).context(|| format!("can not read spool `{}'", dir.display()))?;
    let names: Vec<String> = listing
        .flatten()
        .filter_map(|item| item.file_name().to_str().map(str::to_owned))
        .collect();
    let uncommitted: std::collections::HashSet<&str> =
        names.iter().filter_map(|n| n.strip_prefix(TMP_PREFIX)).collect();
    for name in &names {
        let Some(id) = name.strip_prefix('Q').filter(|id| id.starts_with(prefix)) else {
            continue;
        };
        if uncommitted.contains(message_id_of(id)) {
            continue; // still being submitted, or left by a submitter that died: not queued
        }
        match read_entry(dir, id) {
            Some(e) => entries.push(e),
            None => malformed.push(name.clone()),
        }
    }
    entries.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok((entries, malformed))
}

fn read_entry(dir: &Path, id: &str) -> Option<Entry> {
    let q = dir.join(format!("Q{id}"));
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&q)
        .ok()?;
    read_open_entry(dir, id, &mut f)
}

fn read_open_entry(dir: &Path, id: &str, f: &mut File) -> Option<Entry> {
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > 64 * 1024 {
        return None;
    }
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    let entry = Entry::parse(&text, u64::try_from(meta.mtime()).unwrap_or(0))?;
    // The name is what a runner locks and removes; a file claiming another id is not trusted.
    let m = fs::symlink_metadata(dir.join(format!("M{id}"))).ok()?;
    // A message shorter than recorded never reached the disk whole (a batch cut short by a power
    // failure before its sync): it is not delivered. C dma's entries record no size.
    let complete = entry.size == 0 || m.len() == entry.size;
    (entry.id == id && m.is_file() && complete).then_some(entry)
}

/// An entry taken by this process: nobody else delivers it while the claim lives.
pub struct Claim {
    dir: PathBuf,
    file: File,
    pub entry: Entry,
}

/// Take an entry if nobody else holds it. `None` when it is locked elsewhere or gone.
pub fn claim(dir: &Path, id: &str) -> Result<Option<Claim>> {
    if !committed(dir, id) {
        return Ok(None);
    }
    let q = dir.join(format!("Q{id}"));
    for _ in 0..8 {
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&q)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DmaError::io(format!("can not open `{}'", q.display()), e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                return Err(DmaError::io(format!("can not lock `{}'", q.display()), e))
            }
        }
        // The entry may have been rewritten (renamed over) or removed while we waited.
        let locked = file.metadata().context(|| format!("stat `{}'", q.display()))?;
        match fs::symlink_metadata(&q) {
            Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {}
            Ok(_) => continue,
            Err(_) => return Ok(None),
        }
        let Some(entry) = read_open_entry(dir, id, &mut file) else {
            return Err(DmaError::Data(format!("malformed queue file `{}'", q.display())));
        };
        return Ok(Some(Claim {
            dir: dir.to_owned(),
            file,
            entry,
        }));
    }
    Ok(None)
}

impl Claim {
    pub fn message_path(&self) -> PathBuf {
        self.dir.join(format!("M{}", self.entry.id))
    }

    /// Durably replace the entry's state with `entry` (same id).
    pub fn record(&mut self, entry: Entry) -> Result<()> {
        if entry.id != self.entry.id {
            return Err(DmaError::Data("an entry's id cannot change".into()));
        }
        check_field("the error text", &entry.last_error)?;
        check_field("the state", &entry.state)?;
        self.file = replace_entry_file(&self.dir, &entry)?;
        fsync_dir(&self.dir)?;
        self.entry = entry;
        Ok(())
    }

    /// The entry is finished (delivered, or bounced): remove `Q`, then `M`.
    /// `sync` makes the removal durable at once; a runner removing many delivered entries
    /// (already recorded in the delivered journal) syncs the directory once with `sync_dir`.
    pub fn remove(self, sync: bool) -> Result<()> {
        let q = self.dir.join(format!("Q{}", self.entry.id));
        fs::remove_file(&q).context(|| format!("can not remove `{}'", q.display()))?;
        let _ = fs::remove_file(self.message_path());
        if sync {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Make everything written to the spool's file system durable with one `syncfs`: the end of a
/// batch of non-durable submissions.
pub fn sync_spool(dir: &Path) -> Result<()> {
    let d = File::open(dir).context(|| format!("can not open `{}'", dir.display()))?;
    // SAFETY: a valid descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) } != 0 {
        return Err(DmaError::io(
            format!("syncing `{}'", dir.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Remove what crashes leave behind: temporary files and message files without an entry, older
/// than `max_age` seconds. Returns the names removed.
pub fn clean_stale(dir: &Path, max_age: u64) -> Result<Vec<String>> {
    let cutoff = now().saturating_sub(max_age);
    let listing = fs::read_dir(dir).context(|| format!("can not read spool `{}'", dir.display()))?;
    let names: Vec<(String, bool)> = listing
        .flatten()
        .map(|item| {
            let old = item
                .metadata()
                .is_ok_and(|m| u64::try_from(m.mtime()).unwrap_or(0) <= cutoff);
            (item.file_name().to_string_lossy().into_owned(), old)
        })
        .collect();
    // Messages whose submitter died before the commit: their entries go with the temporary file.
    let uncommitted: std::collections::HashMap<&str, bool> = names
        .iter()
        .filter_map(|(n, old)| n.strip_prefix(TMP_PREFIX).map(|id| (id, *old)))
        .collect();
    let mut removed = Vec::new();
    for (name, old) in &names {
        let garbage = match name.strip_prefix(['Q', 'M']) {
            Some(id) => match uncommitted.get(message_id_of(id)) {
                Some(abandoned) => *abandoned,
                // A committed message file without its entry: what a runner killed between
                // removing an entry's Q and its M leaves. Nothing refers to it any more.
                None => name.starts_with('M') && !dir.join(format!("Q{id}")).exists(),
            },
            None => *old && name.starts_with(TMP_PREFIX),
        };
        if garbage && fs::remove_file(dir.join(name)).is_ok() {
            removed.push(name.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{names, tempdir};

    fn submit(dir: &Path, body: &[u8], rcpts: &[&str]) -> Vec<String> {
        let mut inc = Incoming::create(dir, true, None).unwrap();
        let opts = crate::test_util::VERBATIM;
        inc.receive(body, &opts).unwrap();
        let rcpts: Vec<String> = rcpts.iter().map(|s| (*s).to_owned()).collect();
        inc.commit("a@x", &rcpts).unwrap()
    }

    #[test]
    fn commit_publishes_one_entry_per_recipient_and_no_temp_file() {
        let dir = tempdir("commit");
        let ids = submit(&dir, b"S: x\n\nhello\n", &["b@y", "c@z"]);
        assert_eq!(ids.len(), 2);
        let (entries, bad) = scan(&dir).unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            entries.iter().map(|e| e.recipient.as_str()).collect::<Vec<_>>(),
            ["b@y", "c@z"]
        );
        assert!(
            names(&dir).iter().all(|n| !n.starts_with(TMP_PREFIX)),
            "{:?}",
            names(&dir)
        );
        let m = fs::metadata(dir.join(format!("M{}", ids[0]))).unwrap();
        assert_eq!(m.nlink(), 2, "one hard link per recipient");
        assert_eq!(entries[0].message_id(), entries[1].message_id());
    }

    #[test]
    fn ids_are_not_reused_when_inodes_are() {
        let dir = tempdir("ids");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let ids = submit(&dir, b"x\n", &["b@y"]);
            let c = claim(&dir, &ids[0]).unwrap().unwrap();
            assert!(
                seen.insert(c.entry.message_id().to_owned()),
                "id reused: {}",
                ids[0]
            );
            c.remove(true).unwrap();
        }
    }

    #[test]
    fn a_named_message_replaces_its_uncommitted_leftover() {
        let dir = tempdir("named");
        let mut first = Incoming::create(&dir, true, Some("drop1")).unwrap();
        first.receive(&b"x\n"[..], &crate::test_util::VERBATIM).unwrap();
        // Killed mid-commit: an entry written, the temporary file still there.
        create_entry_file(
            &dir,
            &Entry {
                id: "drop1.1".into(),
                ..Entry::default()
            },
            true,
        )
        .unwrap();
        std::mem::forget(first);
        let mut again = Incoming::create(&dir, true, Some("drop1")).unwrap();
        again.receive(&b"y\n"[..], &crate::test_util::VERBATIM).unwrap();
        assert_eq!(again.commit("a@b", &["c@d".into()]).unwrap(), ["drop1.1"]);
        assert_eq!(names(&dir), ["Mdrop1.1", "Qdrop1.1"]);
    }

    #[test]
    fn a_drop_is_published_as_message_then_envelope() {
        let dir = tempdir("drop");
        let mut inc = Incoming::create(&dir, true, None).unwrap();
        let opts = crate::test_util::VERBATIM;
        inc.receive(&b"S: x\n\nhi\n"[..], &opts).unwrap();
        let id = inc
            .commit_drop("a@x", &["b@y".to_owned(), "c@z".to_owned()])
            .unwrap();
        assert_eq!(names(&dir), [format!("D{id}"), format!("E{id}")]);
        let envelope = fs::read_to_string(dir.join(format!("E{id}"))).unwrap();
        assert_eq!(envelope, "Sender: a@x\nRecipient: b@y\nRecipient: c@z\n");
        assert_eq!(
            fs::read_to_string(dir.join(format!("D{id}"))).unwrap(),
            "S: x\n\nhi\n"
        );
        let mut inc = Incoming::create(&dir, true, None).unwrap();
        inc.receive(&b"x\n"[..], &opts).unwrap();
        inc.dsn = "NOTIFY=NEVER".into();
        let id = inc.commit_drop("", &["b@y".to_owned()]).unwrap();
        let envelope = fs::read_to_string(dir.join(format!("E{id}"))).unwrap();
        assert_eq!(envelope, "Sender: \nRecipient: b@y\nDSN: NOTIFY=NEVER\n");
    }

    #[test]
    fn an_uncommitted_message_leaves_nothing() {
        let dir = tempdir("abort");
        {
            let mut inc = Incoming::create(&dir, false, None).unwrap();
            let opts = crate::test_util::VERBATIM;
            inc.receive(&b"x\n"[..], &opts).unwrap();
            assert!(inc.commit("a@x", &["bad\nrcpt".to_owned()]).is_err());
            let injected = "b@x> NOTIFY=SUCCESS ORCPT=rfc822;c@y".to_owned();
            assert!(inc.commit("a@x", &["ok@x".to_owned(), injected]).is_err());
            assert!(inc.commit("a@x> AUTH=<c@y", &["ok@x".to_owned()]).is_err());
            assert!(inc.commit_drop("a@x> AUTH=<c@y", &["ok@x".to_owned()]).is_err());
        }
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
        {
            let mut inc = Incoming::create(&dir, false, None).unwrap();
            inc.receive(&b"x\n"[..], &crate::test_util::VERBATIM).unwrap();
            assert!(inc.commit("a@x", &[]).is_err(), "a message with no recipient");
        }
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
        {
            // A failure half-way (the second entry's name is taken) takes back the first entry.
            let mut inc = Incoming::create(&dir, false, None).unwrap();
            inc.receive(&b"x\n"[..], &crate::test_util::VERBATIM).unwrap();
            fs::write(dir.join(format!("Q{}.2", inc.id())), "taken").unwrap();
            assert!(inc.commit("a@x", &["b@y".to_owned(), "c@z".to_owned()]).is_err());
        }
        assert_eq!(names(&dir).len(), 1, "{:?}", names(&dir));
    }

    #[test]
    fn dsn_parameters_round_trip_and_are_optional() {
        let e = Entry {
            id: "m.1".into(),
            recipient: "b@y".into(),
            dsn: "NOTIFY=NEVER RET=HDRS ENVID=a+2Bb".into(),
            ..Entry::default()
        };
        assert!(e.render().ends_with("\nDSN: NOTIFY=NEVER RET=HDRS ENVID=a+2Bb\n"));
        assert_eq!(Entry::parse(&e.render(), 0), Some(e));
        let old = Entry::parse("ID: m.1\nSender: a@x\nRecipient: b@y\n", 7).unwrap();
        assert_eq!((old.dsn.as_str(), old.created), ("", 7));
    }

    #[test]
    fn reads_c_dma_queue_files() {
        let dir = tempdir("cdma");
        fs::write(
            dir.join("Q20c096.5622a4e04090"),
            "ID: 20c096.5622a4e04090\nSender: \nRecipient: u@h\n",
        )
        .unwrap();
        fs::write(dir.join("M20c096.5622a4e04090"), "Received: x\n\nbody\n").unwrap();
        fs::write(dir.join("Qbroken"), "no colon here\n").unwrap();
        fs::write(dir.join("Qnomsg.1"), "ID: nomsg.1\nRecipient: u@h\n").unwrap();
        let (entries, bad) = scan(&dir).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].sender, "");
        assert_eq!(entries[0].message_id(), "20c096");
        assert!(entries[0].created > 0, "mtime stands in for Created");
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn claims_exclude_each_other_and_survive_record() {
        let dir = tempdir("claim");
        let ids = submit(&dir, b"x\n", &["b@y"]);
        let mut c = claim(&dir, &ids[0]).unwrap().unwrap();
        assert!(
            claim(&dir, &ids[0]).unwrap().is_none(),
            "second claim while the first is held"
        );
        let mut e = c.entry.clone();
        e.attempts = 3;
        e.last_error = "451 later".into();
        c.record(e).unwrap();
        assert!(
            claim(&dir, &ids[0]).unwrap().is_none(),
            "still held after the rewrite"
        );
        drop(c);
        let c = claim(&dir, &ids[0]).unwrap().unwrap();
        assert_eq!(c.entry.attempts, 3);
        assert_eq!(c.entry.last_error, "451 later");
        c.remove(true).unwrap();
        assert!(names(&dir).is_empty());
    }

    #[test]
    fn an_entry_whose_message_is_cut_short_is_not_listed() {
        let dir = tempdir("short");
        let ids = submit(&dir, b"S: x\n\nsome body\n", &["b@y"]);
        let m = dir.join(format!("M{}", ids[0]));
        let full = fs::read(&m).unwrap();
        fs::write(&m, &full[..full.len() - 3]).unwrap();
        let (entries, bad) = scan(&dir).unwrap();
        assert!(entries.is_empty());
        assert_eq!(bad, [format!("Q{}", ids[0])]);
    }

    #[test]
    fn a_message_is_listed_only_once_committed() {
        let dir = tempdir("commit-point");
        let mut inc = Incoming::create(&dir, true, None).unwrap();
        let opts = crate::test_util::VERBATIM;
        inc.receive(&b"x\n"[..], &opts).unwrap();
        let ids = inc.commit("a@x", &["b@y".to_owned(), "c@z".to_owned()]).unwrap();
        // A submitter killed in the middle of its commit leaves its temporary file, named after the
        // message, next to some of the entries: none of them is listed or claimed, and the
        // clean-up takes them all once old.
        let message = ids[0].rsplit_once('.').unwrap().0.to_owned();
        fs::write(dir.join(format!("{TMP_PREFIX}{message}")), "x").unwrap();
        assert!(scan(&dir).unwrap().0.is_empty());
        assert!(claim(&dir, &ids[0]).unwrap().is_none());
        let mut removed = clean_stale(&dir, 0).unwrap();
        removed.sort();
        assert_eq!(removed.len(), 5, "{removed:?}");
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
    }

    #[test]
    fn stale_files_are_cleaned_when_orphaned() {
        let dir = tempdir("stale");
        let ids = submit(&dir, b"x\n", &["b@y"]);
        fs::write(dir.join("tmp_leftover"), "x").unwrap();
        fs::write(dir.join("Morphan.1"), "x").unwrap();
        // A message file without its entry goes at once; a temporary file only once old.
        assert_eq!(clean_stale(&dir, 3600).unwrap(), ["Morphan.1"]);
        assert_eq!(clean_stale(&dir, 0).unwrap(), ["tmp_leftover"]);
        assert!(dir.join(format!("M{}", ids[0])).exists());
    }
}

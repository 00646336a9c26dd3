//! The spool directory: durable submission, queue entries with per-recipient state, locks and
//! listing. The format, shared with C dma 0.13/0.14, and the order of every step (which is what
//! makes a crash at any point safe) are described in docs/spool.md.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::errors::{DmaError, IoContext, Result};
use crate::intake::{self, IntakeOptions};

mod entry;
use entry::message_id_of;
pub use entry::Entry;

/// While `tmp_<message id>` exists, its message is uncommitted: its entries are neither listed nor
/// claimed. Also the prefix of an entry being rewritten.
const TMP_PREFIX: &str = "tmp_";

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context(|| format!("syncing `{}'", dir.display()))
}

/// Open `path` for appending, made (0600) if missing; `new`: it must not exist yet.
pub(crate) fn open_append(path: &Path, new: bool) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .create_new(new)
        .mode(0o600)
        .open(path)
}

/// Write `text` into the new file `path`, locked, synced when `sync`, then renamed to `to` when
/// given; a failure after the open removes it. The file comes back still locked: a claim keeps
/// its lock on the entry it rewrites.
fn write_file(path: &Path, text: &str, sync: bool, to: Option<&Path>) -> Result<File> {
    let context = || format!("can not create `{}'", to.unwrap_or(path).display());
    let mut f = open_append(path, true).context(context)?;
    let written = (|| {
        f.lock()?;
        f.write_all(text.as_bytes())?;
        if sync {
            f.sync_all()?;
        }
        to.map_or(Ok(()), |to| fs::rename(path, to))
    })();
    written.map(|()| f).context(context).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

fn check_envelope(sender: &str, recipients: &[String], dsn: &str) -> Result<()> {
    if !dsn.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(DmaError::Data(format!("invalid DSN parameters {dsn:?}")));
    }
    crate::address::check_envelope(sender, recipients)
        .map_err(|(address, why)| DmaError::Data(format!("invalid address {address:?}: {why}")))
}

/// A message being received, until it is committed to the queue (`dma._native.Incoming`, the one
/// way in). Dropping it uncommitted, or `abort`, removes everything it wrote.
#[cfg_attr(feature = "python", pyo3::pyclass(module = "dma._native"))]
pub struct Incoming {
    dir: PathBuf,
    /// Sync every file and the directory (off for a batch, which ends with one `sync_spool`).
    durable: bool,
    tmp: PathBuf,
    file: File,
    pub id: String,
    created: u64,
    size: u64,
    /// What dropping it uncommitted removes, last first.
    published: Vec<PathBuf>,
}

impl Incoming {
    /// `name` replaces a fresh id for the runner's pickup, so a pickup repeated after a crash finds
    /// the message it queued; an uncommitted leftover under that name is removed first.
    pub fn create(dir: &Path, durable: bool, name: Option<&str>) -> Result<Incoming> {
        let since_epoch = UNIX_EPOCH.elapsed().unwrap_or_default();
        let (created, micros) = (since_epoch.as_secs(), since_epoch.subsec_micros());
        // Unique over time (the delivered journal relies on it) and unguessable (nobody can take
        // another user's drop name first).
        let id = name.map_or_else(
            || format!("{created:08x}{micros:05x}{:016x}", random_u64()),
            str::to_owned,
        );
        let tmp = dir.join(format!("{TMP_PREFIX}{id}"));
        if name.is_some() && fs::symlink_metadata(&tmp).is_ok() {
            // What a process killed before its commit left under that name, the temporary file last.
            for n in 1.. {
                let q = fs::remove_file(dir.join(format!("Q{id}.{n}")));
                let m = fs::remove_file(dir.join(format!("M{id}.{n}")));
                if q.is_err() && m.is_err() {
                    break;
                }
            }
            let _ = fs::remove_file(&tmp);
        }
        let file =
            open_append(&tmp, true).context(|| format!("can not create temp file in `{}'", dir.display()))?;
        Ok(Incoming {
            dir: dir.to_owned(),
            durable,
            published: vec![tmp.clone()],
            tmp,
            file,
            id,
            created,
            size: 0,
        })
    }

    /// Stream the message from `input` into the temporary file and make it durable.
    pub fn receive(&mut self, input: impl Read, opts: &IntakeOptions) -> Result<(u64, Vec<String>)> {
        let (size, recipients) = intake::copy_message(input, &self.file, opts)?;
        if self.durable {
            self.file
                .sync_all()
                .context(|| format!("syncing `{}'", self.tmp.display()))?;
        }
        self.size = size;
        Ok((size, recipients))
    }

    /// Publish one queue entry per recipient, with the DSN parameters `dsn`; returns the entry ids.
    pub fn commit(&mut self, sender: &str, recipients: &[String], dsn: &str) -> Result<Vec<String>> {
        check_envelope(sender, recipients, dsn)?;
        let ids: Vec<String> = (1..=recipients.len())
            .map(|n| format!("{}.{n}", self.id))
            .collect();
        let Some((last, others)) = ids.split_last() else {
            return Err(DmaError::Data("no recipients".into()));
        };
        for (id, recipient) in ids.iter().zip(recipients) {
            let entry = Entry {
                id: id.clone(),
                sender: sender.to_owned(),
                recipient: recipient.clone(),
                created: self.created,
                size: self.size,
                dsn: dsn.to_owned(),
                ..Entry::default()
            };
            let q = self.dir.join(format!("Q{id}"));
            write_file(&q, &entry.render(), self.durable, None)?;
            self.published.push(q);
        }
        for id in others {
            let m = self.dir.join(format!("M{id}"));
            fs::hard_link(&self.tmp, &m).context(|| format!("can not create `{}'", m.display()))?;
            self.published.push(m);
        }
        // The commit: with the temporary name gone, every entry becomes visible at once. One
        // directory sync after it makes every name change above durable too.
        let m = self.dir.join(format!("M{last}"));
        fs::rename(&self.tmp, &m).context(|| format!("can not commit `{}'", m.display()))?;
        self.published.clear();
        if self.durable {
            fsync_dir(&self.dir)?;
        }
        Ok(ids)
    }

    /// System mode: publish into the drop directory `D<id>` (the message), then `E<id>` (its
    /// envelope), for the runner to pick up.
    pub fn commit_drop(&mut self, sender: &str, recipients: &[String], dsn: &str) -> Result<String> {
        check_envelope(sender, recipients, dsn)?;
        let mut envelope = format!("Sender: {sender}\n");
        envelope.extend(recipients.iter().map(|r| format!("Recipient: {r}\n")));
        envelope.extend((!dsn.is_empty()).then(|| format!("DSN: {dsn}\n")));
        let data = self.dir.join(format!("D{}", self.id));
        fs::rename(&self.tmp, &data).context(|| format!("can not create `{}'", data.display()))?;
        self.published.push(data);
        let env = self.dir.join(format!("E{}", self.id));
        let tmp = self.dir.join(format!("{TMP_PREFIX}E{}", self.id));
        write_file(&tmp, &envelope, true, Some(&env))?;
        // Submitters cannot read the drop directory, so cannot sync it: the files themselves are
        // synced, and the runner syncs the spool once it has taken the message.
        let _ = fsync_dir(&self.dir);
        self.published.clear();
        Ok(self.id.clone())
    }

    /// Give up: remove everything written so far.
    pub fn abort(&mut self) {
        for path in self.published.drain(..).rev() {
            let _ = fs::remove_file(path);
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.abort();
    }
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // Should it fail, the time part still makes the id unique, and create_new refuses a taken name.
    let _ = rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(buf)
}

/// The readable entries (of one message, when given), oldest first.
pub fn scan(dir: &Path, message: Option<&str>) -> Result<Vec<Entry>> {
    let names = list(dir)?;
    let uncommitted: HashSet<&str> = names.iter().filter_map(|n| n.strip_prefix(TMP_PREFIX)).collect();
    let listed = |id: &&str| {
        let of = message_id_of(id);
        message.is_none_or(|m| m == of) && !uncommitted.contains(of)
    };
    let mut entries: Vec<Entry> = names
        .iter()
        .filter_map(|name| name.strip_prefix('Q').filter(listed))
        .filter_map(|id| {
            let mut f = open_entry(&dir.join(format!("Q{id}"))).ok()?;
            read_entry(dir, id, &mut f)
        })
        .collect();
    entries.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(entries)
}

/// The names in the spool (all are UTF-8 but those nobody of ours wrote).
pub(crate) fn list(dir: &Path) -> Result<Vec<String>> {
    let listing = fs::read_dir(dir).context(|| format!("can not read spool `{}'", dir.display()))?;
    Ok(listing
        .flatten()
        .filter_map(|item| item.file_name().into_string().ok())
        .collect())
}

fn open_entry(q: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(q)
}

fn read_entry(dir: &Path, id: &str, f: &mut File) -> Option<Entry> {
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > 64 * 1024 {
        return None;
    }
    let text = io::read_to_string(f).ok()?;
    let entry = Entry::parse(&text, u64::try_from(meta.mtime()).unwrap_or(0))?;
    // The name is what a runner locks and removes; a file claiming another id is not trusted.
    let m = fs::symlink_metadata(dir.join(format!("M{id}"))).ok()?;
    // A message shorter than recorded never reached the disk whole (a batch cut short by a power
    // failure before its sync). C dma's entries record no size.
    let complete = entry.size == 0 || m.len() == entry.size;
    (entry.id == id && m.is_file() && complete).then_some(entry)
}

/// An entry taken by this process: nobody else delivers it while the claim (its lock) lives.
pub struct Claim {
    dir: PathBuf,
    file: File,
    pub entry: Entry,
}

/// Take an entry if nobody else holds it. `None` when it is locked elsewhere or gone.
pub fn claim(dir: &Path, id: &str) -> Result<Option<Claim>> {
    let uncommitted = dir.join(format!("{TMP_PREFIX}{}", message_id_of(id)));
    if fs::symlink_metadata(uncommitted).is_ok() {
        return Ok(None);
    }
    let q = dir.join(format!("Q{id}"));
    for _ in 0..8 {
        let mut file = match open_entry(&q) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            opened => opened.context(|| format!("can not open `{}'", q.display()))?,
        };
        match file.try_lock() {
            Err(TryLockError::WouldBlock) => return Ok(None),
            locked => locked.context(|| format!("can not lock `{}'", q.display()))?,
        }
        // The entry may have been rewritten (renamed over) or removed while we waited.
        let locked = file.metadata().context(|| format!("stat `{}'", q.display()))?;
        match fs::symlink_metadata(&q) {
            Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {}
            Ok(_) => continue,
            Err(_) => return Ok(None),
        }
        let entry = read_entry(dir, id, &mut file)
            .ok_or_else(|| DmaError::Data(format!("malformed queue file `{}'", q.display())))?;
        let dir = dir.to_owned();
        return Ok(Some(Claim { dir, file, entry }));
    }
    Ok(None)
}

impl Claim {
    pub fn message_path(&self) -> PathBuf {
        self.dir.join(format!("M{}", self.entry.id))
    }

    /// Durably write `entry` as it now stands (the caller changed its state), keeping the lock.
    pub fn record(&mut self) -> Result<()> {
        let entry = &self.entry;
        // Each goes on one line of the queue file.
        for (what, value) in [("the error text", &entry.last_error), ("the state", &entry.state)] {
            if value.bytes().any(|b| matches!(b, b'\n' | b'\r' | b'\0')) {
                return Err(DmaError::Data(format!("{what} contains a line break or NUL")));
            }
        }
        let tmp = self.dir.join(format!("{TMP_PREFIX}Q{}", entry.id));
        let q = self.dir.join(format!("Q{}", entry.id));
        let _ = fs::remove_file(&tmp); // what a runner killed in the middle of a record left
        self.file = write_file(&tmp, &entry.render(), true, Some(&q))?;
        fsync_dir(&self.dir)
    }

    /// Remove `Q`, then `M`; the caller syncs the directory once for many removals.
    pub fn remove(self) -> Result<()> {
        let q = self.dir.join(format!("Q{}", self.entry.id));
        fs::remove_file(&q).context(|| format!("can not remove `{}'", q.display()))?;
        let _ = fs::remove_file(self.message_path());
        Ok(())
    }
}

/// One `syncfs`: the end of a batch of non-durable submissions.
pub fn sync_spool(dir: &Path) -> Result<()> {
    let d = File::open(dir).context(|| format!("can not open `{}'", dir.display()))?;
    rustix::fs::syncfs(&d).context(|| format!("syncing `{}'", dir.display()))
}

/// Remove what crashes leave behind, uncommitted messages once `max_age` seconds old.
pub fn clean_stale(dir: &Path, max_age: u64) -> Result<Vec<String>> {
    let old = |name: &str| {
        let modified = fs::symlink_metadata(dir.join(name)).and_then(|m| m.modified());
        modified.is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() >= max_age)
    };
    let names = list(dir)?;
    // Messages whose submitter died before the commit, and whether that was long enough ago.
    let uncommitted: HashMap<&str, bool> = names
        .iter()
        .filter_map(|n| Some((n.strip_prefix(TMP_PREFIX)?, old(n))))
        .collect();
    let garbage = |name: &str| match name.strip_prefix(['Q', 'M']) {
        Some(id) => match uncommitted.get(message_id_of(id)) {
            Some(abandoned) => *abandoned,
            // What a runner killed between removing an entry's Q and its M leaves.
            None => name.starts_with('M') && !dir.join(format!("Q{id}")).exists(),
        },
        None => name.strip_prefix(TMP_PREFIX).is_some_and(|id| uncommitted[id]),
    };
    let removed = |name: &&String| garbage(name) && fs::remove_file(dir.join(name)).is_ok();
    Ok(names.iter().filter(removed).cloned().collect())
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
        inc.commit("a@x", &rcpts, "").unwrap()
    }

    #[test]
    fn commit_publishes_one_entry_per_recipient_and_no_temp_file() {
        let dir = tempdir("commit");
        let ids = submit(&dir, b"S: x\n\nhello\n", &["b@y", "c@z"]);
        assert_eq!(ids.len(), 2);
        let entries = scan(&dir, None).unwrap();
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
            c.remove().unwrap();
        }
    }

    #[test]
    fn a_named_message_replaces_its_uncommitted_leftover() {
        let dir = tempdir("named");
        let mut first = Incoming::create(&dir, true, Some("drop1")).unwrap();
        first.receive(&b"x\n"[..], &crate::test_util::VERBATIM).unwrap();
        // Killed mid-commit: an entry written, the temporary file still there.
        write_file(&dir.join("Qdrop1.1"), "ID: drop1.1\n", true, None).unwrap();
        std::mem::forget(first);
        let mut again = Incoming::create(&dir, true, Some("drop1")).unwrap();
        again.receive(&b"y\n"[..], &crate::test_util::VERBATIM).unwrap();
        assert_eq!(again.commit("a@b", &["c@d".into()], "").unwrap(), ["drop1.1"]);
        assert_eq!(names(&dir), ["Mdrop1.1", "Qdrop1.1"]);
    }

    #[test]
    fn a_drop_is_published_as_message_then_envelope() {
        let dir = tempdir("drop");
        let mut inc = Incoming::create(&dir, true, None).unwrap();
        let opts = crate::test_util::VERBATIM;
        inc.receive(&b"S: x\n\nhi\n"[..], &opts).unwrap();
        let id = inc
            .commit_drop("a@x", &["b@y".to_owned(), "c@z".to_owned()], "")
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
        let id = inc.commit_drop("", &["b@y".to_owned()], "NOTIFY=NEVER").unwrap();
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
            assert!(inc.commit("a@x", &["bad\nrcpt".to_owned()], "").is_err());
            let injected = "b@x> NOTIFY=SUCCESS ORCPT=rfc822;c@y".to_owned();
            assert!(inc.commit("a@x", &["ok@x".to_owned(), injected], "").is_err());
            assert!(inc.commit("a@x> AUTH=<c@y", &["ok@x".to_owned()], "").is_err());
            assert!(inc
                .commit_drop("a@x> AUTH=<c@y", &["ok@x".to_owned()], "")
                .is_err());
        }
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
        {
            let mut inc = Incoming::create(&dir, false, None).unwrap();
            inc.receive(&b"x\n"[..], &crate::test_util::VERBATIM).unwrap();
            assert!(inc.commit("a@x", &[], "").is_err(), "a message with no recipient");
        }
        assert!(names(&dir).is_empty(), "{:?}", names(&dir));
        {
            // A failure half-way (the second entry's name is taken) takes back the first entry.
            let mut inc = Incoming::create(&dir, false, None).unwrap();
            inc.receive(&b"x\n"[..], &crate::test_util::VERBATIM).unwrap();
            fs::write(dir.join(format!("Q{}.2", inc.id)), "taken").unwrap();
            assert!(inc
                .commit("a@x", &["b@y".to_owned(), "c@z".to_owned()], "")
                .is_err());
        }
        assert_eq!(names(&dir).len(), 1, "{:?}", names(&dir));
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
        let entries = scan(&dir, None).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].sender, "");
        assert_eq!(entries[0].message_id(), "20c096");
        assert!(entries[0].created > 0, "mtime stands in for Created");
        let unread = names(&dir).iter().filter(|n| n.starts_with('Q')).count() - entries.len();
        assert_eq!(unread, 2);
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
        // What a runner killed in the middle of a record left does not stand in the way.
        fs::write(dir.join(format!("{TMP_PREFIX}Q{}", ids[0])), "stale").unwrap();
        c.entry.attempts = 3;
        c.entry.last_error = "451 later".into();
        c.record().unwrap();
        assert!(
            claim(&dir, &ids[0]).unwrap().is_none(),
            "still held after the rewrite"
        );
        drop(c);
        let c = claim(&dir, &ids[0]).unwrap().unwrap();
        assert_eq!(c.entry.attempts, 3);
        assert_eq!(c.entry.last_error, "451 later");
        c.remove().unwrap();
        assert!(names(&dir).is_empty());
    }

    #[test]
    fn an_entry_whose_message_is_cut_short_is_not_listed() {
        let dir = tempdir("short");
        let ids = submit(&dir, b"S: x\n\nsome body\n", &["b@y"]);
        let m = dir.join(format!("M{}", ids[0]));
        let full = fs::read(&m).unwrap();
        fs::write(&m, &full[..full.len() - 3]).unwrap();
        assert!(scan(&dir, None).unwrap().is_empty());
        assert!(dir.join(format!("Q{}", ids[0])).exists());
    }

    #[test]
    fn a_message_is_listed_only_once_committed() {
        let dir = tempdir("commit-point");
        let mut inc = Incoming::create(&dir, true, None).unwrap();
        let opts = crate::test_util::VERBATIM;
        inc.receive(&b"x\n"[..], &opts).unwrap();
        let ids = inc
            .commit("a@x", &["b@y".to_owned(), "c@z".to_owned()], "")
            .unwrap();
        // A submitter killed in the middle of its commit leaves its temporary file, named after the
        // message, next to some of the entries: none of them is listed or claimed, and the
        // clean-up takes them all once old.
        let message = ids[0].rsplit_once('.').unwrap().0.to_owned();
        fs::write(dir.join(format!("{TMP_PREFIX}{message}")), "x").unwrap();
        assert!(scan(&dir, None).unwrap().is_empty());
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

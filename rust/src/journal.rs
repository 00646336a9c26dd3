//! The delivered journal: the entry ids of deliveries the server confirmed, written by the
//! SMTP session at once and replayed by the runner, so that a crash between the server's reply
//! and the runner's record never sends a message twice.

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::errors::{IoContext, Result};

const JOURNAL: &str = "delivered";

/// A journal taken for replay: renamed out of the way of new appends, and removed by the caller
/// only once the entries it names are removed, so a crash during the replay replays it again.
const TAKEN: &str = "delivered.taken.";

const SYNC_EVERY: Duration = Duration::from_millis(100);

/// One session's writer of the journal. Each confirmation is written at once, right after the
/// server's reply, so a process that dies (even by SIGKILL) has always recorded it. The file is
/// synced at most every `SYNC_EVERY` during a long session; the confirmations since are made
/// durable by the runner, which removes their entries as the session hands them back and syncs the
/// spool within the same time (`SYNC_EVERY` in queue.py). A power failure can repeat at most that
/// much, and no message waits for a sync of its own.
pub struct Journal {
    path: PathBuf,
    last_sync: Instant,
}

impl Journal {
    pub fn new(dir: &Path) -> Journal {
        Journal {
            path: dir.join(JOURNAL),
            last_sync: Instant::now(),
        }
    }

    pub fn record(&mut self, ids: &[&str]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ctx = |what: &str| format!("can not {what} `{}'", self.path.display());
        // Opened per write, so that lines always go to the journal in place, not to one a
        // replay has taken aside meanwhile.
        let lines = format!("{}\n", ids.join("\n"));
        let f = crate::spool::open_append(&self.path, false)
            .and_then(|mut f| f.write_all(lines.as_bytes()).map(|()| f))
            .context(|| ctx("write"))?;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            f.sync_data().context(|| ctx("sync"))?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

/// Take the journal for replay: the entry ids recorded in it and in any journal an earlier,
/// interrupted replay left behind, and the files to remove when those entries are gone.
pub fn journal_take(dir: &Path) -> Result<(Vec<String>, Vec<OsString>)> {
    let path = dir.join(JOURNAL);
    let stamp = UNIX_EPOCH.elapsed().unwrap_or_default();
    let fresh = dir.join(format!("{TAKEN}{}.{}", stamp.as_nanos(), std::process::id()));
    match fs::rename(&path, &fresh) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        taken => taken.context(|| format!("can not take `{}'", path.display()))?,
    }
    let mut ids = Vec::new();
    let mut files = Vec::new();
    for name in crate::spool::list(dir)?.iter().filter(|n| n.starts_with(TAKEN)) {
        let taken = dir.join(name);
        let text = match fs::read_to_string(&taken) {
            // Another runner's replay is done with it: the entries it names are gone.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            read => read.context(|| format!("can not read `{}'", taken.display()))?,
        };
        ids.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        files.push(taken.into_os_string());
    }
    Ok((ids, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{names, tempdir};

    #[test]
    fn a_taken_journal_stays_until_its_replay_is_done() {
        let dir = tempdir("journal");
        assert_eq!(journal_take(&dir).unwrap(), (vec![], vec![]));
        let mut journal = Journal::new(&dir);
        journal.record(&["a.1", "b.2"]).unwrap();
        journal.record(&["c.1"]).unwrap();
        let (ids, files) = journal_take(&dir).unwrap();
        assert_eq!(ids, ["a.1", "b.2", "c.1"]);
        // A replay that died before removing its files: the next take sees those ids again,
        // together with what was confirmed since.
        journal.record(&["d.1"]).unwrap();
        let (mut again, files2) = journal_take(&dir).unwrap();
        again.sort();
        assert_eq!(again, ["a.1", "b.2", "c.1", "d.1"]);
        assert_eq!(files2.len(), 2);
        assert!(files2.contains(&files[0]));
        for f in files2 {
            fs::remove_file(f).unwrap();
        }
        assert!(names(&dir).is_empty());
    }

    #[test]
    fn a_journal_another_replay_removed_meanwhile_is_skipped() {
        let dir = tempdir("journal-gone");
        Journal::new(&dir).record(&["a.1"]).unwrap();
        // Listed, then gone before it is read: what a dangling name looks like to the reader.
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join(format!("{TAKEN}0.1"))).unwrap();
        let (ids, files) = journal_take(&dir).unwrap();
        assert_eq!((ids.len(), files.len()), (1, 1));
    }
}

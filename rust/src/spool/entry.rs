//! One queue entry and its file, in C dma's format (docs/spool.md).

use std::fmt::Display;

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
pub(super) fn message_id_of(entry_id: &str) -> &str {
    entry_id.rsplit_once('.').map_or(entry_id, |(m, _)| m)
}

impl Entry {
    pub fn message_id(&self) -> &str {
        message_id_of(&self.id)
    }

    /// The queue file: the optional fields only when set.
    pub(super) fn render(&self) -> String {
        let field = |key: &str, value: &dyn Display, set: bool| set.then(|| format!("{key}: {value}\n"));
        [
            field("ID", &self.id, true),
            field("Sender", &self.sender, true),
            field("Recipient", &self.recipient, true),
            field("Created", &self.created, true),
            field("Size", &self.size, true),
            field("Attempts", &self.attempts, self.attempts > 0),
            field("Next-Attempt", &self.next_attempt, self.next_attempt > 0),
            field("Last-Error", &self.last_error, !self.last_error.is_empty()),
            field("State", &self.state, !self.state.is_empty()),
            field("DSN", &self.dsn, !self.dsn.is_empty()),
        ]
        .into_iter()
        .flatten()
        .collect()
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
                "ID" => value.clone_into(&mut e.id),
                "Sender" => value.clone_into(&mut e.sender),
                "Recipient" => value.clone_into(&mut e.recipient),
                "Created" => e.created = number(),
                "Size" => e.size = number(),
                "Attempts" => e.attempts = u32::try_from(number()).unwrap_or(u32::MAX),
                "Next-Attempt" => e.next_attempt = number(),
                "Last-Error" => value.clone_into(&mut e.last_error),
                "State" => value.clone_into(&mut e.state),
                "DSN" => value.clone_into(&mut e.dsn),
                _ => {}
            }
        }
        (!e.id.is_empty() && !e.recipient.is_empty()).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

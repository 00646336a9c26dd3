//! Helpers shared by the unit tests of the spool's files.

use std::fs;
use std::path::{Path, PathBuf};

use crate::intake::IntakeOptions;

/// A fresh, empty directory for one test.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dma-test-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Take the message as it is: no dot handling, nothing added.
pub const VERBATIM: IntakeOptions = IntakeOptions {
    dot_terminates: false,
    collect_recipients: false,
    prefix: Vec::new(),
    add_if_missing: Vec::new(),
    rewrite_from: None,
};

//! Reports files in a namespace directory that the store does not own: temp files left by
//! interrupted writes, segment files the manifest never acknowledged, anything foreign.
//! They are never read or listed; this only tells the operator they are there.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::namespace::Namespace;
use super::{LOCK_FILE, SEGMENT_EXT};
use crate::error::{Error, Result};
use crate::format::SegmentKey;
use crate::storage::fsutil::TEMP_PREFIX;
use crate::storage::listing;
use crate::storage::manifest::MANIFEST_FILE;

/// Files younger than this may belong to a store in progress and are not reported.
const IN_PROGRESS_GRACE: Duration = Duration::from_secs(60);

/// Scans in the background, so that opening a namespace never waits on a listing.
pub(super) fn report_in_background(ns: Arc<Namespace>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(move || scan(&ns, IN_PROGRESS_GRACE));
    }
}

/// Lists and warns about unowned files older than `grace`.
pub(super) fn scan(ns: &Namespace, grace: Duration) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(&ns.dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", ns.dir.display()), e)),
    };
    let now = crate::clock::Clock::system_now(&crate::clock::SystemClock);
    // Segments a compaction or retention replaced stay until garbage collection deletes
    // them after the grace period: the store's own, named in its retired records.
    let retired: HashSet<SegmentKey> = super::gc::retired_keys(&ns.dir)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut foreign = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(what) = classify(ns, &retired, &file_name.to_string_lossy()) else {
            continue;
        };
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok());
        if age.is_some_and(|age| age < grace) {
            continue;
        }
        tracing::warn!(namespace = %ns.name, file = %entry.path().display(), "ignoring {what}");
        foreign.push(entry.path());
    }
    foreign.sort();
    Ok(foreign)
}

/// What an unowned file is, or `None` for the store's own files.
fn classify(ns: &Namespace, retired: &HashSet<SegmentKey>, name: &str) -> Option<&'static str> {
    if name == MANIFEST_FILE
        || name == LOCK_FILE
        || name == crate::storage::retired::RETIRED_DIR
        || name == crate::storage::fork::FORKS_DIR
    {
        return None;
    }
    if name.starts_with(crate::format::spill::SPILL_PREFIX) {
        return Some("a spill file (a segment being built, or left by an interrupted build)");
    }
    if name.starts_with(TEMP_PREFIX) {
        return Some("a temp file left by an interrupted write");
    }
    let key = name
        .strip_suffix(SEGMENT_EXT)
        .and_then(|k| k.parse::<SegmentKey>().ok());
    match key {
        Some(key) if retired.contains(&key) => None,
        Some(key) if listing::read(&ns.catalog).get(&key).is_some() => None,
        Some(_) => Some("a segment file the manifest does not list (never acknowledged)"),
        None => Some("a file that is not part of the store"),
    }
}

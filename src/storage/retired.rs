//! Garbage collection's bookkeeping, shared by the backends.
//!
//! When a catalog edit takes segments out (compaction, retention), the backend first
//! writes a *retired record* naming them, `retired/<ms:020>-<id>` beside the segments,
//! then edits the catalog. The segments stay readable by key, so a restore that planned
//! before the edit still finds them. [`collect_garbage`](crate::Storage::collect_garbage)
//! deletes them once the record is older than its grace period, and only if no catalog
//! (the namespace's own, or a fork's) still names them. A crash between record and edit
//! leaves a record naming catalogued segments, which that check keeps.
//!
//! Segment objects that neither a catalog nor a record names are *orphans* (a crash
//! between a segment's upload and its catalog edit); they are deleted once older than
//! the grace period, by the backend's modification time, which also protects a store
//! in flight.
//!
//! A record is text: the line `walvault retired 1`, then one segment key per line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hashbrown::HashSet;

use crate::error::{Error, FormatError, Part, Result};
use crate::format::SegmentKey;

/// The directory (or object prefix) of retired records, inside a namespace.
pub(crate) const RETIRED_DIR: &str = "retired";
const FIRST_LINE: &str = "walvault retired 1";

/// How [`collect_garbage`](crate::Storage::collect_garbage) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Segments are deleted only once retired (or, for orphans, written) at least this
    /// long ago, so that restores in flight and stores in progress are never cut short.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// What garbage collection deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Retired segments deleted.
    pub deleted: Vec<SegmentKey>,
    /// Orphan segments deleted.
    pub orphans: Vec<SegmentKey>,
    /// Segments that will be deleted by a later run, once past the grace period.
    pub waiting: usize,
    /// Retired segments kept because a fork's catalog still names them.
    pub kept_for_forks: usize,
}

/// A retired record as listed by a backend.
#[derive(Debug, Clone)]
pub(crate) struct Record<Id> {
    /// What the backend deletes it by (a path).
    pub id: Id,
    /// When it was written, from its name.
    pub at: SystemTime,
    pub keys: Vec<SegmentKey>,
}

/// The name of a new record written at `at`.
pub(crate) fn record_name(at: SystemTime) -> String {
    let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{ms:020}-{}", uuid::Uuid::new_v4().simple())
}

/// When the record called `name` was written; None if the name is not a record's.
pub(crate) fn parse_name(name: &str) -> Option<SystemTime> {
    let (ms, id) = name.split_once('-')?;
    if ms.len() != 20 || uuid::Uuid::try_parse(id).is_err() {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?))
}

pub(crate) fn encode(keys: &[SegmentKey]) -> Vec<u8> {
    let mut out = format!("{FIRST_LINE}\n");
    for key in keys {
        out.push_str(&key.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

/// Parses a record; `what` names it in errors.
pub(crate) fn decode(bytes: &[u8], what: &str) -> Result<Vec<SegmentKey>> {
    let bad = |reason| {
        Error::corrupt(
            what,
            FormatError::Invalid {
                part: Part::ManifestRecord,
                offset: 0,
                reason,
            },
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("a retired record is not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(FIRST_LINE) || !text.ends_with('\n') {
        return Err(bad("not a retired record (or cut short)"));
    }
    lines
        .map(|line| line.parse().map_err(|_| bad("a line is not a segment key")))
        .collect()
}

/// What one collection does.
#[derive(Debug)]
pub(crate) struct Decision<Id> {
    pub report: GcReport,
    /// Records whose segments are all dealt with, to delete after the segments.
    pub records: Vec<Id>,
}

/// Decides what to delete: retired segments whose record is past the grace period and
/// that no catalog names (`live`), and orphans (`objects` that neither a catalog nor any
/// record names) written before the grace period. `objects` lists the segment objects
/// with their modification times; `forks` are the keys forks still name. An orphan that
/// starts above `durable` (the catalog's durable frame number) is never deleted: it may
/// be a store that crashed before its catalog edit, which the writer re-submits by
/// reusing the object as it is, old modification time and all.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide<Id>(
    live: &HashSet<SegmentKey>,
    durable: u64,
    forks: &HashSet<SegmentKey>,
    records: Vec<Record<Id>>,
    objects: &[(SegmentKey, SystemTime)],
    now: SystemTime,
    grace: Duration,
) -> Decision<Id> {
    let past = |at: SystemTime| now.duration_since(at).is_ok_and(|age| age >= grace);
    let existing: HashSet<SegmentKey> = objects.iter().map(|(k, _)| *k).collect();
    let mut report = GcReport::default();
    let mut done = Vec::new();
    let mut named: HashSet<SegmentKey> = HashSet::new();
    for record in records {
        named.extend(record.keys.iter().copied());
        if !past(record.at) {
            report.waiting += record.keys.iter().filter(|k| existing.contains(*k)).count();
            continue;
        }
        for key in &record.keys {
            if live.contains(key) || !existing.contains(key) {
                continue;
            }
            if forks.contains(key) {
                report.kept_for_forks += 1;
                continue;
            }
            report.deleted.push(*key);
        }
        done.push(record.id);
    }
    for (key, modified) in objects {
        if live.contains(key) || forks.contains(key) || named.contains(key) {
            continue;
        }
        if past(*modified) && key.start_frame_no <= durable {
            report.orphans.push(*key);
        } else {
            report.waiting += 1;
        }
    }
    report.deleted.sort_unstable();
    report.deleted.dedup();
    report.orphans.sort_unstable();
    Decision {
        report,
        records: done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> SegmentKey {
        SegmentKey {
            start_frame_no: n * 10 + 1,
            end_frame_no: n * 10 + 10,
            timestamp: 1_000 + n,
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_errors() {
        let keys = vec![key(1), key(2)];
        assert_eq!(decode(&encode(&keys), "r").unwrap(), keys);
        let bytes = encode(&keys);
        assert!(decode(&bytes[..bytes.len() - 3], "r").is_err());
        assert!(decode(b"hello\n", "r").is_err());
        assert!(decode(b"walvault retired 1\nnot-a-key\n", "r").is_err());
        let name = record_name(UNIX_EPOCH + Duration::from_millis(42));
        assert_eq!(
            parse_name(&name),
            Some(UNIX_EPOCH + Duration::from_millis(42))
        );
        assert_eq!(parse_name("42-x"), None);
    }

    #[test]
    fn only_old_unreferenced_segments_go() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let grace = Duration::from_secs(60);
        let now = t0 + Duration::from_secs(100);
        let live: HashSet<_> = [key(5)].into_iter().collect();
        let forks: HashSet<_> = [key(2)].into_iter().collect();
        let records = vec![
            // Past grace: 1 goes, 2 is a fork's, 5 is live again (crash before the edit).
            Record {
                id: "old",
                at: t0,
                keys: vec![key(1), key(2), key(5)],
            },
            // Within grace: 3 waits.
            Record {
                id: "young",
                at: now,
                keys: vec![key(3)],
            },
        ];
        let objects: Vec<_> = [1, 2, 3, 5, 7, 8]
            .iter()
            .map(|&n| (key(n), if n == 8 { now } else { t0 }))
            .collect();
        let d = decide(&live, 100, &forks, records, &objects, now, grace);
        assert_eq!(d.report.deleted, vec![key(1)]);
        assert_eq!(d.report.orphans, vec![key(7)]);
        assert_eq!(d.report.waiting, 2, "3 (young record) and 8 (young orphan)");
        assert_eq!(d.report.kept_for_forks, 1);
        assert_eq!(d.records, vec!["old"]);
        // Above the durable frame number, an old orphan may be a store to re-submit.
        let pending = [(key(9), t0)];
        let d = decide(
            &live,
            50,
            &forks,
            Vec::<Record<()>>::new(),
            &pending,
            now,
            grace,
        );
        assert!(d.report.orphans.is_empty());
        assert_eq!(d.report.waiting, 1);
    }
}

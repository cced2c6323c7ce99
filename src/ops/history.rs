//! Listing a namespace's commits, so a user can pick a state to restore (`walvault
//! log`).
//!
//! Every commit's frame number, time and database size are in its segment's commit
//! table, so the walk reads each segment's header and table only, never its pages
//! ([`Storage::fetch_commit_table`]); the one exception is a sparse (compacted) segment,
//! whose frame numbers do not say how many frames it holds, which is read whole to count
//! them. Segments whose commits all lie outside the time window are skipped by their
//! catalog entry (first and last commit time), and the walk holds one segment at a time:
//! its memory is the output plus the keys of the segments inside the window.

use chrono::{DateTime, Utc};
use tokio_stream::StreamExt;

use crate::error::{Error, Result};
use crate::format::{ms_to_datetime, Commit, CommitTable, NamespaceName, SegmentKey};
use crate::storage::frames::RunReader;
use crate::storage::Storage;

/// One commit of a namespace's history, as [`commit_log`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitEntry {
    /// The commit's frame number: what [`RestoreOptions::FrameNo`](crate::RestoreOptions)
    /// (`walvault restore --frame`) takes to restore the state right after it.
    pub frame_no: u64,
    /// The commit's time in ms since the Unix epoch: a restore by this time
    /// (`restore --at`) returns this commit's state, or a later commit's with the same
    /// millisecond.
    pub timestamp_ms: u64,
    /// The database's size in pages after the commit.
    pub db_size_pages: u32,
    /// The frames the store holds for this commit, counted from the previous commit in
    /// the same segment (or the segment's start). In a segment as the log wrote it that
    /// is the transaction's frames, the pages it wrote. In a sparse (compacted) segment
    /// it is the newest version of each page written since the previous commit the
    /// segment kept, so commits a precision window dropped are folded into the next one.
    pub pages_changed: u32,
    /// True when this commit starts a new lineage: it is its segment's first commit and
    /// the segment builds on no earlier state (a snapshot, such as the replicator's
    /// first run or one after the WAL was reset, or a first transaction on an empty
    /// database). Only the first commit of a segment can be known to be one.
    pub new_lineage: bool,
    /// The segment holding the commit.
    pub segment: SegmentKey,
}

impl CommitEntry {
    /// The commit time as a date.
    pub fn timestamp(&self) -> DateTime<Utc> {
        ms_to_datetime(self.timestamp_ms)
    }
}

/// The commits of `namespace` whose time lies in `since ..= until` (either bound
/// optional), oldest first. A namespace without segments (one the store does not have)
/// is a `NotFound` error; a window without commits is an empty list.
pub async fn commit_log<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<CommitEntry>> {
    let window = Window { since, until };
    let keys = segments_in(storage, namespace, &window).await?;
    let mut out = Vec::new();
    for key in keys {
        let table = storage.fetch_commit_table(namespace, &key, None).await?;
        let counts = frame_counts(storage, namespace, &table).await?;
        out.extend(entries(&table, &counts).filter(|e| window.holds(e.timestamp())));
    }
    Ok(out)
}

/// The time window asked for; a missing bound is open.
struct Window {
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Window {
    fn holds(&self, t: DateTime<Utc>) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// Whether every segment at or before one whose last commit is at `last` lies
    /// before the window (commit times never decrease along a log).
    fn passed(&self, last: DateTime<Utc>) -> bool {
        self.since.is_some_and(|s| last < s)
    }

    /// Whether a segment whose first commit is at `first` lies after the window.
    fn after(&self, first: DateTime<Utc>) -> bool {
        self.until.is_some_and(|u| first > u)
    }
}

/// The keys of the segments that may hold commits inside `window`, oldest first. The
/// catalog lists newest first, so the walk stops at the first segment wholly before it.
async fn segments_in<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    window: &Window,
) -> Result<Vec<SegmentKey>> {
    let listing = storage.list_segments(namespace, 0, None);
    tokio::pin!(listing);
    let (mut keys, mut any) = (Vec::new(), false);
    while let Some(info) = listing.next().await {
        let info = info?;
        any = true;
        if window.passed(ms_to_datetime(info.last_commit_ts)) {
            break;
        }
        if !window.after(info.key.timestamp()) {
            keys.push(info.key);
        }
    }
    if !any {
        return Err(Error::NotFound(format!(
            "namespace {namespace} has no segments in the store"
        )));
    }
    keys.reverse();
    Ok(keys)
}

/// For each commit of `table`, how many frames the segment holds for it.
async fn frame_counts<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    table: &CommitTable,
) -> Result<Vec<u32>> {
    if !table.is_sparse() {
        return Ok(dense_counts(table.key().start_frame_no, table.commits()));
    }
    let mut frames = RunReader::new(table.key(), 0..table.frame_count(), table.page_size());
    let mut counts = Vec::with_capacity(table.commits().len());
    let mut since_last = 0u32;
    while let Some(run) = frames.next(storage, namespace, &None).await? {
        for frame in run {
            since_last += 1;
            if frame.size_after != 0 {
                counts.push(since_last);
                since_last = 0;
            }
        }
    }
    Ok(counts)
}

/// Frames per commit of a dense segment: its frame numbers run without gaps from
/// `start`, so they are the distances between commits.
fn dense_counts(start: u64, commits: &[Commit]) -> Vec<u32> {
    let mut previous = start.saturating_sub(1);
    commits
        .iter()
        .map(|c| {
            let n = c.frame_no.saturating_sub(previous);
            previous = c.frame_no;
            u32::try_from(n).unwrap_or(u32::MAX)
        })
        .collect()
}

/// The entries of one segment's commits, given the frames each holds.
fn entries<'a>(
    table: &'a CommitTable,
    counts: &'a [u32],
) -> impl Iterator<Item = CommitEntry> + 'a {
    let snapshot = table.lineage_base() == Some(0);
    table
        .commits()
        .iter()
        .zip(counts)
        .enumerate()
        .map(move |(i, (c, &pages_changed))| CommitEntry {
            frame_no: c.frame_no,
            timestamp_ms: c.timestamp_ms,
            db_size_pages: c.size_after,
            pages_changed,
            new_lineage: snapshot && i == 0,
            segment: table.key(),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::format::{SealedSegment, SegmentBuilder, CHECKSUM_FLAG};
    use crate::storage::{on_store, LocalStorage, MemoryStorage};
    use crate::{compact, CompactionPolicy};

    const PAGE: usize = 512;

    fn at(ms: u64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms as i64).unwrap()
    }

    /// A segment from frame `start` with lineage `base`; each transaction writes its
    /// pages (the database has as many pages as the largest written), commits at its
    /// time, and records its commit frame number as its (fake) lineage checksum.
    fn segment(start: u64, base: u64, txns: &[(&[u32], u64)]) -> SealedSegment {
        let mut b = SegmentBuilder::new(start, PAGE as u32).unwrap();
        b.start_lineage(base).unwrap();
        let mut db_size = 0;
        for (pages, ts) in txns {
            let (last, rest) = pages.split_last().unwrap();
            for &p in rest {
                b.append_frame(p, &[p as u8; PAGE]).unwrap();
            }
            db_size = pages.iter().copied().fold(db_size, u32::max);
            let sum = CHECKSUM_FLAG | b.next_frame_no();
            b.append_commit_with_checksum(*last, &[1; PAGE], db_size, at(*ts), sum)
                .unwrap();
        }
        b.seal(at(0)).unwrap()
    }

    /// Frames 1..=4 (a snapshot: commits 3 and 4), 5..=7 (commits 6 and 7), and 8..=12
    /// (a new snapshot: commit 12).
    fn history() -> Vec<SealedSegment> {
        vec![
            segment(1, 0, &[(&[1, 2, 3], 1_000), (&[2], 1_100)]),
            segment(5, CHECKSUM_FLAG | 4, &[(&[1, 4], 2_000), (&[4], 2_100)]),
            segment(8, 0, &[(&[1, 2, 3, 4, 5], 3_000)]),
        ]
    }

    async fn stored<S: Storage>(storage: S, segments: Vec<SealedSegment>) -> S {
        for s in segments {
            let ns = name();
            let done = on_store(|_| async {});
            storage.store(&ns, s, None, done).await.unwrap();
        }
        storage
    }

    fn name() -> NamespaceName {
        NamespaceName::new("shop").unwrap()
    }

    async fn log(
        s: &impl Storage,
        since: Option<u64>,
        until: Option<u64>,
    ) -> Result<Vec<CommitEntry>> {
        commit_log(s, &name(), since.map(at), until.map(at)).await
    }

    fn frames(entries: &[CommitEntry]) -> Vec<u64> {
        entries.iter().map(|e| e.frame_no).collect()
    }

    #[tokio::test]
    async fn lists_every_commit_oldest_first() {
        let s = stored(MemoryStorage::new(), history()).await;
        let all = log(&s, None, None).await.unwrap();
        assert_eq!(frames(&all), [3, 4, 6, 7, 12]);
        let times: Vec<u64> = all.iter().map(|e| e.timestamp_ms).collect();
        assert_eq!(times, [1_000, 1_100, 2_000, 2_100, 3_000]);
        let sizes: Vec<u32> = all.iter().map(|e| e.db_size_pages).collect();
        assert_eq!(sizes, [3, 3, 4, 4, 5]);
        let changed: Vec<u32> = all.iter().map(|e| e.pages_changed).collect();
        assert_eq!(changed, [3, 1, 2, 1, 5]);
        let snapshots: Vec<bool> = all.iter().map(|e| e.new_lineage).collect();
        assert_eq!(snapshots, [true, false, false, false, true]);
        assert_eq!(all[2].segment, history()[1].key());
    }

    #[tokio::test]
    async fn filters_are_inclusive() {
        let s = stored(MemoryStorage::new(), history()).await;
        let some = |since, until| log(&s, since, until);
        assert_eq!(
            frames(&some(Some(1_100), Some(2_100)).await.unwrap()),
            [4, 6, 7]
        );
        assert_eq!(
            frames(&some(Some(1_001), None).await.unwrap()),
            [4, 6, 7, 12]
        );
        assert_eq!(frames(&some(None, Some(2_099)).await.unwrap()), [3, 4, 6]);
        assert_eq!(frames(&some(Some(3_000), Some(3_000)).await.unwrap()), [12]);
        // A window between two commits of one segment, before all, after all, reversed.
        for (since, until) in [(1_001, 1_099), (0, 999), (3_001, 9_000), (2_100, 2_000)] {
            let none = some(Some(since), Some(until)).await.unwrap();
            assert!(none.is_empty(), "{since}..={until}: {none:?}");
        }
    }

    #[tokio::test]
    async fn segments_outside_the_window_are_not_read() {
        let s = stored(MemoryStorage::new(), history()).await;
        let keys = |since, until| {
            let window = Window {
                since: Some(at(since)),
                until: Some(at(until)),
            };
            let s = s.clone();
            async move { segments_in(&s, &name(), &window).await.unwrap() }
        };
        let h = history();
        assert_eq!(keys(2_000, 2_100).await, [h[1].key()]);
        assert_eq!(keys(1_050, 2_050).await, [h[0].key(), h[1].key()]);
        assert!(keys(2_200, 2_900).await.is_empty());
        assert_eq!(keys(0, 9_000).await.len(), 3);
    }

    #[tokio::test]
    async fn an_unknown_namespace_is_not_found() {
        let s = stored(MemoryStorage::new(), history()).await;
        let other = NamespaceName::new("other").unwrap();
        let err = commit_log(&s, &other, None, None).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("other"), "{err}");
        let empty = commit_log(&MemoryStorage::new(), &name(), None, None).await;
        assert!(empty.unwrap_err().is_not_found());
    }

    /// A compaction with a precision window drops commit 6 and its older version of
    /// page 4: the merged segment holds frames 1..=5 and 7, and commit 7 holds what
    /// changed since commit 4.
    #[tokio::test]
    async fn sparse_segments_count_the_frames_they_hold() {
        let s = stored(MemoryStorage::new(), history()[..2].to_vec()).await;
        let policy = CompactionPolicy {
            fan_in: 2,
            max_small: 1,
            precision: Duration::from_secs(1),
            ..CompactionPolicy::default()
        };
        let report = compact(&s, &name(), &policy, false).await.unwrap();
        assert_eq!(report.segments_after, 1);
        let all = log(&s, None, None).await.unwrap();
        assert_eq!(frames(&all), [3, 4, 7]);
        let changed: Vec<u32> = all.iter().map(|e| e.pages_changed).collect();
        assert_eq!(changed, [3, 1, 2]);
        assert!(all[0].new_lineage && !all[2].new_lineage);
    }

    /// The local backend reads the commit table alone: damage to a page goes unseen
    /// (a restore would catch it), damage to the table does not.
    #[tokio::test]
    async fn local_reads_only_the_header_and_commit_table() {
        let dir = tempfile::tempdir().unwrap();
        let s = stored(LocalStorage::open(dir.path()).unwrap(), history()).await;
        let before = log(&s, None, None).await.unwrap();
        let seg = &history()[0];
        let path = dir.path().join("shop").join(format!("{}.seg", seg.key()));
        let mut bytes = std::fs::read(&path).unwrap();
        let page_byte = 128 + 24 + 7; // inside the first frame's page
        bytes[page_byte] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(log(&s, None, None).await.unwrap(), before);
        let table_byte = 128 + seg.frame_count() as usize * (24 + PAGE) + 9; // first commit's time
        bytes[table_byte] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let err = log(&s, None, None).await.unwrap_err();
        assert!(err.is_corrupt(), "{err}");
    }
}

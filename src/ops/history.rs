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
    let key = table.key();
    let segment = storage.fetch_segment_data(namespace, &key, None).await?;
    let mut counts = Vec::with_capacity(segment.commits().len());
    let mut since_last = 0u32;
    for frame in segment.frames() {
        since_last += 1;
        if frame.is_commit() {
            counts.push(since_last);
            since_last = 0;
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

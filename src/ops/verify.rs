//! Verifying a namespace's whole history: every segment's checksums, and the lineage
//! chain that ties each segment to the state before it (`docs/FORMAT.md` §3.9).
//!
//! The walk replays every commit, oldest first, onto the page hashes of the database
//! (eight bytes per page), so each commit's recorded checksum is proved against the
//! pages the history really holds, not merely against its neighbour's claim.

use tokio_stream::StreamExt;

use crate::error::{Error, FormatError, Part, Result};
use crate::format::lineage::Replay;
use crate::format::{CommitTable, Frame, NamespaceName, PageIndex, PageSums, SegmentKey};
use crate::storage::frames::RunReader;
use crate::storage::Storage;

/// What [`verify_history`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments read and verified.
    pub segments: usize,
    /// Commits whose lineage checksum was proved by replaying the history.
    pub commits_proved: u64,
    /// Commits without a lineage checksum (format version 1 history): not provable.
    pub commits_unchecked: u64,
    /// Segments that failed, with why; empty when the history is sound.
    pub problems: Vec<(SegmentKey, String)>,
}

impl VerifyReport {
    /// True when nothing failed.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every segment of `namespace`, oldest first, verifying its checksums and the
/// lineage chain. Problems are collected, not returned as the first error, so one run
/// names every bad segment; only a failure to list the history is an error.
///
/// A segment is read as its commit table, its page index and its frames a run at a time
/// (each part verified by its own checksum, and the parts checked against each other),
/// so memory stays bounded whatever a segment's size: one run of frames, the page
/// hashes of the database and the hashes of one transaction's pages.
pub async fn verify_history<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
) -> Result<VerifyReport> {
    let listing = storage.list_segments(namespace, 0, None);
    tokio::pin!(listing);
    let mut keys = Vec::new();
    while let Some(info) = listing.next().await {
        keys.push(info?.key);
    }
    keys.sort_by_key(|k| k.end_frame_no);
    let mut report = VerifyReport::default();
    let mut sums: Option<PageSums> = None;
    for key in keys {
        report.segments += 1;
        if let Err(e) = check_segment(storage, namespace, &key, &mut sums, &mut report).await {
            report.problems.push((key, e.to_string()));
            sums = None; // the chain cannot be followed past it
        }
    }
    Ok(report)
}

/// Verifies one segment and replays it onto `sums` (None: the state before it is
/// unknown). A segment that cannot be read is an error; a lineage that does not hold is
/// a problem recorded in `report`.
async fn check_segment<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    key: &SegmentKey,
    sums: &mut Option<PageSums>,
    report: &mut VerifyReport,
) -> Result<()> {
    let table = storage.fetch_commit_table(ns, key, None).await?;
    let index = storage.fetch_segment_index(ns, key, None).await?;
    let commits = table.commits().len() as u64;
    let mut state = match start_state(&table, sums.take()) {
        Ok(Some(state)) => Some(state),
        Ok(None) => {
            report.commits_unchecked += commits;
            None
        }
        Err(why) => {
            report.problems.push((*key, why));
            None
        }
    };
    let mut replay = state.as_mut().map(|s| Replay::new(s, table.commits(), 0));
    let mut failed = None;
    let mut refs = References::new(&table, &index);
    let mut frames = RunReader::new(*key, 0..table.frame_count(), table.page_size());
    while let Some(run) = frames.next(storage, ns, &None).await? {
        refs.check(ns, key, frames.position() - run.len() as u32, &run)?;
        if let (Some(r), None) = (replay.as_mut(), failed) {
            failed = r.feed(run).err();
        }
    }
    refs.finish(ns, key)?;
    drop(replay);
    match failed {
        None if state.is_some() => report.commits_proved += commits,
        None => {}
        Some(frame_no) => {
            let before = table.commits().iter().filter(|c| c.frame_no < frame_no);
            report.commits_proved += before.count() as u64;
            let why = format!(
                "commit at frame {frame_no} does not produce the database its checksum records"
            );
            report.problems.push((*key, why));
            state = None;
        }
    }
    *sums = state;
    Ok(())
}

/// The state the segment of `table` builds on, to replay it onto: fresh for a new
/// lineage, `sums` when they are the state its lineage names. None when its commits
/// cannot be proved (no lineage, or an unknown state before it); an error saying why
/// when its lineage names another state than the history before it ends at.
fn start_state(
    table: &CommitTable,
    sums: Option<PageSums>,
) -> std::result::Result<Option<PageSums>, String> {
    let Some(base) = table.lineage_base() else {
        return Ok(None);
    };
    match sums {
        _ if base == 0 => Ok(Some(PageSums::new())),
        Some(s) if s.checksum() == base => Ok(Some(s)),
        Some(s) => Err(format!(
            "builds on database state {base:016x} but the history before it ends at {:016x}",
            s.checksum()
        )),
        // The state before is unknown (older history without lineage, or a compacted
        // base): the chain starts being provable at the next new lineage.
        None => Ok(None),
    }
}

/// What a whole-segment decode checks beyond checksums, checked as the frames stream
/// by: frame numbers ascend inside the key, the commit frames are the commit table's,
/// and the page index names each page's newest frame and nothing else.
struct References<'a> {
    table: &'a CommitTable,
    index: &'a PageIndex,
    previous: u64,
    commits: usize,
    /// Frames the index names (as their page's newest).
    indexed: usize,
}

impl<'a> References<'a> {
    fn new(table: &'a CommitTable, index: &'a PageIndex) -> Self {
        Self {
            table,
            index,
            previous: table.key().start_frame_no.saturating_sub(1),
            commits: 0,
            indexed: 0,
        }
    }

    /// Checks the frames of a run starting at position `start`.
    fn check(
        &mut self,
        ns: &NamespaceName,
        key: &SegmentKey,
        start: u32,
        run: &[Frame],
    ) -> Result<()> {
        for (position, frame) in (start..).zip(run) {
            let bad = |reason| invalid(ns, key, Part::Frame(position), reason);
            if frame.frame_no <= self.previous || frame.frame_no > key.end_frame_no {
                return Err(bad("frame number out of sequence"));
            }
            self.previous = frame.frame_no;
            match self.index.get(frame.page_no) {
                Some(newest) if newest == position => self.indexed += 1,
                Some(newest) if newest > position => {}
                _ => {
                    return Err(bad(
                        "the page index misses a page or points at an older frame",
                    ))
                }
            }
            if frame.size_after == 0 {
                continue;
            }
            let commit = self.table.commits().get(self.commits);
            if commit
                .is_none_or(|c| c.frame_no != frame.frame_no || c.size_after != frame.size_after)
            {
                return Err(bad("a commit frame disagrees with the commit table"));
            }
            self.commits += 1;
        }
        Ok(())
    }

    /// Checks, after the last frame, that every commit and index entry was met.
    fn finish(&self, ns: &NamespaceName, key: &SegmentKey) -> Result<()> {
        if self.commits != self.table.commits().len() {
            return Err(invalid(
                ns,
                key,
                Part::CommitTable,
                "commit count disagrees with the frames",
            ));
        }
        if self.indexed != self.index.len() {
            return Err(invalid(
                ns,
                key,
                Part::PageIndex,
                "the page index names frames of other pages",
            ));
        }
        Ok(())
    }
}

fn invalid(ns: &NamespaceName, key: &SegmentKey, part: Part, reason: &'static str) -> Error {
    Error::corrupt(
        format!("segment {key} of {ns}"),
        FormatError::Invalid {
            part,
            offset: 0,
            reason,
        },
    )
}

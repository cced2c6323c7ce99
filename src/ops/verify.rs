//! Verifying a namespace's whole history: every segment's checksums, and the lineage
//! chain that ties each segment to the state before it (`docs/FORMAT.md` §3.9).
//!
//! The walk replays every commit, oldest first, onto the page hashes of the database
//! (eight bytes per page), so each commit's recorded checksum is proved against the
//! pages the history really holds, not merely against its neighbour's claim.

use tokio_stream::StreamExt;

use crate::error::Result;
use crate::format::{NamespaceName, PageSums, SealedSegment, SegmentKey};
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
        match storage.fetch_segment_data(namespace, &key, None).await {
            Ok(segment) => check_segment(&segment, &mut sums, &mut report),
            Err(e) => {
                report.problems.push((key, e.to_string()));
                sums = None; // the chain cannot be followed past it
            }
        }
    }
    Ok(report)
}

/// Replays one segment onto `sums` (None: the state before it is unknown).
fn check_segment(segment: &SealedSegment, sums: &mut Option<PageSums>, report: &mut VerifyReport) {
    let key = segment.key();
    let Some(base) = segment.lineage_base() else {
        report.commits_unchecked += segment.commits().len() as u64;
        *sums = None;
        return;
    };
    match sums.as_ref() {
        _ if base == 0 => *sums = Some(PageSums::new()),
        Some(s) if s.checksum() == base => {}
        Some(s) => {
            let why = format!(
                "builds on database state {base:016x} but the history before it ends at {:016x}",
                s.checksum()
            );
            report.problems.push((key, why));
            *sums = None;
            return;
        }
        None => {
            // The state before is unknown (older history without lineage, or a
            // compacted base): the chain starts being provable at the next new lineage.
            report.commits_unchecked += segment.commits().len() as u64;
            return;
        }
    }
    let Some(state) = sums.as_mut() else { return };
    match state.replay(segment, 0) {
        Ok(_) => report.commits_proved += segment.commits().len() as u64,
        Err(frame_no) => {
            let before = segment.commits().iter().filter(|c| c.frame_no < frame_no);
            report.commits_proved += before.count() as u64;
            let why = format!(
                "commit at frame {frame_no} does not produce the database its checksum records"
            );
            report.problems.push((key, why));
            *sums = None;
        }
    }
}

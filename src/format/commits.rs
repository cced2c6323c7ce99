//! A segment's commit table read on its own: the header and the table, verified by
//! their checksums, without the frames. Listing a namespace's commits (`walvault log`)
//! needs only this, and it is a few hundred bytes where the segment is megabytes.

use std::ops::Range;

use super::key::SegmentKey;
use super::layout::Header;
use super::segment::{decode_commit_table, Commit, SealedSegment};
use crate::error::FormatError;

/// The commits of one segment, with what the header says about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitTable {
    key: SegmentKey,
    sparse: bool,
    frame_count: u32,
    lineage_base: Option<u64>,
    page_size: u32,
    log_id: uuid::Uuid,
    sealed_at_ms: u64,
    commits: Vec<Commit>,
}

impl CommitTable {
    /// The table of a segment already in memory.
    pub fn of(segment: &SealedSegment) -> Self {
        Self {
            key: segment.key(),
            sparse: segment.is_sparse(),
            frame_count: segment.frame_count(),
            lineage_base: segment.lineage_base(),
            page_size: segment.page_size(),
            log_id: segment.log_id(),
            sealed_at_ms: segment.sealed_at().timestamp_millis().max(0) as u64,
            commits: segment.commits().to_vec(),
        }
    }

    /// Verifies table bytes (with their trailing checksum) fetched with
    /// [`commits_range`] against the verified `header` they belong to.
    pub(crate) fn parse(header: &Header, bytes: &[u8]) -> Result<Self, FormatError> {
        let at = header.layout()?.commits_off;
        let (commits, _) = decode_commit_table(bytes, header, at)?;
        Ok(Self {
            key: header.key(),
            sparse: header.sparse,
            frame_count: header.frame_count,
            lineage_base: header.lineage,
            page_size: header.page_size,
            log_id: header.log_id,
            sealed_at_ms: header.sealed_at,
            commits,
        })
    }

    /// The segment's key.
    pub fn key(&self) -> SegmentKey {
        self.key
    }

    /// True when the segment is sparse (compacted: frames left out, `docs/FORMAT.md`
    /// §3.2), so frame numbers between commits do not count the frames it holds.
    pub fn is_sparse(&self) -> bool {
        self.sparse
    }

    /// Number of frames the segment holds.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// As [`SealedSegment::lineage_base`]: `Some(0)` when the segment's first commit
    /// starts a new lineage (a snapshot, or a first transaction on an empty database).
    pub fn lineage_base(&self) -> Option<u64> {
        self.lineage_base
    }

    /// The segment's page size in bytes.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The log (writer) that produced the segment.
    pub fn log_id(&self) -> uuid::Uuid {
        self.log_id
    }

    /// When the segment was sealed, in ms since the Unix epoch.
    pub fn sealed_at_ms(&self) -> u64 {
        self.sealed_at_ms
    }

    /// The commits, in frame order.
    pub fn commits(&self) -> &[Commit] {
        &self.commits
    }
}

/// The byte range of the commit table and its checksum in the segment `header`
/// describes.
pub(crate) fn commits_range(header: &Header) -> Result<Range<u64>, FormatError> {
    let layout = header.layout()?;
    Ok(layout.commits_off..layout.index_off)
}

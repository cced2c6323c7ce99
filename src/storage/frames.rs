//! Reading a stored segment's frames a run at a time, whole (number, page, commit mark
//! and image), so that operations which rewrite or replay segments (compaction, a
//! fork's cut, `follow`, `verify`, history) hold a bounded slice of a segment of any
//! size rather than all of it.

use std::ops::Range;

use bytes::Bytes;

use super::Storage;
use crate::error::{Error, FormatError, Part, Result};
use crate::format::layout::{frm, le_u32, le_u64};
use crate::format::{verify_frame, CommitTable, Frame, Header, NamespaceName, SegmentKey};

/// Bytes of frames one run holds at most: a share of the memory budget, at least
/// 1 MiB.
pub(crate) fn run_bytes() -> usize {
    crate::budget::share(8)
}

/// Runs of positions `0..frame_count` (frames of `page_size` bytes) of about
/// [`run_bytes`] each, oldest first.
pub(crate) fn runs(
    frame_count: u32,
    page_size: u32,
) -> impl DoubleEndedIterator<Item = Range<u32>> {
    runs_within(0..frame_count, page_size)
}

/// Runs of the positions `positions`, as [`runs`] splits them, oldest first.
pub(crate) fn runs_within(
    positions: Range<u32>,
    page_size: u32,
) -> impl DoubleEndedIterator<Item = Range<u32>> {
    let per_run = frames_per_run(page_size);
    let Range { start, end } = positions;
    let count = end.saturating_sub(start).div_ceil(per_run);
    (0..count).map(move |i| start + i * per_run..end.min(start + (i + 1) * per_run))
}

/// Frames of `page_size` bytes that one run holds.
pub(crate) fn frames_per_run(page_size: u32) -> u32 {
    let frame_len = crate::format::FRAME_HEADER_LEN + page_size as usize;
    (run_bytes() / frame_len).clamp(1, u32::MAX as usize) as u32
}

/// Reads the frames at a range of positions of one stored segment, a run at a time,
/// oldest first: what `follow`, `verify` and history walk a segment of any size with.
#[derive(Debug)]
pub(crate) struct RunReader {
    key: SegmentKey,
    next: u32,
    end: u32,
    per_run: u32,
}

impl RunReader {
    /// A reader of the frames at `positions` of segment `key` (frames of `page_size`
    /// bytes).
    pub(crate) fn new(key: SegmentKey, positions: Range<u32>, page_size: u32) -> Self {
        Self {
            key,
            next: positions.start,
            end: positions.end,
            per_run: frames_per_run(page_size),
        }
    }

    /// The position the next run starts at.
    pub(crate) fn position(&self) -> u32 {
        self.next
    }

    /// The next run's frames, or None after the last.
    pub(crate) async fn next<S: Storage + ?Sized>(
        &mut self,
        storage: &S,
        ns: &NamespaceName,
        config: &Option<S::Config>,
    ) -> Result<Option<Vec<Frame>>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let run = self.next..self.end.min(self.next.saturating_add(self.per_run));
        let asked = run.len();
        let frames = storage
            .fetch_frame_run(ns, &self.key, run.clone(), config.clone())
            .await?;
        if frames.len() != asked {
            return Err(miscounted(
                ns,
                &self.key,
                "returned another number of frames",
            ));
        }
        self.next = run.end;
        Ok(Some(frames))
    }
}

/// The position of frame `frame_no` in the stored segment `table` describes, if it
/// holds that frame. A dense segment's positions follow from frame numbers; a sparse
/// one's only its frames tell, so it is found by a binary search that reads one frame
/// per step (frame numbers increase strictly along a segment), never the segment.
pub(crate) async fn position_of<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    table: &CommitTable,
    frame_no: u64,
    config: &Option<S::Config>,
) -> Result<Option<u32>> {
    let key = table.key();
    if !(key.start_frame_no..=key.end_frame_no).contains(&frame_no) {
        return Ok(None);
    }
    if !table.is_sparse() {
        let position = u32::try_from(frame_no - key.start_frame_no).ok();
        return Ok(position.filter(|&p| p < table.frame_count()));
    }
    let (mut lo, mut hi) = (0u32, table.frame_count());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let frames = storage
            .fetch_frame_run(ns, &key, mid..mid + 1, config.clone())
            .await?;
        let [frame] = <[Frame; 1]>::try_from(frames)
            .map_err(|_| miscounted(ns, &key, "returned another number of frames"))?;
        match frame.frame_no.cmp(&frame_no) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(Some(mid)),
        }
    }
    Ok(None)
}

/// A backend answered a read of frames with something else than was asked (or, read
/// again, differently than the first time).
pub(crate) fn miscounted(ns: &NamespaceName, key: &SegmentKey, what: &'static str) -> Error {
    Error::corrupt(
        format!("segment {key} of {ns}"),
        FormatError::Invalid {
            part: Part::Frame(0),
            offset: 0,
            reason: what,
        },
    )
}

/// The byte range holding the frames at `run` in the segment `header` describes.
pub(crate) fn run_range(header: &Header, run: &Range<u32>) -> Result<Range<u64>, FormatError> {
    let layout = header.layout()?;
    if run.start > run.end || run.end > header.frame_count {
        return Err(FormatError::Invalid {
            part: crate::error::Part::PageIndex,
            offset: 0,
            reason: "frame positions beyond the segment",
        });
    }
    Ok(layout.frame_off(run.start)..layout.frame_off(run.end))
}

/// Verifies and splits the bytes of the frames at `run` (read from
/// [`run_range`]), each by its own checksum and position.
pub(crate) fn decode_run(
    header: &Header,
    run: Range<u32>,
    bytes: Bytes,
) -> Result<Vec<Frame>, FormatError> {
    let frame_len = header.layout()?.frame_len as usize;
    let expected = run.len() * frame_len;
    if bytes.len() != expected {
        return Err(FormatError::Length {
            expected: expected as u64,
            actual: bytes.len() as u64,
        });
    }
    run.enumerate()
        .map(|(i, position)| {
            let raw = bytes.slice(i * frame_len..(i + 1) * frame_len);
            let (page_no, data) = verify_frame(header, position, raw.clone())?;
            Ok(Frame {
                frame_no: le_u64(&raw, frm::FRAME_NO),
                page_no,
                size_after: le_u32(&raw, frm::SIZE_AFTER),
                data,
            })
        })
        .collect()
}

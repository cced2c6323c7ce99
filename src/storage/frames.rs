//! Reading a stored segment's frames a run at a time, whole (number, page, commit mark
//! and image), so that operations which rewrite or replay segments (compaction, a
//! fork's cut, `follow`, `verify`, history) hold a bounded slice of a segment of any
//! size rather than all of it.

use std::ops::Range;

use bytes::Bytes;

use crate::error::FormatError;
use crate::format::layout::{frm, le_u32, le_u64};
use crate::format::{verify_frame, Frame, Header};

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
    let frame_len = crate::format::FRAME_HEADER_LEN + page_size as usize;
    let per_run = (run_bytes() / frame_len).clamp(1, u32::MAX as usize) as u32;
    let count = frame_count.div_ceil(per_run);
    (0..count).map(move |i| i * per_run..frame_count.min((i + 1) * per_run))
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

//! Reading segments for a restore: page indexes and frames in batches, with several
//! ranged reads in flight, and segment headers remembered between the two.
//!
//! * **Few requests.** Restore reads a segment's page index (a GET of the header, which
//!   says where the index is, then a GET of the index), and later the frames it needs
//!   (whose offsets the header also gives). Segments never change once written, so the
//!   header read for the index is kept for the frames: a segment that supplies pages
//!   costs three GETs, not four. Frames close together are read in one range, and
//!   ranges close together in one request.
//! * **Parallel transfers.** One HTTP stream moves far less than several (S3's guidance
//!   is byte-range GETs of a few MiB in parallel), so a long run of frames, or a whole
//!   large segment, is read as several ranges of about `read_part_size`, and every
//!   ranged read of a batch, across its segments, shares one limit of
//!   `read_concurrency` requests in flight.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use object_store::path::Path;

use super::{compact, concurrent, describe, listing, read_error, ObjectStorage};
use crate::error::{Error, FormatError, InvalidInput, Part, Result};
use crate::format::{
    verify_frame, Header, NamespaceName, PageIndex, SegmentKey, FRAME_HEADER_LEN, HEADER_LEN,
};
use crate::storage::Storage;

/// Frames this close together are fetched in one ranged read.
const READ_GAP_FRAMES: u32 = 8;

/// Ranged reads are not cut smaller than this to have more in flight: below it, a
/// request's fixed cost outweighs what another stream adds.
const MIN_READ_PART: u64 = 512 << 10;

/// Headers kept at most; restore needs about three batches' worth (96) at a time. When
/// full, the cache starts over, which costs a re-read, never a wrong answer.
const HEADERS_KEPT: usize = 1024;

/// A verified header and the byte range of the segment's page index.
type Known = (Header, Range<u64>);

/// Verified headers of stored segments, with the byte range of each one's page index.
#[derive(Debug, Default)]
pub(super) struct HeaderCache {
    map: Mutex<HashMap<(NamespaceName, SegmentKey), Known>>,
}

impl HeaderCache {
    pub(super) fn get(&self, name: &NamespaceName, key: &SegmentKey) -> Option<Known> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&(name.clone(), *key)).cloned()
    }

    pub(super) fn insert(&self, name: &NamespaceName, key: &SegmentKey, header: Known) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= HEADERS_KEPT {
            map.clear();
        }
        map.insert((name.clone(), *key), header);
    }
}

/// What to read of one segment for its frames.
struct Plan<'a> {
    key: &'a SegmentKey,
    path: Path,
    header: Header,
    positions: &'a [u32],
    /// Runs of frame positions to read, ascending; each covers some wanted positions.
    runs: Vec<Range<u32>>,
    /// The byte range of each run.
    ranges: Vec<Range<u64>>,
    /// Consecutive runs read in one request each.
    requests: Vec<Range<usize>>,
}

impl ObjectStorage {
    /// The page indexes of `keys`, at most `read_concurrency` read at once, in order.
    pub(super) async fn indexes(
        &self,
        name: &NamespaceName,
        keys: &[SegmentKey],
    ) -> Vec<Result<PageIndex>> {
        // Collected first: a lazy iterator held across the awaits trips up the compiler's
        // proof that the future is `Send`.
        let reads: Vec<_> = keys
            .iter()
            .map(|key| self.fetch_segment_index(name, key, None))
            .collect();
        concurrent::ordered(reads, self.tuning.read_concurrency).await
    }

    /// The frames asked for, in order.
    pub(super) async fn frames_batch(
        &self,
        name: &NamespaceName,
        requests: &[(SegmentKey, Vec<u32>)],
    ) -> Result<Vec<Vec<(u32, Bytes)>>> {
        self.read_frames(name, requests).await
    }

    /// The verified frames at each request's positions (strictly ascending), in order.
    /// Headers are read first (most are cached), then every ranged read of every
    /// segment goes through one limit of `read_concurrency` requests in flight.
    pub(super) async fn read_frames<P: AsRef<[u32]>>(
        &self,
        name: &NamespaceName,
        requests: &[(SegmentKey, P)],
    ) -> Result<Vec<Vec<(u32, Bytes)>>> {
        let limit = self.tuning.read_concurrency;
        let heads: Vec<_> = requests
            .iter()
            .map(|(key, positions)| self.head_for(name, key, positions.as_ref()))
            .collect();
        let heads: Vec<Option<(Header, Path)>> = concurrent::try_ordered(heads, limit).await?;
        let part = self.part_for(requests, &heads);
        let plans: Vec<Option<Plan>> = requests
            .iter()
            .zip(heads)
            .map(|((key, positions), head)| {
                head.map(|(header, path)| plan(key, path, header, positions.as_ref(), part))
            })
            .collect();
        let reads: Vec<_> = plans
            .iter()
            .flatten()
            .flat_map(|plan| plan.requests.iter().map(move |r| self.read_runs(plan, r)))
            .collect();
        let mut fetched = concurrent::try_ordered(reads, limit)
            .await?
            .into_iter()
            .flatten();
        let mut out = Vec::with_capacity(plans.len());
        for plan in &plans {
            let Some(plan) = plan else {
                out.push(Vec::new());
                continue;
            };
            let bytes: Vec<Bytes> = fetched.by_ref().take(plan.runs.len()).collect();
            out.push(unpinned(plan, verify(name, plan, bytes)?));
        }
        Ok(out)
    }

    /// The verified header and the path of segment `key`, checked against `positions`
    /// (strictly ascending, within the segment); None when there are none.
    async fn head_for(
        &self,
        name: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
    ) -> Result<Option<(Header, Path)>> {
        if !positions.windows(2).all(|w| w[0] < w[1]) {
            let why = format!("frame positions for segment {key} must be strictly ascending");
            return Err(InvalidInput::Config(why).into());
        }
        let Some(&last) = positions.last() else {
            return Ok(None);
        };
        let (header, _) = self.segment_header(name, key).await?;
        if last >= header.frame_count {
            return Err(Error::corrupt(
                describe(name, key),
                FormatError::Invalid {
                    part: Part::PageIndex,
                    offset: 0,
                    reason: "frame positions beyond the segment",
                },
            ));
        }
        Ok(Some((header, self.located(name, key).await?)))
    }

    /// The size of each ranged read of one call: `read_part_size`, or less when the call
    /// reads less than `read_concurrency` parts of it, so that even a call of a few MiB
    /// keeps every allowed request in flight (one stream moves far less than several),
    /// but never below [`MIN_READ_PART`], where a request's fixed cost dominates.
    fn part_for<P: AsRef<[u32]>>(
        &self,
        requests: &[(SegmentKey, P)],
        heads: &[Option<(Header, Path)>],
    ) -> u64 {
        let total: u64 = requests
            .iter()
            .zip(heads)
            .filter_map(|((_, positions), head)| {
                let (header, _) = head.as_ref()?;
                Some(positions.as_ref().len() as u64 * frame_len(header))
            })
            .sum();
        let spread = total.div_ceil(self.tuning.read_concurrency.max(1) as u64);
        spread.clamp(
            MIN_READ_PART.min(self.tuning.read_part_size),
            self.tuning.read_part_size,
        )
    }

    /// One request: the byte ranges of `plan.runs[runs]`. It runs as a task of its own,
    /// so its response keeps arriving while the caller is busy (a restore writing the
    /// previous batch to disk polls nothing meanwhile); dropping the read aborts it.
    async fn read_runs(&self, plan: &Plan<'_>, runs: &Range<usize>) -> Result<Vec<Bytes>> {
        let store = self.inner.store.clone();
        let path = plan.path.clone();
        let ranges = plan.ranges[runs.clone()].to_vec();
        let mut task = AbortOnDrop(tokio::spawn(async move {
            store.get_ranges(&path, &ranges).await
        }));
        match (&mut task.0).await {
            Ok(result) => result.map_err(|e| read_error(&plan.path, plan.key, e)),
            Err(e) => Err(Error::io(
                format!("reading {}", plan.path),
                std::io::Error::other(e),
            )),
        }
    }

    /// The size the catalog records for segment `key`, if the namespace is loaded and
    /// names it.
    pub(super) fn catalog_size(&self, name: &NamespaceName, key: &SegmentKey) -> Option<u64> {
        let ns = self.namespace(name).ok()?;
        let catalog = listing::read(&ns.catalog);
        catalog.get(key).map(|entry| entry.size)
    }

    /// A whole object of `size` bytes, read as ranges of about `read_part_size`, at most
    /// `read_concurrency` at once, and joined.
    pub(super) async fn get_in_parts(
        &self,
        path: &Path,
        key: &SegmentKey,
        size: u64,
    ) -> Result<Bytes> {
        let part = self.tuning.read_part_size.max(1);
        let count = size.div_ceil(part).max(1);
        let each = size.div_ceil(count);
        let reads: Vec<_> = (0..count)
            .map(|i| (i * each)..size.min((i + 1) * each))
            .map(|range| self.get_range(path, key, range))
            .collect();
        let parts = concurrent::try_ordered(reads, self.tuning.read_concurrency).await?;
        let mut whole = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        for part in parts {
            whole.extend_from_slice(&part);
        }
        // A store may answer a range past the end with what there is; the segment's
        // decoder then reports the object as cut short.
        Ok(whole.freeze())
    }
}

/// `frames`, read by `plan`, copied into a buffer of their own unless they make up most
/// (three quarters) of the bytes read. A run read for them includes frames nobody asked
/// for (up to [`READ_GAP_FRAMES`] between two wanted ones), and the frames are slices of
/// it, so they could keep several times their size alive, which restore's batch sizes
/// do not expect. A store may also hand out slices of something larger (the S3 client
/// merges nearby ranges of one request into one read), but never larger than the
/// request's span. Frames that are most of what was read are kept as they are, saving a
/// copy of every byte of a restore that reads whole runs.
fn unpinned(plan: &Plan<'_>, frames: Vec<(u32, Bytes)>) -> Vec<(u32, Bytes)> {
    let wanted: u64 = frames.iter().map(|(_, data)| data.len() as u64).sum();
    let read: u64 = plan.ranges.iter().map(|r| r.end - r.start).sum();
    if wanted.saturating_mul(4) >= read.saturating_mul(3) {
        frames
    } else {
        compact(frames)
    }
}

/// Bytes of one encoded frame of the segment `header` describes.
fn frame_len(header: &Header) -> u64 {
    FRAME_HEADER_LEN as u64 + u64::from(header.page_size)
}

/// What to read for `positions` (strictly ascending, not empty) of segment `key`, in
/// ranged reads of about `part` bytes.
fn plan<'a>(
    key: &'a SegmentKey,
    path: Path,
    header: Header,
    positions: &'a [u32],
    part: u64,
) -> Plan<'a> {
    let frame_len = frame_len(&header);
    let max_frames = u32::try_from((part / frame_len).max(1)).unwrap_or(u32::MAX);
    let runs = split(runs(positions), max_frames, positions);
    let ranges: Vec<Range<u64>> = runs
        .iter()
        .map(|run| {
            let start = HEADER_LEN as u64 + u64::from(run.start) * frame_len;
            start..start + u64::from(run.end - run.start) * frame_len
        })
        .collect();
    let requests = group(&ranges, part);
    Plan {
        key,
        path,
        header,
        positions,
        runs,
        ranges,
        requests,
    }
}

/// Checks the lengths of a plan's fetched runs and verifies each wanted frame.
fn verify(name: &NamespaceName, plan: &Plan<'_>, fetched: Vec<Bytes>) -> Result<Vec<(u32, Bytes)>> {
    let corrupt = |e| Error::corrupt(describe(name, plan.key), e);
    if fetched.len() != plan.runs.len() {
        return Err(corrupt(FormatError::Invalid {
            part: Part::Frame(plan.runs.first().map_or(0, |r| r.start)),
            offset: 0,
            reason: "the store returned fewer ranges than were asked for",
        }));
    }
    let frame_len = FRAME_HEADER_LEN as u64 + u64::from(plan.header.page_size);
    let mut out = Vec::with_capacity(plan.positions.len());
    let mut wanted = plan.positions.iter().peekable();
    for ((run, bytes), range) in plan.runs.iter().zip(fetched).zip(&plan.ranges) {
        if bytes.len() as u64 != range.end - range.start {
            return Err(corrupt(FormatError::Length {
                expected: range.end,
                actual: range.start + bytes.len() as u64,
            }));
        }
        while let Some(&&position) = wanted.peek() {
            if position >= run.end {
                break;
            }
            let at = u64::from(position - run.start) * frame_len;
            let frame = bytes.slice(at as usize..(at + frame_len) as usize);
            out.push(verify_frame(&plan.header, position, frame).map_err(corrupt)?);
            wanted.next();
        }
    }
    Ok(out)
}

/// Ascending runs of positions to fetch together: `start..end` frame positions.
fn runs(positions: &[u32]) -> Vec<Range<u32>> {
    let mut runs: Vec<Range<u32>> = Vec::new();
    for &p in positions {
        match runs.last_mut() {
            Some(run) if p - (run.end - 1) <= READ_GAP_FRAMES => run.end = p + 1,
            _ => runs.push(p..p + 1),
        }
    }
    runs
}

/// `runs` cut into pieces of at most `max` frames, of about equal length, dropping
/// pieces that hold none of `positions` (only skipped frames of a run).
fn split(runs: Vec<Range<u32>>, max: u32, positions: &[u32]) -> Vec<Range<u32>> {
    let max = max.max(1);
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let len = run.end - run.start;
        let each = len.div_ceil(len.div_ceil(max));
        let mut start = run.start;
        while start < run.end {
            let end = run.end.min(start + each);
            let first = positions.partition_point(|&p| p < start);
            if positions.get(first).is_some_and(|&p| p < end) {
                out.push(start..end);
            }
            start = end;
        }
    }
    out
}

/// Consecutive ranges grouped into requests spanning at most `part` bytes each (a range
/// longer than that is a request of its own).
fn group(ranges: &[Range<u64>], part: u64) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut first = 0;
    for (i, range) in ranges.iter().enumerate().skip(1) {
        if range.end - ranges[first].start > part {
            groups.push(first..i);
            first = i;
        }
    }
    if !ranges.is_empty() {
        groups.push(first..ranges.len());
    }
    groups
}

/// A spawned task aborted when its handle is dropped (a read whose caller went away).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_evenly_and_keep_only_pieces_with_wanted_frames() {
        let positions: Vec<u32> = (0..10).chain([15]).chain(40..45).collect();
        let runs = runs(&positions);
        assert_eq!(runs, vec![0..16, 40..45]);
        // 16 frames at most 6 a piece: three pieces of 6, 6 and 4.
        assert_eq!(
            split(runs.clone(), 6, &positions),
            vec![0..6, 6..12, 12..16, 40..45]
        );
        // Pieces of one frame: the skipped frames 10..15 are not read.
        let singles = split(runs, 1, &positions);
        assert_eq!(singles.len(), positions.len());
        assert!(singles.iter().all(|r| positions.contains(&r.start)));
    }

    #[test]
    fn ranges_group_into_requests_of_bounded_span() {
        let ranges = [0..10, 12..20, 30..40, 100..400, 401..402];
        assert_eq!(group(&ranges, 40), vec![0..3, 3..4, 4..5]);
        assert_eq!(group(&ranges, 1_000), vec![0..5]);
        assert!(group(&[], 10).is_empty());
    }
}

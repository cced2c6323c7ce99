//! Sealed segments: immutable, checksummed runs of frames with a commit table and a page
//! index, held in their encoded form so that encoding is free and decoding is a
//! verification pass over borrowed bytes.
//!
//! A segment built past its builder's memory threshold is held in a spill file instead
//! (`super::spill`): its header, commit table and index are in memory, its frames are
//! read from the file by the fallible `read_*` methods. The borrowing accessors
//! ([`SealedSegment::frames`], [`SealedSegment::read_page`], [`SealedSegment::encoded`]
//! and friends) see only segments in memory: call [`SealedSegment::load`] first when
//! [`SealedSegment::is_in_memory`] is false. Everything inside walvault that may meet a
//! spilled segment (the backends' store paths, the log's reads) uses the `read_*` side.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::index::PageIndex;
use super::key::SegmentKey;
use super::layout::{
    digest_add, frame_crc, frm, invalid, le_u32, le_u64, trl, Header, Layout, COMMIT_LEN, CRC_LEN,
    FRAME_HEADER_LEN, HEADER_LEN, TRAILER_LEN, TRAILER_MAGIC,
};
use super::lineage::CHECKSUM_FLAG;
use super::spill::SpillFile;
use crate::error::{Error, FormatError, Part, Result};

/// Where a segment's encoded bytes are.
enum Body {
    Memory(Bytes),
    File(SpillFile),
}

/// A frame read out of a segment, owning its page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame number.
    pub frame_no: u64,
    /// The page this frame is an image of (1-based).
    pub page_no: u32,
    /// Database size in pages after the commit this frame ends, or 0.
    pub size_after: u32,
    /// The page image.
    pub data: Bytes,
}

/// Bytes read from a spill file at once when a segment is copied out of it.
const COPY_CHUNK: usize = 1 << 20;

/// One frame of a segment, borrowed from the segment's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The frame number.
    pub frame_no: u64,
    /// The page this frame is an image of (1-based).
    pub page_no: u32,
    /// Database size in pages after the commit this frame ends, or 0 if it is not a commit.
    pub size_after: u32,
    /// The page image.
    pub data: &'a [u8],
}

impl FrameRef<'_> {
    /// True when this frame ends a transaction.
    pub fn is_commit(&self) -> bool {
        self.size_after != 0
    }
}

/// A commit recorded in a segment's commit table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commit {
    /// Frame number of the commit frame.
    pub frame_no: u64,
    /// Commit time in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Database size in pages after the commit.
    pub size_after: u32,
    /// The lineage checksum of the whole database after the commit
    /// ([`crate::format::lineage`]); 0 when the segment carries no lineage.
    pub checksum: u64,
}

impl Commit {
    /// The commit time as a date.
    pub fn timestamp(&self) -> DateTime<Utc> {
        ms_to_datetime(self.timestamp_ms)
    }
}

pub(crate) fn ms_to_datetime(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// An immutable, verified segment. Cloning is cheap (the bytes are shared).
#[derive(Clone)]
pub struct SealedSegment {
    inner: Arc<Inner>,
}

struct Inner {
    body: Body,
    header: Header,
    layout: Layout,
    commits: Vec<Commit>,
    index: PageIndex,
}

impl SealedSegment {
    /// Decodes `bytes` and verifies every checksum and every cross-reference: header,
    /// each frame, the commit table, the page index and the trailer. The error names the
    /// part and byte offset that failed.
    pub fn decode(bytes: impl Into<Bytes>) -> std::result::Result<Self, FormatError> {
        let bytes = bytes.into();
        let header = Header::decode(&bytes)?;
        let layout = header.layout()?;
        if bytes.len() as u64 != layout.file_len {
            return Err(FormatError::Length {
                expected: layout.file_len,
                actual: bytes.len() as u64,
            });
        }
        let mut digest = digest_add(0, le_u32(&bytes, super::layout::hdr::CRC));
        digest = verify_frames(&bytes, &header, &layout, digest)?;
        let (commits, commit_crc) = decode_commits(&bytes, &header, &layout)?;
        digest = digest_add(digest, commit_crc);
        let (index, index_crc) = decode_index(&bytes, &header, &layout)?;
        digest = digest_add(digest, index_crc);
        verify_trailer(&bytes, &layout, digest)?;
        let segment = Self::from_parts(bytes, header, layout, commits, index);
        segment.verify_references()?;
        Ok(segment)
    }

    pub(crate) fn from_parts(
        bytes: Bytes,
        header: Header,
        layout: Layout,
        commits: Vec<Commit>,
        index: PageIndex,
    ) -> Self {
        Self::with_body(Body::Memory(bytes), header, layout, commits, index)
    }

    /// A segment a spilling builder wrote to `file`, whose parts it built.
    pub(crate) fn from_file(
        file: SpillFile,
        header: Header,
        layout: Layout,
        commits: Vec<Commit>,
        index: PageIndex,
    ) -> Self {
        Self::with_body(Body::File(file), header, layout, commits, index)
    }

    fn with_body(
        body: Body,
        header: Header,
        layout: Layout,
        commits: Vec<Commit>,
        index: PageIndex,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                body,
                header,
                layout,
                commits,
                index,
            }),
        }
    }

    /// True when the encoded bytes are in memory; false for a segment held in a spill
    /// file, whose frames only the `read_*` methods see.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.inner.body, Body::Memory(_))
    }

    /// The same segment with its bytes in memory (a clone when they already are),
    /// verified again as [`decode`](Self::decode) does.
    pub fn load(&self) -> Result<SealedSegment> {
        match &self.inner.body {
            Body::Memory(_) => Ok(self.clone()),
            Body::File(file) => {
                let len = usize::try_from(self.encoded_len()).map_err(|_| {
                    Error::io("loading a segment", std::io::ErrorKind::OutOfMemory.into())
                })?;
                let mut bytes = vec![0; len];
                file.read_at(&mut bytes, 0).map_err(|e| read_err(file, e))?;
                SealedSegment::decode(bytes).map_err(|e| Error::corrupt(file.path().display(), e))
            }
        }
    }

    /// The same segment moved to a new spill file in `dir` (a clone when it is in a
    /// file already), so holding it costs no memory beyond its metadata.
    pub(crate) fn spill_to(&self, dir: &std::path::Path) -> Result<SealedSegment> {
        let Body::Memory(bytes) = &self.inner.body else {
            return Ok(self.clone());
        };
        let file = SpillFile::create(dir)
            .map_err(|e| Error::io(format!("creating a spill file in {}", dir.display()), e))?;
        file.write_at(bytes, 0)
            .map_err(|e| Error::io(format!("writing spill file {}", file.path().display()), e))?;
        let i = &self.inner;
        Ok(SealedSegment::from_file(
            file,
            i.header,
            i.layout,
            i.commits.clone(),
            i.index.detached(),
        ))
    }

    /// The spill file holding this segment, if it is not in memory.
    pub(crate) fn spill_path(&self) -> Option<&std::path::Path> {
        match &self.inner.body {
            Body::Memory(_) => None,
            Body::File(file) => Some(file.path()),
        }
    }

    /// The spill file's open handle, if the segment is held in one.
    pub(crate) fn spill_file(&self) -> Option<&std::fs::File> {
        match &self.inner.body {
            Body::Memory(_) => None,
            Body::File(file) => Some(file.file()),
        }
    }

    /// Bytes `range` of the encoding, from memory or the spill file.
    pub fn read_encoded(&self, range: std::ops::Range<u64>) -> Result<Bytes> {
        let len = self.encoded_len();
        if range.start > range.end || range.end > len {
            let detail = format!("range {range:?} is outside a segment of {len} bytes");
            return Err(Error::io(
                "reading a segment",
                std::io::Error::other(detail),
            ));
        }
        match &self.inner.body {
            Body::Memory(bytes) => Ok(bytes.slice(range.start as usize..range.end as usize)),
            Body::File(file) => {
                let mut buf = vec![0; (range.end - range.start) as usize];
                file.read_at(&mut buf, range.start)
                    .map_err(|e| read_err(file, e))?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// Writes the whole encoding to `out`, a bounded chunk at a time for a spilled
    /// segment.
    pub fn write_encoded(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match &self.inner.body {
            Body::Memory(bytes) => out.write_all(bytes),
            Body::File(file) => {
                let len = self.encoded_len();
                let mut buf = vec![0; COPY_CHUNK.min(len as usize)];
                let mut at = 0;
                while at < len {
                    let n = buf.len().min((len - at) as usize);
                    file.read_at(&mut buf[..n], at)?;
                    out.write_all(&buf[..n])?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }

    /// The frames at `positions` (each below [`frame_count`](Self::frame_count)), in the
    /// order asked. Frames read from a spill file are verified by their checksums;
    /// adjacent positions are read together.
    pub fn read_frames(&self, positions: &[u32]) -> Result<Vec<Frame>> {
        let count = self.frame_count();
        if let Some(&bad) = positions.iter().find(|&&p| p >= count) {
            let detail = format!("frame position {bad} is past the segment's {count} frames");
            return Err(Error::io(
                "reading a segment",
                std::io::Error::other(detail),
            ));
        }
        match &self.inner.body {
            Body::Memory(bytes) => Ok(positions
                .iter()
                .map(|&p| {
                    let f = self.frame_at(p);
                    Frame {
                        frame_no: f.frame_no,
                        page_no: f.page_no,
                        size_after: f.size_after,
                        data: bytes.slice_ref(f.data),
                    }
                })
                .collect()),
            Body::File(file) => self.read_frames_from(file, positions),
        }
    }

    fn read_frames_from(&self, file: &SpillFile, positions: &[u32]) -> Result<Vec<Frame>> {
        let frame_len = self.inner.layout.frame_len as usize;
        let mut out = Vec::with_capacity(positions.len());
        let mut i = 0;
        while i < positions.len() {
            // A run of adjacent positions, at most COPY_CHUNK bytes.
            let mut j = i + 1;
            while j < positions.len()
                && positions[j] == positions[j - 1] + 1
                && (j - i + 1) * frame_len <= COPY_CHUNK
            {
                j += 1;
            }
            let mut run = vec![0; (j - i) * frame_len];
            let at = self.inner.layout.frame_off(positions[i]);
            file.read_at(&mut run, at).map_err(|e| read_err(file, e))?;
            let run = Bytes::from(run);
            for (k, &position) in positions[i..j].iter().enumerate() {
                let b = run.slice(k * frame_len..(k + 1) * frame_len);
                let (frame_no, size_after) =
                    (le_u64(&b, frm::FRAME_NO), le_u32(&b, frm::SIZE_AFTER));
                let (page_no, data) = verify_frame(&self.inner.header, position, b)
                    .map_err(|e| Error::corrupt(file.path().display(), e))?;
                out.push(Frame {
                    frame_no,
                    page_no,
                    size_after,
                    data,
                });
            }
            i = j;
        }
        Ok(out)
    }

    /// The newest frame of `page_no` at or before frame `as_of`, for a segment in memory
    /// or in a spill file.
    pub fn find_page(&self, page_no: u32, as_of: u64) -> Result<Option<Frame>> {
        let Some(newest) = self.inner.index.get(page_no) else {
            return Ok(None);
        };
        let mut position = newest;
        loop {
            // One position asked, one frame read.
            let Some(frame) = self.read_frames(&[position])?.pop() else {
                return Ok(None);
            };
            if frame.frame_no <= as_of && frame.page_no == page_no {
                return Ok(Some(frame));
            }
            if position == 0 {
                return Ok(None);
            }
            position -= 1;
        }
    }

    /// Checks what checksums cannot: commits agree with their frames and with the header,
    /// and the index points every page at its newest frame.
    fn verify_references(&self) -> Result<(), FormatError> {
        let h = &self.inner.header;
        let table = |reason| {
            invalid(
                Part::CommitTable,
                self.inner.layout.commits_off as usize,
                reason,
            )
        };
        let mut frame_commits = 0u32;
        for position in 0..h.frame_count {
            let frame = self.frame_at(position);
            if frame.is_commit() {
                frame_commits += 1;
            }
            match self.inner.index.get(frame.page_no) {
                Some(newest) if newest >= position => {}
                _ => {
                    return Err(invalid(
                        Part::PageIndex,
                        self.inner.layout.index_off as usize,
                        "index misses a page or points at an older frame",
                    ))
                }
            }
        }
        if frame_commits != h.commit_count {
            return Err(table("commit count disagrees with the frames"));
        }
        for commit in &self.inner.commits {
            let frame = self.position_of(commit.frame_no).map(|p| self.frame_at(p));
            if frame.is_none_or(|f| f.size_after != commit.size_after) {
                return Err(table("commit disagrees with its frame"));
            }
        }
        for (page_no, position) in self.inner.index.iter() {
            if self.frame_at(position).page_no != page_no {
                return Err(invalid(
                    Part::PageIndex,
                    self.inner.layout.index_off as usize,
                    "index points at a frame of another page",
                ));
            }
        }
        if self.inner.index.len() != h.page_count as usize {
            return Err(invalid(
                Part::PageIndex,
                self.inner.layout.index_off as usize,
                "page count disagrees with the header",
            ));
        }
        Ok(())
    }

    /// The segment's key: frame range and first commit time.
    pub fn key(&self) -> SegmentKey {
        self.inner.header.key()
    }

    /// First frame number.
    pub fn start_frame_no(&self) -> u64 {
        self.inner.header.start_frame_no
    }

    /// Last frame number (a commit).
    pub fn end_frame_no(&self) -> u64 {
        self.inner.header.end_frame_no
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> u32 {
        self.inner.header.page_size
    }

    /// Database size in pages after the segment's last commit.
    pub fn db_size(&self) -> u32 {
        self.inner.header.db_size
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.inner.header.frame_count
    }

    /// Number of distinct pages.
    pub fn page_count(&self) -> u32 {
        self.inner.header.page_count
    }

    /// When the segment was sealed.
    pub fn sealed_at(&self) -> DateTime<Utc> {
        ms_to_datetime(self.inner.header.sealed_at)
    }

    /// Time of the first commit.
    pub fn first_commit_timestamp(&self) -> DateTime<Utc> {
        ms_to_datetime(self.inner.header.first_commit_ts)
    }

    /// Time of the last commit.
    pub fn last_commit_timestamp(&self) -> DateTime<Utc> {
        ms_to_datetime(self.inner.header.last_commit_ts)
    }

    /// Id of the log (writer) that produced the segment.
    pub fn log_id(&self) -> Uuid {
        self.inner.header.log_id
    }

    /// The lineage this segment carries: `Some(base)`, the checksum of the database its
    /// first transaction applies to, 0 when it starts a new lineage (a snapshot); None
    /// when it carries none (format version 1, or built without lineage).
    pub fn lineage_base(&self) -> Option<u64> {
        self.inner.header.lineage
    }

    /// The lineage checksum of the database after the segment's last commit, if it
    /// carries lineage.
    pub fn end_checksum(&self) -> Option<u64> {
        self.inner.header.lineage?;
        self.inner.commits.last().map(|c| c.checksum)
    }

    /// The segment's format version (1 or 2).
    pub fn format_version(&self) -> u16 {
        self.inner.header.version
    }

    /// Every commit in the segment, in frame order.
    pub fn commits(&self) -> &[Commit] {
        &self.inner.commits
    }

    /// The page index.
    pub fn index(&self) -> &PageIndex {
        &self.inner.index
    }

    /// The newest frame of `page_no` in this segment.
    pub fn read_page(&self, page_no: u32) -> Option<FrameRef<'_>> {
        self.inner.index.get(page_no).map(|p| self.frame_at(p))
    }

    /// The newest frame of `page_no` at or before frame `as_of`.
    pub fn read_page_as_of(&self, page_no: u32, as_of: u64) -> Option<FrameRef<'_>> {
        if as_of >= self.end_frame_no() {
            return self.read_page(page_no);
        }
        self.frames()
            .rev()
            .find(|f| f.frame_no <= as_of && f.page_no == page_no)
    }

    /// True when compaction left frames out, so frame numbers are not contiguous
    /// (`docs/FORMAT.md` §3.2, flag `sparse`).
    pub fn is_sparse(&self) -> bool {
        self.inner.header.sparse
    }

    /// The position (0-based) of frame `frame_no`, if the segment holds it.
    pub fn position_of(&self, frame_no: u64) -> Option<u32> {
        let h = &self.inner.header;
        if !(h.start_frame_no..=h.end_frame_no).contains(&frame_no) {
            return None;
        }
        if !h.sparse {
            return Some((frame_no - h.start_frame_no) as u32);
        }
        // Sparse frame numbers increase strictly, so a binary search finds it.
        let (mut lo, mut hi) = (0u32, h.frame_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.frame_at(mid).frame_no.cmp(&frame_no) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The frame at `position` (0-based), if there is one.
    pub fn frame(&self, position: u32) -> Option<FrameRef<'_>> {
        (position < self.frame_count()).then(|| self.frame_at(position))
    }

    /// All frames in frame order.
    pub fn frames(&self) -> impl DoubleEndedIterator<Item = FrameRef<'_>> + ExactSizeIterator {
        (0..self.frame_count()).map(|p| self.frame_at(p))
    }

    /// The encoded form (shared, not copied). Empty for a segment held in a spill file
    /// (see the module docs): use [`write_encoded`](Self::write_encoded) or
    /// [`read_encoded`](Self::read_encoded) there.
    pub fn encoded(&self) -> &Bytes {
        static EMPTY: Bytes = Bytes::new();
        match &self.inner.body {
            Body::Memory(bytes) => bytes,
            Body::File(_) => {
                debug_assert!(false, "encoded() of a segment held in a spill file");
                &EMPTY
            }
        }
    }

    /// Length of the encoded form in bytes.
    pub fn encoded_len(&self) -> u64 {
        self.inner.layout.file_len
    }

    /// Callers pass positions below `frame_count`, which `decode` proved lie in the bytes.
    /// For a spilled segment (which the borrowing accessors do not serve) the frame reads
    /// as empty.
    fn frame_at(&self, position: u32) -> FrameRef<'_> {
        let Body::Memory(bytes) = &self.inner.body else {
            debug_assert!(false, "borrowing a frame of a segment held in a spill file");
            return FrameRef {
                frame_no: 0,
                page_no: 0,
                size_after: 0,
                data: &[],
            };
        };
        let off = self.inner.layout.frame_off(position) as usize;
        let b = &bytes[off..off + self.inner.layout.frame_len as usize];
        FrameRef {
            frame_no: le_u64(b, frm::FRAME_NO),
            page_no: le_u32(b, frm::PAGE_NO),
            size_after: le_u32(b, frm::SIZE_AFTER),
            data: &b[FRAME_HEADER_LEN..],
        }
    }
}

fn read_err(file: &SpillFile, e: std::io::Error) -> Error {
    Error::io(format!("reading spill file {}", file.path().display()), e)
}

impl std::fmt::Debug for SealedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSegment")
            .field("key", &self.key())
            .field("page_size", &self.page_size())
            .field("frames", &self.frame_count())
            .field("commits", &self.commits().len())
            .field("db_size", &self.db_size())
            .finish()
    }
}

fn verify_frames(b: &[u8], h: &Header, l: &Layout, mut digest: u32) -> Result<u32, FormatError> {
    let frame_len = l.frame_len as usize;
    let mut previous = 0;
    for position in 0..h.frame_count {
        let off = l.frame_off(position) as usize;
        let frame = &b[off..off + frame_len];
        let part = Part::Frame(position);
        let crc = le_u32(frame, frm::CRC);
        if frame_crc(frame, &frame[FRAME_HEADER_LEN..]) != crc {
            return Err(FormatError::Checksum {
                part,
                offset: off as u64,
            });
        }
        let frame_no = le_u64(frame, frm::FRAME_NO);
        if !frame_no_fits(h, position, frame_no, previous) {
            return Err(invalid(
                part,
                off + frm::FRAME_NO,
                "frame number out of sequence",
            ));
        }
        previous = frame_no;
        if le_u32(frame, frm::PAGE_NO) == 0 {
            return Err(invalid(part, off + frm::PAGE_NO, "page number 0"));
        }
        if le_u32(frame, frm::RESERVED) != 0 {
            return Err(invalid(
                part,
                off + frm::RESERVED,
                "reserved bytes not zero",
            ));
        }
        digest = digest_add(digest, crc);
    }
    let last = l.frame_off(h.frame_count - 1) as usize;
    if le_u32(b, last + frm::SIZE_AFTER) != h.db_size {
        return Err(invalid(
            Part::Frame(h.frame_count - 1),
            last + frm::SIZE_AFTER,
            "last frame is not the final commit",
        ));
    }
    Ok(digest)
}

fn decode_commits(b: &[u8], h: &Header, l: &Layout) -> Result<(Vec<Commit>, u32), FormatError> {
    let start = l.commits_off as usize;
    let end = start + h.commit_count as usize * h.commit_len() + CRC_LEN;
    decode_commit_table(&b[start..end], h, l.commits_off)
}

/// Decodes and checks a commit table and its trailing CRC (`table`, exactly
/// `commit_count` entries and the CRC; `at` is its offset in the file, for errors), and
/// returns the commits and the CRC. Shared by a whole-segment decode and a read of the
/// table alone.
pub(crate) fn decode_commit_table(
    table: &[u8],
    h: &Header,
    at: u64,
) -> Result<(Vec<Commit>, u32), FormatError> {
    let entry_len = h.commit_len();
    let len = h.commit_count as usize * entry_len;
    if table.len() != len + CRC_LEN {
        return Err(FormatError::Length {
            expected: (len + CRC_LEN) as u64,
            actual: table.len() as u64,
        });
    }
    let start = at as usize;
    let crc = le_u32(table, len);
    if crc32c::crc32c(&table[..len]) != crc {
        return Err(FormatError::Checksum {
            part: Part::CommitTable,
            offset: at,
        });
    }
    let mut commits = Vec::with_capacity(h.commit_count as usize);
    for entry in table[..len].chunks_exact(entry_len) {
        let commit = Commit {
            frame_no: le_u64(entry, 0),
            timestamp_ms: le_u64(entry, 8),
            size_after: le_u32(entry, 16),
            checksum: if entry_len == COMMIT_LEN {
                le_u64(entry, 24)
            } else {
                0
            },
        };
        let at = start + commits.len() * entry_len;
        check_commit(&commits, &commit, entry, h)
            .map_err(|reason| invalid(Part::CommitTable, at, reason))?;
        commits.push(commit);
    }
    let (Some(first), Some(last)) = (commits.first(), commits.last()) else {
        return Err(invalid(Part::CommitTable, start, "no commits"));
    };
    if first.timestamp_ms != h.first_commit_ts || last.timestamp_ms != h.last_commit_ts {
        return Err(invalid(
            Part::CommitTable,
            start,
            "commit times disagree with the header",
        ));
    }
    if last.frame_no != h.end_frame_no {
        return Err(invalid(
            Part::CommitTable,
            start,
            "last commit is not the last frame",
        ));
    }
    Ok((commits, crc))
}

fn check_commit(prev: &[Commit], c: &Commit, raw: &[u8], h: &Header) -> Result<(), &'static str> {
    if le_u32(raw, 20) != 0 {
        return Err("reserved bytes not zero");
    }
    if !(h.start_frame_no..=h.end_frame_no).contains(&c.frame_no) {
        return Err("commit frame outside the segment");
    }
    if c.size_after == 0 {
        return Err("commit with database size 0");
    }
    match (h.lineage.is_some(), c.checksum) {
        (true, sum) if sum & CHECKSUM_FLAG == 0 => return Err("commit without a lineage checksum"),
        (false, sum) if sum != 0 => return Err("lineage checksum in a segment without lineage"),
        _ => {}
    }
    if let Some(p) = prev.last() {
        if c.frame_no <= p.frame_no {
            return Err("commits out of order");
        }
        if c.timestamp_ms < p.timestamp_ms {
            return Err("commit time goes backwards");
        }
    }
    Ok(())
}

fn decode_index(b: &Bytes, h: &Header, l: &Layout) -> Result<(PageIndex, u32), FormatError> {
    let start = l.index_off as usize;
    let end = start + h.index_len as usize;
    let crc = le_u32(b, end);
    if crc32c::crc32c(&b[start..end]) != crc {
        return Err(FormatError::Checksum {
            part: Part::PageIndex,
            offset: start as u64,
        });
    }
    let index = PageIndex::parse(b.slice(start..end), h.frame_count, l.index_off)?;
    Ok((index, crc))
}

fn verify_trailer(b: &[u8], l: &Layout, digest: u32) -> Result<(), FormatError> {
    let off = l.trailer_off as usize;
    let t = &b[off..off + TRAILER_LEN];
    if t[trl::MAGIC..trl::MAGIC + 8] != TRAILER_MAGIC {
        return Err(FormatError::BadMagic(Part::Trailer));
    }
    if crc32c::crc32c(&t[..trl::CRC]) != le_u32(t, trl::CRC) {
        return Err(FormatError::Checksum {
            part: Part::Trailer,
            offset: off as u64,
        });
    }
    if le_u64(t, trl::FILE_LEN) != l.file_len {
        return Err(invalid(
            Part::Trailer,
            off + trl::FILE_LEN,
            "file length disagrees with the header",
        ));
    }
    if le_u32(t, trl::DIGEST) != digest {
        return Err(invalid(
            Part::Trailer,
            off + trl::DIGEST,
            "file digest does not match the parts",
        ));
    }
    if t[trl::RESERVED..trl::CRC].iter().any(|&x| x != 0) {
        return Err(invalid(
            Part::Trailer,
            off + trl::RESERVED,
            "reserved bytes not zero",
        ));
    }
    Ok(())
}

/// Decodes the header of an encoded segment (its first [`HEADER_LEN`] bytes) and returns
/// the byte range holding the page index and its checksum, so that callers can fetch and
/// verify the index without reading the frames.
pub(crate) fn index_range(
    header_bytes: &[u8],
) -> Result<(Header, std::ops::Range<u64>), FormatError> {
    let header = Header::decode(header_bytes)?;
    let layout = header.layout()?;
    Ok((
        header,
        layout.index_off..layout.index_off + header.index_len + CRC_LEN as u64,
    ))
}

/// Verifies index bytes (with their trailing checksum) fetched with [`index_range`].
pub(crate) fn parse_index_with_crc(
    header: &Header,
    bytes: Bytes,
) -> Result<PageIndex, FormatError> {
    let layout = header.layout()?;
    let expected = header.index_len + CRC_LEN as u64;
    if bytes.len() as u64 != expected {
        return Err(FormatError::Length {
            expected,
            actual: bytes.len() as u64,
        });
    }
    let body = bytes.slice(..header.index_len as usize);
    if crc32c::crc32c(&body) != le_u32(&bytes, header.index_len as usize) {
        return Err(FormatError::Checksum {
            part: Part::PageIndex,
            offset: layout.index_off,
        });
    }
    PageIndex::parse(body, header.frame_count, layout.index_off)
}

/// Whether `frame_no` may sit at `position`, after a frame numbered `previous` (0 for
/// the first): exactly `start + position` in a dense segment; in a sparse one, strictly
/// after the previous frame and inside the key's range.
fn frame_no_fits(h: &Header, position: u32, frame_no: u64, previous: u64) -> bool {
    if h.sparse {
        frame_no > previous && (h.start_frame_no..=h.end_frame_no).contains(&frame_no)
    } else {
        frame_no == h.start_frame_no + u64::from(position)
    }
}

/// Verifies one frame read on its own from the segment `header` describes (the header
/// itself verified by [`index_range`]): its length, its checksum, that it sits at
/// `position`, and that its page number is valid. Returns the page number and the page.
pub(crate) fn verify_frame(
    header: &Header,
    position: u32,
    frame: Bytes,
) -> Result<(u32, Bytes), FormatError> {
    let layout = header.layout()?;
    let off = layout.frame_off(position);
    if position >= header.frame_count || frame.len() as u64 != layout.frame_len {
        return Err(FormatError::Length {
            expected: layout.frame_len,
            actual: frame.len() as u64,
        });
    }
    let part = Part::Frame(position);
    if frame_crc(&frame[..FRAME_HEADER_LEN], &frame[FRAME_HEADER_LEN..]) != le_u32(&frame, frm::CRC)
    {
        return Err(FormatError::Checksum { part, offset: off });
    }
    let frame_no = le_u64(&frame, frm::FRAME_NO);
    let in_range = (header.start_frame_no..=header.end_frame_no).contains(&frame_no);
    if !in_range || (!header.sparse && frame_no != header.start_frame_no + u64::from(position)) {
        return Err(invalid(part, frm::FRAME_NO, "frame number out of sequence"));
    }
    let page_no = le_u32(&frame, frm::PAGE_NO);
    if page_no == 0 {
        return Err(invalid(part, frm::PAGE_NO, "page number 0"));
    }
    Ok((page_no, frame.slice(FRAME_HEADER_LEN..)))
}

const _: () = assert!(HEADER_LEN.is_multiple_of(8) && FRAME_HEADER_LEN.is_multiple_of(8));

//! The segment builder: appends frames straight into the encoded layout, so sealing only
//! adds the commit table, the page index and the trailer, then fills in the header.
//!
//! Frames live in memory unless the builder was given a spill directory and passes its
//! threshold: then they move to a [`SpillFile`] and later frames are written through a
//! buffer of at most [`SPILL_WRITE_CHUNK`] bytes, so a transaction of any size (a snapshot of a
//! large database) is built in bounded memory. What stays in memory per frame is a
//! few bytes of bookkeeping: the page's newest position, folded checksums.

use std::borrow::Cow;
use std::path::PathBuf;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hashbrown::HashMap;
use uuid::Uuid;

use super::index::PageIndex;
use super::layout::{
    digest_add, encode_trailer, frame_crc, frame_header, frm, le_u32, put_u32, put_u64,
    valid_page_size, Header, COMMIT_LEN, FORMAT_VERSION, FRAME_HEADER_LEN, HEADER_LEN, TRAILER_LEN,
};
use super::lineage::CHECKSUM_FLAG;
use super::segment::{Commit, SealedSegment};
use super::spill::{SpillFile, SPILL_WRITE_CHUNK};
use crate::error::{Error, InvalidInput, Result};

/// Builds a [`SealedSegment`] from frames.
///
/// Frames get consecutive frame numbers from `start_frame_no`. A transaction is any number
/// of [`append_frame`](Self::append_frame) calls followed by one
/// [`append_commit`](Self::append_commit); [`seal`](Self::seal) requires the last frame
/// to be a commit. Commit timestamps must not decrease.
#[derive(Debug)]
pub struct SegmentBuilder {
    /// In memory: the header's room and every frame. Spilled: frames not yet written to
    /// the file.
    buf: Vec<u8>,
    /// Where frames go past the threshold, and the file once they went.
    spill: Spill,
    /// CRC-32C over the frames' checksums in order (each as LE bytes): the frames' share
    /// of the file digest, kept as frames arrive so sealing never re-reads them.
    frames_crc: u32,
    last_crc: Option<u32>,
    page_size: u32,
    start_frame_no: u64,
    frame_count: u32,
    /// The number the next frame gets: `start_frame_no + frame_count` unless
    /// [`skip_to`](Self::skip_to) left numbers out.
    next_frame_no: u64,
    newest: Newest,
    commits: Vec<Commit>,
    log_id: Uuid,
    /// `Some(base)` once [`start_lineage`](Self::start_lineage) was called for this
    /// segment: every commit then carries a checksum.
    lineage: Option<u64>,
}

impl SegmentBuilder {
    /// A builder whose first frame will be `start_frame_no` (at least 1), for pages of
    /// `page_size` bytes (a power of two from 512 to 65536).
    pub fn new(start_frame_no: u64, page_size: u32) -> Result<Self> {
        if !valid_page_size(page_size) {
            return Err(InvalidInput::PageSize(page_size).into());
        }
        if start_frame_no == 0 {
            return Err(InvalidInput::FrameNo {
                frame_no: 0,
                reason: "frame numbers start at 1",
            }
            .into());
        }
        Ok(Self {
            buf: vec![0; HEADER_LEN],
            spill: Spill::default(),
            frames_crc: 0,
            last_crc: None,
            page_size,
            start_frame_no,
            frame_count: 0,
            next_frame_no: start_frame_no,
            newest: Newest::default(),
            commits: Vec::new(),
            log_id: Uuid::nil(),
            lineage: None,
        })
    }

    /// Lets the builder move its frames to a file in `dir` once they pass `threshold`
    /// bytes, so memory stays bounded whatever the segment's size (see the module docs).
    /// Kept across seals.
    pub fn with_spill(mut self, dir: impl Into<PathBuf>, threshold: usize) -> Self {
        self.spill.dir = Some(dir.into());
        self.spill.threshold = threshold;
        self
    }

    /// True when the frames appended since the last seal are in a spill file.
    pub fn is_spilled(&self) -> bool {
        self.spill.file.is_some()
    }

    /// Records which log (writer) produced the segment. Defaults to the nil UUID.
    pub fn with_log_id(mut self, log_id: Uuid) -> Self {
        self.log_id = log_id;
        self
    }

    /// Reserves room for `frames` more frames.
    pub fn reserve(&mut self, frames: usize) {
        let frame_len = FRAME_HEADER_LEN + self.page_size as usize;
        self.buf.reserve(frames.saturating_mul(frame_len));
    }

    /// Appends a frame that does not end a transaction. Returns its frame number.
    pub fn append_frame(&mut self, page_no: u32, page: &[u8]) -> Result<u64> {
        let frame_no = self.check_frame(page_no, page)?;
        self.push(frame_no, page_no, 0, page)?;
        Ok(frame_no)
    }

    /// Makes this segment carry lineage (`docs/FORMAT.md` §3.9): its first transaction
    /// applies to the database whose checksum is `base` (0: none, the first transaction
    /// writes the whole database and starts a new lineage). Every commit must then be
    /// appended with [`append_commit_with_checksum`](Self::append_commit_with_checksum).
    /// Only before the segment's first frame.
    pub fn start_lineage(&mut self, base: u64) -> Result<()> {
        if !self.is_empty() {
            return Err(InvalidInput::Seal("lineage must be set before the first frame").into());
        }
        if base != 0 && base & CHECKSUM_FLAG == 0 {
            return Err(InvalidInput::Seal("a base checksum must have its top bit set").into());
        }
        self.lineage = Some(base);
        Ok(())
    }

    /// The lineage base set by [`start_lineage`](Self::start_lineage), if any.
    pub fn lineage_base(&self) -> Option<u64> {
        self.lineage
    }

    /// Appends the frame that commits a transaction: the database has `size_after` pages
    /// after it, and it happened at `timestamp`. Returns its frame number. For a segment
    /// without lineage only.
    pub fn append_commit(
        &mut self,
        page_no: u32,
        page: &[u8],
        size_after: u32,
        timestamp: DateTime<Utc>,
    ) -> Result<u64> {
        if self.lineage.is_some() {
            return Err(InvalidInput::Seal("a segment with lineage needs commit checksums").into());
        }
        self.commit(page_no, page, size_after, timestamp, 0)
    }

    /// Appends a commit frame as [`append_commit`](Self::append_commit) does, with the
    /// lineage checksum of the whole database after it. For a segment with lineage only.
    pub fn append_commit_with_checksum(
        &mut self,
        page_no: u32,
        page: &[u8],
        size_after: u32,
        timestamp: DateTime<Utc>,
        checksum: u64,
    ) -> Result<u64> {
        if self.lineage.is_none() {
            return Err(InvalidInput::Seal("call start_lineage before a commit checksum").into());
        }
        if checksum & CHECKSUM_FLAG == 0 {
            return Err(InvalidInput::Seal("a commit checksum must have its top bit set").into());
        }
        self.commit(page_no, page, size_after, timestamp, checksum)
    }

    fn commit(
        &mut self,
        page_no: u32,
        page: &[u8],
        size_after: u32,
        timestamp: DateTime<Utc>,
        checksum: u64,
    ) -> Result<u64> {
        let frame_no = self.check_frame(page_no, page)?;
        let timestamp_ms = self.check_commit(frame_no, size_after, timestamp)?;
        self.push(frame_no, page_no, size_after, page)?;
        self.commits.push(Commit {
            frame_no,
            timestamp_ms,
            size_after,
            checksum,
        });
        Ok(frame_no)
    }

    /// Number of frames appended since the last seal.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// True when no frame was appended since the last seal.
    pub fn is_empty(&self) -> bool {
        self.frame_count == 0
    }

    /// The frame number the next appended frame will get.
    pub fn next_frame_no(&self) -> u64 {
        self.next_frame_no
    }

    /// Makes `frame_no` the number of the next frame, leaving the numbers before it
    /// out. The sealed segment is then sparse (`docs/FORMAT.md` §3.2): compaction uses
    /// this to keep page versions under their original frame numbers while dropping the
    /// ones no retained commit needs. Numbers only move forward.
    pub fn skip_to(&mut self, frame_no: u64) -> Result<()> {
        if frame_no < self.next_frame_no {
            return Err(InvalidInput::FrameNo {
                frame_no,
                reason: "frame numbers in a segment only increase",
            }
            .into());
        }
        self.next_frame_no = frame_no;
        Ok(())
    }

    fn is_sparse(&self) -> bool {
        self.next_frame_no != self.start_frame_no + u64::from(self.frame_count)
    }

    /// The newest frame of `page_no` at or before frame `as_of`, among the frames
    /// appended since the last seal: its frame number and page. Reads the spill file if
    /// the frame is there.
    pub fn find_page(&self, page_no: u32, as_of: u64) -> Result<Option<(u64, Cow<'_, [u8]>)>> {
        let Some(newest) = self.newest.get(page_no) else {
            return Ok(None);
        };
        let mut position = newest;
        loop {
            let frame = self.frame_bytes(position)?;
            let frame_no = crate::format::layout::le_u64(&frame, frm::FRAME_NO);
            if frame_no <= as_of && le_u32(&frame, frm::PAGE_NO) == page_no {
                let page = match frame {
                    Cow::Borrowed(b) => Cow::Borrowed(&b[FRAME_HEADER_LEN..]),
                    Cow::Owned(mut v) => {
                        v.drain(..FRAME_HEADER_LEN);
                        Cow::Owned(v)
                    }
                };
                return Ok(Some((frame_no, page)));
            }
            if position == 0 {
                return Ok(None);
            }
            position -= 1;
        }
    }

    /// The encoded frame at `position`, from memory or the spill file.
    fn frame_bytes(&self, position: u32) -> Result<Cow<'_, [u8]>> {
        let frame_len = FRAME_HEADER_LEN + self.page_size as usize;
        let off = HEADER_LEN as u64 + u64::from(position) * frame_len as u64;
        match &self.spill.file {
            Some(file) if off < self.spill.written => {
                let mut frame = vec![0; frame_len];
                file.read_at(&mut frame, off)
                    .map_err(|e| spill_err(file, e))?;
                Ok(Cow::Owned(frame))
            }
            // In memory: the buffer starts at the file's offset 0, or at what the spill
            // file holds.
            _ => {
                let off = (off - self.spill.written) as usize;
                Ok(Cow::Borrowed(&self.buf[off..off + frame_len]))
            }
        }
    }

    /// The checksum of the last frame appended, so a caller that also logs the frame
    /// elsewhere can reuse it instead of reading the page again.
    pub(crate) fn last_frame_crc(&self) -> Option<u32> {
        self.last_crc
    }

    /// Bytes of frames appended since the last seal (in memory or spilled).
    pub fn buffered_bytes(&self) -> usize {
        self.frame_count as usize * (FRAME_HEADER_LEN + self.page_size as usize)
    }

    /// True when the last frame appended is a commit (so the builder can be sealed).
    pub fn ends_with_commit(&self) -> bool {
        self.commits
            .last()
            .is_some_and(|c| c.frame_no + 1 == self.next_frame_no())
    }

    /// Seals the frames appended so far into a segment, recording `sealed_at`. On success
    /// the builder is reset to start the next segment at the following frame number; on
    /// error it is left unchanged.
    pub fn seal(&mut self, sealed_at: DateTime<Utc>) -> Result<SealedSegment> {
        if self.is_empty() {
            return Err(InvalidInput::Seal("no frames").into());
        }
        if !self.ends_with_commit() {
            return Err(InvalidInput::Seal("the last frame is not a commit").into());
        }
        let sealed_at = timestamp_ms(sealed_at)?;
        let next = Self {
            buf: vec![0; HEADER_LEN],
            spill: Spill {
                dir: self.spill.dir.clone(),
                threshold: self.spill.threshold,
                ..Spill::default()
            },
            frames_crc: 0,
            last_crc: None,
            page_size: self.page_size,
            start_frame_no: self.next_frame_no(),
            frame_count: 0,
            next_frame_no: self.next_frame_no(),
            newest: Newest::default(),
            commits: Vec::new(),
            log_id: self.log_id,
            lineage: None,
        };
        // A spilled builder's tail goes to its file first: on error nothing changed.
        if self.spill.file.is_some() {
            self.write_out()?;
        }
        std::mem::replace(self, next).finish(sealed_at)
    }

    fn finish(mut self, sealed_at: u64) -> Result<SealedSegment> {
        let sparse = self.is_sparse();
        let frames_end = HEADER_LEN as u64 + self.buffered_bytes() as u64;
        // Everything after the frames: commit table, index, their checksums.
        let mut tail = Vec::new();
        for c in &self.commits {
            let mut entry = [0u8; COMMIT_LEN];
            put_u64(&mut entry, 0, c.frame_no);
            put_u64(&mut entry, 8, c.timestamp_ms);
            put_u32(&mut entry, 16, c.size_after);
            put_u64(&mut entry, 24, c.checksum);
            tail.extend_from_slice(&entry);
        }
        let commit_crc = crc32c::crc32c(&tail);
        tail.extend_from_slice(&commit_crc.to_le_bytes());

        let page_count = self.newest.len();
        let index_bytes = PageIndex::encode(self.newest.into_sorted());
        let index_crc = crc32c::crc32c(&index_bytes);
        tail.extend_from_slice(&index_bytes);
        tail.extend_from_slice(&index_crc.to_le_bytes());

        let (first, last) = (self.commits[0], self.commits[self.commits.len() - 1]);
        let header = Header {
            page_size: self.page_size,
            start_frame_no: self.start_frame_no,
            end_frame_no: last.frame_no,
            frame_count: self.frame_count,
            commit_count: self.commits.len() as u32,
            page_count: page_count as u32,
            db_size: last.size_after,
            first_commit_ts: first.timestamp_ms,
            last_commit_ts: last.timestamp_ms,
            sealed_at,
            log_id: self.log_id,
            index_len: index_bytes.len() as u64,
            sparse,
            version: FORMAT_VERSION,
            lineage: self.lineage,
        };
        let encoded_header = header.encode();
        let header_crc = le_u32(&encoded_header, super::layout::hdr::CRC);
        let frame_crcs_len = 4 * self.frame_count as usize;
        let mut digest = crc32c::crc32c_combine(
            crc32c::crc32c(&header_crc.to_le_bytes()),
            self.frames_crc,
            frame_crcs_len,
        );
        digest = digest_add(digest, commit_crc);
        digest = digest_add(digest, index_crc);
        let file_len = frames_end + (tail.len() + TRAILER_LEN) as u64;
        tail.extend_from_slice(&encode_trailer(file_len, digest));

        // The layout was computed by the same code that decodes it, from a header we
        // just built; the index bytes are the ones we encoded.
        let layout = header.layout().expect("layout of a header we built");
        let index_in_tail = (layout.index_off - frames_end) as usize;
        let index_range = index_in_tail..index_in_tail + header.index_len as usize;
        match self.spill.file.take() {
            None => {
                self.buf[..HEADER_LEN].copy_from_slice(&encoded_header);
                let tail_at = self.buf.len();
                self.buf.extend_from_slice(&tail);
                let bytes = Bytes::from(self.buf);
                let index = bytes.slice(tail_at + index_range.start..tail_at + index_range.end);
                let index = PageIndex::parse(index, header.frame_count, layout.index_off)
                    .expect("index we built parses");
                Ok(SealedSegment::from_parts(
                    bytes,
                    header,
                    layout,
                    self.commits,
                    index,
                ))
            }
            Some(file) => {
                file.write_at(&tail, frames_end)
                    .and_then(|()| file.write_at(&encoded_header, 0))
                    .map_err(|e| spill_err(&file, e))?;
                let index = Bytes::copy_from_slice(&tail[index_range]);
                let index = PageIndex::parse(index, header.frame_count, layout.index_off)
                    .expect("index we built parses");
                Ok(SealedSegment::from_file(
                    file,
                    header,
                    layout,
                    self.commits,
                    index,
                ))
            }
        }
    }

    fn check_frame(&self, page_no: u32, page: &[u8]) -> Result<u64> {
        if page_no == 0 {
            return Err(InvalidInput::PageNo.into());
        }
        if page.len() != self.page_size as usize {
            return Err(InvalidInput::PageLength {
                expected: self.page_size,
                actual: page.len(),
            }
            .into());
        }
        let frame_no = self.next_frame_no();
        if frame_no == u64::MAX || self.frame_count == u32::MAX {
            return Err(InvalidInput::FrameNo {
                frame_no,
                reason: "no frame numbers left in this segment",
            }
            .into());
        }
        Ok(frame_no)
    }

    fn check_commit(&self, frame_no: u64, size_after: u32, at: DateTime<Utc>) -> Result<u64> {
        let reject = |reason: String| Error::from(InvalidInput::Commit { frame_no, reason });
        if size_after == 0 {
            return Err(reject(
                "database size after a commit must be at least 1 page".into(),
            ));
        }
        let ms = timestamp_ms(at)?;
        if let Some(prev) = self.commits.last() {
            if ms < prev.timestamp_ms {
                return Err(reject(format!(
                    "timestamp {at} is before the previous commit's ({})",
                    prev.timestamp()
                )));
            }
        }
        Ok(ms)
    }

    /// Appends one frame. Frames buffered earlier are written out (or moved to a new
    /// spill file) first, so an error leaves the builder as it was.
    fn push(&mut self, frame_no: u64, page_no: u32, size_after: u32, page: &[u8]) -> Result<()> {
        let pending = self.buf.len();
        match (&self.spill.file, &self.spill.dir) {
            (Some(_), _) if pending >= self.spill.chunk() => self.write_out()?,
            (None, Some(dir)) if pending - HEADER_LEN > self.spill.threshold => {
                let file = SpillFile::create(dir).map_err(|e| {
                    Error::io(format!("creating a spill file in {}", dir.display()), e)
                })?;
                self.spill.file = Some(file);
                self.spill.written = 0;
                self.write_out()?;
            }
            _ => {}
        }
        let mut header = frame_header(frame_no, page_no, size_after);
        let crc = frame_crc(&header, page);
        put_u32(&mut header, frm::CRC, crc);
        self.buf.extend_from_slice(&header);
        self.buf.extend_from_slice(page);
        self.frames_crc = crc32c::crc32c_append(self.frames_crc, &crc.to_le_bytes());
        self.last_crc = Some(crc);
        self.newest.insert(page_no, self.frame_count);
        self.frame_count += 1;
        self.next_frame_no = frame_no + 1;
        Ok(())
    }

    /// Writes the buffered frames to the spill file.
    fn write_out(&mut self) -> Result<()> {
        let Some(file) = &self.spill.file else {
            return Ok(());
        };
        file.write_at(&self.buf, self.spill.written)
            .map_err(|e| spill_err(file, e))?;
        self.spill.written += self.buf.len() as u64;
        self.buf.clear();
        // A buffer that once held a whole in-memory segment is given back.
        self.buf
            .shrink_to(SPILL_WRITE_CHUNK + FRAME_HEADER_LEN + self.page_size as usize);
        Ok(())
    }
}

/// The newest position of each page. Pages 1, 2, 3, … each once (a snapshot) are kept
/// as a plain array, 4 bytes a page; anything else moves them to a hash map.
#[derive(Debug)]
enum Newest {
    Dense(Vec<u32>),
    Sparse(HashMap<u32, u32>),
}

impl Default for Newest {
    fn default() -> Self {
        Newest::Dense(Vec::new())
    }
}

impl Newest {
    fn insert(&mut self, page_no: u32, position: u32) {
        if let Newest::Dense(positions) = self {
            if page_no as usize == positions.len() + 1 {
                positions.push(position);
                return;
            }
            let map = (1..).zip(positions.iter().copied()).collect();
            *self = Newest::Sparse(map);
        }
        if let Newest::Sparse(map) = self {
            map.insert(page_no, position);
        }
    }

    fn get(&self, page_no: u32) -> Option<u32> {
        match self {
            Newest::Dense(positions) => positions.get((page_no as usize).checked_sub(1)?).copied(),
            Newest::Sparse(map) => map.get(&page_no).copied(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Newest::Dense(positions) => positions.len(),
            Newest::Sparse(map) => map.len(),
        }
    }

    /// `(page_no, position)` pairs in page order.
    fn into_sorted(self) -> Box<dyn Iterator<Item = (u32, u32)>> {
        match self {
            Newest::Dense(positions) => Box::new((1..).zip(positions)),
            Newest::Sparse(map) => {
                let mut pairs: Vec<(u32, u32)> = map.into_iter().collect();
                pairs.sort_unstable();
                Box::new(pairs.into_iter())
            }
        }
    }
}

/// Where a builder spills, and how much it has.
#[derive(Debug, Default)]
struct Spill {
    dir: Option<PathBuf>,
    threshold: usize,
    file: Option<SpillFile>,
    /// Bytes of the segment in the file (from offset 0: header room, then frames).
    written: u64,
}

impl Spill {
    /// Frames buffered before a write to the spill file: a quarter of the threshold,
    /// from 64 KiB to [`SPILL_WRITE_CHUNK`].
    fn chunk(&self) -> usize {
        (self.threshold / 4).clamp(64 << 10, SPILL_WRITE_CHUNK)
    }
}

fn spill_err(file: &SpillFile, e: std::io::Error) -> Error {
    Error::io(format!("writing spill file {}", file.path().display()), e)
}

/// Milliseconds since the epoch, rejecting times before it.
pub(crate) fn timestamp_ms(at: DateTime<Utc>) -> Result<u64> {
    u64::try_from(at.timestamp_millis())
        .map_err(|_| InvalidInput::Timestamp(at.to_rfc3339()).into())
}

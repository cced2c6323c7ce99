//! Byte layout of an encoded segment. `docs/FORMAT.md` is the prose form of this file;
//! keep the two in step. All integers are little-endian except page-index keys, which
//! are big-endian so that byte order equals numeric order inside the `fst`; the log id
//! is a UUID in its RFC 4122 byte order.

use uuid::Uuid;

use crate::error::{FormatError, Part};

/// Magic number at byte 0 of every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"WVSEGMNT";
/// Magic number at byte 0 of the trailer.
pub(crate) const TRAILER_MAGIC: [u8; 8] = *b"WVTRAILR";
/// The version this build writes. It also reads version 1, which has no lineage.
pub(crate) const FORMAT_VERSION: u16 = 2;
/// Version 1: 24-byte commit entries, no lineage.
pub(crate) const FORMAT_VERSION_1: u16 = 1;

pub(crate) const HEADER_LEN: usize = 128;
pub(crate) const FRAME_HEADER_LEN: usize = 24;
/// A commit-table entry's length in version 2 (version 1: [`COMMIT_LEN_V1`]).
pub(crate) const COMMIT_LEN: usize = 32;
pub(crate) const COMMIT_LEN_V1: usize = 24;
pub(crate) const CRC_LEN: usize = 4;
pub(crate) const TRAILER_LEN: usize = 32;

/// Header flag: the segment is sparse. Its frames keep their own, strictly increasing
/// frame numbers inside the key's range but need not fill it, because compaction left
/// out page versions no retained commit needs. Readers that do not know this flag
/// refuse the segment (they reject unknown flags).
pub(crate) const FLAG_SPARSE: u16 = 1;
/// Header flag (version 2): the segment carries lineage. `base_checksum` names the
/// database state its first transaction applies to (0: none, the segment starts a new
/// lineage with a snapshot) and every commit-table entry holds the checksum of the
/// database after that commit (`docs/FORMAT.md` §3.9).
pub(crate) const FLAG_LINEAGE: u16 = 2;

// Header field offsets.
pub(crate) mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const FLAGS: usize = 10;
    pub const PAGE_SIZE: usize = 12;
    pub const START_FRAME_NO: usize = 16;
    pub const END_FRAME_NO: usize = 24;
    pub const FRAME_COUNT: usize = 32;
    pub const COMMIT_COUNT: usize = 36;
    pub const PAGE_COUNT: usize = 40;
    pub const DB_SIZE: usize = 44;
    pub const FIRST_COMMIT_TS: usize = 48;
    pub const LAST_COMMIT_TS: usize = 56;
    pub const SEALED_AT: usize = 64;
    pub const LOG_ID: usize = 72;
    pub const INDEX_LEN: usize = 88;
    pub const BASE_CHECKSUM: usize = 96;
    pub const RESERVED: usize = 104;
    pub const CRC: usize = 124;
}

// Frame header field offsets (relative to the frame).
pub(crate) mod frm {
    pub const FRAME_NO: usize = 0;
    pub const PAGE_NO: usize = 8;
    pub const SIZE_AFTER: usize = 12;
    pub const RESERVED: usize = 16;
    pub const CRC: usize = 20;
}

// Trailer field offsets (relative to the trailer).
pub(crate) mod trl {
    pub const MAGIC: usize = 0;
    pub const FILE_LEN: usize = 8;
    pub const DIGEST: usize = 16;
    pub const RESERVED: usize = 20;
    pub const CRC: usize = 28;
}

/// True for the page sizes SQLite allows: powers of two from 512 to 65536.
pub(crate) fn valid_page_size(page_size: u32) -> bool {
    (512..=65536).contains(&page_size) && page_size.is_power_of_two()
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub page_size: u32,
    pub start_frame_no: u64,
    pub end_frame_no: u64,
    pub frame_count: u32,
    pub commit_count: u32,
    pub page_count: u32,
    pub db_size: u32,
    pub first_commit_ts: u64,
    pub last_commit_ts: u64,
    pub sealed_at: u64,
    pub log_id: Uuid,
    pub index_len: u64,
    /// [`FLAG_SPARSE`]: frame numbers need not be contiguous.
    pub sparse: bool,
    /// The format version the segment was written in (1 or 2).
    pub version: u16,
    /// [`FLAG_LINEAGE`]: `Some(base checksum)`, 0 for a segment that starts a new
    /// lineage; None for a segment without lineage (every version 1 segment).
    pub lineage: Option<u64>,
}

impl Header {
    /// The key of the segment this header describes: frame range and first commit time.
    pub(crate) fn key(&self) -> crate::format::SegmentKey {
        crate::format::SegmentKey {
            start_frame_no: self.start_frame_no,
            end_frame_no: self.end_frame_no,
            timestamp: self.first_commit_ts,
        }
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[hdr::MAGIC..hdr::MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(&mut b, hdr::VERSION, self.version);
        let flags = if self.sparse { FLAG_SPARSE } else { 0 }
            | if self.lineage.is_some() {
                FLAG_LINEAGE
            } else {
                0
            };
        put_u16(&mut b, hdr::FLAGS, flags);
        put_u32(&mut b, hdr::PAGE_SIZE, self.page_size);
        put_u64(&mut b, hdr::START_FRAME_NO, self.start_frame_no);
        put_u64(&mut b, hdr::END_FRAME_NO, self.end_frame_no);
        put_u32(&mut b, hdr::FRAME_COUNT, self.frame_count);
        put_u32(&mut b, hdr::COMMIT_COUNT, self.commit_count);
        put_u32(&mut b, hdr::PAGE_COUNT, self.page_count);
        put_u32(&mut b, hdr::DB_SIZE, self.db_size);
        put_u64(&mut b, hdr::FIRST_COMMIT_TS, self.first_commit_ts);
        put_u64(&mut b, hdr::LAST_COMMIT_TS, self.last_commit_ts);
        put_u64(&mut b, hdr::SEALED_AT, self.sealed_at);
        b[hdr::LOG_ID..hdr::LOG_ID + 16].copy_from_slice(self.log_id.as_bytes());
        put_u64(&mut b, hdr::INDEX_LEN, self.index_len);
        put_u64(&mut b, hdr::BASE_CHECKSUM, self.lineage.unwrap_or(0));
        let crc = crc32c::crc32c(&b[..hdr::CRC]);
        put_u32(&mut b, hdr::CRC, crc);
        b
    }

    /// Decodes and checks the header on its own: magic, checksum, version, and the
    /// fields that can be judged without the rest of the file.
    pub(crate) fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_LEN {
            return Err(FormatError::Length {
                expected: HEADER_LEN as u64,
                actual: b.len() as u64,
            });
        }
        if b[..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic(Part::Header));
        }
        if crc32c::crc32c(&b[..hdr::CRC]) != le_u32(b, hdr::CRC) {
            return Err(FormatError::Checksum {
                part: Part::Header,
                offset: 0,
            });
        }
        let version = le_u16(b, hdr::VERSION);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(FormatError::Version(version));
        }
        let flags = le_u16(b, hdr::FLAGS);
        let known = match version {
            FORMAT_VERSION_1 => FLAG_SPARSE,
            _ => FLAG_SPARSE | FLAG_LINEAGE,
        };
        if flags & !known != 0 {
            return Err(invalid(Part::Header, hdr::FLAGS, "unknown flags"));
        }
        let base = le_u64(b, hdr::BASE_CHECKSUM);
        let lineage = (flags & FLAG_LINEAGE != 0).then_some(base);
        if lineage.is_none() && base != 0 {
            return Err(invalid(
                Part::Header,
                hdr::BASE_CHECKSUM,
                "base checksum without the lineage flag",
            ));
        }
        let header = Header {
            page_size: le_u32(b, hdr::PAGE_SIZE),
            start_frame_no: le_u64(b, hdr::START_FRAME_NO),
            end_frame_no: le_u64(b, hdr::END_FRAME_NO),
            frame_count: le_u32(b, hdr::FRAME_COUNT),
            commit_count: le_u32(b, hdr::COMMIT_COUNT),
            page_count: le_u32(b, hdr::PAGE_COUNT),
            db_size: le_u32(b, hdr::DB_SIZE),
            first_commit_ts: le_u64(b, hdr::FIRST_COMMIT_TS),
            last_commit_ts: le_u64(b, hdr::LAST_COMMIT_TS),
            sealed_at: le_u64(b, hdr::SEALED_AT),
            log_id: Uuid::from_slice(&b[hdr::LOG_ID..hdr::LOG_ID + 16])
                .map_err(|_| invalid(Part::Header, hdr::LOG_ID, "bad log id"))?,
            index_len: le_u64(b, hdr::INDEX_LEN),
            sparse: flags & FLAG_SPARSE != 0,
            version,
            lineage,
        };
        if b[hdr::RESERVED..hdr::CRC].iter().any(|&x| x != 0) {
            return Err(invalid(
                Part::Header,
                hdr::RESERVED,
                "reserved bytes not zero",
            ));
        }
        header.check_fields()?;
        Ok(header)
    }

    fn check_fields(&self) -> Result<(), FormatError> {
        let bad = |at, reason| Err(invalid(Part::Header, at, reason));
        if !valid_page_size(self.page_size) {
            return bad(hdr::PAGE_SIZE, "page size not allowed by SQLite");
        }
        if self.start_frame_no == 0 || self.start_frame_no > self.end_frame_no {
            return bad(hdr::START_FRAME_NO, "bad frame range");
        }
        let span = self.end_frame_no - self.start_frame_no + 1;
        let count = u64::from(self.frame_count);
        if (!self.sparse && count != span) || count > span || count == 0 {
            return bad(hdr::FRAME_COUNT, "frame count disagrees with frame range");
        }
        if self.commit_count == 0 || self.commit_count > self.frame_count {
            return bad(hdr::COMMIT_COUNT, "bad commit count");
        }
        if self.page_count == 0 || self.page_count > self.frame_count {
            return bad(hdr::PAGE_COUNT, "bad page count");
        }
        if self.db_size == 0 {
            return bad(hdr::DB_SIZE, "database size is zero");
        }
        if self.first_commit_ts > self.last_commit_ts {
            return bad(hdr::FIRST_COMMIT_TS, "first commit after last commit");
        }
        let max_ts = chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis() as u64;
        if self.last_commit_ts > max_ts || self.sealed_at > max_ts {
            return bad(
                hdr::LAST_COMMIT_TS,
                "timestamp beyond the representable range",
            );
        }
        Ok(())
    }

    /// The length of one commit-table entry in this segment's version.
    pub(crate) fn commit_len(&self) -> usize {
        match self.version {
            FORMAT_VERSION_1 => COMMIT_LEN_V1,
            _ => COMMIT_LEN,
        }
    }

    /// Where every part starts, computed with checked arithmetic.
    pub(crate) fn layout(&self) -> Result<Layout, FormatError> {
        let overflow = || invalid(Part::Header, hdr::FRAME_COUNT, "sizes overflow");
        let frame_len = FRAME_HEADER_LEN as u64 + u64::from(self.page_size);
        let frames_off = HEADER_LEN as u64;
        let commits_off = u64::from(self.frame_count)
            .checked_mul(frame_len)
            .and_then(|n| n.checked_add(frames_off))
            .ok_or_else(overflow)?;
        let index_off = (u64::from(self.commit_count) * self.commit_len() as u64 + CRC_LEN as u64)
            .checked_add(commits_off)
            .ok_or_else(overflow)?;
        let trailer_off = self
            .index_len
            .checked_add(index_off)
            .and_then(|n| n.checked_add(CRC_LEN as u64))
            .ok_or_else(overflow)?;
        let file_len = trailer_off
            .checked_add(TRAILER_LEN as u64)
            .ok_or_else(overflow)?;
        Ok(Layout {
            frame_len,
            commits_off,
            index_off,
            trailer_off,
            file_len,
        })
    }
}

/// Offsets of the parts of an encoded segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub frame_len: u64,
    pub commits_off: u64,
    pub index_off: u64,
    pub trailer_off: u64,
    pub file_len: u64,
}

impl Layout {
    pub(crate) fn frame_off(&self, position: u32) -> u64 {
        HEADER_LEN as u64 + u64::from(position) * self.frame_len
    }
}

pub(crate) fn invalid(part: Part, offset: usize, reason: &'static str) -> FormatError {
    FormatError::Invalid {
        part,
        offset: offset as u64,
        reason,
    }
}

/// Checksum of one frame: its header up to the checksum field, then its page.
pub(crate) fn frame_crc(frame_header: &[u8], page: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&frame_header[..frm::CRC]), page)
}

/// A frame's header with every field but the checksum filled in.
pub(crate) fn frame_header(frame_no: u64, page_no: u32, size_after: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    put_u64(&mut header, frm::FRAME_NO, frame_no);
    put_u32(&mut header, frm::PAGE_NO, page_no);
    put_u32(&mut header, frm::SIZE_AFTER, size_after);
    header
}

/// Builds a trailer for a file of `file_len` bytes whose parts have the given digest.
pub(crate) fn encode_trailer(file_len: u64, digest: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[trl::MAGIC..trl::MAGIC + 8].copy_from_slice(&TRAILER_MAGIC);
    put_u64(&mut t, trl::FILE_LEN, file_len);
    put_u32(&mut t, trl::DIGEST, digest);
    let crc = crc32c::crc32c(&t[..trl::CRC]);
    put_u32(&mut t, trl::CRC, crc);
    t
}

/// Folds a part's checksum into the file digest (a CRC over the part checksums, in file
/// order), so the trailer vouches for the whole file at the cost of a few bytes.
pub(crate) fn digest_add(digest: u32, part_crc: u32) -> u32 {
    crc32c::crc32c_append(digest, &part_crc.to_le_bytes())
}

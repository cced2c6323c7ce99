//! A reader of SQLite's own write-ahead-log file (`<db>-wal`), so the replicator can ship
//! exactly the transactions SQLite itself would consider committed, without going
//! through SQLite and without the `-shm` index.
//!
//! The format (<https://www.sqlite.org/fileformat2.html#walformat>), all fields big-endian:
//!
//! * header, 32 bytes: magic u32 (`0x377f0682`: checksums over little-endian words,
//!   `0x377f0683`: over big-endian words), format version u32 (3007000), page size u32
//!   (a power of two from 512 to 65536, stored as is), checkpoint sequence u32, salt-1
//!   u32, salt-2 u32, checksum-1 u32, checksum-2 u32 (over bytes 0..24).
//! * frames, each a 24-byte header followed by one page: page number u32, database size
//!   in pages after the commit u32 (nonzero only on a transaction's last frame), salt-1
//!   u32, salt-2 u32, checksum-1 u32, checksum-2 u32. The checksum covers bytes 0..8 of
//!   the frame header and the page, seeded with the previous frame's checksum (the
//!   header's for the first frame), so a frame is only valid after every frame before it.
//!
//! A frame counts only if its salts are the header's, its page number is nonzero and its
//! checksum matches; reading stops at the first frame that does not. When a checkpoint
//! restarts the log SQLite writes a new header with new salts over the old one, so stale
//! frames from the previous generation that still follow fail the salt test. Frames after
//! the last valid commit frame belong to a transaction that never committed and are
//! dropped, as SQLite's own recovery does.
//!
//! Resuming from a [`WalPosition`] does not re-read the frames before it: the chained
//! checksum stored in the last consumed frame's header identifies the whole prefix, so
//! checking that header (salts and checksum) is enough to know the WAL still holds it.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

/// Length of the WAL header.
const HEADER_LEN: usize = 32;
/// Length of a frame header (the page follows it).
const FRAME_HEADER_LEN: usize = 24;
/// Magic number of a WAL whose checksums run over little-endian words.
const MAGIC_LE: u32 = 0x377f_0682;
/// Magic number of a WAL whose checksums run over big-endian words.
const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version there is.
const FORMAT_VERSION: u32 = 3_007_000;
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 65_536;

// Byte offsets of the WAL header fields.
const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_PAGE_SIZE: usize = 8;
const H_CHECKPOINT_SEQ: usize = 12;
const H_SALT: usize = 16;
const H_CHECKSUM: usize = 24;

// Byte offsets of the frame header fields.
const F_PAGE_NO: usize = 0;
const F_DB_SIZE: usize = 4;
const F_SALT: usize = 8;
const F_CHECKSUM: usize = 16;
/// The frame header bytes covered by the frame checksum (page number and database size).
const F_CHECKSUMMED: usize = 8;

/// Read buffer for streaming frames; large enough for several 4 KiB frames per read.
const READ_BUFFER: usize = 256 * 1024;

/// Where a reader stands in a WAL: after `frames` frames of the WAL generation with these salts,
/// with `checksum` the cumulative checksum after the last of them (the header checksum when frames == 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalPosition {
    pub salt: (u32, u32),
    pub frames: u32,
    pub checksum: (u32, u32),
}

/// A valid WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalHeader {
    /// The database page size in bytes (512..=65536).
    pub page_size: u32,
    /// Incremented by SQLite each time a checkpoint restarts the log.
    pub checkpoint_seq: u32,
    /// Salt-1 and salt-2; every frame of this generation repeats them.
    pub salt: (u32, u32),
    /// The header checksum, which seeds the first frame's.
    pub checksum: (u32, u32),
    /// Whether checksums run over big-endian words (magic `0x377f0683`).
    pub big_endian: bool,
}

impl WalHeader {
    /// The position before the first frame of this generation.
    pub(crate) fn start(&self) -> WalPosition {
        WalPosition {
            salt: self.salt,
            frames: 0,
            checksum: self.checksum,
        }
    }

    /// Byte offset of the frame with this 0-based index.
    fn frame_offset(&self, index: u32) -> u64 {
        let frame_len = FRAME_HEADER_LEN as u64 + u64::from(self.page_size);
        HEADER_LEN as u64 + u64::from(index) * frame_len
    }
}

/// One committed transaction read from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalTransaction {
    /// (page number, page bytes) in WAL order; a page may repeat (the later one wins).
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Database size in pages after the commit.
    pub db_size: u32,
    /// The position just after this transaction's commit frame.
    pub end: WalPosition,
}

/// The outcome of [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WalScan {
    /// No WAL file, or one shorter than a header, or a header that is not valid (SQLite treats all of these as an empty WAL).
    Empty,
    /// `start` was None, or the WAL is the same generation as `start` and still holds it (same salts, at least `start.frames` valid frames and the checksum after frame `start.frames` equals `start.checksum`): transactions after it were delivered; `end` is the position after the last committed one (== start, or the header position, when none).
    Continued { header: WalHeader, end: WalPosition },
    /// The WAL no longer holds `start` (another salt, fewer valid frames, or a different checksum at that frame): it was reset or rewritten. Nothing was delivered.
    Reset { header: WalHeader },
}

/// Reads the committed transactions of the WAL at `path` that come after `start` (from the beginning when `start` is None), handing each to `on_txn` in order, and stops at the first invalid frame. The callback's error aborts the scan and is returned.
pub(crate) fn scan(
    path: &Path,
    start: Option<WalPosition>,
    on_txn: impl FnMut(WalTransaction) -> Result<()>,
) -> Result<WalScan> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(WalScan::Empty),
        Err(e) => {
            let context = format!("opening SQLite WAL {}", path.display());
            return Err(Error::io(context, e));
        }
    };
    scan_from(file, path, start, on_txn)
}

/// Parses a WAL header; None if it is not a valid one.
pub(crate) fn parse_header(bytes: &[u8]) -> Option<WalHeader> {
    let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let big_endian = match be_u32(h, H_MAGIC) {
        MAGIC_LE => false,
        MAGIC_BE => true,
        _ => return None,
    };
    let page_size = be_u32(h, H_PAGE_SIZE);
    let page_size_ok =
        page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size);
    if be_u32(h, H_VERSION) != FORMAT_VERSION || !page_size_ok {
        return None;
    }
    let stored = be_pair(h, H_CHECKSUM);
    if checksum(big_endian, (0, 0), &h[..H_CHECKSUM]) != stored {
        return None;
    }
    Some(WalHeader {
        page_size,
        checkpoint_seq: be_u32(h, H_CHECKPOINT_SEQ),
        salt: be_pair(h, H_SALT),
        checksum: stored,
        big_endian,
    })
}

/// [`scan`] over any seekable byte source; `path` only names it in errors.
fn scan_from<R: Read + Seek>(
    mut source: R,
    path: &Path,
    start: Option<WalPosition>,
    mut on_txn: impl FnMut(WalTransaction) -> Result<()>,
) -> Result<WalScan> {
    let Some(header) = read_header(&mut source).map_err(|e| io_error(path, e))? else {
        return Ok(WalScan::Empty);
    };
    let from = match start {
        None => header.start(),
        Some(p) if still_holds(&mut source, &header, &p).map_err(|e| io_error(path, e))? => p,
        Some(p) => {
            tracing::debug!(
                wal = %path.display(),
                old_salt = ?p.salt,
                new_salt = ?header.salt,
                checkpoint_seq = header.checkpoint_seq,
                "SQLite WAL no longer holds the resume position"
            );
            return Ok(WalScan::Reset { header });
        }
    };
    let offset = header.frame_offset(from.frames);
    source
        .seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(path, e))?;
    let mut frames = BufReader::with_capacity(READ_BUFFER, source);
    let end = read_transactions(&mut frames, path, &header, from, &mut on_txn)?;
    Ok(WalScan::Continued { header, end })
}

fn io_error(path: &Path, e: io::Error) -> Error {
    Error::io(format!("reading SQLite WAL {}", path.display()), e)
}

/// The WAL header, or None when the source is too short or the header is not valid.
fn read_header(source: &mut impl Read) -> io::Result<Option<WalHeader>> {
    let mut bytes = [0u8; HEADER_LEN];
    Ok(read_full(source, &mut bytes)?
        .then(|| parse_header(&bytes))
        .flatten())
}

/// Whether the WAL still holds `p`: same generation, frame `p.frames` complete, and
/// the checksum stored in that frame's header (the cumulative one) equals `p.checksum`.
fn still_holds<R: Read + Seek>(
    source: &mut R,
    header: &WalHeader,
    p: &WalPosition,
) -> io::Result<bool> {
    if p.salt != header.salt {
        return Ok(false);
    }
    let Some(last) = p.frames.checked_sub(1) else {
        return Ok(p.checksum == header.checksum);
    };
    if source.seek(SeekFrom::End(0))? < header.frame_offset(p.frames) {
        return Ok(false);
    }
    source.seek(SeekFrom::Start(header.frame_offset(last)))?;
    let mut bytes = [0u8; FRAME_HEADER_LEN];
    if !read_full(source, &mut bytes)? {
        return Ok(false);
    }
    let frame = FrameHeader::parse(&bytes);
    Ok(frame.page_no != 0 && frame.salt == p.salt && frame.checksum == p.checksum)
}

/// Delivers every committed transaction after `from`; returns the position after the
/// last one delivered (`from` when none).
fn read_transactions(
    frames: &mut impl Read,
    path: &Path,
    header: &WalHeader,
    from: WalPosition,
    on_txn: &mut impl FnMut(WalTransaction) -> Result<()>,
) -> Result<WalPosition> {
    let mut pos = from;
    let mut committed = from;
    let mut pages = Vec::new();
    while let Some(frame) = read_frame(frames, header, &pos).map_err(|e| io_error(path, e))? {
        pos = frame.end;
        pages.push((frame.page_no, frame.data));
        if frame.db_size != 0 {
            committed = pos;
            on_txn(WalTransaction {
                pages: std::mem::take(&mut pages),
                db_size: frame.db_size,
                end: pos,
            })?;
        }
    }
    Ok(committed)
}

/// A valid frame and the position after it.
struct Frame {
    page_no: u32,
    db_size: u32,
    data: Vec<u8>,
    end: WalPosition,
}

/// The frame after `after`, or None when it is missing, incomplete or not valid.
fn read_frame(
    frames: &mut impl Read,
    header: &WalHeader,
    after: &WalPosition,
) -> io::Result<Option<Frame>> {
    let Some(count) = after.frames.checked_add(1) else {
        return Ok(None);
    };
    let mut head = [0u8; FRAME_HEADER_LEN];
    if !read_full(frames, &mut head)? {
        return Ok(None);
    }
    let fh = FrameHeader::parse(&head);
    if fh.salt != header.salt || fh.page_no == 0 {
        return Ok(None);
    }
    let mut data = vec![0u8; header.page_size as usize];
    if !read_full(frames, &mut data)? {
        return Ok(None);
    }
    let sum = checksum(header.big_endian, after.checksum, &head[..F_CHECKSUMMED]);
    let sum = checksum(header.big_endian, sum, &data);
    if sum != fh.checksum {
        return Ok(None);
    }
    let end = WalPosition {
        salt: header.salt,
        frames: count,
        checksum: sum,
    };
    Ok(Some(Frame {
        page_no: fh.page_no,
        db_size: fh.db_size,
        data,
        end,
    }))
}

/// The fields of a 24-byte frame header.
struct FrameHeader {
    page_no: u32,
    db_size: u32,
    salt: (u32, u32),
    checksum: (u32, u32),
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHeader {
            page_no: be_u32(b, F_PAGE_NO),
            db_size: be_u32(b, F_DB_SIZE),
            salt: be_pair(b, F_SALT),
            checksum: be_pair(b, F_CHECKSUM),
        }
    }
}

/// SQLite's WAL checksum: over 32-bit words `x` taken two at a time,
/// `s0 += x[i] + s1; s1 += x[i+1] + s0` (wrapping), starting from `seed`.
/// `data.len()` must be a multiple of 8 (it always is: 8 or 24 header bytes, or a page).
fn checksum(big_endian: bool, seed: (u32, u32), data: &[u8]) -> (u32, u32) {
    debug_assert_eq!(data.len() % 8, 0);
    if big_endian {
        checksum_words(seed, data, u32::from_be_bytes)
    } else {
        checksum_words(seed, data, u32::from_le_bytes)
    }
}

#[inline(always)]
fn checksum_words(seed: (u32, u32), data: &[u8], word: impl Fn([u8; 4]) -> u32) -> (u32, u32) {
    let (mut s0, mut s1) = seed;
    for w in data.chunks_exact(8) {
        s0 = s0
            .wrapping_add(word([w[0], w[1], w[2], w[3]]))
            .wrapping_add(s1);
        s1 = s1
            .wrapping_add(word([w[4], w[5], w[6], w[7]]))
            .wrapping_add(s0);
    }
    (s0, s1)
}

/// Fills `buf`; false when the source ends first.
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match source.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn be_u32<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_pair<const N: usize>(b: &[u8; N], at: usize) -> (u32, u32) {
    (be_u32(b, at), be_u32(b, at + 4))
}

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
//! Resuming from a [`WalPosition`] need not re-read the frames before it: the chained
//! checksum stored in the last consumed frame's header identifies the whole prefix, so
//! checking that header (salts and checksum) is enough to know the WAL still holds it,
//! as long as SQLite cannot have rewritten the WAL meanwhile. A reader that cannot vouch
//! for that checks every frame up to the position ([`Check`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

/// Length of the WAL header.
const HEADER_LEN: usize = 32;
/// Length of a frame header (the page follows it).
pub(crate) const FRAME_HEADER_LEN: usize = 24;
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
    /// Empty when the transaction was too large to hold (more than an eighth of the
    /// memory budget): then its frames are read back from `located`.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Where the transaction's frames are in the WAL, for [`read_located`].
    pub located: Located,
    /// Database size in pages after the commit.
    pub db_size: u32,
    /// The position just after this transaction's commit frame.
    pub end: WalPosition,
}

/// The frames of a large transaction, by position in the WAL, with what the scan proved
/// about each: a frame read back must still carry the generation's salts and the
/// cumulative checksum the scan computed, so nothing rewritten since is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub header: WalHeader,
    pub frames: Vec<FrameLoc>,
}

/// One frame of a [`Located`] transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameLoc {
    /// The frame's 0-based index in the WAL.
    pub index: u32,
    pub page_no: u32,
    /// The cumulative checksum before the frame (the previous frame's, or the header's).
    pub seed: (u32, u32),
    /// The cumulative checksum stored in (and proved for) the frame.
    pub checksum: (u32, u32),
}

/// Reads frames of a located transaction back from the open WAL `file` (named `path` in
/// errors) into `page_nos` and `data` (contiguous page bytes), checking each is the frame
/// the scan proved.
pub(crate) fn read_located(
    file: &File,
    path: &Path,
    header: &WalHeader,
    frames: &[FrameLoc],
    page_nos: &mut Vec<u32>,
    data: &mut Vec<u8>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let page_size = header.page_size as usize;
    let mut frame = vec![0u8; FRAME_HEADER_LEN + page_size];
    for loc in frames {
        file.read_exact_at(&mut frame, header.frame_offset(loc.index))
            .map_err(|e| io_error(path, e))?;
        let (head, page) = frame.split_at(FRAME_HEADER_LEN);
        let mut fixed = [0u8; FRAME_HEADER_LEN];
        fixed.copy_from_slice(head);
        let fh = FrameHeader::parse(&fixed);
        // The checksum is recomputed over what was read, from the proved seed: the bytes
        // are the frame the scan proved, or the read is refused (a WAL restarted since).
        let sum = checksum(header.big_endian, loc.seed, &head[..F_CHECKSUMMED]);
        let sum = checksum(header.big_endian, sum, page);
        if fh.salt != header.salt
            || fh.page_no != loc.page_no
            || fh.checksum != loc.checksum
            || sum != loc.checksum
        {
            let detail = format!(
                "frame {} of SQLite WAL {} changed while it was being shipped",
                loc.index + 1,
                path.display()
            );
            return Err(Error::io("re-reading the WAL", io::Error::other(detail)));
        }
        data.extend_from_slice(page);
        page_nos.push(loc.page_no);
    }
    Ok(())
}

/// Bytes of page images a scan holds for one transaction before it keeps only where its
/// frames are: an eighth of the memory budget.
pub(crate) fn hold_limit() -> usize {
    crate::budget::share(8)
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

/// Reads the committed transactions of the WAL at `path` that come after `start` (from
/// the beginning when `start` is None), handing each to `on_txn` in order, and stops at
/// the first invalid frame. The callback's error aborts the scan and is returned.
/// `check` says how the WAL is judged to still hold `start`.
pub(crate) fn scan(
    path: &Path,
    start: Option<WalPosition>,
    check: Check,
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
    scan_from(file, path, start, check, on_txn)
}

/// How much of the WAL before a resume position is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The header of the frame the position ends at: salts and cumulative checksum (see
    /// the module docs). Enough while the caller has kept SQLite from rewriting the WAL
    /// since it read that frame.
    LastFrame,
    /// Every frame from the first to the position, as SQLite's own recovery does. After
    /// a power loss SQLite may have dropped frames we had read and written new ones over
    /// them with the same salts, while the frame the position ends at still sits
    /// further on; only this walk tells.
    WholePrefix,
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
    check: Check,
    mut on_txn: impl FnMut(WalTransaction) -> Result<()>,
) -> Result<WalScan> {
    let Some(header) = read_header(&mut source).map_err(|e| io_error(path, e))? else {
        return Ok(WalScan::Empty);
    };
    let holds = match start {
        None => true,
        Some(p) if check == Check::LastFrame => {
            still_holds(&mut source, &header, &p).map_err(|e| io_error(path, e))?
        }
        Some(_) => true, // checked below, while reading
    };
    let from = start.unwrap_or_else(|| header.start());
    let first = match check {
        Check::LastFrame => from.frames,
        Check::WholePrefix => 0,
    };
    let mut frames = None;
    if holds {
        source
            .seek(SeekFrom::Start(header.frame_offset(first)))
            .map_err(|e| io_error(path, e))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, source);
        let reached = match check {
            Check::LastFrame => Some(from),
            Check::WholePrefix => {
                walk_to(&mut reader, &header, from.frames).map_err(|e| io_error(path, e))?
            }
        };
        frames = (reached == Some(from)).then_some(reader);
    }
    let Some(mut frames) = frames else {
        tracing::debug!(
            wal = %path.display(),
            old_salt = ?from.salt,
            new_salt = ?header.salt,
            checkpoint_seq = header.checkpoint_seq,
            "SQLite WAL no longer holds the resume position"
        );
        return Ok(WalScan::Reset { header });
    };
    let end = read_transactions(&mut frames, path, &header, from, &mut on_txn)?;
    Ok(WalScan::Continued { header, end })
}

/// Reads the first `count` frames, checking each; the position after them, or None
/// when one of them is not valid.
fn walk_to(
    frames: &mut impl Read,
    header: &WalHeader,
    count: u32,
) -> io::Result<Option<WalPosition>> {
    let mut pos = header.start();
    while pos.frames < count {
        match read_frame(frames, header, &pos)? {
            Some(frame) => pos = frame.end,
            None => return Ok(None),
        }
    }
    Ok(Some(pos))
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
    let mut locs: Vec<FrameLoc> = Vec::new();
    let mut held = 0usize;
    while let Some(frame) = read_frame(frames, header, &pos).map_err(|e| io_error(path, e))? {
        locs.push(FrameLoc {
            index: pos.frames,
            page_no: frame.page_no,
            seed: pos.checksum,
            checksum: frame.end.checksum,
        });
        pos = frame.end;
        held += frame.data.len();
        if held <= hold_limit() {
            pages.push((frame.page_no, frame.data));
        } else {
            pages = Vec::new(); // too large to hold: its frames are read back by location
        }
        if frame.db_size != 0 {
            committed = pos;
            let located = Located {
                header: *header,
                frames: std::mem::take(&mut locs),
            };
            held = 0;
            on_txn(WalTransaction {
                pages: std::mem::take(&mut pages),
                located,
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Cursor;
    use std::path::PathBuf;

    use proptest::prelude::*;
    use rusqlite::Connection;
    use tempfile::TempDir;

    use super::*;

    type Rows = Vec<(i64, Vec<u8>)>;

    /// A WAL-mode database with automatic checkpoints off and one table `t`.
    struct Db {
        dir: TempDir,
        conn: Connection,
    }

    impl Db {
        fn new(page_size: Option<u32>) -> Db {
            let dir = tempfile::tempdir().unwrap();
            let conn = Connection::open(dir.path().join("db")).unwrap();
            if let Some(size) = page_size {
                conn.execute_batch(&format!("PRAGMA page_size={size};"))
                    .unwrap();
            }
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            conn.execute_batch(
                "PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
            Db { dir, conn }
        }

        fn insert(&self, id: i64, len: usize) {
            self.conn
                .execute("INSERT INTO t VALUES (?1, ?2)", (id, vec![id as u8; len]))
                .unwrap();
        }

        /// One transaction inserting `n` rows of `len` bytes from `first` on.
        fn insert_many(&self, first: i64, n: i64, len: usize) {
            self.conn.execute_batch("BEGIN").unwrap();
            for id in first..first + n {
                self.insert(id, len);
            }
            self.conn.execute_batch("COMMIT").unwrap();
        }

        fn exec(&self, sql: &str) {
            self.conn.execute_batch(sql).unwrap();
        }

        fn checkpoint(&self, mode: &str) {
            let busy: i64 = self
                .conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(busy, 0);
        }

        fn rows(&self) -> Rows {
            rows(&self.conn)
        }

        fn wal_path(&self) -> PathBuf {
            self.dir.path().join("db-wal")
        }

        /// The WAL as it is now, read while the connection is open.
        fn wal(&self) -> Vec<u8> {
            fs::read(self.wal_path()).unwrap()
        }

        /// The main database file as it is now.
        fn image(&self) -> Vec<u8> {
            fs::read(self.dir.path().join("db")).unwrap()
        }
    }

    fn rows(conn: &Connection) -> Rows {
        let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// Scans `bytes` as a WAL, collecting what is delivered.
    /// Scans `bytes` with both [`Check`]s; where the WAL was not
    /// damaged behind the position they must agree.
    fn scan_bytes(bytes: &[u8], start: Option<WalPosition>) -> (WalScan, Vec<WalTransaction>) {
        let quick = scan_bytes_with(bytes, start, Check::LastFrame);
        let checked = scan_bytes_with(bytes, start, Check::WholePrefix);
        assert_eq!(quick, checked, "the two checks disagree");
        quick
    }

    fn scan_bytes_with(
        bytes: &[u8],
        start: Option<WalPosition>,
        check: Check,
    ) -> (WalScan, Vec<WalTransaction>) {
        let mut txns = Vec::new();
        let path = Path::new("test.wal");
        let outcome = scan_from(Cursor::new(bytes), path, start, check, |t| {
            txns.push(t);
            Ok(())
        })
        .unwrap();
        (outcome, txns)
    }

    /// Scans the WAL file at `path`, collecting what is delivered.
    fn scan_file(path: &Path, start: Option<WalPosition>) -> (WalScan, Vec<WalTransaction>) {
        let mut txns = Vec::new();
        let outcome = scan(path, start, Check::LastFrame, |t| {
            txns.push(t);
            Ok(())
        })
        .unwrap();
        (outcome, txns)
    }

    /// Copies the live WAL of `db` to a file of its own and scans that.
    fn scan_copy(db: &Db, start: Option<WalPosition>) -> (WalScan, Vec<WalTransaction>) {
        let copy = db.dir.path().join("copy-wal");
        fs::copy(db.wal_path(), &copy).unwrap();
        scan_file(&copy, start)
    }

    fn continued(outcome: WalScan) -> (WalHeader, WalPosition) {
        match outcome {
            WalScan::Continued { header, end } => (header, end),
            other => panic!("expected Continued, got {other:?}"),
        }
    }

    /// Applies the transactions' pages to a database image, as a restore would.
    fn replay(image: &[u8], page_size: u32, txns: &[WalTransaction]) -> Vec<u8> {
        let size = page_size as usize;
        let mut out = image.to_vec();
        for txn in txns {
            for (page_no, data) in &txn.pages {
                let at = (*page_no as usize - 1) * size;
                if out.len() < at + size {
                    out.resize(at + size, 0);
                }
                out[at..at + size].copy_from_slice(data);
            }
            out.resize(txn.db_size as usize * size, 0);
        }
        out
    }

    /// Opens a database image with SQLite, checks its integrity and returns `t`'s rows.
    fn rows_of_image(image: &[u8]) -> Rows {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replayed.db");
        fs::write(&path, image).unwrap();
        let conn = Connection::open(&path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        rows(&conn)
    }

    /// Opens `image` with `wal` beside it (and no -shm, so SQLite recovers the WAL itself).
    fn rows_with_wal(image: &[u8], wal: &[u8]) -> Rows {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("db"), image).unwrap();
        fs::write(dir.path().join("db-wal"), wal).unwrap();
        rows(&Connection::open(dir.path().join("db")).unwrap())
    }

    /// Encodes frames (page number, db size or 0, page) as a WAL.
    fn encode_wal(
        big_endian: bool,
        page_size: u32,
        salt: (u32, u32),
        frames: &[(u32, u32, Vec<u8>)],
    ) -> Vec<u8> {
        let magic = if big_endian { MAGIC_BE } else { MAGIC_LE };
        let mut out = Vec::new();
        for word in [magic, FORMAT_VERSION, page_size, 7, salt.0, salt.1] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        let mut sum = checksum(big_endian, (0, 0), &out);
        out.extend_from_slice(&sum.0.to_be_bytes());
        out.extend_from_slice(&sum.1.to_be_bytes());
        for (page_no, db_size, data) in frames {
            let mut head = Vec::new();
            head.extend_from_slice(&page_no.to_be_bytes());
            head.extend_from_slice(&db_size.to_be_bytes());
            sum = checksum(big_endian, sum, &head);
            sum = checksum(big_endian, sum, data);
            for word in [salt.0, salt.1, sum.0, sum.1] {
                head.extend_from_slice(&word.to_be_bytes());
            }
            out.extend_from_slice(&head);
            out.extend_from_slice(data);
        }
        out
    }

    /// The frames that encode `txns` (the last frame of each carries its db size).
    fn frames_of(txns: &[WalTransaction]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        for txn in txns {
            let last = txn.pages.len() - 1;
            for (i, (page_no, data)) in txn.pages.iter().enumerate() {
                let db_size = if i == last { txn.db_size } else { 0 };
                frames.push((*page_no, db_size, data.clone()));
            }
        }
        frames
    }

    /// A database with a mix of small, multi-page and overflow transactions.
    fn busy_db(page_size: Option<u32>) -> Db {
        let db = Db::new(page_size);
        for id in 1..=3 {
            db.insert(id, 10);
        }
        db.insert_many(100, 40, 700);
        db.insert(1000, 20_000);
        db.exec("UPDATE t SET v = x'0102' WHERE id = 2");
        db.exec("DELETE FROM t WHERE id BETWEEN 110 AND 130");
        db
    }

    /// Transactions after the schema: 3 inserts, 1 batch, 1 overflow row, update, delete.
    const BUSY_TXNS: usize = 7;

    fn check_replay(page_size: Option<u32>) {
        let db = busy_db(page_size);
        let image = db.image();
        let (outcome, txns) = scan_copy(&db, None);
        let (header, end) = continued(outcome);
        assert_eq!(header.page_size, page_size.unwrap_or(4096));
        assert!(!header.big_endian);
        // The schema change (CREATE TABLE) is a transaction of its own.
        assert_eq!(txns.len(), BUSY_TXNS + 1);
        assert_eq!(end, txns.last().unwrap().end);
        let frames: usize = txns.iter().map(|t| t.pages.len()).sum();
        assert_eq!(end.frames as usize, frames);
        assert!(txns.iter().all(|t| t.end.salt == header.salt));
        let replayed = replay(&image, header.page_size, &txns);
        assert_eq!(rows_of_image(&replayed), db.rows());
        assert_eq!(db.rows().len(), 3 + 40 - 21 + 1);
    }

    #[test]
    fn real_wal_replays_to_the_same_contents() {
        check_replay(None);
    }

    #[test]
    fn small_pages() {
        check_replay(Some(1024));
    }

    #[test]
    fn largest_pages_are_stored_as_65536() {
        check_replay(Some(65_536));
        let db = Db::new(Some(65_536));
        assert_eq!(
            u32::from_be_bytes(db.wal()[8..12].try_into().unwrap()),
            65_536
        );
    }

    #[test]
    fn resumes_after_a_position_without_rereading() {
        let db = busy_db(None);
        let image = db.image();
        let (outcome, first) = scan_copy(&db, None);
        let (_, end1) = continued(outcome);

        // Nothing new: the same position comes back, nothing is delivered.
        let (outcome, none) = scan_copy(&db, Some(end1));
        assert_eq!(continued(outcome).1, end1);
        assert!(none.is_empty());

        db.insert(2000, 50);
        db.insert_many(3000, 5, 100);
        db.exec("DELETE FROM t WHERE id < 100");
        let (outcome, second) = scan_copy(&db, Some(end1));
        let (_, end2) = continued(outcome);
        assert_eq!(second.len(), 3);
        assert_eq!(end2, second[2].end);
        let frames: usize = second.iter().map(|t| t.pages.len()).sum();
        assert_eq!(end2.frames as usize, end1.frames as usize + frames);
        let all: Vec<_> = first.iter().chain(&second).cloned().collect();
        assert_eq!(rows_of_image(&replay(&image, 4096, &all)), db.rows());

        // Earlier frames are not read again: damage to the first page goes unnoticed
        // when resuming, while the checked scan and a scan from the start stop there.
        let mut wal = db.wal();
        wal[HEADER_LEN + FRAME_HEADER_LEN + 100] ^= 1;
        let (outcome, resumed) = scan_bytes_with(&wal, Some(end1), Check::LastFrame);
        assert_eq!(continued(outcome).1, end2);
        assert_eq!(resumed, second);
        let (outcome, checked) = scan_bytes_with(&wal, Some(end1), Check::WholePrefix);
        assert!(matches!(outcome, WalScan::Reset { .. }));
        assert!(checked.is_empty());
        let (outcome, from_start) = scan_bytes(&wal, None);
        let (header, end) = continued(outcome);
        assert_eq!(end, header.start());
        assert!(from_start.is_empty());
    }

    #[test]
    fn a_position_the_wal_no_longer_holds_is_a_reset() {
        let db = busy_db(Some(512));
        let wal = db.wal();
        let (outcome, txns) = scan_bytes(&wal, None);
        let (header, _) = continued(outcome);
        let mid = txns[3].end;
        let reset = WalScan::Reset { header };
        let frame_len = FRAME_HEADER_LEN + 512;

        // Fewer frames than the position counts (a shorter copy of the same generation).
        let cut = HEADER_LEN + (mid.frames as usize - 1) * frame_len;
        assert_eq!(scan_bytes(&wal[..cut], Some(mid)), (reset.clone(), vec![]));
        assert_eq!(scan_bytes(&wal[..cut + frame_len - 1], Some(mid)).0, reset);
        assert_eq!(
            continued(scan_bytes(&wal[..cut + frame_len], Some(mid)).0).1,
            mid
        );
        // Another checksum at that frame, or for the header position.
        let other = WalPosition {
            checksum: (mid.checksum.0 ^ 1, mid.checksum.1),
            ..mid
        };
        assert_eq!(scan_bytes(&wal, Some(other)).0, reset);
        let other_start = WalPosition {
            checksum: (header.checksum.0, header.checksum.1 ^ 1),
            ..header.start()
        };
        assert_eq!(scan_bytes(&wal, Some(other_start)).0, reset);
        // Another salt.
        let other_salt = WalPosition {
            salt: (mid.salt.0.wrapping_add(1), mid.salt.1),
            ..mid
        };
        assert_eq!(scan_bytes(&wal, Some(other_salt)).0, reset);
        // Past the end of the WAL.
        let beyond = WalPosition {
            frames: u32::MAX,
            ..mid
        };
        assert_eq!(scan_bytes(&wal, Some(beyond)).0, reset);
        // The header position itself is always held.
        let (outcome, again) = scan_bytes(&wal, Some(header.start()));
        assert_eq!(continued(outcome).1, txns.last().unwrap().end);
        assert_eq!(again, txns);
    }

    /// After a power loss SQLite keeps only the frames whose chain is intact, and writes
    /// new frames over the ones it dropped with the same salts; a frame we had read may
    /// survive further on. Only the walk from the first frame sees the rewrite.
    #[test]
    fn frames_rewritten_behind_a_surviving_position_are_a_reset() {
        let page = |fill: u8| vec![fill; 512];
        let salt = (11, 22);
        let old: Vec<(u32, u32, Vec<u8>)> = vec![
            (1, 0, page(1)),
            (2, 2, page(2)), // commit: 2 pages
            (1, 0, page(3)),
            (2, 2, page(4)), // commit
        ];
        let wal = encode_wal(false, 512, salt, &old);
        let (_, txns) = scan_bytes(&wal, None);
        let position = txns[1].end;
        // SQLite lost frame 3 and wrote a one-frame transaction in its place; frame 4,
        // the one the position ends at, is still on disk.
        let mut rewritten = old.clone();
        rewritten[2] = (1, 2, page(9));
        let frame_len = FRAME_HEADER_LEN + 512;
        let mut damaged = encode_wal(false, 512, salt, &rewritten[..3]);
        damaged.extend_from_slice(&wal[HEADER_LEN + 3 * frame_len..]);
        assert_eq!(damaged.len(), wal.len());

        let (quick, _) = scan_bytes_with(&damaged, Some(position), Check::LastFrame);
        assert!(matches!(quick, WalScan::Continued { .. }), "{quick:?}");
        let (checked, delivered) = scan_bytes_with(&damaged, Some(position), Check::WholePrefix);
        assert!(matches!(checked, WalScan::Reset { .. }), "{checked:?}");
        assert!(delivered.is_empty());
        // What SQLite itself keeps: the first transaction and the rewritten one.
        let (_, kept) = scan_bytes(&damaged, None);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].pages, vec![(1, page(9))]);
    }

    #[test]
    fn truncating_checkpoint_then_write_is_a_reset() {
        let db = busy_db(None);
        let (outcome, _) = scan_copy(&db, None);
        let (old_header, end) = continued(outcome);

        db.checkpoint("TRUNCATE");
        assert_eq!(db.wal().len(), 0);
        assert_eq!(scan_copy(&db, Some(end)), (WalScan::Empty, vec![]));

        db.insert(5000, 30);
        let image = db.image();
        let (outcome, delivered) = scan_copy(&db, Some(end));
        let WalScan::Reset { header } = outcome else {
            panic!("expected Reset, got {outcome:?}");
        };
        assert!(delivered.is_empty());
        assert_ne!(header.salt, old_header.salt);
        assert_eq!(header.checkpoint_seq, old_header.checkpoint_seq + 1);

        let (outcome, txns) = scan_copy(&db, None);
        assert_eq!(continued(outcome).0, header);
        assert_eq!(txns.len(), 1);
        assert_eq!(rows_of_image(&replay(&image, 4096, &txns)), db.rows());
    }

    #[test]
    fn restarted_wal_ignores_the_previous_generation_behind_it() {
        let db = busy_db(None);
        let (outcome, _) = scan_copy(&db, None);
        let (old_header, end) = continued(outcome);
        let old_len = db.wal().len();

        // A passive checkpoint copies everything back; the next writer restarts the log
        // from the top with new salts, leaving the old frames behind the new ones.
        db.checkpoint("PASSIVE");
        db.insert(6000, 30);
        let image = db.image();
        assert_eq!(db.wal().len(), old_len);
        let (outcome, delivered) = scan_copy(&db, Some(end));
        assert!(matches!(outcome, WalScan::Reset { header } if header.salt != old_header.salt));
        assert!(delivered.is_empty());

        let (outcome, txns) = scan_copy(&db, None);
        let (_, end) = continued(outcome);
        assert_eq!(txns.len(), 1);
        assert_eq!(end, txns[0].end);
        assert_eq!(rows_of_image(&replay(&image, 4096, &txns)), db.rows());
    }

    #[test]
    fn a_torn_tail_delivers_only_complete_transactions() {
        let db = busy_db(Some(1024));
        let wal = db.wal();
        let (outcome, all) = scan_bytes(&wal, None);
        let (header, _) = continued(outcome);
        assert!(all.iter().any(|t| t.pages.len() > 3));
        let frame_len = FRAME_HEADER_LEN + 1024;
        let frames = (wal.len() - HEADER_LEN) / frame_len;
        assert_eq!(wal.len(), HEADER_LEN + frames * frame_len);

        for cut in 0..HEADER_LEN {
            assert_eq!(scan_bytes(&wal[..cut], None), (WalScan::Empty, vec![]));
        }
        for complete in 0..=frames {
            let at = HEADER_LEN + complete * frame_len;
            let expected: Vec<_> = all
                .iter()
                .filter(|t| t.end.frames as usize <= complete)
                .cloned()
                .collect();
            let end = expected.last().map_or(header.start(), |t| t.end);
            for extra in [0, 1, FRAME_HEADER_LEN, frame_len / 2, frame_len - 1] {
                if at + extra > wal.len() {
                    continue;
                }
                let (outcome, got) = scan_bytes(&wal[..at + extra], None);
                assert_eq!(
                    outcome,
                    WalScan::Continued { header, end },
                    "cut {}",
                    at + extra
                );
                assert_eq!(got, expected, "cut {}", at + extra);
            }
        }
    }

    #[test]
    fn every_single_bit_flip_stops_the_scan_at_its_frame() {
        // Small, so that scanning once per bit stays quick: a few transactions, one of
        // them spanning several frames.
        let db = Db::new(Some(512));
        db.insert(1, 10);
        db.insert_many(10, 3, 300);
        db.exec("UPDATE t SET v = x'00' WHERE id = 1");
        let wal = db.wal();
        let (outcome, all) = scan_bytes(&wal, None);
        let (header, _) = continued(outcome);
        assert_eq!(all.len(), 4);
        assert!(all.iter().any(|t| t.pages.len() > 1));
        let frame_len = FRAME_HEADER_LEN + 512;
        let mut flipped = wal.clone();
        for bit in 0..wal.len() * 8 {
            let byte = bit / 8;
            flipped[byte] ^= 1 << (bit % 8);
            let (outcome, got) = scan_bytes(&flipped, None);
            flipped[byte] = wal[byte];
            if byte < HEADER_LEN {
                assert_eq!((outcome, got), (WalScan::Empty, vec![]), "bit {bit}");
                continue;
            }
            let frame = (byte - HEADER_LEN) / frame_len;
            let kept = all.iter().take_while(|t| t.end.frames as usize <= frame);
            let kept: Vec<_> = kept.cloned().collect();
            let end = kept.last().map_or(header.start(), |t| t.end);
            assert_eq!(outcome, WalScan::Continued { header, end }, "bit {bit}");
            assert_eq!(got, kept, "bit {bit}");
        }
    }

    #[test]
    fn sqlite_reads_our_encoding_in_both_byte_orders() {
        let db = busy_db(Some(1024));
        let image = db.image();
        let (_, txns) = scan_bytes(&db.wal(), None);
        for big_endian in [false, true] {
            let wal = encode_wal(big_endian, 1024, (0xdead_beef, 42), &frames_of(&txns));
            let header = parse_header(&wal).unwrap();
            assert_eq!(header.big_endian, big_endian);
            assert_eq!(header.checkpoint_seq, 7);
            let (outcome, ours) = scan_bytes(&wal, None);
            assert_eq!(continued(outcome).1.frames, txns.last().unwrap().end.frames);
            assert_eq!(ours.len(), txns.len());
            for (a, b) in ours.iter().zip(&txns) {
                assert_eq!((&a.pages, a.db_size), (&b.pages, b.db_size));
            }
            // SQLite's own recovery accepts the checksums we computed.
            assert_eq!(rows_with_wal(&image, &wal), db.rows());
        }
    }

    #[test]
    fn big_endian_wal_built_by_hand() {
        let page = |b: u8| vec![b; 512];
        let frames = [
            (1, 0, page(1)),
            (2, 2, page(2)),
            (3, 3, page(3)),
            (1, 3, page(4)),
            (5, 0, page(5)),
        ];
        let wal = encode_wal(true, 512, (1, 2), &frames);
        assert_eq!(&wal[..4], &[0x37, 0x7f, 0x06, 0x83]);
        let (outcome, txns) = scan_bytes(&wal, None);
        let (header, end) = continued(outcome);
        assert!(header.big_endian);
        assert_eq!((header.page_size, header.salt), (512, (1, 2)));
        assert_eq!(end.frames, 4);
        let summary: Vec<_> = txns
            .iter()
            .map(|t| {
                (
                    t.pages.iter().map(|p| (p.0, p.1[0])).collect::<Vec<_>>(),
                    t.db_size,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (vec![(1, 1), (2, 2)], 2),
                (vec![(3, 3)], 3),
                (vec![(1, 4)], 3)
            ]
        );
        // The same frames with little-endian checksums give other checksums.
        let le = encode_wal(false, 512, (1, 2), &frames);
        assert_ne!(parse_header(&le).unwrap().checksum, header.checksum);
        // Resuming in the middle works in this byte order too.
        let (_, rest) = scan_bytes(&wal, Some(txns[0].end));
        assert_eq!(rest, txns[1..]);
    }

    #[test]
    fn checksum_golden_values() {
        let le = [1, 0, 0, 0, 2, 0, 0, 0];
        let be = [0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(checksum(false, (0, 0), &le), (1, 3));
        assert_eq!(checksum(true, (0, 0), &be), (1, 3));
        assert_eq!(checksum(true, (5, 7), &be), (13, 22));
        assert_eq!(checksum(false, (u32::MAX, 1), &le), (1, 4));
        let two = [be, be].concat();
        assert_eq!(checksum(true, (0, 0), &two), (1 + 3 + 1, 3 + 2 + 5));
        // A header SQLite wrote: magic LE, version, 4096, seq 0, salts, then checksums.
        let wal = encode_wal(false, 4096, (0x1234_5678, 0x9abc_def0), &[]);
        assert_eq!(wal.len(), HEADER_LEN);
        assert_eq!(
            parse_header(&wal),
            Some(WalHeader {
                page_size: 4096,
                checkpoint_seq: 7,
                salt: (0x1234_5678, 0x9abc_def0),
                checksum: checksum(false, (0, 0), &wal[..24]),
                big_endian: false,
            })
        );
    }

    #[test]
    fn invalid_headers_are_empty() {
        let valid = encode_wal(false, 512, (1, 2), &[(1, 1, vec![0; 512])]);
        assert!(parse_header(&valid).is_some());
        assert_eq!(parse_header(&valid[..31]), None);
        // Every field is checked, even where the checksum is recomputed to match.
        let rewrite = |at: usize, value: u32| {
            let mut h = valid[..HEADER_LEN].to_vec();
            h[at..at + 4].copy_from_slice(&value.to_be_bytes());
            let sum = checksum(false, (0, 0), &h[..H_CHECKSUM]);
            h[H_CHECKSUM..H_CHECKSUM + 4].copy_from_slice(&sum.0.to_be_bytes());
            h[H_CHECKSUM + 4..].copy_from_slice(&sum.1.to_be_bytes());
            parse_header(&h)
        };
        assert!(rewrite(H_MAGIC, 0x377f_0684).is_none());
        assert!(rewrite(H_VERSION, FORMAT_VERSION + 1).is_none());
        for size in [0, 1, 256, 511, 513, 1000, 131_072] {
            assert!(rewrite(H_PAGE_SIZE, size).is_none(), "page size {size}");
        }
        for size in [512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536] {
            assert_eq!(rewrite(H_PAGE_SIZE, size).unwrap().page_size, size);
        }
    }

    #[test]
    fn missing_or_short_files_are_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-wal");
        assert_eq!(scan_file(&path, None), (WalScan::Empty, vec![]));
        fs::write(&path, [0u8; 31]).unwrap();
        assert_eq!(scan_file(&path, None), (WalScan::Empty, vec![]));
        let header = encode_wal(false, 512, (1, 2), &[]);
        fs::write(&path, &header).unwrap();
        let (outcome, txns) = scan_file(&path, None);
        let (header, end) = continued(outcome);
        assert_eq!(end, header.start());
        assert!(txns.is_empty());
    }

    #[test]
    fn io_errors_and_callback_errors_are_returned() {
        let dir = tempfile::tempdir().unwrap();
        let err = scan(dir.path(), None, Check::LastFrame, |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");

        let frames: Vec<_> = (1..=4).map(|p| (p, p, vec![p as u8; 512])).collect();
        let path = dir.path().join("db-wal");
        fs::write(&path, encode_wal(false, 512, (1, 2), &frames)).unwrap();
        let mut calls = 0;
        let err = scan(&path, None, Check::WholePrefix, |_| {
            calls += 1;
            match calls {
                2 => Err(Error::NotFound("stop".into())),
                _ => Ok(()),
            }
        })
        .unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(calls, 2);
    }

    #[test]
    fn frames_with_page_number_zero_are_invalid() {
        let frames = [(1, 1, vec![1; 512]), (0, 1, vec![2; 512])];
        let (outcome, txns) = scan_bytes(&encode_wal(false, 512, (1, 2), &frames), None);
        assert_eq!(continued(outcome).1.frames, 1);
        assert_eq!(txns.len(), 1);
    }

    fn arb_position() -> impl Strategy<Value = Option<WalPosition>> {
        proptest::option::of(
            (any::<(u32, u32)>(), 0u32..8, any::<(u32, u32)>()).prop_map(
                |(salt, frames, checksum)| WalPosition {
                    salt,
                    frames,
                    checksum,
                },
            ),
        )
    }

    /// A valid WAL of 512-byte pages: frames with small page numbers, some commits.
    fn arb_wal() -> impl Strategy<Value = (Vec<u8>, bool)> {
        let frame = (1u32..6, prop::bool::weighted(0.4), any::<u8>());
        (any::<bool>(), proptest::collection::vec(frame, 0..8)).prop_map(|(be, frames)| {
            let frames: Vec<_> = frames
                .into_iter()
                .map(|(p, commit, b)| (p, if commit { 5 } else { 0 }, vec![b; 512]))
                .collect();
            (encode_wal(be, 512, (3, 4), &frames), be)
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                       start in arb_position()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db-wal");
            fs::write(&path, &bytes).unwrap();
            for check in [Check::LastFrame, Check::WholePrefix] {
                let outcome = scan(&path, start, check, |_| Ok(())).unwrap();
                if parse_header(&bytes).is_none() {
                    prop_assert_eq!(outcome, WalScan::Empty);
                }
            }
        }

        #[test]
        fn a_valid_header_with_arbitrary_frames_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..3000),
            start in arb_position(),
        ) {
            let mut bytes = encode_wal(false, 512, (1, 2), &[]);
            bytes.extend_from_slice(&tail);
            for check in [Check::LastFrame, Check::WholePrefix] {
                let _ = scan_bytes_with(&bytes, start, check);
            }
        }

        #[test]
        fn damaged_wals_deliver_a_prefix(
            (wal, _) in arb_wal(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..3),
            keep in any::<prop::sample::Index>(),
            start in arb_position(),
        ) {
            let (_, all) = scan_bytes(&wal, None);
            let mut bad = wal.clone();
            for (at, xor) in damage {
                let at = at.index(bad.len());
                bad[at] ^= xor;
            }
            bad.truncate(keep.index(bad.len() + 1));
            let (_, got) = scan_bytes(&bad, None);
            prop_assert!(got.len() <= all.len());
            prop_assert_eq!(&got[..], &all[..got.len()]);
            for check in [Check::LastFrame, Check::WholePrefix] {
                let _ = scan_bytes_with(&bad, start, check);
            }
        }
    }
}

#[cfg(test)]
mod located_tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// A transaction's frames read back by location are the ones the scan proved; a
    /// page changed since (a WAL restarted and written over) is refused, not shipped.
    #[test]
    fn frames_read_back_by_location_are_proved_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
             INSERT INTO t VALUES (1, zeroblob(20000));",
        )
        .unwrap();
        let wal = dir.path().join("db-wal");
        let mut txns = Vec::new();
        scan(&wal, None, Check::LastFrame, |txn| {
            txns.push(txn);
            Ok(())
        })
        .unwrap();
        let txn = txns.last().unwrap();
        let file = File::open(&wal).unwrap();
        let (mut page_nos, mut data) = (Vec::new(), Vec::new());
        read_located(
            &file,
            &wal,
            &txn.located.header,
            &txn.located.frames,
            &mut page_nos,
            &mut data,
        )
        .unwrap();
        let held: Vec<u32> = txn.pages.iter().map(|(p, _)| *p).collect();
        assert_eq!(page_nos, held);
        let bytes: Vec<u8> = txn.pages.iter().flat_map(|(_, d)| d.clone()).collect();
        assert_eq!(data, bytes);
        // Change one byte of the last frame's page, leaving its header as it was.
        let last = txn.located.frames.last().unwrap();
        let at = txn.located.header.frame_offset(last.index) + FRAME_HEADER_LEN as u64 + 100;
        let writer = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
        writer.write_all_at(&[0xAB], at).unwrap();
        let err = read_located(
            &file,
            &wal,
            &txn.located.header,
            &txn.located.frames,
            &mut page_nos,
            &mut data,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("changed while it was being shipped"),
            "{err}"
        );
    }
}

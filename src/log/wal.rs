//! The open-segment file: frames appended as transactions arrive, each record carrying a
//! checksum chained from the one before, so that recovery can find exactly where valid
//! data ends after a crash.
//!
//! File `open-<start frame:020>.wal`, little-endian, version 3:
//!
//! * header (40 bytes): magic `WVOPENLG`, version u16, reserved u16 (zero), page size
//!   u32, start frame u64, salt u32, lineage base u64 (the checksum of the database the
//!   segment's first transaction applies to; 0: it starts a new lineage), CRC-32C of
//!   bytes 0..36.
//! * records: frame number u64, page number u32, size after u32 (0 unless a commit),
//!   commit timestamp u64 (ms; 0 unless a commit), database checksum u64 (after the
//!   commit; 0 unless a commit), frame checksum u32, chain u32, page.
//!   The frame checksum is the one the sealed segment stores for this frame (it covers
//!   the frame number, page number, size after and the page), so each page is checksummed
//!   once for both files. `chain` is CRC-32C over bytes 0..36 of the record, seeded with
//!   the previous record's chain (the first record's seed is the header CRC, which covers
//!   the random salt). A record from another file or another incarnation cannot continue
//!   a chain.
//!
//! Recovery keeps the longest prefix of records with consecutive frame numbers and valid
//! chains, then drops everything after the last commit (a torn transaction) and truncates
//! the file there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::format::layout;
use crate::storage::fsutil::{fsync_dir, read_full, start_writeback};

const MAGIC: [u8; 8] = *b"WVOPENLG";
const VERSION: u16 = 3;
pub(crate) const HEADER_LEN: usize = 40;
pub(crate) const RECORD_HEAD_LEN: usize = 40;
/// Where the header CRC sits (it covers the bytes before it).
const HEADER_CRC_AT: usize = 36;
/// Where a record's frame checksum and chain sit.
const RECORD_CRC_AT: usize = 32;
const RECORD_CHAIN_AT: usize = 36;

/// One recovered or appended frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalFrame {
    pub frame_no: u64,
    pub page_no: u32,
    pub size_after: u32,
    pub commit_ts: u64,
    /// The database checksum after the commit (0 unless a commit).
    pub checksum: u64,
    pub page: Vec<u8>,
}

/// The name of the file whose first frame is `start`.
pub(crate) fn file_name(start: u64) -> String {
    format!("open-{start:020}.wal")
}

/// The start frame named by a file name, if it is one of ours.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("open-")?.strip_suffix(".wal")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// Appended records wait in memory; past this many bytes the syncer is asked to write
/// them out (without an fsync), so an append costs a copy, not a system call.
pub(crate) const WRITE_OUT_AT: usize = 1 << 20;
/// Past this many bytes (an eighth of the memory budget, at most 32 MiB) the append itself
/// writes them out: back-pressure, so memory stays bounded when the disk cannot keep up.
fn write_inline_at() -> usize {
    crate::budget::share(8).min(32 << 20)
}

/// An open-segment file and the records appended to it but not yet written out.
#[derive(Debug)]
pub(crate) struct WalBuffer {
    pending: Mutex<Vec<u8>>,
    /// An emptied buffer kept for reuse, so steady appends do not fault in fresh memory.
    spare: Mutex<Vec<u8>>,
    /// Held while writing, so that buffers reach the file in append order.
    file: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    file: File,
    /// The directory, until its entry for this file has been fsynced.
    dir: Option<PathBuf>,
    /// Bytes written to the file so far.
    len: u64,
    /// Bytes whose writeback has been started ([`SyncTarget::write_ahead`]).
    started: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl WalBuffer {
    /// Writes what is pending to the file (no fsync).
    fn write_out(&self) -> io::Result<()> {
        let mut file = lock(&self.file);
        let mut taken = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return Ok(());
            }
            let spare = std::mem::take(&mut *lock(&self.spare));
            std::mem::replace(&mut *pending, spare)
        };
        file.file.write_all(&taken)?;
        file.len += taken.len() as u64;
        taken.clear();
        *lock(&self.spare) = taken;
        Ok(())
    }
}

/// The append side of an open-segment file.
#[derive(Debug)]
pub(crate) struct WalFile {
    path: PathBuf,
    buffer: Arc<WalBuffer>,
    chain: u32,
}

impl WalFile {
    /// Creates the file for a segment starting at `start`. It is not fsynced here: the
    /// syncer fsyncs it, and its directory, before any frame in it counts as written.
    pub(crate) fn create(
        dir: &Path,
        start: u64,
        page_size: u32,
        salt: u32,
        base: u64,
    ) -> Result<Self> {
        let path = dir.join(file_name(start));
        let io_err = |e| Error::io(format!("creating {}", path.display()), e);
        let header = encode_header(page_size, start, salt, base);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        file.write_all(&header).map_err(io_err)?;
        let chain = le_u32(&header[HEADER_CRC_AT..]);
        let buffer = WalBuffer {
            pending: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            file: Mutex::new(FileState {
                file,
                dir: Some(dir.to_path_buf()),
                len: HEADER_LEN as u64,
                started: 0,
            }),
        };
        Ok(Self {
            path,
            buffer: Arc::new(buffer),
            chain,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for the syncer.
    pub(crate) fn sync_target(&self) -> SyncTarget {
        SyncTarget {
            buffer: self.buffer.clone(),
        }
    }

    /// Appends frames to the in-memory buffer. Returns true when enough is pending that
    /// the syncer should write it out.
    pub(crate) fn append(&mut self, frames: &[WalFrameRef<'_>]) -> Result<bool> {
        let pending_len = {
            let mut pending = lock(&self.buffer.pending);
            for f in frames {
                let mut head = [0u8; RECORD_HEAD_LEN];
                head[..8].copy_from_slice(&f.frame_no.to_le_bytes());
                head[8..12].copy_from_slice(&f.page_no.to_le_bytes());
                head[12..16].copy_from_slice(&f.size_after.to_le_bytes());
                head[16..24].copy_from_slice(&f.commit_ts.to_le_bytes());
                head[24..32].copy_from_slice(&f.checksum.to_le_bytes());
                head[RECORD_CRC_AT..RECORD_CHAIN_AT].copy_from_slice(&f.crc.to_le_bytes());
                self.chain = crc32c::crc32c_append(self.chain, &head[..RECORD_CHAIN_AT]);
                head[RECORD_CHAIN_AT..].copy_from_slice(&self.chain.to_le_bytes());
                pending.extend_from_slice(&head);
                pending.extend_from_slice(f.page);
            }
            pending.len()
        };
        if pending_len >= write_inline_at() {
            self.buffer
                .write_out()
                .map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))?;
        }
        Ok(pending_len >= WRITE_OUT_AT)
    }

    /// Writes out what is buffered (no fsync) and frees the buffers: called on a file
    /// that is sealed, which only waits for its fsync from now on.
    pub(crate) fn release_buffers(&self) -> Result<()> {
        self.buffer
            .write_out()
            .map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))?;
        *lock(&self.buffer.pending) = Vec::new();
        *lock(&self.buffer.spare) = Vec::new();
        Ok(())
    }

    /// Writes out and fsyncs what was appended.
    #[cfg(test)]
    pub(crate) fn sync(&self) -> Result<()> {
        self.sync_target()
            .sync()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }
}

/// What the syncer makes durable: a file's buffered records, its data, and (the first
/// time) its directory entry.
#[derive(Debug, Clone)]
pub(crate) struct SyncTarget {
    buffer: Arc<WalBuffer>,
}

impl SyncTarget {
    /// Writes out what is pending and gets ahead of the next fsync, so that a waiter's
    /// fsync has less left to do: starts the writeback of what was written (Linux), and
    /// fsyncs the directory entry of a new file. Only the syncer calls it, between its
    /// fsyncs.
    pub(crate) fn write_ahead(&self) -> io::Result<()> {
        self.buffer.write_out()?;
        let (file, dir, range) = {
            let mut state = lock(&self.buffer.file);
            let range = state.started..state.len;
            state.started = state.len;
            (state.file.try_clone()?, state.dir.clone(), range)
        };
        start_writeback(&file, range)?;
        if let Some(dir) = dir {
            fsync_dir(&dir)?;
            // Cleared only once fsynced: a sync that finds it set (and not yet done by
            // this one) fsyncs it again rather than report `Written` too early.
            lock(&self.buffer.file).dir = None;
        }
        Ok(())
    }

    /// Writes out what is pending, then fsyncs the file (outside the locks, so appends
    /// and write-outs go on meanwhile) and, the first time, its directory.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.buffer.write_out()?;
        let (file, dir) = {
            let mut state = lock(&self.buffer.file);
            (state.file.try_clone()?, state.dir.take())
        };
        file.sync_data()?;
        if let Some(dir) = dir {
            fsync_dir(&dir)?;
        }
        Ok(())
    }
}

/// A frame to append, borrowing its page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalFrameRef<'a> {
    pub frame_no: u64,
    pub page_no: u32,
    pub size_after: u32,
    pub commit_ts: u64,
    /// The database checksum after the commit (0 unless a commit).
    pub checksum: u64,
    /// The frame's checksum as the sealed segment stores it ([`frame_crc`]).
    pub crc: u32,
    pub page: &'a [u8],
}

/// The checksum the sealed segment stores for a frame, which the record reuses.
pub(crate) fn frame_crc(frame_no: u64, page_no: u32, size_after: u32, page: &[u8]) -> u32 {
    layout::frame_crc(&layout::frame_header(frame_no, page_no, size_after), page)
}

fn encode_header(page_size: u32, start: u64, salt: u32, base: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&page_size.to_le_bytes());
    h[16..24].copy_from_slice(&start.to_le_bytes());
    h[24..28].copy_from_slice(&salt.to_le_bytes());
    h[28..36].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// What recovery found in one file: how many committed frames it keeps (read them back
/// with [`Recovered::for_each_frame`]), and what was dropped. Frames are not held in
/// memory: a file may hold a snapshot of any size.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub start: u64,
    pub page_size: u32,
    /// The lineage base the file's segment builds on (0: a new lineage).
    pub base: u64,
    /// Committed frames kept, from `start` on.
    pub kept: u64,
    /// Frames dropped after the last commit (a torn transaction).
    pub dropped: u64,
}

impl Recovered {
    /// The last frame kept, if any.
    pub(crate) fn last_frame_no(&self) -> Option<u64> {
        (self.kept > 0).then(|| self.start + self.kept - 1)
    }

    /// Reads the kept frames of the file at `path` (as [`recover`] left it) back in
    /// order, one at a time.
    pub(crate) fn for_each_frame(
        &self,
        path: &Path,
        mut f: impl FnMut(WalFrame) -> Result<()>,
    ) -> Result<()> {
        let io_err = |e| Error::io(format!("reading {}", path.display()), e);
        let file = File::open(path).map_err(io_err)?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut skip = [0u8; HEADER_LEN];
        reader.read_exact(&mut skip).map_err(io_err)?;
        let mut head = [0u8; RECORD_HEAD_LEN];
        for position in 0..self.kept {
            let mut page = vec![0u8; self.page_size as usize];
            reader
                .read_exact(&mut head)
                .and_then(|()| reader.read_exact(&mut page))
                .map_err(io_err)?;
            let frame = decode_record(&head, page);
            let crc = frame_crc(frame.frame_no, frame.page_no, frame.size_after, &frame.page);
            if head[RECORD_CRC_AT..RECORD_CHAIN_AT] != crc.to_le_bytes() {
                let reason = crate::FormatError::Checksum {
                    part: crate::Part::Frame(u32::try_from(position).unwrap_or(u32::MAX)),
                    offset: 0,
                };
                return Err(Error::corrupt(path.display(), reason));
            }
            f(frame)?;
        }
        Ok(())
    }
}

fn decode_record(head: &[u8; RECORD_HEAD_LEN], page: Vec<u8>) -> WalFrame {
    WalFrame {
        frame_no: le_u64(&head[..8]),
        page_no: le_u32(&head[8..12]),
        size_after: le_u32(&head[12..16]),
        commit_ts: le_u64(&head[16..24]),
        checksum: le_u64(&head[24..32]),
        page,
    }
}

/// Reads a file, keeping its committed frames, and truncates it after the last commit.
/// `Ok(None)` for a file no longer than a header that is damaged: a crash while creating
/// it, before any frame could be appended. A damaged header with frames after it is
/// corruption.
pub(crate) fn recover(path: &Path) -> Result<Option<Recovered>> {
    let io_err = |e| Error::io(format!("recovering {}", path.display()), e);
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(&mut reader, &mut header).map_err(io_err)?;
    let decoded = (got == HEADER_LEN)
        .then(|| decode_header(&header))
        .flatten();
    let Some((page_size, start, base, chain)) = decoded else {
        if file_len <= HEADER_LEN as u64 {
            return Ok(None);
        }
        if header[..8] == MAGIC && u16::from_le_bytes([header[8], header[9]]) == 2 {
            // Left by a crash of a build before lineage: its frames carry no checksums,
            // were never durable, and are still in the database the replicator reads,
            // which ships them again with a snapshot.
            tracing::warn!(file = %path.display(), "dropping an open-segment file of version 2 (before lineage)");
            return Ok(None);
        }
        let reason = crate::FormatError::BadMagic(crate::Part::Header);
        return Err(Error::corrupt(path.display(), reason));
    };
    let mut recovered = Recovered {
        start,
        page_size,
        base,
        kept: 0,
        dropped: 0,
    };
    let mut chain = chain;
    let mut committed_len = HEADER_LEN as u64;
    let mut pending = 0u64;
    let mut head = [0u8; RECORD_HEAD_LEN];
    let mut page = vec![0u8; page_size as usize];
    loop {
        if read_full(&mut reader, &mut head).map_err(io_err)? < RECORD_HEAD_LEN
            || read_full(&mut reader, &mut page).map_err(io_err)? < page.len()
        {
            break;
        }
        let frame = decode_record(&head, std::mem::take(&mut page));
        let next_chain = crc32c::crc32c_append(chain, &head[..RECORD_CHAIN_AT]);
        let crc = frame_crc(frame.frame_no, frame.page_no, frame.size_after, &frame.page);
        let expected_no = start + recovered.kept + pending;
        page = frame.page;
        if head[RECORD_CHAIN_AT..] != next_chain.to_le_bytes()
            || head[RECORD_CRC_AT..RECORD_CHAIN_AT] != crc.to_le_bytes()
            || frame.frame_no != expected_no
            || frame.page_no == 0
        {
            break;
        }
        chain = next_chain;
        pending += 1;
        if frame.size_after != 0 {
            recovered.kept += pending;
            pending = 0;
            committed_len = HEADER_LEN as u64
                + recovered.kept * (RECORD_HEAD_LEN as u64 + u64::from(page_size));
        }
    }
    recovered.dropped = pending;
    // Frames read back may exist only in the page cache (the process crashed, not the
    // machine): fsync them before anything counts them as written.
    let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
    if file_len != committed_len {
        file.set_len(committed_len).map_err(io_err)?;
    }
    file.sync_all().map_err(io_err)?;
    Ok(Some(recovered))
}

/// Page size, start frame, lineage base and header CRC (the chain's seed) of a valid
/// header.
fn decode_header(h: &[u8; HEADER_LEN]) -> Option<(u32, u64, u64, u32)> {
    let crc = le_u32(&h[HEADER_CRC_AT..]);
    let ok = h[..8] == MAGIC
        && crc32c::crc32c(&h[..HEADER_CRC_AT]) == crc
        && u16::from_le_bytes([h[8], h[9]]) == VERSION
        && h[10..12] == [0, 0];
    let page_size = le_u32(&h[12..16]);
    let start = le_u64(&h[16..24]);
    (ok && start > 0).then_some((page_size, start, le_u64(&h[28..36]), crc))
}

/// Deletes a file whose frames are durable elsewhere.
pub(crate) fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %path.display(), error = %e, "could not remove a durable open-segment file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(no: u64, page_no: u32, size: u32, byte: u8) -> (u64, u32, u32, Vec<u8>) {
        (no, page_no, size, vec![byte; 512])
    }

    fn write(dir: &Path, frames: &[(u64, u32, u32, Vec<u8>)]) -> PathBuf {
        let mut w = WalFile::create(dir, 10, 512, 77, 0).unwrap();
        let refs: Vec<_> = frames
            .iter()
            .map(|(n, p, s, d)| WalFrameRef {
                frame_no: *n,
                page_no: *p,
                size_after: *s,
                commit_ts: u64::from(*s) * 10,
                checksum: if *s == 0 { 0 } else { (1 << 63) | *n },
                crc: frame_crc(*n, *p, *s, d),
                page: d,
            })
            .collect();
        w.append(&refs).unwrap();
        w.sync().unwrap();
        w.path().to_path_buf()
    }

    #[test]
    fn recovery_keeps_committed_frames_and_drops_a_torn_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let frames = [
            frame(10, 1, 0, 1),
            frame(11, 2, 2, 2),
            frame(12, 3, 0, 3),
            frame(13, 1, 0, 4),
        ];
        let path = write(dir.path(), &frames);
        let r = recover(&path).unwrap().unwrap();
        let kept = kept_frames(&r, &path);
        assert_eq!(
            kept.iter().map(|f| f.frame_no).collect::<Vec<_>>(),
            [10, 11]
        );
        assert_eq!((r.dropped, kept[1].commit_ts), (2, 20));
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            (HEADER_LEN + 2 * (RECORD_HEAD_LEN + 512)) as u64
        );
    }

    fn kept_frames(r: &Recovered, path: &Path) -> Vec<WalFrame> {
        let mut frames = Vec::new();
        r.for_each_frame(path, |f| {
            frames.push(f);
            Ok(())
        })
        .unwrap();
        frames
    }

    #[test]
    fn every_cut_and_every_flip_keeps_a_committed_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let frames = [frame(10, 1, 0, 1), frame(11, 2, 2, 2), frame(12, 3, 3, 3)];
        let path = write(dir.path(), &frames);
        let good = fs::read(&path).unwrap();
        let record = RECORD_HEAD_LEN + 512;
        for cut in HEADER_LEN..good.len() {
            fs::write(&path, &good[..cut]).unwrap();
            let kept = recover(&path).unwrap().unwrap().kept as usize;
            let whole = (cut - HEADER_LEN) / record;
            assert_eq!(
                kept,
                if whole >= 3 {
                    3
                } else if whole >= 2 {
                    2
                } else {
                    0
                },
                "cut {cut}"
            );
        }
        for at in HEADER_LEN..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            fs::write(&path, &bad).unwrap();
            let kept = recover(&path).unwrap().unwrap().kept as usize;
            let damaged_record = (at - HEADER_LEN) / record;
            assert!(kept <= damaged_record, "flip at {at} kept {kept} frames");
        }
    }

    #[test]
    fn a_file_cut_inside_its_header_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(5));
        fs::write(&path, b"WVOPEN").unwrap();
        assert!(recover(&path).unwrap().is_none());
        fs::write(&path, vec![7u8; 100]).unwrap();
        assert!(recover(&path).unwrap_err().is_corrupt());
    }
}

//! The frame allocator: frame numbers that are never handed out twice, even across
//! crashes, with no I/O on the hot path.
//!
//! Numbers are handed out from blocks. Before the first number of a block is handed out,
//! the block's end is made durable in a small state file (temp file, fsync, rename,
//! directory fsync). After a crash or restart the allocator resumes at the end of the last
//! reserved block, so a number handed out before the crash can never be handed out again;
//! the numbers of that block that were never used become a gap. Gaps are recorded in the
//! same file, so that a reader can tell a gap (numbers that were never used) from lost
//! data (numbers that were used but are missing).
//!
//! State file `ALLOCATOR` (little-endian, version 1): magic `WVALLOC1` (8 bytes), version
//! u16, reserved u16 (zero), gap count u32, reserved end u64, then `count` gaps of two
//! u64 (`start`, `end`, end exclusive), then a CRC-32C of everything before it.

use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, FormatError, InvalidInput, Part, Result};
use crate::storage::fsutil::{create_dir_durable, write_atomic};

/// Frame numbers reserved per block unless a request needs more.
pub const DEFAULT_BLOCK_SIZE: u64 = 4096;

const FILE: &str = "ALLOCATOR";
const MAGIC: [u8; 8] = *b"WVALLOC1";
const VERSION: u16 = 1;
const FIXED_LEN: usize = 24;
/// Gaps kept in the state file: the newest 1024 (one is recorded per unclean restart).
/// Older ones are dropped; they concern frames long since stored or given up.
const MAX_GAPS: usize = 1024;

/// Hands out monotonic frame numbers for one log. Owned by that log's single writer.
#[derive(Debug)]
pub struct FrameAllocator {
    dir: PathBuf,
    next: u64,
    /// Numbers below this are reserved durably and may be handed out.
    reserved_end: u64,
    block_size: u64,
    gaps: Vec<Range<u64>>,
    /// Reserve the next block in the background (see [`reserve_ahead`](Self::reserve_ahead)).
    ahead_enabled: bool,
    /// The reservation being made in the background, if any.
    ahead: Option<Ahead>,
}

/// A reservation a background thread is making durable: its numbers may be handed out
/// only once the thread has returned `Ok`.
#[derive(Debug)]
struct Ahead {
    end: u64,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl FrameAllocator {
    /// Opens the allocator whose state lives in `dir` (created if missing), resuming after
    /// the last reserved block. A fresh allocator starts at frame 1.
    pub fn open(dir: impl AsRef<Path>, block_size: u64) -> Result<Self> {
        if block_size == 0 {
            return Err(
                InvalidInput::Config("allocator block size must be at least 1".into()).into(),
            );
        }
        let dir = dir.as_ref().to_path_buf();
        let (reserved_end, gaps) = match fs::read(dir.join(FILE)) {
            Ok(bytes) => decode(&bytes).map_err(|e| Error::corrupt(dir.join(FILE).display(), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (1, Vec::new()),
            Err(e) => {
                return Err(Error::io(
                    format!("reading {}", dir.join(FILE).display()),
                    e,
                ))
            }
        };
        Ok(Self {
            dir,
            next: reserved_end,
            reserved_end,
            block_size,
            gaps,
            ahead_enabled: false,
            ahead: None,
        })
    }

    /// Makes the next block's reservation on a background thread once half the current
    /// block is used, so that an append that crosses into it finds it durable already
    /// instead of waiting for two fsyncs. Numbers from a block are still handed out only
    /// once its reservation is durable. The cost: after a crash, the numbers resume after
    /// the block reserved ahead, so the gap can be up to one block longer.
    pub fn reserve_ahead(mut self) -> Self {
        self.ahead_enabled = true;
        self
    }

    /// The next frame number [`allocate`](Self::allocate) will hand out; consumes nothing.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Hands out `count` consecutive frame numbers. Touches the disk only when the current
    /// block runs out, and then makes the new reservation durable before returning.
    pub fn allocate(&mut self, count: u64) -> Result<Range<u64>> {
        let end = self
            .next
            .checked_add(count)
            .ok_or_else(|| overflow(self.next, count))?;
        if end > self.reserved_end {
            self.reserve(end)?;
        }
        let range = self.next..end;
        self.next = end;
        if self.ahead_enabled
            && self.ahead.is_none()
            && self.reserved_end - end <= self.block_size / 2
        {
            self.start_ahead();
        }
        Ok(range)
    }

    /// Records that the numbers in `range` were handed out but will never be used (for
    /// example, a torn transaction dropped during recovery).
    pub fn record_gap(&mut self, range: Range<u64>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        if range.end > self.next {
            return Err(InvalidInput::FrameNo {
                frame_no: range.end - 1,
                reason: "a gap cannot include frame numbers not yet handed out",
            }
            .into());
        }
        // The file must not be written by two threads at once, and the gap list
        // written now must name the end a finished reservation ahead made.
        self.finish_ahead()?;
        self.gaps.push(range);
        self.persist(self.reserved_end)
    }

    /// Gaps recorded so far (the newest 1024), oldest first.
    pub fn gaps(&self) -> &[Range<u64>] {
        &self.gaps
    }

    /// True when `frame_no` lies in a recorded gap.
    pub fn is_gap(&self, frame_no: u64) -> bool {
        self.gaps.iter().any(|g| g.contains(&frame_no))
    }

    /// Reserves, durably, a block from the next number: the default size, or up to
    /// `needed` when the request is larger.
    fn reserve(&mut self, needed: u64) -> Result<()> {
        self.finish_ahead()?;
        if needed <= self.reserved_end {
            return Ok(());
        }
        let new_end = needed.max(self.next.saturating_add(self.block_size));
        self.persist(new_end)?;
        self.reserved_end = new_end;
        Ok(())
    }

    /// Starts reserving the block after the current one on a background thread. If no
    /// thread can be started, the reservation is made when it is needed instead.
    fn start_ahead(&mut self) {
        let end = self.reserved_end.saturating_add(self.block_size);
        self.trim_gaps();
        let (dir, gaps) = (self.dir.clone(), self.gaps.clone());
        let thread = std::thread::Builder::new()
            .name("walvault-allocator".into())
            .spawn(move || write_state(&dir, end, &gaps));
        if let Ok(thread) = thread {
            self.ahead = Some(Ahead { end, thread });
        }
    }

    /// Waits for the reservation being made in the background, if any; once it is
    /// durable, its numbers may be handed out.
    fn finish_ahead(&mut self) -> Result<()> {
        let Some(ahead) = self.ahead.take() else {
            return Ok(());
        };
        match ahead.thread.join() {
            Ok(result) => result?,
            Err(_) => {
                let why = io::Error::other("the thread reserving frame numbers panicked");
                return Err(Error::io(
                    format!("writing {}", self.dir.join(FILE).display()),
                    why,
                ));
            }
        }
        self.reserved_end = self.reserved_end.max(ahead.end);
        Ok(())
    }

    fn trim_gaps(&mut self) {
        if self.gaps.len() > MAX_GAPS {
            self.gaps.drain(..self.gaps.len() - MAX_GAPS);
        }
    }

    fn persist(&mut self, reserved_end: u64) -> Result<()> {
        self.trim_gaps();
        write_state(&self.dir, reserved_end, &self.gaps)
    }
}

impl Drop for FrameAllocator {
    /// Lets a reservation in flight finish, so that an allocator opened next on the same
    /// directory never races it for the state file. This can block for the two fsyncs of
    /// that reservation (a log writer drops its allocator when it closes).
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            let _ = ahead.thread.join();
        }
    }
}

/// Makes the state file say `reserved_end` and `gaps`, durably.
fn write_state(dir: &Path, reserved_end: u64, gaps: &[Range<u64>]) -> Result<()> {
    let io_err = |e| Error::io(format!("writing {}", dir.join(FILE).display()), e);
    create_dir_durable(dir).map_err(io_err)?;
    let bytes = encode(reserved_end, gaps);
    write_atomic(dir, FILE, &[&bytes]).map_err(|e| io_err(e.source))?;
    Ok(())
}

fn overflow(next: u64, _count: u64) -> Error {
    InvalidInput::FrameNo {
        frame_no: next,
        reason: "allocating this many frame numbers would overflow u64",
    }
    .into()
}

fn encode(reserved_end: u64, gaps: &[Range<u64>]) -> Vec<u8> {
    let mut b = Vec::with_capacity(FIXED_LEN + gaps.len() * 16 + 4);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(gaps.len() as u32).to_le_bytes());
    b.extend_from_slice(&reserved_end.to_le_bytes());
    for g in gaps {
        b.extend_from_slice(&g.start.to_le_bytes());
        b.extend_from_slice(&g.end.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Result<(u64, Vec<Range<u64>>), FormatError> {
    let bad = |offset: usize, reason| FormatError::Invalid {
        part: Part::Header,
        offset: offset as u64,
        reason,
    };
    if b.len() < FIXED_LEN + 4 {
        return Err(FormatError::Length {
            expected: (FIXED_LEN + 4) as u64,
            actual: b.len() as u64,
        });
    }
    if b[..8] != MAGIC {
        return Err(FormatError::BadMagic(Part::Header));
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    let count = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    let expected = FIXED_LEN + count * 16 + 4;
    if b.len() != expected {
        return Err(FormatError::Length {
            expected: expected as u64,
            actual: b.len() as u64,
        });
    }
    let crc = u32::from_le_bytes([
        b[expected - 4],
        b[expected - 3],
        b[expected - 2],
        b[expected - 1],
    ]);
    if crc32c::crc32c(&b[..expected - 4]) != crc {
        return Err(FormatError::Checksum {
            part: Part::Header,
            offset: 0,
        });
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    if b[10..12] != [0, 0] {
        return Err(bad(10, "reserved bytes not zero"));
    }
    let reserved_end = u64_at(16);
    if reserved_end == 0 {
        return Err(bad(16, "reserved end is zero"));
    }
    let gaps = (0..count)
        .map(|i| u64_at(FIXED_LEN + i * 16)..u64_at(FIXED_LEN + i * 16 + 8))
        .collect::<Vec<_>>();
    if gaps
        .iter()
        .any(|g| g.start >= g.end || g.end > reserved_end)
    {
        return Err(bad(FIXED_LEN, "gap outside the reserved range"));
    }
    Ok((reserved_end, gaps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numbers_resume_after_the_last_reserved_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FrameAllocator::open(dir.path(), 10).unwrap();
        assert_eq!(a.peek(), 1);
        assert_eq!(a.allocate(3).unwrap(), 1..4);
        assert_eq!(a.allocate(1).unwrap(), 4..5);
        drop(a); // a "crash": frames 5..11 of the block were never used
        let mut a = FrameAllocator::open(dir.path(), 10).unwrap();
        assert_eq!(a.peek(), 11);
        assert_eq!(
            a.allocate(25).unwrap(),
            11..36,
            "a large request gets a large block"
        );
        a.record_gap(5..11).unwrap();
        drop(a);
        let a = FrameAllocator::open(dir.path(), 10).unwrap();
        assert_eq!(a.peek(), 36);
        assert_eq!(a.gaps(), &[Range { start: 5, end: 11 }]);
        assert!(a.is_gap(7) && !a.is_gap(11));
    }

    #[test]
    fn reserving_ahead_moves_the_fsyncs_off_the_crossing_append() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FrameAllocator::open(dir.path(), 10)
            .unwrap()
            .reserve_ahead();
        assert_eq!(a.allocate(4).unwrap(), 1..5);
        assert!(a.ahead.is_none(), "more than half the block is left");
        assert_eq!(a.allocate(2).unwrap(), 5..7);
        assert!(
            a.ahead.is_some(),
            "half the block is used: the next one is on its way"
        );
        assert_eq!(a.allocate(5).unwrap(), 7..12);
        assert_eq!(
            a.reserved_end, 21,
            "the crossing append used the block reserved ahead"
        );
        drop(a);
        let a = FrameAllocator::open(dir.path(), 10).unwrap();
        assert_eq!(
            a.peek(),
            21,
            "a restart resumes after the block reserved ahead"
        );
    }

    #[test]
    fn overflow_and_bad_input_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(FrameAllocator::open(dir.path(), 0)
            .unwrap_err()
            .is_invalid_input());
        let mut a = FrameAllocator::open(dir.path(), 4).unwrap();
        let err = a.allocate(u64::MAX).unwrap_err();
        assert!(err.to_string().contains("overflow"), "{err}");
        assert_eq!(a.peek(), 1, "a failed allocation consumes nothing");
        assert!(a.record_gap(1..100).unwrap_err().is_invalid_input());
    }

    #[test]
    fn a_damaged_state_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = FrameAllocator::open(dir.path(), 4).unwrap();
        a.allocate(2).unwrap();
        let path = dir.path().join(FILE);
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            fs::write(&path, &bad).unwrap();
            assert!(
                FrameAllocator::open(dir.path(), 4)
                    .unwrap_err()
                    .is_corrupt(),
                "flip at {at}"
            );
        }
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(FrameAllocator::open(dir.path(), 4)
            .unwrap_err()
            .is_corrupt());
    }

    proptest! {
        /// Against a model: numbers are consecutive within a run, strictly increasing
        /// across restarts, and never handed out twice.
        #[test]
        fn never_hands_out_a_number_twice(
            ops in prop::collection::vec((1u64..50, any::<bool>(), any::<bool>()), 1..60),
            block in 1u64..40,
            ahead in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let open = |dir: &Path| {
                let a = FrameAllocator::open(dir, block).unwrap();
                if ahead { a.reserve_ahead() } else { a }
            };
            let mut a = open(dir.path());
            let mut last_end = 1u64;
            let mut gaps = Vec::new();
            for (count, restart, gap) in ops {
                if restart {
                    drop(a);
                    a = open(dir.path());
                    prop_assert!(a.peek() >= last_end);
                    prop_assert_eq!(a.gaps(), gaps.as_slice());
                    if gap && a.peek() > last_end {
                        a.record_gap(last_end..a.peek()).unwrap();
                        gaps.push(last_end..a.peek());
                    }
                }
                let peeked = a.peek();
                let r = a.allocate(count).unwrap();
                prop_assert_eq!(r.start, peeked);
                prop_assert_eq!(r.end - r.start, count);
                prop_assert!(r.start >= last_end);
                last_end = r.end;
            }
        }
    }
}

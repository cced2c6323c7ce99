//! Lineage: a rolling checksum of a whole database, so that every commit names the exact
//! database it produced and every segment names the database it builds on.
//!
//! The checksum of a database of `n` pages is the XOR of `page_hash(p, page p)` over
//! `p = 1..=n`, with the top bit set (so that 0 can mean "no checksum"). `page_hash`
//! is a 64-bit XXH3 of the page seeded with its page number, so moving a page changes
//! the checksum as surely as changing its bytes. XOR makes the combination independent
//! of order and lets a commit update it in O(pages it changes): take out the old hash of
//! each page it writes and put in the new one; pages past a shrunken end are taken out.
//!
//! Why it matters: a store accepts a segment only if the state it builds on is the
//! namespace's latest state (or the segment starts a new lineage with a snapshot), and a
//! restore proves its output against the target commit's checksum. Together these make a
//! restore of "a database that never existed" (a segment from one copy of a database
//! applied on top of another copy's history) impossible rather than merely unlikely.

use super::{Commit, Frame, SealedSegment};
use crate::error::{Error, InvalidInput, Result};

/// The top bit every checksum carries, so that a stored 0 always means "none".
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// The hash of one page: its bytes seeded with its page number.
pub fn page_hash(page_no: u32, page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(page, u64::from(page_no))
}

/// The lineage checksum of a database whose page hashes XOR to `xor`.
pub fn checksum_of(xor: u64) -> u64 {
    xor | CHECKSUM_FLAG
}

/// The checksum of the database in `bytes` (whole pages of `page_size` bytes), as a
/// restore or a follower computes it from a file.
#[cfg(test)]
pub fn database_checksum(bytes: &[u8], page_size: usize, first_page: u32) -> u64 {
    bytes
        .chunks(page_size)
        .zip(first_page..)
        .fold(0, |acc, (page, no)| acc ^ page_hash(no, page))
}

/// The page hashes of a database's current state, kept by a writer so each commit's
/// checksum costs O(pages it changes). Eight bytes per page of the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSums {
    /// `hashes[p - 1]` is page `p`'s hash; the vector's length is the database size.
    hashes: Vec<u64>,
    xor: u64,
}

impl PageSums {
    /// The sums of an empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the sums from stored page hashes (see [`hashes`](Self::hashes)).
    pub fn from_hashes(hashes: Vec<u64>) -> Self {
        let xor = hashes.iter().fold(0, |acc, h| acc ^ h);
        Self { hashes, xor }
    }

    /// The page hashes, page 1 first.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// The database size in pages.
    pub fn db_size(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// The lineage checksum of the current state.
    pub fn checksum(&self) -> u64 {
        checksum_of(self.xor)
    }

    /// Applies one committed transaction: `pages` written (a page may repeat; the last
    /// image wins), then the database is `db_size` pages. Returns the new checksum.
    /// Nothing changes when it fails.
    ///
    /// A page inside the new size that no transaction ever wrote counts as the hash of
    /// its number alone.
    pub fn apply(&mut self, pages: &[(u32, &[u8])], db_size: u32) -> Result<u64> {
        let hashes: Vec<(u32, u64)> = pages
            .iter()
            .map(|&(page_no, page)| (page_no, page_hash(page_no, page)))
            .collect();
        self.apply_hashes(&hashes, db_size)
    }

    /// Brings the sums forward over the transactions of `segment` whose commits come after
    /// frame `after`, proving each commit's recorded checksum against the pages. Returns
    /// the last commit frame applied (`after` when none), or the frame of the first commit
    /// whose recorded checksum the pages do not make. The caller checks first that the
    /// sums are the state the segment builds on.
    pub(crate) fn replay(&mut self, segment: &SealedSegment, after: u64) -> Result<u64, u64> {
        // Frames are read a bounded chunk at a time (a spilled segment is in a file).
        let frame_len = segment.page_size() as usize + 24;
        let per_chunk = (crate::budget::share(16) / frame_len).max(1) as u32;
        let mut replay = Replay::new(self, segment.commits(), after);
        let mut position = 0;
        while position < segment.frame_count() {
            let end = (position + per_chunk).min(segment.frame_count());
            let positions: Vec<u32> = (position..end).collect();
            let chunk = segment.read_frames(&positions).map_err(|_| after)?;
            position = end;
            replay.feed(chunk)?;
        }
        Ok(replay.last())
    }

    /// Applies one committed transaction given by the hashes of the pages it wrote (see
    /// [`apply`](Self::apply)), in the order written. Returns the new checksum.
    pub(crate) fn apply_hashes(&mut self, pages: &[(u32, u64)], db_size: u32) -> Result<u64> {
        if pages.iter().any(|(page_no, _)| *page_no == 0) {
            return Err(InvalidInput::PageNo.into());
        }
        self.resize(db_size)?;
        for &(page_no, hash) in pages {
            if page_no > db_size {
                continue; // written, then cut off by the commit's size
            }
            let slot = &mut self.hashes[page_no as usize - 1];
            self.xor ^= *slot ^ hash;
            *slot = hash;
        }
        Ok(self.checksum())
    }

    /// Grows (with never-written pages) or shrinks the table to `db_size` pages.
    fn resize(&mut self, db_size: u32) -> Result<()> {
        if db_size == 0 {
            return Err(Error::from(InvalidInput::Commit {
                frame_no: 0,
                reason: "database size after a commit must be at least 1 page".into(),
            }));
        }
        let new_len = db_size as usize;
        for gone in self.hashes.drain(new_len.min(self.hashes.len())..) {
            self.xor ^= gone;
        }
        // Exactly what is needed: a doubling growth would hold up to twice the sums.
        self.hashes
            .reserve_exact(new_len.saturating_sub(self.hashes.len()));
        for page_no in self.hashes.len() as u32 + 1..=db_size {
            let hash = unwritten_page_hash(page_no);
            self.xor ^= hash;
            self.hashes.push(hash);
        }
        Ok(())
    }
}

/// A replay of a segment's transactions onto page sums (see [`PageSums::replay`]), fed
/// its frames in order a run at a time, from memory or from storage alike. A
/// transaction's pages are kept as their hashes until its commit (twelve bytes a
/// frame), so a transaction of any size costs no more than its bookkeeping.
pub(crate) struct Replay<'a> {
    sums: &'a mut PageSums,
    commits: std::slice::Iter<'a, Commit>,
    after: u64,
    last: u64,
    pending: Vec<(u32, u64)>,
}

impl<'a> Replay<'a> {
    /// A replay onto `sums` of the transactions committed after frame `after`, proving
    /// each against its entry in `commits` (the segment's commit table).
    pub(crate) fn new(sums: &'a mut PageSums, commits: &'a [Commit], after: u64) -> Self {
        Self {
            sums,
            commits: commits.iter(),
            after,
            last: after,
            pending: Vec::new(),
        }
    }

    /// Applies the transactions `frames` (the next frames of the segment, in order)
    /// complete. Fails with the frame number of the first commit whose recorded checksum
    /// the pages do not make (or that the table does not record).
    pub(crate) fn feed(&mut self, frames: Vec<Frame>) -> Result<(), u64> {
        for frame in frames.into_iter().filter(|f| f.frame_no > self.after) {
            self.pending
                .push((frame.page_no, page_hash(frame.page_no, &frame.data)));
            if frame.size_after == 0 {
                continue;
            }
            let recorded = self.commits.find(|c| c.frame_no == frame.frame_no);
            match (
                self.sums.apply_hashes(&self.pending, frame.size_after),
                recorded,
            ) {
                (Ok(sum), Some(c)) if sum == c.checksum => self.last = frame.frame_no,
                _ => return Err(frame.frame_no),
            }
            self.pending.clear();
        }
        Ok(())
    }

    /// The last commit frame applied (`after` when none).
    pub(crate) fn last(&self) -> u64 {
        self.last
    }
}

/// The hash a page inside the database that no transaction wrote contributes: the hash
/// of its number alone. A restore could not produce such a page anyway (it is "in no
/// segment"), so any fixed value works as long as writers agree on it.
fn unwritten_page_hash(page_no: u32) -> u64 {
    page_hash(page_no, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Vec<u8> {
        vec![b; 512]
    }

    #[test]
    fn the_checksum_is_that_of_the_whole_database_whatever_the_order_of_commits() {
        let mut sums = PageSums::new();
        sums.apply(&[(1, &page(1)[..]), (2, &page(2)[..])], 2)
            .unwrap();
        sums.apply(&[(2, &page(7)[..]), (3, &page(3)[..])], 3)
            .unwrap();
        let whole = [page(1), page(7), page(3)].concat();
        assert_eq!(
            sums.checksum(),
            checksum_of(database_checksum(&whole, 512, 1))
        );

        let mut other = PageSums::new();
        other
            .apply(
                &[(3, &page(3)[..]), (1, &page(1)[..]), (2, &page(7)[..])],
                3,
            )
            .unwrap();
        assert_eq!(other.checksum(), sums.checksum());
        assert_eq!(PageSums::from_hashes(sums.hashes().to_vec()), sums);
    }

    #[test]
    fn shrinking_takes_pages_out_and_moving_a_page_changes_the_checksum() {
        let mut sums = PageSums::new();
        sums.apply(
            &[(1, &page(1)[..]), (2, &page(2)[..]), (3, &page(3)[..])],
            3,
        )
        .unwrap();
        let three = sums.checksum();
        sums.apply(&[(1, &page(1)[..])], 2).unwrap();
        let two = [page(1), page(2)].concat();
        assert_eq!(
            sums.checksum(),
            checksum_of(database_checksum(&two, 512, 1))
        );
        assert_ne!(sums.checksum(), three);

        let swapped = [page(2), page(1)].concat();
        assert_ne!(
            checksum_of(database_checksum(&swapped, 512, 1)),
            sums.checksum()
        );
        assert_ne!(sums.checksum() & CHECKSUM_FLAG, 0);
    }

    #[test]
    fn a_page_written_past_the_commit_size_does_not_count_and_bad_input_is_refused() {
        let mut sums = PageSums::new();
        sums.apply(&[(1, &page(1)[..]), (5, &page(5)[..])], 1)
            .unwrap();
        assert_eq!(sums.db_size(), 1);
        assert_eq!(sums.checksum(), checksum_of(page_hash(1, &page(1))));
        assert!(sums.apply(&[(0, &page(1)[..])], 1).is_err());
        assert!(sums.apply(&[(1, &page(1)[..])], 0).is_err());
    }
}

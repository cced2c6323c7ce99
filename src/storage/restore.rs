//! Restore over any [`Storage`]: find the target commit, then walk segments newest
//! first, writing each page of the target database once. Segments are read through
//! their page indexes: only the frames that supply a page still missing are fetched
//! ([`Storage::fetch_frames_batch`]), and a segment that supplies none is skipped after
//! its index. Work grows with the database size, not the history length.
//!
//! Memory is bounded by the memory budget ([`crate::memory_budget`]), not by the size
//! of any segment: the target commit is found from commit tables alone, and frames are
//! fetched in batches of at most a quarter of the budget, a large segment's frames split
//! across batches (chosen from its page index as each batch is made, never listed for the
//! whole segment). A target commit inside its segment (not its last) is the one case the
//! index cannot serve; that segment's frames up to the commit are scanned a batch at a
//! time. Beyond the three batches in hand (two being read, so that reads flow on while
//! one waits for its slowest part, and one being written), a restore holds a bit per page
//! and the page indexes of the segments in hand.
//!
//! A long history means many segments that each supply a few pages, so the fixed cost
//! of each read matters more than its size: indexes are read [`INDEX_BATCH`] at a time,
//! and the frames of consecutive segments are fetched together, a batch bounded by
//! count and by bytes. Pages are written sorted, in runs of adjacent pages.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{frames, FindSegmentReq, RestoreOptions, Storage};
use crate::error::{Error, FormatError, InvalidInput, Part, Result};
use crate::format::{ms_to_datetime, Commit, CommitTable, NamespaceName, PageIndex, SegmentKey};
use crate::storage::fsutil::{fsync_dir, start_writeback, temp_path, RemoveOnDrop};

/// What a restore produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Frame number of the commit the database was restored to.
    pub frame_no: u64,
    /// Time of that commit.
    pub timestamp: DateTime<Utc>,
    /// Page size of the database.
    pub page_size: u32,
    /// Database size in pages (the commit's `size_after`).
    pub db_pages: u32,
    /// Segments read.
    pub segments_read: usize,
    /// The commit's lineage checksum, which the restored file was proved against (0:
    /// the commit has none, format version 1).
    pub checksum: u64,
}

pub(crate) async fn restore<S, W>(
    storage: &S,
    ns: &NamespaceName,
    options: RestoreOptions,
    out: &mut W,
    config: Option<S::Config>,
    progress: Option<&RestoreProgress>,
) -> Result<RestoreSummary>
where
    S: Storage + ?Sized,
    W: Write + Seek + Send,
{
    let mut attempt = 1;
    loop {
        if let Some(p) = progress {
            p.inner.written.store(0, Ordering::Relaxed);
        }
        match restore_once(storage, ns, options, out, config.clone(), progress).await {
            // Every page is written again, at the same offsets, by the next attempt.
            Err(e) if catalog_changed(&e) && attempt < RESTORE_ATTEMPTS => attempt += 1,
            done => return done,
        }
    }
}

async fn restore_once<S, W>(
    storage: &S,
    ns: &NamespaceName,
    options: RestoreOptions,
    out: &mut W,
    config: Option<S::Config>,
    progress: Option<&RestoreProgress>,
) -> Result<RestoreSummary>
where
    S: Storage + ?Sized,
    W: Write + Seek + Send,
{
    let target = locate_target(storage, ns, options, &config).await?;
    let commit = target.commit;
    let page_size = page_size_of(storage, ns, &target, &config).await?;
    let mut pages = PageSet::new(commit.size_after);
    if let Some(p) = progress {
        p.inner
            .total
            .store(u64::from(commit.size_after), Ordering::Relaxed);
    }
    let mut writer = PageWriter::new(out, page_size, progress);
    // Only a commit with a lineage checksum can be proved; older ones skip the hashing.
    writer.hash = commit.checksum != 0;
    let limit = batch_bytes();
    let mut walk = Walk::new(storage, ns, &config, target.walk_from(), limit);
    if !target.is_last() {
        let mut write = |mut found: Vec<(u32, Bytes)>| writer.write_all(&mut found);
        scan_target(
            storage, ns, &target, &mut pages, &mut write, page_size, &config,
        )
        .await?;
        walk.found = 1;
    }
    // Segments newest first (the target itself when its last commit is the target), in
    // batches, [`FETCHES_AHEAD`] of them fetched at once while the one before is written:
    // reads flow on while a batch waits for its slowest read or is being written.
    let mut fetches = InFlight::default();
    let mut walked = false;
    let mut fetched: Option<Vec<(u32, Bytes)>> = None;
    loop {
        while !walked && fetches.len() < FETCHES_AHEAD {
            let batch = fetches.alongside(walk.next_batch(&mut pages, page_size));
            let batch = batch.await?;
            walked = batch.is_empty();
            if !walked {
                let fetch = fetch_batch(storage, ns, batch, page_size, &config);
                fetches.push(Box::pin(fetch));
            }
        }
        if let Some(mut found) = fetched.take() {
            writer.write_all(&mut found)?;
        }
        match fetches.next().await {
            Some(found) => fetched = Some(found?),
            None => break,
        }
    }
    if pages.missing > 0 {
        return Err(incomplete(ns, &pages, commit.frame_no));
    }
    check_lineage(ns, &commit, writer.xor)?;
    writer.finish()?;
    Ok(RestoreSummary {
        frame_no: commit.frame_no,
        timestamp: ms_to_datetime(commit.timestamp_ms),
        page_size,
        db_pages: commit.size_after,
        segments_read: walk.found,
        checksum: commit.checksum,
    })
}

/// The target commit falls inside its segment, so the segment's page index (which names
/// each page's newest frame) does not say which frames the commit saw: reads the frames
/// up to the commit, newest first, a bounded chunk at a time, and writes the newest
/// frame of each page still missing. Stops early once every page is found.
async fn scan_target<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    target: &Target,
    pages: &mut PageSet,
    write: &mut (dyn FnMut(Vec<(u32, Bytes)>) -> Result<()> + Send),
    page_size: u32,
    config: &Option<S::Config>,
) -> Result<()> {
    let source = TargetFrames::open(storage, ns, target, config).await?;
    let chunk = (batch_bytes() / u64::from(page_size)).max(1) as u32;
    let mut end = source.commit_position + 1;
    while end > 0 && pages.missing > 0 {
        let start = end.saturating_sub(chunk);
        let positions: Vec<u32> = (start..end).collect();
        let frames = source.read(storage, ns, target, &positions, config).await?;
        if frames.len() != positions.len() {
            return Err(backend_miscounted("frames", frames.len(), positions.len()));
        }
        // Newest first: the first frame of a page met is its newest at the commit.
        let found: Vec<(u32, Bytes)> = frames
            .into_iter()
            .rev()
            .filter(|(page_no, _)| pages.take(*page_no))
            .collect();
        if found.iter().any(|(_, d)| d.len() != page_size as usize) {
            return Err(Error::corrupt(
                format!("segment {} of {ns}", target.key),
                FormatError::Invalid {
                    part: Part::Header,
                    offset: 12,
                    reason: "frames of one segment differ in page size",
                },
            ));
        }
        write(found)?;
        end = start;
    }
    Ok(())
}

/// Where the target segment's frames up to a commit inside it are read from.
struct TargetFrames {
    /// Position of the target commit's frame.
    commit_position: u32,
}

impl TargetFrames {
    /// In a dense segment the commit's position follows from its frame number; a
    /// sparse one (compaction left frames out) is searched for it a frame at a time
    /// ([`frames::position_of`]), never read whole.
    async fn open<S: Storage + ?Sized>(
        storage: &S,
        ns: &NamespaceName,
        target: &Target,
        config: &Option<S::Config>,
    ) -> Result<Self> {
        let commit = target.commit.frame_no;
        let position = frames::position_of(storage, ns, &target.table, commit, config).await?;
        let commit_position = position.ok_or_else(|| {
            let reason = FormatError::Invalid {
                part: Part::CommitTable,
                offset: 0,
                reason: "a commit names a frame the segment does not hold",
            };
            Error::corrupt(format!("segment {} of {ns}", target.key), reason)
        })?;
        Ok(Self { commit_position })
    }

    async fn read<S: Storage + ?Sized>(
        &self,
        storage: &S,
        ns: &NamespaceName,
        target: &Target,
        positions: &[u32],
        config: &Option<S::Config>,
    ) -> Result<Vec<(u32, Bytes)>> {
        storage
            .fetch_frames(ns, &target.key, positions, config.clone())
            .await
    }
}

/// Proves the restored pages are the database the target commit produced: their
/// combined checksum must be the commit's lineage checksum (`docs/FORMAT.md` §3.9).
/// Commits without one (format version 1) cannot be checked.
fn check_lineage(ns: &NamespaceName, commit: &Commit, xor: u64) -> Result<()> {
    if commit.checksum == 0 || crate::format::lineage::checksum_of(xor) == commit.checksum {
        return Ok(());
    }
    let reason = crate::error::FormatError::Invalid {
        part: crate::error::Part::CommitTable,
        offset: 0,
        reason: "the restored pages do not make the database this commit recorded \
                 (lineage checksum mismatch): the history mixes two databases",
    };
    Err(Error::corrupt(
        format!("history of {ns} at frame {}", commit.frame_no),
        reason,
    ))
}

/// Indexes read ahead of the walk in one call: enough to keep a backend's fixed cost per
/// call small, few enough that an index read past the end of what a restore needs is
/// cheap.
const INDEX_BATCH: usize = 32;
/// A batch of frame reads takes at most this many segments...
const FRAME_BATCH_SEGMENTS: usize = 32;

/// ...and at most this many bytes of frames: a segment supplying more is split across
/// batches. Restore holds three batches at once (one being written, two being read),
/// so each is a sixth of the memory budget, leaving the other half to the backend's
/// reads (an object store's responses in flight, the HTTP client's buffers) and the
/// bookkeeping. Scanning a target segment up to a commit inside it reads chunks of
/// this size too.
fn batch_bytes() -> u64 {
    if cfg!(test) {
        16 << 10
    } else {
        crate::budget::share(6) as u64
    }
}

/// Part of an older segment that supplies pages, one frame batch's share of it: the
/// positions of its frames that do, each with its page number, sorted by position.
struct Needed {
    key: SegmentKey,
    wanted: Vec<(u32, u32)>,
}

impl Needed {
    /// The bytes of its wanted pages, which is what fetching them holds in memory
    /// (see [`Storage::fetch_frames_batch`]).
    fn bytes(&self, page_size: u32) -> u64 {
        self.wanted.len() as u64 * u64::from(page_size)
    }
}

/// An older segment that supplies pages, being taken from a batch at a time: its page
/// index, in page order, and how far the walk has come through it. The wanted frames are
/// chosen as the batches are made, never listed for the whole segment, so a segment of
/// any size costs its index and nothing more. Older segments are only looked at once
/// this one is done, so each page is still taken from the newest segment holding it.
struct Source {
    key: SegmentKey,
    index: PageIndex,
    /// The index entry (in page order) the next batch starts looking at.
    next: usize,
}

impl Source {
    /// Takes the next pages still missing, `count` at most, marking them taken; their
    /// frames sorted by position (a batch's reads are in position order; SQLite writes
    /// a transaction's pages in page order, so a large segment's runs survive).
    fn take(&mut self, pages: &mut PageSet, count: usize) -> Needed {
        let pairs = self.index.pairs();
        let mut wanted = Vec::with_capacity(count.min(pairs.len().saturating_sub(self.next)));
        while self.next < pairs.len() && wanted.len() < count && pages.missing > 0 {
            let (page_no, position) = pairs[self.next];
            if pages.take(page_no) {
                wanted.push((position, page_no));
            }
            self.next += 1;
        }
        if pages.missing == 0 {
            self.next = pairs.len();
        }
        wanted.sort_unstable();
        Needed {
            key: self.key,
            wanted,
        }
    }

    /// Takes every page still missing without listing them (a dry run's walk).
    fn take_all(&mut self, pages: &mut PageSet) {
        for &(page_no, _) in &self.index.pairs()[self.next..] {
            pages.take(page_no);
        }
        self.next = self.index.len();
    }

    fn is_done(&self) -> bool {
        self.next >= self.index.len()
    }
}

/// The walk over the older segments, newest first, that restore and plan share: which
/// segments hold a page still missing, and which of their frames supply it. Indexes are
/// read a batch ahead; an error reading one surfaces only if the walk reaches it.
struct Walk<'a, S: Storage + ?Sized> {
    storage: &'a S,
    ns: &'a NamespaceName,
    config: &'a Option<S::Config>,
    /// Keys are looked up ending at or before this frame.
    before: u64,
    /// Segments looked up and their indexes read, newest first.
    ahead: VecDeque<Result<(SegmentKey, PageIndex)>>,
    /// The segment being taken from, whose rest did not fit the previous frame batch.
    current: Option<Source>,
    /// Bytes of frames one batch takes at most.
    limit: u64,
    /// Segments the walk found supplying pages (a segment split across batches counts
    /// once).
    found: usize,
}

impl<'a, S: Storage + ?Sized> Walk<'a, S> {
    fn new(
        storage: &'a S,
        ns: &'a NamespaceName,
        config: &'a Option<S::Config>,
        before: u64,
        limit: u64,
    ) -> Self {
        Self {
            storage,
            ns,
            config,
            before,
            ahead: VecDeque::new(),
            current: None,
            limit,
            found: 0,
        }
    }

    /// The next older segment that holds a page still missing (none taken yet). `None`
    /// when nothing is missing or the history ends.
    async fn next_source(&mut self, pages: &PageSet) -> Result<Option<Source>> {
        if pages.missing == 0 {
            return Ok(None);
        }
        loop {
            if self.ahead.is_empty() {
                self.read_ahead().await;
            }
            let Some(entry) = self.ahead.pop_front() else {
                return Ok(None);
            };
            let (key, index) = entry?;
            if index.iter().any(|(page_no, _)| pages.wants(page_no)) {
                self.found += 1;
                return Ok(Some(Source {
                    key,
                    index,
                    next: 0,
                }));
            }
        }
    }

    /// The next segments that supply pages, as many as fit one frame batch; empty when
    /// the walk is over. A segment that does not fit is split: the batch takes the
    /// frames that fit (at least one), the next batch goes on from there.
    async fn next_batch(&mut self, pages: &mut PageSet, page_size: u32) -> Result<Vec<Needed>> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < FRAME_BATCH_SEGMENTS && bytes < self.limit {
            let mut source = match self.current.take() {
                Some(source) => source,
                None => match self.next_source(pages).await? {
                    Some(source) => source,
                    None => break,
                },
            };
            let room = (self.limit - bytes) / u64::from(page_size).max(1);
            let fits = usize::try_from(room).unwrap_or(usize::MAX).max(1);
            let now = source.take(pages, fits);
            if !now.wanted.is_empty() {
                bytes += now.bytes(page_size);
                batch.push(now);
            }
            if !source.is_done() {
                self.current = Some(source);
                break;
            }
        }
        Ok(batch)
    }

    /// Looks up the next keys and reads their indexes in one call. A failed lookup is
    /// queued as an error after the keys found before it.
    async fn read_ahead(&mut self) {
        let mut keys = Vec::with_capacity(INDEX_BATCH);
        let mut failed = None;
        while keys.len() < INDEX_BATCH {
            match previous_key(self.storage, self.ns, self.before, self.config).await {
                Ok(Some(key)) => {
                    self.before = key.start_frame_no - 1;
                    keys.push(key);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if !keys.is_empty() {
            let indexes = self
                .storage
                .fetch_segment_indexes(self.ns, &keys, self.config.clone())
                .await;
            let count = indexes.len();
            let short = || Err(backend_miscounted("page indexes", count, keys.len()));
            let indexes = indexes.into_iter().chain(std::iter::repeat_with(short));
            for (key, index) in keys.iter().zip(indexes) {
                self.ahead.push_back(index.map(|index| (*key, index)));
            }
        }
        self.ahead.extend(failed.map(Err));
    }
}

/// Frame batches fetched at once. With the one being written, a restore holds three
/// batches; two in flight keep reads going while one batch waits for its slowest read.
const FETCHES_AHEAD: usize = 2;

/// A fetch of one frame batch, started and polled by [`InFlight`].
type Fetch<'a> = Pin<Box<dyn Future<Output = Result<Vec<(u32, Bytes)>>> + Send + 'a>>;

/// Frame batches being fetched, oldest first. Every one of them is polled whenever the
/// restore waits for anything (the next batch's indexes, the oldest fetch), so all make
/// progress together without tasks (they borrow the storage) and come out in order.
#[derive(Default)]
struct InFlight<'a> {
    slots: VecDeque<Slot<'a>>,
}

enum Slot<'a> {
    Running(Fetch<'a>),
    Done(Result<Vec<(u32, Bytes)>>),
}

impl<'a> InFlight<'a> {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn push(&mut self, fetch: Fetch<'a>) {
        self.slots.push_back(Slot::Running(fetch));
    }

    /// Polls every fetch still running, keeping the results of those that end.
    fn poll_all(&mut self, cx: &mut Context<'_>) {
        for slot in &mut self.slots {
            if let Slot::Running(fetch) = slot {
                if let Poll::Ready(done) = fetch.as_mut().poll(cx) {
                    *slot = Slot::Done(done);
                }
            }
        }
    }

    /// Runs `work` to its end while the fetches go on.
    async fn alongside<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = pin!(work);
        poll_fn(|cx| {
            self.poll_all(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    /// The oldest fetch's result once it ends (the others go on meanwhile); `None` when
    /// none is in flight.
    async fn next(&mut self) -> Option<Result<Vec<(u32, Bytes)>>> {
        poll_fn(|cx| {
            self.poll_all(cx);
            match self.slots.front() {
                None => Poll::Ready(None),
                Some(Slot::Running(_)) => Poll::Pending,
                Some(Slot::Done(_)) => match self.slots.pop_front() {
                    Some(Slot::Done(done)) => Poll::Ready(Some(done)),
                    _ => Poll::Pending,
                },
            }
        })
        .await
    }
}

/// Reads one batch's frames and checks them; returns their pages.
async fn fetch_batch<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    batch: Vec<Needed>,
    page_size: u32,
    config: &Option<S::Config>,
) -> Result<Vec<(u32, Bytes)>> {
    let requests = batch
        .iter()
        .map(|n| {
            (
                n.key,
                n.wanted.iter().map(|&(position, _)| position).collect(),
            )
        })
        .collect();
    let fetched = storage
        .fetch_frames_batch(ns, requests, config.clone())
        .await?;
    if fetched.len() != batch.len() {
        return Err(backend_miscounted(
            "frame lists",
            fetched.len(),
            batch.len(),
        ));
    }
    let mut pages = Vec::with_capacity(batch.iter().map(|n| n.wanted.len()).sum());
    for (needed, frames) in batch.iter().zip(fetched) {
        check_frames(ns, &needed.key, &needed.wanted, &frames, page_size)?;
        pages.extend(frames);
    }
    Ok(pages)
}

/// A backend answered a batch with another number of results than it was asked for.
fn backend_miscounted(what: &str, got: usize, asked: usize) -> Error {
    let detail = format!("the backend returned {got} {what} for {asked} segments");
    Error::io("reading segments for a restore", io::Error::other(detail))
}

/// The fetched frames are the ones asked for: one per position, each holding the page
/// the index named, at the page size of the rest of the history.
fn check_frames(
    ns: &NamespaceName,
    key: &SegmentKey,
    wanted: &[(u32, u32)],
    frames: &[(u32, Bytes)],
    page_size: u32,
) -> Result<()> {
    let corrupt = |part, offset, reason| {
        let reason = FormatError::Invalid {
            part,
            offset,
            reason,
        };
        Err(Error::corrupt(format!("segment {key} of {ns}"), reason))
    };
    if frames.len() != wanted.len() {
        return corrupt(Part::PageIndex, 0, "fewer frames than the page index names");
    }
    for (&(position, page_no), (got, data)) in wanted.iter().zip(frames) {
        if data.len() != page_size as usize {
            let reason = "page size differs from the newer segments of the history";
            return corrupt(Part::Header, 12, reason);
        }
        if *got != page_no {
            let reason = "the page index names this frame for another page";
            return corrupt(Part::Frame(position), 0, reason);
        }
    }
    Ok(())
}

/// The newest segment ending at or before `before`, if any.
async fn previous_key<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    before: u64,
    config: &Option<S::Config>,
) -> Result<Option<SegmentKey>> {
    if before == 0 {
        return Ok(None);
    }
    let req = FindSegmentReq::EndFrameNoLessThan(before);
    let key = match storage.find_segment(ns, req, config.clone()).await {
        Ok(key) => Some(key),
        Err(Error::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    if key.is_some_and(|k| k.end_frame_no == before) {
        return Ok(key);
    }
    // Frames are missing just below the walk: an allocator gap, or a compaction swapped
    // in a segment reaching above `before` since the walk began. Only the latter leaves a
    // segment containing `before`, and reading past it would take older page versions.
    match storage
        .find_segment(ns, FindSegmentReq::Containing(before), config.clone())
        .await
    {
        Ok(_) => Err(Error::Conflict {
            namespace: ns.to_string(),
            detail: CATALOG_CHANGED.into(),
        }),
        Err(Error::NotFound(_)) => Ok(key),
        Err(e) => Err(e),
    }
}

/// Why a restore starts over: its catalog changed under it.
const CATALOG_CHANGED: &str = "a compaction replaced segments during the restore";
/// Restores that start over after a compaction, before giving up.
const RESTORE_ATTEMPTS: usize = 3;

fn catalog_changed(e: &Error) -> bool {
    matches!(e, Error::Conflict { detail, .. } if detail == CATALOG_CHANGED)
}

/// Writes pages at their offsets, sorted, each run of adjacent pages in one vectored
/// write straight from the fetched buffers: large sequential writes instead of a seek
/// and a write per page, and no copy of the pages on the way.
struct PageWriter<'a, W: Write + Seek> {
    out: &'a mut W,
    progress: Option<&'a RestoreProgress>,
    page_size: u64,
    /// XOR of the page hashes written (each page is written once), for the lineage check.
    xor: u64,
    /// Whether to hash the pages at all (the target commit has a checksum).
    hash: bool,
}

/// Pages one vectored write takes at most (Linux's `IOV_MAX` is 1024).
const PAGES_PER_WRITE: usize = 1024;

impl<'a, W: Write + Seek> PageWriter<'a, W> {
    fn new(out: &'a mut W, page_size: u32, progress: Option<&'a RestoreProgress>) -> Self {
        Self {
            out,
            progress,
            page_size: u64::from(page_size),
            xor: 0,
            hash: false,
        }
    }

    fn write_all(&mut self, pages: &mut [(u32, Bytes)]) -> Result<()> {
        pages.sort_unstable_by_key(|(page_no, _)| *page_no);
        if self.hash {
            for (page_no, data) in pages.iter() {
                self.xor ^= crate::format::page_hash(*page_no, data);
            }
        }
        let mut rest = &pages[..];
        while let Some(&(first, _)) = rest.first() {
            let adjacent = rest
                .iter()
                .take(PAGES_PER_WRITE)
                .zip(first..)
                .take_while(|((page_no, _), expected)| page_no == expected)
                .count();
            let (run, after) = rest.split_at(adjacent);
            let at = u64::from(first - 1) * self.page_size;
            self.write_run(at, run)
                .map_err(|e| Error::io("writing the restored database", e))?;
            rest = after;
        }
        if let Some(p) = self.progress {
            p.inner
                .written
                .fetch_add(pages.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the pages of `run` one after another from offset `at`.
    fn write_run(&mut self, at: u64, run: &[(u32, Bytes)]) -> io::Result<()> {
        self.out.seek(SeekFrom::Start(at))?;
        let mut slices: Vec<IoSlice<'_>> = run.iter().map(|(_, d)| IoSlice::new(d)).collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            match self.out.write_vectored(left) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut left, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io("flushing the restored database", e))
    }
}

/// What a restore will read, computed without writing anything (a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// Frame number of the commit the database will be restored to.
    pub frame_no: u64,
    /// Time of that commit.
    pub timestamp: DateTime<Utc>,
    /// Page size of the database.
    pub page_size: u32,
    /// Database size in pages (the commit's `size_after`).
    pub db_pages: u32,
    /// The segments the restore reads, newest first.
    pub segments: Vec<SegmentKey>,
    /// Their encoded size in bytes.
    pub bytes: u64,
}

/// Plans a restore: finds the target commit, then walks the page indexes newest first
/// until every page of the target database has a source. Reads commit tables and page
/// indexes (and, for a commit inside its segment, that segment's frames up to it, as
/// the restore does); errors as [`restore`] would.
pub async fn plan<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    options: RestoreOptions,
    config: Option<S::Config>,
) -> Result<RestorePlan> {
    let target = locate_target(storage, ns, options, &config).await?;
    let commit = target.commit;
    let mut pages = PageSet::new(commit.size_after);
    let mut plan = RestorePlan {
        frame_no: commit.frame_no,
        timestamp: ms_to_datetime(commit.timestamp_ms),
        page_size: page_size_of(storage, ns, &target, &config).await?,
        db_pages: commit.size_after,
        segments: Vec::new(),
        bytes: 0,
    };
    if !target.is_last() {
        // The pages the target segment supplies up to the commit, from a bounded scan
        // of its frames, as the restore finds them.
        let page_size = plan.page_size;
        let mut skip = |_: Vec<(u32, Bytes)>| Ok(());
        scan_target(
            storage, ns, &target, &mut pages, &mut skip, page_size, &config,
        )
        .await?;
        plan.segments.push(target.key);
    }
    let mut walk = Walk::new(storage, ns, &config, target.walk_from(), batch_bytes());
    while let Some(mut source) = walk.next_source(&pages).await? {
        plan.segments.push(source.key);
        source.take_all(&mut pages);
    }
    if pages.missing > 0 {
        return Err(incomplete(ns, &pages, commit.frame_no));
    }
    plan.bytes = encoded_sizes(storage, ns, &plan.segments, &config).await?;
    Ok(plan)
}

/// The total encoded size of `keys` (newest first), from one pass over the catalog.
async fn encoded_sizes<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    keys: &[SegmentKey],
    config: &Option<S::Config>,
) -> Result<u64> {
    use tokio_stream::StreamExt;
    let Some(oldest) = keys.last() else {
        return Ok(0);
    };
    let wanted: hashbrown::HashSet<SegmentKey> = keys.iter().copied().collect();
    let listing = storage.list_segments(ns, oldest.end_frame_no, config.clone());
    tokio::pin!(listing);
    let mut bytes = 0;
    while let Some(info) = listing.next().await {
        let info = info?;
        if wanted.contains(&info.key) {
            bytes += info.size;
        }
    }
    Ok(bytes)
}

fn incomplete(ns: &NamespaceName, pages: &PageSet, frame_no: u64) -> Error {
    Error::NotFound(format!(
        "history of {ns} is incomplete: page {} of the database at frame {frame_no} is in no segment",
        pages.first_missing().unwrap_or(0),
    ))
}

/// How far a restore has come: pages written out of the target database's pages. Clones
/// share the counters, so another task can watch (for a progress bar) while
/// [`restore_to_path_with_progress`] runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreProgress {
    inner: Arc<ProgressCounters>,
}

#[derive(Debug, Default)]
struct ProgressCounters {
    written: AtomicU64,
    total: AtomicU64,
}

impl RestoreProgress {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages written so far.
    pub fn pages_written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }

    /// Pages the restored database has (0 until the target commit is found).
    pub fn pages_total(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }
}

/// [`Storage::restore_to_path`], reporting its progress in `progress` as it goes.
pub async fn restore_to_path_with_progress<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    options: RestoreOptions,
    path: &Path,
    config: Option<S::Config>,
    progress: &RestoreProgress,
) -> Result<RestoreSummary> {
    restore_to_path(storage, namespace, options, path, config, Some(progress)).await
}

/// Restores into a new file at `path` atomically: a temp file beside it is written and
/// fsynced, then linked into place (which fails if `path` exists, so nothing is ever
/// overwritten) and the directory fsynced. On error nothing appears at `path`.
pub(crate) async fn restore_to_path<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    options: RestoreOptions,
    path: &Path,
    config: Option<S::Config>,
    progress: Option<&RestoreProgress>,
) -> Result<RestoreSummary> {
    let exists = || InvalidInput::Output(format!("{} already exists", path.display()));
    if path.exists() {
        return Err(exists().into());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(&dir);
    let io_err = |e| Error::io(format!("writing {}", path.display()), e);
    let file = File::create_new(&tmp).map_err(io_err)?;
    let tmp = RemoveOnDrop(tmp); // on error, success, and a dropped future alike
    let mut file = WritebackFile::new(file);
    let summary = restore(storage, ns, options, &mut file, config, progress).await?;
    file.file.sync_all().map_err(io_err)?;
    fs::hard_link(&tmp.0, path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => exists().into(),
        _ => io_err(e),
    })?;
    fsync_dir(&dir).map_err(io_err)?;
    Ok(summary)
}

/// A restored file being written, whose writeback to the disk is started every
/// [`WRITEBACK_EVERY`] bytes: the disk works while pages are still being fetched, and
/// the closing fsync finds little left to do (a kernel left alone starts only once a
/// large share of memory is dirty, so a restore would otherwise fetch, then wait on the
/// disk).
struct WritebackFile {
    file: File,
    /// The file position.
    at: u64,
    /// The span written since the last writeback was started, and its bytes.
    dirty: Range<u64>,
    dirty_bytes: u64,
}

/// Bytes written between two starts of writeback.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl WritebackFile {
    fn new(file: File) -> Self {
        Self {
            file,
            at: 0,
            dirty: 0..0,
            dirty_bytes: 0,
        }
    }

    /// Notes `n` bytes written at the position, and starts their writeback once enough
    /// is pending.
    fn wrote(&mut self, n: usize) -> io::Result<usize> {
        let end = self.at + n as u64;
        self.dirty = if self.dirty_bytes == 0 {
            self.at..end
        } else {
            self.dirty.start.min(self.at)..self.dirty.end.max(end)
        };
        self.dirty_bytes += n as u64;
        self.at = end;
        if self.dirty_bytes >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.dirty.clone())?;
            self.dirty_bytes = 0;
        }
        Ok(n)
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.wrote(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.wrote(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for WritebackFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.at = self.file.seek(pos)?;
        Ok(self.at)
    }
}

/// The target commit and the segment holding it, found from catalog lookups and commit
/// tables alone (a few hundred bytes a segment, whatever its size).
pub(crate) struct Target {
    pub(crate) key: SegmentKey,
    pub(crate) table: CommitTable,
    pub(crate) commit: Commit,
}

impl Target {
    /// True when the commit is its segment's last, so the segment's page index names
    /// the frames it needs.
    fn is_last(&self) -> bool {
        self.commit.frame_no == self.key.end_frame_no
    }

    /// Where the walk over the history starts: at the target segment itself when its
    /// index serves, else just below it (its frames are scanned instead).
    fn walk_from(&self) -> u64 {
        if self.is_last() {
            self.key.end_frame_no
        } else {
            self.key.start_frame_no - 1
        }
    }
}

/// The target commit of `options` and the segment holding it.
pub(crate) async fn locate_target<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    options: RestoreOptions,
    config: &Option<S::Config>,
) -> Result<Target> {
    let req = match options {
        RestoreOptions::Latest => {
            let durable = storage.durable_frame_no(ns, config.clone()).await?;
            FindSegmentReq::EndFrameNoLessThan(durable)
        }
        RestoreOptions::Timestamp(t) => {
            crate::format::timestamp_ms(t)?;
            FindSegmentReq::Timestamp(t)
        }
        RestoreOptions::FrameNo(n) => {
            // The segment containing `n` holds the target if it has a commit at or before
            // `n`; otherwise the target is the last commit of the segment before.
            let mut first_commit = None;
            if let Ok(key) = storage
                .find_segment(ns, FindSegmentReq::Containing(n), config.clone())
                .await
            {
                let table = storage.fetch_commit_table(ns, &key, config.clone()).await?;
                match table.commits().first() {
                    Some(c) if c.frame_no <= n => return target_in(ns, key, table, options),
                    first => first_commit = first.copied(),
                }
            }
            let req = FindSegmentReq::EndFrameNoLessThan(n);
            let key = match storage.find_segment(ns, req, config.clone()).await {
                Ok(key) => key,
                // No segment ends at or before `n`, so the one containing it is the
                // first: its first commit is the first restorable one, and is named.
                Err(e) if e.is_not_found() => {
                    return Err(first_commit.map_or(e, |c| before_first_commit(ns, n, &c)))
                }
                Err(e) => return Err(e),
            };
            let table = storage.fetch_commit_table(ns, &key, config.clone()).await?;
            return target_in(ns, key, table, options);
        }
    };
    let key = storage.find_segment(ns, req, config.clone()).await?;
    let table = storage.fetch_commit_table(ns, &key, config.clone()).await?;
    target_in(ns, key, table, options)
}

/// The error for a frame number below the first commit of a namespace's history.
fn before_first_commit(ns: &NamespaceName, n: u64, first: &Commit) -> Error {
    Error::NotFound(format!(
        "frame {n} is before the first restorable commit of namespace {ns}: frame {} at {}",
        first.frame_no,
        super::stamp(ms_to_datetime(first.timestamp_ms))
    ))
}

/// The last commit of `table` within the target. Lookups only return segments whose
/// first commit is within the target; a table without commits is corrupt.
fn target_in(
    ns: &NamespaceName,
    key: SegmentKey,
    table: CommitTable,
    options: RestoreOptions,
) -> Result<Target> {
    let within = |c: &&Commit| match options {
        RestoreOptions::Latest => true,
        RestoreOptions::FrameNo(n) => c.frame_no <= n,
        RestoreOptions::Timestamp(t) => {
            i64::try_from(c.timestamp_ms).is_ok_and(|ms| ms <= t.timestamp_millis())
        }
    };
    let commits = table.commits();
    let commit = commits.iter().rev().find(within).or(commits.first());
    let Some(&commit) = commit else {
        let reason = FormatError::Invalid {
            part: Part::CommitTable,
            offset: 0,
            reason: "a sealed segment without commits",
        };
        return Err(Error::corrupt(format!("segment {key} of {ns}"), reason));
    };
    Ok(Target { key, table, commit })
}

/// The page size of the target's history, from one frame of the target segment (commit
/// tables do not carry it).
async fn page_size_of<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    target: &Target,
    config: &Option<S::Config>,
) -> Result<u32> {
    let frames = storage
        .fetch_frames(ns, &target.key, &[0], config.clone())
        .await?;
    match frames.first() {
        Some((_, data)) => u32::try_from(data.len())
            .map_err(|_| Error::io("reading a page size", io::ErrorKind::InvalidData.into())),
        None => Err(backend_miscounted("frames", 0, 1)),
    }
}

/// Which pages of the target database are still to be written: one bit per page.
struct PageSet {
    bits: Vec<u64>,
    size: u32,
    missing: u32,
}

impl PageSet {
    fn new(size: u32) -> Self {
        Self {
            bits: vec![0; (size as usize).div_ceil(64)],
            size,
            missing: size,
        }
    }

    /// Marks `page_no` written; false if it is beyond the database or already written.
    fn take(&mut self, page_no: u32) -> bool {
        if page_no == 0 || page_no > self.size {
            return false;
        }
        let (word, bit) = ((page_no - 1) as usize / 64, (page_no - 1) % 64);
        let had = self.bits[word] & (1 << bit) != 0;
        self.bits[word] |= 1 << bit;
        if !had {
            self.missing -= 1;
        }
        !had
    }

    /// True if `page_no` is in the database and not yet written.
    fn wants(&self, page_no: u32) -> bool {
        if page_no == 0 || page_no > self.size {
            return false;
        }
        let (word, bit) = ((page_no - 1) as usize / 64, (page_no - 1) % 64);
        self.bits[word] & (1 << bit) == 0
    }

    fn first_missing(&self) -> Option<u32> {
        (1..=self.size).find(|&p| self.wants(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SegmentKey {
        SegmentKey {
            start_frame_no: 1,
            end_frame_no: 4,
            timestamp: 0,
        }
    }

    fn frames(pages: &[u32], len: usize) -> Vec<(u32, Bytes)> {
        pages
            .iter()
            .map(|&p| (p, Bytes::from(vec![0u8; len])))
            .collect()
    }

    #[test]
    fn fetched_frames_must_hold_the_pages_the_index_named() {
        let ns = NamespaceName::new("ns").unwrap();
        let wanted = [(0, 7), (2, 9)];
        assert!(check_frames(&ns, &key(), &wanted, &frames(&[7, 9], 512), 512).is_ok());
        let swapped = check_frames(&ns, &key(), &wanted, &frames(&[7, 8], 512), 512);
        let message = swapped.unwrap_err().to_string();
        assert!(message.contains("another page"), "{message}");
        let short = check_frames(&ns, &key(), &wanted, &frames(&[7], 512), 512);
        assert!(short.unwrap_err().is_corrupt());
        let size = check_frames(&ns, &key(), &wanted, &frames(&[7, 9], 1024), 512);
        assert!(size.unwrap_err().to_string().contains("page size"));
    }

    use std::io::Cursor;

    use chrono::TimeZone;

    use crate::format::{SealedSegment, SegmentBuilder};
    use crate::storage::{on_store, LocalStorage, MemoryStorage};

    const PAGE: usize = 512;

    /// Segments and, for some commits, the frame number and the database it leaves.
    struct History {
        segments: Vec<SealedSegment>,
        images: Vec<(u64, Vec<u8>)>,
    }

    fn page(frame_no: u64, page_no: u32) -> Vec<u8> {
        let mut data = vec![(frame_no as u8) ^ (page_no as u8); PAGE];
        data[..8].copy_from_slice(&frame_no.to_le_bytes());
        data[8..12].copy_from_slice(&page_no.to_le_bytes());
        data
    }

    /// A base segment writing every page, then `count` segments of random overwrites
    /// that now and then grow the database: many more segments than one index batch, and
    /// more pages than one frame batch holds in tests.
    fn history(count: usize) -> History {
        let at = |n: i64| Utc.timestamp_millis_opt(1_000 + n).unwrap();
        let mut b = SegmentBuilder::new(1, PAGE as u32).unwrap();
        let mut db: Vec<Vec<u8>> = Vec::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u32| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % u64::from(n)) as u32
        };
        let mut history = History {
            segments: Vec::new(),
            images: Vec::new(),
        };
        let mut commits = 0;
        for s in 0..=count {
            for t in 0..2 {
                let size = db.len() as u32;
                let mut pages: Vec<u32> = match (s, size) {
                    (0, _) => (1..=200).collect(),
                    (_, _) if next(10) == 0 => (size + 1..=size + 5).collect(),
                    _ => (0..6).map(|_| next(size) + 1).collect(),
                };
                let last = pages.pop().unwrap();
                let grown = pages.iter().chain([&last]).fold(size, |m, &p| m.max(p));
                db.resize(grown as usize, Vec::new());
                for p in pages {
                    let data = page(b.next_frame_no(), p);
                    b.append_frame(p, &data).unwrap();
                    db[p as usize - 1] = data;
                }
                let data = page(b.next_frame_no(), last);
                let frame_no = b.append_commit(last, &data, grown, at(commits)).unwrap();
                db[last as usize - 1] = data;
                commits += 1;
                if (s + t) % 7 == 0 || s == count {
                    history.images.push((frame_no, db.concat()));
                }
            }
            history.segments.push(b.seal(at(commits)).unwrap());
        }
        history
    }

    async fn restores_every_image<S: Storage>(storage: &S, history: &History) {
        let ns = NamespaceName::new("long").unwrap();
        store_all(storage, &ns, &history.segments).await;
        for (frame_no, image) in &history.images {
            let options = RestoreOptions::FrameNo(*frame_no);
            let mut out = Cursor::new(Vec::new());
            let summary = storage.restore(&ns, options, &mut out, None).await.unwrap();
            assert!(
                out.get_ref() == image,
                "restore at frame {frame_no} differs"
            );
            let plan = plan(storage, &ns, options, None).await.unwrap();
            assert_eq!(plan.segments.len(), summary.segments_read);
        }
    }

    #[tokio::test]
    async fn a_long_history_restores_exactly_through_every_batch() {
        let history = history(120);
        let dir = tempfile::tempdir().unwrap();
        restores_every_image(&LocalStorage::open(dir.path()).unwrap(), &history).await;
        restores_every_image(&MemoryStorage::new(), &history).await;
    }

    async fn store_all<S: Storage>(storage: &S, ns: &NamespaceName, segments: &[SealedSegment]) {
        for segment in segments {
            let stored = storage.store(ns, segment.clone(), None, on_store(|_| async {}));
            stored.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_unreadable_segment_read_ahead_but_not_needed_is_no_error() {
        let history = history(4);
        assert!(history.segments.len() < INDEX_BATCH);
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let oldest = history.segments[0].key();
        let remove_oldest = |ns: &str| {
            let path = dir.path().join(ns).join(format!("{oldest}.seg"));
            fs::remove_file(path).unwrap();
        };
        // Needed: the restore fails, naming the segment.
        let ns = NamespaceName::new("long").unwrap();
        store_all(&storage, &ns, &history.segments).await;
        remove_oldest("long");
        let mut out = Cursor::new(Vec::new());
        let restored = storage.restore(&ns, RestoreOptions::Latest, &mut out, None);
        let err = restored.await.unwrap_err();
        assert!(err.to_string().contains(&oldest.to_string()), "{err}");

        // Read ahead but not needed: a newest segment rewrites every page but one that
        // the segment before it holds, so the walk stops there.
        let (_, image) = history.images.last().unwrap();
        let newest = history.segments.last().unwrap();
        let frame_no = |data: &[u8]| u64::from_le_bytes(data[..8].try_into().unwrap());
        let pages: Vec<&[u8]> = image.chunks(PAGE).collect();
        let kept = 1 + pages
            .iter()
            .position(|data| frame_no(data) >= newest.start_frame_no())
            .unwrap() as u32;
        let mut b = SegmentBuilder::new(newest.end_frame_no() + 1, PAGE as u32).unwrap();
        let size = pages.len() as u32;
        let rewritten: Vec<u32> = (1..=size).filter(|&p| p != kept).collect();
        let (&last, rest) = rewritten.split_last().unwrap();
        for &p in rest {
            b.append_frame(p, pages[p as usize - 1]).unwrap();
        }
        let at = Utc.timestamp_millis_opt(1_000_000).unwrap();
        b.append_commit(last, pages[last as usize - 1], size, at)
            .unwrap();
        let full = NamespaceName::new("full").unwrap();
        store_all(&storage, &full, &history.segments).await;
        store_all(&storage, &full, &[b.seal(at).unwrap()]).await;
        remove_oldest("full");
        let mut out = Cursor::new(Vec::new());
        let restored = storage.restore(&full, RestoreOptions::Latest, &mut out, None);
        assert_eq!(restored.await.unwrap().segments_read, 2);
        assert!(out.get_ref() == image);
    }
}

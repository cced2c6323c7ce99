//! A view: the database as of one commit, read page by page from the store.
//!
//! Resolving a view finds its commit (one catalog lookup, O(log n), no listing) and
//! fixes where each of its pages comes from: the newest frame of the page at or before
//! the commit. That is the first segment holding the page, walking the history newest
//! first from the commit's segment; the walk's segments and their page indexes are
//! found once per view, as pages ask for them, and every page found is remembered.
//! When the commit is not its segment's last, that segment's index (which names each
//! page's newest frame in the whole segment) cannot be used: its frames up to the
//! commit are read once, a chunk at a time, and make a small map of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::cache::{Cache, SegmentId};
use super::run::{block, spawn};
use super::runs::{Pending, Run, Runs};
use super::source::Source;
use crate::error::{Error, FormatError, Part, Result};
use crate::format::{Commit, NamespaceName, PageIndex, SegmentKey};
use crate::storage::{stamp, FindSegmentReq, RestoreOptions};

/// Which moment a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewAt {
    /// The latest durable commit, moved forward at the start of every read transaction.
    Latest,
    /// The last commit at or before this frame number.
    Frame(u64),
    /// The last commit at or before this time.
    Time(DateTime<Utc>),
}

impl ViewAt {
    fn options(self) -> RestoreOptions {
        match self {
            ViewAt::Latest => RestoreOptions::Latest,
            ViewAt::Frame(n) => RestoreOptions::FrameNo(n),
            ViewAt::Time(t) => RestoreOptions::Timestamp(t),
        }
    }
}

/// What a view shows: its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewInfo {
    /// Frame number of the commit.
    pub frame_no: u64,
    /// Time of the commit.
    pub timestamp: DateTime<Utc>,
    /// Database size in pages after the commit.
    pub db_pages: u32,
    /// Page size in bytes.
    pub page_size: u32,
}

/// A namespace of a store, and the cache its pages go through.
pub(crate) struct Namespace {
    pub(crate) name: NamespaceName,
    pub(crate) store: u64,
    pub(crate) source: Arc<dyn Source>,
    pub(crate) cache: Arc<Cache>,
    /// A following view looks at the store at most this often (zero: at every read
    /// transaction).
    pub(crate) refresh_every: Duration,
    /// When the catalog was last refreshed.
    pub(crate) refreshed: Mutex<Option<Instant>>,
}

impl Namespace {
    fn segment(&self, key: SegmentKey) -> SegmentId {
        SegmentId {
            store: self.store,
            ns: self.name.clone(),
            key,
        }
    }

    /// The frame number of the latest durable commit, after one refresh of the catalog
    /// unless one was made less than `refresh_every` ago.
    pub(crate) fn latest_frame(&self) -> Result<u64> {
        let now = Instant::now();
        let recent =
            lock(&self.refreshed).is_some_and(|at| now.duration_since(at) < self.refresh_every);
        if !recent {
            block(self.source.refresh(&self.name))?;
            *lock(&self.refreshed) = Some(now);
        }
        block(self.source.durable(&self.name))
    }
}

/// Segments to look pages up in, newest first, found as they are needed.
struct Chain {
    /// Keys found so far, with the highest frame position each one's index names.
    keys: Vec<(SegmentKey, Option<u32>)>,
    /// The next segment to look for ends at or before this frame (0: none left).
    below: u64,
}

/// Index reads started together when the walk needs more of the history.
const INDEX_BATCH: usize = 8;
/// Pages remembered per view before the memo starts over (about 3 MiB; a page
/// forgotten is found again through the cached indexes).
const MEMO_LIMIT: usize = 1 << 16;
/// Frames read per request while mapping a target segment up to its commit.
const SCAN_CHUNK: u32 = 256;

/// Every view gets its own number, which the page-1 header carries as SQLite's change
/// counter: a connection whose view moved drops the pages it cached.
static GENERATION: AtomicU32 = AtomicU32::new(1);

/// The database as of one commit.
pub(crate) struct View {
    pub(crate) at: ViewAt,
    pub(crate) commit: Commit,
    pub(crate) page_size: u32,
    pub(crate) generation: u32,
    ns: Arc<Namespace>,
    target: SegmentKey,
    /// When the commit is inside its segment: each page's newest position up to it.
    overlay: Option<HashMap<u32, u32>>,
    /// The commit's position in its segment (reads ahead stop there).
    commit_position: Option<u32>,
    chain: Mutex<Chain>,
    /// Pages found by walking: segment, position, and the highest position of it.
    memo: Mutex<HashMap<u32, (SegmentKey, u32, u32)>>,
}

impl View {
    /// Finds the commit `at` names and prepares to read its pages.
    pub(crate) fn resolve(ns: Arc<Namespace>, at: ViewAt) -> Result<View> {
        let target = match block(ns.source.locate(&ns.name, at.options())) {
            Ok(target) => target,
            Err(e) if e.is_not_found() && at != ViewAt::Latest => {
                return Err(with_span(&ns, e));
            }
            Err(e) => return Err(e),
        };
        let key = target.key;
        let commit = target.commit;
        let page_size = target.table.page_size();
        let inside = commit.frame_no != key.end_frame_no;
        let (overlay, commit_position, below) = if inside {
            let table = target.table.clone();
            let position = block(ns.source.position_of(&ns.name, table, commit.frame_no))?
                .ok_or_else(|| {
                    corrupt(&ns.name, key, "a commit names a frame the segment lacks")
                })?;
            let overlay = map_up_to(&ns, key, position, page_size)?;
            (
                Some(overlay),
                Some(position),
                key.start_frame_no.saturating_sub(1),
            )
        } else {
            (None, None, key.end_frame_no)
        };
        Ok(View {
            at,
            commit,
            page_size,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            ns,
            target: key,
            overlay,
            commit_position,
            chain: Mutex::new(Chain {
                keys: Vec::new(),
                below,
            }),
            memo: Mutex::new(HashMap::new()),
        })
    }

    /// The same commit, resolved again after a refresh of the catalog: for a view whose
    /// segments were replaced by compaction since it was resolved. It reads the same
    /// database, so it keeps the generation (SQLite's cached pages stay right).
    pub(crate) fn found_again(&self) -> Result<View> {
        block(self.ns.source.refresh(&self.ns.name))?;
        let mut view = View::resolve(self.ns.clone(), ViewAt::Frame(self.commit.frame_no))?;
        if view.commit != self.commit {
            return Err(Error::NotFound(format!(
                "commit {} of namespace {} is no longer in the store's history (retention?)",
                self.commit.frame_no, self.ns.name
            )));
        }
        view.at = self.at;
        view.generation = self.generation;
        Ok(view)
    }

    pub(crate) fn info(&self) -> ViewInfo {
        ViewInfo {
            frame_no: self.commit.frame_no,
            timestamp: self.commit.timestamp(),
            db_pages: self.commit.size_after,
            page_size: self.page_size,
        }
    }

    /// The database size in bytes.
    pub(crate) fn file_size(&self) -> u64 {
        u64::from(self.commit.size_after) * u64::from(self.page_size)
    }

    /// Page `page_no` (1-based) as of the view's commit, verified: from the connection's
    /// current run, the cache, a run read ahead, or the store (with the frames after it
    /// in its segment when the connection reads in order, see [`Runs`]).
    pub(crate) fn page(&self, page_no: u32, runs: &mut Runs) -> Result<Bytes> {
        let (key, position, last) = self.locate(page_no)?;
        if let Some((got, page)) = runs.frame(key, position).cloned() {
            return self.check(key, page_no, got, page);
        }
        let segment = self.ns.segment(key);
        if let Some(page) = self.ns.cache.page(&segment, position) {
            return Ok(page);
        }
        let (start, length) = runs.plan(key, position, self.page_size);
        let run = match runs.take_pending(key, position) {
            Some(pending) => self.receive(pending)?,
            None => {
                let end = start.saturating_add(length - 1).max(position).min(last);
                self.read_run(key, start, end, length)?
            }
        };
        if Runs::steady(length, self.page_size) && run.end() <= last {
            let end = run.end().saturating_add(length - 1).min(last);
            runs.next = Some(self.read_ahead(key, run.end(), end));
        }
        let (got, page) = run
            .get_at(key, position)
            .cloned()
            .ok_or_else(|| corrupt(&self.ns.name, key, "a frame its index names is missing"))?;
        runs.keep(run);
        let page = self.check(key, page_no, got, page)?;
        Ok(self.ns.cache.put_page(&segment, position, &page))
    }

    /// A frame is the page asked for: its page number and size.
    fn check(&self, key: SegmentKey, page_no: u32, got: u32, page: Bytes) -> Result<Bytes> {
        if got != page_no {
            return Err(corrupt(
                &self.ns.name,
                key,
                "the index names another page's frame",
            ));
        }
        if page.len() != self.page_size as usize {
            return Err(corrupt(&self.ns.name, key, "a frame of another page size"));
        }
        Ok(page)
    }

    /// Frames `start..=end` of `key`, read now.
    fn read_run(&self, key: SegmentKey, start: u32, end: u32, length: u32) -> Result<Run> {
        let positions: Vec<u32> = (start..=end).collect();
        let frames = block(self.ns.source.frames(&self.ns.name, key, positions))?;
        self.run_of(key, start, end, length, frames)
    }

    /// Frames `start..=end` of `key`, read in the background.
    fn read_ahead(&self, key: SegmentKey, start: u32, end: u32) -> Pending {
        let positions: Vec<u32> = (start..=end).collect();
        let frames = spawn(self.ns.source.frames(&self.ns.name, key, positions));
        Pending {
            key,
            start,
            end: end + 1,
            frames,
        }
    }

    fn receive(&self, pending: Pending) -> Result<Run> {
        let frames = pending.frames.recv().unwrap_or_else(|_| {
            Err(Error::io(
                "reading ahead",
                std::io::Error::other("the read was dropped before it finished"),
            ))
        })?;
        let length = pending.end - pending.start;
        self.run_of(pending.key, pending.start, pending.end - 1, length, frames)
    }

    fn run_of(
        &self,
        key: SegmentKey,
        start: u32,
        end: u32,
        length: u32,
        frames: Vec<(u32, Bytes)>,
    ) -> Result<Run> {
        if frames.len() as u64 != u64::from(end - start) + 1 {
            return Err(corrupt(
                &self.ns.name,
                key,
                "the store returned another number of frames",
            ));
        }
        Ok(Run {
            key,
            start,
            frames,
            length,
        })
    }

    /// The segment and position of the page's newest frame at the commit, and the
    /// highest position read-ahead may go to in that segment.
    fn locate(&self, page_no: u32) -> Result<(SegmentKey, u32, u32)> {
        if let (Some(overlay), Some(last)) = (&self.overlay, self.commit_position) {
            if let Some(&position) = overlay.get(&page_no) {
                return Ok((self.target, position, last));
            }
        }
        if let Some(found) = lock(&self.memo).get(&page_no).copied() {
            return Ok(found);
        }
        let found = self.walk(page_no)?;
        let mut memo = lock(&self.memo);
        if memo.len() >= MEMO_LIMIT {
            memo.clear();
        }
        memo.insert(page_no, found);
        Ok(found)
    }

    /// Walks the history newest first to the first segment holding the page.
    fn walk(&self, page_no: u32) -> Result<(SegmentKey, u32, u32)> {
        let mut chain = lock(&self.chain);
        let mut at = 0;
        loop {
            if at == chain.keys.len() && !self.extend(&mut chain)? {
                let what = format!(
                    "page {page_no} of namespace {} at frame {}",
                    self.ns.name, self.commit.frame_no
                );
                let reason = FormatError::Invalid {
                    part: Part::PageIndex,
                    offset: 0,
                    reason: "is in no segment of the history",
                };
                return Err(Error::corrupt(what, reason));
            }
            let (key, _) = chain.keys[at];
            let index = self.index(key)?;
            if chain.keys[at].1.is_none() {
                chain.keys[at].1 = Some(index.iter().map(|(_, p)| p).max().unwrap_or(0));
            }
            if let Some(position) = index.get(page_no) {
                let last = chain.keys[at].1.unwrap_or(position);
                return Ok((key, position, last.max(position)));
            }
            at += 1;
        }
    }

    /// Finds the next few segments of the history and reads their indexes together;
    /// false when the history has no more.
    fn extend(&self, chain: &mut Chain) -> Result<bool> {
        let mut found = Vec::new();
        while found.len() < INDEX_BATCH && chain.below > 0 {
            self.check_unbroken(chain.below)?;
            let req = FindSegmentReq::EndFrameNoLessThan(chain.below);
            match block(self.ns.source.find(&self.ns.name, req))? {
                Some(key) => {
                    chain.below = key.start_frame_no.saturating_sub(1);
                    found.push(key);
                }
                None => chain.below = 0,
            }
        }
        if found.is_empty() {
            return Ok(false);
        }
        let missing: Vec<SegmentKey> = found
            .iter()
            .copied()
            .filter(|k| self.ns.cache.index(&self.ns.segment(*k)).is_none())
            .collect();
        if !missing.is_empty() {
            let read = block(self.ns.source.indexes(&self.ns.name, missing.clone()));
            for (key, index) in missing.into_iter().zip(read) {
                // An index that fails to read fails the page that needs it, not the walk.
                if let Ok(index) = index {
                    self.ns
                        .cache
                        .put_index(&self.ns.segment(key), Arc::new(index));
                }
            }
        }
        chain.keys.extend(found.into_iter().map(|k| (k, None)));
        Ok(true)
    }

    /// The walk goes on below frame `below`: no segment may hold that frame and frames
    /// after it. One does when compaction merged segments across the walk's place since
    /// the view was resolved (the walk would skip the merged-in frames and serve older
    /// versions of their pages). That is a `NotFound`, which resolves the view again
    /// from the catalog as it is now (see `DbFile::read`).
    fn check_unbroken(&self, below: u64) -> Result<()> {
        let req = FindSegmentReq::Containing(below);
        let holder = block(self.ns.source.find(&self.ns.name, req))?;
        match holder {
            Some(key) if key.end_frame_no > below => Err(Error::NotFound(format!(
                "segment {key} of {} was merged across frame {below} since the view at frame \
                 {} was resolved",
                self.ns.name, self.commit.frame_no
            ))),
            _ => Ok(()),
        }
    }

    fn index(&self, key: SegmentKey) -> Result<Arc<PageIndex>> {
        let segment = self.ns.segment(key);
        if let Some(index) = self.ns.cache.index(&segment) {
            return Ok(index);
        }
        let read = block(self.ns.source.indexes(&self.ns.name, vec![key]));
        let index = read
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(corrupt(&self.ns.name, key, "the store returned no index")))?;
        let index = Arc::new(index);
        self.ns.cache.put_index(&segment, index.clone());
        Ok(index)
    }
}

/// Each page's newest position in `key` up to `commit_position`, read a chunk at a time
/// (the frames go to the cache on the way).
fn map_up_to(
    ns: &Namespace,
    key: SegmentKey,
    commit_position: u32,
    page_size: u32,
) -> Result<HashMap<u32, u32>> {
    let segment = ns.segment(key);
    let mut overlay = HashMap::new();
    let mut start = 0;
    while start <= commit_position {
        let end = commit_position.min(start.saturating_add(SCAN_CHUNK - 1));
        let positions: Vec<u32> = (start..=end).collect();
        let frames = block(ns.source.frames(&ns.name, key, positions))?;
        if frames.len() as u32 != end - start + 1 {
            return Err(corrupt(&ns.name, key, "the store returned too few frames"));
        }
        for (offset, (page_no, data)) in frames.iter().enumerate() {
            if data.len() != page_size as usize {
                return Err(corrupt(&ns.name, key, "a frame of another page size"));
            }
            let position = start + offset as u32;
            ns.cache.put_page(&segment, position, data);
            overlay.insert(*page_no, position);
        }
        start = end + 1;
    }
    Ok(overlay)
}

/// A lookup before the history: the error says what the history spans.
fn with_span(ns: &Namespace, e: Error) -> Error {
    let first = block(ns.source.oldest(&ns.name)).ok().flatten();
    let latest = block(ns.source.locate(&ns.name, RestoreOptions::Latest)).ok();
    match (e, first, latest) {
        (Error::NotFound(e), Some(first), Some(latest)) => Error::NotFound(format!(
            "{e}; the history of namespace {} spans {} (frame {}) to {} (frame {})",
            ns.name,
            stamp(first.timestamp()),
            first.start_frame_no,
            stamp(latest.commit.timestamp()),
            latest.commit.frame_no
        )),
        (e, _, _) => e,
    }
}

fn corrupt(ns: &NamespaceName, key: SegmentKey, reason: &'static str) -> Error {
    Error::corrupt(
        format!("segment {key} of {ns}"),
        FormatError::Invalid {
            part: Part::Header,
            offset: 0,
            reason,
        },
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

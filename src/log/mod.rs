//! The log writer: the part a SQLite-style WAL calls into.
//!
//! [`LogWriter::append`] takes one transaction (page writes and the database size after
//! its commit), gives its frames numbers from the [`FrameAllocator`], appends them to the
//! open-segment file and returns a handle to wait on. The levels mean, across a crash:
//!
//! * `Applied`: in the open-segment file's page cache; **may be lost** by a crash.
//! * `Written`: the open-segment file is fsynced through the frame; recovered after a
//!   crash of the process or machine, byte for byte.
//! * `Durable`: in the storage backend; survives the loss of this machine.
//!
//! The open segment is sealed by policy (frames, bytes, age) and handed to storage in the
//! background. Until storage reports it durable, its open-segment file stays on disk, so a
//! restart re-submits it. After a crash, a torn transaction (frames after the last commit)
//! is dropped, and the frame numbers the allocator had reserved but not used are recorded
//! as a gap.

mod dirlock;
mod recovery;
mod retry;
mod shared;
mod stats;
mod sums;
mod wal;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use self::retry::RetryPolicy;
use self::shared::{Sealed, Shared};
pub use self::stats::LogStats;
use self::wal::{WalFile, WalFrameRef};
pub use crate::clock::{Clock, SystemClock};
use crate::durability::{Durability, DurabilityTracker, FrameAllocator, DEFAULT_BLOCK_SIZE};
use crate::error::{Error, InvalidInput, Result};
use crate::format::{
    ms_to_datetime, timestamp_ms, Frame, NamespaceName, PageSums, SealedSegment, SegmentBuilder,
    SegmentKey,
};
use crate::storage::{FindSegmentReq, Storage};

/// How a [`LogWriter`] keeps and seals its log. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Local directory for the open-segment files and the allocator's state.
    pub dir: PathBuf,
    /// Page size of the database, a power of two from 512 to 65536. Default 4096.
    pub page_size: u32,
    /// Seal once the open segment has this many frames. Default 2048.
    pub seal_frames: u32,
    /// Seal once the open segment holds this many bytes of frames. Default 8 MiB.
    pub seal_bytes: usize,
    /// Seal once the open segment's first frame is this old (checked on each append and
    /// by [`LogWriter::maybe_seal`]). Default 10 s.
    pub seal_age: Duration,
    /// Frame numbers reserved per allocator block. Default 4096.
    pub allocator_block: u64,
    /// The clock commit timestamps come from. Default the system clock.
    pub clock: Arc<dyn Clock>,
    /// The longest appended frames wait for an fsync when nobody waits for `Written`
    /// (a wait for `Written` or `Durable` asks for one at once). Default 1 s.
    pub sync_interval: Duration,
    /// How sealed segments the store did not take are retried. Default: transient
    /// errors (an unreachable, failing or throttling store) forever, with backoff from
    /// 250 ms to 5 s, and for 10 s once the log closes; see [`RetryPolicy`].
    pub store_retry: RetryPolicy,
}

impl LogConfig {
    /// The defaults, keeping local files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            page_size: 4096,
            seal_frames: 2048,
            seal_bytes: 8 << 20,
            seal_age: Duration::from_secs(10),
            allocator_block: DEFAULT_BLOCK_SIZE,
            clock: Arc::new(SystemClock),
            sync_interval: Duration::from_secs(1),
            store_retry: RetryPolicy::default(),
        }
    }
}

/// The frames a transaction got, and a handle to wait for them.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Frame numbers of the transaction; the last is its commit.
    pub frames: Range<u64>,
    /// The commit's timestamp.
    pub timestamp: DateTime<Utc>,
    shared: Arc<Shared>,
}

impl Appended {
    /// The commit's frame number.
    pub fn commit_frame_no(&self) -> u64 {
        self.frames.end - 1
    }

    /// Resolves once the transaction reaches `level`, or with the error that stopped the
    /// log. Never hangs: closing or failing the log wakes it.
    pub fn wait(
        &self,
        level: Durability,
    ) -> impl std::future::Future<Output = Result<u64>> + Send + 'static {
        if level >= Durability::Written {
            self.shared.sync_requested.notify_one();
        }
        self.shared.tracker.wait(self.commit_frame_no(), level)
    }
}

/// Writes one namespace's log. One writer per namespace: the allocator's state and the
/// open-segment files in [`LogConfig::dir`] belong to it.
#[derive(Debug)]
pub struct LogWriter<S: Storage + Clone> {
    namespace: NamespaceName,
    config: LogConfig,
    storage: S,
    allocator: FrameAllocator,
    builder: SegmentBuilder,
    wal: WalFile,
    opened_at: Option<DateTime<Utc>>,
    last_commit_ms: u64,
    log_id: Uuid,
    shared: Arc<Shared>,
    submit: Option<mpsc::UnboundedSender<SealedSegment>>,
    tasks: Vec<JoinHandle<()>>,
    failed: Option<Error>,
    /// The page hashes of the database after the last appended commit, for its lineage
    /// checksum; None when this log does not know the state it continues (see
    /// [`needs_snapshot`](Self::needs_snapshot)).
    sums: Option<PageSums>,
    /// The lineage base the open-segment file was created with.
    file_base: u64,
    /// One writer per log directory (see `dirlock.rs`); dropped last.
    _dir_lock: dirlock::DirLock,
}

impl<S: Storage + Clone> LogWriter<S> {
    /// Opens (or recovers) the log of `namespace`: replays the open-segment files left by
    /// an earlier run, re-submits sealed segments that are not durable yet, records the
    /// gap a crash left in the frame numbers, and starts a new open segment.
    pub async fn open(storage: S, namespace: NamespaceName, config: LogConfig) -> Result<Self> {
        if config.sync_interval.is_zero() {
            let why = "sync_interval must be longer than zero";
            return Err(InvalidInput::Config(why.into()).into());
        }
        recovery::open(storage, namespace, config).await
    }

    /// The id this writer stamps on the segments it seals.
    pub fn log_id(&self) -> Uuid {
        self.log_id
    }

    /// Resolves once frame `frame_no` reaches `level`, asking for an fsync at once if the
    /// level needs one (a wait on [`tracker`](Self::tracker) does not ask).
    pub fn wait(
        &self,
        frame_no: u64,
        level: Durability,
    ) -> impl std::future::Future<Output = Result<u64>> + Send + 'static {
        if level >= Durability::Written {
            self.shared.sync_requested.notify_one();
        }
        self.shared.tracker.wait(frame_no, level)
    }

    /// Resolves once frame `frame_no` is `Durable`, or fails with [`Error::Diverged`] as
    /// soon as the store refuses a segment of this log because its history moved on: that
    /// frame will then never be stored as it is, and a snapshot must follow
    /// ([`append_snapshot`](Self::append_snapshot)), whose durability covers it.
    pub fn wait_durable(
        &self,
        frame_no: u64,
    ) -> impl std::future::Future<Output = Result<u64>> + Send + 'static {
        self.shared.sync_requested.notify_one();
        let durable = self.shared.tracker.wait(frame_no, Durability::Durable);
        let mut diverged = self.shared.watch_diverged();
        async move {
            tokio::select! {
                biased;
                waited = durable => waited,
                refused = diverged.wait_for(Option::is_some) => match refused {
                    Ok(e) => Err(e.clone().unwrap_or(Error::Closed)),
                    Err(_) => Err(Error::Closed),
                },
            }
        }
    }

    /// The watermarks of this log.
    pub fn tracker(&self) -> &DurabilityTracker {
        &self.shared.tracker
    }

    /// What this log has shipped (segments, bytes, failed and retried uploads), when the
    /// store last answered, and the replication lag: a handle to clone and read from any
    /// task while the log runs.
    pub fn stats(&self) -> &LogStats {
        &self.shared.stats
    }

    /// The frame number the next transaction's first frame will get.
    pub fn next_frame_no(&self) -> u64 {
        self.allocator.peek()
    }

    /// Frames appended to the open segment and not yet sealed.
    pub fn unsealed_frames(&self) -> u32 {
        self.builder.frame_count()
    }

    /// Gaps in the frame numbers: numbers handed out that no transaction kept.
    pub fn gaps(&self) -> &[Range<u64>] {
        self.allocator.gaps()
    }

    /// The highest frame a WAL may checkpoint (drop from its own file): never above the
    /// durable watermark, so a checkpoint can never discard frames that are not yet safe.
    pub fn checkpointable_frame_no(&self) -> u64 {
        self.shared.tracker.watermark(Durability::Durable)
    }

    /// Appends a transaction writing `pages` (page number, page bytes), committed with
    /// `db_size` pages in the database. It is `Applied` when this returns; wait on the
    /// result for `Written` or `Durable`.
    ///
    /// Each commit carries the lineage checksum of the whole database after it, so the
    /// log must know the state it continues: after [`needs_snapshot`](Self::needs_snapshot)
    /// says it does not, this fails with [`Error::Diverged`] and the next transaction
    /// must be an [`append_snapshot`](Self::append_snapshot).
    pub fn append(&mut self, pages: &[(u32, &[u8])], db_size: u32) -> Result<Appended> {
        self.append_continuing(pages, db_size, None)
    }

    /// [`append`](Self::append) with the commit's time given by the caller, which knows
    /// when the transaction committed better than the log does (the replicator takes it
    /// from the WAL's modification time). A time later than the clock's, or earlier than
    /// the previous commit's, is clamped into that range: commit times never go
    /// backwards, and never run ahead of the log's clock. Like every commit time, it is
    /// kept in whole milliseconds, rounded up.
    pub fn append_at(
        &mut self,
        pages: &[(u32, &[u8])],
        db_size: u32,
        at: DateTime<Utc>,
    ) -> Result<Appended> {
        self.append_continuing(pages, db_size, Some(at))
    }

    /// Appends a transaction that continues the log's lineage, at `at` or the clock's
    /// time.
    fn append_continuing(
        &mut self,
        pages: &[(u32, &[u8])],
        db_size: u32,
        at: Option<DateTime<Utc>>,
    ) -> Result<Appended> {
        self.check_usable()?;
        self.check_transaction(pages, db_size)?;
        if let Some(detail) = self.needs_snapshot() {
            return Err(Error::Diverged {
                namespace: self.namespace.to_string(),
                detail,
            });
        }
        self.append_txn(pages, db_size, false, at)
    }

    /// Appends a transaction that writes the whole database: `pages` are pages
    /// `1..=db_size`, each once, in order. It starts a new lineage (a segment of its own,
    /// which a store accepts whatever history it holds), so it is the answer to
    /// [`needs_snapshot`](Self::needs_snapshot). What was open is sealed first.
    pub fn append_snapshot(&mut self, pages: &[(u32, &[u8])], db_size: u32) -> Result<Appended> {
        self.check_usable()?;
        self.check_transaction(pages, db_size)?;
        let whole = pages.len() == db_size as usize
            && pages
                .iter()
                .zip(1..)
                .all(|((page_no, _), want)| *page_no == want);
        if !whole {
            return Err(InvalidInput::Commit {
                frame_no: self.allocator.peek(),
                reason: format!("a snapshot writes pages 1..={db_size}, each once, in order"),
            }
            .into());
        }
        self.seal()?;
        self.append_txn(pages, db_size, true, None)
    }

    /// Why the next transaction must be a snapshot, if it must: the log does not know the
    /// database state it continues (a first run, or lost page sums), or the store refused
    /// a segment because its history moved on without this log ([`Error::Diverged`]).
    pub fn needs_snapshot(&self) -> Option<String> {
        if let Some(e) = self.shared.diverged() {
            return Some(e.to_string());
        }
        self.sums.is_none().then(|| {
            "the log does not know the database state it continues (no page sums)".to_string()
        })
    }

    /// Appends one transaction. Everything that can fail without harm (the clock, the
    /// allocator) runs before the page sums change; anything that fails after that
    /// latches the log, so the sums never describe a transaction the log does not hold.
    fn append_txn(
        &mut self,
        pages: &[(u32, &[u8])],
        db_size: u32,
        snapshot: bool,
        at: Option<DateTime<Utc>>,
    ) -> Result<Appended> {
        let mut txn = self.begin_txn(pages.len() as u64, db_size, snapshot, at)?;
        if let Err(e) = self.write_chunk(&mut txn, pages) {
            return Err(self.fail(e));
        }
        self.end_txn(txn)
    }

    /// Appends a snapshot of a database of `db_size` pages (at least 1) read a chunk at a
    /// time: `read(first, buf)` fills `buf` with the pages from `first` on, one
    /// `page_size` slice each. Memory stays within a share of the budget
    /// ([`crate::memory_budget`]) whatever the database's size; the open segment
    /// spills to a file in [`LogConfig::dir`] past its share. What was open is sealed
    /// first, as for [`append_snapshot`](Self::append_snapshot).
    ///
    /// An error from `read` latches the log: the transaction's frame numbers and the
    /// page sums it starts from are taken before the first page is read. The log must
    /// be opened again to go on.
    pub fn append_snapshot_with(
        &mut self,
        db_size: u32,
        mut read: impl FnMut(u32, &mut [u8]) -> Result<()>,
    ) -> Result<Appended> {
        self.check_usable()?;
        if db_size == 0 {
            return Err(InvalidInput::Commit {
                frame_no: self.allocator.peek(),
                reason: "a snapshot writes at least one page".into(),
            }
            .into());
        }
        self.seal()?;
        let page_size = self.config.page_size as usize;
        let mut first = 1u32;
        let next = |chunk: &mut PageChunk| {
            let n = (chunk_pages(page_size) as u64).min(u64::from(db_size - first) + 1) as u32;
            chunk.page_nos.extend(first..first + n);
            chunk.data.resize(n as usize * page_size, 0);
            read(first, &mut chunk.data)?;
            first += n;
            Ok(())
        };
        self.append_chunked(u64::from(db_size), db_size, true, None, next)
    }

    /// [`append_at`](Self::append_at) for a transaction of `count` pages handed over a
    /// chunk at a time by `next` (each call fills an empty chunk with at least one page,
    /// in order), so a transaction of any size is appended in bounded memory. An error
    /// once pages were appended latches the log.
    // Used by the SQLite integration only.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn append_chunked_at(
        &mut self,
        count: u64,
        db_size: u32,
        at: DateTime<Utc>,
        next: impl FnMut(&mut PageChunk) -> Result<()>,
    ) -> Result<Appended> {
        self.check_usable()?;
        if let Some(detail) = self.needs_snapshot() {
            return Err(Error::Diverged {
                namespace: self.namespace.to_string(),
                detail,
            });
        }
        self.append_chunked(count, db_size, false, Some(at), next)
    }

    fn append_chunked(
        &mut self,
        count: u64,
        db_size: u32,
        snapshot: bool,
        at: Option<DateTime<Utc>>,
        mut next: impl FnMut(&mut PageChunk) -> Result<()>,
    ) -> Result<Appended> {
        let mut txn = self.begin_txn(count, db_size, snapshot, at)?;
        let page_size = self.config.page_size as usize;
        let mut chunk = PageChunk::default();
        while txn.next < txn.frames.end {
            chunk.page_nos.clear();
            chunk.data.clear();
            let written = next(&mut chunk).and_then(|()| {
                if chunk.data.len() != chunk.page_nos.len() * page_size {
                    let e = InvalidInput::PageLength {
                        expected: self.config.page_size,
                        actual: chunk.data.len() / chunk.page_nos.len().max(1),
                    };
                    return Err(e.into());
                }
                let pages: Vec<(u32, &[u8])> = chunk
                    .page_nos
                    .iter()
                    .copied()
                    .zip(chunk.data.chunks_exact(page_size))
                    .collect();
                self.check_pages(&pages)?;
                self.write_chunk(&mut txn, &pages)
            });
            if let Err(e) = written {
                return Err(self.fail(e));
            }
        }
        self.end_txn(txn)
    }

    /// Starts a transaction of `count` frames: its time stamp, its frame numbers, and
    /// the page sums it builds on. Nothing that fails here harms the log.
    fn begin_txn(
        &mut self,
        count: u64,
        db_size: u32,
        snapshot: bool,
        at: Option<DateTime<Utc>>,
    ) -> Result<OpenTxn> {
        if self.sums.is_none() && !snapshot {
            return Err(Error::Diverged {
                namespace: self.namespace.to_string(),
                detail: "no page sums".into(),
            });
        }
        let now = self.config.clock.now();
        let now_ms = timestamp_ms(now)?;
        // Stamps are whole milliseconds, rounded up: a stamp is never earlier than the
        // moment it stands for, so a restore to a time before a commit never holds it.
        let at_ms = ceil_ms(at.map_or(now, |at| at.min(now)))?;
        // Commit times never go backwards, whatever the clock does.
        let commit_ms = at_ms.max(self.last_commit_ms);
        let frames = self.allocator.allocate(count)?;
        if frames.start != self.builder.next_frame_no() {
            return Err(self.fail(Error::from(InvalidInput::FrameNo {
                frame_no: frames.start,
                reason: "the allocator and the open segment disagree",
            })));
        }
        let sums = match self.sums.as_mut() {
            Some(sums) if !snapshot => sums,
            _ => self.sums.insert(PageSums::new()),
        };
        // A transaction on an empty database writes all of it: a new lineage too.
        let base = if snapshot || sums.db_size() == 0 {
            0
        } else {
            sums.checksum()
        };
        if self.builder.is_empty() {
            if let Err(e) = self.start_segment(base) {
                return Err(self.fail(e));
            }
        }
        Ok(OpenTxn {
            next: frames.start,
            frames,
            db_size,
            commit_ms,
            now_ms,
            snapshot,
        })
    }

    /// Appends the next pages of `txn`; the chunk that reaches its last frame commits it.
    /// The pages were checked (`check_pages`) by the caller.
    fn write_chunk(&mut self, txn: &mut OpenTxn, pages: &[(u32, &[u8])]) -> Result<()> {
        let end = txn.next + pages.len() as u64;
        if pages.is_empty() || end > txn.frames.end {
            return Err(InvalidInput::Commit {
                frame_no: txn.next,
                reason: "the transaction has another number of pages than it announced".into(),
            }
            .into());
        }
        let sums = self.sums.as_mut().ok_or_else(|| Error::Diverged {
            namespace: self.namespace.to_string(),
            detail: "no page sums".into(),
        })?;
        let checksum = sums.apply(pages, txn.db_size)?;
        let commit = (end == txn.frames.end).then_some(Commit {
            db_size: txn.db_size,
            ms: txn.commit_ms,
            checksum,
        });
        self.write(txn.next..end, pages, commit)?;
        txn.next = end;
        Ok(())
    }

    /// Finishes a transaction whose frames were all written.
    fn end_txn(&mut self, txn: OpenTxn) -> Result<Appended> {
        if txn.next != txn.frames.end {
            let e = InvalidInput::Commit {
                frame_no: txn.next,
                reason: "the transaction ended before its last page".into(),
            };
            return Err(self.fail(e.into()));
        }
        if txn.snapshot {
            self.shared.clear_diverged();
        }
        self.last_commit_ms = txn.commit_ms;
        self.shared
            .stats
            .committed(txn.frames.end - 1, txn.commit_ms);
        self.opened_at.get_or_insert(ms_to_datetime(txn.now_ms));
        self.shared
            .tracker
            .advance(Durability::Applied, txn.frames.end - 1)?;
        let appended = Appended {
            frames: txn.frames,
            timestamp: ms_to_datetime(txn.commit_ms),
            shared: self.shared.clone(),
        };
        // The transaction is in the log whatever sealing does; a failed seal latches the
        // log (later appends fail) but does not disown this one.
        if let Err(e) = self.maybe_seal() {
            tracing::error!(error = %e, "sealing failed; the log refuses further appends");
        }
        Ok(appended)
    }

    /// Seals the open segment if the age, size or frame policy says so. Call it on a timer
    /// if the writer can sit idle with an open segment.
    pub fn maybe_seal(&mut self) -> Result<bool> {
        let c = &self.config;
        // A clock that stepped back behind the segment's opening makes it old, so a
        // step back never holds a segment open.
        let old = self.opened_at.is_some_and(|t| {
            (c.clock.now() - t)
                .to_std()
                .map_or(true, |age| age >= c.seal_age)
        });
        let due = self.builder.frame_count() >= c.seal_frames
            || self.builder.buffered_bytes() >= c.seal_bytes
            || old;
        if due {
            self.seal()?;
        }
        Ok(due)
    }

    /// Seals the open segment now (if it has frames) and hands it to storage.
    pub fn seal(&mut self) -> Result<()> {
        self.check_usable()?;
        if self.builder.is_empty() {
            return Ok(());
        }
        let result = self.rotate();
        result.map_err(|e| self.fail(e))
    }

    /// The newest version of `page_no` at or before frame `as_of`, from the open segment,
    /// the sealed segments not yet durable, or storage: its frame number and bytes.
    pub async fn read_page(&self, page_no: u32, as_of: u64) -> Result<Option<(u64, Vec<u8>)>> {
        if let Some((frame_no, data)) = self.builder.find_page(page_no, as_of)? {
            return Ok(Some((frame_no, data.into_owned())));
        }
        let sealed: Vec<SealedSegment> = self
            .shared
            .sealed()
            .iter()
            .map(|s| s.segment.clone())
            .collect();
        for segment in sealed.iter().rev() {
            if let Some(f) = segment.find_page(page_no, as_of)? {
                return Ok(Some((f.frame_no, f.data.to_vec())));
            }
        }
        read_from_storage(&self.storage, &self.namespace, page_no, as_of).await
    }

    /// Seals what is open, flushes it to the open-segment file, and stops the background
    /// tasks once every sealed segment has been handed to storage. With a
    /// [`StoreScheduler`](crate::StoreScheduler) the `Durable` watermark may still move
    /// after this returns, as uploads finish. If the store does not take everything
    /// within [`RetryPolicy::close_timeout`], this returns the error that says what is
    /// left; it stays in the local log and the next open submits it again.
    pub async fn close(mut self) -> Result<()> {
        if self.failed.is_none() {
            self.seal()?;
        }
        self.submit.take();
        self.shared.stop();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Nothing after the last appended frame will come: waits for later frames end.
        let last = self.shared.tracker.watermark(Durability::Applied);
        self.shared.tracker.end_at(last);
        // Segments the store refused were never stored, and no snapshot answered them:
        // their waiters hear why, and so does the caller.
        if let Some(e) = self.shared.diverged() {
            self.shared.tracker.fail(e.clone());
            self.failed.get_or_insert(e);
        }
        // The syncer has stopped; if it made everything written, the sums are exact.
        let written = self.shared.tracker.watermark(Durability::Written);
        if let (None, Some(sums)) = (&self.failed, &self.sums) {
            if written == last && last > 0 {
                sums::save(&self.config.dir, last, sums)?;
            }
        }
        match self.failed.clone().or_else(|| self.shared.tracker.closed()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check_usable(&self) -> Result<()> {
        match self.failed.clone().or_else(|| self.shared.tracker.closed()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check_transaction(&self, pages: &[(u32, &[u8])], db_size: u32) -> Result<()> {
        let commit = |reason: &str| InvalidInput::Commit {
            frame_no: self.allocator.peek(),
            reason: reason.to_string(),
        };
        if pages.is_empty() {
            return Err(commit("a transaction writes at least one page").into());
        }
        if db_size == 0 {
            return Err(commit("database size after a commit must be at least 1 page").into());
        }
        self.check_pages(pages)
    }

    fn check_pages(&self, pages: &[(u32, &[u8])]) -> Result<()> {
        for (page_no, data) in pages {
            if *page_no == 0 {
                return Err(InvalidInput::PageNo.into());
            }
            if data.len() != self.config.page_size as usize {
                return Err(InvalidInput::PageLength {
                    expected: self.config.page_size,
                    actual: data.len(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Appends frames to the open segment, then to the open-segment file, which reuses
    /// each frame's checksum (every page is read once for both). With `commit`, the last
    /// page commits the transaction.
    fn write(
        &mut self,
        frames: Range<u64>,
        pages: &[(u32, &[u8])],
        commit: Option<Commit>,
    ) -> Result<()> {
        let last = pages.len() - 1;
        let mut refs = Vec::with_capacity(pages.len());
        for (i, (frame_no, (page_no, page))) in frames.zip(pages).enumerate() {
            let (size_after, commit_ts, checksum) = match commit {
                Some(c) if i == last => {
                    let at = ms_to_datetime(c.ms);
                    self.builder
                        .append_commit_with_checksum(*page_no, page, c.db_size, at, c.checksum)?;
                    (c.db_size, c.ms, c.checksum)
                }
                _ => {
                    self.builder.append_frame(*page_no, page)?;
                    (0, 0, 0)
                }
            };
            refs.push(WalFrameRef {
                frame_no,
                page_no: *page_no,
                size_after,
                commit_ts,
                checksum,
                crc: self.builder.last_frame_crc().unwrap_or_default(),
                page,
            });
        }
        if self.wal.append(&refs)? {
            self.shared.write_requested.notify_one();
        }
        Ok(())
    }

    /// Seals the builder, starts the next file, hands the sealed file to the syncer for
    /// a last fsync, and submits the segment.
    ///
    /// The page sums are saved (stamped with the sealed segment's last frame) before the
    /// segment goes to storage, so its local file, which recovery replays onto them, is
    /// never deleted before sums past it are on disk.
    fn rotate(&mut self) -> Result<()> {
        let mut segment = self.builder.seal(self.config.clock.now())?;
        // A backlog the store has not taken (an outage) waits in spill files, not in
        // memory, once it passes a quarter of the budget.
        let backlog = self.shared.sealed_in_memory() + segment.encoded_len();
        if segment.is_in_memory() && backlog > spill_threshold() as u64 {
            segment = segment.spill_to(&self.config.dir)?;
        }
        self.builder.reserve(segment_frames(&self.config));
        let end = segment.end_frame_no();
        // Sums past frames that are not yet fsynced are saved by the syncer after it
        // fsyncs them; if they already are, now, before the segment can be stored and
        // its file deleted.
        let mut pending = None;
        if let Some(sums) = &self.sums {
            if self.shared.tracker.watermark(Durability::Written) >= end {
                sums::save(&self.config.dir, end, sums)?;
            } else {
                pending = Some((end, sums.clone()));
            }
        }
        let base = self.next_base();
        let next = WalFile::create(
            &self.config.dir,
            self.builder.next_frame_no(),
            self.config.page_size,
            Uuid::new_v4().as_u128() as u32,
            base,
        )?;
        self.file_base = base;
        let previous = std::mem::replace(&mut self.wal, next);
        // The sealed file's buffered records go to the kernel now (the syncer still
        // fsyncs it): a backlog of sealed files waiting for their fsync holds no memory.
        previous.release_buffers()?;
        self.shared
            .rotate_sync_target(self.wal.sync_target(), pending);
        // The syncer writes out the sealed file's tail and fsyncs the new file's
        // directory entry now, while appends go on, rather than in a waiter's fsync.
        self.shared.write_requested.notify_one();
        self.opened_at = None;
        self.shared.stats.sealed();
        self.shared.push_sealed(Sealed {
            segment: segment.clone(),
            path: previous.path().to_path_buf(),
        });
        if let Some(submit) = &self.submit {
            let _ = submit.send(segment);
        }
        Ok(())
    }

    /// The lineage base the next segment would get from the current sums.
    fn next_base(&self) -> u64 {
        match &self.sums {
            Some(sums) if sums.db_size() > 0 => sums.checksum(),
            _ => 0,
        }
    }

    /// Gives the (empty) open segment the lineage base `base`: the builder records it,
    /// and the open-segment file, if it was created with another base (a snapshot
    /// follows), is created again with this one.
    fn start_segment(&mut self, base: u64) -> Result<()> {
        if self.file_base != base {
            let start = self.builder.next_frame_no();
            wal::remove(self.wal.path());
            let salt = Uuid::new_v4().as_u128() as u32;
            self.wal = WalFile::create(&self.config.dir, start, self.config.page_size, salt, base)?;
            self.shared.replace_sync_target(self.wal.sync_target());
            self.file_base = base;
        }
        self.builder.start_lineage(base)
    }

    /// Latches the first failure: the log refuses appends from then on and every waiter
    /// hears why.
    fn fail(&mut self, e: Error) -> Error {
        self.failed.get_or_insert_with(|| e.clone());
        self.shared.tracker.fail(e.clone());
        e
    }
}

impl<S: Storage + Clone> Drop for LogWriter<S> {
    /// Dropped without [`close`](LogWriter::close): the open segment is never sealed, so
    /// no waiter is left to hang: every wait still pending ends with `Closed` once the
    /// syncer has made what was appended written.
    fn drop(&mut self) {
        if self.tasks.is_empty() {
            return; // closed already
        }
        self.shared.stop();
        let tracker = self.shared.tracker.clone();
        let syncer = self.tasks.remove(0);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = syncer.await;
                tracker.close();
            });
        } else {
            tracker.close();
        }
    }
}

/// Pages of a transaction handed to the log a chunk at a time: page `page_nos[i]` is
/// `data[i * page_size..(i + 1) * page_size]`.
#[derive(Debug, Default)]
pub(crate) struct PageChunk {
    pub page_nos: Vec<u32>,
    pub data: Vec<u8>,
}

/// Pages per chunk of a transaction appended in chunks: an eighth of the budget.
pub(crate) fn chunk_pages(page_size: usize) -> usize {
    (crate::budget::share(8) / page_size).max(1)
}

/// A transaction being appended: its frame numbers, the next one to write, and what its
/// commit will record.
#[derive(Debug)]
struct OpenTxn {
    frames: Range<u64>,
    next: u64,
    db_size: u32,
    commit_ms: u64,
    now_ms: u64,
    snapshot: bool,
}

/// What a transaction's commit frame records.
#[derive(Debug, Clone, Copy)]
struct Commit {
    db_size: u32,
    ms: u64,
    checksum: u64,
}

/// `at` in milliseconds since the epoch, rounded up.
fn ceil_ms(at: DateTime<Utc>) -> Result<u64> {
    let ms = timestamp_ms(at)?;
    let sub_ms = !at.timestamp_subsec_nanos().is_multiple_of(1_000_000);
    Ok(ms + u64::from(sub_ms))
}

/// Bytes of frames the open segment holds in memory before it moves them to a spill file
/// (see [`crate::format::SegmentBuilder::with_spill`]): a quarter of the memory budget.
fn spill_threshold() -> usize {
    crate::budget::share(4)
}

/// Frames to reserve room for when a segment starts: what the sealing policy allows, but
/// never more than the spill threshold up front (a huge policy still grows on demand).
fn segment_frames(config: &LogConfig) -> usize {
    let frame_len = config.page_size as usize + 24;
    let cap = spill_threshold() / frame_len;
    (config.seal_frames as usize)
        .min(config.seal_bytes / frame_len + 1)
        .min(cap)
}

/// Walks storage newest first for the newest version of a page at or before `as_of`.
/// Each segment is asked through its page index, and only frames are read, never a
/// segment whole: the frame the index names, and, in the segment holding `as_of`
/// (where the index's frame may be newer than `as_of`), the frames before it a growing
/// run at a time.
async fn read_from_storage<S: Storage>(
    storage: &S,
    ns: &NamespaceName,
    page_no: u32,
    as_of: u64,
) -> Result<Option<(u64, Vec<u8>)>> {
    let mut req = match storage
        .find_segment(ns, FindSegmentReq::Containing(as_of), None)
        .await
    {
        Ok(_) => FindSegmentReq::Containing(as_of),
        Err(Error::NotFound(_)) => FindSegmentReq::EndFrameNoLessThan(as_of),
        Err(e) => return Err(e),
    };
    loop {
        let key = match storage.find_segment(ns, req, None).await {
            Ok(key) => key,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let newest = storage
            .fetch_segment_index(ns, &key, None)
            .await?
            .get(page_no);
        if let Some(newest) = newest {
            if let Some(frame) = page_in(storage, ns, &key, page_no, newest, as_of).await? {
                return Ok(Some((frame.frame_no, frame.data.to_vec())));
            }
        }
        match key.start_frame_no.checked_sub(1) {
            Some(before) if before > 0 => req = FindSegmentReq::EndFrameNoLessThan(before),
            _ => return Ok(None),
        }
    }
}

/// Frames the first backward step of [`page_in`] reads; each next step reads twice as
/// many, up to a run of the memory budget.
const FIRST_STEP_FRAMES: u32 = 8;

/// The newest frame of `page_no` at or before `as_of` in segment `key`, whose index
/// names position `newest` as the page's newest frame: that frame if it is old enough,
/// else the frames before it, newest first.
async fn page_in<S: Storage>(
    storage: &S,
    ns: &NamespaceName,
    key: &SegmentKey,
    page_no: u32,
    newest: u32,
    as_of: u64,
) -> Result<Option<Frame>> {
    let mut end = newest + 1;
    if key.end_frame_no > as_of {
        // Frame numbers grow at least as fast as positions (by one in a dense segment,
        // by more across a sparse one's gaps), so no frame past this one is that old.
        let limit = as_of.saturating_sub(key.start_frame_no).saturating_add(1);
        end = end.min(u32::try_from(limit).unwrap_or(u32::MAX));
    }
    let mut step = FIRST_STEP_FRAMES;
    let most = crate::storage::frames::frames_per_run(1 << 16).max(FIRST_STEP_FRAMES);
    while end > 0 {
        let start = end.saturating_sub(step);
        let frames = storage.fetch_frame_run(ns, key, start..end, None).await?;
        let found = frames
            .into_iter()
            .rev()
            .find(|f| f.frame_no <= as_of && f.page_no == page_no);
        if found.is_some() {
            return Ok(found);
        }
        end = start;
        step = step.saturating_mul(2).min(most);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{on_store, LocalStorage};

    const PAGE: usize = 512;

    /// Frames 1..=40 (dense), then a sparse segment holding every other frame from 41;
    /// frame `n` writes page `n % 6 + 1`, and every third frame commits.
    fn segments() -> Vec<SealedSegment> {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let build = |start: u64, frame_nos: Vec<u64>| {
            let mut b = SegmentBuilder::new(start, PAGE as u32).unwrap();
            for (i, n) in frame_nos.into_iter().enumerate() {
                b.skip_to(n).unwrap();
                let (page_no, data) = ((n % 6) as u32 + 1, [n as u8; PAGE]);
                match i % 3 {
                    2 => b.append_commit(page_no, &data, 6, at).unwrap(),
                    _ => b.append_frame(page_no, &data).unwrap(),
                };
            }
            b.seal(at).unwrap()
        };
        vec![
            build(1, (1..=39).collect()),
            build(41, (0..30).map(|i| 41 + 2 * i).collect()),
        ]
    }

    /// The page as of `as_of`, read from the segments in memory.
    fn expected(segments: &[SealedSegment], page_no: u32, as_of: u64) -> Option<(u64, Vec<u8>)> {
        segments
            .iter()
            .rev()
            .filter(|s| s.start_frame_no() <= as_of)
            .find_map(|s| s.read_page_as_of(page_no, as_of))
            .map(|f| (f.frame_no, f.data.to_vec()))
    }

    /// Every page as of every frame reads as from the whole segments, with each stored
    /// segment's trailer damaged so that fetching it whole fails.
    #[tokio::test]
    async fn a_page_as_of_any_frame_is_read_without_fetching_a_segment_whole() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path()).unwrap();
        let ns = NamespaceName::new("pages").unwrap();
        let segments = segments();
        for s in &segments {
            let stored = storage.store(&ns, s.clone(), None, on_store(|_| async {}));
            stored.await.unwrap();
        }
        for s in &segments {
            let path = dir.path().join("pages").join(format!("{}.seg", s.key()));
            let mut bytes = std::fs::read(&path).unwrap();
            *bytes.last_mut().unwrap() ^= 1;
            std::fs::write(&path, bytes).unwrap();
            let whole = storage.fetch_segment_data(&ns, &s.key(), None).await;
            assert!(whole.is_err(), "the damage makes a whole fetch fail");
        }
        for as_of in 1..=105 {
            for page_no in 1..=7 {
                let got = read_from_storage(&storage, &ns, page_no, as_of).await;
                let got = got.unwrap_or_else(|e| panic!("page {page_no} as of {as_of}: {e}"));
                let want = expected(&segments, page_no, as_of);
                assert_eq!(got, want, "page {page_no} as of {as_of}");
            }
        }
    }
}

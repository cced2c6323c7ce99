//! The replicator: ships a SQLite database's committed transactions into a log.
//!
//! Each [`Replicator::run_once`] reads the WAL from where the last run stopped:
//!
//! * **Same WAL generation** (salts and the checksum at our position still match): the
//!   transactions after our position are appended to the log, one log transaction each,
//!   with their commit sizes.
//! * **First run, or the WAL was reset or rewritten** by someone else's checkpoint: a
//!   fresh snapshot of the whole database (as of the end of the WAL) is shipped as one
//!   transaction, so no transaction is lost; frames of two WAL generations are never
//!   mixed.
//! * **Continuous mode** ([`Replicator::poll`]): a read transaction is held between
//!   runs, handed over between two connections so there is never a moment without one.
//!   SQLite cannot copy frames past a held reader's mark into the database, nor restart
//!   the WAL while a reader may still need its frames, nor delete it (its closing
//!   connection needs an EXCLUSIVE lock our reader's SHARED lock denies; see
//!   [`super::dbfile`] for how walvault keeps that lock). So while the reader is held
//!   without a break, a new WAL generation can only be SQLite's one restart of ours,
//!   begun after we read every frame of it; SQLite's restart sets salt-1 to the old
//!   salt-1 plus one. The replicator continues into a new generation only then, and
//!   ships a snapshot, saying why ([`SnapshotReason`]), for anything else: a deleted,
//!   truncated or otherwise restarted WAL, frames rewritten where we stood. Size or
//!   modification time never decide that nothing changed. Checkpoints the replicator
//!   runs itself happen only when all it shipped is durable.
//!
//!   The application's own `RESTART` and `TRUNCATE` checkpoints return `SQLITE_BUSY`
//!   while the replicator holds its reader (that is what keeps frames from being lost);
//!   they still copy what they can, and the replicator's own checkpoints let SQLite
//!   restart the WAL. (When every frame was copied already, our reader reads the
//!   database file alone and a `TRUNCATE` can succeed: the next poll then finds the WAL
//!   truncated and ships a snapshot.)
//!
//! The position is saved only after the frames it covers are `Written` in the log. It is
//! tied to the namespace and to the log frame it reached (see [`super::state`]), and the
//! first run of a process checks the WAL from its first frame up to the position, since
//! after a power loss SQLite may have rewritten frames behind it (see
//! [`wal::Check`]).
//!
//! [`Replicator::run_once`] ends its read transaction when it returns, so the
//! application's checkpoints can restart the WAL between runs (the next run then ships a
//! snapshot); [`Replicator::poll`] keeps one held for good.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use rusqlite::Connection;

use super::continuity::{
    log_snapshot, restart_kind, wal_identity, Continuity, SnapshotReason, WalIdentity,
};
use super::snapshot;
use super::state::{namespace_tag, IngestState, StateFile};
use super::wal::{self, Check, WalPosition, WalScan, WalTransaction};
use crate::clock::Clock;
use crate::durability::Durability;
use crate::error::{Error, InvalidInput, Result};
use crate::format::NamespaceName;
use crate::log::{Appended, LogConfig, LogWriter};
use crate::storage::Storage;

/// How a [`Replicator`] finds its database and keeps its log.
#[derive(Debug, Clone)]
pub struct ReplicatorConfig {
    /// The SQLite database file (in WAL mode). Its WAL is `<db>-wal`.
    pub db: PathBuf,
    /// The log's settings. `log.dir` defaults to `<db>-walvault` (see
    /// [`ReplicatorConfig::new`]); `log.page_size` is always the database's.
    pub log: LogConfig,
    /// In continuous mode ([`Replicator::poll`]), checkpoint once this many bytes of WAL
    /// frames were shipped since the last checkpoint. Default 4 MiB (about SQLite's own
    /// 1000-page auto-checkpoint).
    pub checkpoint_wal_bytes: u64,
    /// How long a checkpoint waits, holding SQLite's write lock, for what it shipped to
    /// become `Durable`; past it the checkpoint is put off to a later poll. Default 30 s.
    pub checkpoint_timeout: Duration,
    /// The longest a commit should wait, in continuous mode, before it is sent to the
    /// store (the store's own latency comes on top). [`Replicator::poll`] seals what it
    /// shipped once the last seal is a tenth of this old, so under steady writes a
    /// segment goes out every `max_lag / 10`, and after a quiet spell the first commit
    /// goes out at once. Default 1 s. The log's age policy (`log.seal_age`) is set to it
    /// too, as a backstop.
    pub max_lag: Duration,
    /// What the replicator's checkpoints wait for before SQLite may copy frames into the
    /// database file and restart its WAL: `Durable` (the default; the daemon's choice)
    /// or `Written` (an attached connection committing at `Written` or `Applied`, so the
    /// WAL stays bounded while the store is away: the frames are in the local log). An
    /// `Applied` here is taken as `Written`.
    pub checkpoint_after: Durability,
}

impl ReplicatorConfig {
    /// Defaults for `db`: the log lives in `<db>-walvault` beside it.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        let db = db.into();
        let mut dir = db.clone().into_os_string();
        dir.push("-walvault");
        let max_lag = DEFAULT_MAX_LAG;
        let mut log = LogConfig::new(dir);
        log.seal_age = max_lag;
        Self {
            log,
            db,
            checkpoint_wal_bytes: 4 << 20,
            checkpoint_timeout: Duration::from_secs(30),
            max_lag,
            checkpoint_after: Durability::Durable,
        }
    }

    /// How often [`Replicator::poll`] seals under steady writes: a tenth of `max_lag`.
    pub fn seal_every(&self) -> Duration {
        self.max_lag / 10
    }
}

/// The default [`ReplicatorConfig::max_lag`].
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);

/// What one run shipped.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// True when the run shipped a snapshot of the whole database.
    pub snapshot: bool,
    /// Transactions appended to the log (a snapshot counts as one).
    pub transactions: u64,
    /// Frames appended to the log.
    pub frames: u64,
    /// The last transaction appended, to wait on.
    pub last: Option<Appended>,
    /// True when the replicator checkpointed the database in this step.
    pub checkpointed: bool,
    /// Why the run shipped a snapshot (None when it shipped no snapshot).
    pub snapshot_reason: Option<SnapshotReason>,
}

impl IngestReport {
    fn add(&mut self, appended: Appended) {
        self.transactions += 1;
        self.frames += appended.frames.end - appended.frames.start;
        self.last = Some(appended);
    }
}

/// Ships one SQLite database into a walvault namespace. See the module docs.
#[derive(Debug)]
pub struct Replicator<S: Storage + Clone> {
    db: PathBuf,
    wal: PathBuf,
    /// Two connections; one holds a read transaction while the other is idle.
    readers: [Connection; 2],
    held: Option<usize>,
    /// True when a read transaction has been held without a break since `state` was read
    /// from the WAL (see the module docs).
    continuous: bool,
    /// True once this process has checked the WAL behind the saved position from its
    /// first frame (or read it all itself).
    verified: bool,
    /// The position of our last checkpoint, to count what the WAL gained since.
    checkpointed: Option<WalPosition>,
    /// The WAL's identity at this process's last run (None before the first).
    wal_seen: Option<Option<WalIdentity>>,
    /// True when there was no WAL before our connections opened the database.
    wal_missing_at_open: bool,
    /// Why the saved position was dropped when the replicator opened, if it was.
    start_reason: Option<SnapshotReason>,
    /// After a checkpoint gave up waiting for the store: no new attempt before this.
    checkpoint_not_before: Option<std::time::Instant>,
    page_size: u32,
    checkpoint_wal_bytes: u64,
    checkpoint_timeout: Duration,
    /// See [`ReplicatorConfig::checkpoint_after`].
    checkpoint_after: Durability,
    /// See [`ReplicatorConfig::seal_every`].
    seal_every: Duration,
    /// True when transactions were appended since the position was last saved. (In
    /// continuous mode the position is saved when [`poll`](Self::poll) seals, not at
    /// every read, which would cost two fsyncs per read.)
    position_unsaved: bool,
    /// The state as last saved.
    saved: Option<IngestState>,
    /// When the last read of the WAL started.
    read_started: Option<DateTime<Utc>>,
    /// When the read before the current one started: no commit the current one reads
    /// was complete then.
    stamp_floor: Option<DateTime<Utc>>,
    /// When `poll` last sealed (None before the first seal).
    last_seal: Option<DateTime<Utc>>,
    /// Commit times known from attached connections for the next read (see
    /// [`hint_commits`](Self::hint_commits)).
    hints: Vec<CommitHint>,
    clock: Arc<dyn Clock>,
    state: IngestState,
    state_file: StateFile,
    log: LogWriter<S>,
}

/// The shortest [`ReplicatorConfig::max_lag`]: below it the replicator would seal more
/// often than a store can take segments.
pub const MIN_MAX_LAG: Duration = Duration::from_millis(10);

/// How long a statement waits for a lock the application holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn sqlite_err(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::sqlite(context, e)
}

impl<S: Storage + Clone> Replicator<S> {
    /// Opens the database (which must be in WAL mode) and the log for `namespace`.
    pub async fn open(
        storage: S,
        namespace: NamespaceName,
        config: ReplicatorConfig,
    ) -> Result<Self> {
        if config.max_lag < MIN_MAX_LAG {
            return Err(InvalidInput::Config(format!(
                "max_lag {:?} is shorter than the shortest supported, {MIN_MAX_LAG:?}",
                config.max_lag
            ))
            .into());
        }
        let seal_every = config.seal_every();
        let db = config.db;
        if !db.is_file() {
            return Err(Error::NotFound(format!("database {}", db.display())));
        }
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        // Our own connections create an empty WAL where there was none: look first.
        let wal_missing_at_open = !wal.exists();
        let open = || Connection::open(&db).map_err(sqlite_err("opening the database"));
        let readers = [open()?, open()?];
        let mode: String = readers[0]
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(sqlite_err("reading the journal mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(InvalidInput::Config(format!(
                "{} is in journal mode {mode}; walvault replicates databases in WAL mode (PRAGMA journal_mode=WAL)",
                db.display()
            ))
            .into());
        }
        let page_size: u32 = readers[0]
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sqlite_err("reading the page size"))?;
        for r in &readers {
            r.busy_timeout(BUSY_TIMEOUT)
                .map_err(sqlite_err("setting a busy timeout"))?;
            // When ours are the last connections to close, SQLite would checkpoint and
            // delete the WAL, and the next start could no longer prove it continues
            // from the saved position: it would ship the whole database again. Left as
            // it is, the WAL is what the next start (or SQLite's next opener) reads.
            r.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(sqlite_err("keeping the WAL when walvault closes"))?;
        }
        let mut log_config = config.log;
        log_config.page_size = page_size;
        let clock = log_config.clock.clone();
        let dir = log_config.dir.clone();
        let tag = namespace_tag(namespace.as_str());
        let log = LogWriter::open(storage, namespace, log_config).await?;
        let (state_file, mut state) = StateFile::open(&dir)?;
        let log_high = log.tracker().watermark(Durability::Written);
        let start_reason = if state == IngestState::default() {
            Some(SnapshotReason::FirstRun)
        } else if state.page_size != page_size || state.namespace != tag {
            Some(SnapshotReason::PositionForOtherHistory)
        } else if state.log_frame > log_high {
            Some(SnapshotReason::LogLacksPosition)
        } else if state.log_frame < log_high {
            Some(SnapshotReason::LogPastPosition)
        } else {
            None
        };
        if start_reason.is_some() {
            state = IngestState {
                page_size,
                namespace: tag,
                ..IngestState::default()
            };
        }
        Ok(Self {
            wal,
            wal_missing_at_open,
            wal_seen: None,
            db,
            readers,
            held: None,
            continuous: false,
            verified: false,
            checkpointed: None,
            start_reason,
            checkpoint_not_before: None,
            page_size,
            checkpoint_wal_bytes: config.checkpoint_wal_bytes,
            checkpoint_timeout: config.checkpoint_timeout,
            checkpoint_after: config.checkpoint_after.max(Durability::Written),
            seal_every,
            read_started: None,
            stamp_floor: None,
            position_unsaved: false,
            saved: None,
            last_seal: None,
            hints: Vec::new(),
            clock,
            state,
            state_file,
            log,
        })
    }

    /// The log the transactions go to.
    pub fn log(&self) -> &LogWriter<S> {
        &self.log
    }

    /// The database file.
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// Tells the next read of the WAL when some of its transactions were complete: an
    /// attached connection's commit hook saw the WAL hold `frames` frames at `at`, so every
    /// transaction ending at or before that frame is stamped no later than the
    /// millisecond of `at` (see [`CommitHint`]). Used by the next ship, then dropped.
    pub(crate) fn hint_commits(&mut self, hints: impl IntoIterator<Item = CommitHint>) {
        self.hints.extend(hints);
    }

    /// The database's WAL file.
    pub(crate) fn wal_path(&self) -> &Path {
        &self.wal
    }

    /// The clock that stamps commits.
    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// What checkpoints wait for (see [`ReplicatorConfig::checkpoint_after`]).
    pub(crate) fn checkpoint_level(&self) -> Durability {
        self.checkpoint_after
    }

    /// Ships what is new since the last run (or a snapshot, when it must), waits until it
    /// is `Written` in the log, and saves the position. The read transaction the run
    /// holds ends with it (see [`poll`](Self::poll) to keep one).
    ///
    /// It returns no sooner than the time stamped on the last transaction it shipped
    /// (stamps are rounded up to the millisecond, so that can be a moment ahead of the
    /// clock): a restore to the time it returned finds everything it shipped.
    pub async fn run_once(&mut self) -> Result<IngestReport> {
        let report = self.ship(false).await;
        let released = self.release_reader();
        let report = report?;
        released?;
        if let Some(last) = &report.last {
            let ahead = (last.timestamp - self.clock.now()).to_std();
            if let Ok(ahead) = ahead.map(|d| d.min(Duration::from_millis(2))) {
                tokio::time::sleep(ahead).await;
            }
        }
        Ok(report)
    }

    /// One step of continuous replication: ship what is new (as
    /// [`run_once`](Self::run_once)), seal by the log's age policy, hand the read
    /// transaction over to the other connection, and once
    /// [`ReplicatorConfig::checkpoint_wal_bytes`] of WAL were shipped since the last
    /// checkpoint, checkpoint (see [`checkpoint`](Self::checkpoint)).
    pub async fn poll(&mut self) -> Result<IngestReport> {
        let mut report = self.poll_ship().await?;
        if self.checkpoint_due() {
            let shipped = self.checkpoint().await?;
            report.transactions += shipped.transactions;
            report.frames += shipped.frames;
            report.last = shipped.last.or(report.last);
            report.checkpointed = shipped.checkpointed;
            report.snapshot |= shipped.snapshot;
            report.snapshot_reason = report.snapshot_reason.or(shipped.snapshot_reason);
        }
        Ok(report)
    }

    /// [`poll`](Self::poll) without its checkpoint: ship, seal when due, hand the read
    /// transaction over. (An attached connection's commit waits for this much only; the
    /// checkpoint comes after its COMMIT has returned.)
    pub(crate) async fn poll_ship(&mut self) -> Result<IngestReport> {
        let report = match self.ship(true).await {
            Ok(report) => report,
            Err(e) => {
                // What was read before the failure is in the log: it still goes out on
                // time.
                let _ = self.seal_if_due();
                return Err(e);
            }
        };
        let sealed = self.seal_if_due()? || self.log.maybe_seal()?;
        if sealed || self.log.unsealed_frames() == 0 {
            self.save_position().await?;
        }
        self.hand_over_reader()?;
        Ok(report)
    }

    /// True when [`poll`](Self::poll) would checkpoint now: enough WAL was shipped since
    /// the last checkpoint, and no earlier attempt is being backed off from.
    pub(crate) fn checkpoint_due(&self) -> bool {
        let backing_off = self
            .checkpoint_not_before
            .is_some_and(|t| std::time::Instant::now() < t);
        !backing_off && self.wal_bytes_since_checkpoint() >= self.checkpoint_wal_bytes
    }

    /// Seals what was shipped now, whatever the lag policy says (a commit waits for
    /// `Durable`), and saves the position it covers.
    pub(crate) async fn seal_now(&mut self) -> Result<()> {
        if self.log.unsealed_frames() == 0 {
            return Ok(());
        }
        self.log.seal()?;
        self.last_seal = Some(self.clock.now());
        self.save_position().await
    }

    /// Seals what was shipped if [`seal_due_in`](Self::seal_due_in) says it is due now.
    fn seal_if_due(&mut self) -> Result<bool> {
        if self.seal_due_in() != Some(Duration::ZERO) {
            return Ok(false);
        }
        self.log.seal()?;
        self.last_seal = Some(self.clock.now());
        Ok(true)
    }

    /// How long until [`poll`](Self::poll) should seal what it shipped: None when
    /// nothing is waiting to be sealed, zero when a poll now would seal. A daemon polls
    /// again by then even if the WAL did not change, so no commit waits longer than
    /// [`ReplicatorConfig::max_lag`] for its seal.
    pub fn seal_due_in(&self) -> Option<Duration> {
        if self.log.unsealed_frames() == 0 {
            return None;
        }
        let Some(last) = self.last_seal else {
            return Some(Duration::ZERO);
        };
        // A clock that stepped back behind the last seal makes the seal due, not late.
        let since = (self.clock.now() - last)
            .to_std()
            .unwrap_or(self.seal_every);
        Some(self.seal_every.saturating_sub(since))
    }

    /// Bytes of WAL frames shipped since our last checkpoint (or since the WAL started).
    fn wal_bytes_since_checkpoint(&self) -> u64 {
        let Some(position) = self.state.position else {
            return 0;
        };
        let frames = match self.checkpointed {
            Some(at) if at.salt == position.salt => position.frames.saturating_sub(at.frames),
            _ => position.frames,
        };
        u64::from(frames) * (u64::from(self.page_size) + wal::FRAME_HEADER_LEN as u64)
    }

    /// Ships, holding a read transaction; on error the readers are reset, so the next
    /// run starts from a clean read transaction and checks the WAL again. With `defer`,
    /// the position is left for [`save_position`](Self::save_position) to save later.
    ///
    /// A run that fails after appending some transactions (the WAL became unreadable
    /// halfway) leaves the log past the position it had recorded: the next run ships a
    /// snapshot rather than those transactions a second time.
    async fn ship(&mut self, defer: bool) -> Result<IngestReport> {
        let applied = self.log.tracker().watermark(Durability::Applied);
        let result = self.ship_held(defer).await;
        self.hints.clear();
        if result.is_err() {
            self.reset_readers();
            if self.log.tracker().watermark(Durability::Applied) != applied {
                self.state.position = None;
                self.state.fingerprint = None;
                self.start_reason = Some(SnapshotReason::LogPastPosition);
            }
        }
        result
    }

    async fn ship_held(&mut self, defer: bool) -> Result<IngestReport> {
        self.hold_reader()?;
        // Commits this run reads were not complete when the previous run read the WAL:
        // that run's start is a lower bound on their time (see `commit_stamp`).
        self.stamp_floor = self.read_started.replace(self.clock.now());
        let mut report = IngestReport::default();
        let identity = wal_identity(&self.wal)?;
        let vanished = self.wal_vanished(identity);
        let continued = match (vanished, self.state.position, self.state.fingerprint) {
            (_, None, None) => Err(self.start_reason.unwrap_or(SnapshotReason::FirstRun)),
            _ if self.log.needs_snapshot().is_some() => Err(SnapshotReason::LineageUnknown),
            (Some(reason), Some(_), _) => Err(reason),
            (_, Some(position), _) => or_snapshot(self.ship_after(position, &mut report))?,
            (_, None, Some(fp)) => or_snapshot(self.ship_after_empty(fp, identity, &mut report))?,
        };
        if let Err(reason) = continued {
            log_snapshot(&self.db, reason);
            report.snapshot_reason = Some(reason);
            self.ship_snapshot(&mut report)?;
        }
        if report.last.is_some() {
            self.position_unsaved = true;
        }
        if !defer {
            self.save_position().await?;
        }
        self.verified = true;
        self.start_reason = None;
        self.wal_seen = Some(identity);
        Ok(report)
    }

    /// Saves the WAL position reached, once every frame appended to the log is
    /// `Written`, so that the saved position never runs ahead of the log. (It may run
    /// behind: [`open`](Self::open) then ships a snapshot, rather than the transactions
    /// after it a second time.) Saves nothing when nothing changed since the last save.
    async fn save_position(&mut self) -> Result<()> {
        let applied = self.log.tracker().watermark(Durability::Applied);
        if self.position_unsaved {
            self.log.wait(applied, Durability::Written).await?;
            self.state.log_frame = applied;
        }
        if self.position_unsaved || self.saved.as_ref() != Some(&self.state) {
            self.state_file.save(&self.state)?;
            self.saved = Some(self.state);
            self.position_unsaved = false;
        }
        Ok(())
    }

    /// Whether the WAL this process saw at its last run is gone (deleted, or deleted
    /// and created anew) now. SQLite deletes a WAL only after checkpointing it, so frames
    /// we never read may have gone into the database file with it. A WAL appearing where
    /// there was none is no such sign: SQLite creates one at the first write.
    fn wal_vanished(&self, now: Option<WalIdentity>) -> Option<SnapshotReason> {
        match (self.wal_seen?, now) {
            (Some(_), None) => Some(SnapshotReason::WalDeleted),
            (Some(seen), Some(now)) if seen != now => Some(SnapshotReason::WalReplaced),
            _ => None,
        }
    }

    /// Checkpoints the database so SQLite can restart its WAL, copying into the database
    /// file only frames that are durable in the store:
    ///
    /// 0. seal and wait until what was shipped so far is `Durable` (or whatever
    ///    [`ReplicatorConfig::checkpoint_after`] says; `Durable` below), without any lock, so
    ///    the wait under the lock below is only for what arrives meanwhile; if the store
    ///    does not get there within [`ReplicatorConfig::checkpoint_timeout`], give up
    ///    and let [`poll`](Self::poll) try again only after as long again;
    /// 1. take SQLite's write lock (`BEGIN IMMEDIATE` on the idle connection), so no
    ///    frame can be added meanwhile; if the application holds it, try again later;
    /// 2. ship the rest of the WAL, seal, and wait until all of it is `Durable`;
    /// 3. end the held read transaction and run a passive checkpoint (the write lock's
    ///    own snapshot is the WAL's end, so nothing limits it);
    /// 4. start a new read transaction, then release the write lock: the WAL is fully
    ///    copied, so SQLite restarts it on the next write, and our reader keeps anyone
    ///    from copying the new generation's frames before we have read them.
    ///
    /// Application writers wait while steps 1 to 4 run (for the store's `Durable`
    /// latency of the last few transactions).
    pub async fn checkpoint(&mut self) -> Result<IngestReport> {
        self.log.seal()?;
        if !self.wait_durable().await? {
            return Ok(IngestReport::default());
        }
        self.hold_reader()?;
        let held = self.held.unwrap_or(0);
        let writer = 1 - held;
        let short = Duration::from_millis(100);
        let locked = self.readers[writer]
            .busy_timeout(short)
            .and_then(|()| self.readers[writer].execute_batch("BEGIN IMMEDIATE"));
        let _ = self.readers[writer].busy_timeout(BUSY_TIMEOUT);
        if let Err(e) = locked {
            tracing::debug!(error = %e, "the application holds the write lock; checkpoint later");
            return Ok(IngestReport::default());
        }
        let result = self.checkpoint_locked(held).await;
        // What the hints named was read under the write lock; the WAL may restart now.
        self.hints.clear();
        let released = self.readers[writer].execute_batch("COMMIT");
        if result.is_err() || released.is_err() {
            self.reset_readers();
        }
        let report = result?;
        released.map_err(sqlite_err("releasing the write lock"))?;
        Ok(report)
    }

    async fn checkpoint_locked(&mut self, held: usize) -> Result<IngestReport> {
        let mut report = self.ship_held(false).await?;
        self.log.seal()?;
        if !self.wait_durable().await? {
            return Ok(report);
        }
        let reader = &self.readers[held];
        reader
            .execute_batch("COMMIT")
            .map_err(sqlite_err("ending a read transaction"))?;
        self.held = None;
        let checkpointed = reader
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(sqlite_err("checkpointing the database"));
        begin_read(reader)?;
        self.held = Some(held);
        checkpointed?;
        // The write lock kept anyone from adding frames since we read the WAL to its end,
        // so the new read transaction follows on from our position.
        self.continuous = true;
        self.checkpointed = self.state.position;
        report.checkpointed = true;
        Ok(report)
    }

    /// Waits until every frame appended is `Durable` (or at
    /// [`ReplicatorConfig::checkpoint_after`]), at most `checkpoint_timeout`; false (and
    /// no checkpoint from `poll` for as long again) when the store is slower.
    async fn wait_durable(&mut self) -> Result<bool> {
        let applied = self.log.tracker().watermark(Durability::Applied);
        if applied == 0 {
            return Ok(true);
        }
        let waited = match self.checkpoint_after {
            Durability::Durable => {
                let durable = self.log.wait_durable(applied);
                tokio::time::timeout(self.checkpoint_timeout, durable).await
            }
            level => {
                let waited = self.log.wait(applied, level);
                tokio::time::timeout(self.checkpoint_timeout, waited).await
            }
        };
        match waited {
            // The store refused what was shipped: the next poll ships a snapshot, and
            // nothing is checkpointed until it is durable.
            Ok(Err(e)) if e.is_diverged() => Ok(false),
            Ok(waited) => waited.map(|_| true),
            Err(_) => {
                tracing::warn!(
                    frame_no = applied,
                    timeout = ?self.checkpoint_timeout,
                    level = ?self.checkpoint_after,
                    "the log is slow to reach the checkpoint's durability; checkpoint later"
                );
                self.checkpoint_not_before =
                    Some(std::time::Instant::now() + self.checkpoint_timeout);
                Ok(false)
            }
        }
    }

    /// Seals what is open, waits until every shipped frame is durable, and closes the log.
    ///
    /// If the store refuses what was shipped because its history moved on (another copy
    /// of the database wrote the namespace, or the store was emptied), a snapshot is
    /// shipped instead and waited for.
    pub async fn close(mut self) -> Result<()> {
        loop {
            self.log.seal()?;
            let applied = self.log.tracker().watermark(Durability::Applied);
            if applied == 0 {
                break;
            }
            match self.log.wait_durable(applied).await {
                Ok(_) => break,
                Err(e) if e.is_diverged() => {
                    self.run_once().await?;
                }
                Err(e) => return Err(e),
            }
        }
        self.save_position().await?;
        let Self { log, .. } = self;
        log.close().await
    }

    /// Appends the transactions after `start`, or says why the WAL no longer proves it
    /// continues from there (then a snapshot is needed).
    fn ship_after(&mut self, start: WalPosition, report: &mut IngestReport) -> Result<Continuity> {
        let (log, wal, floor, hints) = (&mut self.log, &self.wal, self.stamp_floor, &self.hints);
        let check = if self.verified {
            Check::LastFrame
        } else {
            Check::WholePrefix
        };
        let scanned = wal::scan(wal, Some(start), check, |txn| {
            append(log, wal, (floor, hints), &txn, report)
        })?;
        match scanned {
            WalScan::Continued { end, .. } => {
                self.record(Some(end));
                Ok(Ok(()))
            }
            WalScan::Empty => Ok(Err(self.why_empty())),
            WalScan::Reset { header } => match restart_kind(start, &header) {
                Err(reason) => Ok(Err(reason)),
                Ok(()) if !self.continuous => Ok(Err(SnapshotReason::WalRestartedUnwatched)),
                Ok(()) => self.ship_new_generation(report),
            },
        }
    }

    /// Ships a WAL generation SQLite started by restarting ours (salt-1 + 1) while our
    /// reader was held without a break: that reader kept SQLite from restarting before
    /// every frame of ours was read, and from restarting twice (the new generation's
    /// frames cannot be checkpointed past it), so the new generation begins exactly
    /// where we stopped.
    fn ship_new_generation(&mut self, report: &mut IngestReport) -> Result<Continuity> {
        // Hints name frames of the generation they were taken in: none applies here.
        let (log, wal, floor, hints) = (&mut self.log, &self.wal, self.stamp_floor, &[][..]);
        match wal::scan(wal, None, Check::LastFrame, |txn| {
            append(log, wal, (floor, hints), &txn, report)
        })? {
            WalScan::Continued { end, .. } => {
                self.record(Some(end));
                Ok(Ok(()))
            }
            WalScan::Empty => Ok(Err(self.why_empty())),
            WalScan::Reset { .. } => Ok(Err(SnapshotReason::WalRestartedBySomeoneElse)),
        }
    }

    /// The WAL was empty (or missing) at the last run, when the database file had
    /// checksum `fp`: ships the WAL from its start if nothing can have been checkpointed
    /// into the file since. With a reader held throughout and the very WAL file we saw
    /// last time still there, SQLite could neither copy frames into the file nor delete
    /// the WAL; otherwise the whole file must be unchanged (its checksum, never its size
    /// or time).
    fn ship_after_empty(
        &mut self,
        fp: u32,
        identity: Option<WalIdentity>,
        report: &mut IngestReport,
    ) -> Result<Continuity> {
        let same_wal = identity.is_some() && self.wal_seen == Some(identity);
        if !(self.continuous && same_wal) && snapshot::fingerprint(&self.db)? != fp {
            let vanished = self.wal_vanished(identity);
            return Ok(Err(vanished.unwrap_or(SnapshotReason::DatabaseChanged)));
        }
        let (log, wal, floor, hints) = (&mut self.log, &self.wal, self.stamp_floor, &self.hints);
        match wal::scan(wal, None, Check::LastFrame, |txn| {
            append(log, wal, (floor, hints), &txn, report)
        })? {
            WalScan::Continued { end, .. } => self.record(Some(end)),
            WalScan::Empty => {} // still empty: nothing happened
            WalScan::Reset { .. } => return Ok(Err(SnapshotReason::WalRestartedBySomeoneElse)),
        }
        Ok(Ok(()))
    }

    /// Why a WAL we had a position in now reads as empty.
    /// Before this process's first run, the WAL's absence is looked for when the
    /// replicator opened, since opening the database creates an empty WAL.
    fn why_empty(&self) -> SnapshotReason {
        let missing = match std::fs::symlink_metadata(&self.wal) {
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            Ok(_) => !self.verified && self.wal_missing_at_open,
        };
        if missing {
            SnapshotReason::WalDeleted
        } else {
            SnapshotReason::WalTruncated
        }
    }

    /// Ships the whole database as of the end of its WAL as one transaction.
    fn ship_snapshot(&mut self, report: &mut IngestReport) -> Result<()> {
        report.snapshot = true;
        let (mut overlay, db_size, end) = loop {
            let before = wal_header(&self.wal)?;
            let mut overlay = snapshot::Overlay::default();
            let mut db_size = None;
            let scanned = wal::scan(&self.wal, None, Check::LastFrame, |txn| {
                db_size = Some(txn.db_size);
                overlay.add(txn);
                Ok(())
            })?;
            // A WAL restarted while we read it would mix generations: read it again.
            if wal_header(&self.wal)? == before {
                let end = match scanned {
                    WalScan::Continued { end, .. } => Some(end),
                    _ => None,
                };
                break (overlay, db_size, end);
            }
        };
        let db_size = match db_size {
            Some(size) => size,
            None => snapshot::db_pages(&self.db, self.page_size)?,
        };
        let mut reader = snapshot::Reader::new(&self.db, &self.wal, self.page_size, &mut overlay)?;
        if db_size > 0 {
            let appended = self
                .log
                .append_snapshot_with(db_size, |first, buf| reader.fill(first, buf))?;
            report.add(appended);
        }
        match end {
            Some(end) => self.record(Some(end)),
            None => {
                self.state.position = None;
                // The snapshot read the whole file in order: its checksum comes with it.
                self.state.fingerprint = Some(reader.fingerprint()?);
            }
        }
        Ok(())
    }

    fn record(&mut self, position: Option<WalPosition>) {
        self.state.position = position;
        self.state.fingerprint = None;
    }

    /// Starts a read transaction on a reader, unless one is held already.
    fn hold_reader(&mut self) -> Result<()> {
        if self.held.is_none() {
            self.continuous = false;
            begin_read(&self.readers[0])?;
            self.held = Some(0);
        }
        Ok(())
    }

    /// Ends the held read transaction, if any.
    fn release_reader(&mut self) -> Result<()> {
        self.continuous = false;
        match self.held.take() {
            Some(held) => self.readers[held]
                .execute_batch("COMMIT")
                .map_err(sqlite_err("ending a read transaction")),
            None => Ok(()),
        }
    }

    /// After an error: roll back whatever either connection holds, so the next run
    /// starts afresh (and checks the WAL from its first frame again).
    fn reset_readers(&mut self) {
        for reader in &self.readers {
            if !reader.is_autocommit() {
                let _ = reader.execute_batch("ROLLBACK");
            }
        }
        self.held = None;
        self.continuous = false;
        self.verified = false;
    }

    /// Starts a read transaction on the idle reader, then ends the held one, so a reader
    /// is held at every moment.
    fn hand_over_reader(&mut self) -> Result<()> {
        let held = self.held.unwrap_or(0);
        let idle = 1 - held;
        if let Err(e) = begin_read(&self.readers[idle]) {
            self.reset_readers();
            return Err(e);
        }
        let ended = self.readers[held].execute_batch("COMMIT");
        self.held = Some(idle);
        if let Err(e) = ended {
            self.reset_readers();
            return Err(sqlite_err("ending a read transaction")(e));
        }
        self.continuous = true;
        Ok(())
    }
}

/// A store that refused a segment while the WAL was being shipped (its history moved on)
/// is answered like any other discontinuity: with a snapshot, in the same run.
fn or_snapshot(shipped: Result<Continuity>) -> Result<Continuity> {
    match shipped {
        Err(e) if e.is_diverged() => Ok(Err(SnapshotReason::LineageUnknown)),
        other => other,
    }
}

/// Starts a read transaction (a `BEGIN` takes its snapshot at the first read).
fn begin_read(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN")
        .map_err(sqlite_err("starting a read transaction"))?;
    let read = conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()));
    if let Err(e) = read {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(sqlite_err("starting a read transaction")(e));
    }
    Ok(())
}

/// Appends one WAL transaction, stamped with [`commit_stamp`]. One too large to have
/// been held in memory is read back from the WAL a chunk at a time.
fn append<S: Storage + Clone>(
    log: &mut LogWriter<S>,
    wal: &Path,
    (floor, hints): (Option<DateTime<Utc>>, &[CommitHint]),
    txn: &WalTransaction,
    report: &mut IngestReport,
) -> Result<()> {
    let stamp = commit_stamp(wal, floor);
    let stamp = match CommitHint::earliest(hints, txn.end.frames) {
        Some(hinted) => stamp.min(hinted),
        None => stamp,
    };
    if txn.pages.is_empty() {
        let located = &txn.located;
        let file = std::fs::File::open(wal)
            .map_err(|e| Error::io(format!("opening SQLite WAL {}", wal.display()), e))?;
        let per_chunk = crate::log::chunk_pages(located.header.page_size as usize);
        let mut chunks = located.frames.chunks(per_chunk);
        let count = located.frames.len() as u64;
        let appended = log.append_chunked_at(count, txn.db_size, stamp, |chunk| {
            let frames = chunks.next().unwrap_or_default();
            wal::read_located(
                &file,
                wal,
                &located.header,
                frames,
                &mut chunk.page_nos,
                &mut chunk.data,
            )
        })?;
        report.add(appended);
        return Ok(());
    }
    // SQLite may write a page twice in one transaction; the later image wins, and the
    // log keeps both (its index points at the newest).
    let refs: Vec<(u32, &[u8])> = txn.pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    report.add(log.append_at(&refs, txn.db_size, stamp)?);
    Ok(())
}

/// What an attached connection's commit hook knows of a commit: right after it, at `at`,
/// the WAL held `frames` frames (SQLite passes the count to the hook).
///
/// The replicator stamps a transaction ending at or before that frame with the
/// millisecond of `at`, rounded down, when that is earlier than its usual stamp: so a
/// restore to any time taken after the COMMIT returned finds the commit, without the
/// COMMIT waiting for the clock to pass a stamp rounded up. The price is at the
/// sub-millisecond: a restore to a moment within the commit's millisecond, but before
/// it, finds it too. (The hint never names the wrong transaction: while the replicator
/// holds its reader, SQLite cannot restart the WAL before the frames are read.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommitHint {
    pub frames: u32,
    pub at: DateTime<Utc>,
}

impl CommitHint {
    /// The stamp the hints give a transaction ending at WAL frame `end`: the earliest
    /// time a hint saw it complete, rounded down to the millisecond.
    fn earliest(hints: &[CommitHint], end: u32) -> Option<DateTime<Utc>> {
        let at = hints
            .iter()
            .filter(|h| h.frames >= end)
            .map(|h| h.at)
            .min()?;
        DateTime::from_timestamp_millis(at.timestamp_millis())
    }
}

/// The time stamped on a transaction just read from the WAL: never earlier than the
/// write of its commit frame, and as close to it as the OS tells.
///
/// SQLite writes the commit frame before COMMIT returns, and the kernel sets the WAL's
/// modification time at each write; read after the transaction was, it is at or after
/// the kernel's time of the commit frame's write. But the kernel takes that time from its
/// coarse clock, which runs behind the real time: by up to one tick in principle (4 ms at
/// HZ=250), and by up to one and a half measured on a virtual machine. So the stamp is
/// the modification time plus [`COARSE_TICKS`] ticks of the coarse clock
/// (`clock_getres(CLOCK_REALTIME_COARSE)`), or the time of reading when that is earlier
/// (the log clamps it to its clock and rounds it up to the millisecond, see
/// [`LogWriter::append_at`]). A restore to a time T then returns a commit written after
/// T only if the kernel's clock was more than that behind at the write.
///
/// The modification time is not trusted, and the time of reading is used, where it
/// cannot be such a bound: not on Linux (the resolution is unknown); on filesystems that
/// keep whole seconds or milliseconds (its sub-millisecond part is zero); when it is
/// earlier than `floor`, the start of the previous read of the WAL, which did not find
/// this commit complete (a filesystem stamped by another machine's clock, say).
fn commit_stamp(wal: &Path, floor: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let read_time = DateTime::<Utc>::MAX_UTC; // the log replaces it with its clock
    let Some(tick) = coarse_clock_resolution() else {
        return read_time;
    };
    let Ok(since_epoch) = std::fs::metadata(wal)
        .and_then(|m| m.modified())
        .map(|t| t.duration_since(std::time::UNIX_EPOCH))
    else {
        return read_time;
    };
    let Ok(since_epoch) = since_epoch else {
        return read_time; // before 1970
    };
    if since_epoch.subsec_nanos() % 1_000_000 == 0 {
        return read_time; // a coarse filesystem
    }
    let bound = since_epoch
        .checked_add(tick * COARSE_TICKS)
        .and_then(|d| DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos()));
    match bound {
        Some(bound) if floor.is_none_or(|floor| bound >= floor) => bound,
        _ => read_time,
    }
}

/// How many ticks of the kernel's coarse clock a file's modification time is taken to
/// be behind the write that set it, at most (see [`commit_stamp`]).
const COARSE_TICKS: u32 = 2;

/// How far behind the real time the kernel's file timestamps can be: the resolution of
/// the coarse clock they come from (Linux). None where that is not known.
fn coarse_clock_resolution() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        static TICK: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
        *TICK.get_or_init(|| {
            let mut res = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_getres writes one timespec through a valid pointer.
            let rc = unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, &mut res) };
            let secs = u64::try_from(res.tv_sec).ok()?;
            let nanos = u32::try_from(res.tv_nsec).ok()?;
            (rc == 0).then(|| Duration::new(secs, nanos))
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The WAL's header bytes, to tell whether it was restarted meanwhile.
fn wal_header(path: &Path) -> Result<Option<[u8; 32]>> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut header = [0u8; 32];
    match file.read_exact(&mut header) {
        Ok(()) => Ok(Some(header)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

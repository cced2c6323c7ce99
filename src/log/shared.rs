//! State the log writer shares with its background tasks: the watermarks, the sealed
//! segments not yet durable, the file to fsync, and the two tasks themselves.
//!
//! * The **syncer** turns `Applied` into `Written`. It runs when a caller waits for
//!   `Written` (or `Durable`) and at least every `sync_interval`: it reads the `Applied`
//!   watermark, writes out and fsyncs the files sealed since its last run and the open one
//!   (and, once, each new file's directory), and advances `Written` to what it read.
//!   Transactions appended while an fsync runs share the next one (group commit). When
//!   1 MiB of appends is pending, or a seal started a new file, it gets ahead of the next
//!   fsync without making one: it writes the appends out, starts their writeback
//!   (`sync_file_range` on Linux) and fsyncs a new file's directory entry. So appends
//!   and seals make no system call (until 32 MiB pile up: back-pressure), and a waiter's
//!   fsync finds most of its work done.
//! * The **submitter** hands sealed segments to storage one at a time, in frame order.
//!   What storage reports durable becomes the `Durable` watermark once it is also
//!   `Written`, and only then are the local copies deleted. A transient store error is
//!   retried as the log's [`RetryPolicy`](super::RetryPolicy) says (by default until the
//!   store answers; see the `retry` module); any other error fails the log, once
//!   everything appended is `Written`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::durability::{Durability, DurabilityTracker};
use crate::error::Error;
use crate::format::{NamespaceName, PageSums, SealedSegment};
use crate::log::retry::{Backlog, Retrier, RetryPolicy, Stop};
use crate::log::stats::LogStats;
use crate::log::wal::{self, SyncTarget};
use crate::storage::{on_store, Storage};

/// A sealed segment kept locally until it is durable, with the file it was written to.
#[derive(Debug, Clone)]
pub(crate) struct Sealed {
    pub segment: SealedSegment,
    pub path: PathBuf,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub tracker: DurabilityTracker,
    /// What the submitter shipped, for monitoring.
    pub stats: LogStats,
    pub sealed: Mutex<Vec<Sealed>>,
    /// The files the syncer must fsync, under one lock so that a seal can never slip
    /// between its taking the sealed files and the open one.
    targets: Mutex<SyncTargets>,
    /// The highest frame storage reported durable; the `Durable` watermark follows it,
    /// but never ahead of `Written`.
    stored: Mutex<u64>,
    /// Wakes the syncer: someone waits for `Written`, or the log is stopping.
    pub sync_requested: Notify,
    /// Held by a sync from taking the files to fsync until `Written` has moved.
    sync_lock: Mutex<()>,
    /// Wakes the syncer to write out pending appends without an fsync.
    pub write_requested: Notify,
    pub stopping: AtomicBool,
    /// The log directory, where the syncer saves the page sums.
    dir: PathBuf,
    /// Set when the store refused a segment as [`Error::Diverged`]: the segments built on
    /// it are dropped until a snapshot starts a new lineage.
    diverged: tokio::sync::watch::Sender<Option<Error>>,
    /// The same, for the submitter, which bounds its retries once the log stops.
    stopped: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct SyncTargets {
    /// The open-segment file.
    current: Option<SyncTarget>,
    /// Files sealed since the syncer last ran: they need one last fsync.
    retired: Vec<SyncTarget>,
    /// The page sums as of the last seal, saved once the sealed files are fsynced: saved
    /// earlier, a crash could leave sums ahead of what the log recovers.
    sums: Option<(u64, PageSums)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(tracker: DurabilityTracker, dir: PathBuf, stats: LogStats) -> Self {
        Self {
            tracker,
            stats,
            sealed: Mutex::new(Vec::new()),
            targets: Mutex::new(SyncTargets::default()),
            stored: Mutex::new(0),
            sync_requested: Notify::new(),
            sync_lock: Mutex::new(()),
            write_requested: Notify::new(),
            stopping: AtomicBool::new(false),
            dir,
            diverged: tokio::sync::watch::Sender::new(None),
            stopped: watch::Sender::new(false),
        }
    }

    /// The store's refusal, while no snapshot has answered it.
    pub(crate) fn diverged(&self) -> Option<Error> {
        self.diverged.borrow().clone()
    }

    pub(crate) fn watch_diverged(&self) -> tokio::sync::watch::Receiver<Option<Error>> {
        self.diverged.subscribe()
    }

    fn set_diverged(&self, e: Error) {
        self.diverged.send_replace(Some(e));
    }

    /// A snapshot was appended: a new lineage starts.
    pub(crate) fn clear_diverged(&self) {
        self.diverged.send_if_modified(|d| d.take().is_some());
    }

    /// Replaces the open file (still empty) with `next`; the old one needs no fsync.
    pub(crate) fn replace_sync_target(&self, next: SyncTarget) {
        lock(&self.targets).current = Some(next);
    }

    /// Makes `next` the file appends go to; the previous one gets a last fsync, after
    /// which `sums` (the page sums at the end of the sealed segment) are saved.
    pub(crate) fn rotate_sync_target(&self, next: SyncTarget, sums: Option<(u64, PageSums)>) {
        let mut targets = lock(&self.targets);
        if let Some(previous) = targets.current.replace(next) {
            targets.retired.push(previous);
        }
        if sums.is_some() {
            targets.sums = sums;
        }
    }

    /// The files to fsync now (sealed ones, then the open one) and the page sums to save
    /// once they are.
    fn sync_targets(&self) -> (Vec<SyncTarget>, Option<(u64, PageSums)>) {
        let mut targets = lock(&self.targets);
        let mut all = std::mem::take(&mut targets.retired);
        all.extend(targets.current.clone());
        (all, targets.sums.take())
    }

    /// Every file with appends that may be pending, without taking any off the list.
    fn all_targets(&self) -> Vec<SyncTarget> {
        let targets = lock(&self.targets);
        targets
            .retired
            .iter()
            .chain(&targets.current)
            .cloned()
            .collect()
    }

    pub(crate) fn sealed(&self) -> Vec<Sealed> {
        lock(&self.sealed).clone()
    }

    pub(crate) fn push_sealed(&self, sealed: Sealed) {
        lock(&self.sealed).push(sealed);
    }

    /// Bytes of the sealed segments waiting for the store that are held in memory.
    pub(crate) fn sealed_in_memory(&self) -> u64 {
        lock(&self.sealed)
            .iter()
            .filter(|s| s.segment.is_in_memory())
            .map(|s| s.segment.encoded_len())
            .sum()
    }

    /// Storage reports `durable`.
    pub(crate) fn on_stored(&self, durable: u64) {
        {
            let mut stored = lock(&self.stored);
            *stored = (*stored).max(durable);
        }
        self.catch_up_durable();
    }

    /// Moves `Durable` to what storage holds, but never past `Written`: a frame counts as
    /// durable only once it is also safe locally, so a storage that keeps nothing (or a
    /// store that finished before the local fsync) never vouches for more than was
    /// written, and a local copy is deleted only once both are true.
    pub(crate) fn catch_up_durable(&self) {
        let durable = (*lock(&self.stored)).min(self.tracker.watermark(Durability::Written));
        if durable > self.tracker.watermark(Durability::Durable) {
            if let Err(e) = self.tracker.advance(Durability::Durable, durable) {
                tracing::debug!(error = %e, "durable watermark not advanced");
            }
        }
        self.stats
            .durable(self.tracker.watermark(Durability::Durable));
        let mut sealed = lock(&self.sealed);
        sealed.retain(|s| {
            let keep = s.segment.end_frame_no() > durable;
            if !keep {
                wal::remove(&s.path);
            }
            keep
        });
    }

    /// fsyncs every file with appends (sealed ones, then the open one), saves the page
    /// sums of a seal, and moves `Written` to what was appended before: the syncer's
    /// step, run on a blocking thread. One sync at a time, so `Written` never passes a
    /// file another sync has taken but not yet fsynced. A failure latches the tracker.
    pub(crate) fn sync_now(&self) -> crate::error::Result<()> {
        let _one = lock(&self.sync_lock);
        let target = self.tracker.watermark(Durability::Applied);
        if target <= self.tracker.watermark(Durability::Written) {
            return Ok(());
        }
        let (targets, sums) = self.sync_targets();
        let synced = targets.iter().try_for_each(|t| t.sync()).map(|()| {
            if let Some((frame_no, sums)) = sums {
                // Before `Written` moves (and so before the sealed file can be deleted
                // as durable): recovery replays that file onto older sums.
                if let Err(e) = super::sums::save(&self.dir, frame_no, &sums) {
                    tracing::warn!(error = %e, "page sums not saved; a crash now ships a snapshot");
                }
            }
        });
        match synced {
            Ok(()) => {
                // A failed log fails its tracker: nothing more moves, and waiters wake.
                self.tracker.advance(Durability::Written, target)?;
                self.catch_up_durable();
                Ok(())
            }
            Err(e) => {
                // Latch: after a failed fsync nothing more is reported written.
                let e = Error::io("syncing the open segment", e);
                self.tracker.fail(e.clone());
                Err(e)
            }
        }
    }

    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.send_replace(true);
        self.sync_requested.notify_one();
    }

    /// What waits in the local log for the store.
    fn backlog(&self) -> Backlog {
        Backlog::of(&lock(&self.sealed))
    }

    /// Waits (at most `limit`) until everything appended is `Written`, so that a failure
    /// of the log leaves nothing that was accepted only in memory.
    async fn write_out(&self, limit: std::time::Duration) {
        let applied = self.tracker.watermark(Durability::Applied);
        self.sync_requested.notify_one();
        let written = self.tracker.wait(applied, Durability::Written);
        if tokio::time::timeout(limit, written).await.is_err() {
            tracing::warn!(
                frame_no = applied,
                "appended frames not yet written locally"
            );
        }
    }
}

/// fsyncs when asked to and every `interval`; see the module docs.
pub(crate) async fn run_syncer(shared: Arc<Shared>, interval: std::time::Duration) {
    // A fixed deadline: write-out requests must not keep postponing the periodic fsync.
    let mut next_sync = tokio::time::Instant::now() + interval;
    loop {
        let write_only = tokio::select! {
            _ = shared.sync_requested.notified() => false,
            _ = shared.write_requested.notified() => true,
            _ = tokio::time::sleep_until(next_sync) => false,
        };
        if !write_only {
            next_sync = tokio::time::Instant::now() + interval;
        }
        if write_only && !shared.stopping.load(Ordering::Acquire) {
            // Appends piled up, or a seal started a new file: write out and start the
            // writeback (no fsync of the data), so neither the append path nor the next
            // waiter's fsync has to.
            let targets = shared.all_targets();
            let written = tokio::task::spawn_blocking(move || {
                targets.iter().try_for_each(SyncTarget::write_ahead)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = written {
                shared
                    .tracker
                    .fail(Error::io("writing the open segment", e));
                return;
            }
            continue;
        }
        loop {
            if shared.tracker.watermark(Durability::Applied)
                <= shared.tracker.watermark(Durability::Written)
            {
                break;
            }
            let syncing = shared.clone();
            let synced = match tokio::task::spawn_blocking(move || syncing.sync_now()).await {
                Ok(synced) => synced,
                Err(e) => {
                    // The fsync task died: latch, so no waiter for `Written` hangs.
                    let e = Error::io("syncing the open segment", std::io::Error::other(e));
                    shared.tracker.fail(e.clone());
                    Err(e)
                }
            };
            if synced.is_err() {
                // Latched in the tracker: nothing more is reported written.
                return;
            }
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Submits sealed segments in order, retrying as `policy` says; see the module docs.
pub(crate) async fn run_submitter<S: Storage + Clone>(
    storage: S,
    namespace: NamespaceName,
    shared: Arc<Shared>,
    mut segments: mpsc::UnboundedReceiver<SealedSegment>,
    policy: RetryPolicy,
) {
    // After the store refused a segment as diverged, the segments built on it cannot be
    // stored either: they are skipped until a snapshot (a new lineage) arrives. Their
    // local files go once the snapshot is durable (its frame numbers are higher).
    let mut skipping = false;
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let mut retry = Retrier::new(policy, shared.stopped.subscribe(), seed);
    while let Some(segment) = segments.recv().await {
        let key = segment.key();
        if skipping && segment.lineage_base() != Some(0) {
            tracing::info!(namespace = %namespace, segment = %key, "skipping a segment built on a diverged history; a snapshot follows");
            continue;
        }
        let ends_skipping = std::mem::take(&mut skipping);
        let failure = match submit(&storage, &namespace, &shared, segment, &mut retry).await {
            Ok(()) => {
                if ends_skipping {
                    // The snapshot that answers the refusal is stored: a new lineage.
                    shared.clear_diverged();
                }
                continue;
            }
            Err(Stop::Failed(e)) if e.is_diverged() => {
                tracing::warn!(namespace = %namespace, segment = %key, error = %e, "the store refused a segment: its history moved on without this log; shipping a snapshot instead");
                skipping = true;
                shared.set_diverged(e);
                continue;
            }
            Err(Stop::Failed(e)) => e,
            Err(Stop::Closing(last)) => {
                closing_error(&namespace, &shared, retry.close_timeout(), last)
            }
        };
        shared.write_out(std::time::Duration::from_secs(10)).await;
        // Every waiter, append and `tracker().closed()` hears the error itself; at `info`
        // so that a CLI printing both warnings and the error does not say it twice.
        tracing::info!(namespace = %namespace, segment = %key, error = %failure, "storing a sealed segment failed; the log stops");
        shared.tracker.fail(failure);
        return;
    }
}

/// Stores one segment, retrying transient failures.
async fn submit<S: Storage + Clone>(
    storage: &S,
    namespace: &NamespaceName,
    shared: &Arc<Shared>,
    segment: SealedSegment,
    retry: &mut Retrier,
) -> Result<(), Stop> {
    loop {
        let attempt = store_once(storage, namespace, shared, segment.clone());
        match retry.attempt(attempt).await? {
            Ok(()) => {
                retry.stored(shared.backlog());
                return Ok(());
            }
            Err(e) => {
                shared.stats.upload_failed();
                retry.failed(e, shared.backlog()).await?;
                shared.stats.upload_retried();
            }
        }
    }
}

/// Why a closing log stopped retrying: what is left, where, and the last error.
fn closing_error(
    namespace: &NamespaceName,
    shared: &Shared,
    waited: std::time::Duration,
    last: Option<Error>,
) -> Error {
    let note = format!(
        "closing the log of {namespace}: the store did not take {} within {waited:?}; \
         they stay in the local log and the next open submits them again",
        shared.backlog()
    );
    match last {
        Some(e) => e.with_note(&note),
        None => Error::io(note, std::io::ErrorKind::TimedOut.into()),
    }
}

/// Hands one segment to storage. A storage that queues (the scheduler) may still give
/// up on the segment after accepting it: it then drops the callback unused, and asking
/// it for the durable frame number says why.
async fn store_once<S: Storage + Clone>(
    storage: &S,
    namespace: &NamespaceName,
    shared: &Arc<Shared>,
    segment: SealedSegment,
) -> crate::error::Result<()> {
    let key = segment.key();
    let bytes = segment.encoded_len();
    let (stored, outcome) = oneshot::channel();
    let reporter = shared.clone();
    let callback = on_store(move |durable| async move {
        reporter.stats.shipped(bytes);
        // Storage can vouch only for frames this log wrote: a storage that keeps
        // nothing reports u64::MAX, which must not lift the local watermarks.
        reporter.on_stored(durable.min(key.end_frame_no));
        let _ = stored.send(());
    });
    storage.store(namespace, segment, None, callback).await?;
    let (storage, namespace, shared) = (storage.clone(), namespace.clone(), shared.clone());
    tokio::spawn(async move {
        if outcome.await.is_err() {
            let reason = match storage.durable_frame_no(&namespace, None).await {
                Err(e) => e,
                Ok(_) => {
                    Error::NotFound(format!("storage dropped segment {key} without storing it"))
                }
            };
            tracing::error!(namespace = %namespace, segment = %key, error = %reason, "segment was not stored");
            shared.tracker.fail(reason);
        }
    });
    Ok(())
}

//! The store scheduler: the asynchronous [`Storage`] over a backend.
//!
//! `store` queues the segment and returns; a worker per namespace uploads the queue in
//! order, taking a permit from one global semaphore for each upload. Semaphore permits are
//! handed out first come, first served, so a busy namespace cannot starve the others, and
//! at most `max_concurrent_uploads` uploads run at once. Each namespace's queue is bounded:
//! a caller that outruns the backend waits in `store` (back-pressure), so memory stays
//! bounded. Uploads of one namespace run one at a time, because backends commit a
//! namespace's segments in frame order: the durable watermark therefore advances strictly
//! in frame order, and a segment is never reported durable before every earlier one is.
//!
//! A failed upload is retried with exponential backoff and jitter, up to a limit; after
//! that, the namespace is failed: its waiters, `durable_frame_no` and later stores report
//! the error. Shutdown drains what it can within a deadline and reports what it could not.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hashbrown::HashMap;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::Stream;

use super::tracker::{Durability, DurabilityTracker};
use crate::error::{Error, Result};
use crate::format::{NamespaceName, PageIndex, SealedSegment, SegmentKey};
use crate::random::SeededRng;
use crate::storage::{on_store, FindSegmentReq, OnStoreCallback, SegmentInfo, Storage};

/// How the scheduler uploads. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Uploads in progress at once, across all namespaces. Default 8.
    pub max_concurrent_uploads: usize,
    /// Segments queued per namespace before `store` waits. Default 16.
    pub queue_depth: usize,
    /// Retries of a failed upload before the namespace is failed. Default 8.
    pub max_retries: u32,
    /// Backoff before the first retry; doubles each time. Default 50 ms.
    pub initial_backoff: Duration,
    /// Longest backoff between retries. Default 5 s.
    pub max_backoff: Duration,
    /// How long [`Storage::shutdown`] waits for queued uploads. Default 10 s.
    pub shutdown_deadline: Duration,
    /// Seed for the backoff jitter, so tests are repeatable. Default 0x5eed.
    pub jitter_seed: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_uploads: 8,
            queue_depth: 16,
            max_retries: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(10),
            jitter_seed: 0x5eed,
        }
    }
}

/// What a shutdown could not store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Segments that were queued or uploading when the deadline passed, or that a failed
    /// namespace never stored.
    pub not_stored: Vec<(NamespaceName, SegmentKey)>,
}

/// Queues stores and uploads them to a backend in the background. See the module docs.
#[derive(Debug)]
pub struct StoreScheduler<B: Storage> {
    inner: Arc<Inner<B>>,
}

impl<B: Storage> Clone for StoreScheduler<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<B: Storage> {
    backend: B,
    config: SchedulerConfig,
    permits: Semaphore,
    lanes: Mutex<HashMap<NamespaceName, LaneCell<B::Config>>>,
    closed: AtomicBool,
    rng: SeededRng,
}

/// A lane is started once; concurrent first stores wait for that one start.
type LaneCell<C> = Arc<async_lock::OnceCell<Arc<Lane<C>>>>;

/// One namespace's queue, worker and watermarks.
#[derive(Debug)]
struct Lane<C> {
    tx: Mutex<Option<mpsc::Sender<Job<C>>>>,
    tracker: DurabilityTracker,
    /// Segments accepted but not yet stored, by end frame.
    pending: Mutex<BTreeMap<u64, SegmentKey>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct Job<C> {
    segment: SealedSegment,
    config: Option<C>,
    on_store: OnStoreCallback,
}

impl<C> std::fmt::Debug for Job<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("segment", &self.segment.key())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Storage> StoreScheduler<B> {
    /// A scheduler over `backend`.
    pub fn new(backend: B, config: SchedulerConfig) -> Result<Self> {
        if config.max_concurrent_uploads == 0 || config.queue_depth == 0 {
            let why = "max_concurrent_uploads and queue_depth must be at least 1";
            return Err(crate::InvalidInput::Config(why.into()).into());
        }
        Ok(Self {
            inner: Arc::new(Inner {
                permits: Semaphore::new(config.max_concurrent_uploads),
                rng: SeededRng::new(config.jitter_seed),
                backend,
                config,
                lanes: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The backend uploads go to.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// The watermarks of `namespace`, to wait on or subscribe to.
    pub async fn tracker(&self, namespace: &NamespaceName) -> Result<DurabilityTracker> {
        Ok(self.lane(namespace).await?.tracker.clone())
    }

    async fn lane(&self, name: &NamespaceName) -> Result<Arc<Lane<B::Config>>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let cell = lock(&self.inner.lanes)
            .entry(name.clone())
            .or_default()
            .clone();
        let lane = cell
            .get_or_try_init(|| async {
                let durable = self.inner.backend.durable_frame_no(name, None).await?;
                Ok::<_, Error>(self.start_lane(name.clone(), durable))
            })
            .await?;
        if self.inner.closed.load(Ordering::Acquire) {
            // Shutdown began while the lane was starting and may not have seen it.
            lock(&lane.tx).take();
            lane.tracker.close();
            return Err(Error::Closed);
        }
        Ok(lane.clone())
    }

    fn start_lane(&self, name: NamespaceName, durable: u64) -> Arc<Lane<B::Config>> {
        let (tx, rx) = mpsc::channel(self.inner.config.queue_depth);
        let lane = Arc::new(Lane {
            tx: Mutex::new(Some(tx)),
            tracker: DurabilityTracker::new(durable),
            pending: Mutex::new(BTreeMap::new()),
            worker: Mutex::new(None),
        });
        let worker = tokio::spawn(run_lane(self.inner.clone(), name, lane.clone(), rx));
        *lock(&lane.worker) = Some(worker);
        lane
    }

    async fn enqueue(&self, name: NamespaceName, job: Job<B::Config>) -> Result<()> {
        let lane = self.lane(&name).await?;
        if let Some(reason) = lane.tracker.closed() {
            return Err(reason);
        }
        let tx = lock(&lane.tx).clone().ok_or(Error::Closed)?;
        let key = job.segment.key();
        lock(&lane.pending).insert(key.end_frame_no, key);
        if tx.send(job).await.is_err() {
            lock(&lane.pending).remove(&key.end_frame_no);
            return Err(lane.tracker.closed().unwrap_or(Error::Closed));
        }
        Ok(())
    }

    /// Stops accepting stores, uploads what is queued until `deadline`, then abandons the
    /// rest and wakes every waiter. Returns what was not stored.
    pub async fn shutdown_within(&self, deadline: Duration) -> ShutdownReport {
        self.inner.closed.store(true, Ordering::Release);
        let lanes: Vec<(NamespaceName, Arc<Lane<B::Config>>)> = lock(&self.inner.lanes)
            .iter()
            .filter_map(|(name, cell)| cell.get().map(|lane| (name.clone(), lane.clone())))
            .collect();
        let mut workers = Vec::new();
        for (_, lane) in &lanes {
            lock(&lane.tx).take(); // the worker drains the queue, then stops
            workers.extend(lock(&lane.worker).take());
        }
        let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
        let drained = tokio::time::timeout(deadline, async {
            for worker in workers {
                let _ = worker.await;
            }
        })
        .await;
        if drained.is_err() {
            aborts.iter().for_each(|a| a.abort());
        }
        let mut report = ShutdownReport::default();
        for (name, lane) in lanes {
            lane.tracker.close();
            let pending = std::mem::take(&mut *lock(&lane.pending));
            report
                .not_stored
                .extend(pending.into_values().map(|key| (name.clone(), key)));
        }
        if !report.not_stored.is_empty() {
            tracing::warn!(
                count = report.not_stored.len(),
                "shutdown left segments unstored"
            );
        }
        self.inner.backend.shutdown().await;
        report
    }
}

/// Uploads one namespace's queue in order until the queue closes or the namespace fails.
async fn run_lane<B: Storage>(
    inner: Arc<Inner<B>>,
    name: NamespaceName,
    lane: Arc<Lane<B::Config>>,
    mut rx: mpsc::Receiver<Job<B::Config>>,
) {
    while let Some(job) = rx.recv().await {
        if lane.tracker.closed().is_some() {
            continue; // a failed namespace stores nothing more; `pending` keeps the record
        }
        let Job {
            segment,
            config,
            on_store,
        } = job;
        let key = segment.key();
        match inner.upload(&name, &segment, &config).await {
            Ok(durable) => {
                lock(&lane.pending).remove(&key.end_frame_no);
                if let Err(e) = lane.tracker.advance(Durability::Durable, durable) {
                    tracing::error!(namespace = %name, error = %e, "durable watermark update refused");
                }
                // A panicking callback must not take the lane (and every later segment)
                // down with it.
                if let Err(e) = tokio::spawn(on_store(durable)).await {
                    tracing::error!(namespace = %name, error = %e, "an on_store callback panicked");
                }
            }
            Err(e) => {
                tracing::error!(namespace = %name, segment = %key, error = %e, "upload failed; namespace failed");
                lane.tracker.fail(e);
            }
        }
    }
}

impl<B: Storage> Inner<B> {
    /// Stores one segment, retrying retryable errors with backoff. Returns the backend's
    /// durable frame number after the store.
    async fn upload(
        &self,
        name: &NamespaceName,
        segment: &SealedSegment,
        config: &Option<B::Config>,
    ) -> Result<u64> {
        let mut attempt = 0;
        loop {
            let result = self.try_upload(name, segment, config).await;
            match result {
                Ok(durable) => return Ok(durable),
                Err(e) if retryable(&e) && attempt < self.config.max_retries => {
                    let wait = self.backoff(attempt);
                    tracing::warn!(namespace = %name, segment = %segment.key(), attempt, ?wait, error = %e, "upload failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_upload(
        &self,
        name: &NamespaceName,
        segment: &SealedSegment,
        config: &Option<B::Config>,
    ) -> Result<u64> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        let report = on_store(move |durable| async move {
            let _ = tx.send(durable);
        });
        self.backend
            .store(name, segment.clone(), config.clone(), report)
            .await?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Exponential backoff with jitter: a random duration in the upper half of
    /// `initial * 2^attempt`, capped at `max_backoff`.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .config
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.config.max_backoff);
        let factor = 0.5 + self.rng.unit() / 2.0;
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

/// Only transient errors may pass (an unreachable or throttling store, a local I/O
/// hiccup); a permanent one (credentials, permission, a missing bucket), bad input,
/// corruption or a conflict fails the same way on every retry.
fn retryable(e: &Error) -> bool {
    e.is_transient()
}

impl<B: Storage> Storage for StoreScheduler<B> {
    type Config = B::Config;

    /// Queues the segment; resolves once it is queued (waiting while the namespace's
    /// queue is full). `on_store` runs once the segment is durable.
    fn store(
        &self,
        namespace: &NamespaceName,
        segment: SealedSegment,
        config_override: Option<B::Config>,
        on_store: OnStoreCallback,
    ) -> impl Future<Output = Result<()>> + Send {
        let job = Job {
            segment,
            config: config_override,
            on_store,
        };
        self.enqueue(namespace.clone(), job)
    }

    /// The backend's durable frame number, or the error that failed the namespace.
    async fn durable_frame_no(
        &self,
        namespace: &NamespaceName,
        config: Option<B::Config>,
    ) -> Result<u64> {
        let cell = lock(&self.inner.lanes).get(namespace).cloned();
        if let Some(reason) = cell.and_then(|c| c.get().and_then(|lane| lane.tracker.closed())) {
            return Err(reason);
        }
        self.inner.backend.durable_frame_no(namespace, config).await
    }

    fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<SegmentKey>> + Send {
        self.inner.backend.find_segment(namespace, req, config)
    }

    fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<PageIndex>> + Send {
        self.inner
            .backend
            .fetch_segment_index(namespace, key, config)
    }

    fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<SealedSegment>> + Send {
        self.inner
            .backend
            .fetch_segment_data(namespace, key, config)
    }

    fn fetch_frame_run(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        run: std::ops::Range<u32>,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<Vec<crate::format::Frame>>> + Send {
        self.inner
            .backend
            .fetch_frame_run(namespace, key, run, config)
    }

    fn fetch_frames(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<Vec<(u32, bytes::Bytes)>>> + Send {
        self.inner
            .backend
            .fetch_frames(namespace, key, positions, config)
    }

    fn fetch_commit_table(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<crate::format::CommitTable>> + Send {
        self.inner
            .backend
            .fetch_commit_table(namespace, key, config)
    }

    fn fetch_segment_indexes(
        &self,
        namespace: &NamespaceName,
        keys: &[SegmentKey],
        config: Option<B::Config>,
    ) -> impl Future<Output = Vec<Result<PageIndex>>> + Send {
        self.inner
            .backend
            .fetch_segment_indexes(namespace, keys, config)
    }

    fn fetch_frames_batch(
        &self,
        namespace: &NamespaceName,
        requests: Vec<(SegmentKey, Vec<u32>)>,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<Vec<Vec<(u32, bytes::Bytes)>>>> + Send {
        self.inner
            .backend
            .fetch_frames_batch(namespace, requests, config)
    }

    fn replace_segments(
        &self,
        namespace: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner
            .backend
            .replace_segments(namespace, inputs, output, config)
    }

    fn collect_garbage(
        &self,
        namespace: &NamespaceName,
        options: crate::storage::GcOptions,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<crate::storage::GcReport>> + Send {
        self.inner
            .backend
            .collect_garbage(namespace, options, config)
    }

    fn fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: crate::storage::RestoreOptions,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<crate::storage::ForkReport>> + Send {
        self.inner.backend.fork(source, target, at, config)
    }

    fn spill_dir(
        &self,
        namespace: &NamespaceName,
        config: Option<B::Config>,
    ) -> std::path::PathBuf {
        self.inner.backend.spill_dir(namespace, config)
    }

    fn refresh(
        &self,
        namespace: &NamespaceName,
        config: Option<B::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.backend.refresh(namespace, config)
    }

    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        config: Option<B::Config>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        self.inner.backend.list_segments(namespace, until, config)
    }

    /// Shuts down within [`SchedulerConfig::shutdown_deadline`]; see
    /// [`StoreScheduler::shutdown_within`] for the report of what was not stored.
    async fn shutdown(&self) {
        self.shutdown_within(self.inner.config.shutdown_deadline)
            .await;
    }
}

#[cfg(test)]
mod tests;

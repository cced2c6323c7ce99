//! A fault-injecting wrapper around any backend, for testing what sits on top of storage:
//! fail the Nth store, fail a fraction of stores at random (with a seed that is printed so
//! a failure can be replayed), and delay every store.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;

use super::{spawn_store, FindSegmentReq, OnStoreCallback, SegmentInfo, Storage};
use crate::error::{Error, Result};
use crate::format::{NamespaceName, PageIndex, SealedSegment, SegmentKey};
use crate::random::SeededRng;

/// Which stores fail, and how slow they are.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail the store calls with these 1-based numbers (counted across namespaces).
    pub fail_calls: Vec<u64>,
    /// Fail every store call from this number on (a backend that went away).
    pub fail_from: Option<u64>,
    /// Fail this fraction (0.0 to 1.0) of store calls at random.
    pub fail_fraction: f64,
    /// Seed for the random failures; logged (`tracing`, info) when the wrapper is made.
    pub seed: u64,
    /// Sleep this long before each store.
    pub delay: Duration,
}

/// Wraps a backend and injects [`Faults`] into `store`; every other call passes through.
/// An injected failure is an [`Error::Io`] and happens before the inner store is called,
/// so a failed store never stores anything.
#[derive(Debug, Clone)]
pub struct FaultyStorage<S> {
    inner: S,
    faults: Arc<Faults>,
    calls: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    rng: Arc<SeededRng>,
}

impl<S: Storage + Clone> FaultyStorage<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, faults: Faults) -> Self {
        tracing::info!(
            seed = faults.seed,
            "FaultyStorage: random failures replay from this seed"
        );
        Self {
            inner,
            rng: Arc::new(SeededRng::new(faults.seed)),
            faults: Arc::new(faults),
            calls: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Store calls so far, failed ones included.
    pub fn store_calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most store calls that were ever in progress at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn should_fail(&self, call: u64) -> bool {
        let f = &self.faults;
        f.fail_calls.contains(&call)
            || f.fail_from.is_some_and(|from| call >= from)
            || (f.fail_fraction > 0.0 && self.rng.unit() < f.fail_fraction)
    }

    async fn faulty_store(
        &self,
        namespace: NamespaceName,
        segment: SealedSegment,
        config: Option<S::Config>,
        callback: OnStoreCallback,
    ) -> Result<()> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _done = Decrement(&self.in_flight);
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        if self.should_fail(call) {
            return Err(Error::io(
                format!(
                    "storing segment {} (injected fault, call {call})",
                    segment.key()
                ),
                std::io::Error::other("injected fault"),
            ));
        }
        self.inner
            .store(&namespace, segment, config, callback)
            .await
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: Storage + Clone> Storage for FaultyStorage<S> {
    type Config = S::Config;

    fn store(
        &self,
        namespace: &NamespaceName,
        segment: SealedSegment,
        config_override: Option<S::Config>,
        callback: OnStoreCallback,
    ) -> impl Future<Output = Result<()>> + Send {
        let this = self.clone();
        let name = namespace.clone();
        spawn_store(async move {
            this.faulty_store(name, segment, config_override, callback)
                .await
        })
    }

    fn durable_frame_no(
        &self,
        namespace: &NamespaceName,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<u64>> + Send {
        self.inner.durable_frame_no(namespace, config)
    }

    fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<SegmentKey>> + Send {
        self.inner.find_segment(namespace, req, config)
    }

    fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<PageIndex>> + Send {
        self.inner.fetch_segment_index(namespace, key, config)
    }

    fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<SealedSegment>> + Send {
        self.inner.fetch_segment_data(namespace, key, config)
    }

    fn fetch_commit_table(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<crate::format::CommitTable>> + Send {
        self.inner.fetch_commit_table(namespace, key, config)
    }

    fn fetch_frame_run(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        run: std::ops::Range<u32>,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<Vec<crate::format::Frame>>> + Send {
        self.inner.fetch_frame_run(namespace, key, run, config)
    }

    fn fetch_frames(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<Vec<(u32, bytes::Bytes)>>> + Send {
        self.inner.fetch_frames(namespace, key, positions, config)
    }

    fn fetch_segment_indexes(
        &self,
        namespace: &NamespaceName,
        keys: &[SegmentKey],
        config: Option<S::Config>,
    ) -> impl Future<Output = Vec<Result<PageIndex>>> + Send {
        self.inner.fetch_segment_indexes(namespace, keys, config)
    }

    fn fetch_frames_batch(
        &self,
        namespace: &NamespaceName,
        requests: Vec<(SegmentKey, Vec<u32>)>,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<Vec<Vec<(u32, bytes::Bytes)>>>> + Send {
        self.inner.fetch_frames_batch(namespace, requests, config)
    }

    fn replace_segments(
        &self,
        namespace: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner
            .replace_segments(namespace, inputs, output, config)
    }

    fn collect_garbage(
        &self,
        namespace: &NamespaceName,
        options: crate::storage::GcOptions,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<crate::storage::GcReport>> + Send {
        self.inner.collect_garbage(namespace, options, config)
    }

    fn fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: crate::storage::RestoreOptions,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<crate::storage::ForkReport>> + Send {
        self.inner.fork(source, target, at, config)
    }

    fn spill_dir(
        &self,
        namespace: &NamespaceName,
        config: Option<S::Config>,
    ) -> std::path::PathBuf {
        self.inner.spill_dir(namespace, config)
    }

    fn refresh(
        &self,
        namespace: &NamespaceName,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.refresh(namespace, config)
    }

    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        config: Option<S::Config>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        self.inner.list_segments(namespace, until, config)
    }

    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        self.inner.shutdown()
    }
}

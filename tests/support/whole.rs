//! A storage wrapper for tests of bounded memory: fetching a segment whole fails, so
//! a test proves an operation reads segments only in bounded pieces. Shared by test
//! binaries through `#[path]`.

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::Stream;
use walvault::{
    CommitTable, Error, FindSegmentReq, Frame, NamespaceName, OnStoreCallback, PageIndex, Result,
    SealedSegment, SegmentInfo, SegmentKey, Storage,
};

/// Wraps a backend: `fetch_segment_data` fails (what uses it must not read a segment
/// whole), and the frame bytes fetched are counted. Compaction (`replace_segments`)
/// passes through; forks do not (the backend's own fork would read through itself).
#[derive(Clone)]
pub struct NoWholeSegments<S> {
    inner: S,
    frame_bytes: Arc<AtomicU64>,
}

impl<S> NoWholeSegments<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            frame_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn count(&self, frames: &[(u32, Bytes)]) {
        let bytes: u64 = frames.iter().map(|(_, d)| d.len() as u64).sum();
        self.frame_bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// The frame bytes fetched since the last call.
    pub fn take_count(&self) -> u64 {
        self.frame_bytes.swap(0, Ordering::SeqCst)
    }
}

impl<S: Storage> Storage for NoWholeSegments<S> {
    type Config = S::Config;

    fn store(
        &self,
        namespace: &NamespaceName,
        segment: SealedSegment,
        config: Option<S::Config>,
        on_store: OnStoreCallback,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.store(namespace, segment, config, on_store)
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

    async fn fetch_segment_data(
        &self,
        _namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<S::Config>,
    ) -> Result<SealedSegment> {
        Err(Error::Unsupported(format!("segment {key} fetched whole")))
    }

    fn fetch_commit_table(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<CommitTable>> + Send {
        self.inner.fetch_commit_table(namespace, key, config)
    }

    async fn fetch_frames(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
        config: Option<S::Config>,
    ) -> Result<Vec<(u32, Bytes)>> {
        let frames = self
            .inner
            .fetch_frames(namespace, key, positions, config)
            .await?;
        self.count(&frames);
        Ok(frames)
    }

    async fn fetch_frame_run(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        run: Range<u32>,
        config: Option<S::Config>,
    ) -> Result<Vec<Frame>> {
        let frames = self
            .inner
            .fetch_frame_run(namespace, key, run, config)
            .await?;
        let bytes: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
        self.frame_bytes.fetch_add(bytes, Ordering::SeqCst);
        Ok(frames)
    }

    fn fetch_segment_indexes(
        &self,
        namespace: &NamespaceName,
        keys: &[SegmentKey],
        config: Option<S::Config>,
    ) -> impl Future<Output = Vec<Result<PageIndex>>> + Send {
        self.inner.fetch_segment_indexes(namespace, keys, config)
    }

    async fn fetch_frames_batch(
        &self,
        namespace: &NamespaceName,
        requests: Vec<(SegmentKey, Vec<u32>)>,
        config: Option<S::Config>,
    ) -> Result<Vec<Vec<(u32, Bytes)>>> {
        let batch = self
            .inner
            .fetch_frames_batch(namespace, requests, config)
            .await?;
        batch.iter().for_each(|frames| self.count(frames));
        Ok(batch)
    }

    fn refresh(
        &self,
        namespace: &NamespaceName,
        config: Option<S::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.inner.refresh(namespace, config)
    }

    fn spill_dir(&self, namespace: &NamespaceName, config: Option<S::Config>) -> PathBuf {
        self.inner.spill_dir(namespace, config)
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

    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        config: Option<S::Config>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        self.inner.list_segments(namespace, until, config)
    }
}

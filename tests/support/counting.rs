//! An `ObjectStore` that counts the requests made through it, by kind, and passes each
//! one on to the store it wraps. Every method is passed on directly (not through
//! `object_store`'s default methods), so each call is counted exactly once.

#![allow(dead_code)]

use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use tokio_stream::Stream;

type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// Requests made, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `list`, `list_with_offset`, `list_with_delimiter`.
    pub list: u64,
    /// `get`, `get_opts` (but a HEAD through it), `get_range`, `get_ranges` (one each,
    /// whatever the number of ranges; see `ranges`).
    pub get: u64,
    /// `head`, and `get_opts` asking for the head only.
    pub head: u64,
    /// `put`, `put_opts`, starting a multipart upload, each part, each completion.
    pub put: u64,
    /// `delete`, and aborting a multipart upload.
    pub delete: u64,
    /// `copy`, `copy_if_not_exists` and the renames.
    pub copy: u64,
    /// Ranges asked for through `get_ranges` (an S3 client may merge or split them).
    pub ranges: u64,
    /// Multipart uploads started.
    pub multipart: u64,
    /// Parts uploaded.
    pub parts: u64,
    /// The most GETs (of any form) that were in flight at once.
    pub peak_gets: u64,
}

impl Counts {
    /// Every request of any kind (not counting `ranges`, `multipart`, `parts`, which
    /// detail the others).
    pub fn total(&self) -> u64 {
        self.list + self.get + self.head + self.put + self.delete + self.copy
    }
}

#[derive(Debug, Default)]
struct Counters {
    list: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    copy: AtomicU64,
    ranges: AtomicU64,
    multipart: AtomicU64,
    parts: AtomicU64,
    gets_in_flight: AtomicU64,
    peak_gets: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// A GET in flight, from its start until dropped.
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn start(counters: &'a Counters) -> Self {
        bump(&counters.get);
        let now = counters.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.peak_gets.fetch_max(now, Ordering::SeqCst);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.gets_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counters {
    fn take(&self, reset: bool) -> Counts {
        let read = |c: &AtomicU64| {
            if reset {
                c.swap(0, Ordering::SeqCst)
            } else {
                c.load(Ordering::SeqCst)
            }
        };
        Counts {
            list: read(&self.list),
            get: read(&self.get),
            head: read(&self.head),
            put: read(&self.put),
            delete: read(&self.delete),
            copy: read(&self.copy),
            ranges: read(&self.ranges),
            multipart: read(&self.multipart),
            parts: read(&self.parts),
            peak_gets: read(&self.peak_gets),
        }
    }
}

/// Counts the requests made to `inner`.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            counters: Arc::default(),
        })
    }

    /// The requests made so far.
    pub fn counts(&self) -> Counts {
        self.counters.take(false)
    }

    /// The requests made since the last reset (or since the start), and starts again
    /// from zero.
    pub fn reset(&self) -> Counts {
        self.counters.take(true)
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put(&self, location: &Path, payload: PutPayload) -> Result<PutResult> {
        bump(&self.counters.put);
        self.inner.put(location, payload).await
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        bump(&self.counters.put);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart(&self, location: &Path) -> Result<Box<dyn MultipartUpload>> {
        self.put_multipart_opts(location, PutMultipartOptions::default())
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        bump(&self.counters.put);
        bump(&self.counters.multipart);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner,
            counters: self.counters.clone(),
        }))
    }

    async fn get(&self, location: &Path) -> Result<GetResult> {
        let _get = InFlight::start(&self.counters);
        self.inner.get(location).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if options.head {
            bump(&self.counters.head);
            return self.inner.get_opts(location, options).await;
        }
        let _get = InFlight::start(&self.counters);
        self.inner.get_opts(location, options).await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        let _get = InFlight::start(&self.counters);
        self.inner.get_range(location, range).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let _get = InFlight::start(&self.counters);
        self.counters
            .ranges
            .fetch_add(ranges.len() as u64, Ordering::SeqCst);
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        bump(&self.counters.head);
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        bump(&self.counters.delete);
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<Result<ObjectMeta>> {
        bump(&self.counters.list);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<Result<ObjectMeta>> {
        bump(&self.counters.list);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        bump(&self.counters.list);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&self.counters.copy);
        self.inner.copy(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&self.counters.copy);
        self.inner.rename(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&self.counters.copy);
        self.inner.copy_if_not_exists(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&self.counters.copy);
        self.inner.rename_if_not_exists(from, to).await
    }
}

/// Counts a multipart upload's parts, completion and abort.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        bump(&self.counters.put);
        bump(&self.counters.parts);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        bump(&self.counters.put);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        bump(&self.counters.delete);
        self.inner.abort().await
    }
}

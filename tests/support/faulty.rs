//! An `ObjectStore` that injects faults into the requests made through it:
//!
//! * **fail** a request: an error, and the request never reaches the store;
//! * **drop** a request: it reaches the store and takes effect, but the caller gets an
//!   error (a response lost to a timeout or a broken connection);
//! * **delay** requests, or hold them at a **gate** until the test opens it.
//!
//! Which requests: the Nth ones (counted among the requests the filter matches), or a
//! fraction at random from a seed that is printed, so a failing run can be replayed by
//! setting `WALVAULT_FAULT_SEED`. The filter is a set of request kinds and a substring
//! of the path. Multipart uploads are wrapped too: starting one, each part and the
//! completion are PUT requests, an abort is a DELETE.

#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use tokio::sync::watch;
use tokio_stream::Stream;

type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// A kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    Head,
    Put,
    Delete,
    List,
    Copy,
}

/// Which requests fail, are dropped or wait. Counts are 1-based among the requests the
/// filter (`ops`, `path_contains`) matches.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The kinds of request affected; empty for all.
    pub ops: Vec<Op>,
    /// Only requests whose path contains this.
    pub path_contains: Option<String>,
    /// Fail these requests (they do not reach the store).
    pub fail_calls: Vec<u64>,
    /// Drop these requests' responses (they take effect, the caller sees an error).
    pub drop_calls: Vec<u64>,
    /// Fail this fraction of requests at random.
    pub fail_fraction: f64,
    /// Drop the responses of this fraction of requests at random.
    pub drop_fraction: f64,
    /// Seed of the random choices; `WALVAULT_FAULT_SEED` overrides it.
    pub seed: u64,
    /// Sleep this long before each request.
    pub delay: Duration,
    /// What a failed request reports.
    pub error: Injected,
}

/// The error a failed request reports, as `object_store`'s S3 client would.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Injected {
    /// A `Generic` error with a message only (a status the client keeps to itself).
    #[default]
    Generic,
    /// The server is down: a `Generic` error whose source is a connect error.
    Refused,
    /// HTTP 403.
    PermissionDenied,
    /// HTTP 401.
    Unauthenticated,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pass,
    Fail,
    Drop,
}

#[derive(Debug)]
struct Shared {
    faults: Faults,
    enabled: AtomicBool,
    matched: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    at_gate: AtomicU64,
    rng: Mutex<u64>,
    gate: watch::Sender<bool>,
}

impl Shared {
    /// Decides a request's fate and waits as told (requests the filter skips pass).
    async fn admit(self: &Arc<Self>, op: Op, path: &Path) -> Fate {
        let fate = self.fate(op, path);
        if fate.is_some() {
            self.wait().await;
        }
        fate.unwrap_or(Fate::Pass)
    }

    fn fate(&self, op: Op, path: &Path) -> Option<Fate> {
        let f = &self.faults;
        let matches = self.enabled.load(Ordering::SeqCst)
            && (f.ops.is_empty() || f.ops.contains(&op))
            && f.path_contains
                .as_ref()
                .is_none_or(|part| path.as_ref().contains(part.as_str()));
        if !matches {
            return None;
        }
        let n = self.matched.fetch_add(1, Ordering::SeqCst) + 1;
        let roll = self.roll();
        let fate = if f.fail_calls.contains(&n) {
            Fate::Fail
        } else if f.drop_calls.contains(&n) {
            Fate::Drop
        } else if roll < f.fail_fraction {
            Fate::Fail
        } else if roll < f.fail_fraction + f.drop_fraction {
            Fate::Drop
        } else {
            Fate::Pass
        };
        match fate {
            Fate::Fail => self.failed.fetch_add(1, Ordering::SeqCst),
            Fate::Drop => self.dropped.fetch_add(1, Ordering::SeqCst),
            Fate::Pass => 0,
        };
        Some(fate)
    }

    /// A uniform number in [0, 1) (xorshift64).
    fn roll(&self) -> f64 {
        let mut x = self.rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn wait(&self) {
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        let mut open = self.gate.subscribe();
        if !*open.borrow() {
            self.at_gate.fetch_add(1, Ordering::SeqCst);
            let _ = open.wait_for(|open| *open).await;
            self.at_gate.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Runs `request` as `fate` says; a failure reports `error`.
async fn apply<T>(
    fate: Fate,
    error: Injected,
    path: &Path,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    match fate {
        Fate::Pass => request.await,
        Fate::Fail => Err(failure(error, path)),
        Fate::Drop => {
            let _ = request.await;
            Err(injected(
                path,
                "injected timeout: the request took effect, its response was lost",
            ))
        }
    }
}

/// A failed request's error, of the kind `error` says.
fn failure(error: Injected, path: &Path) -> object_store::Error {
    let source = || format!("injected failure ({path})").into();
    let path = path.to_string();
    match error {
        Injected::Generic => injected(
            &Path::from(path),
            "injected failure: the request was not sent",
        ),
        Injected::Refused => {
            let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
            let http = HttpError::new(HttpErrorKind::Connect, refused);
            object_store::Error::Generic {
                store: "FaultyStore",
                source: Box::new(http),
            }
        }
        Injected::PermissionDenied => object_store::Error::PermissionDenied {
            path,
            source: source(),
        },
        Injected::Unauthenticated => object_store::Error::Unauthenticated {
            path,
            source: source(),
        },
    }
}

fn injected(path: &Path, what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("{what} ({path})").into(),
    }
}

/// Injects [`Faults`] into the requests made to `inner`.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
}

impl FaultyStore {
    /// Wraps `inner`; prints the seed of the random faults.
    pub fn new(inner: Arc<dyn ObjectStore>, mut faults: Faults) -> Arc<Self> {
        if let Some(seed) = std::env::var("WALVAULT_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            faults.seed = seed;
        }
        eprintln!(
            "FaultyStore: seed {} (replay with WALVAULT_FAULT_SEED={})",
            faults.seed, faults.seed
        );
        let seed = faults.seed | 1;
        Arc::new(Self {
            inner,
            shared: Arc::new(Shared {
                faults,
                enabled: AtomicBool::new(true),
                matched: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                at_gate: AtomicU64::new(0),
                rng: Mutex::new(seed),
                gate: watch::Sender::new(true),
            }),
        })
    }

    /// Turns the faults on or off (they start on).
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Ordering::SeqCst);
    }

    /// Requests that failed by injection.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Requests that took effect but reported an error.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Closes the gate: matching requests wait until it opens.
    pub fn close_gate(&self) {
        self.shared.gate.send_replace(false);
    }

    /// Opens the gate and lets the waiting requests go.
    pub fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }

    /// Requests waiting at the gate.
    pub fn at_gate(&self) -> u64 {
        self.shared.at_gate.load(Ordering::SeqCst)
    }

    async fn run<T>(
        &self,
        op: Op,
        path: &Path,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let fate = self.shared.admit(op, path).await;
        apply(fate, self.shared.faults.error, path, request).await
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, location: &Path, payload: PutPayload) -> Result<PutResult> {
        self.run(Op::Put, location, self.inner.put(location, payload))
            .await
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let request = self.inner.put_opts(location, payload, opts);
        self.run(Op::Put, location, request).await
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
        let request = self.inner.put_multipart_opts(location, opts);
        let inner = self.run(Op::Put, location, request).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            path: location.clone(),
            shared: self.shared.clone(),
        }))
    }

    async fn get(&self, location: &Path) -> Result<GetResult> {
        self.run(Op::Get, location, self.inner.get(location)).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        self.run(op, location, self.inner.get_opts(location, options))
            .await
    }

    async fn get_range(&self, location: &Path, range: Range<u64>) -> Result<Bytes> {
        self.run(Op::Get, location, self.inner.get_range(location, range))
            .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.run(Op::Get, location, self.inner.get_ranges(location, ranges))
            .await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.run(Op::Head, location, self.inner.head(location))
            .await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.run(Op::Delete, location, self.inner.delete(location))
            .await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<Result<ObjectMeta>> {
        let path = prefix.cloned().unwrap_or_default();
        match self.shared.fate(Op::List, &path) {
            Some(Fate::Fail | Fate::Drop) => Box::pin(tokio_stream::once(Err(injected(
                &path,
                "injected failure of a listing",
            )))),
            _ => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let path = prefix.cloned().unwrap_or_default();
        let request = self.inner.list_with_delimiter(prefix);
        self.run(Op::List, &path, request).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.run(Op::Copy, to, self.inner.copy(from, to)).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.run(Op::Copy, to, self.inner.copy_if_not_exists(from, to))
            .await
    }
}

/// Injects faults into a multipart upload's parts, completion and abort.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    path: Path,
    shared: Arc<Shared>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let shared = self.shared.clone();
        let path = self.path.clone();
        // The fate is drawn when the part is handed over, in part order, so a seed
        // replays the same faults.
        let fate = shared.fate(Op::Put, &path);
        let part = self.inner.put_part(data);
        Box::pin(async move {
            if fate.is_some() {
                shared.wait().await;
            }
            apply(fate.unwrap_or(Fate::Pass), shared.faults.error, &path, part).await
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let fate = self.shared.admit(Op::Put, &self.path).await;
        let error = self.shared.faults.error;
        apply(fate, error, &self.path, self.inner.complete()).await
    }

    async fn abort(&mut self) -> Result<()> {
        let fate = self.shared.admit(Op::Delete, &self.path).await;
        let error = self.shared.faults.error;
        apply(fate, error, &self.path, self.inner.abort()).await
    }
}

//! A backend over any `object_store::ObjectStore`: S3 and S3-compatible servers, GCS,
//! Azure, the local filesystem, memory.
//!
//! Layout under the store's prefix, per namespace (see `docs/FORMAT.md` §6.4):
//!
//! * `<ns>/segments/<segment key>`: one object per sealed segment, in the segment format;
//! * `<ns>/manifest/<n:020>`: manifest version `n`, the whole catalog after one edit,
//!   created with a conditional PUT so a version is written once, by one writer;
//! * `<ns>/manifest/LATEST`: a hint naming the newest version.
//!
//! Opening a namespace reads the manifest once (two GETs and a HEAD); after that
//! `durable_frame_no`, lookups and restore planning make no request, and nothing here
//! LISTs but [`ObjectStorage::namespaces`]. Timestamps come from the segment keys and
//! the manifest, never from object metadata. Large segments upload in parts (the
//! `upload` module says how they are still created only once) and restores read with
//! several requests in flight (the `read` module); `tests/object_requests.rs` pins the
//! request counts.
//!
//! **Fencing.** The first store through a handle takes a new writer epoch: it creates the
//! next manifest version with the epoch one above the newest one. Every later edit
//! creates the next version again; if that version exists, another writer got there
//! first, and if its epoch is newer this handle is fenced: its stores fail with
//! [`Error::Fenced`] from then on, and none of what it stored after losing is named by a
//! manifest, so none of it is ever visible.
//!
//! A segment object is written before the manifest version that names it, so a crash in
//! between leaves an orphan object that no manifest names (removed by GC), never a
//! manifest entry without its object.

mod concurrent;
mod errors;
mod maintain;
mod manifest;
mod read;
mod tuning;
mod upload;
mod url;

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use hashbrown::HashMap;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio_stream::Stream;
use uuid::Uuid;

use self::errors::{store_error, write_error};

use super::catalog::Catalog;
use super::listing::{self, CatalogStream, SharedCatalog};
use super::{
    check_append, compact, entry_for, find_in, spawn_store, FindSegmentReq, OnStoreCallback,
    SegmentInfo, Storage,
};
use crate::error::{Error, FormatError, Part, Result};
use crate::format::{
    commits_range, index_range, parse_index_with_crc, CommitTable, NamespaceName, PageIndex,
    SealedSegment, SegmentKey, HEADER_LEN,
};

/// How many times taking an epoch is retried when other writers keep creating versions.
const EPOCH_ATTEMPTS: usize = 16;

/// Segments in an object store. Clones share the same handle (and writer epoch).
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    inner: Arc<Inner>,
    tuning: tuning::Tuning,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// Identifies this handle's manifest versions.
    writer: Uuid,
    namespaces: Mutex<HashMap<NamespaceName, Arc<Namespace>>>,
    /// Headers of segments whose index was read, so reading their frames next needs no
    /// second GET of the header.
    headers: read::HeaderCache,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Namespace {
    catalog: SharedCatalog,
    /// Held while the manifest is read or edited, and from a store's edit through its
    /// `on_store`, so that callbacks run in durable order.
    state: async_lock::Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The manifest version `catalog` reflects; 0 before the first.
    version: u64,
    /// The writer epoch that created `version`, and the handle that did.
    version_epoch: u64,
    version_writer: Uuid,
    /// `version` is a maintenance edit (made under `version_epoch`, not by its writer).
    version_maintenance: bool,
    loaded: bool,
    /// This handle's writer epoch, once it has stored into the namespace.
    epoch: Option<u64>,
    /// The newer epoch that fenced this handle.
    fenced_by: Option<u64>,
}

impl ObjectStorage {
    /// Segments under `prefix` (may be empty) in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                prefix: Path::from(prefix),
                writer: Uuid::new_v4(),
                namespaces: Mutex::default(),
                headers: read::HeaderCache::default(),
                closed: AtomicBool::new(false),
            }),
            tuning: tuning::Tuning::default(),
        }
    }

    /// The store and prefix a URL names (see the crate README's storage locations):
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///path`. Credentials, region and endpoint come from the standard
    /// environment variables (`AWS_*` including `AWS_ENDPOINT` and `AWS_ALLOW_HTTP`,
    /// `GOOGLE_*`, `AZURE_*`).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_url_with_options(url, std::iter::empty::<(String, String)>())
    }

    /// [`from_url`](Self::from_url), with `object_store` configuration keys (such as
    /// `aws_endpoint` or `aws_allow_http`) that take precedence over the environment.
    /// An unknown key is an error naming it.
    pub fn from_url_with_options(
        url: &str,
        options: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Result<Self> {
        let options: Vec<(String, String)> = options
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let (store, prefix) = url::open(url, &options)?;
        Ok(Self::new(store, &prefix))
    }

    /// The namespaces under the prefix: one LIST of its top level, for `walvault ls`
    /// (nothing else here lists).
    pub async fn namespaces(&self) -> Result<Vec<NamespaceName>> {
        let prefix = &self.inner.prefix;
        let listed = self
            .inner
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|e| store_error(&format!("listing {prefix}"), e))?;
        let mut names: Vec<NamespaceName> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter_map(|n| NamespaceName::new(n).ok())
            .collect();
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    fn namespace(&self, name: &NamespaceName) -> Result<Arc<Namespace>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut map = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(map.entry(name.clone()).or_default().clone())
    }

    /// The namespace with its manifest read at least once.
    async fn loaded(&self, name: &NamespaceName) -> Result<Arc<Namespace>> {
        let ns = self.namespace(name)?;
        let mut state = ns.state.lock().await;
        if !state.loaded {
            self.reload(name, &ns, &mut state).await?;
        }
        drop(state);
        Ok(ns)
    }

    fn path(&self, ns: &NamespaceName, dir: &str, name: &str) -> Path {
        self.inner.prefix.child(ns.as_str()).child(dir).child(name)
    }

    fn segment_path(&self, ns: &NamespaceName, key: &SegmentKey) -> Path {
        self.path(ns, "segments", &key.to_string())
    }

    /// Where `key` of `name` is stored: under `name`, or for a fork's inherited
    /// segment, under the namespace it inherited it from.
    async fn located(&self, name: &NamespaceName, key: &SegmentKey) -> Result<Path> {
        let ns = self.loaded(name).await?;
        let owner = listing::read(&ns.catalog).owner(key).cloned();
        Ok(self.segment_path(owner.as_ref().unwrap_or(name), key))
    }

    fn version_path(&self, ns: &NamespaceName, number: u64) -> Path {
        self.path(ns, "manifest", &format!("{number:020}"))
    }

    fn hint_path(&self, ns: &NamespaceName) -> Path {
        self.path(ns, "manifest", "LATEST")
    }

    /// Reads the newest manifest version (from the hint, probing upward) into the
    /// namespace's catalog, unless it is the one the catalog already reflects.
    async fn reload(&self, name: &NamespaceName, ns: &Namespace, state: &mut State) -> Result<()> {
        self.reload_from(name, ns, state, state.version).await
    }

    /// [`reload`](Self::reload), knowing that version `exists` (at least the one held)
    /// does, so the probe starts above it.
    async fn reload_from(
        &self,
        name: &NamespaceName,
        ns: &Namespace,
        state: &mut State,
        exists: u64,
    ) -> Result<()> {
        if let Some(version) = self.newer_version(name, state.version, exists).await? {
            state.version = version.number;
            state.version_epoch = version.epoch;
            state.version_writer = version.writer;
            state.version_maintenance = version.maintenance;
            *listing::write(&ns.catalog) = version.catalog;
            if let Some(ours) = state.epoch {
                if version.epoch > ours {
                    state.fenced_by = Some(version.epoch);
                }
            }
        }
        state.loaded = true;
        Ok(())
    }

    /// The newest manifest version, if it is newer than `known` (the version this handle
    /// holds; 0 for none). Starts at the hint or `exists` (a version known to exist, at
    /// least `known`), whichever is newer, probes the numbers above it with HEADs until
    /// one is missing, and GETs only the newest: an up-to-date handle pays one small GET
    /// (the hint) and one HEAD, and a manifest it holds or skips over is never
    /// downloaded.
    async fn newer_version(
        &self,
        name: &NamespaceName,
        known: u64,
        exists: u64,
    ) -> Result<Option<manifest::Version>> {
        let hint = self
            .get(&self.hint_path(name))
            .await?
            .and_then(|b| manifest::parse_hint(&b))
            .unwrap_or(0);
        let mut number = hint.max(known).max(exists);
        while self
            .head_exists(&self.version_path(name, number + 1))
            .await?
        {
            number += 1;
        }
        if number == known {
            return Ok(None);
        }
        let path = self.version_path(name, number);
        let bytes = self.get(&path).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "manifest version {number} of {name} ({path}), which the manifest names"
            ))
        })?;
        manifest::decode(number, &bytes, path.as_ref()).map(Some)
    }

    /// Takes a writer epoch for this handle, unless it has one: creates the next
    /// manifest version, unchanged but for the epoch one above the newest. The attempt
    /// is made from the version this handle holds: if a newer one exists, the create
    /// fails (version numbers are created once and in order) and the handle catches up
    /// and tries again, so an up-to-date handle pays one PUT and no reads.
    async fn take_epoch(
        &self,
        name: &NamespaceName,
        ns: &Namespace,
        state: &mut State,
    ) -> Result<u64> {
        if let Some(epoch) = state.epoch {
            return Ok(epoch);
        }
        for _ in 0..EPOCH_ATTEMPTS {
            if !state.loaded {
                self.reload(name, ns, state).await?;
            }
            let own = state.version_writer == self.inner.writer && !state.version_maintenance;
            if state.version > 0 && own {
                // The newest version is this handle's own, from an attempt whose response
                // was lost: nobody has taken over since, so its epoch is still ours.
                state.epoch = Some(state.version_epoch);
                return Ok(state.version_epoch);
            }
            let number = state.version + 1;
            let mine = state.version_epoch + 1;
            let catalog = listing::read(&ns.catalog).clone();
            if self
                .create_version(name, number, mine, false, &catalog)
                .await?
            {
                state.version = number;
                state.version_epoch = mine;
                state.version_writer = self.inner.writer;
                state.version_maintenance = false;
                state.epoch = Some(mine);
                self.write_hint(name, number).await;
                return Ok(mine);
            }
            state.loaded = false; // someone else created it: catch up, then try again
        }
        Err(Error::Conflict {
            namespace: name.to_string(),
            detail: format!("other writers kept creating manifest versions; gave up after {EPOCH_ATTEMPTS} attempts"),
        })
    }

    /// Creates manifest version `number`; false if it exists already.
    async fn create_version(
        &self,
        name: &NamespaceName,
        number: u64,
        epoch: u64,
        maintenance: bool,
        catalog: &Catalog,
    ) -> Result<bool> {
        let body = manifest::encode(number, epoch, self.inner.writer, maintenance, catalog)?;
        let path = self.version_path(name, number);
        let options = PutOptions::from(PutMode::Create);
        match self
            .inner
            .store
            .put_opts(&path, PutPayload::from(body), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(write_error(&format!("writing {path}"), e)),
        }
    }

    /// Points the hint at `number`. Only a hint: a failure costs readers a probe.
    async fn write_hint(&self, name: &NamespaceName, number: u64) {
        let path = self.hint_path(name);
        let payload = PutPayload::from(manifest::hint(number));
        if let Err(e) = self.inner.store.put(&path, payload).await {
            tracing::warn!(%path, error = %e, "could not update the manifest hint");
        }
    }

    /// Stores one segment: the object, then the manifest version naming it. Returns the
    /// durable frame number after it.
    async fn store_one(
        &self,
        name: &NamespaceName,
        ns: &Namespace,
        state: &mut State,
        segment: SealedSegment,
    ) -> Result<u64> {
        if !state.loaded {
            self.reload(name, ns, state).await?;
        }
        let epoch = self.take_epoch(name, ns, state).await?;
        let entry = entry_for(&segment);
        let path = self.segment_path(name, &segment.key());
        let mut put = false;
        for _ in 0..EPOCH_ATTEMPTS {
            if let Some(newer) = state.fenced_by {
                return Err(fenced(name, epoch, newer));
            }
            let next = {
                let catalog = listing::read(&ns.catalog);
                if !check_append(&catalog, name, &entry)? {
                    return Ok(catalog.durable_frame_no());
                }
                let mut next = catalog.clone();
                next.push(entry);
                next
            };
            if !put {
                let guard = self.version_path(name, state.version + 1);
                self.put_segment(&path, &segment, &guard).await?;
                put = true;
            }
            let number = state.version + 1;
            if self
                .create_version(name, number, epoch, false, &next)
                .await?
            {
                return Ok(self.adopt(name, ns, state, number, next).await);
            }
            // Version `number` exists: ours (a retried request, or an earlier store that
            // failed after creating it), or a newer writer's.
            let what = self.version_path(name, number);
            let existing = match self.get(&what).await? {
                Some(bytes) => manifest::decode(number, &bytes, what.as_ref())?,
                None => continue, // read-after-write lag: try again
            };
            let ours = existing.writer == self.inner.writer || existing.maintenance;
            if existing.epoch != epoch || !ours {
                let newer = existing.epoch.max(epoch + 1);
                state.fenced_by = Some(newer);
                return Err(fenced(name, epoch, newer));
            }
            // Our epoch: our own version (a retried request, or an earlier store that
            // failed after creating it), or a maintenance edit under our epoch (see
            // `maintain`), which this store builds on.
            if existing.maintenance {
                tracing::debug!(namespace = %name, version = number, "building on a maintenance edit");
            }
            let done = existing.catalog.entries() == next.entries();
            let durable = self.adopt(name, ns, state, number, existing.catalog).await;
            if done {
                return Ok(durable);
            }
        }
        Err(Error::Conflict {
            namespace: name.to_string(),
            detail: format!(
                "could not record segment {} after {EPOCH_ATTEMPTS} attempts",
                entry.key
            ),
        })
    }

    /// Makes manifest version `number`, holding `catalog`, this handle's view; returns
    /// the durable frame number.
    async fn adopt(
        &self,
        name: &NamespaceName,
        ns: &Namespace,
        state: &mut State,
        number: u64,
        catalog: Catalog,
    ) -> u64 {
        state.version = number;
        if let Some(ours) = state.epoch {
            // Only this handle's own versions, or maintenance edits under its epoch,
            // are adopted by a writer: either way the epoch is its own.
            state.version_epoch = ours;
            state.version_writer = self.inner.writer;
            state.version_maintenance = false;
        }
        let durable = catalog.durable_frame_no();
        *listing::write(&ns.catalog) = catalog;
        self.write_hint(name, number).await;
        durable
    }

    /// Writes a segment object once: an object already under its key must hold the same
    /// bytes (a retried request, or the same segment stored again), else it is refused,
    /// so a segment a manifest names is never replaced. Segments above the multipart
    /// threshold upload in parts (see the `upload` module for how that keeps this
    /// promise); `guard` is the manifest version this handle would create next.
    async fn put_segment(&self, path: &Path, segment: &SealedSegment, guard: &Path) -> Result<()> {
        if !segment.is_in_memory() || segment.encoded_len() > self.tuning.multipart_threshold {
            return self.put_in_parts(path, segment, Some(guard)).await;
        }
        self.put_once(path, segment.encoded().clone()).await
    }

    /// Writes a segment object for a maintenance edit (compaction, retention, a fork's
    /// cut): one conditional PUT when it is in memory, whatever its size (a maintainer
    /// holds no epoch, so the multipart path's reasoning does not cover it, and two
    /// maintainers could otherwise complete different bytes under one key); in parts,
    /// never loaded, when it is held in a spill file (see the `upload` module).
    async fn put_maintained(&self, path: &Path, segment: &SealedSegment) -> Result<()> {
        if segment.is_in_memory() {
            return self.put_once(path, segment.encoded().clone()).await;
        }
        self.put_in_parts(path, segment, None).await
    }

    /// Writes an object with a conditional PUT; an object already there must hold the
    /// same bytes.
    async fn put_once(&self, path: &Path, bytes: Bytes) -> Result<()> {
        let options = PutOptions::from(PutMode::Create);
        let written = self
            .inner
            .store
            .put_opts(path, PutPayload::from(bytes.clone()), options)
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => self.check_same(path, &bytes).await,
            // A server may refuse a conditional PUT before reading a large body and close
            // the connection, which reaches us as a transport error, and a PUT that took
            // effect may have lost its response: either way, what is there now decides.
            Err(e) => match self.object_size(path).await {
                Ok(Some(_)) => self.check_same(path, &bytes).await,
                _ => Err(write_error(&format!("writing {path}"), e)),
            },
        }
    }

    async fn head_exists(&self, path: &Path) -> Result<bool> {
        match self.inner.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error(&format!("checking {path}"), e)),
        }
    }

    /// An object's bytes, or None when there is none.
    async fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        let read = async { self.inner.store.get(path).await?.bytes().await };
        match read.await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(&format!("reading {path}"), e)),
        }
    }

    async fn get_range(&self, path: &Path, key: &SegmentKey, range: Range<u64>) -> Result<Bytes> {
        self.inner
            .store
            .get_range(path, range)
            .await
            .map_err(|e| read_error(path, key, e))
    }

    /// The verified header of a stored segment and the range of its page index (read
    /// once per segment while it stays in the handle's header cache).
    async fn segment_header(
        &self,
        name: &NamespaceName,
        key: &SegmentKey,
    ) -> Result<(crate::format::Header, Range<u64>)> {
        if let Some(known) = self.inner.headers.get(name, key) {
            return Ok(known);
        }
        let path = self.located(name, key).await?;
        let head = self.get_range(&path, key, 0..HEADER_LEN as u64).await?;
        let (header, range) =
            index_range(&head).map_err(|e| Error::corrupt(describe(name, key), e))?;
        check_key(name, key, header.key())?;
        self.inner
            .headers
            .insert(name, key, (header, range.clone()));
        Ok((header, range))
    }
}

impl Storage for ObjectStorage {
    type Config = ();

    fn store(
        &self,
        namespace: &NamespaceName,
        segment: SealedSegment,
        _config_override: Option<()>,
        on_store: OnStoreCallback,
    ) -> impl Future<Output = Result<()>> + Send {
        let this = self.clone();
        let name = namespace.clone();
        spawn_store(async move {
            let ns = this.namespace(&name)?;
            // Held through the callback, so callbacks run in durable order.
            let mut state = ns.state.lock().await;
            this.namespace(&name)?; // shutdown may have begun meanwhile
            let durable = this.store_one(&name, &ns, &mut state, segment).await?;
            on_store(durable).await;
            Ok(())
        })
    }

    async fn durable_frame_no(
        &self,
        namespace: &NamespaceName,
        _config: Option<()>,
    ) -> Result<u64> {
        let ns = self.loaded(namespace).await?;
        let durable = listing::read(&ns.catalog).durable_frame_no();
        Ok(durable)
    }

    async fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        _config: Option<()>,
    ) -> Result<SegmentKey> {
        let ns = self.loaded(namespace).await?;
        find_in(&ns.catalog, namespace, req)
    }

    async fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<PageIndex> {
        let (header, range) = self.segment_header(namespace, key).await?;
        let path = self.located(namespace, key).await?;
        let bytes = self.get_range(&path, key, range).await?;
        parse_index_with_crc(&header, bytes)
            .map_err(|e| Error::corrupt(describe(namespace, key), e))
    }

    async fn fetch_commit_table(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<CommitTable> {
        let (header, _) = self.segment_header(namespace, key).await?;
        let corrupt = |e| Error::corrupt(describe(namespace, key), e);
        let range = commits_range(&header).map_err(corrupt)?;
        let path = self.located(namespace, key).await?;
        let bytes = self.get_range(&path, key, range).await?;
        CommitTable::parse(&header, &bytes).map_err(corrupt)
    }

    async fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<SealedSegment> {
        let path = self.located(namespace, key).await?;
        let bytes = match self.catalog_size(namespace, key) {
            Some(size) if size > self.tuning.read_part_size => {
                self.get_in_parts(&path, key, size).await?
            }
            _ => self
                .get(&path)
                .await?
                .ok_or_else(|| Error::NotFound(format!("segment {key} of {namespace} ({path})")))?,
        };
        let segment = SealedSegment::decode(bytes)
            .map_err(|e| Error::corrupt(describe(namespace, key), e))?;
        check_key(namespace, key, segment.key())?;
        Ok(segment)
    }

    async fn fetch_frames(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
        _config: Option<()>,
    ) -> Result<Vec<(u32, Bytes)>> {
        let frames = self.read_frames(namespace, &[(*key, positions)]).await?;
        Ok(frames.into_iter().next().unwrap_or_default())
    }

    /// One ranged GET of the run's bytes (the header from the handle's cache, or one
    /// more ranged GET).
    async fn fetch_frame_run(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        run: Range<u32>,
        _config: Option<()>,
    ) -> Result<Vec<crate::format::Frame>> {
        let (header, _) = self.segment_header(namespace, key).await?;
        let corrupt = |e| Error::corrupt(describe(namespace, key), e);
        let range = super::frames::run_range(&header, &run).map_err(corrupt)?;
        let path = self.located(namespace, key).await?;
        let bytes = self.get_range(&path, key, range).await?;
        super::frames::decode_run(&header, run, bytes).map_err(corrupt)
    }

    /// Reads up to [`with_read_concurrency`](ObjectStorage::with_read_concurrency)
    /// indexes at once.
    async fn fetch_segment_indexes(
        &self,
        namespace: &NamespaceName,
        keys: &[SegmentKey],
        _config: Option<()>,
    ) -> Vec<Result<PageIndex>> {
        self.indexes(namespace, keys).await
    }

    /// Reads up to [`with_read_concurrency`](ObjectStorage::with_read_concurrency)
    /// segments' frames at once.
    async fn fetch_frames_batch(
        &self,
        namespace: &NamespaceName,
        requests: Vec<(SegmentKey, Vec<u32>)>,
        _config: Option<()>,
    ) -> Result<Vec<Vec<(u32, Bytes)>>> {
        self.frames_batch(namespace, &requests).await
    }

    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        _config: Option<()>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        let open = async move {
            let ns = self.loaded(namespace).await?;
            Ok(Some(ns.catalog.clone()))
        };
        CatalogStream::new(Box::pin(open), until)
    }

    async fn replace_segments(
        &self,
        namespace: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        _config: Option<()>,
    ) -> Result<()> {
        self.replace(namespace, inputs, output).await
    }

    async fn collect_garbage(
        &self,
        namespace: &NamespaceName,
        options: super::GcOptions,
        _config: Option<()>,
    ) -> Result<super::GcReport> {
        let forks = self.fork_references(namespace).await?;
        self.collect(namespace, &forks, options).await
    }

    async fn fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: super::RestoreOptions,
        _config: Option<()>,
    ) -> Result<super::ForkReport> {
        self.create_fork(source, target, at).await
    }

    async fn refresh(&self, namespace: &NamespaceName, _config: Option<()>) -> Result<()> {
        let ns = self.namespace(namespace)?;
        let mut state = ns.state.lock().await;
        if state.loaded && state.version > 0 {
            // Nothing new unless the next version exists: one HEAD when idle.
            let next = self.version_path(namespace, state.version + 1);
            if self.head_exists(&next).await? {
                let exists = state.version + 1;
                self.reload_from(namespace, &ns, &mut state, exists).await?;
            }
            return Ok(());
        }
        self.reload(namespace, &ns, &mut state).await
    }

    async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Wait for stores in flight: each holds its namespace's state lock to the end.
        let namespaces: Vec<Arc<Namespace>> = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for ns in namespaces {
            drop(ns.state.lock().await);
        }
    }
}

fn fenced(name: &NamespaceName, epoch: u64, newer: u64) -> Error {
    Error::Fenced {
        namespace: name.to_string(),
        epoch,
        newer,
    }
}

fn describe(name: &NamespaceName, key: &SegmentKey) -> String {
    format!("segment {key} of {name}")
}

fn check_key(name: &NamespaceName, expected: &SegmentKey, found: SegmentKey) -> Result<()> {
    if found == *expected {
        return Ok(());
    }
    let reason = FormatError::Invalid {
        part: Part::Header,
        offset: 0,
        reason: "the object holds a different segment than its name says",
    };
    Err(Error::corrupt(describe(name, expected), reason))
}

fn read_error(path: &Path, key: &SegmentKey, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::NotFound(format!("segment {key} ({path})")),
        e => store_error(&format!("reading {path}"), e),
    }
}

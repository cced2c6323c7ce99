//! The local filesystem backend, walvault's embedded default.
//!
//! Layout: `<root>/<namespace>/MANIFEST` (the catalog journal) and one file per segment,
//! `<root>/<namespace>/<segment key>.seg`. A store writes the segment to a temp file,
//! fsyncs it, renames it into place, fsyncs the directory, then appends an edit to the
//! manifest and fsyncs that; only then is the segment in the catalog and `on_store`
//! called.
//!
//! Crash between the segment file and its manifest edit: the segment was never
//! acknowledged, and opening replays the manifest (not the directory), so it is cleanly
//! ignored. The file stays on disk as an orphan until garbage collection, and a writer
//! that re-submits the same segment overwrites it atomically. Temp files, orphans and
//! foreign files are never read, never listed, and only reported with a warning.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hashbrown::HashMap;
use tokio_stream::Stream;

use super::catalog::{Catalog, CatalogEntry};
use super::fsutil::{create_dir_durable, fsync_dir, write_atomic, TEMP_PREFIX};
use super::listing::{self, CatalogStream, SharedCatalog};
use super::manifest::{Edit, ManifestFile, MANIFEST_FILE};
use super::{
    check_append, entry_for, find_in, spawn_store, FindSegmentReq, OnStoreCallback, SegmentInfo,
    Storage,
};
use crate::error::{Error, InvalidInput, Result};
use crate::format::{
    index_range, parse_index_with_crc, NamespaceName, PageIndex, SealedSegment, SegmentKey,
    HEADER_LEN,
};

const SEGMENT_EXT: &str = ".seg";

/// Where a [`LocalStorage`] keeps its files. Pass one as `config_override` to direct a
/// single call to another root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalConfig {
    /// The directory holding one subdirectory per namespace.
    pub root: PathBuf,
}

/// Stores segments as files under a root directory, with real fsyncs.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: LocalConfig,
    namespaces: Mutex<HashMap<(PathBuf, NamespaceName), Arc<Namespace>>>,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Namespace {
    name: NamespaceName,
    dir: PathBuf,
    catalog: SharedCatalog,
    /// `None` until the first store creates the manifest.
    manifest: Mutex<Option<ManifestFile>>,
    /// Held from the catalog check through `on_store`: stores of one namespace run one at
    /// a time, so the manifest is appended in frame order and callbacks fire in order.
    store_lock: async_lock::Mutex<()>,
    /// Set when a manifest write failed: its on-disk state is unknown until reopened.
    poisoned: OnceLock<String>,
    /// Set once this process has made the namespace directory's entry durable.
    dir_durable: AtomicBool,
}

impl LocalStorage {
    /// Opens (lazily) a store rooted at `root`. Nothing is created until the first store.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::with_config(LocalConfig {
            root: root.as_ref().to_path_buf(),
        })
    }

    /// Opens a store with the given configuration.
    pub fn with_config(config: LocalConfig) -> Result<Self> {
        check_root(&config.root)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                namespaces: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &LocalConfig {
        &self.inner.config
    }

    /// Lists the files in a namespace's directory that are not catalogued segments or the
    /// manifest (temp files, orphans from a crash, anything foreign), warning about each.
    /// They are never read or listed by the store.
    pub async fn foreign_files(&self, namespace: &NamespaceName) -> Result<Vec<PathBuf>> {
        let ns = self.namespace(&self.inner.config, namespace).await?;
        blocking(move || scan_foreign(&ns, Duration::ZERO)).await
    }

    async fn namespace(
        &self,
        config: &LocalConfig,
        name: &NamespaceName,
    ) -> Result<Arc<Namespace>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let cache_key = (config.root.clone(), name.clone());
        if let Some(ns) = self.cached(&cache_key) {
            return Ok(ns);
        }
        check_root(&config.root)?;
        let dir = config.root.join(name.as_str());
        let name2 = name.clone();
        let opened = Arc::new(blocking(move || open_namespace(name2, dir)).await?);
        let ns = {
            let mut map = self
                .inner
                .namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.entry(cache_key)
                .or_insert_with(|| opened.clone())
                .clone()
        };
        if Arc::ptr_eq(&ns, &opened) {
            report_foreign_in_background(ns.clone());
        }
        Ok(ns)
    }

    fn cached(&self, key: &(PathBuf, NamespaceName)) -> Option<Arc<Namespace>> {
        let map = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    fn config_for(&self, config_override: Option<LocalConfig>) -> LocalConfig {
        config_override.unwrap_or_else(|| self.inner.config.clone())
    }

    async fn store_segment(
        &self,
        config: LocalConfig,
        name: NamespaceName,
        segment: SealedSegment,
        on_store: OnStoreCallback,
    ) -> Result<()> {
        let ns = self.namespace(&config, &name).await?;
        let _ordered = ns.store_lock.lock().await;
        if let Some(cause) = ns.poisoned.get() {
            return Err(Error::Poisoned {
                namespace: name.to_string(),
                cause: cause.clone(),
            });
        }
        let entry = entry_for(&segment);
        let is_new = check_append(&listing::read(&ns.catalog), &name, &entry)?;
        let durable = if is_new {
            let ns = ns.clone();
            blocking(move || ns.persist(&segment, entry)).await?
        } else {
            listing::read(&ns.catalog).durable_frame_no()
        };
        on_store(durable).await;
        Ok(())
    }

    async fn entry(
        &self,
        config: Option<LocalConfig>,
        name: &NamespaceName,
        key: &SegmentKey,
    ) -> Result<(Arc<Namespace>, PathBuf)> {
        let ns = self.namespace(&self.config_for(config), name).await?;
        if listing::read(&ns.catalog).get(key).is_none() {
            return Err(Error::NotFound(format!(
                "segment {key} in namespace {name}"
            )));
        }
        let path = ns.segment_path(key);
        Ok((ns, path))
    }
}

impl Namespace {
    fn segment_path(&self, key: &SegmentKey) -> PathBuf {
        self.dir.join(format!("{key}{SEGMENT_EXT}"))
    }

    /// Makes `segment` durable and catalogues it; returns the new durable frame number.
    /// Runs on a blocking thread with the store lock held.
    fn persist(&self, segment: &SealedSegment, entry: CatalogEntry) -> Result<u64> {
        let file_name = format!("{}{SEGMENT_EXT}", entry.key);
        let context = || format!("writing segment {} of {}", entry.key, self.name);
        self.make_dir_durable()
            .map_err(|e| Error::io(context(), e))?;
        write_atomic(&self.dir, &file_name, &[segment.encoded()])
            .map_err(|e| Error::io(context(), e))?;

        let mut manifest = self.manifest.lock().unwrap_or_else(PoisonError::into_inner);
        let durable = self
            .record(&mut manifest, entry)
            .inspect_err(|e| self.poison(e))?;
        // The edit is durable, so the store succeeded whatever happens next. A failed
        // rewrite may leave the open handle on a replaced file, so later stores refuse.
        let catalog = listing::read(&self.catalog);
        if let Some(file) = manifest.as_mut() {
            if let Err(e) = file.maybe_compact(&catalog) {
                self.poison(&Error::io(
                    format!("compacting the manifest of {}", self.name),
                    e,
                ));
            }
        }
        Ok(durable)
    }

    fn poison(&self, e: &Error) {
        let _ = self.poisoned.set(e.to_string());
        tracing::error!(namespace = %self.name, error = %e, "manifest write failed; namespace refuses stores until reopened");
    }

    /// Creates the namespace directory and fsyncs it and the root, once per process, so
    /// that a directory a crashed run created but never synced is made durable too.
    fn make_dir_durable(&self) -> io::Result<()> {
        if self.dir_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        create_dir_durable(&self.dir)?;
        fsync_dir(&self.dir)?;
        if let Some(root) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(root)?;
        }
        self.dir_durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Appends the edit, then updates the catalog. Returns the new durable frame number.
    fn record(&self, manifest: &mut Option<ManifestFile>, entry: CatalogEntry) -> Result<u64> {
        let io_err = |e| Error::io(format!("writing the manifest of {}", self.name), e);
        let file = match manifest.take() {
            Some(file) => file,
            None => {
                ManifestFile::create(&self.dir, &listing::read(&self.catalog)).map_err(io_err)?
            }
        };
        manifest
            .insert(file)
            .append(&Edit::Add(entry))
            .map_err(io_err)?;
        let mut catalog = listing::write(&self.catalog);
        catalog.push(entry);
        Ok(catalog.durable_frame_no())
    }

    fn read_segment(&self, key: &SegmentKey, path: &Path) -> Result<SealedSegment> {
        let bytes = fs::read(path).map_err(|e| self.read_error(key, path, e))?;
        let segment = SealedSegment::decode(Bytes::from(bytes))
            .map_err(|e| Error::corrupt(self.describe(key, path), e))?;
        self.check_key(key, segment.key(), path)?;
        Ok(segment)
    }

    fn read_index(&self, key: &SegmentKey, path: &Path) -> Result<PageIndex> {
        let mut file = File::open(path).map_err(|e| self.read_error(key, path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| self.read_error(key, path, e))?
            .len();
        let corrupt = |e| Error::corrupt(self.describe(key, path), e);
        let short = |expected| {
            corrupt(crate::FormatError::Length {
                expected,
                actual: file_len,
            })
        };
        if file_len < HEADER_LEN as u64 {
            return Err(short(HEADER_LEN as u64));
        }
        let mut head = [0u8; HEADER_LEN];
        file.read_exact(&mut head)
            .map_err(|e| self.read_error(key, path, e))?;
        let (header, range) = index_range(&head).map_err(corrupt)?;
        if file_len < range.end {
            return Err(short(range.end));
        }
        let found = SegmentKey {
            start_frame_no: header.start_frame_no,
            end_frame_no: header.end_frame_no,
            timestamp: header.first_commit_ts,
        };
        self.check_key(key, found, path)?;
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| self.read_error(key, path, e))?;
        file.read_exact(&mut bytes)
            .map_err(|e| self.read_error(key, path, e))?;
        parse_index_with_crc(&header, Bytes::from(bytes)).map_err(corrupt)
    }

    fn check_key(&self, expected: &SegmentKey, found: SegmentKey, path: &Path) -> Result<()> {
        if found == *expected {
            return Ok(());
        }
        Err(Error::corrupt(
            self.describe(expected, path),
            crate::FormatError::Invalid {
                part: crate::Part::Header,
                offset: 0,
                reason: "file holds a different segment than its name says",
            },
        ))
    }

    fn read_error(&self, key: &SegmentKey, path: &Path, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!(
                "segment {key} of {} is in the manifest but its file {} is missing",
                self.name,
                path.display()
            )),
            _ => Error::io(format!("reading {}", path.display()), e),
        }
    }

    fn describe(&self, key: &SegmentKey, path: &Path) -> String {
        format!("segment {key} of {} ({})", self.name, path.display())
    }
}

fn check_root(root: &Path) -> Result<()> {
    if root.as_os_str().is_empty() {
        return Err(InvalidInput::Config("the store root path is empty".into()).into());
    }
    match fs::metadata(root) {
        Ok(m) if !m.is_dir() => Err(InvalidInput::Config(format!(
            "the store root {} exists and is not a directory",
            root.display()
        ))
        .into()),
        _ => Ok(()),
    }
}

fn open_namespace(name: NamespaceName, dir: PathBuf) -> Result<Namespace> {
    let (manifest, catalog) = match ManifestFile::open(&dir)? {
        Some((manifest, catalog)) => (Some(manifest), catalog),
        None => (None, Catalog::default()),
    };
    Ok(Namespace {
        name,
        dir,
        catalog: Arc::new(std::sync::RwLock::new(catalog)),
        manifest: Mutex::new(manifest),
        store_lock: async_lock::Mutex::new(()),
        poisoned: OnceLock::new(),
        dir_durable: AtomicBool::new(false),
    })
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Error::io("running a filesystem task", io::Error::other(e))))
}

/// Files younger than this may belong to a store in progress and are not reported.
const IN_PROGRESS_GRACE: Duration = Duration::from_secs(60);

fn report_foreign_in_background(ns: Arc<Namespace>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn_blocking(move || scan_foreign(&ns, IN_PROGRESS_GRACE));
    }
}

/// Lists and warns about files in the namespace directory that the store does not own.
fn scan_foreign(ns: &Namespace, grace: Duration) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(&ns.dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", ns.dir.display()), e)),
    };
    let now = SystemTime::now();
    let mut foreign = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        let Some(what) = classify(ns, &name) else {
            continue;
        };
        let age = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok());
        if age.is_some_and(|age| age < grace) {
            continue;
        }
        tracing::warn!(namespace = %ns.name, file = %entry.path().display(), "ignoring {what}");
        foreign.push(entry.path());
    }
    foreign.sort();
    Ok(foreign)
}

/// What an unowned file is, or `None` for the manifest and catalogued segments.
fn classify(ns: &Namespace, name: &str) -> Option<&'static str> {
    if name == MANIFEST_FILE {
        return None;
    }
    if name.starts_with(TEMP_PREFIX) {
        return Some("a temp file left by an interrupted write");
    }
    let key = name
        .strip_suffix(SEGMENT_EXT)
        .and_then(|k| k.parse::<SegmentKey>().ok());
    match key {
        Some(key) if listing::read(&ns.catalog).get(&key).is_some() => None,
        Some(_) => Some("a segment file the manifest does not list (never acknowledged)"),
        None => Some("a file that is not part of the store"),
    }
}

impl Storage for LocalStorage {
    type Config = LocalConfig;

    fn store(
        &self,
        namespace: &NamespaceName,
        segment: SealedSegment,
        config_override: Option<LocalConfig>,
        on_store: OnStoreCallback,
    ) -> impl Future<Output = Result<()>> + Send {
        let this = self.clone();
        let config = self.config_for(config_override);
        let name = namespace.clone();
        spawn_store(async move { this.store_segment(config, name, segment, on_store).await })
    }

    async fn durable_frame_no(
        &self,
        namespace: &NamespaceName,
        config: Option<LocalConfig>,
    ) -> Result<u64> {
        let ns = self.namespace(&self.config_for(config), namespace).await?;
        let durable = listing::read(&ns.catalog).durable_frame_no();
        Ok(durable)
    }

    async fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        config: Option<LocalConfig>,
    ) -> Result<SegmentKey> {
        let ns = self.namespace(&self.config_for(config), namespace).await?;
        find_in(&ns.catalog, namespace, req)
    }

    async fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<LocalConfig>,
    ) -> Result<PageIndex> {
        let (ns, path) = self.entry(config, namespace, key).await?;
        let key = *key;
        blocking(move || ns.read_index(&key, &path)).await
    }

    async fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<LocalConfig>,
    ) -> Result<SealedSegment> {
        let (ns, path) = self.entry(config, namespace, key).await?;
        let key = *key;
        blocking(move || ns.read_segment(&key, &path)).await
    }

    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        config: Option<LocalConfig>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        let config = self.config_for(config);
        let open = async move {
            let ns = self.namespace(&config, namespace).await?;
            Ok(Some(ns.catalog.clone()))
        };
        CatalogStream::new(Box::pin(open), until)
    }

    async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Wait for stores in flight: each holds its namespace's store lock to the end.
        let namespaces: Vec<_> = {
            let map = self
                .inner
                .namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.values().cloned().collect()
        };
        for ns in namespaces {
            drop(ns.store_lock.lock().await);
        }
    }
}

/// Writes a namespace manifest listing `entries` directly, without segment files. Only
/// for benchmarks and tools that need a large catalog quickly.
#[doc(hidden)]
pub fn write_manifest_for_bench(
    root: &Path,
    namespace: &NamespaceName,
    entries: Vec<SegmentInfo>,
) -> Result<()> {
    let dir = root.join(namespace.as_str());
    create_dir_durable(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let entries = entries
        .into_iter()
        .map(|i| CatalogEntry {
            key: i.key,
            size: i.size,
            last_commit_ts: i.last_commit_ts,
        })
        .collect();
    super::manifest::write_snapshot(&dir, entries)
}

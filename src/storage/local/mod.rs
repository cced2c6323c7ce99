//! The local filesystem backend, walvault's embedded default.
//!
//! Layout: `<root>/<namespace>/MANIFEST` (the catalog journal), `<root>/<namespace>/LOCK`
//! (held by the namespace's one writer) and one file per segment,
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
//!
//! One writer per namespace: the first store through a handle takes an exclusive lock on
//! `LOCK` (another handle or process gets [`Error::Conflict`]) and replays the manifest
//! again before writing. Readers never modify the manifest.

mod gc;
mod namespace;
mod scan;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hashbrown::HashMap;
use tokio_stream::Stream;

use self::namespace::Namespace;
use super::catalog::CatalogEntry;
use super::fork::{self, ForkReport};
use super::fsutil::create_dir_durable;
use super::listing::{self, CatalogStream};
use super::{
    find_in, spawn_store, FindSegmentReq, GcOptions, GcReport, OnStoreCallback, RestoreOptions,
    SegmentInfo, Storage,
};
use crate::error::{Error, InvalidInput, Result};
use crate::format::{CommitTable, NamespaceName, PageIndex, SealedSegment, SegmentKey};

const SEGMENT_EXT: &str = ".seg";
const LOCK_FILE: &str = "LOCK";

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

/// A namespace is opened once per handle; concurrent callers wait for that one open.
type NamespaceCell = Arc<async_lock::OnceCell<Arc<Namespace>>>;

#[derive(Debug)]
struct Inner {
    config: LocalConfig,
    namespaces: Mutex<HashMap<(PathBuf, NamespaceName), NamespaceCell>>,
    closed: AtomicBool,
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
    /// store's own files (temp files, orphans from a crash, anything foreign), warning
    /// about each. They are never read or listed by the store.
    pub async fn foreign_files(&self, namespace: &NamespaceName) -> Result<Vec<PathBuf>> {
        let ns = self.namespace(&self.inner.config, namespace).await?;
        blocking(move || scan::scan(&ns, Duration::ZERO)).await
    }

    /// The namespaces in the store: the directories under the root holding a manifest,
    /// sorted by name. An absent root holds none.
    pub fn namespaces(&self) -> Result<Vec<NamespaceName>> {
        let root = &self.inner.config.root;
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", root.display()), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", root.display()), e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().and_then(|n| NamespaceName::new(n).ok()) else {
                continue;
            };
            if entry.path().join(super::manifest::MANIFEST_FILE).is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn check_open(&self) -> Result<()> {
        match self.inner.closed.load(Ordering::Acquire) {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    async fn namespace(
        &self,
        config: &LocalConfig,
        name: &NamespaceName,
    ) -> Result<Arc<Namespace>> {
        self.check_open()?;
        let cell = {
            let mut map = self
                .inner
                .namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.entry((config.root.clone(), name.clone()))
                .or_default()
                .clone()
        };
        let ns = cell
            .get_or_try_init(|| async {
                check_root(&config.root)?;
                let dir = config.root.join(name.as_str());
                let name = name.clone();
                let ns = Arc::new(blocking(move || Namespace::open(name, dir)).await?);
                scan::report_in_background(ns.clone());
                Ok::<_, Error>(ns)
            })
            .await?;
        Ok(ns.clone())
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
        // Shutdown may have begun while this store waited for the lock.
        self.check_open()?;
        ns.check_usable()?;
        let writer = ns.clone();
        let durable = blocking(move || writer.store(&segment)).await?;
        on_store(durable).await;
        Ok(())
    }

    async fn catalogued(
        &self,
        config: Option<LocalConfig>,
        name: &NamespaceName,
        key: &SegmentKey,
    ) -> Result<Arc<Namespace>> {
        let ns = self.reader(&self.config_for(config), name, key).await?;
        ns.check_catalogued(key)?;
        Ok(ns)
    }

    /// The namespace whose directory holds `key` of `name`: its own, or for a fork's
    /// inherited segment, the one it inherited it from.
    async fn reader(
        &self,
        config: &LocalConfig,
        name: &NamespaceName,
        key: &SegmentKey,
    ) -> Result<Arc<Namespace>> {
        let ns = self.namespace(config, name).await?;
        let owner = listing::read(&ns.catalog).owner(key).cloned();
        match owner {
            Some(owner) => self.namespace(config, &owner).await,
            None => Ok(ns),
        }
    }

    /// The keys of `name` that forks marked in it still name.
    async fn fork_references(
        &self,
        config: &LocalConfig,
        name: &NamespaceName,
    ) -> Result<hashbrown::HashSet<SegmentKey>> {
        let dir = config.root.join(name.as_str());
        let forks = blocking(move || gc::forks(&dir)).await?;
        let mut keys = hashbrown::HashSet::new();
        for fork in forks {
            let ns = self.namespace(config, &fork).await?;
            let reader = ns.clone();
            blocking(move || reader.refresh()).await?;
            keys.extend(listing::read(&ns.catalog).inherited_from(name));
            // Inherited segments the fork's own edits took out: its readers in flight may
            // still read them here until its collection deletes the record.
            let dir = config.root.join(fork.as_str());
            keys.extend(blocking(move || gc::retired_keys(&dir)).await?);
        }
        Ok(keys)
    }

    /// [`reader`](Self::reader) for each key.
    async fn readers(
        &self,
        config: &LocalConfig,
        name: &NamespaceName,
        keys: impl Iterator<Item = SegmentKey>,
    ) -> Result<Vec<(Arc<Namespace>, SegmentKey)>> {
        let mut out = Vec::new();
        for key in keys {
            out.push((self.reader(config, name, &key).await?, key));
        }
        Ok(out)
    }
}

fn check_root(root: &Path) -> Result<()> {
    if root.as_os_str().is_empty() {
        return Err(InvalidInput::Config("the store root path is empty".into()).into());
    }
    match std::fs::metadata(root) {
        Ok(m) if !m.is_dir() => Err(InvalidInput::Config(format!(
            "the store root {} exists and is not a directory",
            root.display()
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Error::io("running a filesystem task", io::Error::other(e))))
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

    fn spill_dir(&self, namespace: &NamespaceName, config: Option<LocalConfig>) -> PathBuf {
        self.config_for(config).root.join(namespace.as_str())
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

    async fn refresh(&self, namespace: &NamespaceName, config: Option<LocalConfig>) -> Result<()> {
        let ns = self.namespace(&self.config_for(config), namespace).await?;
        blocking(move || ns.refresh()).await
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
        let ns = self.catalogued(config, namespace, key).await?;
        let key = *key;
        blocking(move || ns.read_index(&key)).await
    }

    async fn fetch_commit_table(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<LocalConfig>,
    ) -> Result<CommitTable> {
        let ns = self.catalogued(config, namespace, key).await?;
        let key = *key;
        blocking(move || ns.read_commits(&key)).await
    }

    async fn fetch_frames(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
        config: Option<LocalConfig>,
    ) -> Result<Vec<(u32, bytes::Bytes)>> {
        let ns = self.catalogued(config, namespace, key).await?;
        let (key, positions) = (*key, positions.to_vec());
        blocking(move || ns.read_frames(&key, &positions)).await
    }

    async fn fetch_frame_run(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        run: std::ops::Range<u32>,
        config: Option<LocalConfig>,
    ) -> Result<Vec<crate::format::Frame>> {
        let ns = self.catalogued(config, namespace, key).await?;
        let key = *key;
        blocking(move || ns.read_run(&key, run)).await
    }

    /// One blocking task reads the whole batch: a thread hand-off costs more than
    /// reading one small index from the page cache.
    async fn fetch_segment_indexes(
        &self,
        namespace: &NamespaceName,
        keys: &[SegmentKey],
        config: Option<LocalConfig>,
    ) -> Vec<Result<PageIndex>> {
        let config = self.config_for(config);
        let count = keys.len();
        let readers = match self.readers(&config, namespace, keys.iter().copied()).await {
            Ok(readers) => readers,
            Err(e) => return vec![Err(e); count],
        };
        let read = move || {
            let read_one = |(ns, key): &(Arc<Namespace>, SegmentKey)| {
                ns.check_catalogued(key).and_then(|()| ns.read_index(key))
            };
            Ok(readers.iter().map(read_one).collect())
        };
        blocking(read).await.unwrap_or_else(|e| vec![Err(e); count])
    }

    /// One blocking task reads the whole batch, as for indexes.
    async fn fetch_frames_batch(
        &self,
        namespace: &NamespaceName,
        requests: Vec<(SegmentKey, Vec<u32>)>,
        config: Option<LocalConfig>,
    ) -> Result<Vec<Vec<(u32, bytes::Bytes)>>> {
        let config = self.config_for(config);
        let readers = self
            .readers(&config, namespace, requests.iter().map(|(k, _)| *k))
            .await?;
        blocking(move || {
            readers
                .iter()
                .zip(&requests)
                .map(|((ns, key), (_, positions))| {
                    ns.check_catalogued(key)?;
                    ns.read_frames(key, positions)
                })
                .collect()
        })
        .await
    }

    async fn replace_segments(
        &self,
        namespace: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        config: Option<LocalConfig>,
    ) -> Result<()> {
        let ns = self.namespace(&self.config_for(config), namespace).await?;
        let _ordered = ns.store_lock.lock().await;
        self.check_open()?;
        ns.check_usable()?;
        let (inputs, writer) = (inputs.to_vec(), ns.clone());
        blocking(move || writer.replace(&inputs, &output)).await
    }

    async fn collect_garbage(
        &self,
        namespace: &NamespaceName,
        options: GcOptions,
        config: Option<LocalConfig>,
    ) -> Result<GcReport> {
        let config = self.config_for(config);
        let ns = self.namespace(&config, namespace).await?;
        // A fork being created now names only catalogued segments, which are never
        // deleted; the grace period covers one whose segment is retired meanwhile.
        let forks = self.fork_references(&config, namespace).await?;
        // Holding the store lock keeps this handle's own stores out of the listing; a
        // writer elsewhere is protected by the grace period.
        let _ordered = ns.store_lock.lock().await;
        let collector = ns.clone();
        blocking(move || gc::collect(&collector, &forks, options)).await
    }

    async fn fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: RestoreOptions,
        config: Option<LocalConfig>,
    ) -> Result<ForkReport> {
        let config = self.config_for(config);
        let plan = fork::plan(self, source, target, at, &Some(config.clone())).await?;
        let src = self.namespace(&config, source).await?;
        let catalog = fork::catalog(source, &listing::read(&src.catalog), &plan)?;
        let dst = self.namespace(&config, target).await?;
        let _ordered = dst.store_lock.lock().await;
        self.check_open()?;
        let (bases, ..) = catalog.lineage();
        for base in bases {
            let dir = config.root.join(base.as_str());
            let fork = target.clone();
            blocking(move || gc::mark_fork(&dir, &fork)).await?;
        }
        let reader = src.clone();
        blocking(move || reader.refresh()).await?;
        fork::check_still_named(source, &listing::read(&src.catalog), &plan)?;
        let report = plan.report();
        let writer = dst.clone();
        blocking(move || writer.create_fork(catalog, plan.cut.as_ref())).await?;
        Ok(report)
    }

    async fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config: Option<LocalConfig>,
    ) -> Result<SealedSegment> {
        let ns = self.catalogued(config, namespace, key).await?;
        let key = *key;
        blocking(move || ns.read_segment(&key)).await
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
        // Wait for stores in flight: each holds its namespace's store lock to the end, and
        // checks `closed` again once it has the lock.
        let cells: Vec<_> = {
            let map = self
                .inner
                .namespaces
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.values().cloned().collect()
        };
        for cell in cells {
            if let Some(ns) = cell.get() {
                drop(ns.store_lock.lock().await);
            }
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
            base_checksum: 0,
            end_checksum: 0,
        })
        .collect();
    super::manifest::write_snapshot(&dir, entries)
}

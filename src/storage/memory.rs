//! An in-memory backend for tests and embedding. It keeps the same contract as the
//! durable backends (ordering, idempotent re-store, lookups), but "durable" here means
//! only "held by this process": everything is gone when the last handle is dropped.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use std::time::SystemTime;

use hashbrown::{HashMap, HashSet};
use tokio_stream::Stream;

use super::fork::{self, ForkReport};
use super::listing::{self, CatalogStream, SharedCatalog};
use super::retired::{self, GcOptions, GcReport, Record};
use super::{
    check_append, check_replace, entry_for, find_in, spawn_store, FindSegmentReq, OnStoreCallback,
    RestoreOptions, SegmentInfo, Storage,
};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::format::{NamespaceName, PageIndex, SealedSegment, SegmentKey};

/// Keeps segments in memory. Clones share the same data.
#[derive(Debug, Clone)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
    /// When segments are retired, for garbage collection's grace period.
    clock: Arc<dyn Clock>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            clock: crate::clock::system(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    namespaces: Mutex<HashMap<NamespaceName, Arc<Namespace>>>,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Namespace {
    catalog: SharedCatalog,
    segments: RwLock<HashMap<SegmentKey, SealedSegment>>,
    /// Segments replaced out of the catalog, with when: still readable until collected.
    retired: Mutex<Vec<(SegmentKey, SystemTime)>>,
    /// Held from the check through `on_store`, so callbacks run in durable order.
    store_lock: async_lock::Mutex<()>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// This handle, reading time from `clock` (when a replaced segment was retired, and
    /// whether its grace period has passed).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn namespace(&self, name: &NamespaceName, create: bool) -> Result<Option<Arc<Namespace>>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut map = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if create {
            return Ok(Some(map.entry(name.clone()).or_default().clone()));
        }
        Ok(map.get(name).cloned())
    }

    /// A segment of `name`, read where it is stored (a fork's inherited segments are
    /// its source's).
    fn segment(&self, name: &NamespaceName, key: &SegmentKey) -> Result<SealedSegment> {
        let missing = || Error::NotFound(format!("segment {key} in namespace {name}"));
        let ns = self.namespace(name, false)?.ok_or_else(missing)?;
        let owner = listing::read(&ns.catalog).owner(key).cloned();
        let ns = match owner {
            Some(owner) => self.namespace(&owner, false)?.ok_or_else(missing)?,
            None => ns,
        };
        let segments = ns.segments.read().unwrap_or_else(PoisonError::into_inner);
        segments.get(key).cloned().ok_or_else(missing)
    }

    /// The keys of `name` that forks still name.
    fn fork_references(&self, name: &NamespaceName) -> HashSet<SegmentKey> {
        let all: Vec<Arc<Namespace>> = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut keys = HashSet::new();
        for ns in &all {
            let catalog = listing::read(&ns.catalog);
            if !catalog.lineage().0.contains(name) {
                continue; // not a fork of `name`
            }
            keys.extend(catalog.inherited_from(name));
            // Inherited segments the fork's own edits took out stay until its own
            // collection forgets them: its readers in flight may still read them.
            let retired = ns.retired.lock().unwrap_or_else(PoisonError::into_inner);
            keys.extend(retired.iter().map(|(key, _)| *key));
        }
        keys
    }
}

impl Storage for MemoryStorage {
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
            let ns = this.namespace(&name, true)?.ok_or(Error::Closed)?;
            // This backend is memory: a segment held in a spill file comes in.
            let segment = segment.load()?;
            let entry = entry_for(&segment);
            let _ordered = ns.store_lock.lock().await;
            // Shutdown may have begun while this store waited for the lock.
            this.namespace(&name, false)?;
            let durable = {
                // One write lock for check and insert keeps stores of a namespace ordered.
                let mut catalog = listing::write(&ns.catalog);
                if check_append(&catalog, &name, &entry)? {
                    let mut segments = ns.segments.write().unwrap_or_else(PoisonError::into_inner);
                    segments.insert(entry.key, segment);
                    catalog.push(entry);
                }
                catalog.durable_frame_no()
            };
            on_store(durable).await;
            Ok(())
        })
    }

    async fn durable_frame_no(
        &self,
        namespace: &NamespaceName,
        _config: Option<()>,
    ) -> Result<u64> {
        Ok(self
            .namespace(namespace, false)?
            .map_or(0, |ns| listing::read(&ns.catalog).durable_frame_no()))
    }

    async fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        _config: Option<()>,
    ) -> Result<SegmentKey> {
        let ns = self.namespace(namespace, false)?.unwrap_or_default();
        find_in(&ns.catalog, namespace, req)
    }

    async fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<PageIndex> {
        Ok(self.segment(namespace, key)?.index().clone())
    }

    async fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        _config: Option<()>,
    ) -> Result<SealedSegment> {
        self.segment(namespace, key)
    }

    async fn replace_segments(
        &self,
        namespace: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        _config: Option<()>,
    ) -> Result<()> {
        let output = output.load()?;
        let missing = || Error::NotFound(format!("namespace {namespace}"));
        let ns = self.namespace(namespace, false)?.ok_or_else(missing)?;
        let _ordered = ns.store_lock.lock().await;
        let mut catalog = listing::write(&ns.catalog);
        let next = check_replace(&catalog, namespace, inputs, &output)?;
        let mut segments = ns.segments.write().unwrap_or_else(PoisonError::into_inner);
        segments.insert(output.key(), output);
        *catalog = next;
        let now = self.clock.system_now();
        let mut retired = ns.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.extend(inputs.iter().map(|key| (*key, now)));
        Ok(())
    }

    async fn collect_garbage(
        &self,
        namespace: &NamespaceName,
        options: GcOptions,
        _config: Option<()>,
    ) -> Result<GcReport> {
        let Some(ns) = self.namespace(namespace, false)? else {
            return Ok(GcReport::default());
        };
        let _ordered = ns.store_lock.lock().await;
        let (live, durable) = {
            let catalog = listing::read(&ns.catalog);
            let live: HashSet<SegmentKey> = catalog.entries().iter().map(|e| e.key).collect();
            (live, catalog.durable_frame_no())
        };
        let records: Vec<Record<usize>> = ns
            .retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .enumerate()
            .map(|(id, (key, at))| Record {
                id,
                at: *at,
                keys: vec![*key],
            })
            .collect();
        // A segment is put in the map and the catalog at once, so nothing here is ever
        // an orphan of an interrupted store; anything unnamed is garbage.
        let objects: Vec<(SegmentKey, SystemTime)> = ns
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .map(|key| (*key, SystemTime::UNIX_EPOCH))
            .collect();
        let forks = self.fork_references(namespace);
        let decision = retired::decide(
            &live,
            durable,
            &forks,
            records,
            &objects,
            self.clock.system_now(),
            options.grace,
        );
        if !options.dry_run {
            let mut segments = ns.segments.write().unwrap_or_else(PoisonError::into_inner);
            for key in decision
                .report
                .deleted
                .iter()
                .chain(&decision.report.orphans)
            {
                segments.remove(key);
            }
            let done: HashSet<usize> = decision.records.into_iter().collect();
            let mut retired = ns.retired.lock().unwrap_or_else(PoisonError::into_inner);
            let mut id = 0;
            retired.retain(|_| {
                id += 1;
                !done.contains(&(id - 1))
            });
        }
        Ok(decision.report)
    }

    async fn fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: RestoreOptions,
        _config: Option<()>,
    ) -> Result<ForkReport> {
        let plan = fork::plan(self, source, target, at, &None).await?;
        let src = self
            .namespace(source, false)?
            .ok_or_else(|| Error::NotFound(format!("namespace {source}")))?;
        let catalog = fork::catalog(source, &listing::read(&src.catalog), &plan)?;
        let ns = self.namespace(target, true)?.ok_or(Error::Closed)?;
        let _ordered = ns.store_lock.lock().await;
        let mut current = listing::write(&ns.catalog);
        if current.durable_frame_no() > 0 {
            return Err(fork::target_exists(target));
        }
        if let Some(cut) = &plan.cut {
            let mut segments = ns.segments.write().unwrap_or_else(PoisonError::into_inner);
            segments.insert(cut.key(), cut.load()?);
        }
        *current = catalog;
        Ok(plan.report())
    }

    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        _config: Option<()>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a {
        let open = async move {
            Ok(self
                .namespace(namespace, false)?
                .map(|ns| ns.catalog.clone()))
        };
        CatalogStream::new(Box::pin(open), until)
    }

    async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

//! Catalog edits other than appends, and garbage collection, for the object store.
//!
//! A maintenance edit (compaction, retention) creates the next manifest version like a
//! store does, but under the epoch of the newest version rather than a new one: it
//! never fences the namespace's writer. The writer, finding a version of its own epoch
//! that another handle created, adopts it and appends again (see `store_one`). Only a
//! newer epoch fences.

use std::time::SystemTime;

use hashbrown::HashSet;
use object_store::path::Path;
use object_store::PutPayload;
use tokio_stream::StreamExt;

use super::{fenced, listing, store_error, write_error, ObjectStorage};
use crate::error::{Error, Result};
use crate::format::{NamespaceName, SealedSegment, SegmentKey};
use crate::storage::fork::{self, ForkReport, FORKS_DIR};
use crate::storage::retired::{self, GcOptions, GcReport, Record, RETIRED_DIR};
use crate::storage::{check_replace, RestoreOptions};

/// Attempts at creating the next version while other handles keep creating versions.
const EDIT_ATTEMPTS: usize = 16;

impl ObjectStorage {
    /// [`Storage::replace_segments`](crate::Storage::replace_segments): uploads the
    /// output, writes the retired record, then creates the next manifest version.
    pub(super) async fn replace(
        &self,
        name: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
    ) -> Result<()> {
        let ns = self.namespace(name)?;
        let mut state = ns.state.lock().await;
        for attempt in 0..EDIT_ATTEMPTS {
            self.reload(name, &ns, &mut state).await?;
            if let Some(ours) = state.epoch.filter(|&ours| state.version_epoch > ours) {
                state.fenced_by = Some(state.version_epoch);
                return Err(fenced(name, ours, state.version_epoch));
            }
            let next = check_replace(&listing::read(&ns.catalog), name, inputs, &output)?;
            if attempt == 0 {
                let key = output.key();
                let path = self.segment_path(name, &key);
                self.put_maintained(&path, &output).await?;
                self.put_retired(name, inputs).await?;
            }
            let (number, epoch) = (state.version + 1, state.version_epoch);
            if self
                .create_version(name, number, epoch, true, &next)
                .await?
            {
                self.adopt(name, &ns, &mut state, number, next).await;
                if state.epoch.is_none() {
                    state.version_epoch = epoch;
                    state.version_writer = self.inner.writer;
                    state.version_maintenance = true;
                }
                return Ok(());
            }
        }
        Err(Error::Conflict {
            namespace: name.to_string(),
            detail: format!(
                "other handles kept editing the manifest; gave up after {EDIT_ATTEMPTS} attempts"
            ),
        })
    }

    /// [`Storage::fork`](crate::Storage::fork): marks the fork in each namespace it
    /// reads from, uploads the cut segment if any, then creates the target's first
    /// manifest version (conditionally, so two forks into one name cannot both win).
    pub(super) async fn create_fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: RestoreOptions,
    ) -> Result<ForkReport> {
        let plan = fork::plan(self, source, target, at, &None).await?;
        let src = self.loaded(source).await?;
        let catalog = fork::catalog(source, &listing::read(&src.catalog), &plan)?;
        let ns = self.namespace(target)?;
        let mut state = ns.state.lock().await;
        if self.newer_version(target, 0, 0).await?.is_some() {
            return Err(fork::target_exists(target));
        }
        let (bases, ..) = catalog.lineage();
        for base in bases {
            let marker = self.path(base, FORKS_DIR, target.as_str());
            self.inner
                .store
                .put(&marker, PutPayload::new())
                .await
                .map_err(|e| write_error(&format!("writing {marker}"), e))?;
        }
        crate::storage::Storage::refresh(self, source, None).await?;
        fork::check_still_named(source, &listing::read(&src.catalog), &plan)?;
        if let Some(cut) = &plan.cut {
            let path = self.segment_path(target, &cut.key());
            self.put_maintained(&path, cut).await?;
        }
        if !self.create_version(target, 1, 0, true, &catalog).await? {
            return Err(fork::target_exists(target));
        }
        self.adopt(target, &ns, &mut state, 1, catalog).await;
        state.version_writer = self.inner.writer;
        state.version_maintenance = true;
        state.loaded = true;
        Ok(plan.report())
    }

    /// The keys of `name` that forks marked in it still name.
    pub(super) async fn fork_references(
        &self,
        name: &NamespaceName,
    ) -> Result<HashSet<SegmentKey>> {
        let prefix = self.inner.prefix.child(name.as_str()).child(FORKS_DIR);
        let mut keys = HashSet::new();
        for meta in self.list(&prefix).await? {
            let Some(fork) = meta
                .location
                .filename()
                .and_then(|n| NamespaceName::new(n).ok())
            else {
                continue;
            };
            if let Some(version) = self.newer_version(&fork, 0, 0).await? {
                keys.extend(version.catalog.inherited_from(name));
            }
            // Inherited segments the fork's own edits took out: its readers in flight may
            // still read them here until its collection deletes the record.
            for record in self.retired_records(&fork).await? {
                keys.extend(record.keys);
            }
        }
        Ok(keys)
    }

    async fn put_retired(&self, name: &NamespaceName, keys: &[SegmentKey]) -> Result<()> {
        let path = self.path(
            name,
            RETIRED_DIR,
            &retired::record_name(crate::clock::Clock::system_now(&crate::clock::SystemClock)),
        );
        let payload = PutPayload::from(retired::encode(keys));
        self.inner
            .store
            .put(&path, payload)
            .await
            .map_err(|e| write_error(&format!("writing {path}"), e))?;
        Ok(())
    }

    /// [`Storage::collect_garbage`](crate::Storage::collect_garbage).
    pub(super) async fn collect(
        &self,
        name: &NamespaceName,
        forks: &HashSet<SegmentKey>,
        options: GcOptions,
    ) -> Result<GcReport> {
        let (live, durable) = self.catalogued(name).await?;
        let records = self.retired_records(name).await?;
        let objects = self.segment_objects(name).await?;
        let now = crate::clock::Clock::system_now(&crate::clock::SystemClock);
        let decision =
            retired::decide(&live, durable, forks, records, &objects, now, options.grace);
        if options.dry_run {
            return Ok(decision.report);
        }
        let mut report = decision.report;
        // A store may have named a segment since the listing: read the manifest again,
        // and check each orphan's age again right before it goes.
        let (live, _) = self.catalogued(name).await?;
        report.deleted.retain(|key| !live.contains(key));
        report.orphans.retain(|key| !live.contains(key));
        for key in &report.deleted {
            self.delete(&self.segment_path(name, key)).await?;
        }
        let mut deleted = Vec::new();
        for key in &report.orphans {
            let path = self.segment_path(name, key);
            let young = match self.inner.store.head(&path).await {
                Ok(meta) => now
                    .duration_since(SystemTime::from(meta.last_modified))
                    .map_or(true, |age| age < options.grace),
                Err(_) => true, // gone, or unknown: leave it to a later run
            };
            if !young {
                self.delete(&path).await?;
                deleted.push(*key);
            }
        }
        report.orphans = deleted;
        for path in &decision.records {
            self.delete(path).await?;
        }
        Ok(report)
    }

    /// The namespace's catalogued keys and durable frame number, from the newest
    /// manifest version.
    async fn catalogued(&self, name: &NamespaceName) -> Result<(HashSet<SegmentKey>, u64)> {
        let ns = self.namespace(name)?;
        let mut state = ns.state.lock().await;
        self.reload(name, &ns, &mut state).await?;
        let catalog = listing::read(&ns.catalog);
        let keys = catalog.entries().iter().map(|e| e.key).collect();
        Ok((keys, catalog.durable_frame_no()))
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        self.inner
            .store
            .list(Some(prefix))
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| store_error(&format!("listing {prefix}"), e))
    }

    async fn retired_records(&self, name: &NamespaceName) -> Result<Vec<Record<Path>>> {
        let prefix = self.inner.prefix.child(name.as_str()).child(RETIRED_DIR);
        let mut records = Vec::new();
        for meta in self.list(&prefix).await? {
            let Some(at) = meta.location.filename().and_then(retired::parse_name) else {
                continue;
            };
            let Some(bytes) = self.get(&meta.location).await? else {
                continue; // deleted meanwhile by another collection
            };
            let keys = retired::decode(&bytes, meta.location.as_ref())?;
            records.push(Record {
                id: meta.location,
                at,
                keys,
            });
        }
        Ok(records)
    }

    /// The namespace's segment objects with their modification times (used only for the
    /// age of orphans, never for a segment's own time).
    async fn segment_objects(&self, name: &NamespaceName) -> Result<Vec<(SegmentKey, SystemTime)>> {
        let prefix = self.inner.prefix.child(name.as_str()).child("segments");
        Ok(self
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|meta| {
                let key = meta.location.filename()?.parse::<SegmentKey>().ok()?;
                Some((key, SystemTime::from(meta.last_modified)))
            })
            .collect())
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.inner.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error(&format!("deleting {path}"), e)),
        }
    }
}

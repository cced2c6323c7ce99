//! The storage layer: the [`Storage`] contract and its backends.
//!
//! A backend keeps sealed segments per namespace and a catalog of them. Every backend
//! here persists its catalog as a manifest journal and answers lookups from memory, so
//! `durable_frame_no` and `find_segment` cost O(log n) in the number of segments and
//! never list a directory or bucket.

mod catalog;
mod faulty;
mod fork;
pub(crate) mod frames;
pub(crate) mod fsutil;
mod listing;
mod local;
mod manifest;
mod memory;
mod none;
mod object;
pub(crate) mod restore;
mod retired;

use std::fmt;
use std::future::Future;
use std::io::{Seek, Write};
use std::pin::Pin;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_stream::Stream;

use crate::error::{Error, Result};
use crate::format::{CommitTable, NamespaceName, PageIndex, SealedSegment, SegmentKey};

pub(crate) use catalog::{Catalog, CatalogEntry};
pub use faulty::{Faults, FaultyStorage};
pub use fork::ForkReport;
pub use local::{write_manifest_for_bench, LocalConfig, LocalStorage};
pub use memory::MemoryStorage;
pub use none::NoStorage;
pub use object::ObjectStorage;
pub use restore::{
    plan as plan_restore, restore_to_path_with_progress, RestorePlan, RestoreProgress,
    RestoreSummary,
};
pub use retired::{GcOptions, GcReport};

/// The directory of a local store URL (a path, or a `file://` URL); None for the URL of
/// an object store (`s3://`, `gs://`, `az://`, ...). How the CLI's `--store`, the config
/// file and the loadable extension all tell the two apart.
pub fn local_store_dir(url: &str) -> Option<std::path::PathBuf> {
    match url.split_once("://") {
        None => Some(url.into()),
        Some(("file", rest)) => Some(rest.into()),
        Some(_) => None,
    }
}

/// Called once a segment is durable, with the namespace's new durable frame number.
pub type OnStoreCallback =
    Box<dyn FnOnce(u64) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> + Send + 'static>;

/// Wraps an async closure as an [`OnStoreCallback`]:
/// `on_store(|durable| async move { println!("durable up to {durable}") })`.
pub fn on_store<F, Fut>(f: F) -> OnStoreCallback
where
    F: FnOnce(u64) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Box::new(move |durable| Box::pin(f(durable)))
}

/// Which segment [`Storage::find_segment`] should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindSegmentReq {
    /// The segment whose frame range includes this frame number.
    Containing(u64),
    /// The segment with the largest end frame number at or below this one.
    EndFrameNoLessThan(u64),
    /// The newest segment whose timestamp (its first commit) is at or before this time:
    /// the segment holding the last commit at or before it. A time before the first
    /// segment is a `NotFound` error, never the nearest later segment.
    Timestamp(DateTime<Utc>),
}

impl fmt::Display for FindSegmentReq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindSegmentReq::Containing(n) => write!(f, "segment containing frame {n}"),
            FindSegmentReq::EndFrameNoLessThan(n) => {
                write!(f, "segment ending at or before frame {n}")
            }
            FindSegmentReq::Timestamp(t) => {
                write!(f, "segment with a commit at or before {}", stamp(*t))
            }
        }
    }
}

/// A segment as listed by [`Storage::list_segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's key.
    pub key: SegmentKey,
    /// Encoded size in bytes.
    pub size: u64,
    /// Time of the segment's last commit, in ms since the Unix epoch.
    pub last_commit_ts: u64,
}

/// What state [`Storage::restore`] rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreOptions {
    /// The newest durable commit.
    Latest,
    /// The last commit at or before this time.
    Timestamp(DateTime<Utc>),
    /// The last commit at or before this frame number.
    FrameNo(u64),
}

/// The contract every backend keeps.
///
/// * **Durable** means a crash of this process or machine cannot lose it: file and
///   directory fsynced, or an object-store PUT completed.
/// * A namespace's segments extend its log in frame order: each stored segment starts
///   after the durable frame number (gaps are allowed, overlaps are not). Storing a
///   segment whose key is already stored is a no-op that succeeds, so a writer may
///   re-submit after a restart.
/// * Commit timestamps never go backwards along a log; a segment whose first commit is
///   older than the previous segment's last commit is rejected.
/// * `config_override` lets one call use another configuration (for example another root
///   directory or bucket) than the one the storage was opened with.
pub trait Storage: Send + Sync + 'static {
    /// Per-call configuration override.
    type Config: Clone + Send + Sync + fmt::Debug + 'static;

    /// Stores `segment` in `namespace`; `on_store` runs with the new durable frame number
    /// once the segment is durable, and never otherwise.
    ///
    /// A direct backend (local, memory) starts the work when `store` is called, goes on
    /// even if the returned future is dropped, and resolves once the segment is durable
    /// and `on_store` has run; on error nothing was acknowledged. A
    /// [`StoreScheduler`](crate::StoreScheduler) resolves as soon as the segment is queued
    /// (waiting while the namespace's queue is full) and uploads it in the background.
    fn store(
        &self,
        namespace: &NamespaceName,
        segment: SealedSegment,
        config_override: Option<Self::Config>,
        on_store: OnStoreCallback,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The highest frame number that is durable in `namespace` (0 when nothing is).
    fn durable_frame_no(
        &self,
        namespace: &NamespaceName,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Looks a segment up in the catalog, in O(log n) and without listing the backend.
    fn find_segment(
        &self,
        namespace: &NamespaceName,
        req: FindSegmentReq,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<SegmentKey>> + Send;

    /// Fetches and verifies only the page index of a stored segment.
    fn fetch_segment_index(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<PageIndex>> + Send;

    /// Fetches a stored segment, verifying every checksum.
    fn fetch_segment_data(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<SealedSegment>> + Send;

    /// Fetches and verifies only the header and commit table of a stored segment: every
    /// commit's frame number, time, database size and lineage checksum, without the
    /// frames. Backends that can read ranges read only those bytes (`walvault log` lists
    /// a history this way); the default fetches the whole segment.
    fn fetch_commit_table(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<CommitTable>> + Send {
        let fetch = self.fetch_segment_data(namespace, key, config_override);
        async move { Ok(CommitTable::of(&fetch.await?)) }
    }

    /// Fetches the frames at `positions` (0-based, as a [`PageIndex`] gives them, strictly
    /// ascending) of a stored segment, each verified by its own checksum: page number and
    /// page image, in the order asked. Backends that can read ranges read only those frames (restore
    /// uses this to read each page once); the default fetches the whole segment.
    fn fetch_frames(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        positions: &[u32],
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<Vec<(u32, Bytes)>>> + Send {
        let positions = positions.to_vec();
        let fetch = self.fetch_segment_data(namespace, key, config_override);
        async move {
            // `read_frames` serves a segment held in a spill file as well as one in memory.
            let segment = fetch.await?;
            let frames = segment.read_frames(&positions)?;
            Ok(frames.into_iter().map(|f| (f.page_no, f.data)).collect())
        }
    }

    /// Fetches the frames at positions `run` (0-based, consecutive) of a stored segment
    /// whole: number, page, database size after (non-zero for a commit) and image, each
    /// verified by its own checksum. Operations that rewrite or replay a segment of any
    /// size read it this way a bounded run at a time ([`frames::runs`]). Backends that
    /// can read ranges read only those frames; the default fetches the whole segment.
    fn fetch_frame_run(
        &self,
        namespace: &NamespaceName,
        key: &SegmentKey,
        run: std::ops::Range<u32>,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<Vec<crate::format::Frame>>> + Send {
        let fetch = self.fetch_segment_data(namespace, key, config_override);
        async move {
            let positions: Vec<u32> = run.collect();
            fetch.await?.read_frames(&positions)
        }
    }

    /// Fetches the page indexes of several stored segments, each verified as by
    /// [`fetch_segment_index`](Storage::fetch_segment_index): one result per key, in the
    /// order given, so a failure for one key leaves the others usable. Restore reads the
    /// indexes ahead of its walk with this; a backend with a fixed cost per call (a thread
    /// hand-off, a request) can serve the whole batch at once. The default fetches them
    /// one after another.
    fn fetch_segment_indexes(
        &self,
        namespace: &NamespaceName,
        keys: &[SegmentKey],
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Vec<Result<PageIndex>>> + Send {
        let keys = keys.to_vec();
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                out.push(
                    self.fetch_segment_index(namespace, key, config_override.clone())
                        .await,
                );
            }
            out
        }
    }

    /// Fetches frames of several stored segments: for each `(key, positions)`, what
    /// [`fetch_frames`](Storage::fetch_frames) returns, in the order asked. Fails as a
    /// whole if any segment fails.
    ///
    /// Restore sizes its batches by the frames it asks for, so the frames returned
    /// should not hold much more memory than themselves (not a whole segment each). The
    /// default fetches the segments one after another and copies each one's frames into
    /// a buffer of their own.
    fn fetch_frames_batch(
        &self,
        namespace: &NamespaceName,
        requests: Vec<(SegmentKey, Vec<u32>)>,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<Vec<Vec<(u32, Bytes)>>>> + Send {
        async move {
            let mut out = Vec::with_capacity(requests.len());
            for (key, positions) in &requests {
                let frames = self.fetch_frames(namespace, key, positions, config_override.clone());
                out.push(compact(frames.await?));
            }
            Ok(out)
        }
    }

    /// Streams the segments whose end frame number is at least `until`, newest first.
    fn list_segments<'a>(
        &'a self,
        namespace: &'a NamespaceName,
        until: u64,
        config_override: Option<Self::Config>,
    ) -> impl Stream<Item = Result<SegmentInfo>> + Send + 'a;

    /// Writes the database as of `options` to `output` (which must be empty), page by
    /// page, reading each page once from the newest segment that has it. The database
    /// size comes from the target commit's `size_after`. A missing page or a corrupt
    /// segment is an error naming it. Nothing here is atomic or fsynced: to produce a
    /// file, use [`restore_to_path`](Storage::restore_to_path).
    fn restore<W: Write + Seek + Send>(
        &self,
        namespace: &NamespaceName,
        options: RestoreOptions,
        output: &mut W,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<RestoreSummary>> + Send {
        restore::restore(self, namespace, options, output, config_override, None)
    }

    /// Restores into a new file at `path`, atomically: nothing appears there unless the
    /// whole restore succeeded and was fsynced, and an existing file is never overwritten.
    fn restore_to_path(
        &self,
        namespace: &NamespaceName,
        options: RestoreOptions,
        path: &std::path::Path,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<RestoreSummary>> + Send {
        restore::restore_to_path(self, namespace, options, path, config_override, None)
    }

    /// Replaces the consecutive stored segments `inputs` (oldest first) with `output` in
    /// one catalog edit: compaction and retention merge segments this way (see
    /// [`compact`](crate::compact)). `output` must cover exactly the inputs' frames:
    /// the same first and last frame numbers, a first commit no earlier than the first
    /// input's, and the last input's last commit time. Afterwards lookups find `output`
    /// and never an input; the inputs stay readable by key, so readers in flight keep
    /// working, until [`collect_garbage`](Storage::collect_garbage) deletes them after
    /// its grace period. If another edit replaced an input first, this fails and changes
    /// nothing. The default refuses with [`Error::Unsupported`].
    fn replace_segments(
        &self,
        namespace: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (namespace, inputs, output, config_override);
        async {
            Err(Error::Unsupported(
                "this backend cannot replace segments".into(),
            ))
        }
    }

    /// Deletes segments no catalog needs any more: those a catalog edit retired longer
    /// than `options.grace` ago, and orphans (segment objects no catalog or retired
    /// record names, such as an upload whose catalog edit never happened) written
    /// longer ago than that. Segments a fork still names are kept. This is the one
    /// operation besides `ls` that lists the backend. The default refuses with
    /// [`Error::Unsupported`].
    fn collect_garbage(
        &self,
        namespace: &NamespaceName,
        options: GcOptions,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<GcReport>> + Send {
        let _ = (namespace, options, config_override);
        async {
            Err(Error::Unsupported(
                "this backend cannot collect garbage".into(),
            ))
        }
    }

    /// Creates namespace `target` holding `source`'s history up to `at` (the last
    /// commit at or before it), without copying segments: the target's catalog names
    /// the source's, and only a segment the commit falls inside is cut and copied. The
    /// target's own frames start above the source's durable frame number now, and the
    /// source's garbage collection keeps what the target names. `target` must not
    /// exist. The default refuses with [`Error::Unsupported`].
    fn fork(
        &self,
        source: &NamespaceName,
        target: &NamespaceName,
        at: RestoreOptions,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<ForkReport>> + Send {
        let _ = (source, target, at, config_override);
        async { Err(Error::Unsupported("this backend cannot fork".into())) }
    }

    /// Where an operation that builds a segment for `namespace` (compaction, retention,
    /// a fork's cut) lets the builder spill it when it outgrows its share of the memory
    /// budget ([`SegmentBuilder::with_spill`](crate::SegmentBuilder::with_spill)). The
    /// local backend answers the namespace's own directory, so that storing the segment
    /// is a hard link rather than a copy; the default is the system's temp directory.
    fn spill_dir(
        &self,
        namespace: &NamespaceName,
        config_override: Option<Self::Config>,
    ) -> std::path::PathBuf {
        let _ = (namespace, config_override);
        std::env::temp_dir()
    }

    /// Brings this handle's view of `namespace` up to date with what other handles or
    /// processes stored since it was opened, for readers that follow a writer elsewhere.
    /// A backend whose view is always current (memory) does nothing; the local backend
    /// re-reads the manifest only if the file changed (one `stat` otherwise).
    fn refresh(
        &self,
        namespace: &NamespaceName,
        config_override: Option<Self::Config>,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (namespace, config_override);
        async { Ok(()) }
    }

    /// Stops accepting work. Stores that already returned are durable; later calls fail
    /// with [`Error::Closed`](crate::Error::Closed).
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The same frames in one buffer of their own, letting go of whatever larger buffers
/// they were slices of.
pub(crate) fn compact(frames: Vec<(u32, Bytes)>) -> Vec<(u32, Bytes)> {
    let mut buf = bytes::BytesMut::with_capacity(frames.iter().map(|(_, d)| d.len()).sum());
    for (_, data) in &frames {
        buf.extend_from_slice(data);
    }
    let mut buf = buf.freeze();
    frames
        .into_iter()
        .map(|(page_no, data)| (page_no, buf.split_to(data.len())))
        .collect()
}

/// Runs a store as a task on the tokio runtime, so that it completes (and `on_store`
/// runs) even if the caller drops the returned future. Called inside a runtime, the task
/// starts at once; called outside one (as in `runtime.block_on(storage.store(..))`), it
/// starts when the future is first polled.
pub(crate) fn spawn_store<F>(work: F) -> impl Future<Output = Result<()>> + Send
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let mut pending = Err(work);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        pending = pending.or_else(|work| Ok(rt.spawn(work)));
    }
    async move {
        let task = match pending {
            Ok(task) => task,
            Err(work) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => rt.spawn(work),
                Err(_) => {
                    return Err(crate::InvalidInput::Config(
                        "Storage::store must run on a tokio runtime".into(),
                    )
                    .into())
                }
            },
        };
        task.await.unwrap_or_else(|e| {
            Err(crate::Error::io(
                "storing a segment",
                std::io::Error::other(e),
            ))
        })
    }
}

/// The catalog entry describing `segment`.
pub(crate) fn entry_for(segment: &SealedSegment) -> CatalogEntry {
    CatalogEntry {
        key: segment.key(),
        size: segment.encoded_len(),
        last_commit_ts: segment.commits().last().map_or(0, |c| c.timestamp_ms),
        base_checksum: segment.lineage_base().unwrap_or(0),
        end_checksum: segment.end_checksum().unwrap_or(0),
    }
}

/// `catalog` with `inputs` replaced by `output`, or the error saying why not.
pub(crate) fn check_replace(
    catalog: &Catalog,
    namespace: &NamespaceName,
    inputs: &[SegmentKey],
    output: &SealedSegment,
) -> Result<Catalog> {
    catalog
        .replaced(inputs, entry_for(output))
        .map_err(|reason| {
            crate::InvalidInput::Replace {
                namespace: namespace.to_string(),
                reason,
            }
            .into()
        })
}

/// Whether `entry` extends `catalog`: `Ok(true)` if new, `Ok(false)` if already stored.
pub(crate) fn check_append(
    catalog: &Catalog,
    namespace: &NamespaceName,
    entry: &CatalogEntry,
) -> Result<bool> {
    match catalog.check_append(entry) {
        catalog::Append::New => {
            catalog
                .check_lineage(entry)
                .map_err(|detail| Error::Diverged {
                    namespace: namespace.to_string(),
                    detail: format!("segment {}: {detail}", entry.key),
                })?;
            Ok(true)
        }
        catalog::Append::AlreadyStored => Ok(false),
        catalog::Append::Rejected(reason) => Err(crate::InvalidInput::OutOfOrder {
            namespace: namespace.to_string(),
            key: entry.key.to_string(),
            reason,
        }
        .into()),
    }
}

/// Answers `req` from a shared catalog, or says what the namespace does hold.
pub(crate) fn find_in(
    catalog: &std::sync::RwLock<Catalog>,
    namespace: &NamespaceName,
    req: FindSegmentReq,
) -> Result<SegmentKey> {
    let catalog = listing::read(catalog);
    catalog
        .find(req)
        .ok_or_else(|| not_found(&catalog, namespace, req))
}

/// The error for a lookup that found nothing: for a frame or time before the history,
/// says so and names where the history starts (its first commit's time), rather than
/// "no segment ending at or before frame 1 ... history spans frames 1..=2", which reads
/// as a contradiction.
pub(crate) fn not_found(
    catalog: &Catalog,
    namespace: &NamespaceName,
    req: FindSegmentReq,
) -> crate::Error {
    let entries = catalog.entries();
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return crate::Error::NotFound(format!(
            "no {req} in namespace {namespace}; it has no segments"
        ));
    };
    let (start, first_end) = (first.key.start_frame_no, first.key.end_frame_no);
    let first_commit = stamp(first.key.timestamp());
    let message = match req {
        FindSegmentReq::Containing(n) | FindSegmentReq::EndFrameNoLessThan(n) if n < start => {
            format!(
                "frame {n} is before the history of namespace {namespace}, which starts at \
                 frame {start} (first commit at {first_commit})"
            )
        }
        FindSegmentReq::EndFrameNoLessThan(n) if n < first_end => format!(
            "frame {n} is before the first restorable commit of namespace {namespace}: its \
             first segment holds frames {start}..={first_end}, its first commit at {first_commit}"
        ),
        FindSegmentReq::Timestamp(t) if t < first.key.timestamp() => format!(
            "{} is before the first restorable commit of namespace {namespace}, at \
             {first_commit} (in frames {start}..={first_end})",
            stamp(t)
        ),
        _ => format!(
            "no {req} in namespace {namespace}; its history spans frames {start}..={} from \
             {first_commit}",
            last.key.end_frame_no
        ),
    };
    crate::Error::NotFound(message)
}

/// A time in messages: RFC 3339 in UTC with milliseconds, as commits are stamped (and as
/// the CLI prints times).
pub(crate) fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod not_found_tests {
    use super::*;
    use catalog::CatalogEntry;

    fn catalog(spans: &[(u64, u64, u64)]) -> Catalog {
        let mut c = Catalog::default();
        for &(start, end, ts) in spans {
            c.push(CatalogEntry {
                key: SegmentKey {
                    start_frame_no: start,
                    end_frame_no: end,
                    timestamp: ts,
                },
                size: 100,
                last_commit_ts: ts,
                base_checksum: 0,
                end_checksum: 0,
            });
        }
        c
    }

    fn message(c: &Catalog, req: FindSegmentReq) -> String {
        let ns = NamespaceName::new("app").unwrap();
        match not_found(c, &ns, req) {
            crate::Error::NotFound(m) => m,
            other => panic!("not a NotFound: {other}"),
        }
    }

    #[test]
    fn a_frame_before_the_first_commit_names_it() {
        let c = catalog(&[(1, 2, 1_000), (3, 5, 2_000)]);
        let m = message(&c, FindSegmentReq::EndFrameNoLessThan(1));
        assert!(
            m.starts_with("frame 1 is before the first restorable commit of namespace app"),
            "{m}"
        );
        assert!(
            m.contains("frames 1..=2") && m.contains("1970-01-01T00:00:01.000Z"),
            "{m}"
        );
        assert!(!m.contains("no segment ending"), "{m}");
    }

    #[test]
    fn a_frame_below_a_forked_history_names_where_it_starts() {
        let c = catalog(&[(10, 12, 1_000)]);
        let m = message(&c, FindSegmentReq::Containing(3));
        assert!(
            m.contains("frame 3 is before the history of namespace app, which starts at frame 10"),
            "{m}"
        );
    }

    #[test]
    fn a_time_before_the_history_names_the_first_commit_time() {
        let c = catalog(&[(1, 2, 5_000)]);
        let t = DateTime::<Utc>::from_timestamp_millis(4_000).unwrap();
        let m = message(&c, FindSegmentReq::Timestamp(t));
        assert_eq!(
            m,
            "1970-01-01T00:00:04.000Z is before the first restorable commit of namespace app, \
             at 1970-01-01T00:00:05.000Z (in frames 1..=2)"
        );
    }

    #[test]
    fn other_misses_and_an_empty_namespace_say_what_there_is() {
        let c = catalog(&[(1, 2, 1_000)]);
        let m = message(&c, FindSegmentReq::Containing(9));
        assert!(m.contains("its history spans frames 1..=2"), "{m}");
        let m = message(&Catalog::default(), FindSegmentReq::EndFrameNoLessThan(0));
        assert!(m.ends_with("it has no segments"), "{m}");
    }
}

//! How many requests `ObjectStorage` makes, counted by a wrapper around `object_store`'s
//! in-memory store (deterministic, so most counts are exact). What is promised: opening
//! a namespace reads the manifest with two GETs and a HEAD and never lists; lookups and
//! repeated `durable_frame_no` calls cost nothing; an idle `refresh` is one HEAD; a
//! reload downloads only the newest manifest version; a restore never lists and reads
//! each segment it uses with at most three GETs.

mod conformance;
mod support;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use conformance::{at, frames, ns, replay_model, segment, store};
use object_store::path::Path;
use object_store::ObjectStore;
use support::counting::{CountingStore, Counts};
use support::faulty::{Faults, FaultyStore, Op};
use walvault::{
    FindSegmentReq, NamespaceName, ObjectStorage, RestoreOptions, SealedSegment, Storage,
};

const PREFIX: &str = "walvault/test";

fn counting() -> Arc<CountingStore> {
    CountingStore::new(Arc::new(object_store::memory::InMemory::new()))
}

fn open(store: &Arc<CountingStore>) -> ObjectStorage {
    ObjectStorage::new(store.clone(), PREFIX)
}

/// The counts that matter here: (LIST, GET, HEAD, PUT, DELETE).
fn kinds(c: Counts) -> (u64, u64, u64, u64, u64) {
    (c.list, c.get, c.head, c.put, c.delete)
}

/// `n` one-frame segments, segment `i` (1-based) writing page `i` of an `i`-page
/// database at time `1000 * i`: restoring the latest state needs every one of them.
fn growing(n: u64) -> Vec<SealedSegment> {
    (1..=n)
        .map(|i| frames(i, 1_000 * i as i64, &[(i as u32, i as u32)]))
        .collect()
}

async fn store_all(s: &ObjectStorage, name: &NamespaceName, segments: &[SealedSegment]) {
    for seg in segments {
        store(s, name, seg.clone()).await.unwrap();
    }
}

#[tokio::test]
async fn opening_a_namespace_reads_the_manifest_once_and_lookups_are_free() {
    let counted = counting();
    let name = ns("open");
    store_all(&open(&counted), &name, &growing(5)).await;

    counted.reset();
    let reader = open(&counted);
    assert_eq!(reader.durable_frame_no(&name, None).await.unwrap(), 5);
    // The hint, a HEAD of the version after it (missing), the version itself.
    assert_eq!(kinds(counted.reset()), (0, 2, 1, 0, 0));

    for _ in 0..3 {
        assert_eq!(reader.durable_frame_no(&name, None).await.unwrap(), 5);
    }
    for req in [
        FindSegmentReq::Containing(3),
        FindSegmentReq::EndFrameNoLessThan(4),
        FindSegmentReq::Timestamp(at(2_500)),
    ] {
        reader.find_segment(&name, req, None).await.unwrap();
    }
    assert_eq!(conformance::list(&reader, &name, 0).await.len(), 5);
    assert_eq!(counted.reset(), Counts::default());

    // A lookup is what opens a fresh handle just as well.
    let other = open(&counted);
    let key = other
        .find_segment(&name, FindSegmentReq::Containing(2), None)
        .await
        .unwrap();
    assert_eq!(key.end_frame_no, 2);
    assert_eq!(kinds(counted.reset()), (0, 2, 1, 0, 0));

    // A namespace nobody wrote: the hint is missing, and so is version 1.
    let empty = open(&counted);
    assert_eq!(empty.durable_frame_no(&ns("empty"), None).await.unwrap(), 0);
    assert_eq!(kinds(counted.reset()), (0, 1, 1, 0, 0));
}

#[tokio::test]
async fn refresh_is_one_head_when_idle_and_downloads_only_the_newest_version() {
    let counted = counting();
    let name = ns("refresh");
    let writer = open(&counted);
    let segments = growing(12);
    store_all(&writer, &name, &segments[..2]).await;
    let reader = open(&counted);
    reader.durable_frame_no(&name, None).await.unwrap();

    counted.reset();
    reader.refresh(&name, None).await.unwrap();
    assert_eq!(kinds(counted.reset()), (0, 0, 1, 0, 0));

    // Five new versions: HEAD finds the next one, the hint names the newest, a HEAD
    // past it finds nothing, and only the newest is downloaded.
    store_all(&writer, &name, &segments[2..7]).await;
    counted.reset();
    reader.refresh(&name, None).await.unwrap();
    assert_eq!(reader.durable_frame_no(&name, None).await.unwrap(), 7);
    assert_eq!(kinds(counted.reset()), (0, 2, 2, 0, 0));

    // A lost hint costs a HEAD per version to walk up, never a download of each.
    store_all(&writer, &name, &segments[7..12]).await;
    let hint = Path::from(format!("{PREFIX}/refresh/manifest/LATEST"));
    counted.delete(&hint).await.unwrap();
    counted.reset();
    reader.refresh(&name, None).await.unwrap();
    assert_eq!(reader.durable_frame_no(&name, None).await.unwrap(), 12);
    let c = counted.reset();
    assert_eq!((c.list, c.get, c.put), (0, 2, 0), "{c:?}");
    // HEADs: versions 9 (refresh's check), 10 to 13, and 14 (missing).
    assert_eq!(c.head, 1 + 4 + 1, "{c:?}");
}

#[tokio::test]
async fn stores_write_the_segment_a_version_and_the_hint() {
    let counted = counting();
    let name = ns("stores");
    let segments = growing(4);
    let writer = open(&counted);
    store(&writer, &name, segments[0].clone()).await.unwrap();
    // Open (the hint and version 1 are missing), then the epoch's version and hint,
    // the segment, its version and the hint again.
    assert_eq!(kinds(counted.reset()), (0, 1, 1, 5, 0));
    store(&writer, &name, segments[1].clone()).await.unwrap();
    assert_eq!(kinds(counted.reset()), (0, 0, 0, 3, 0));

    // A second writer on the same namespace: it reads the manifest once; taking its
    // epoch reads nothing more.
    let next = open(&counted);
    store(&next, &name, segments[2].clone()).await.unwrap();
    assert_eq!(kinds(counted.reset()), (0, 2, 1, 5, 0));

    // The first writer does not know yet: its create of the next version fails, and it
    // reads that version to learn it was fenced.
    let err = store(&writer, &name, segments[3].clone())
        .await
        .unwrap_err();
    assert!(matches!(err, walvault::Error::Fenced { .. }), "{err}");
    let c = counted.reset();
    assert_eq!((c.list, c.get, c.put), (0, 1, 2), "{c:?}");
}

/// Requests of one restore on a fresh handle, and its summary.
async fn restore_counted(
    counted: &Arc<CountingStore>,
    name: &NamespaceName,
    options: RestoreOptions,
) -> (Counts, walvault::RestoreSummary, Vec<u8>) {
    let reader = open(counted);
    counted.reset();
    let mut out = Cursor::new(Vec::new());
    let summary = reader.restore(name, options, &mut out, None).await.unwrap();
    (counted.reset(), summary, out.into_inner())
}

#[tokio::test]
async fn restores_never_list_and_read_each_segment_with_three_gets() {
    let counted = counting();
    let name = ns("restore");
    // More segments than one batch of index reads (32).
    let segments = growing(40);
    store_all(&open(&counted), &name, &segments).await;

    // Latest: every segment supplies its page. GETs: the hint and the manifest; for
    // the target segment (never read whole, whatever its size) its header, commit
    // table, one frame (the page size), index and frames; then per older segment its
    // header and index and one ranged read of its frames (the header is remembered).
    let (c, summary, bytes) = restore_counted(&counted, &name, RestoreOptions::Latest).await;
    assert_eq!(summary.segments_read, 40);
    assert_eq!(bytes, replay_model(&segments, 40));
    let s = summary.segments_read as u64;
    assert_eq!(kinds(c), (0, 2 + 5 + 3 * (s - 1), 1, 0, 0));
    assert_eq!(
        c.ranges,
        s + 1,
        "one run of frames per segment, and the page-size frame"
    );

    // By time: the target is the 17th segment; only it and the older ones are read.
    let t = RestoreOptions::Timestamp(at(17_000 + 500));
    let (c, summary, bytes) = restore_counted(&counted, &name, t).await;
    assert_eq!((summary.frame_no, summary.segments_read), (17, 17));
    assert_eq!(bytes, replay_model(&segments, 17));
    let s = summary.segments_read as u64;
    assert_eq!(kinds(c), (0, 2 + 5 + 3 * (s - 1), 1, 0, 0));
}

#[tokio::test]
async fn a_restore_reads_indexes_ahead_but_only_the_frames_it_needs() {
    let counted = counting();
    let name = ns("superseded");
    // 60 segments rewriting the same 8 pages, 3 frames each: most are superseded by
    // newer ones, so the restore reads their indexes (a batch at a time) but few frames.
    let segments: Vec<_> = (0..60u64)
        .map(|i| segment(1 + 3 * i, 3, 3, 8, 1_000 * (i as i64 + 1)))
        .collect();
    store_all(&open(&counted), &name, &segments).await;
    let (c, summary, bytes) = restore_counted(&counted, &name, RestoreOptions::Latest).await;
    assert_eq!(bytes, replay_model(&segments, 180));
    let used = summary.segments_read as u64;
    assert!(used < 5, "8 pages at 3 per segment: {summary:?}");
    // The target's commit table and one frame (the page size), then indexes 32 at a
    // time from the target down: one batch covers it.
    let indexes = 32;
    assert_eq!(kinds(c), (0, 2 + 2 + 2 * indexes + used, 1, 0, 0));
}

/// With slow GETs, a restore keeps up to `with_read_concurrency` segments' reads in
/// flight for its frames, and as many for the indexes it reads ahead meanwhile.
#[tokio::test]
async fn restores_keep_several_reads_in_flight_up_to_the_limit() {
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let name = ns("concurrent");
    let segments = growing(40);
    store_all(
        &ObjectStorage::new(memory.clone(), PREFIX),
        &name,
        &segments,
    )
    .await;
    let slow = FaultyStore::new(
        memory,
        Faults {
            ops: vec![Op::Get],
            delay: Duration::from_millis(5),
            ..Faults::default()
        },
    );
    for limit in [1, 4] {
        let counted = CountingStore::new(slow.clone());
        let reader = ObjectStorage::new(counted.clone(), PREFIX).with_read_concurrency(limit);
        let mut out = Cursor::new(Vec::new());
        reader
            .restore(&name, RestoreOptions::Latest, &mut out, None)
            .await
            .unwrap();
        assert_eq!(out.into_inner(), replay_model(&segments, 40));
        let peak = counted.counts().peak_gets;
        assert!(
            peak <= 2 * limit as u64,
            "limit {limit}: {peak} GETs at once"
        );
        if limit > 1 {
            assert!(
                peak >= limit as u64,
                "limit {limit}: only {peak} GETs at once"
            );
        }
    }
}

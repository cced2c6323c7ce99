//! The object-store backend: the conformance suite over `object_store`'s in-memory and
//! local stores and over a real S3 wire protocol (an in-process `s3s-fs` server), and
//! writer fencing on each.

mod conformance;
mod s3;
mod support;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use conformance::*;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use support::counting::CountingStore;
use support::faulty::{Faults, FaultyStore, Op};
use walvault::{Error, ObjectStorage, RestoreOptions, SealedSegment, SegmentBuilder, Storage};

const PREFIX: &str = "walvault/test";

/// A backend over one `ObjectStore`; each `open` is a new handle (and writer).
struct Object {
    store: Arc<dyn ObjectStore>,
    _keep: Option<(tempfile::TempDir, Option<s3::S3Server>)>,
}

impl Backend for Object {
    type S = ObjectStorage;
    fn open(&self) -> ObjectStorage {
        ObjectStorage::new(self.store.clone(), PREFIX)
    }
}

fn object_memory() -> Object {
    Object {
        store: Arc::new(object_store::memory::InMemory::new()),
        _keep: None,
    }
}

fn object_local() -> Object {
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    Object {
        store: Arc::new(local),
        _keep: Some((dir, None)),
    }
}

fn object_s3() -> Object {
    let dir = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(dir.path());
    Object {
        store: server.client(),
        _keep: Some((dir, Some(server))),
    }
}

macro_rules! suite {
    ($backend:ident: $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(&super::$backend()).await;
                }
            )*
        }
    };
}

macro_rules! every_object_store {
    ($($check:ident),* $(,)?) => {
        suite!(object_memory: $($check),*);
        suite!(object_local: $($check),*);
        suite!(object_s3: $($check),*);
    };
}

every_object_store!(
    compaction_keeps_every_commit,
    replace_checks_its_inputs,
    gc_waits_for_grace_then_deletes,
    retention_keeps_the_window,
    fork_shares_history_and_diverges,
    a_fork_compacting_inherited_segments_keeps_its_readers,
    store_fetch_round_trip,
    callbacks_report_durable_in_order,
    lookups_at_every_boundary,
    listing_is_newest_first_and_bounded,
    long_listings_page_through_the_catalog,
    out_of_order_is_rejected_and_restore_is_idempotent,
    namespaces_are_isolated,
    unknown_namespaces_are_empty,
    concurrent_stores,
    restore_matches_a_replay,
    reopen_after_drop,
    shutdown_refuses_new_work,
    lineage_is_checked_on_store_restore_and_verify,
    a_newer_writer_fences_the_older_one,
    a_fenced_writer_cannot_replace_a_visible_segment,
    writers_racing_to_open_one_namespace_leave_one_winner,
    compaction_elsewhere_does_not_fence_the_writer,
    a_maintainer_that_stores_takes_an_epoch_of_its_own,
    large_segments_upload_in_parts,
    a_large_segment_already_stored_is_not_uploaded_again,
    a_fenced_writer_cannot_replace_a_visible_large_segment,
    a_writer_overtaken_during_an_upload_does_not_complete_it,
);

/// A writer keeps storing while another handle (another process, say `walvault compact`)
/// compacts and collects: the writer is never fenced, every segment it stores stays
/// visible, and every commit restores exactly.
pub async fn compaction_elsewhere_does_not_fence_the_writer<B: Backend<S = ObjectStorage>>(b: &B) {
    let name = ns("busy");
    let history = small_history();
    let writer = b.open();
    let maintainer = b.open();
    let (early, late) = history.split_at(12);
    for seg in early.iter().cloned() {
        store(&writer, &name, seg).await.unwrap();
    }
    let storing = {
        let (writer, name, late) = (writer.clone(), name.clone(), late.to_vec());
        tokio::spawn(async move {
            for seg in late {
                store(&writer, &name, seg).await.unwrap();
            }
        })
    };
    for _ in 0..3 {
        maintainer.refresh(&name, None).await.unwrap();
        walvault::compact(&maintainer, &name, &small_policy(), false)
            .await
            .unwrap();
    }
    storing.await.unwrap();
    let no_grace = walvault::GcOptions {
        grace: std::time::Duration::ZERO,
        dry_run: false,
    };
    maintainer
        .collect_garbage(&name, no_grace, None)
        .await
        .unwrap();
    let reader = b.open();
    assert_eq!(reader.durable_frame_no(&name, None).await.unwrap(), 96);
    check_commits(&reader, &name, &history, |_| true).await;
    store(&writer, &name, segment(97, 4, 2, 6, 2_000))
        .await
        .unwrap();
}

/// A handle that compacted (a maintenance edit under the writer's epoch) and then
/// stores becomes a writer with a new epoch of its own, fencing the old one: it never
/// mistakes its maintenance version for a version of its own epoch.
pub async fn a_maintainer_that_stores_takes_an_epoch_of_its_own<B: Backend<S = ObjectStorage>>(
    b: &B,
) {
    let name = ns("maintainer");
    let history = small_history();
    let writer = b.open();
    for seg in history[..12].iter().cloned() {
        store(&writer, &name, seg).await.unwrap();
    }
    let maintainer = b.open();
    let report = walvault::compact(&maintainer, &name, &small_policy(), false)
        .await
        .unwrap();
    assert!(!report.merges.is_empty());
    // The writer builds on the compaction, unfenced; then the maintainer stores, with an
    // epoch of its own, and the writer is fenced.
    store(&writer, &name, history[12].clone()).await.unwrap();
    store(&maintainer, &name, history[13].clone())
        .await
        .unwrap();
    let err = store(&writer, &name, history[14].clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    store(&maintainer, &name, history[14].clone())
        .await
        .unwrap();
    check_commits(&b.open(), &name, &history[..15], |_| true).await;
}

/// Page size of the large segments.
const BIG_PAGE: usize = 4096;
/// Pages in a large segment: 2816 frames of 4 KiB and their headers, about 11 MiB.
const BIG_PAGES: u32 = 2816;
/// Parts of 5 MiB, the least S3 (and s3s-fs) takes: three parts per large segment.
const PART: usize = 5 << 20;

/// A handle that uploads segments over 1 MiB in 5 MiB parts, two at a time.
fn in_parts(store: Arc<dyn ObjectStore>) -> ObjectStorage {
    ObjectStorage::new(store, PREFIX)
        .with_multipart_threshold(1 << 20)
        .with_multipart_part_size(PART)
        .with_upload_concurrency(2)
}

/// One transaction writing pages `1..=BIG_PAGES` of a database that size, from frame
/// `start` at time `ts`; `fill` tells otherwise identical segments apart.
fn big_segment(start: u64, ts: i64, fill: u8) -> SealedSegment {
    let mut b = SegmentBuilder::new(start, BIG_PAGE as u32).unwrap();
    for page in 1..=BIG_PAGES {
        let mut data = vec![fill; BIG_PAGE];
        data[..8].copy_from_slice(&(start + u64::from(page)).to_le_bytes());
        if page == BIG_PAGES {
            b.append_commit(page, &data, BIG_PAGES, at(ts)).unwrap();
        } else {
            b.append_frame(page, &data).unwrap();
        }
    }
    b.seal(at(ts)).unwrap()
}

fn segment_object(name: &walvault::NamespaceName, seg: &SealedSegment) -> Path {
    Path::from(format!("{PREFIX}/{name}/segments/{}", seg.key()))
}

async fn object_bytes(store: &Arc<dyn ObjectStore>, path: &Path) -> bytes::Bytes {
    store.get(path).await.unwrap().bytes().await.unwrap()
}

/// Segments over the threshold go up as multipart uploads of the configured part size,
/// and read back and restore byte for byte.
async fn large_segments_upload_in_parts(b: &Object) {
    let counted = CountingStore::new(b.store.clone());
    let s = in_parts(counted.clone());
    let name = ns("large");
    let segments = [big_segment(1, 1_000, 1), big_segment(1 + 2816, 2_000, 2)];
    assert!(segments[0].encoded().len() > 2 * PART);
    for seg in &segments {
        let end = seg.end_frame_no();
        assert_eq!(store(&s, &name, seg.clone()).await.unwrap(), end);
    }
    let c = counted.counts();
    assert_eq!((c.multipart, c.parts), (2, 6), "{c:?}");

    let reader = b.open();
    for seg in &segments {
        let read = reader
            .fetch_segment_data(&name, &seg.key(), None)
            .await
            .unwrap();
        assert_eq!(read.encoded(), seg.encoded());
    }
    let mut out = Cursor::new(Vec::new());
    let summary = reader
        .restore(&name, RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert_eq!(summary.frame_no, segments[1].end_frame_no());
    assert_eq!(out.into_inner(), replay_model(&segments, summary.frame_no));
}

/// A large segment whose object is already there (an upload that went through before
/// the manifest named it) is recognised by its bytes and not uploaded again.
async fn a_large_segment_already_stored_is_not_uploaded_again(b: &Object) {
    let name = ns("large-again");
    let seg = big_segment(1, 1_000, 7);
    let path = segment_object(&name, &seg);
    b.store
        .put(&path, PutPayload::from(seg.encoded().clone()))
        .await
        .unwrap();
    let counted = CountingStore::new(b.store.clone());
    let s = in_parts(counted.clone());
    assert_eq!(
        store(&s, &name, seg.clone()).await.unwrap(),
        seg.end_frame_no()
    );
    assert_eq!(counted.counts().multipart, 0);
    assert_eq!(
        b.open().durable_frame_no(&name, None).await.unwrap(),
        seg.end_frame_no()
    );
}

/// As [`a_fenced_writer_cannot_replace_a_visible_segment`], with a segment large enough
/// to upload in parts: refused, and the visible segment stays as it was.
async fn a_fenced_writer_cannot_replace_a_visible_large_segment(b: &Object) {
    let name = ns("replace-large");
    let old = in_parts(b.store.clone());
    store(&old, &name, big_segment(1, 1_000, 1)).await.unwrap();
    let new = in_parts(b.store.clone());
    let visible = big_segment(1 + 2816, 2_000, 2);
    store(&new, &name, visible.clone()).await.unwrap();
    let impostor = big_segment(1 + 2816, 2_000, 3);
    assert_eq!(impostor.key(), visible.key());
    let err = store(&old, &name, impostor).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let path = segment_object(&name, &visible);
    assert_eq!(object_bytes(&b.store, &path).await, visible.encoded());
}

/// The race a multipart upload cannot rule out by itself: while a writer's parts are in
/// flight, a newer writer takes over and stores a segment under the same key. The old
/// writer sees the newer manifest version before completing, gives its upload up, and
/// its conditional PUT is refused: the newer writer's segment is untouched.
async fn a_writer_overtaken_during_an_upload_does_not_complete_it(b: &Object) {
    let name = ns("overtaken");
    let gated = FaultyStore::new(
        b.store.clone(),
        Faults {
            ops: vec![Op::Put],
            path_contains: Some("/segments/".into()),
            ..Faults::default()
        },
    );
    let old = in_parts(gated.clone());
    store(&old, &name, big_segment(1, 1_000, 1)).await.unwrap();

    gated.close_gate();
    let racing = {
        let (old, name) = (old.clone(), name.clone());
        tokio::spawn(async move { store(&old, &name, big_segment(1 + 2816, 2_000, 2)).await })
    };
    while gated.at_gate() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Default threshold: the newer writer's segment goes up in one conditional PUT.
    let new = b.open();
    let visible = big_segment(1 + 2816, 2_000, 3);
    store(&new, &name, visible.clone()).await.unwrap();
    gated.open_gate();

    let err = racing.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Conflict { .. } | Error::Fenced { .. }),
        "{err}"
    );
    let path = segment_object(&name, &visible);
    assert_eq!(object_bytes(&b.store, &path).await, visible.encoded());
    let reader = b.open();
    assert_eq!(
        reader.durable_frame_no(&name, None).await.unwrap(),
        visible.end_frame_no()
    );
}

/// A fenced writer that does not know it yet stores a segment under the key of one the
/// new writer made visible (same frames and time, other bytes): refused, and the visible
/// segment stays as it was.
pub async fn a_fenced_writer_cannot_replace_a_visible_segment<B: Backend<S = ObjectStorage>>(
    b: &B,
) {
    let name = ns("replace");
    let old = b.open();
    store(&old, &name, history().remove(0)).await.unwrap();
    let new = b.open();
    let visible = history().remove(1);
    store(&new, &name, visible.clone()).await.unwrap();
    let impostor = segment(11, 10, 5, 8, 2_000);
    assert_eq!(impostor.key(), visible.key());
    assert_ne!(impostor.encoded(), visible.encoded());
    assert!(store(&old, &name, impostor).await.is_err());
    let reader = b.open();
    let read = reader
        .fetch_segment_data(&name, &visible.key(), None)
        .await
        .unwrap();
    assert_eq!(read.encoded(), visible.encoded());
}

/// The old writer's next store fails with `Fenced`, and nothing it stored after losing
/// is visible to anyone.
pub async fn a_newer_writer_fences_the_older_one<B: Backend<S = ObjectStorage>>(b: &B) {
    let name = ns("fenced");
    let mut segments = history().into_iter();
    let old = b.open();
    store(&old, &name, segments.next().unwrap()).await.unwrap();
    let new = b.open();
    store(&new, &name, segments.next().unwrap()).await.unwrap();
    let err = store(&old, &name, segments.next().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    // Fenced for good, whatever it tries next.
    let again = store(&old, &name, segment(100, 1, 1, 4, 9_000)).await;
    assert!(matches!(again, Err(Error::Fenced { .. })));
    let reader = b.open();
    let durable = reader.durable_frame_no(&name, None).await.unwrap();
    assert_eq!(durable, new.durable_frame_no(&name, None).await.unwrap());
    assert_eq!(durable, history()[1].end_frame_no());
}

/// Writers racing to take over one namespace: every racing store that succeeded holds
/// its own epoch, and afterwards exactly one writer (the newest epoch) can go on.
pub async fn writers_racing_to_open_one_namespace_leave_one_winner<
    B: Backend<S = ObjectStorage>,
>(
    b: &B,
) {
    let name = ns("race");
    let first = history().remove(0);
    let handles: Vec<ObjectStorage> = (0..4).map(|_| b.open()).collect();
    let tasks: Vec<_> = handles
        .iter()
        .map(|h| {
            let (h, name, first) = (h.clone(), name.clone(), first.clone());
            tokio::spawn(async move { store(&h, &name, first).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => wins += 1,
            Err(Error::Fenced { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(wins >= 1);
    let reader = b.open();
    assert_eq!(
        reader.durable_frame_no(&name, None).await.unwrap(),
        first.end_frame_no()
    );
    let next = history().remove(1);
    let mut went_on = 0;
    for h in &handles {
        match store(h, &name, next.clone()).await {
            Ok(_) => went_on += 1,
            Err(Error::Fenced { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(went_on, 1, "exactly one writer holds the newest epoch");
}

/// A store URL with options, as the CLI will pass them: the segments land under the
/// URL's prefix in the bucket, and bad URLs and options are errors naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_urls_name_the_bucket_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(dir.path());
    let options = [
        ("aws_endpoint", server.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", s3::ACCESS_KEY),
        ("aws_secret_access_key", s3::SECRET_KEY),
    ];
    let url = format!("s3://{}/team/prod/", s3::BUCKET);
    let storage = ObjectStorage::from_url_with_options(&url, options).unwrap();
    let name = ns("from-url");
    let first = history().remove(0);
    store(&storage, &name, first.clone()).await.unwrap();
    let raw = server.client();
    let path =
        object_store::path::Path::from(format!("team/prod/from-url/segments/{}", first.key()));
    let bytes = raw.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[..], &first.encoded()[..]);

    let local = tempfile::tempdir().unwrap();
    let file_url = format!("file://{}", local.path().display());
    let on_disk = ObjectStorage::from_url(&file_url).unwrap();
    store(&on_disk, &name, first.clone()).await.unwrap();
    assert_eq!(
        on_disk.durable_frame_no(&name, None).await.unwrap(),
        first.end_frame_no()
    );

    for (bad, says) in [
        ("s3://", "no bucket"),
        ("ftp://bucket/x", "scheme ftp"),
        ("bucket/prefix", "scheme://"),
        ("file://relative/dir", "absolute path"),
    ] {
        let err = ObjectStorage::from_url(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
    let err = ObjectStorage::from_url_with_options(&url, [("no_such_option", "1")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no_such_option"), "{err}");
}

/// A restore batch reads only the ranges that hold the frames asked for (so a few frames
/// never pin a whole segment's bytes), and frames that fill what was read come back in
/// place, without a copy (24-byte frame headers between the pages).
#[tokio::test]
async fn batches_return_the_frames_asked_for_and_keep_dense_reads_in_place() {
    let b = object_memory();
    let s = b.open();
    let name = ns("pinning");
    let seg = big_segment(1, 1_000, 1);
    store(&s, &name, seg.clone()).await.unwrap();
    let few: Vec<u32> = vec![3, 700, 1900];
    let all: Vec<u32> = (0..BIG_PAGES).collect();
    let got = s
        .fetch_frames_batch(
            &name,
            vec![(seg.key(), few.clone()), (seg.key(), all)],
            None,
        )
        .await
        .unwrap();
    let gaps = |frames: &[(u32, bytes::Bytes)]| -> Vec<usize> {
        frames
            .windows(2)
            .map(|w| w[1].1.as_ptr() as usize - w[0].1.as_ptr() as usize - w[0].1.len())
            .collect()
    };
    assert_eq!(got[0].len(), few.len());
    assert!(gaps(&got[1]).iter().all(|&g| g == 24), "kept in place");
    for (page_no, data) in got[0].iter().chain(&got[1]) {
        assert_eq!(seg.read_page(*page_no).unwrap().data, &data[..]);
    }
}

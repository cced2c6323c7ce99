//! The object-store backend: the conformance suite over `object_store`'s in-memory and
//! local stores and over a real S3 wire protocol (an in-process `s3s-fs` server), and
//! writer fencing on each.

mod conformance;
mod s3;

use std::sync::Arc;

use conformance::*;
use object_store::ObjectStore;
use walvault::{Error, ObjectStorage, Storage};

/// A backend over one `ObjectStore`; each `open` is a new handle (and writer).
struct Object {
    store: Arc<dyn ObjectStore>,
    _keep: Option<(tempfile::TempDir, Option<s3::S3Server>)>,
}

impl Backend for Object {
    type S = ObjectStorage;
    fn open(&self) -> ObjectStorage {
        ObjectStorage::new(self.store.clone(), "walvault/test")
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
    a_newer_writer_fences_the_older_one,
    a_fenced_writer_cannot_replace_a_visible_segment,
    writers_racing_to_open_one_namespace_leave_one_winner,
    compaction_elsewhere_does_not_fence_the_writer,
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

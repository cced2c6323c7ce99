//! `ObjectStorage` over an object store that fails, loses responses and delays
//! (`tests/support/faulty.rs`, over `object_store`'s in-memory store). What must hold:
//! nothing is reported durable before a fresh reader of the manifest sees it, nothing
//! acknowledged is lost, no segment object is replaced, a retry after a lost response
//! recognises its own work (never `Fenced`), and a restore either fails or is exact.
//!
//! The random faults print their seed; `WALVAULT_FAULT_SEED=<seed>` replays a run.

mod conformance;
mod support;

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::{list, ns, replay_model, segment};
use object_store::path::Path;
use object_store::ObjectStore;
use support::faulty::{Faults, FaultyStore, Op};
use tokio_stream::StreamExt;
use walvault::{
    on_store, Durability, ErrorKind, NamespaceName, ObjectStorage, RestoreOptions, SchedulerConfig,
    SealedSegment, Storage, StoreScheduler,
};

const PREFIX: &str = "walvault/test";

fn memory() -> Arc<dyn ObjectStore> {
    Arc::new(object_store::memory::InMemory::new())
}

/// A handle that uploads segments over 4 KiB in 1 KiB parts (the in-memory store takes
/// any part size), so that faults also hit multipart uploads.
fn handle(store: Arc<dyn ObjectStore>) -> ObjectStorage {
    ObjectStorage::new(store, PREFIX)
        .with_multipart_threshold(4 << 10)
        .with_multipart_part_size(1 << 10)
        .with_upload_concurrency(3)
}

/// `n` segments writing pages of a 24-page database round-robin; every other one is
/// large enough (13 frames of 512 bytes) to go up in parts.
fn history(n: u64) -> Vec<SealedSegment> {
    let mut start = 1;
    (0..n)
        .map(|i| {
            let frames = if i % 2 == 0 { 13 } else { 3 };
            let seg = segment(start, frames, 4, 24, 1_000 * (i as i64 + 1));
            start += frames;
            seg
        })
        .collect()
}

/// What a fresh handle, reading the manifest from the store itself, holds: its durable
/// frame number, and each listed segment's bytes equal the one that was stored.
async fn check_store(raw: &Arc<dyn ObjectStore>, name: &NamespaceName, segments: &[SealedSegment]) {
    let fresh = ObjectStorage::new(raw.clone(), PREFIX);
    let last = segments.last().unwrap().end_frame_no();
    assert_eq!(fresh.durable_frame_no(name, None).await.unwrap(), last);
    let listed = list(&fresh, name, 0).await;
    assert_eq!(listed.len(), segments.len());
    for (info, seg) in listed.iter().rev().zip(segments) {
        assert_eq!(info.key, seg.key());
        let read = fresh
            .fetch_segment_data(name, &info.key, None)
            .await
            .unwrap();
        assert_eq!(
            read.encoded(),
            seg.encoded(),
            "segment {} was replaced",
            seg.key()
        );
    }
    for upto in [last, segments[segments.len() / 2].end_frame_no()] {
        let mut out = Cursor::new(Vec::new());
        let options = RestoreOptions::FrameNo(upto);
        fresh.restore(name, options, &mut out, None).await.unwrap();
        assert_eq!(out.into_inner(), replay_model(segments, upto), "at {upto}");
    }
}

/// Random failures and lost responses on every kind of request, through the retrying
/// `StoreScheduler`. Each `on_store` compares the durable frame number it is given with
/// what a fresh handle reads from the store at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_through_random_faults_lose_nothing_and_report_nothing_early() {
    let raw = memory();
    let faulty = FaultyStore::new(
        raw.clone(),
        Faults {
            fail_fraction: 0.12,
            drop_fraction: 0.12,
            seed: 0x0b1ec7,
            delay: Duration::from_micros(200),
            ..Faults::default()
        },
    );
    let config = SchedulerConfig {
        max_retries: 10_000,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        ..SchedulerConfig::default()
    };
    let scheduler = StoreScheduler::new(handle(faulty.clone()), config).unwrap();
    let name = ns("random-faults");
    let segments = history(40);
    let early: Arc<Mutex<Vec<String>>> = Arc::default();
    let reported: Arc<Mutex<Vec<u64>>> = Arc::default();
    for seg in &segments {
        // Queueing fails only if the scheduler cannot read the durable frame number to
        // start the namespace's lane; the caller tries again.
        loop {
            let (raw, name2) = (raw.clone(), name.clone());
            let (early, reported) = (early.clone(), reported.clone());
            let check = on_store(move |durable| async move {
                let fresh = ObjectStorage::new(raw, PREFIX);
                let seen = fresh.durable_frame_no(&name2, None).await.unwrap();
                if durable > seen {
                    let what = format!("reported {durable}, a reader sees {seen}");
                    early.lock().unwrap().push(what);
                }
                reported.lock().unwrap().push(durable);
            });
            match scheduler.store(&name, seg.clone(), None, check).await {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::Transient => continue,
                Err(e) => panic!("queueing {}: {e}", seg.key()),
            }
        }
    }
    let last = segments.last().unwrap().end_frame_no();
    let tracker = scheduler.tracker(&name).await.unwrap();
    assert_eq!(tracker.wait(last, Durability::Durable).await.unwrap(), last);
    faulty.set_enabled(false);
    scheduler.shutdown().await;

    assert!(
        faulty.failed() > 10 && faulty.dropped() > 10,
        "faults: {} failed, {} dropped",
        faulty.failed(),
        faulty.dropped()
    );
    assert_eq!(early.lock().unwrap().as_slice(), &[] as &[String]);
    let reported = reported.lock().unwrap().clone();
    let ends: Vec<u64> = segments.iter().map(|s| s.end_frame_no()).collect();
    assert_eq!(
        reported, ends,
        "every segment reported durable once, in order"
    );
    check_store(&raw, &name, &segments).await;
}

/// Stores `segments` through `s`, retrying each until it succeeds; every failure must
/// be a retryable I/O error (never `Fenced` or `Conflict`: this is the only writer).
async fn store_retrying(
    s: &ObjectStorage,
    name: &NamespaceName,
    segments: &[SealedSegment],
) -> usize {
    let mut failures = 0;
    for seg in segments {
        loop {
            let stored = conformance::store(s, name, seg.clone()).await;
            match stored {
                Ok(durable) => {
                    assert_eq!(durable, seg.end_frame_no());
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Transient => failures += 1,
                Err(e) => panic!("storing {}: {e}", seg.key()),
            }
        }
    }
    failures
}

/// The same without a scheduler, only lost responses, on PUTs: each store's retry finds
/// the objects and the manifest version its first attempt created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_lost_responses_recognise_their_own_writes() {
    let raw = memory();
    let faulty = FaultyStore::new(
        raw.clone(),
        Faults {
            ops: vec![Op::Put],
            drop_fraction: 0.3,
            seed: 0xd20b,
            ..Faults::default()
        },
    );
    let name = ns("lost-responses");
    let segments = history(30);
    let failures = store_retrying(&handle(faulty.clone()), &name, &segments).await;
    assert!(failures > 5 && faulty.dropped() > 5, "{failures} failures");
    check_store(&raw, &name, &segments).await;
}

/// The manifest versions in the store, by number.
async fn versions(raw: &Arc<dyn ObjectStore>, name: &NamespaceName) -> Vec<String> {
    let prefix = Path::from(format!("{PREFIX}/{name}/manifest"));
    let mut names: Vec<String> = raw
        .list(Some(&prefix))
        .map(|meta| meta.unwrap().location.filename().unwrap().to_string())
        .filter(|n| n != "LATEST")
        .collect()
        .await;
    names.sort();
    names
}

/// Whether the store that meets the lost response fails (and its retry then succeeds),
/// or sees past it by itself.
#[derive(Debug, PartialEq)]
enum FirstStore {
    Fails,
    Succeeds,
}

/// One lost response at a chosen request (the Nth PUT whose path contains `path`): the
/// store either fails and its retry succeeds, or succeeds at once, as `expect` says;
/// either way without taking another epoch or writing another version than a clean run
/// would. Returns the versions left in the store.
async fn lose_one_response(
    path: &str,
    nth: u64,
    seg: SealedSegment,
    expect: FirstStore,
) -> Vec<String> {
    let raw = memory();
    let faulty = FaultyStore::new(
        raw.clone(),
        Faults {
            ops: vec![Op::Put],
            path_contains: Some(path.into()),
            drop_calls: vec![nth],
            ..Faults::default()
        },
    );
    let name = ns("lost-one");
    let s = handle(faulty.clone());
    let first = conformance::store(&s, &name, seg.clone()).await;
    assert_eq!(faulty.dropped(), 1);
    match expect {
        FirstStore::Succeeds => assert_eq!(first.unwrap(), seg.end_frame_no()),
        FirstStore::Fails => {
            assert!(
                matches!(&first, Err(e) if e.kind() == ErrorKind::Transient),
                "{first:?}"
            );
            let retry = conformance::store(&s, &name, seg.clone()).await;
            assert_eq!(retry.unwrap(), seg.end_frame_no());
        }
    }
    let next = segment(seg.end_frame_no() + 1, 3, 3, 24, 900_000);
    assert_eq!(
        conformance::store(&s, &name, next.clone()).await.unwrap(),
        next.end_frame_no()
    );
    check_store(&raw, &name, &[seg, next]).await;
    versions(&raw, &name).await
}

#[tokio::test]
async fn a_lost_response_to_a_manifest_version_is_recognised_not_fenced() {
    // PUTs of manifest versions: 1 takes the epoch, 2 records the first segment.
    let small = segment(1, 3, 3, 24, 1_000);
    let left = lose_one_response("/manifest/0", 2, small.clone(), FirstStore::Fails).await;
    assert_eq!(
        left.len(),
        3,
        "epoch, first segment, second segment: {left:?}"
    );
    // The version taking the epoch: the retry finds it is the newest and its own, and
    // keeps its epoch instead of taking another.
    let left = lose_one_response("/manifest/0", 1, small, FirstStore::Fails).await;
    assert_eq!(left.len(), 3, "{left:?}");
}

#[tokio::test]
async fn a_lost_response_to_a_segment_upload_is_recognised() {
    let small = segment(1, 3, 3, 24, 1_000);
    assert!(small.encoded().len() <= 4 << 10);
    // One PUT: its error sends the store to look, and it finds its own bytes there.
    let left = lose_one_response("/segments/", 1, small, FirstStore::Succeeds).await;
    assert_eq!(left.len(), 3, "{left:?}");
    // In parts: starting the upload, each part, then the completion.
    let large = segment(1, 13, 4, 24, 1_000);
    let parts = large.encoded().len().div_ceil(1 << 10) as u64;
    assert!(parts > 1);
    let completion = parts + 2;
    let left = lose_one_response("/segments/", completion, large.clone(), FirstStore::Fails).await;
    assert_eq!(left.len(), 3, "{left:?}");
    // A lost response to one part fails that upload; the retry starts over.
    let left = lose_one_response("/segments/", 3, large, FirstStore::Fails).await;
    assert_eq!(left.len(), 3, "{left:?}");
}

/// Restores through random failures and lost responses on reads: each one fails with an
/// error or produces exactly the database; never a wrong file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_under_faults_fail_or_are_exact() {
    let raw = memory();
    let name = ns("restore-faults");
    let segments = history(40);
    store_retrying(&handle(raw.clone()), &name, &segments).await;
    let faulty = FaultyStore::new(
        raw,
        Faults {
            ops: vec![Op::Get, Op::Head],
            fail_fraction: 0.01,
            drop_fraction: 0.01,
            seed: 0x5e57,
            ..Faults::default()
        },
    );
    let last = segments.last().unwrap().end_frame_no();
    let (mut exact, mut failed) = (0, 0);
    for round in 0..30u64 {
        let upto = last - round * 7;
        let reader = handle(faulty.clone());
        let mut out = Cursor::new(Vec::new());
        match reader
            .restore(&name, RestoreOptions::FrameNo(upto), &mut out, None)
            .await
        {
            Ok(summary) => {
                assert_eq!(out.into_inner(), replay_model(&segments, summary.frame_no));
                exact += 1;
            }
            Err(e) if e.kind() == ErrorKind::Transient => failed += 1,
            Err(e) => panic!("restore to {upto}: {e}"),
        }
    }
    assert!(exact > 0 && failed > 0, "{exact} exact, {failed} failed");
}

//! Behaviour specific to the local filesystem backend: crash leftovers, foreign files,
//! damaged files, per-call root overrides.
// The tests take wall-clock moments, as a user would, to restore to.
#![allow(clippy::disallowed_methods)]

mod conformance;

use std::fs;
use std::future::Future;
use std::path::Path;

use conformance::{history, list, ns, segment, store};
use walvault::{
    FindSegmentReq, LocalConfig, LocalStorage, NoStorage, RestoreOptions, SealedSegment, Storage,
};

fn seg_path(root: &Path, name: &str, seg: &SealedSegment) -> std::path::PathBuf {
    root.join(name).join(format!("{}.seg", seg.key()))
}

#[tokio::test]
async fn foreign_and_half_written_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("db");
    let s = LocalStorage::open(dir.path()).unwrap();
    store(&s, &name, segment(1, 4, 2, 3, 100)).await.unwrap();
    let ns_dir = dir.path().join("db");
    fs::write(ns_dir.join("notes.txt"), b"hello").unwrap();
    fs::write(ns_dir.join(".tmp-0123"), b"half a segm").unwrap();
    fs::write(ns_dir.join("garbage.seg"), b"not a key").unwrap();
    fs::create_dir(ns_dir.join("subdir")).unwrap();
    let orphan = segment(5, 4, 2, 3, 200);
    fs::write(seg_path(dir.path(), "db", &orphan), orphan.encoded()).unwrap();
    drop(s);

    let s = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 4);
    assert_eq!(list(&s, &name, 0).await.len(), 1);
    let foreign = s.foreign_files(&name).await.unwrap();
    let names: Vec<_> = foreign
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names.contains(&format!("{}.seg", orphan.key())));
    // The orphan was never acknowledged; re-submitting it stores it for real.
    assert_eq!(store(&s, &name, orphan).await.unwrap(), 8);
    assert_eq!(s.foreign_files(&name).await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_crash_between_segment_file_and_manifest_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("crashy");
    let s = LocalStorage::open(dir.path()).unwrap();
    store(&s, &name, segment(1, 4, 2, 3, 100)).await.unwrap();
    let manifest = dir.path().join("crashy/MANIFEST");
    let before = fs::read(&manifest).unwrap();
    store(&s, &name, segment(5, 4, 2, 3, 200)).await.unwrap();
    drop(s);
    // Build the image a crash during the second store's manifest append leaves: its
    // segment file complete, its ADD record half-written. (Produced here by cutting the
    // record of a completed store; in a real crash at that point the store was never
    // acknowledged, because acknowledgement waits for the append's fsync.)
    let after = fs::read(&manifest).unwrap();
    fs::write(
        &manifest,
        &after[..before.len() + (after.len() - before.len()) / 2],
    )
    .unwrap();

    let s = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 4);
    assert_eq!(store(&s, &name, segment(5, 4, 2, 3, 200)).await.unwrap(), 8);
    drop(s);
    let s = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 8);
}

#[tokio::test]
async fn a_damaged_segment_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("damaged");
    let s = LocalStorage::open(dir.path()).unwrap();
    let seg = segment(1, 6, 3, 4, 100);
    store(&s, &name, seg.clone()).await.unwrap();
    let path = seg_path(dir.path(), "damaged", &seg);
    let good = fs::read(&path).unwrap();

    let mut bad = good.clone();
    bad[200] ^= 0x08; // inside the first frame
    fs::write(&path, &bad).unwrap();
    let err = s
        .fetch_segment_data(&name, &seg.key(), None)
        .await
        .unwrap_err();
    assert!(
        err.is_corrupt() && err.to_string().contains(&seg.key().to_string()),
        "{err}"
    );
    // The index alone is still intact and verifiable.
    assert!(s.fetch_segment_index(&name, &seg.key(), None).await.is_ok());

    let index_byte = good.len() - 32 - 4 - 2;
    let mut bad = good.clone();
    bad[index_byte] ^= 0x01;
    fs::write(&path, &bad).unwrap();
    assert!(s
        .fetch_segment_index(&name, &seg.key(), None)
        .await
        .unwrap_err()
        .is_corrupt());

    fs::write(&path, &good[..100]).unwrap();
    assert!(s
        .fetch_segment_index(&name, &seg.key(), None)
        .await
        .unwrap_err()
        .is_corrupt());
    assert!(s
        .fetch_segment_data(&name, &seg.key(), None)
        .await
        .unwrap_err()
        .is_corrupt());

    // A file that holds another segment than its name says.
    let other = segment(1, 6, 3, 4, 999);
    fs::write(&path, other.encoded()).unwrap();
    let err = s
        .fetch_segment_data(&name, &seg.key(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("different segment"), "{err}");

    fs::remove_file(&path).unwrap();
    let err = s
        .fetch_segment_data(&name, &seg.key(), None)
        .await
        .unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("missing"),
        "{err}"
    );
}

#[tokio::test]
async fn a_damaged_manifest_is_an_error_not_an_empty_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("manifest");
    let s = LocalStorage::open(dir.path()).unwrap();
    for i in 0..3u64 {
        store(&s, &name, segment(i * 4 + 1, 4, 2, 3, (i * 100) as i64))
            .await
            .unwrap();
    }
    drop(s);
    let path = dir.path().join("manifest/MANIFEST");
    let mut bytes = fs::read(&path).unwrap();
    bytes[30] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let s = LocalStorage::open(dir.path()).unwrap();
    let err = s.durable_frame_no(&name, None).await.unwrap_err();
    assert!(
        err.is_corrupt() && err.to_string().contains("MANIFEST"),
        "{err}"
    );
}

#[tokio::test]
async fn a_call_can_use_another_root() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let name = ns("db");
    let s = LocalStorage::open(a.path()).unwrap();
    let other = Some(LocalConfig {
        root: b.path().to_path_buf(),
    });
    let seg = segment(1, 4, 2, 3, 100);
    s.store(
        &name,
        seg.clone(),
        other.clone(),
        Box::new(|_| Box::pin(async {})),
    )
    .await
    .unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 0);
    assert_eq!(s.durable_frame_no(&name, other.clone()).await.unwrap(), 4);
    let key = s
        .find_segment(&name, FindSegmentReq::Containing(2), other.clone())
        .await
        .unwrap();
    assert_eq!(
        s.fetch_segment_data(&name, &key, other)
            .await
            .unwrap()
            .encoded(),
        seg.encoded()
    );
    assert!(b.path().join("db").join(format!("{key}.seg")).is_file());
    assert!(!a.path().join("db").exists());
}

#[tokio::test]
async fn a_root_that_is_a_file_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"x").unwrap();
    let err = LocalStorage::open(&file).unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("not a directory"),
        "{err}"
    );
    assert!(LocalStorage::open("").unwrap_err().is_invalid_input());
}

#[tokio::test]
async fn no_storage_keeps_nothing_and_says_so() {
    let s = NoStorage;
    let name = ns("replica");
    assert_eq!(
        store(&s, &name, segment(1, 2, 2, 2, 0)).await.unwrap(),
        u64::MAX
    );
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), u64::MAX);
    let err = s
        .find_segment(&name, FindSegmentReq::Containing(1), None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(list(&s, &name, 0).await.is_empty());
}

#[test]
fn a_store_created_outside_a_runtime_runs_when_awaited_inside_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(dir.path()).unwrap();
    let name = ns("x");
    let fut = s.store(
        &name,
        segment(1, 2, 2, 2, 0),
        None,
        Box::new(|_| Box::pin(async {})),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(fut).unwrap();
    assert_eq!(rt.block_on(s.durable_frame_no(&name, None)).unwrap(), 2);
}

#[test]
fn a_store_polled_outside_any_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(dir.path()).unwrap();
    let name = ns("x");
    let fut = s.store(
        &name,
        segment(1, 2, 2, 2, 0),
        None,
        Box::new(|_| Box::pin(async {})),
    );
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => assert!(result.unwrap_err().is_invalid_input()),
        std::task::Poll::Pending => panic!("no runtime, so the store cannot be pending"),
    }
}

#[tokio::test]
async fn a_second_writer_of_a_namespace_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("single-writer");
    let first = LocalStorage::open(dir.path()).unwrap();
    // The same root reached through a symlink, and a second handle, are both other
    // writers of the same files.
    let link = dir.path().join("alias");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    let alias = Some(LocalConfig { root: link });
    let second = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(second.durable_frame_no(&name, None).await.unwrap(), 0);
    store(&first, &name, segment(1, 4, 2, 3, 100))
        .await
        .unwrap();
    let seg = segment(5, 4, 2, 3, 200);
    let err = first
        .store(&name, seg.clone(), alias, Box::new(|_| Box::pin(async {})))
        .await
        .unwrap_err();
    assert!(matches!(err, walvault::Error::Conflict { .. }), "{err}");
    let err = store(&second, &name, seg.clone()).await.unwrap_err();
    assert!(matches!(err, walvault::Error::Conflict { .. }), "{err}");
    drop(first);
    // Taking over, the second handle replays what the first wrote before writing.
    let stale = segment(1, 2, 2, 3, 300);
    assert!(store(&second, &name, stale)
        .await
        .unwrap_err()
        .is_invalid_input());
    assert_eq!(store(&second, &name, seg).await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_after_a_crash_never_cut_an_acknowledged_store() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("opens");
    let s = LocalStorage::open(dir.path()).unwrap();
    store(&s, &name, segment(1, 4, 2, 3, 100)).await.unwrap();
    drop(s);
    let manifest = dir.path().join("opens/MANIFEST");
    let mut bytes = fs::read(&manifest).unwrap();
    bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]); // a torn append
    fs::write(&manifest, &bytes).unwrap();

    let s = LocalStorage::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            if i == 8 {
                store(&s, &name, segment(5, 4, 2, 3, 200)).await.map(|_| ())
            } else {
                s.durable_frame_no(&name, None).await.map(|_| ())
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    drop(s);
    let s = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_stored_after_shutdown_returns() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("shutdown-race");
    let s = LocalStorage::open(dir.path()).unwrap();
    let writer = {
        let s = s.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let mut stored = 0;
            for i in 0..200u64 {
                match store(&s, &name, segment(i * 2 + 1, 2, 2, 3, i as i64)).await {
                    Ok(_) => stored += 1,
                    Err(e) => {
                        assert!(matches!(e, walvault::Error::Closed), "{e}");
                        break;
                    }
                }
            }
            stored
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    s.shutdown().await;
    let at_shutdown = LocalStorage::open(dir.path())
        .unwrap()
        .durable_frame_no(&name, None)
        .await
        .unwrap();
    let stored = writer.await.unwrap();
    let after = LocalStorage::open(dir.path())
        .unwrap()
        .durable_frame_no(&name, None)
        .await
        .unwrap();
    assert_eq!(after, at_shutdown, "a store landed after shutdown returned");
    assert_eq!(after, stored * 2);
}

#[tokio::test]
async fn restore_to_a_path_is_atomic_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let name = ns("to-path");
    let s = LocalStorage::open(dir.path().join("store")).unwrap();
    let seg = segment(1, 6, 3, 4, 100);
    store(&s, &name, seg.clone()).await.unwrap();
    let out = dir.path().join("restored.db");
    let summary = s
        .restore_to_path(&name, RestoreOptions::Latest, &out, None)
        .await
        .unwrap();
    assert_eq!(
        fs::read(&out).unwrap().len(),
        summary.db_pages as usize * conformance::PAGE
    );

    let before = fs::read(&out).unwrap();
    let err = s
        .restore_to_path(&name, RestoreOptions::Latest, &out, None)
        .await
        .unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("already exists"),
        "{err}"
    );
    assert_eq!(fs::read(&out).unwrap(), before);

    // A corrupt segment: an error naming it, and nothing at the output path.
    let path = seg_path(&dir.path().join("store"), "to-path", &seg);
    let mut bytes = fs::read(&path).unwrap();
    bytes[300] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let out2 = dir.path().join("second.db");
    let err = s
        .restore_to_path(&name, RestoreOptions::Latest, &out2, None)
        .await
        .unwrap_err();
    assert!(
        err.is_corrupt() && err.to_string().contains(&seg.key().to_string()),
        "{err}"
    );
    assert!(!out2.exists());
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}"); // store/ and restored.db
}

/// Older segments are read frame by frame through their indexes: a damaged frame that
/// restore does not need is never read; a damaged frame it needs is an error naming
/// the segment, with nothing at the output path.
#[tokio::test]
async fn restore_reads_only_the_frames_it_needs_and_verifies_each() {
    use chrono::{TimeZone, Utc};
    use walvault::SegmentBuilder;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let name = ns("frames");
    let s = LocalStorage::open(&root).unwrap();
    let at = |ms| Utc.timestamp_millis_opt(ms).unwrap();
    let page = |p: u32, v: u8| vec![v.wrapping_add(p as u8); 512];
    // Older: pages 1..=4 (frames 1..=4). Newer: pages 1 and 2 again (frames 5, 6).
    let mut b = SegmentBuilder::new(1, 512).unwrap();
    for p in 1..4 {
        b.append_frame(p, &page(p, 10)).unwrap();
    }
    b.append_commit(4, &page(4, 10), 4, at(1_000)).unwrap();
    let older = b.seal(at(1_001)).unwrap();
    b.append_frame(1, &page(1, 20)).unwrap();
    b.append_commit(2, &page(2, 20), 4, at(2_000)).unwrap();
    let newer = b.seal(at(2_001)).unwrap();
    store(&s, &name, older.clone()).await.unwrap();
    store(&s, &name, newer.clone()).await.unwrap();

    let frames = s
        .fetch_frames(&name, &older.key(), &[2, 3], None)
        .await
        .unwrap();
    let pages: Vec<u32> = frames.iter().map(|(p, _)| *p).collect();
    assert_eq!(pages, [3, 4]);
    assert_eq!(&frames[0].1[..], &page(3, 10)[..]);

    let expected: Vec<u8> = [page(1, 20), page(2, 20), page(3, 10), page(4, 10)].concat();
    let path = seg_path(&root, "frames", &older);
    let good = fs::read(&path).unwrap();
    let frame_len = 24 + 512;
    // Damage frame 0 (page 1, superseded by the newer segment): restore never reads it.
    let mut bad = good.clone();
    bad[128 + 30] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    let out = dir.path().join("a.db");
    s.restore_to_path(&name, RestoreOptions::Latest, &out, None)
        .await
        .unwrap();
    assert_eq!(fs::read(&out).unwrap(), expected);
    // Damage frame 2 (page 3, needed): an error naming the segment, nothing written.
    let mut bad = good.clone();
    bad[128 + 2 * frame_len + 30] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    let out = dir.path().join("b.db");
    let err = s
        .restore_to_path(&name, RestoreOptions::Latest, &out, None)
        .await
        .unwrap_err();
    assert!(
        err.is_corrupt() && err.to_string().contains(&older.key().to_string()),
        "{err}"
    );
    assert!(!out.exists());
}

/// Garbage collection deletes old orphans, but never one above the durable frame
/// number: it may be a store that crashed before its manifest edit, which the writer
/// re-submits by reusing the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_orphans_a_writer_may_still_resubmit() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path()).unwrap();
    let name = ns("orphans");
    for seg in history().into_iter().take(2) {
        store(&storage, &name, seg).await.unwrap();
    }
    let durable = storage.durable_frame_no(&name, None).await.unwrap();
    let pending = segment(durable + 1, 4, 2, 4, 9_000);
    let stale = segment(3, 2, 2, 4, 1_500);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for seg in [&pending, &stale] {
        let path = dir
            .path()
            .join("orphans")
            .join(format!("{}.seg", seg.key()));
        std::fs::write(&path, seg.encoded()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let hour = walvault::GcOptions {
        grace: std::time::Duration::from_secs(3600),
        dry_run: false,
    };
    let report = storage.collect_garbage(&name, hour, None).await.unwrap();
    assert_eq!(report.orphans, vec![stale.key()]);
    assert_eq!(report.waiting, 1);
    // The writer re-submits the pending one: stored, and readable.
    store(&storage, &name, pending.clone()).await.unwrap();
    let read = storage
        .fetch_segment_data(&name, &pending.key(), None)
        .await
        .unwrap();
    assert_eq!(read.encoded(), pending.encoded());
}

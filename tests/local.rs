//! Behaviour specific to the local filesystem backend: crash leftovers, foreign files,
//! damaged files, per-call root overrides.

mod conformance;

use std::fs;
use std::future::Future;
use std::path::Path;

use conformance::{list, ns, segment, store};
use walvault::{FindSegmentReq, LocalConfig, LocalStorage, NoStorage, SealedSegment, Storage};

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
    // Simulate the crash image: the second segment's file exists, its manifest record
    // was torn half-way through.
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

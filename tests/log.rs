//! The log writer end to end over real files: waits at every level, sealing, reads,
//! recovery after an unclean stop, torn tails, gaps, a clock that goes backwards, and a
//! failing backend.

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use walvault::{
    Clock, Durability, Faults, FaultyStorage, LocalStorage, LogConfig, LogWriter, NamespaceName,
    RestoreOptions, SchedulerConfig, Storage, StoreScheduler,
};

const PAGE: usize = 512;

fn ns() -> NamespaceName {
    NamespaceName::new("app").unwrap()
}

fn page(txn: u64, page_no: u32) -> Vec<u8> {
    let mut p = vec![(txn as u8) ^ (page_no as u8); PAGE];
    p[..8].copy_from_slice(&txn.to_le_bytes());
    p[8..12].copy_from_slice(&page_no.to_le_bytes());
    p
}

/// Transaction `txn` writes pages `txn % 7 + 1` and `txn % 5 + 1` of an 8-page database.
fn txn_pages(txn: u64) -> Vec<(u32, Vec<u8>)> {
    let a = (txn % 7) as u32 + 1;
    let b = (txn % 5) as u32 + 1;
    let mut pages = vec![(a, page(txn, a))];
    if b != a {
        pages.push((b, page(txn, b)));
    }
    pages
}

fn config(dir: &std::path::Path) -> LogConfig {
    LogConfig {
        page_size: PAGE as u32,
        seal_frames: 16,
        ..LogConfig::new(dir.join("log"))
    }
}

async fn append<S: Storage + Clone>(log: &mut LogWriter<S>, txn: u64) -> walvault::Appended {
    let pages = txn_pages(txn);
    let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    log.append(&refs, 8).unwrap()
}

/// A local store under `dir` and a log writing to it.
async fn open_local(dir: &std::path::Path) -> (LocalStorage, LogWriter<LocalStorage>) {
    let storage = LocalStorage::open(dir.join("store")).unwrap();
    let log = LogWriter::open(storage.clone(), ns(), config(dir))
        .await
        .unwrap();
    (storage, log)
}

/// Creates the database, then appends transactions `1..=upto`; returns the last.
async fn write_db<S: Storage + Clone>(log: &mut LogWriter<S>, upto: u64) -> walvault::Appended {
    let mut last = create_db(log).await;
    for txn in 1..=upto {
        last = append(log, txn).await;
    }
    last
}

/// The first transaction creates all 8 pages.
async fn create_db<S: Storage + Clone>(log: &mut LogWriter<S>) -> walvault::Appended {
    let pages: Vec<(u32, Vec<u8>)> = (1..=8).map(|p| (p, page(0, p))).collect();
    let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    log.append(&refs, 8).unwrap()
}

/// The database after transactions `0..=upto` (0 creates it).
fn model(upto: u64) -> Vec<u8> {
    let mut db: Vec<Vec<u8>> = (1..=8).map(|p| page(0, p)).collect();
    for txn in 1..=upto {
        for (p, data) in txn_pages(txn) {
            db[p as usize - 1] = data;
        }
    }
    db.concat()
}

async fn soon<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("no wait may hang")
}

#[tokio::test]
async fn waits_reads_and_restores_at_every_level() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut log) = open_local(dir.path()).await;
    let last = write_db(&mut log, 40).await;
    assert!(soon(last.wait(Durability::Written)).await.unwrap() >= last.commit_frame_no());
    assert!(log.checkpointable_frame_no() <= log.tracker().watermark(Durability::Durable));
    // Reads see the newest version as of any frame, from wherever it lives.
    let (frame_no, data) = log
        .read_page(3, last.commit_frame_no())
        .await
        .unwrap()
        .unwrap();
    assert!(frame_no <= last.commit_frame_no());
    assert_eq!(&data[..], &model(40)[2 * PAGE..3 * PAGE]);
    log.seal().unwrap();
    soon(last.wait(Durability::Durable)).await.unwrap();
    assert_eq!(log.checkpointable_frame_no(), last.commit_frame_no());
    let (_, data) = log
        .read_page(3, last.commit_frame_no())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&data[..], &model(40)[2 * PAGE..3 * PAGE]);
    let mut out = Cursor::new(Vec::new());
    storage
        .restore(&ns(), RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert_eq!(out.into_inner(), model(40));
    assert!(
        storage.list_segments(&ns(), 0, None).next_count().await > 2,
        "sealed by frame count"
    );
    log.close().await.unwrap();
}

trait CountStream {
    async fn next_count(self) -> usize;
}

impl<T: tokio_stream::Stream + Send> CountStream for T {
    async fn next_count(self) -> usize {
        use tokio_stream::StreamExt;
        let stream = self;
        tokio::pin!(stream);
        let mut n = 0;
        while stream.next().await.is_some() {
            n += 1;
        }
        n
    }
}

#[tokio::test]
async fn an_unclean_stop_loses_nothing_written_and_leaves_a_recorded_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut log) = open_local(dir.path()).await;
    let last = write_db(&mut log, 10).await;
    soon(last.wait(Durability::Written)).await.unwrap();
    let next_before = log.next_frame_no();
    drop(log); // no seal, no close: the open segment is only in its file

    let mut log = LogWriter::open(storage.clone(), ns(), config(dir.path()))
        .await
        .unwrap();
    assert!(
        log.next_frame_no() > next_before,
        "frame numbers are never reused"
    );
    assert!(
        !log.gaps().is_empty(),
        "the unused reservation is a recorded gap"
    );
    assert_eq!(
        log.tracker().watermark(Durability::Written),
        last.commit_frame_no()
    );
    // Recovered frames are re-submitted and become durable.
    soon(
        log.tracker()
            .wait(last.commit_frame_no(), Durability::Durable),
    )
    .await
    .unwrap();
    let next = append(&mut log, 11).await;
    assert!(next.frames.start >= next_before);
    log.seal().unwrap();
    soon(next.wait(Durability::Durable)).await.unwrap();
    let mut out = Cursor::new(Vec::new());
    storage
        .restore(&ns(), RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert_eq!(out.into_inner(), model(11));
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_torn_transaction_is_dropped_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut log) = open_local(dir.path()).await;
    let created = create_db(&mut log).await;
    soon(created.wait(Durability::Written)).await.unwrap();
    drop(log);
    // A crash mid-append: half a record after the last commit.
    let wal = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::metadata(p).unwrap().len() > 40 && p.extension().is_some_and(|e| e == "wal")
        })
        .unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend_from_slice(&[0xAB; 200]);
    std::fs::write(&wal, bytes).unwrap();
    let log = LogWriter::open(storage.clone(), ns(), config(dir.path()))
        .await
        .unwrap();
    soon(
        log.tracker()
            .wait(created.commit_frame_no(), Durability::Durable),
    )
    .await
    .unwrap();
    let mut out = Cursor::new(Vec::new());
    storage
        .restore(&ns(), RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert_eq!(out.into_inner(), model(0));
    log.close().await.unwrap();
}

#[derive(Debug)]
struct Backwards(Mutex<i64>);

impl Clock for Backwards {
    fn now(&self) -> DateTime<Utc> {
        let mut t = self.0.lock().unwrap();
        *t -= 1_000;
        Utc.timestamp_millis_opt(*t).unwrap()
    }
}

#[tokio::test]
async fn commit_times_never_go_backwards_whatever_the_clock_does() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let clock = Arc::new(Backwards(Mutex::new(1_800_000_000_000)));
    let config = LogConfig {
        clock,
        ..config(dir.path())
    };
    let mut log = LogWriter::open(storage.clone(), ns(), config)
        .await
        .unwrap();
    let mut times = vec![create_db(&mut log).await.timestamp];
    for txn in 1..=5 {
        times.push(append(&mut log, txn).await.timestamp);
    }
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    log.seal().unwrap();
    log.close().await.unwrap();
}

#[tokio::test]
async fn bad_transactions_are_refused_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let mut log = LogWriter::open(storage, ns(), config(dir.path()))
        .await
        .unwrap();
    let good = page(1, 1);
    let short = vec![0u8; 100];
    assert!(log.append(&[], 1).unwrap_err().is_invalid_input());
    assert!(log.append(&[(1, &good)], 0).unwrap_err().is_invalid_input());
    assert!(log.append(&[(0, &good)], 1).unwrap_err().is_invalid_input());
    assert!(log
        .append(&[(1, &short)], 1)
        .unwrap_err()
        .is_invalid_input());
    let ok = log.append(&[(1, &good)], 1).unwrap();
    assert_eq!(ok.frames, 1..2);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_failing_backend_wakes_durable_waiters_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStorage::open(dir.path().join("store")).unwrap();
    let faulty = FaultyStorage::new(
        local,
        Faults {
            fail_from: Some(1),
            ..Faults::default()
        },
    );
    let config_s = SchedulerConfig {
        max_retries: 2,
        initial_backoff: Duration::from_millis(1),
        ..SchedulerConfig::default()
    };
    let scheduler = StoreScheduler::new(faulty, config_s).unwrap();
    let mut log = LogWriter::open(scheduler, ns(), config(dir.path()))
        .await
        .unwrap();
    let created = create_db(&mut log).await;
    soon(created.wait(Durability::Written)).await.unwrap();
    log.seal().unwrap();
    let err = soon(created.wait(Durability::Durable)).await.unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_eq!(
        log.checkpointable_frame_no(),
        0,
        "nothing durable, nothing checkpointable"
    );
    assert!(log.close().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_logs_share_one_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalStorage::open(dir.path().join("store")).unwrap();
    let scheduler = StoreScheduler::new(local.clone(), SchedulerConfig::default()).unwrap();
    let mut writers = Vec::new();
    for i in 0..8 {
        let scheduler = scheduler.clone();
        let root = dir.path().join(format!("log-{i}"));
        writers.push(tokio::spawn(async move {
            let name = NamespaceName::new(&format!("db-{i}")).unwrap();
            let config = LogConfig {
                page_size: PAGE as u32,
                seal_frames: 8,
                ..LogConfig::new(root)
            };
            let mut log = LogWriter::open(scheduler, name, config).await.unwrap();
            let last = write_db(&mut log, 30).await;
            log.seal().unwrap();
            soon(last.wait(Durability::Durable)).await.unwrap();
            log.close().await.unwrap();
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for i in 0..8 {
        let name = NamespaceName::new(&format!("db-{i}")).unwrap();
        let mut out = Cursor::new(Vec::new());
        local
            .restore(&name, RestoreOptions::Latest, &mut out, None)
            .await
            .unwrap();
        assert_eq!(out.into_inner(), model(30));
    }
}

#[tokio::test]
async fn a_storage_that_keeps_nothing_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogWriter::open(walvault::NoStorage, ns(), config(dir.path()))
        .await
        .unwrap();
    for txn in 0..40 {
        let a = if txn == 0 {
            create_db(&mut log).await
        } else {
            append(&mut log, txn).await
        };
        soon(a.wait(Durability::Written)).await.unwrap();
    }
    log.seal().unwrap();
    let last = append(&mut log, 41).await;
    log.seal().unwrap();
    assert_eq!(
        soon(last.wait(Durability::Durable)).await.unwrap(),
        last.commit_frame_no()
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn no_wait_hangs_after_close_or_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, mut log) = open_local(dir.path()).await;
    let created = create_db(&mut log).await;
    drop(log); // never sealed: its frames will not become durable in this process
    assert!(soon(created.wait(Durability::Durable)).await.is_err());

    let mut log = LogWriter::open(storage, ns(), config(dir.path()))
        .await
        .unwrap();
    let next = append(&mut log, 1).await;
    let tracker = log.tracker().clone();
    log.close().await.unwrap();
    assert!(soon(next.wait(Durability::Durable)).await.is_ok());
    let err = soon(tracker.wait(next.commit_frame_no() + 1, Durability::Written))
        .await
        .unwrap_err();
    assert!(matches!(err, walvault::Error::Closed), "{err}");
}

#[tokio::test]
async fn files_after_a_hole_are_dropped_not_stitched_on() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let cfg = || LogConfig {
        seal_frames: 1_000,
        ..config(dir.path())
    };
    // A storage that never finishes, so the sealed file stays on disk.
    let stuck = FaultyStorage::new(
        walvault::MemoryStorage::new(),
        Faults {
            delay: Duration::from_secs(3600),
            ..Faults::default()
        },
    );
    let mut log = LogWriter::open(stuck, ns(), cfg()).await.unwrap();
    let created = create_db(&mut log).await;
    for txn in 1..=3 {
        append(&mut log, txn).await;
    }
    log.seal().unwrap();
    let mut later = None;
    for txn in 4..=6 {
        later = Some(append(&mut log, txn).await);
    }
    soon(later.unwrap().wait(Durability::Written))
        .await
        .unwrap();
    drop(log);
    // Simulate a machine crash that kept the second file but lost the first one's tail.
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "wal") && std::fs::metadata(p).unwrap().len() > 40
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let first = std::fs::read(&files[0]).unwrap();
    let keep = 40 + 8 * (40 + PAGE); // the first transaction (8 pages) only
    std::fs::write(&files[0], &first[..keep]).unwrap();

    let log = LogWriter::open(storage, ns(), cfg()).await.unwrap();
    assert_eq!(
        log.tracker().watermark(Durability::Written),
        created.commit_frame_no()
    );
    let (_, page3) = log.read_page(3, u64::MAX - 1).await.unwrap().unwrap();
    assert_eq!(page3, page(0, 3), "the lost tail stays lost");
    let (_, page5) = log.read_page(5, u64::MAX - 1).await.unwrap().unwrap();
    assert_eq!(page5, page(0, 5), "nothing from after the hole survives");
    log.close().await.unwrap();
}

/// A log directory holding frames that are not durable yet for one namespace refuses to
/// serve another (they would be shipped into the wrong history); once they are durable
/// it changes hands, and the new namespace gets none of the old one's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_directory_serves_one_namespace_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let other = NamespaceName::new("other").unwrap();
    // A storage that never finishes: the frames stay pending in the directory.
    let stuck = FaultyStorage::new(
        storage.clone(),
        Faults {
            delay: Duration::from_secs(3600),
            ..Faults::default()
        },
    );
    let mut log = LogWriter::open(stuck, ns(), config(dir.path()))
        .await
        .unwrap();
    let last = create_db(&mut log).await;
    soon(last.wait(Durability::Written)).await.unwrap();
    drop(log);

    let err = LogWriter::open(storage.clone(), other.clone(), config(dir.path()))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("namespace app") && message.contains("not durable"),
        "{message}"
    );

    // Its owner ships them; then the directory may serve another namespace.
    let log = LogWriter::open(storage.clone(), ns(), config(dir.path()))
        .await
        .unwrap();
    soon(log.wait(last.commit_frame_no(), Durability::Durable))
        .await
        .unwrap();
    log.close().await.unwrap();
    let mut log = LogWriter::open(storage.clone(), other.clone(), config(dir.path()))
        .await
        .unwrap();
    assert_eq!(storage.durable_frame_no(&other, None).await.unwrap(), 0);
    let first = append(&mut log, 1).await;
    assert!(
        first.frames.start > last.commit_frame_no(),
        "frame numbers never repeat"
    );
    log.seal().unwrap();
    soon(first.wait(Durability::Durable)).await.unwrap();
    log.close().await.unwrap();
    let app_durable = storage.durable_frame_no(&ns(), None).await.unwrap();
    assert_eq!(app_durable, last.commit_frame_no());
}

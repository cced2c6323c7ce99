use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};

use super::*;
use crate::format::SegmentBuilder;
use crate::storage::{Faults, FaultyStorage, MemoryStorage};

fn ns(name: &str) -> NamespaceName {
    NamespaceName::new(name).unwrap()
}

/// Segment `i` of a log of two-frame segments.
fn segment(i: u64) -> SealedSegment {
    let at = Utc.timestamp_millis_opt(1_000 + i as i64).unwrap();
    let mut b = SegmentBuilder::new(i * 2 + 1, 512).unwrap();
    b.append_frame(1, &[i as u8; 512]).unwrap();
    b.append_commit(2, &[!(i as u8); 512], 2, at).unwrap();
    b.seal(at).unwrap()
}

fn quick(config: SchedulerConfig) -> SchedulerConfig {
    SchedulerConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..config
    }
}

fn faulty(faults: Faults) -> FaultyStorage<MemoryStorage> {
    FaultyStorage::new(MemoryStorage::new(), faults)
}

async fn soon<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("nothing may hang")
}

#[tokio::test]
async fn stores_return_at_once_and_become_durable_in_order() {
    let backend = faulty(Faults {
        delay: Duration::from_millis(30),
        ..Faults::default()
    });
    let s = StoreScheduler::new(backend, SchedulerConfig::default()).unwrap();
    let name = ns("ordered");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    for i in 0..5 {
        let seen = seen.clone();
        s.store(
            &name,
            segment(i),
            None,
            on_store(move |d| async move { seen.lock().unwrap().push(d) }),
        )
        .await
        .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(30),
        "store waited for the upload"
    );
    assert!(s.durable_frame_no(&name, None).await.unwrap() < 10);
    let tracker = s.tracker(&name).await.unwrap();
    assert_eq!(
        soon(tracker.wait(10, Durability::Durable)).await.unwrap(),
        10
    );
    soon(async {
        while seen.lock().unwrap().len() < 5 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), [2, 4, 6, 8, 10]);
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_reported_durable_early_under_random_faults() {
    let seed = std::env::var("WALVAULT_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1234_5678);
    println!("fault seed: {seed} (replay with WALVAULT_FAULT_SEED)");
    let backend = faulty(Faults {
        fail_fraction: 0.3,
        seed,
        ..Faults::default()
    });
    let inner = backend.inner().clone();
    let config = quick(SchedulerConfig {
        max_retries: 60,
        max_concurrent_uploads: 3,
        ..SchedulerConfig::default()
    });
    let s = StoreScheduler::new(backend, config).unwrap();
    let mut writers = Vec::new();
    for t in 0..4 {
        let (s, inner) = (s.clone(), inner.clone());
        writers.push(tokio::spawn(async move {
            let name = ns(&format!("random-{t}"));
            let seen = Arc::new(Mutex::new(Vec::new()));
            for i in 0..25 {
                let (seen, inner, name2) = (seen.clone(), inner.clone(), name.clone());
                let check = on_store(move |d| async move {
                    // The backend must already hold everything up to `d`.
                    let stored = inner.durable_frame_no(&name2, None).await.unwrap();
                    assert!(stored >= d, "reported {d} durable, backend has {stored}");
                    seen.lock().unwrap().push(d);
                });
                s.store(&name, segment(i), None, check).await.unwrap();
            }
            let tracker = s.tracker(&name).await.unwrap();
            soon(tracker.wait(50, Durability::Durable)).await.unwrap();
            soon(async {
                while seen.lock().unwrap().len() < 25 {
                    tokio::task::yield_now().await;
                }
            })
            .await;
            let seen = seen.lock().unwrap().clone();
            assert_eq!(
                seen,
                (1..=25).map(|i| i * 2).collect::<Vec<_>>(),
                "seed {seed}"
            );
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        s.backend().store_calls() > 100,
        "faults were injected and retried"
    );
}

#[tokio::test]
async fn retries_recover_from_transient_failures() {
    let backend = faulty(Faults {
        fail_calls: vec![1, 2, 3],
        ..Faults::default()
    });
    let s = StoreScheduler::new(backend, quick(SchedulerConfig::default())).unwrap();
    let name = ns("transient");
    s.store(&name, segment(0), None, on_store(|_| async {}))
        .await
        .unwrap();
    let tracker = s.tracker(&name).await.unwrap();
    assert_eq!(soon(tracker.wait(2, Durability::Durable)).await.unwrap(), 2);
    assert_eq!(s.backend().store_calls(), 4);
}

#[tokio::test]
async fn retries_stop_at_the_limit_and_the_namespace_reports_its_failure() {
    let backend = faulty(Faults {
        fail_from: Some(1),
        ..Faults::default()
    });
    let config = quick(SchedulerConfig {
        max_retries: 3,
        ..SchedulerConfig::default()
    });
    let s = StoreScheduler::new(backend, config).unwrap();
    let name = ns("broken");
    let called = Arc::new(Mutex::new(false));
    let flag = called.clone();
    s.store(
        &name,
        segment(0),
        None,
        on_store(move |_| async move { *flag.lock().unwrap() = true }),
    )
    .await
    .unwrap();
    let tracker = s.tracker(&name).await.unwrap();
    let err = soon(tracker.wait(2, Durability::Durable))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert_eq!(s.backend().store_calls(), 4, "one try and three retries");
    assert!(s
        .durable_frame_no(&name, None)
        .await
        .unwrap_err()
        .to_string()
        .contains("injected"));
    assert!(s
        .store(&name, segment(1), None, on_store(|_| async {}))
        .await
        .is_err());
    assert!(
        !*called.lock().unwrap(),
        "a failed store never reports durability"
    );
}

#[tokio::test]
async fn errors_that_retrying_cannot_fix_fail_at_once() {
    let s =
        StoreScheduler::new(faulty(Faults::default()), quick(SchedulerConfig::default())).unwrap();
    let name = ns("rejected");
    s.store(&name, segment(1), None, on_store(|_| async {}))
        .await
        .unwrap();
    s.store(&name, segment(0), None, on_store(|_| async {}))
        .await
        .unwrap(); // out of order
    let tracker = s.tracker(&name).await.unwrap();
    let err = soon(tracker.wait(100, Durability::Durable))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    assert_eq!(s.backend().store_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_respect_the_global_limit() {
    let backend = faulty(Faults {
        delay: Duration::from_millis(20),
        ..Faults::default()
    });
    let config = SchedulerConfig {
        max_concurrent_uploads: 2,
        ..SchedulerConfig::default()
    };
    let s = StoreScheduler::new(backend, config).unwrap();
    for t in 0..8 {
        for i in 0..3 {
            s.store(
                &ns(&format!("lane-{t}")),
                segment(i),
                None,
                on_store(|_| async {}),
            )
            .await
            .unwrap();
        }
    }
    for t in 0..8 {
        let tracker = s.tracker(&ns(&format!("lane-{t}"))).await.unwrap();
        soon(tracker.wait(6, Durability::Durable)).await.unwrap();
    }
    assert_eq!(s.backend().max_in_flight(), 2);
}

#[tokio::test]
async fn a_writer_that_outruns_the_backend_waits() {
    let backend = faulty(Faults {
        delay: Duration::from_millis(40),
        ..Faults::default()
    });
    let config = SchedulerConfig {
        queue_depth: 2,
        ..SchedulerConfig::default()
    };
    let s = StoreScheduler::new(backend, config).unwrap();
    let name = ns("pressure");
    let started = Instant::now();
    for i in 0..7 {
        s.store(&name, segment(i), None, on_store(|_| async {}))
            .await
            .unwrap();
    }
    // Two queued and one uploading at most: the last four stores each waited for an upload.
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_returns_by_its_deadline_and_reports_what_was_not_stored() {
    let backend = faulty(Faults {
        delay: Duration::from_secs(30),
        ..Faults::default()
    });
    let s = StoreScheduler::new(backend, SchedulerConfig::default()).unwrap();
    let name = ns("stuck");
    for i in 0..3 {
        s.store(&name, segment(i), None, on_store(|_| async {}))
            .await
            .unwrap();
    }
    let tracker = s.tracker(&name).await.unwrap();
    let waiter = tokio::spawn(tracker.wait(6, Durability::Durable));
    let started = Instant::now();
    let report = s.shutdown_within(Duration::from_millis(100)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let keys: Vec<_> = report
        .not_stored
        .iter()
        .map(|(_, k)| k.end_frame_no)
        .collect();
    assert_eq!(keys, [2, 4, 6]);
    assert!(matches!(soon(waiter).await.unwrap(), Err(Error::Closed)));
    assert!(matches!(
        s.store(&name, segment(3), None, on_store(|_| async {}))
            .await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn shutdown_drains_the_queue_when_it_can() {
    let backend = faulty(Faults {
        delay: Duration::from_millis(5),
        ..Faults::default()
    });
    let s = StoreScheduler::new(backend, SchedulerConfig::default()).unwrap();
    let name = ns("drain");
    let last = Arc::new(Mutex::new(0));
    for i in 0..5 {
        let last = last.clone();
        let report = on_store(move |d| async move { *last.lock().unwrap() = d });
        s.store(&name, segment(i), None, report).await.unwrap();
    }
    let report = s.shutdown_within(Duration::from_secs(5)).await;
    assert!(report.not_stored.is_empty(), "{report:?}");
    assert_eq!(
        *last.lock().unwrap(),
        10,
        "every queued segment was stored and reported"
    );
}

#[tokio::test]
async fn a_panicking_callback_does_not_stop_the_lane() {
    let s = StoreScheduler::new(faulty(Faults::default()), SchedulerConfig::default()).unwrap();
    let name = ns("panicky");
    s.store(
        &name,
        segment(0),
        None,
        on_store(|_| async { panic!("callback bug") }),
    )
    .await
    .unwrap();
    let seen = Arc::new(Mutex::new(None));
    let flag = seen.clone();
    s.store(
        &name,
        segment(1),
        None,
        on_store(move |d| async move { *flag.lock().unwrap() = Some(d) }),
    )
    .await
    .unwrap();
    let tracker = s.tracker(&name).await.unwrap();
    assert_eq!(soon(tracker.wait(4, Durability::Durable)).await.unwrap(), 4);
    soon(async {
        while seen.lock().unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[test]
fn only_transient_errors_are_retried() {
    let timed_out = Error::io("storing", std::io::ErrorKind::TimedOut.into());
    assert!(retryable(&timed_out));
    let denied = Error::io("storing", std::io::ErrorKind::PermissionDenied.into());
    for never in [
        denied,
        Error::Unsupported("no".into()),
        Error::NotFound("x".into()),
        Error::Closed,
    ] {
        assert!(!retryable(&never), "{never}");
    }
}

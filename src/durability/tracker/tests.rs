use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio_stream::StreamExt;

use super::*;
use crate::storage::on_store;

const LEVELS: [Durability; 3] = Durability::ALL;

async fn soon<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("no waiter may hang")
}

#[test]
fn watermarks_only_move_forward_and_lift_lower_levels() {
    let t = DurabilityTracker::new(0);
    t.advance(Durability::Applied, 10).unwrap();
    t.advance(Durability::Durable, 4).unwrap();
    assert_eq!(LEVELS.map(|l| t.watermark(l)), [10, 4, 4]);
    t.advance(Durability::Written, 12).unwrap();
    assert_eq!(LEVELS.map(|l| t.watermark(l)), [12, 12, 4]);
    let err = t.advance(Durability::Written, 11).unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("backwards"),
        "{err}"
    );
    assert_eq!(
        t.watermark(Durability::Written),
        12,
        "a backwards move is not applied"
    );
    assert!(Durability::Applied < Durability::Written && Durability::Written < Durability::Durable);
}

#[tokio::test]
async fn waits_resolve_when_their_frame_is_reached() {
    let t = DurabilityTracker::new(5);
    assert_eq!(soon(t.wait(5, Durability::Durable)).await.unwrap(), 5);
    let written = tokio::spawn(t.wait(8, Durability::Written));
    let durable = tokio::spawn(t.wait(8, Durability::Durable));
    tokio::task::yield_now().await;
    t.advance(Durability::Written, 9).unwrap();
    assert_eq!(soon(written).await.unwrap().unwrap(), 9);
    assert!(!durable.is_finished());
    t.advance(Durability::Durable, 8).unwrap();
    assert_eq!(soon(durable).await.unwrap().unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiters_wake_exactly_when_due_and_none_hangs() {
    let t = DurabilityTracker::new(0);
    let waits: Vec<_> = (1..=10_000u64)
        .map(|f| tokio::spawn(t.wait(f, Durability::Durable)))
        .collect();
    t.advance(Durability::Durable, 5_000).unwrap();
    let mut woken = 0;
    for (i, w) in waits.into_iter().enumerate() {
        let frame = i as u64 + 1;
        if frame <= 5_000 {
            assert_eq!(soon(w).await.unwrap().unwrap(), 5_000);
            woken += 1;
        } else {
            if frame == 5_001 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(!w.is_finished(), "frame {frame} woke early");
                t.close();
            }
            assert!(matches!(soon(w).await.unwrap(), Err(Error::Closed)));
        }
    }
    assert_eq!(woken, 5_000);
}

#[tokio::test]
async fn a_failure_reaches_every_waiter_with_its_reason() {
    let t = DurabilityTracker::new(0);
    let w = tokio::spawn(t.wait(3, Durability::Durable));
    tokio::task::yield_now().await;
    t.fail(Error::io(
        "uploading",
        std::io::Error::other("disk on fire"),
    ));
    let err = soon(w).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    let err = soon(t.wait(9, Durability::Applied)).await.unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(t.advance(Durability::Durable, 5).is_err());
    t.close(); // a later close keeps the first reason
    assert!(t.closed().unwrap().to_string().contains("disk on fire"));
}

#[tokio::test]
async fn callbacks_fire_once_each_in_frame_order() {
    let t = DurabilityTracker::new(0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    for frame in [5u64, 3, 9, 1] {
        let seen = seen.clone();
        t.on_durable(
            frame,
            on_store(move |d| async move { seen.lock().unwrap().push((frame, d)) }),
        )
        .unwrap();
    }
    t.advance(Durability::Durable, 4).unwrap();
    t.advance(Durability::Durable, 4).unwrap();
    t.advance(Durability::Durable, 10).unwrap();
    let late = seen.clone();
    t.on_durable(
        2,
        on_store(move |d| async move { late.lock().unwrap().push((2, d)) }),
    )
    .unwrap();
    soon(async {
        while seen.lock().unwrap().len() < 5 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        [(1, 4), (3, 4), (5, 10), (9, 10), (2, 10)]
    );
}

#[tokio::test]
async fn subscribers_see_the_watermark_grow_then_the_close_reason() {
    let t = DurabilityTracker::new(2);
    let mut s = t.subscribe();
    assert_eq!(soon(s.next()).await.unwrap().unwrap(), 2);
    t.advance(Durability::Durable, 3).unwrap();
    t.advance(Durability::Durable, 7).unwrap();
    let next = soon(s.next()).await.unwrap().unwrap();
    assert!(next == 3 || next == 7);
    t.close();
    let mut last = None;
    while let Some(item) = soon(s.next()).await {
        last = Some(item);
    }
    assert!(matches!(last, Some(Err(Error::Closed))));
}

#[derive(Debug, Clone)]
enum Op {
    Advance(usize, u64),
    Wait(usize, u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0usize..3, 0u64..60).prop_map(|(l, f)| Op::Advance(l, f)),
        (0usize..3, 0u64..60).prop_map(|(l, f)| Op::Wait(l, f)),
    ];
    prop::collection::vec(op, 1..80)
}

proptest! {
    /// Against a model: three numbers that only grow, with a move of one level lifting
    /// the lower ones; a wait is resolved exactly when the model says it is due.
    #[test]
    fn agrees_with_a_model(ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let t = DurabilityTracker::new(0);
            let mut model = [0u64; 3];
            let mut waits = Vec::new();
            for op in ops {
                match op {
                    Op::Advance(l, f) => {
                        let ok = t.advance(LEVELS[l], f).is_ok();
                        prop_assert_eq!(ok, f >= model[l]);
                        if ok {
                            for m in model.iter_mut().take(l + 1) {
                                *m = (*m).max(f);
                            }
                        }
                    }
                    Op::Wait(l, f) => waits.push((l, f, Box::pin(t.wait(f, LEVELS[l])))),
                }
                prop_assert_eq!(LEVELS.map(|l| t.watermark(l)), model);
            }
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            for (l, f, mut w) in waits {
                let done = w.as_mut().poll(&mut cx).is_ready();
                prop_assert_eq!(done, model[l] >= f, "level {} frame {}", l, f);
            }
            Ok(())
        })?;
    }
}

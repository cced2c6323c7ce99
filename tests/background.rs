//! The background maintainer, driven by a `ManualClock` over `MemoryStorage`: what is
//! due when, the bound on the segment count under a steady stream of seals, every
//! commit still restorable by frame and by time, and garbage collected only after the
//! grace period. No test sleeps except the one that spawns the real loop.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio_stream::StreamExt;
use walvault::{
    on_store, plan_restore, CompactionPolicy, Maintainer, MaintenanceConfig, ManualClock,
    MemoryStorage, NamespaceName, NoStorage, RestoreOptions, Schedule, SegmentBuilder, Storage,
    SystemClock, Task, Tier,
};

const PAGE_SIZE: usize = 512;
/// One-row inserts of 128 bytes: a new leaf page every 4 transactions.
const ROWS_PER_LEAF: u64 = 4;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap()
}

fn ns() -> NamespaceName {
    NamespaceName::new("app").unwrap()
}

/// The page image written to `page` by transaction `tx`.
fn image(page: u32, tx: u64) -> Vec<u8> {
    let mut data = vec![(tx % 251) as u8; PAGE_SIZE];
    data[..4].copy_from_slice(&page.to_le_bytes());
    data[4..12].copy_from_slice(&tx.to_le_bytes());
    data
}

/// The leaf page transaction `tx` inserts into (page 1 is the header page).
fn leaf(tx: u64) -> u32 {
    2 + (tx / ROWS_PER_LEAF) as u32
}

/// The database after transaction `tx`, as a model: every page's newest image.
fn model(tx: u64) -> Vec<u8> {
    let pages = leaf(tx);
    let mut db = vec![0u8; pages as usize * PAGE_SIZE];
    for t in 0..=tx {
        for page in [1, leaf(t)] {
            let at = (page as usize - 1) * PAGE_SIZE;
            db[at..at + PAGE_SIZE].copy_from_slice(&image(page, t));
        }
    }
    db
}

/// Seals transaction `tx` (frames `2tx+1`, `2tx+2`) at the clock's time, as the daemon
/// seals one segment per transaction group.
async fn seal(store: &MemoryStorage, clock: &ManualClock, tx: u64) {
    let at = walvault::Clock::now(clock);
    let mut b = SegmentBuilder::new(2 * tx + 1, PAGE_SIZE as u32).unwrap();
    b.append_frame(1, &image(1, tx)).unwrap();
    b.append_commit(leaf(tx), &image(leaf(tx), tx), leaf(tx), at)
        .unwrap();
    let segment = b.seal(at).unwrap();
    store
        .store(&ns(), segment, None, on_store(|_| async {}))
        .await
        .unwrap();
}

async fn count(store: &MemoryStorage) -> usize {
    store
        .list_segments(&ns(), 0, None)
        .collect::<Vec<_>>()
        .await
        .len()
}

async fn restored(store: &MemoryStorage, at: RestoreOptions) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    store.restore(&ns(), at, &mut out, None).await.unwrap();
    out.into_inner()
}

/// Small tiers so a few thousand seals exercise all three.
fn small_config() -> MaintenanceConfig {
    let tier = |secs, min_size, target_size, max_small| Tier {
        every: Duration::from_secs(secs),
        policy: CompactionPolicy {
            target_size,
            fan_in: 4,
            max_small,
            precision: Duration::ZERO,
            min_size,
        },
    };
    MaintenanceConfig {
        tiers: vec![
            tier(1, 0, 64 << 10, 4),
            tier(10, 32 << 10, 1 << 20, 4),
            tier(60, 512 << 10, 16 << 20, 2),
        ],
        collect_every: Duration::from_secs(60),
        grace: Duration::from_secs(300),
        retain: None,
    }
}

#[test]
fn each_task_is_due_one_period_after_it_last_ran() {
    let config = MaintenanceConfig::default();
    let t0 = start();
    let s = |secs: i64| t0 + chrono::Duration::seconds(secs);
    let mut schedule = Schedule::new(&config, t0);
    assert_eq!(schedule.due(t0), vec![]);
    assert_eq!(schedule.next_due(), Some(s(1)));
    assert_eq!(schedule.due(s(1)), vec![Task::Compact(0)]);
    schedule.ran(Task::Compact(0), s(2));
    assert_eq!(schedule.due(s(2)), vec![]);
    assert_eq!(schedule.due(s(3)), vec![Task::Compact(0)]);
    assert_eq!(
        schedule.due(s(60)),
        vec![Task::Compact(0), Task::Compact(1)]
    );
    assert_eq!(
        schedule.due(s(600)),
        vec![Task::Compact(0), Task::Compact(1), Task::Collect]
    );
    assert_eq!(
        schedule.due(s(3600)),
        vec![
            Task::Compact(0),
            Task::Compact(1),
            Task::Compact(2),
            Task::Collect
        ]
    );
    for task in schedule.due(s(3600)) {
        schedule.ran(task, s(3600));
    }
    assert_eq!(schedule.due(s(3600)), vec![]);
    assert_eq!(schedule.next_due(), Some(s(3601)));
    assert_eq!(
        schedule.due(s(3660)),
        vec![Task::Compact(0), Task::Compact(1)]
    );
    // A clock that steps back behind the last runs does not stall the tiers.
    assert_eq!(schedule.due(s(3599)).len(), 4);
}

#[test]
fn bad_configs_are_refused() {
    let mut zero_tier = MaintenanceConfig::default();
    zero_tier.tiers[1].every = Duration::ZERO;
    let mut bad_policy = MaintenanceConfig::default();
    bad_policy.tiers[0].policy.fan_in = 1;
    let zero_gc = MaintenanceConfig {
        collect_every: Duration::ZERO,
        ..Default::default()
    };
    for config in [zero_tier, bad_policy, zero_gc] {
        let clock = Arc::new(ManualClock::new(start()));
        let made = Maintainer::new(MemoryStorage::new(), ns(), config.clone(), clock);
        assert!(made.is_err(), "{config:?}");
    }
}

/// 10 seals a second for half an hour of the injected clock: the tiers keep the namespace
/// small throughout, and sampled commits restore by frame and by time to exactly the
/// model's database.
#[tokio::test]
async fn tiers_bound_the_segment_count_and_keep_every_commit() {
    let clock = ManualClock::new(start());
    let store = MemoryStorage::new().with_clock(Arc::new(clock.clone()));
    let mut maintainer =
        Maintainer::new(store.clone(), ns(), small_config(), Arc::new(clock.clone())).unwrap();
    let seals = 18_000u64;
    let (mut max_seen, mut merges, mut times) = (0, 0, Vec::new());
    for tx in 0..seals {
        clock.advance(Duration::from_millis(100));
        seal(&store, &clock, tx).await;
        times.push(walvault::Clock::now(&clock));
        if tx % 50 == 49 {
            // Just before the tiers run: the most segments there are.
            max_seen = max_seen.max(count(&store).await);
        }
        for report in maintainer.run_due().await {
            assert!(report.error.is_none(), "{report:?}");
            merges += report.merges;
        }
    }
    let end = count(&store).await;
    assert!(merges > 100, "{merges} merges");
    assert!(max_seen <= 30, "{max_seen} segments at the most");
    assert!(end <= 30, "{end} segments at the end");

    let plan = plan_restore(&store, &ns(), RestoreOptions::Latest, None)
        .await
        .unwrap();
    assert_eq!(plan.frame_no, 2 * seals);
    assert!(plan.segments.len() <= end);
    assert_eq!(
        restored(&store, RestoreOptions::Latest).await,
        model(seals - 1)
    );
    for tx in [0, 1, 2, 1_001, 12_345, seals - 2] {
        let by_frame = restored(&store, RestoreOptions::FrameNo(2 * tx + 2)).await;
        assert_eq!(by_frame, model(tx), "frame {}", 2 * tx + 2);
        let at = times[tx as usize];
        let by_time = restored(&store, RestoreOptions::Timestamp(at)).await;
        assert_eq!(by_time, model(tx), "time {at}");
        // Just before the commit, the state is the one before it.
        if tx > 0 {
            let before = at - chrono::Duration::milliseconds(1);
            let by_time = restored(&store, RestoreOptions::Timestamp(before)).await;
            assert_eq!(by_time, model(tx - 1), "time {before}");
        }
    }
}

/// Retired segments stay fetchable until the grace period has passed by the injected
/// clock, and are deleted by the next collection after that.
#[tokio::test]
async fn garbage_is_collected_only_after_the_grace_period() {
    let clock = ManualClock::new(start());
    let store = MemoryStorage::new().with_clock(Arc::new(clock.clone()));
    let config = small_config();
    let grace = config.grace;
    let maintainer = Maintainer::new(store.clone(), ns(), config, Arc::new(clock.clone())).unwrap();
    for tx in 0..40 {
        clock.advance(Duration::from_millis(100));
        seal(&store, &clock, tx).await;
    }
    let before: Vec<_> = store
        .list_segments(&ns(), 0, None)
        .map(|s| s.unwrap().key)
        .collect()
        .await;
    let compacted = maintainer.run(Task::Compact(0)).await;
    assert!(compacted.merges > 0, "{compacted:?}");
    assert!(count(&store).await < before.len());

    clock.advance(grace - Duration::from_secs(1));
    let early = maintainer.run(Task::Collect).await;
    assert!(early.error.is_none(), "{early:?}");
    assert_eq!(early.deleted, 0);
    for key in &before {
        store.fetch_segment_index(&ns(), key, None).await.unwrap();
    }

    clock.advance(Duration::from_secs(2));
    let late = maintainer.run(Task::Collect).await;
    assert!(late.deleted >= compacted.segments_merged, "{late:?}");
    let oldest = before.last().unwrap();
    let gone = store.fetch_segment_index(&ns(), oldest, None).await;
    assert!(gone.is_err(), "a retired segment is still there");
    assert_eq!(restored(&store, RestoreOptions::Latest).await, model(39));
}

/// A task that fails is reported and moved to its next due time; the others still run.
#[tokio::test]
async fn a_failed_task_is_reported_and_retried_at_its_next_due_time() {
    let clock = ManualClock::new(start());
    let config = MaintenanceConfig {
        collect_every: Duration::from_secs(5),
        ..MaintenanceConfig::default()
    };
    let mut maintainer = Maintainer::new(NoStorage, ns(), config, Arc::new(clock.clone())).unwrap();
    clock.advance(Duration::from_secs(5));
    let reports = maintainer.run_due().await;
    let tasks: Vec<_> = reports.iter().map(|r| r.task).collect();
    assert_eq!(tasks, vec![Task::Compact(0), Task::Collect]);
    let collect = &reports[1];
    assert!(collect.error.is_some(), "{collect:?}");
    assert!(maintainer.run_due().await.is_empty());
    clock.advance(Duration::from_secs(5));
    assert_eq!(maintainer.run_due().await.len(), 2);
}

/// The real loop, on the system clock: it compacts in the background and stops when
/// asked (a generous bound, not a timing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawned_loop_compacts_and_stops() {
    let clock = ManualClock::new(start());
    let store = MemoryStorage::new();
    for tx in 0..64 {
        clock.advance(Duration::from_millis(100));
        seal(&store, &clock, tx).await;
    }
    let mut config = small_config();
    config.tiers[0].every = Duration::from_millis(20);
    let maintainer = Maintainer::new(store.clone(), ns(), config, Arc::new(SystemClock)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = maintainer.spawn(move |report| {
        let _ = tx.send(report.merges);
    });
    let merged = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(merges) = rx.recv().await {
            if merges > 0 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(merged.ok(), Some(true), "no merge within 30 s");
    assert!(count(&store).await < 64);
    tokio::time::timeout(Duration::from_secs(30), handle.stop())
        .await
        .expect("the maintainer did not stop within 30 s");
    assert_eq!(restored(&store, RestoreOptions::Latest).await, model(63));
}

//! Durability-layer benchmarks: the allocator's hot path against an uncontended
//! `AtomicU64::fetch_add` in the same run, and waking one waiter with 10,000 registered.
//!
//! Run with `cargo bench --bench durability`. The waiter benchmark also prints its median
//! on a line starting with `median:`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use walvault::{Durability, DurabilityTracker, FrameAllocator, DEFAULT_BLOCK_SIZE};

mod common;
use common::bench_dir;

fn allocate(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = c.benchmark_group("allocate_one_frame");
    let counter = AtomicU64::new(1);
    g.bench_function("baseline_atomic_fetch_add", |b| {
        b.iter(|| black_box(&counter).fetch_add(1, Ordering::Relaxed))
    });
    // A block large enough that the measured loop never reserves: the hot path.
    let mut hot = FrameAllocator::open(dir.path().join("hot"), 1 << 40).unwrap();
    g.bench_function("hot_path", |b| {
        b.iter(|| black_box(&mut hot).allocate(1).unwrap())
    });
    // The default block: every 4096th call makes a reservation durable (fsyncs).
    let mut amortized =
        FrameAllocator::open(dir.path().join("amortized"), DEFAULT_BLOCK_SIZE).unwrap();
    g.bench_function("default_block_amortized", |b| {
        b.iter(|| black_box(&mut amortized).allocate(1).unwrap())
    });
    g.finish();
}

/// Registers a waiter for `frame` as its own task, reporting on `done` when it wakes.
fn register(t: &DurabilityTracker, frame: u64, done: &UnboundedSender<u64>) {
    let wait = t.wait(frame, Durability::Durable);
    let done = done.clone();
    tokio::spawn(async move {
        if wait.await.is_ok() {
            let _ = done.send(frame);
        }
    });
}

/// Advances the watermark by one frame, waking exactly one of the registered waiters,
/// and returns the time from the advance to that waiter's task running. It keeps 10,000
/// registered by adding one far ahead first, outside the timed part.
async fn wake_next(
    t: &DurabilityTracker,
    next: &mut u64,
    done: &UnboundedSender<u64>,
    woken: &mut UnboundedReceiver<u64>,
) -> Duration {
    register(t, *next + WAITERS, done);
    tokio::task::yield_now().await;
    let start = Instant::now();
    t.advance(Durability::Durable, *next).unwrap();
    let frame = woken.recv().await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(frame, *next);
    *next += 1;
    elapsed
}

const WAITERS: u64 = 10_000;

/// Runs on a current-thread runtime, so the figure is the tracker's and the scheduler's
/// work, not an operating-system thread wake-up.
fn wake_one(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = DurabilityTracker::new(0);
    let (done, mut woken) = unbounded_channel();
    let mut next = 1u64;
    rt.block_on(async {
        for frame in 1..=WAITERS {
            register(&t, frame, &done);
        }
        tokio::task::yield_now().await;
        let mut samples = Vec::new();
        for _ in 0..2_000 {
            samples.push(wake_next(&t, &mut next, &done, &mut woken).await);
        }
        samples.sort();
        println!(
            "median: wake one of {WAITERS} waiters: {:?} (p99 {:?})",
            samples[1_000], samples[1_980]
        );
    });
    c.bench_function("wake_one_of_10000_waiters", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += wake_next(&t, &mut next, &done, &mut woken).await;
                }
                total
            })
        })
    });
}

criterion_group!(benches, allocate, wake_one);
criterion_main!(benches);

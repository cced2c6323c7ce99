//! Background tiered compaction over a simulated day, on the injected clock.
//!
//! The daemon seals a segment about every 100 ms under steady writes. This drives a
//! `ManualClock` through `WALVAULT_SIM_HOURS` (default 24) hours of that cadence: each
//! 100 ms one segment is sealed and stored in `MemoryStorage`, then the background
//! maintainer (`MaintenanceConfig::default()`, every commit kept, grace 1 h) runs
//! whatever is due by the clock. At the end it counts the segments a restore of the
//! latest state reads (`plan_restore`), checks that restore against a model of the
//! database, and reports the write amplification and wall time.
//!
//! **What is scaled.** The load is 200 one-row transactions a second, about 20
//! per seal, of 4 KiB pages. Here each seal is ONE transaction of a 512-byte-page
//! database inserting a 128-byte row: it writes the header page and the current leaf,
//! and a new leaf every 4 transactions (so the database grows to a quarter page per
//! transaction and a restore of the latest state needs a page from nearly every
//! moment of history: the worst case for what a restore reads). The seal cadence and
//! the number of segments (864 000 a day) are the daemon's; the bytes per seal are
//! about 1/100 of the real load's (about 1.2 KiB against 20 × ~1.4 frames × 4 KiB).
//!
//! Run with `cargo bench --bench tiered`; `WALVAULT_SIM_HOURS=2` shortens it.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tokio_stream::StreamExt;
use walvault::{
    on_store, plan_restore, Clock, Maintainer, MaintenanceConfig, ManualClock, MemoryStorage,
    NamespaceName, RestoreOptions, SegmentBuilder, Storage,
};

mod common;

const PAGE_SIZE: usize = 512;
const ROWS_PER_LEAF: u64 = 4;
const SEAL_EVERY: Duration = Duration::from_millis(100);

fn image(page: u32, tx: u64) -> Vec<u8> {
    let mut data = vec![(tx % 251) as u8; PAGE_SIZE];
    data[..4].copy_from_slice(&page.to_le_bytes());
    data[4..12].copy_from_slice(&tx.to_le_bytes());
    data
}

fn leaf(tx: u64) -> u32 {
    2 + (tx / ROWS_PER_LEAF) as u32
}

/// The database after transaction `last`, built the way the writes built it.
fn model(last: u64) -> Vec<u8> {
    let mut db = vec![0u8; leaf(last) as usize * PAGE_SIZE];
    let mut put = |page: u32, tx: u64| {
        let at = (page as usize - 1) * PAGE_SIZE;
        db[at..at + PAGE_SIZE].copy_from_slice(&image(page, tx));
    };
    for tx in 0..=last {
        put(leaf(tx), tx);
    }
    put(1, last);
    db
}

async fn count(store: &MemoryStorage, ns: &NamespaceName) -> usize {
    store
        .list_segments(ns, 0, None)
        .collect::<Vec<_>>()
        .await
        .len()
}

fn main() {
    let hours: f64 = std::env::var("WALVAULT_SIM_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(24.0);
    let seals = (hours * 3600.0 * 10.0) as u64;
    common::rt().block_on(simulate(hours, seals));
}

async fn simulate(hours: f64, seals: u64) {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap());
    let store = MemoryStorage::new().with_clock(Arc::new(clock.clone()));
    let ns = NamespaceName::new("bench").unwrap();
    let config = MaintenanceConfig::default();
    let mut maintainer =
        Maintainer::new(store.clone(), ns.clone(), config, Arc::new(clock.clone())).unwrap();
    let (mut sealed_bytes, mut read, mut written, mut merges, mut max_seen) = (0u64, 0, 0, 0, 0);
    let mut failures = 0;
    let started = Instant::now();
    println!("tiered: {hours} h simulated, {seals} seals (one every 100 ms), one 2-frame transaction of 512-byte pages per seal");
    for tx in 0..seals {
        clock.advance(SEAL_EVERY);
        let at = clock.now();
        let mut b = SegmentBuilder::new(2 * tx + 1, PAGE_SIZE as u32).unwrap();
        b.append_frame(1, &image(1, tx)).unwrap();
        b.append_commit(leaf(tx), &image(leaf(tx), tx), leaf(tx), at)
            .unwrap();
        let segment = b.seal(at).unwrap();
        sealed_bytes += segment.encoded_len();
        store
            .store(&ns, segment, None, on_store(|_| async {}))
            .await
            .unwrap();
        if tx % 100 == 99 {
            // Sampled just before the tiers run (each 10 s of simulated time, when the
            // fast tier is due): the most segments there are between runs.
            max_seen = max_seen.max(count(&store, &ns).await);
        }
        for r in maintainer.run_due().await {
            failures += usize::from(r.error.is_some());
            merges += r.merges;
            read += r.bytes_read;
            written += r.bytes_written;
        }
        if (tx + 1) % 36_000 == 0 {
            println!(
                "tiered: hour {:>2}: {} segments now, {max_seen} at most so far; {:.0} MiB sealed, {:.0} MiB rewritten; {:.0} s wall",
                (tx + 1) / 36_000,
                count(&store, &ns).await,
                sealed_bytes as f64 / 1048576.0,
                written as f64 / 1048576.0,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let wall = started.elapsed();
    let segments = count(&store, &ns).await;
    let plan = plan_restore(&store, &ns, RestoreOptions::Latest, None)
        .await
        .unwrap();
    let restore_started = Instant::now();
    let mut out = Cursor::new(Vec::new());
    store
        .restore(&ns, RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    let restore_took = restore_started.elapsed();
    assert!(
        out.into_inner() == model(seals - 1),
        "the restored database differs from the model"
    );
    let midday = Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap()
        + chrono::Duration::milliseconds((seals as i64 * 100) / 2);
    let half = plan_restore(&store, &ns, RestoreOptions::Timestamp(midday), None)
        .await
        .unwrap();
    println!(
        "tiered: {segments} segments at the end, {max_seen} at most (sampled every 10 s of simulated time, just before the tiers run); \
         restore of latest reads {} segments ({:.1} MiB) and matches the model ({:.0} ms); \
         restore to half-way reads {}",
        plan.segments.len(),
        plan.bytes as f64 / 1048576.0,
        restore_took.as_secs_f64() * 1000.0,
        half.segments.len()
    );
    println!(
        "tiered: {merges} merges, {failures} failed tasks; {:.0} MiB sealed, {:.0} MiB read and {:.0} MiB written by merges = write amplification {:.2} (bytes written by merges / bytes sealed); without compaction: {seals} segments; {:.1} s wall",
        sealed_bytes as f64 / 1048576.0,
        read as f64 / 1048576.0,
        written as f64 / 1048576.0,
        written as f64 / sealed_bytes as f64,
        wall.as_secs_f64()
    );
}

//! Compaction on the local backend: 512 segments of 32 pages (4 KiB each, every page
//! distinct, so nothing is dropped and every byte is rewritten: 64 MiB) merged into one,
//! fsyncs included, beside a baseline in the same run: `std::fs::copy` of a 64 MiB file
//! plus an fsync of the copy.
//!
//! Run with `cargo bench --bench compaction`; besides criterion's report it prints a line
//! starting `compaction:`.

use std::fs::{self, File};
use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use walvault::{
    compact, on_store, CompactionPolicy, LocalStorage, NamespaceName, SegmentBuilder, Storage,
};

mod common;
use common::{bench_dir, rt};

const SEGMENTS: u64 = 512;
const PAGES: u64 = 32;
const PAGE_SIZE: usize = 4096;
const BYTES: u64 = SEGMENTS * PAGES * PAGE_SIZE as u64;
const MIB: f64 = (1 << 20) as f64;

/// A store holding the history, in a fresh directory.
fn history(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, LocalStorage, NamespaceName) {
    let dir = bench_dir();
    let storage = LocalStorage::open(dir.path()).unwrap();
    let ns = NamespaceName::new("bench").unwrap();
    rt.block_on(async {
        for s in 0..SEGMENTS {
            let mut b = SegmentBuilder::new(s * PAGES + 1, PAGE_SIZE as u32).unwrap();
            for p in 0..PAGES {
                let page_no = (s * PAGES + p + 1) as u32;
                let data = vec![(page_no % 251) as u8; PAGE_SIZE];
                let at = Utc.timestamp_millis_opt(1_000 + s as i64).unwrap();
                if p + 1 == PAGES {
                    b.append_commit(page_no, &data, page_no, at).unwrap();
                } else {
                    b.append_frame(page_no, &data).unwrap();
                }
            }
            let at = Utc.timestamp_millis_opt(1_000 + s as i64).unwrap();
            let segment = b.seal(at).unwrap();
            storage
                .store(&ns, segment, None, on_store(|_| async {}))
                .await
                .unwrap();
        }
    });
    (dir, storage, ns)
}

fn policy() -> CompactionPolicy {
    CompactionPolicy {
        target_size: 256 << 20,
        max_small: 1,
        ..CompactionPolicy::default()
    }
}

fn copy_baseline() -> Duration {
    let dir = bench_dir();
    let src = dir.path().join("src");
    let mut f = File::create(&src).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..BYTES >> 20 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    let start = Instant::now();
    fs::copy(&src, dir.path().join("dst")).unwrap();
    File::open(dir.path().join("dst"))
        .unwrap()
        .sync_all()
        .unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = rt();
    let mut group = c.benchmark_group("compaction");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Bytes(BYTES));
    let mut compacted = Vec::new();
    group.bench_function("merge 512 segments, 64 MiB, local", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (_dir, storage, ns) = history(&rt);
                let start = Instant::now();
                let report = rt
                    .block_on(compact(&storage, &ns, &policy(), false))
                    .unwrap();
                let took = start.elapsed();
                assert_eq!(report.segments_after, 1);
                compacted.push(took);
                total += took;
            }
            total
        })
    });
    let mut copies = Vec::new();
    group.bench_function("baseline: fs::copy + fsync, 64 MiB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let took = copy_baseline();
                copies.push(took);
                total += took;
            }
            total
        })
    });
    group.finish();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (merge, copy) = (median(&mut compacted), median(&mut copies));
    let rate = |d: Duration| BYTES as f64 / MIB / d.as_secs_f64();
    println!(
        "compaction: {:.1} MiB/s merging 512 segments into one vs {:.1} MiB/s fs::copy + fsync = {:.2} of the baseline",
        rate(merge),
        rate(copy),
        copy.as_secs_f64() / merge.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

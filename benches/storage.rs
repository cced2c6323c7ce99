//! Storage benchmarks: catalog lookups at 10^3 and 10^6 segments, opening a namespace of
//! 10^6 segments (time and memory per segment), and local stores of 8 MiB segments
//! against raw write+fsync of the same bytes in the same run.
//!
//! Run with `cargo bench --bench storage`. Memory per segment is printed as a line
//! starting with `memory:`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicIsize, Ordering};

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walvault::{
    write_manifest_for_bench, FindSegmentReq, LocalStorage, NamespaceName, SealedSegment,
    SegmentBuilder, SegmentInfo, SegmentKey, Storage,
};

mod common;
use common::{bench_dir, rt};

/// Counts live heap bytes, to measure the catalog's memory per segment.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A manifest of `n` one-frame segments, one second apart.
fn catalog_store(n: u64) -> (tempfile::TempDir, NamespaceName) {
    let dir = bench_dir();
    let name = NamespaceName::new("bench").unwrap();
    let entries = (1..=n)
        .map(|i| SegmentInfo {
            key: SegmentKey {
                start_frame_no: i * 10,
                end_frame_no: i * 10 + 9,
                timestamp: i * 1000,
            },
            size: 8 << 20,
            last_commit_ts: i * 1000 + 500,
        })
        .collect();
    write_manifest_for_bench(dir.path(), &name, entries).unwrap();
    (dir, name)
}

fn find_segment(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("find_segment");
    for n in [1_000u64, 1_000_000] {
        let (dir, name) = catalog_store(n);
        let storage = LocalStorage::open(dir.path()).unwrap();
        rt.block_on(storage.durable_frame_no(&name, None)).unwrap();
        let mut i = 0u64;
        g.bench_function(format!("containing/{n}"), |b| {
            b.iter(|| {
                i = (i + 7_919) % n;
                let req = FindSegmentReq::Containing(i * 10 + 15);
                rt.block_on(storage.find_segment(&name, req, None)).unwrap()
            })
        });
        g.bench_function(format!("timestamp/{n}"), |b| {
            b.iter(|| {
                i = (i + 7_919) % n;
                let t = Utc.timestamp_millis_opt((i * 1000 + 1200) as i64).unwrap();
                rt.block_on(storage.find_segment(&name, FindSegmentReq::Timestamp(t), None))
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn open_namespace(c: &mut Criterion) {
    let rt = rt();
    let n = 1_000_000u64;
    let (dir, name) = catalog_store(n);
    let before = LIVE.load(Ordering::Relaxed);
    let storage = LocalStorage::open(dir.path()).unwrap();
    rt.block_on(storage.durable_frame_no(&name, None)).unwrap();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "memory: open namespace of {n} segments holds {bytes} bytes = {:.1} bytes/segment",
        bytes as f64 / n as f64
    );
    drop(storage);
    let mut g = c.benchmark_group("open_namespace");
    g.sample_size(10);
    g.bench_function("replay_1000000_segments", |b| {
        b.iter(|| {
            let storage = LocalStorage::open(dir.path()).unwrap();
            black_box(rt.block_on(storage.durable_frame_no(&name, None)).unwrap())
        })
    });
    g.finish();
}

const SEGMENT_BYTES: usize = 8 << 20;

fn eight_mib_segment(start: u64) -> SealedSegment {
    let at = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
    let mut b = SegmentBuilder::new(start, 4096).unwrap();
    let page = vec![0x5a; 4096];
    let frames = SEGMENT_BYTES / (4096 + 24) - 1;
    for i in 0..frames as u32 {
        b.append_frame(i % 1000 + 1, &page).unwrap();
    }
    b.append_commit(1, &page, 1000, at).unwrap();
    b.seal(at).unwrap()
}

fn local_store(c: &mut Criterion) {
    let rt = rt();
    let dir = bench_dir();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let name = NamespaceName::new("bench").unwrap();
    let template = eight_mib_segment(1);
    let frames = u64::from(template.frame_count());
    let bytes = template.encoded().clone();
    let mut g = c.benchmark_group("store_8MiB_fsync");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.sample_size(20);
    let raw_dir = dir.path().join("raw");
    fs::create_dir(&raw_dir).unwrap();
    let mut n = 0u64;
    g.bench_function("baseline_raw_write_fsync", |b| {
        b.iter(|| {
            n += 1;
            let path = raw_dir.join(n.to_string());
            let mut f = File::create(&path).unwrap();
            f.write_all(&bytes).unwrap();
            f.sync_all().unwrap();
        })
    });
    let mut next = 1u64;
    g.bench_function("local_store", |b| {
        b.iter_batched(
            || {
                let seg = eight_mib_segment(next);
                next += frames;
                seg
            },
            |seg| {
                let key = seg.key();
                rt.block_on(storage.store(&name, seg, None, Box::new(|_| Box::pin(async {}))))
                    .unwrap();
                key
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, find_segment, open_namespace, local_store);
criterion_main!(benches);

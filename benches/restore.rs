//! Restore benchmarks on the local backend:
//!
//! * a 1 GiB database (262,144 pages of 4 KiB) restored from 128 segments, beside a
//!   baseline in the same run: `std::fs::copy` of a 1 GiB file plus an fsync of the copy
//!   (restore fsyncs its output too);
//! * the peak heap of one such restore, from a counting global allocator;
//! * restore of a 64 MiB database whose history has 50 vs 500 segments.
//!
//! Run with `cargo bench --bench restore`. Besides criterion's report it prints lines
//! starting `restore-throughput:`, `restore-memory:` and `restore-history:`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use walvault::{
    on_store, LocalStorage, NamespaceName, RestoreOptions, RestoreSummary, SegmentBuilder, Storage,
};

mod common;
use common::{bench_dir, rt};

/// Counts live heap bytes and their peak, to measure a restore's memory.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PAGE_SIZE: u32 = 4096;
const MIB: f64 = (1 << 20) as f64;

/// Deterministic page numbers for the overwriting segments (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % u64::from(n)) as u32
    }
}

/// Appends segments to one namespace: transactions of pages, commit timestamps one
/// second apart, each segment stored (and durable) before the next is built.
struct History<'a> {
    rt: &'a tokio::runtime::Runtime,
    storage: &'a LocalStorage,
    name: NamespaceName,
    builder: SegmentBuilder,
    page: Vec<u8>,
    db_pages: u32,
    commits: i64,
    segments: usize,
}

impl<'a> History<'a> {
    fn new(rt: &'a tokio::runtime::Runtime, storage: &'a LocalStorage, name: &str) -> Self {
        Self {
            rt,
            storage,
            name: NamespaceName::new(name).unwrap(),
            builder: SegmentBuilder::new(1, PAGE_SIZE).unwrap(),
            page: vec![0; PAGE_SIZE as usize],
            db_pages: 0,
            commits: 0,
            segments: 0,
        }
    }

    fn at(&self) -> DateTime<Utc> {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        start + chrono::Duration::seconds(self.commits)
    }

    /// One transaction writing `pages`; the database grows to the largest page written.
    fn transaction(&mut self, pages: &[u32]) {
        let (last, rest) = pages.split_last().unwrap();
        let version = self.builder.next_frame_no();
        for &page_no in rest {
            fill(&mut self.page, page_no, version);
            self.builder.append_frame(page_no, &self.page).unwrap();
        }
        self.db_pages = pages.iter().fold(self.db_pages, |m, &p| m.max(p));
        fill(&mut self.page, *last, version);
        let at = self.at();
        self.builder
            .append_commit(*last, &self.page, self.db_pages, at)
            .unwrap();
        self.commits += 1;
    }

    /// Seals the transactions appended so far and stores the segment, waiting until it is
    /// durable and `on_store` has run.
    fn store(&mut self) {
        let segment = self.builder.seal(self.at()).unwrap();
        let end = segment.end_frame_no();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = on_store(move |durable| async move {
            let _ = tx.send(durable);
        });
        self.rt
            .block_on(self.storage.store(&self.name, segment, None, done))
            .unwrap();
        assert_eq!(self.rt.block_on(rx).unwrap(), end);
        self.segments += 1;
    }
}

/// A page recognisable in a hex dump: its number, the frame that wrote it, then filler.
fn fill(page: &mut [u8], page_no: u32, version: u64) {
    page.fill(page_no as u8 ^ version as u8);
    page[..4].copy_from_slice(&page_no.to_be_bytes());
    page[4..12].copy_from_slice(&version.to_be_bytes());
}

/// Segments that each write a distinct, consecutive run of `per_segment` pages in
/// `per_txn`-page transactions, until every page of a `db_pages` database is written.
fn sequential(h: &mut History, db_pages: u32, per_segment: u32, per_txn: u32) {
    let pages: Vec<u32> = (1..=db_pages).collect();
    for segment in pages.chunks(per_segment as usize) {
        for txn in segment.chunks(per_txn as usize) {
            h.transaction(txn);
        }
        h.store();
    }
}

/// Runs one restore of the latest state into `out` (which must not exist) and checks it.
fn restore(
    rt: &tokio::runtime::Runtime,
    storage: &LocalStorage,
    name: &NamespaceName,
    out: &Path,
    db_pages: u32,
) -> RestoreSummary {
    let summary = rt
        .block_on(storage.restore_to_path(name, RestoreOptions::Latest, out, None))
        .unwrap();
    assert_eq!(summary.db_pages, db_pages);
    summary
}

/// Fresh output paths in one directory; each call deletes the previous output (and
/// syncs the directory so freeing its blocks is not charged to the next timed run).
struct Outputs {
    dir: PathBuf,
    prefix: String,
    n: u64,
}

impl Outputs {
    fn next(&mut self) -> PathBuf {
        if self.n > 0 {
            fs::remove_file(self.path(self.n)).unwrap();
            File::open(&self.dir).unwrap().sync_all().unwrap();
        }
        self.n += 1;
        self.path(self.n)
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{}-{n}.db", self.prefix))
    }
}

/// Times `run` once per iteration into a fresh output path, recording every duration.
fn timed<'a>(
    outputs: &'a mut Outputs,
    times: &'a mut Vec<Duration>,
    mut run: impl FnMut(&Path) + 'a,
) -> impl FnMut(u64) -> Duration + 'a {
    move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let out = outputs.next();
            let start = Instant::now();
            run(&out);
            let took = start.elapsed();
            times.push(took);
            total += took;
        }
        total
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

const GIB_PAGES: u32 = 262_144;
const GIB_SEGMENTS: u32 = 128;

fn restore_1gib(c: &mut Criterion) {
    let rt = rt();
    let dir = bench_dir();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let mut h = History::new(&rt, &storage, "gib");
    sequential(&mut h, GIB_PAGES, GIB_PAGES / GIB_SEGMENTS, 512);
    let (name, segments) = (h.name.clone(), h.segments);
    let bytes = u64::from(GIB_PAGES) * u64::from(PAGE_SIZE);
    let source = dir.path().join("source.db");
    write_source(&source, bytes);

    let out = dir.path().join("memory.db");
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let summary = restore(&rt, &storage, &name, &out, GIB_PAGES);
    let peak = PEAK.load(Ordering::Relaxed);
    println!(
        "restore-memory: {:.1} MiB peak heap above the {:.1} MiB live before one restore of \
         the 1 GiB database ({} of {segments} segments read)",
        (peak - before) as f64 / MIB,
        before as f64 / MIB,
        summary.segments_read,
    );
    assert_eq!(fs::metadata(&out).unwrap().len(), bytes);
    fs::remove_file(&out).unwrap();

    let mut g = c.benchmark_group("restore_1GiB");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(40));
    let mut outputs = Outputs {
        dir: dir.path().to_path_buf(),
        prefix: "cp".into(),
        n: 0,
    };
    let mut cp_times = Vec::new();
    g.bench_function("baseline_cp_fsync", |b| {
        b.iter_custom(timed(&mut outputs, &mut cp_times, |out| {
            fs::copy(&source, out).unwrap();
            File::open(out).unwrap().sync_all().unwrap();
        }))
    });
    let mut outputs = Outputs {
        dir: dir.path().to_path_buf(),
        prefix: "restore".into(),
        n: 0,
    };
    let mut restore_times = Vec::new();
    g.bench_function(format!("restore_latest_{segments}_segments"), |b| {
        b.iter_custom(timed(&mut outputs, &mut restore_times, |out| {
            restore(&rt, &storage, &name, out, GIB_PAGES);
        }))
    });
    g.finish();
    report_throughput(bytes, &cp_times, &restore_times);
}

/// A `bytes`-long file of non-zero data, fsynced, as the copy baseline's source.
fn write_source(path: &Path, bytes: u64) {
    let mut file = File::create(path).unwrap();
    let chunk: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    for _ in 0..bytes / chunk.len() as u64 {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
}

fn report_throughput(bytes: u64, cp: &[Duration], restore: &[Duration]) {
    if cp.is_empty() || restore.is_empty() {
        return; // filtered out
    }
    let rate = |d: Duration| bytes as f64 / MIB / d.as_secs_f64();
    let spread = |times: &[Duration]| {
        let (lo, hi) = (times.iter().max().unwrap(), times.iter().min().unwrap());
        format!("{:.0}-{:.0}", rate(*lo), rate(*hi))
    };
    let (cp_rate, restore_rate) = (rate(median(cp)), rate(median(restore)));
    println!(
        "restore-throughput: restore {restore_rate:.1} MiB/s, cp {cp_rate:.1} MiB/s, ratio {:.2} \
         (medians of {} and {} runs; ranges: restore {} MiB/s, cp {} MiB/s; target >= 0.50)",
        restore_rate / cp_rate,
        restore.len(),
        cp.len(),
        spread(restore),
        spread(cp),
    );
}

const HISTORY_PAGES: u32 = 16_384;
/// Pages per segment of the base, which writes every page once (16 segments).
const BASE_SEGMENT_PAGES: u32 = 1_024;
/// Random pages overwritten by each later segment, in two transactions.
const OVERWRITE_PAGES: u32 = 256;

/// A 64 MiB database: the base segments, then overwriting segments up to `segments`.
fn history(h: &mut History, segments: usize, seed: u64) {
    sequential(h, HISTORY_PAGES, BASE_SEGMENT_PAGES, 256);
    let mut rng = SplitMix(seed);
    while h.segments < segments {
        for _ in 0..2 {
            let pages: Vec<u32> = (0..OVERWRITE_PAGES / 2)
                .map(|_| rng.below(HISTORY_PAGES) + 1)
                .collect();
            h.transaction(&pages);
        }
        h.store();
    }
}

fn restore_history(c: &mut Criterion) {
    let rt = rt();
    let dir = bench_dir();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    let n = 50;
    let mut g = c.benchmark_group("restore_history_64MiB");
    g.throughput(Throughput::Bytes(
        u64::from(HISTORY_PAGES) * u64::from(PAGE_SIZE),
    ));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(15));
    let mut results = Vec::new();
    for segments in [n, 10 * n] {
        let mut h = History::new(&rt, &storage, &format!("history{segments}"));
        history(&mut h, segments, 42);
        let name = h.name.clone();
        let mut outputs = Outputs {
            dir: dir.path().to_path_buf(),
            prefix: format!("history{segments}"),
            n: 0,
        };
        let mut times = Vec::new();
        let mut read = 0;
        g.bench_function(format!("restore_latest_{segments}_segments"), |b| {
            b.iter_custom(timed(&mut outputs, &mut times, |out| {
                read = restore(&rt, &storage, &name, out, HISTORY_PAGES).segments_read;
            }))
        });
        if !times.is_empty() {
            results.push((segments, median(&times), read));
        }
    }
    g.finish();
    if let [(n, small, read_small), (n10, large, read_large)] = results[..] {
        println!(
            "restore-history: {n} segs {:.1} ms, {n10} segs {:.1} ms, ratio {:.2} \
             (medians; segments read {read_small} vs {read_large}; target <= 1.5)",
            small.as_secs_f64() * 1e3,
            large.as_secs_f64() * 1e3,
            large.as_secs_f64() / small.as_secs_f64(),
        );
    }
}

criterion_group!(benches, restore_1gib, restore_history);
criterion_main!(benches);

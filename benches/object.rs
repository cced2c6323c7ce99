//! Object-store benchmarks, each against a baseline measured in the same run:
//!
//! * **store**: 8 MiB segments stored through `ObjectStorage` into an S3 server started in
//!   this process (`s3s-fs` on 127.0.0.1, as in the tests), against `object_store`'s raw
//!   PUT of the same bytes to the same server;
//! * **restore**: a 256 MiB database (4 KiB pages) restored from that server, stored as
//!   32 segments of 8 MiB and as one segment of 256 MiB, each against a raw parallel GET
//!   of the same segment objects (8 ranged GETs of up to 8 MiB in flight);
//! * **requests**: the requests one restore of the latest state makes after 10^4 small
//!   segments, counted by the tests' counting wrapper (over the in-memory store: the
//!   count is the same on any store and the history builds in seconds).
//!
//! Run with `cargo bench --bench object`. Besides criterion's report it prints lines
//! starting `object-store:`, `object-restore:` and `object-requests:`.

#[path = "../tests/support/counting.rs"]
mod counting;
#[path = "../tests/s3/mod.rs"]
mod s3;

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use walvault::{
    compact, on_store, CompactionPolicy, NamespaceName, ObjectStorage, RestoreOptions,
    SealedSegment, SegmentBuilder, Storage,
};

mod common;
use common::{bench_dir, rt};

const PAGE_SIZE: usize = 4096;
const MB: f64 = 1e6;
const PREFIX: &str = "bench";

/// An S3 server over a fresh directory, its client, and what keeps them alive.
struct Server {
    client: Arc<dyn ObjectStore>,
    _server: s3::S3Server,
    _dir: tempfile::TempDir,
}

fn server(rt: &tokio::runtime::Runtime) -> Server {
    let dir = bench_dir();
    let server = rt.block_on(async { s3::S3Server::start(dir.path()) });
    Server {
        client: server.client(),
        _server: server,
        _dir: dir,
    }
}

/// Builds one namespace's history: segments of whole transactions, frame numbers and
/// commit times (one second apart) running on from the previous segment.
struct Log {
    next_frame: u64,
    commits: i64,
    page: Vec<u8>,
}

impl Log {
    fn new() -> Self {
        Self {
            next_frame: 1,
            commits: 0,
            page: vec![0; PAGE_SIZE],
        }
    }

    fn at(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(self.commits)
    }

    /// One segment holding one transaction that writes `pages` of a `db_pages` database.
    fn segment(&mut self, pages: impl IntoIterator<Item = u32>, db_pages: u32) -> SealedSegment {
        let mut b = SegmentBuilder::new(self.next_frame, PAGE_SIZE as u32).unwrap();
        let mut pages = pages.into_iter().peekable();
        while let Some(page_no) = pages.next() {
            let frame_no = b.next_frame_no();
            self.page.fill(page_no as u8 ^ frame_no as u8);
            self.page[..4].copy_from_slice(&page_no.to_be_bytes());
            self.page[4..12].copy_from_slice(&frame_no.to_be_bytes());
            if pages.peek().is_some() {
                b.append_frame(page_no, &self.page).unwrap();
            } else {
                b.append_commit(page_no, &self.page, db_pages, self.at())
                    .unwrap();
            }
        }
        let segment = b.seal(self.at()).unwrap();
        self.next_frame = segment.end_frame_no() + 1;
        self.commits += 1;
        segment
    }
}

/// Stores a segment and waits until it is durable.
async fn store(storage: &ObjectStorage, name: &NamespaceName, segment: SealedSegment) {
    let end = segment.end_frame_no();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = on_store(move |durable| async move {
        let _ = tx.send(durable);
    });
    storage.store(name, segment, None, done).await.unwrap();
    assert_eq!(rx.await.unwrap(), end);
}

/// The median, or None when nothing ran (a criterion filter skipped it).
fn median(times: &[Duration]) -> Option<Duration> {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MB / took.as_secs_f64()
}

/// Pages in an 8 MiB segment.
const SEGMENT_PAGES: u32 = 2048;

fn store_8mib(c: &mut Criterion) {
    let rt = rt();
    let s = server(&rt);
    let storage = ObjectStorage::new(s.client.clone(), PREFIX);
    let name = NamespaceName::new("store").unwrap();
    let mut log = Log::new();
    let bytes = log.segment(1..=SEGMENT_PAGES, SEGMENT_PAGES).encoded_len();

    let mut g = c.benchmark_group("object_store_8MiB_segments");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(8));

    let mut raw_times = Vec::new();
    let mut n = 0u64;
    g.bench_function("baseline_raw_put", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let segment = log.segment(1..=SEGMENT_PAGES, SEGMENT_PAGES);
                let path = Path::from(format!("{PREFIX}/raw/{n}"));
                n += 1;
                let payload = PutPayload::from(segment.encoded().clone());
                let start = Instant::now();
                rt.block_on(s.client.put(&path, payload)).unwrap();
                let took = start.elapsed();
                raw_times.push(took);
                total += took;
                rt.block_on(s.client.delete(&path)).unwrap();
            }
            total
        })
    });

    let mut store_times = Vec::new();
    g.bench_function("object_storage_store", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let segment = log.segment(1..=SEGMENT_PAGES, SEGMENT_PAGES);
                let path = Path::from(format!("{PREFIX}/store/segments/{}", segment.key()));
                let start = Instant::now();
                rt.block_on(store(&storage, &name, segment));
                let took = start.elapsed();
                store_times.push(took);
                total += took;
                // Only to keep the disk use flat; the manifest still names it.
                rt.block_on(s.client.delete(&path)).unwrap();
            }
            total
        })
    });
    g.finish();

    let (Some(raw), Some(ours)) = (median(&raw_times), median(&store_times)) else {
        return;
    };
    println!(
        "object-store: {:.0} MB/s vs raw {:.0} MB/s = {:.0}% (8 MiB segments to an in-process \
         S3 server; a store is the segment PUT, a manifest version and the hint; target >= 80%)",
        mb_per_s(bytes, ours),
        mb_per_s(bytes, raw),
        100.0 * raw.as_secs_f64() / ours.as_secs_f64(),
    );
}

/// Pages of the 256 MiB database, and its segments.
const DB_PAGES: u32 = 65_536;
/// GETs in flight in the raw baseline, as many as restore's default read concurrency.
const RAW_READERS: usize = 8;
/// The raw baseline reads objects in ranges of at most this (a whole 8 MiB segment is
/// one GET; a large one is read in ranges side by side, as any fast client would).
const RAW_PART: u64 = 8 << 20;

/// Reads every object in `paths` (each `size` bytes) in ranges of `RAW_PART`,
/// `RAW_READERS` GETs at a time; returns the bytes read.
async fn raw_parallel_get(client: &Arc<dyn ObjectStore>, paths: &[(Path, u64)]) -> u64 {
    let mut running = tokio::task::JoinSet::new();
    let mut total = 0;
    for (path, size) in paths {
        for start in (0..*size).step_by(RAW_PART as usize) {
            if running.len() == RAW_READERS {
                total += running.join_next().await.unwrap().unwrap();
            }
            let (client, path) = (client.clone(), path.clone());
            let range = start..(start + RAW_PART).min(*size);
            running.spawn(async move {
                let bytes: Bytes = client.get_range(&path, range).await.unwrap();
                bytes.len() as u64
            });
        }
    }
    while let Some(read) = running.join_next().await {
        total += read.unwrap();
    }
    total
}

fn restore_256mib(c: &mut Criterion) {
    // The same 256 MiB database as 32 segments of 8 MiB, and as one segment.
    restore_layout(c, "32x8MiB", SEGMENT_PAGES);
    restore_layout(c, "1x256MiB", DB_PAGES);
}

/// Stores the database as segments of `per_segment` pages, then times the raw baseline
/// and a restore of the latest state, and prints their ratio.
fn restore_layout(c: &mut Criterion, label: &str, per_segment: u32) {
    let rt = rt();
    let s = server(&rt);
    let name = NamespaceName::new("restore").unwrap();
    let writer = ObjectStorage::new(s.client.clone(), PREFIX);
    let mut log = Log::new();
    let mut paths = Vec::new();
    let mut stored = 0;
    for i in 0..DB_PAGES / per_segment {
        let first = i * per_segment + 1;
        let segment = log.segment(first..first + per_segment, first + per_segment - 1);
        let path = Path::from(format!("{PREFIX}/restore/segments/{}", segment.key()));
        paths.push((path, segment.encoded_len()));
        stored += segment.encoded_len();
        rt.block_on(store(&writer, &name, segment));
    }
    let db_bytes = u64::from(DB_PAGES) * PAGE_SIZE as u64;
    let out_dir = bench_dir();
    let out_path = out_dir.path().join("restored.db");

    let mut g = c.benchmark_group(format!("object_restore_256MiB_{label}"));
    g.throughput(Throughput::Bytes(db_bytes));
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(15));

    let mut raw_times = Vec::new();
    g.bench_function("baseline_raw_parallel_get", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let read = rt.block_on(raw_parallel_get(&s.client, &paths));
                let took = start.elapsed();
                assert_eq!(read, stored);
                raw_times.push(took);
                total += took;
            }
            total
        })
    });

    let mut restore_times = Vec::new();
    let mut segments_read = 0;
    g.bench_function("object_storage_restore_latest", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut out = File::create(&out_path).unwrap();
                let start = Instant::now();
                // A fresh handle each time: opening the namespace is part of a restore.
                let reader = ObjectStorage::new(s.client.clone(), PREFIX);
                let summary = rt
                    .block_on(reader.restore(&name, RestoreOptions::Latest, &mut out, None))
                    .unwrap();
                out.flush().unwrap();
                let took = start.elapsed();
                assert_eq!(summary.db_pages, DB_PAGES);
                segments_read = summary.segments_read;
                restore_times.push(took);
                total += took;
            }
            total
        })
    });
    g.finish();
    let (Some(raw), Some(ours)) = (median(&raw_times), median(&restore_times)) else {
        return;
    };
    assert_eq!(std::fs::metadata(&out_path).unwrap().len(), db_bytes);
    println!(
        "object-restore[{label}]: {:.0} MB/s vs raw parallel GET {:.0} MB/s = {:.0}% (256 MiB \
         database of 4 KiB pages, {segments_read} segments read, from an in-process S3 server \
         into a file, not fsynced; raw: {RAW_READERS} GETs of <= 8 MiB in flight; the ratio is \
         of median times, for the same objects; target >= 80%)",
        mb_per_s(db_bytes, ours),
        mb_per_s(stored, raw),
        100.0 * raw.as_secs_f64() / ours.as_secs_f64(),
    );
}

/// Segments in the long history.
const SMALL_SEGMENTS: u32 = 10_000;
/// Pages of its database.
const SMALL_DB_PAGES: u32 = 1024;
/// Pages each later transaction writes.
const PAGES_PER_TXN: usize = 4;

/// Deterministic page numbers (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % u64::from(n)) as u32 + 1
    }
}

/// A 4 MiB database written once, then updated by `SMALL_SEGMENTS - 1` small
/// transactions of `PAGES_PER_TXN` random pages, one segment each.
async fn long_history(storage: &ObjectStorage, raw: &Arc<dyn ObjectStore>, name: &NamespaceName) {
    let mut log = Log::new();
    let mut random = SplitMix(7);
    store(
        storage,
        name,
        log.segment(1..=SMALL_DB_PAGES, SMALL_DB_PAGES),
    )
    .await;
    for n in 2..=SMALL_SEGMENTS {
        let mut pages: Vec<u32> = (0..PAGES_PER_TXN)
            .map(|_| random.below(SMALL_DB_PAGES))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        store(storage, name, log.segment(pages, SMALL_DB_PAGES)).await;
        // Each store writes a manifest version holding the whole catalog; keeping only
        // the newest few holds the in-memory store to a few megabytes (readers start
        // from the hint, so older versions are never read).
        if n > 3 {
            let old = Path::from(format!("{PREFIX}/{name}/manifest/{:020}", n - 2));
            raw.delete(&old).await.unwrap();
        }
    }
}

fn requests_after_10k_segments(_c: &mut Criterion) {
    let rt = rt();
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let counted = counting::CountingStore::new(memory.clone());
    let name = NamespaceName::new("requests").unwrap();
    let start = Instant::now();
    rt.block_on(long_history(
        &ObjectStorage::new(memory.clone(), PREFIX),
        &memory,
        &name,
    ));
    let built = start.elapsed();

    let count = |label: &str| {
        let reader = ObjectStorage::new(counted.clone(), PREFIX);
        counted.reset();
        let mut out = std::io::Cursor::new(Vec::new());
        let summary = rt
            .block_on(reader.restore(&name, RestoreOptions::Latest, &mut out, None))
            .unwrap();
        let c = counted.reset();
        assert_eq!(summary.db_pages, SMALL_DB_PAGES);
        println!(
            "object-requests: restore of latest after {SMALL_SEGMENTS} segments ({label}): \
             {} GETs, {} LIST, {} HEAD; {} segments read (target <= 30 GETs and 0 LIST \
             after compaction)",
            c.get, c.list, c.head, summary.segments_read,
        );
    };
    count("not compacted");
    let start = Instant::now();
    let maintainer = ObjectStorage::new(memory.clone(), PREFIX);
    let report = rt
        .block_on(compact(
            &maintainer,
            &name,
            &CompactionPolicy::default(),
            false,
        ))
        .unwrap();
    println!(
        "object-requests: history built in {:.1} s; compaction (default policy) took {:.1} s, \
         {} segments -> {}",
        built.as_secs_f64(),
        start.elapsed().as_secs_f64(),
        report.segments_before,
        report.segments_after
    );
    count("compacted");
}

criterion_group!(
    benches,
    store_8mib,
    restore_256mib,
    requests_after_10k_segments
);
criterion_main!(benches);

//! Log-writer benchmarks.
//!
//! * append of 4 KiB pages to `Applied` (no waiting), in GB/s; sealed segments go to
//!   `NoStorage`, so the figure is the log's, not a backend's;
//! * append + commit, then wait for `Written` (fsync) with group commit, against a raw
//!   write + fdatasync of the same bytes in the same run;
//! * end to end to `Durable` on the local backend with 64 namespaces writing at once:
//!   frames/s and p50/p99 commit-to-durable latency, printed on a line starting `e2e:`.
//!
//! Run with `cargo bench --bench log`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walvault::{
    Durability, LocalStorage, LogConfig, LogWriter, NamespaceName, NoStorage, SchedulerConfig,
    StoreScheduler,
};

mod common;
use common::{bench_dir, rt};

const PAGE: usize = 4096;
const TXN_PAGES: usize = 16;
const TXNS: usize = 64; // 4 MiB per iteration

fn pages() -> Vec<(u32, Vec<u8>)> {
    (1..=TXN_PAGES as u32)
        .map(|p| (p, vec![p as u8; PAGE]))
        .collect()
}

fn append_batch<S: walvault::Storage + Clone>(
    log: &mut LogWriter<S>,
    pages: &[(u32, &[u8])],
) -> walvault::Appended {
    let mut last = None;
    for _ in 0..TXNS {
        last = Some(log.append(pages, 1024).unwrap());
    }
    last.unwrap()
}

fn append(c: &mut Criterion) {
    let rt = rt();
    let dir = bench_dir();
    let data = pages();
    let refs: Vec<(u32, &[u8])> = data.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let bytes = (TXNS * TXN_PAGES * PAGE) as u64;
    let mut g = c.benchmark_group("log_append_4KiB_pages");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);

    // The baseline writes the same bytes the same way the log does: into files of one
    // segment (8 MiB), each deleted once the next is started, with an fdatasync per batch.
    let chunk = vec![7u8; bytes as usize];
    let mut raw = RawFiles::new(dir.path().join("raw"));
    g.bench_function("baseline_raw_write_fdatasync", |b| {
        b.iter(|| raw.write_and_sync(&chunk))
    });

    let mut log = rt
        .block_on(LogWriter::open(
            NoStorage,
            NamespaceName::new("bench").unwrap(),
            LogConfig::new(dir.path().join("applied")),
        ))
        .unwrap();
    // Only the appends are timed; between batches (untimed) the log catches up to
    // `Written`, as a writer's own waits would make it. Without that, a sustained run
    // measures the disk: every appended byte must be fsynced within `sync_interval`.
    g.bench_function("applied", |b| {
        b.iter_custom(|iters| {
            let mut appending = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let last = append_batch(&mut log, &refs);
                appending += start.elapsed();
                rt.block_on(last.wait(Durability::Written)).unwrap();
            }
            appending
        })
    });

    // Sealed files are deleted only once the syncer has fsynced them (Durable never runs
    // ahead of Written), so every appended byte reaches the disk, as the baseline's do.
    let config = LogConfig::new(dir.path().join("written"));
    let name = NamespaceName::new("bench").unwrap();
    let mut log = rt
        .block_on(LogWriter::open(NoStorage, name, config))
        .unwrap();
    g.bench_function("written_group_commit", |b| {
        b.iter(|| {
            let last = append_batch(&mut log, &refs);
            rt.block_on(last.wait(Durability::Written)).unwrap()
        })
    });
    g.finish();
}

/// Appends to 8 MiB files, fsyncing after each write, like the log's open segments.
struct RawFiles {
    dir: std::path::PathBuf,
    n: u64,
    file: Option<(std::fs::File, std::path::PathBuf, usize)>,
}

impl RawFiles {
    fn new(dir: std::path::PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            n: 0,
            file: None,
        }
    }

    fn write_and_sync(&mut self, chunk: &[u8]) {
        if self.file.as_ref().is_none_or(|(_, _, len)| *len >= 8 << 20) {
            if let Some((_, path, _)) = self.file.take() {
                std::fs::remove_file(path).unwrap();
            }
            self.n += 1;
            let path = self.dir.join(self.n.to_string());
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            self.file = Some((file, path, 0));
        }
        let (file, _, len) = self.file.as_mut().unwrap();
        file.write_all(chunk).unwrap();
        file.sync_data().unwrap();
        *len += chunk.len();
    }
}

/// 64 namespaces write at once through one scheduler to the local backend.
fn end_to_end(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("end_to_end_durable_local");
    g.sample_size(10);
    let mut report = None;
    g.bench_function("64_namespaces", |b| {
        b.iter(|| {
            let dir = bench_dir();
            report = Some(rt.block_on(run_e2e(dir.path())));
        })
    });
    g.finish();
    if let Some((frames_per_s, p50, p99)) = report {
        println!("e2e: 64 namespaces, {frames_per_s:.0} frames/s durable, commit-to-durable p50 {p50:?} p99 {p99:?}");
    }
}

async fn run_e2e(dir: &std::path::Path) -> (f64, Duration, Duration) {
    const NAMESPACES: usize = 64;
    const TXNS_EACH: usize = 40;
    let local = LocalStorage::open(dir.join("store")).unwrap();
    let scheduler = StoreScheduler::new(local, SchedulerConfig::default()).unwrap();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut writers = Vec::new();
    for i in 0..NAMESPACES {
        let (scheduler, latencies) = (scheduler.clone(), latencies.clone());
        let root = dir.join(format!("log-{i}"));
        writers.push(tokio::spawn(async move {
            let name = NamespaceName::new(&format!("db-{i}")).unwrap();
            let config = LogConfig {
                seal_frames: 32,
                seal_age: Duration::from_millis(20),
                ..LogConfig::new(root)
            };
            let mut log = LogWriter::open(scheduler, name, config).await.unwrap();
            let page = vec![i as u8; PAGE];
            let mut waits = Vec::new();
            for t in 0..TXNS_EACH {
                let pages: Vec<(u32, &[u8])> = (1..=4)
                    .map(|p| (p + (t % 4) as u32 * 4, page.as_slice()))
                    .collect();
                let appended = log.append(&pages, 16).unwrap();
                let at = Instant::now();
                let latencies = latencies.clone();
                let wait = appended.wait(Durability::Durable);
                waits.push(tokio::spawn(async move {
                    wait.await.unwrap();
                    latencies.lock().unwrap().push(at.elapsed());
                }));
                tokio::time::sleep(Duration::from_millis(1)).await;
                log.maybe_seal().unwrap();
            }
            log.seal().unwrap();
            for w in waits {
                w.await.unwrap();
            }
            log.close().await.unwrap();
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut l = latencies.lock().unwrap().clone();
    l.sort();
    let frames = (NAMESPACES * TXNS_EACH * 4) as f64;
    (
        frames / elapsed.as_secs_f64(),
        l[l.len() / 2],
        l[l.len() * 99 / 100],
    )
}

criterion_group!(benches, append, end_to_end);
criterion_main!(benches);

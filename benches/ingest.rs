//! Ingestion from a real SQLite WAL: how fast `Replicator::run_once` ships new WAL frames
//! into the log (parse and verify SQLite's checksums, append, wait until `Written`), in
//! bytes of WAL frames per second. Segments go to the local backend in the background;
//! between timed runs (untimed) the application's WAL is flushed and the previous batch
//! reaches the store, so each run does the same work.
//!
//! Run with `cargo bench --bench ingest`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rusqlite::Connection;
use walvault::{Durability, LocalStorage, NamespaceName, Replicator, ReplicatorConfig};

mod common;
use common::bench_dir;

/// Rows of ~4 KiB per batch; 100 rows per transaction.
const ROWS: u64 = 2_000;

fn write_batch(conn: &Connection) {
    for _ in 0..ROWS / 100 {
        conn.execute_batch(
            "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<100)
             INSERT INTO t(v) SELECT randomblob(3900) FROM n; COMMIT;",
        )
        .unwrap();
    }
}

fn ingest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = bench_dir();
    let db = dir.path().join("bench.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("bench").unwrap();
    let mut replicator = rt
        .block_on(Replicator::open(store, ns, ReplicatorConfig::new(&db)))
        .unwrap();
    rt.block_on(replicator.run_once()).unwrap(); // the first run ships a snapshot

    // Bytes of WAL frames one batch adds, measured once.
    let wal = dir.path().join("bench.db-wal");
    let before = std::fs::metadata(&wal).map_or(0, |m| m.len());
    write_batch(&conn);
    let batch_bytes = std::fs::metadata(&wal).unwrap().len() - before;
    rt.block_on(replicator.run_once()).unwrap();

    let mut g = c.benchmark_group("ingest_sqlite_wal");
    g.throughput(Throughput::Bytes(batch_bytes));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("run_once_to_written", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // Not timed: the application's writes (flushed, so their writeback does
                // not land inside the timing), and the previous batch's segments reaching
                // the store, so each timed run does the same work.
                write_batch(&conn);
                std::fs::File::open(&wal).unwrap().sync_all().unwrap();
                let applied = replicator.log().tracker().watermark(Durability::Applied);
                rt.block_on(replicator.log().wait(applied, Durability::Durable))
                    .unwrap();
                let start = Instant::now();
                let report = rt.block_on(replicator.run_once()).unwrap();
                spent += start.elapsed();
                assert!(!report.snapshot && report.frames > 0);
            }
            spent
        })
    });
    g.finish();
    println!("ingest: one batch is {batch_bytes} bytes of WAL frames");
    rt.block_on(replicator.close()).unwrap();
}

criterion_group!(benches, ingest);
criterion_main!(benches);

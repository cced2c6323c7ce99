//! What an attached connection's COMMIT costs, against plain SQLite in the same run:
//!
//! * latency of 1 KiB-row transactions at `Written` (the attached connection runs
//!   `synchronous=NORMAL`: walvault fsyncs the WAL while its vault appends the commit
//!   to the log, see `walvault::sqlite::attach`), against plain SQLite in WAL mode with
//!   `synchronous=FULL`, the two interleaved in blocks of 50 commits on two databases
//!   side by side (a VM's fsync time drifts); and at `Written` with `synchronous=FULL`
//!   kept, for reference;
//! * throughput with several writer threads (one attached connection each, group
//!   commit), against the same baseline with as many threads;
//! * latency at `Durable`, into a local store and into an S3 server (`s3s-fs`) on
//!   127.0.0.1 inside this process.
//!
//! ```sh
//! cargo bench --bench attach                          # 1000 commits a series, 4 threads
//! WALVAULT_ATTACH_COMMITS=5000 WALVAULT_ATTACH_THREADS=8 cargo bench --bench attach
//! ```
#![allow(clippy::disallowed_methods)] // wall-clock timing is the point of a bench

#[path = "../tests/s3/mod.rs"]
mod s3;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use walvault::sqlite::{attach, AttachOptions, Vault};
use walvault::{Durability, LocalStorage, NamespaceName, ObjectStorage, Storage};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(db: &Path, synchronous: &str) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);"
    ))
    .unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    conn
}

/// Times `n` one-row transactions of 1 KiB on `conn`.
fn commits(conn: &Connection, n: u64) -> Vec<Duration> {
    let row = vec![7u8; 1024];
    let mut stmt = conn.prepare("INSERT INTO t(v) VALUES (?1)").unwrap();
    (0..n)
        .map(|_| {
            let started = Instant::now();
            stmt.execute([&row]).unwrap();
            started.elapsed()
        })
        .collect()
}

struct Latency {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let total: Duration = samples.iter().sum();
    Latency {
        p50: at(0.5),
        p99: at(0.99),
        mean: total / samples.len().max(1) as u32,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn options(durability: Durability) -> AttachOptions {
    AttachOptions {
        durability,
        commit_timeout: Duration::from_secs(60),
        ..AttachOptions::default()
    }
}

/// One series on a fresh database: plain, or attached at `level` to `store`.
fn series<S: Storage + Clone + Send + Sync + 'static>(
    synchronous: &str,
    attached: Option<(Durability, S)>,
    n: u64,
) -> Latency {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = open(&db, synchronous);
    let samples = match attached {
        None => commits(&conn, n),
        Some((level, store)) => {
            let ns = NamespaceName::new("bench").unwrap();
            let conn = attach(conn, store, ns, options(level)).unwrap();
            let samples = commits(&conn, n);
            let vault = conn.vault().clone();
            drop(conn);
            vault.close().unwrap();
            samples
        }
    };
    latency(samples)
}

/// Commits in blocks of this many, alternating between the baseline and the attached
/// connection, so both meet the same disk (a VM's fsync time drifts over seconds).
const BLOCK: u64 = 50;

/// The baseline (plain SQLite, `synchronous=FULL`) and an attached connection at
/// `Written` (`synchronous` as given), `n` commits each, on two fresh databases side by
/// side, interleaved in blocks.
fn interleaved(synchronous: &str, store: LocalStorage, n: u64) -> (Latency, Latency) {
    let dir = tempfile::tempdir().unwrap();
    let plain = open(&dir.path().join("plain.db"), "FULL");
    let conn = open(&dir.path().join("app.db"), synchronous);
    let ns = NamespaceName::new("bench").unwrap();
    let attached = attach(conn, store, ns, options(Durability::Written)).unwrap();
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..n.div_ceil(BLOCK) {
        base.extend(commits(&plain, BLOCK));
        ours.extend(commits(&attached, BLOCK));
    }
    let vault = attached.vault().clone();
    drop(attached);
    vault.close().unwrap();
    (latency(base), latency(ours))
}

/// Commits per second with `threads` writers of `n` commits each, one connection each;
/// attached to a vault at `Written` when `store` is given.
fn throughput(synchronous: &str, store: Option<&Path>, threads: u64, n: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    drop(open(&db, synchronous));
    let vault = store.map(|store| {
        let storage = LocalStorage::open(store).unwrap();
        let ns = NamespaceName::new("bench").unwrap();
        Arc::new(Vault::open(&db, storage, ns, options(Durability::Written)).unwrap())
    });
    let started = Instant::now();
    let writers: Vec<_> = (0..threads)
        .map(|_| {
            let (db, vault, synchronous) = (db.clone(), vault.clone(), synchronous.to_string());
            std::thread::spawn(move || {
                let conn = open(&db, &synchronous);
                match vault {
                    None => commits(&conn, n),
                    Some(vault) => {
                        let conn = vault.attach(conn, Durability::Written).unwrap();
                        commits(&conn, n)
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let rate = (threads * n) as f64 / started.elapsed().as_secs_f64();
    if let Some(vault) = vault {
        vault.close().unwrap();
    }
    rate
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_u64("WALVAULT_ATTACH_COMMITS", 1000).max(10);
    let threads = env_u64("WALVAULT_ATTACH_THREADS", 4).max(2);
    let scratch = tempfile::tempdir().unwrap();
    let local = || LocalStorage::open(scratch.path().join("store")).unwrap();
    println!("attach: {n} one-row transactions of 1 KiB a series");

    let (plain, written) = interleaved("NORMAL", local(), n);
    let written_full = series("FULL", Some((Durability::Written, local())), n);
    let applied = series("NORMAL", Some((Durability::Applied, local())), n);
    let durable_local = series("NORMAL", Some((Durability::Durable, local())), n / 2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let durable_s3 = {
        let _entered = rt.enter();
        let server = s3::S3Server::start(&scratch.path().join("s3"));
        let store = ObjectStorage::new(server.client(), "bench");
        series("NORMAL", Some((Durability::Durable, store)), n / 4)
    };
    println!("| series | p50 ms | p99 ms | mean ms | mean vs plain FULL |");
    println!("|---|---|---|---|---|");
    for (what, l) in [
        ("plain SQLite, WAL, synchronous=FULL (baseline)", &plain),
        (
            "attached at Written, synchronous=NORMAL (interleaved with the baseline)",
            &written,
        ),
        ("attached at Written, synchronous=FULL", &written_full),
        ("attached at Applied, synchronous=NORMAL", &applied),
        ("attached at Durable, local store", &durable_local),
        ("attached at Durable, S3 on 127.0.0.1", &durable_s3),
    ] {
        println!(
            "| {what} | {:.3} | {:.3} | {:.3} | {:.2}x |",
            ms(l.p50),
            ms(l.p99),
            ms(l.mean),
            l.mean.as_secs_f64() / plain.mean.as_secs_f64()
        );
    }

    let base = throughput("FULL", None, threads, n / threads.min(n));
    let store = scratch.path().join("store-threads");
    let ours = throughput("NORMAL", Some(&store), threads, n / threads.min(n));
    println!(
        "{threads} writer threads: plain FULL {base:.0} commits/s; attached at Written {ours:.0} \
         commits/s ({:.0} % of plain)",
        100.0 * ours / base
    );
}

//! Memory stays within the budget whatever the database's size: a counting global
//! allocator measures the heap a snapshot, a transaction larger than the budget, a
//! restore, a follower applying that transaction, verify and a compaction add, on a
//! database many times the budget, and each must stay under the budget plus a constant.
//! Each restore is then checked row for row.
//!
//! Its own binary: the budget and the allocator are process-wide, so its tests run one
//! at a time (`current_thread` runtimes under a lock).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::Connection;
use walvault::{
    compact, integrity_check, verify_history, CompactionPolicy, Faults, FaultyStorage, Follower,
    LocalStorage, LogConfig, LogWriter, MemoryStorage, NamespaceName, Replicator, ReplicatorConfig,
    RestoreOptions, Storage,
};

/// Counts the bytes the Rust heap holds and the most it held since the last reset.
/// (SQLite's own allocations go to the system allocator directly and are not counted:
/// they are the application's, not walvault's.)
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests measure one process-wide heap: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1 << 20;
/// The budget under test.
const BUDGET: usize = 2 * MIB;
/// What may come on top of the budget: the runtime, the catalog, per-page bookkeeping
/// (a few bytes a page) and page indexes of a database of a few thousand pages.
const CONSTANT: usize = 3 * MIB;
/// Rows of 4 KiB: the database is about 40 MiB, twenty times the budget.
const ROWS: i64 = 10_000;

/// Runs `f` and returns what it returned and the most heap it added.
async fn peak_of<T>(f: impl std::future::Future<Output = T>) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn check_under_budget(what: &str, peak: usize) {
    eprintln!("{what}: heap peak {:.2} MiB", peak as f64 / MIB as f64);
    assert!(
        peak <= BUDGET + CONSTANT,
        "{what} added {peak} bytes of heap, over the budget of {BUDGET} plus {CONSTANT}"
    );
}

type Rows = Vec<(i64, Vec<u8>)>;

fn rows(db: &Path) -> Rows {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

/// A 4 KiB value that differs by row and round (so no two pages are alike).
fn value(id: i64, round: i64) -> Vec<u8> {
    let mut x = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (round as u64);
    (0..4000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_rows(conn: &Connection, ids: std::ops::Range<i64>, round: i64) {
    let tx = conn.unchecked_transaction().unwrap();
    for id in ids {
        tx.execute(
            "INSERT OR REPLACE INTO t(id, v) VALUES (?1, ?2)",
            rusqlite::params![id, value(id, round)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

async fn restore_and_check(
    store: &LocalStorage,
    ns: &NamespaceName,
    dir: &Path,
    name: &str,
    expected: &Rows,
) {
    let out = dir.join(name);
    let (summary, peak) =
        peak_of(store.restore_to_path(ns, RestoreOptions::Latest, &out, None)).await;
    summary.unwrap();
    check_under_budget(&format!("restore ({name})"), peak);
    integrity_check(&out).unwrap();
    assert!(
        rows(&out) == *expected,
        "{name}: restored rows differ from the writer's"
    );
}

/// One `replicate --once`: open, ship, close.
async fn run_once(
    store: &LocalStorage,
    ns: &NamespaceName,
    config: ReplicatorConfig,
) -> walvault::IngestReport {
    let mut r = Replicator::open(store.clone(), ns.clone(), config)
        .await
        .unwrap();
    let report = r.run_once().await.unwrap();
    r.close().await.unwrap();
    report
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_large_transaction_restore_and_compaction_stay_within_the_budget() {
    let _serial = SERIAL.lock().await;
    walvault::set_memory_budget(BUDGET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();
    write_rows(&conn, 0..ROWS, 0);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let db_bytes = std::fs::metadata(&db).unwrap().len() as usize;
    assert!(
        db_bytes > 15 * BUDGET,
        "the database ({db_bytes} bytes) dwarfs the budget"
    );

    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("app").unwrap();
    let config = || {
        let mut c = ReplicatorConfig::new(&db);
        c.checkpoint_wal_bytes = u64::MAX; // keep the large transaction in the WAL
        c
    };

    // The first run ships a snapshot of the whole database.
    let (report, peak) = peak_of(run_once(&store, &ns, config())).await;
    assert!(report.snapshot);
    check_under_budget("snapshot", peak);
    let first = rows(&db);
    restore_and_check(&store, &ns, dir.path(), "after-snapshot.db", &first).await;
    let replica = dir.path().join("replica.db");
    let mut follower = Follower::open(store.clone(), ns.clone(), &replica).unwrap();
    follower.catch_up().await.unwrap();

    // One transaction rewrites every row: a WAL transaction ten times the budget.
    write_rows(&conn, 0..ROWS, 1);
    let (report, peak) = peak_of(run_once(&store, &ns, config())).await;
    assert!(!report.snapshot, "{:?}", report.snapshot_reason);
    check_under_budget("a transaction larger than the budget", peak);
    let second = rows(&db);
    restore_and_check(&store, &ns, dir.path(), "after-large-txn.db", &second).await;
    // A follower applies it in place, and verify replays it.
    let (position, peak) = peak_of(follower.catch_up()).await;
    position.unwrap();
    check_under_budget("follow of a transaction larger than the budget", peak);
    integrity_check(&replica).unwrap();
    assert!(rows(&replica) == second, "the replica's rows differ");
    let (report, peak) = peak_of(verify_history(&store, &ns)).await;
    let report = report.unwrap();
    assert!(report.is_sound(), "{report:?}");
    check_under_budget("verify", peak);

    // Many small transactions, then a compaction that merges them with the large ones.
    let mut r = Replicator::open(store.clone(), ns.clone(), config())
        .await
        .unwrap();
    for round in 0..20 {
        write_rows(&conn, round * 50..round * 50 + 50, 2 + round);
        r.run_once().await.unwrap();
    }
    r.close().await.unwrap();
    let third = rows(&db);
    let policy = CompactionPolicy {
        target_size: 1 << 30,
        max_small: 1,
        ..CompactionPolicy::default()
    };
    let (report, peak) = peak_of(compact(&store, &ns, &policy, false)).await;
    let report = report.unwrap();
    assert!(!report.merges.is_empty(), "{report:?}");
    check_under_budget("compaction", peak);
    restore_and_check(&store, &ns, dir.path(), "after-compaction.db", &third).await;
}

/// While the store is down, the sealed segments that wait for it are kept in spill files
/// once they pass a share of the budget: an outage's backlog does not grow the heap.
#[tokio::test(flavor = "current_thread")]
async fn an_outage_backlog_waits_in_files_not_in_memory() {
    let _serial = SERIAL.lock().await;
    walvault::set_memory_budget(BUDGET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let down = Faults {
        fail_from: Some(1),
        ..Faults::default()
    };
    let storage = FaultyStorage::new(MemoryStorage::new(), down);
    let ns = NamespaceName::new("outage").unwrap();
    let mut config = LogConfig::new(dir.path().join("log"));
    config.seal_frames = 64; // many small segments
    let (backlog, peak) = peak_of(async {
        let mut log = LogWriter::open(storage.clone(), ns.clone(), config)
            .await
            .unwrap();
        log.append_snapshot(&[(1, &[1u8; 4096][..])], 1).unwrap();
        let page = vec![7u8; 4096];
        // 40 MiB of transactions, twenty times the budget, none of it durable.
        for i in 0..10_000u32 {
            log.append(&[(1 + i % 500, &page[..])], 500).unwrap();
            if i % 100 == 0 {
                tokio::task::yield_now().await; // the log's tasks try the store
            }
        }
        let backlog =
            log.next_frame_no() - 1 - log.tracker().watermark(walvault::Durability::Durable);
        drop(log);
        backlog
    })
    .await;
    assert!(
        backlog > 9_000,
        "the store took {backlog} frames while down"
    );
    assert!(storage.store_calls() > 0, "the log tried the store");
    check_under_budget("an outage's backlog", peak);
}

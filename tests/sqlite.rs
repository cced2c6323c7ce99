//! End to end with real SQLite: a writer does thousands of transactions over many phases
//! (inserts, updates, deletes, a VACUUM that shrinks the file), the replicator ships them
//! between phases, and every phase boundary is restored by time and by frame number; each
//! result passes `integrity_check` and holds exactly the writer's rows at that moment.
// The tests take wall-clock moments, as a user would, to restore to.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use walvault::{
    integrity_check, LocalStorage, NamespaceName, Replicator, ReplicatorConfig, RestoreOptions,
    Storage,
};

type Rows = Vec<(i64, Vec<u8>)>;

struct Boundary {
    at: DateTime<Utc>,
    frame_no: u64,
    rows: Rows,
}

#[derive(Clone, Copy)]
enum Mode {
    /// One replicator kept open, polling (a read transaction held throughout).
    Continuous,
    /// A replicator opened and closed per phase (like `replicate --once`), with the
    /// application checkpointing and truncating the WAL in between.
    OncePerPhase,
}

fn writer(db: &Path, page_size: u32, autocheckpoint: bool) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         PRAGMA wal_autocheckpoint={};
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        if autocheckpoint { 50 } else { 0 }
    ))
    .unwrap();
    conn
}

fn rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// One phase of writes: single-statement transactions of every kind.
fn write_phase(conn: &Connection, phase: u64, txns: u64) {
    for i in 0..txns {
        let n = phase * 1000 + i;
        match i % 5 {
            0 | 1 => conn.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [200 + n % 700]),
            2 => conn.execute(
                "UPDATE t SET v = randomblob(300) WHERE id % 7 = ?1",
                [n % 7],
            ),
            3 => conn.execute(
                "DELETE FROM t WHERE id = (SELECT max(id) FROM t) - ?1",
                [n % 11],
            ),
            _ => conn.execute("INSERT INTO t(v) VALUES (zeroblob(?1))", [3000 + n % 5000]),
        }
        .unwrap();
    }
    if phase == 4 {
        conn.execute_batch("DELETE FROM t WHERE id % 4 != 0; VACUUM;")
            .unwrap();
    }
}

async fn run(mode: Mode, page_size: u32, autocheckpoint: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("app").unwrap();
    let conn = writer(&db, page_size, autocheckpoint);
    let config = || {
        let mut c = ReplicatorConfig::new(&db);
        c.log.seal_frames = 256; // many segments
        c.checkpoint_wal_bytes = 256 << 10; // many checkpoints and WAL restarts
        c
    };
    let mut replicator = Some(
        Replicator::open(store.clone(), ns.clone(), config())
            .await
            .unwrap(),
    );
    let mut boundaries = Vec::new();
    let mut frame_no = 0;
    let mut snapshots = 0;
    let mut generations = std::collections::HashSet::new();
    for phase in 0..8 {
        write_phase(&conn, phase, 300);
        if matches!(mode, Mode::OncePerPhase) && phase % 2 == 1 {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        let r = match replicator.as_mut() {
            Some(r) => r,
            None => replicator.insert(
                Replicator::open(store.clone(), ns.clone(), config())
                    .await
                    .unwrap(),
            ),
        };
        let report = match mode {
            Mode::Continuous => r.poll().await.unwrap(),
            Mode::OncePerPhase => r.run_once().await.unwrap(),
        };
        if let Some(last) = &report.last {
            frame_no = last.commit_frame_no();
        }
        snapshots += usize::from(report.snapshot);
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        if let Ok(bytes) = std::fs::read(&wal) {
            generations.insert(bytes.get(16..24).map(<[u8]>::to_vec));
        }
        if matches!(mode, Mode::OncePerPhase) {
            replicator.take().unwrap().close().await.unwrap();
        }
        boundaries.push(Boundary {
            at: Utc::now(),
            frame_no,
            rows: rows(&conn),
        });
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    if let Some(r) = replicator {
        r.close().await.unwrap();
    }
    eprintln!(
        "snapshots shipped: {snapshots}, WAL generations seen: {}",
        generations.len()
    );
    if matches!(mode, Mode::Continuous) {
        assert!(
            generations.len() > 1,
            "the WAL never restarted: the test proves nothing"
        );
    }
    match mode {
        // Only the first run ships a snapshot: the held reader lets later WAL
        // generations continue where the last one stopped.
        Mode::Continuous => assert_eq!(snapshots, 1),
        // Every truncated WAL forces one.
        Mode::OncePerPhase => assert!(snapshots >= 4, "{snapshots} snapshots"),
    }
    assert!(store.durable_frame_no(&ns, None).await.unwrap() >= frame_no);
    for (i, b) in boundaries.iter().enumerate() {
        for (how, options) in [
            ("time", RestoreOptions::Timestamp(b.at)),
            ("frame", RestoreOptions::FrameNo(b.frame_no)),
        ] {
            let out = dir.path().join(format!("restored-{i}-{how}.db"));
            let plan = walvault::plan_restore(&store, &ns, options, None)
                .await
                .unwrap();
            let summary = store
                .restore_to_path(&ns, options, &out, None)
                .await
                .unwrap();
            assert_eq!(plan.segments.len(), summary.segments_read);
            assert_eq!(
                (plan.frame_no, plan.db_pages),
                (summary.frame_no, summary.db_pages)
            );
            assert_eq!(summary.page_size, page_size);
            integrity_check(&out).unwrap();
            let restored = rows(&Connection::open(&out).unwrap());
            assert!(
                restored == b.rows,
                "phase {i} restored by {how} differs ({} rows vs {})",
                restored.len(),
                b.rows.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_replication_restores_every_phase_exactly() {
    run(Mode::Continuous, 4096, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_replication_with_autocheckpoint_and_small_pages() {
    run(Mode::Continuous, 1024, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_per_phase_with_wal_resets_ships_snapshots_and_loses_nothing() {
    run(Mode::OncePerPhase, 8192, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_not_in_wal_mode_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("plain").unwrap();
    let err = Replicator::open(store, ns, ReplicatorConfig::new(&db))
        .await
        .unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("WAL"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_keeps_up_with_a_writer_that_never_stops() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("busy").unwrap();
    drop(writer(&db, 4096, true));
    let mut config = ReplicatorConfig::new(&db);
    config.checkpoint_wal_bytes = 128 << 10;
    let mut replicator = Replicator::open(store.clone(), ns.clone(), config)
        .await
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let conn = Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            for phase in 0..6 {
                write_phase(&conn, phase, 200);
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            rows(&conn)
        })
    };
    let mut snapshots = 0;
    while !done.load(std::sync::atomic::Ordering::Acquire) {
        snapshots += usize::from(replicator.poll().await.unwrap().snapshot);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let expected = writing.join().unwrap();
    replicator.poll().await.unwrap();
    replicator.close().await.unwrap();
    assert_eq!(snapshots, 1);
    let out = dir.path().join("latest.db");
    store
        .restore_to_path(&ns, RestoreOptions::Latest, &out, None)
        .await
        .unwrap();
    integrity_check(&out).unwrap();
    assert!(
        rows(&Connection::open(&out).unwrap()) == expected,
        "latest differs from the writer's final state"
    );
}

fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

fn wal_len(db: &Path) -> u64 {
    std::fs::metadata(wal_path(db)).map_or(0, |m| m.len())
}

/// The WAL's salts: they change each time SQLite restarts the WAL.
fn wal_salts(db: &Path) -> Vec<u8> {
    std::fs::read(wal_path(db)).unwrap()[16..24].to_vec()
}

async fn restored_rows(store: &LocalStorage, ns: &NamespaceName, out: &Path) -> Rows {
    store
        .restore_to_path(ns, RestoreOptions::Latest, out, None)
        .await
        .unwrap();
    integrity_check(out).unwrap();
    rows(&Connection::open(out).unwrap())
}

/// A position saved for one namespace means nothing to another, nor to a store that
/// lost the history: the first run ships a snapshot, and the result is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_namespace_or_a_wiped_store_starts_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = writer(&db, 4096, false);
    write_phase(&conn, 0, 100);
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let first = NamespaceName::new("first").unwrap();
    let mut r = Replicator::open(store.clone(), first.clone(), ReplicatorConfig::new(&db))
        .await
        .unwrap();
    assert!(r.run_once().await.unwrap().snapshot);
    r.close().await.unwrap();
    write_phase(&conn, 1, 100);

    // Same log directory, another namespace.
    let second = NamespaceName::new("second").unwrap();
    let mut r = Replicator::open(store.clone(), second.clone(), ReplicatorConfig::new(&db))
        .await
        .unwrap();
    assert!(r.run_once().await.unwrap().snapshot);
    r.close().await.unwrap();
    let out = dir.path().join("second.db");
    assert!(restored_rows(&store, &second, &out).await == rows(&conn));

    // The same namespace in a new, empty store.
    write_phase(&conn, 2, 100);
    let fresh = LocalStorage::open(dir.path().join("fresh-store")).unwrap();
    let mut r = Replicator::open(fresh.clone(), second.clone(), ReplicatorConfig::new(&db))
        .await
        .unwrap();
    assert!(r.run_once().await.unwrap().snapshot);
    r.close().await.unwrap();
    let out = dir.path().join("fresh.db");
    assert!(restored_rows(&fresh, &second, &out).await == rows(&conn));
}

/// `run_once` lets go of its read transaction, so the application's own checkpoints
/// can restart the WAL between runs (the next run notices and ships a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_does_not_keep_the_wal_from_being_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = writer(&db, 4096, false);
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("app").unwrap();
    let mut r = Replicator::open(store.clone(), ns.clone(), ReplicatorConfig::new(&db))
        .await
        .unwrap();
    for phase in 0..3 {
        write_phase(&conn, phase, 100);
        r.run_once().await.unwrap();
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            busy, 0,
            "phase {phase}: a reader kept the checkpoint from finishing"
        );
        assert_eq!(wal_len(&db), 0);
    }
    write_phase(&conn, 3, 100);
    assert!(r.run_once().await.unwrap().snapshot);
    r.close().await.unwrap();
    let out = dir.path().join("latest.db");
    assert!(restored_rows(&store, &ns, &out).await == rows(&conn));
}

/// In continuous mode the replicator checkpoints after enough new WAL, not on every poll
/// of a WAL file that SQLite never shrinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_mode_checkpoints_only_after_enough_new_wal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = writer(&db, 4096, false);
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("app").unwrap();
    let mut config = ReplicatorConfig::new(&db);
    config.checkpoint_wal_bytes = 64 << 10; // 16 frames of 4 KiB
    let mut r = Replicator::open(store.clone(), ns.clone(), config)
        .await
        .unwrap();
    write_phase(&conn, 0, 50);
    assert!(r.poll().await.unwrap().checkpointed);
    let grown = wal_len(&db);
    assert!(grown >= 64 << 10, "the WAL holds {grown} bytes");
    let salts = wal_salts(&db);
    for _ in 0..3 {
        let idle = r.poll().await.unwrap();
        assert!(!idle.checkpointed && idle.frames == 0);
    }
    conn.execute("INSERT INTO t(v) VALUES (x'01')", []).unwrap();
    assert!(!r.poll().await.unwrap().checkpointed);
    assert_ne!(
        wal_salts(&db),
        salts,
        "the checkpoint let SQLite restart the WAL"
    );
    write_phase(&conn, 1, 50);
    assert!(r.poll().await.unwrap().checkpointed);
    r.close().await.unwrap();
    let out = dir.path().join("latest.db");
    assert!(restored_rows(&store, &ns, &out).await == rows(&conn));
}

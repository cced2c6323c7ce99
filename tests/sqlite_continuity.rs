//! The replicator never skips silently: with real SQLite, every way the WAL can stop
//! continuing from the last shipped frame (deleted, deleted and recreated, truncated,
//! restarted while unwatched, frames rewritten at the same size) ships a snapshot that
//! says why, and the restored database equals the application's. A restart the held
//! reader proves continuous is followed without a snapshot.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use walvault::{
    integrity_check, IngestReport, LocalStorage, NamespaceName, Replicator, ReplicatorConfig,
    RestoreOptions, SnapshotReason, Storage,
};

type Rows = Vec<(i64, String)>;

struct Setup {
    dir: tempfile::TempDir,
    db: PathBuf,
    store: LocalStorage,
    ns: NamespaceName,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let conn = app(&db);
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    Setup {
        dir,
        db,
        store,
        ns: NamespaceName::new("app").unwrap(),
    }
}

/// An application connection: it never checkpoints by itself.
fn app(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
    conn
}

fn insert(conn: &Connection, v: &str) {
    conn.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
}

fn rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn wal(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

impl Setup {
    async fn replicator(&self, checkpoint_wal_bytes: u64) -> Replicator<LocalStorage> {
        let mut config = ReplicatorConfig::new(&self.db);
        config.checkpoint_wal_bytes = checkpoint_wal_bytes;
        Replicator::open(self.store.clone(), self.ns.clone(), config)
            .await
            .unwrap()
    }

    /// One `replicate --once`: open, ship, wait until durable, close.
    async fn once(&self) -> IngestReport {
        let mut r = self.replicator(u64::MAX).await;
        let report = r.run_once().await.unwrap();
        r.close().await.unwrap();
        report
    }

    /// Restores the latest state, checks it, and returns its rows.
    async fn restored(&self, name: &str) -> Rows {
        let out = self.dir.path().join(name);
        self.store
            .restore_to_path(&self.ns, RestoreOptions::Latest, &out, None)
            .await
            .unwrap();
        integrity_check(&out).unwrap();
        rows(&Connection::open(&out).unwrap())
    }
}

fn assert_snapshot(report: &IngestReport, reason: SnapshotReason) {
    assert!(report.snapshot, "no snapshot; wanted one for {reason}");
    assert_eq!(report.snapshot_reason, Some(reason));
}

fn assert_continued(report: &IngestReport) {
    assert!(
        !report.snapshot,
        "a snapshot for {:?} where the WAL continues",
        report.snapshot_reason
    );
}

/// A WAL the application's last connection deleted (after checkpointing it), then one
/// it created anew (random salts): both ship a snapshot saying why. The replicator runs
/// as `replicate --once` does, opened and closed per run: SQLite keeps the WAL while any
/// connection of the same process is open, however idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_a_recreated_wal_ship_snapshots_that_say_why() {
    let s = setup();
    assert_snapshot(&s.once().await, SnapshotReason::FirstRun);
    let conn = app(&s.db);
    insert(&conn, "one");
    assert_continued(&s.once().await);
    insert(&conn, "two");
    drop(conn);
    assert!(!wal(&s.db).exists(), "the last connection keeps its WAL");
    assert_snapshot(&s.once().await, SnapshotReason::WalDeleted);
    assert_eq!(s.restored("deleted.db").await.len(), 2);

    // Write, close (WAL gone, the file changed), write again (a new WAL, random salts).
    let conn = app(&s.db);
    insert(&conn, "three");
    assert_continued(&s.once().await);
    insert(&conn, "four");
    drop(conn);
    let conn = app(&s.db);
    insert(&conn, "five");
    assert_snapshot(&s.once().await, SnapshotReason::WalRestartedBySomeoneElse);
    assert_eq!(s.restored("recreated.db").await, rows(&conn));

    // An empty WAL, then a database file changed behind it: its checksum tells.
    drop(conn);
    assert_snapshot(&s.once().await, SnapshotReason::WalDeleted);
    assert_continued(&s.once().await); // still no WAL, the same file: nothing to ship
    let conn = app(&s.db);
    conn.execute_batch(
        "PRAGMA journal_mode=DELETE; INSERT INTO t(v) VALUES ('six'); PRAGMA journal_mode=WAL;",
    )
    .unwrap();
    assert_snapshot(&s.once().await, SnapshotReason::DatabaseChanged);
    assert_eq!(s.restored("changed.db").await, rows(&conn));
}

/// A `TRUNCATE` checkpoint while no reader is held, then a `RESTART` one followed by a
/// write (salt-1 + 1, but nobody watched the frames in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_unwatched_restarts_ship_snapshots_that_say_why() {
    let s = setup();
    let conn = app(&s.db);
    let mut r = s.replicator(u64::MAX).await;
    insert(&conn, "one");
    r.run_once().await.unwrap();
    insert(&conn, "two");
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    assert_eq!(std::fs::metadata(wal(&s.db)).unwrap().len(), 0);
    assert_snapshot(&r.run_once().await.unwrap(), SnapshotReason::WalTruncated);

    insert(&conn, "three");
    r.run_once().await.unwrap();
    insert(&conn, "four");
    let len = std::fs::metadata(wal(&s.db)).unwrap().len();
    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
        .unwrap();
    insert(&conn, "five");
    let same = std::fs::metadata(wal(&s.db)).unwrap().len();
    assert_eq!(
        same, len,
        "the WAL's size alone cannot tell it was restarted"
    );
    let report = r.run_once().await.unwrap();
    assert_snapshot(&report, SnapshotReason::WalRestartedUnwatched);
    r.close().await.unwrap();
    assert_eq!(s.restored("restarted.db").await, rows(&conn));
}

/// Frames written again over shipped ones with the same salts and at the same size
/// (what SQLite may do after its host lost power): the checksum chain at our position
/// fails. Emulated with a twin database that took another transaction from the same
/// WAL, whose WAL is then copied over ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_rewritten_at_the_same_size_ship_a_snapshot() {
    let s = setup();
    let conn = app(&s.db);
    insert(&conn, "one");
    let twin_db = s.dir.path().join("twin.db");
    std::fs::copy(&s.db, &twin_db).unwrap();
    std::fs::copy(wal(&s.db), wal(&twin_db)).unwrap();
    let twin = app(&twin_db);
    insert(&twin, "TWO");
    insert(&conn, "two");
    let mut r = s.replicator(u64::MAX).await;
    r.run_once().await.unwrap();
    let ours = std::fs::read(wal(&s.db)).unwrap();
    let theirs = std::fs::read(wal(&twin_db)).unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours[16..24], theirs[16..24], "the twin's WAL has our salts");
    assert_ne!(ours, theirs);
    std::fs::write(wal(&s.db), &theirs).unwrap(); // in place: the same inode
    let report = r.run_once().await.unwrap();
    assert_snapshot(&report, SnapshotReason::FramesRewritten);
    r.close().await.unwrap();
    assert_eq!(s.restored("rewritten.db").await, rows(&twin));
}

/// While the replicator polls, its held reader makes the application's `RESTART`
/// checkpoint return busy and keeps the WAL from being deleted; the replicator's own
/// checkpoint lets SQLite restart the WAL (salt-1 + 1), and the next poll follows the
/// new generation without a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_the_held_reader_is_followed_without_a_snapshot() {
    let s = setup();
    let conn = app(&s.db);
    // Checkpoint at every poll with new frames.
    let mut r = s.replicator(1).await;
    // A RESTART checkpoint waits for readers as long as the busy timeout: not at all.
    conn.busy_timeout(std::time::Duration::ZERO).unwrap();
    insert(&conn, "one");
    let first = r.poll().await.unwrap();
    assert!(first.checkpointed);
    let salt1 = |db: &Path| {
        let wal = std::fs::read(wal(db)).unwrap();
        u32::from_be_bytes(wal[16..20].try_into().unwrap())
    };
    let before = salt1(&s.db);
    for i in 0..5 {
        insert(&conn, &format!("row {i}"));
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            busy, 1,
            "the application restarted the WAL under our reader"
        );
        let report = r.poll().await.unwrap();
        assert_continued(&report);
        assert_eq!(report.transactions, 1);
    }
    let restarts = salt1(&s.db).wrapping_sub(before);
    assert!(
        (1..=5).contains(&restarts),
        "{restarts} restarts for 5 checkpoints"
    );
    drop(conn); // the application's last connection: our reader keeps the WAL
    assert!(wal(&s.db).exists(), "the WAL was deleted under our reader");
    let conn = app(&s.db);
    insert(&conn, "after reopening");
    assert_continued(&r.poll().await.unwrap());
    r.close().await.unwrap();
    assert_eq!(s.restored("followed.db").await, rows(&conn));
}

/// A WAL file replaced behind a polling replicator (another file under the name, here
/// with the very same bytes, so salts and checksums alone would not tell) ships a
/// snapshot: SQLite only deletes a WAL after checkpointing it, so what was in it may
/// never have been read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_file_replaced_behind_a_polling_replicator_ships_a_snapshot() {
    let s = setup();
    let conn = app(&s.db);
    let mut r = s.replicator(u64::MAX).await;
    insert(&conn, "one");
    r.poll().await.unwrap();
    insert(&conn, "two");
    assert_continued(&r.poll().await.unwrap());
    let aside = s.dir.path().join("aside");
    std::fs::copy(wal(&s.db), &aside).unwrap();
    std::fs::rename(&aside, wal(&s.db)).unwrap(); // same bytes, another inode
    let report = r.poll().await.unwrap();
    assert_snapshot(&report, SnapshotReason::WalReplaced);
    assert_continued(&r.poll().await.unwrap());
    r.close().await.unwrap();
    assert_eq!(s.restored("replaced.db").await, rows(&conn));
}

//! The replicator's seal policy, on an injected clock: the first commit after a quiet
//! spell is sealed (sent to the store) at once, later ones no sooner than a tenth of
//! `max_lag` after the previous seal, and `seal_due_in` says when the next one is due.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use rusqlite::Connection;
use tokio_stream::StreamExt;
use walvault::{
    Clock, Durability, ManualClock, MemoryStorage, NamespaceName, Replicator, ReplicatorConfig,
    Storage,
};

fn insert(conn: &Connection, i: u32) {
    conn.execute("INSERT INTO t(v) VALUES (?1)", [i]).unwrap();
}

#[tokio::test]
async fn a_quiet_log_seals_at_once_and_a_busy_one_every_tenth_of_the_max_lag() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap());
    let store = MemoryStorage::new();
    let ns = NamespaceName::new("app").unwrap();
    let mut config = ReplicatorConfig::new(&db);
    config.max_lag = Duration::from_secs(1);
    config.log.clock = Arc::new(clock.clone());
    let mut replicator = Replicator::open(store.clone(), ns.clone(), config)
        .await
        .unwrap();
    let segments = || async {
        let listed: Vec<_> = store.list_segments(&ns, 0, None).collect().await;
        listed.into_iter().map(Result::unwrap).collect::<Vec<_>>()
    };

    // The first run: a snapshot, sealed at once.
    replicator.poll().await.unwrap();
    assert_eq!(replicator.seal_due_in(), None, "nothing left unsealed");

    // A commit 50 ms later waits for the seal interval (100 ms after the last seal).
    clock.advance(Duration::from_millis(50));
    insert(&conn, 1);
    let report = replicator.poll().await.unwrap();
    assert_eq!(report.transactions, 1);
    assert_eq!(replicator.seal_due_in(), Some(Duration::from_millis(50)));
    assert_eq!(replicator.log().unsealed_frames(), 1);

    // Another commit meanwhile joins the same segment; at 100 ms both are sealed.
    clock.advance(Duration::from_millis(30));
    insert(&conn, 2);
    replicator.poll().await.unwrap();
    assert_eq!(replicator.seal_due_in(), Some(Duration::from_millis(20)));
    clock.advance(Duration::from_millis(20));
    replicator.poll().await.unwrap();
    assert_eq!(replicator.seal_due_in(), None);

    // After a quiet spell, the next commit is sealed by the poll that reads it.
    clock.advance(Duration::from_secs(5));
    insert(&conn, 3);
    replicator.poll().await.unwrap();
    assert_eq!(replicator.seal_due_in(), None);
    let applied = replicator.log().tracker().watermark(Durability::Applied);
    replicator
        .log()
        .wait(applied, Durability::Durable)
        .await
        .unwrap();
    let listed = segments().await;
    assert_eq!(listed.len(), 3, "snapshot, the busy pair, the lone commit");
    // Every stamp comes from the injected clock (the WAL's time is later than it).
    for info in listed {
        assert!(info.key.timestamp() <= clock.now());
    }
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_max_lag_below_the_minimum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(v)")
        .unwrap();
    let mut config = ReplicatorConfig::new(&db);
    config.max_lag = Duration::from_millis(1);
    let ns = NamespaceName::new("app").unwrap();
    let err = Replicator::open(MemoryStorage::new(), ns, config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_lag"), "{err}");
}

/// A database in WAL mode with a table, a replicator on a manual clock, and the clock.
async fn setup(
    dir: &std::path::Path,
    store: &MemoryStorage,
) -> (Connection, Replicator<MemoryStorage>, ManualClock) {
    let db = dir.join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v)",
    )
    .unwrap();
    let clock = ManualClock::new(chrono::Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap());
    let replicator = reopen(dir, store, &clock).await;
    (conn, replicator, clock)
}

async fn reopen(
    dir: &std::path::Path,
    store: &MemoryStorage,
    clock: &ManualClock,
) -> Replicator<MemoryStorage> {
    let mut config = ReplicatorConfig::new(dir.join("app.db"));
    config.log.clock = Arc::new(clock.clone());
    let ns = NamespaceName::new("app").unwrap();
    Replicator::open(store.clone(), ns, config).await.unwrap()
}

#[tokio::test]
async fn a_clean_close_resumes_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStorage::new();
    let (conn, mut replicator, clock) = setup(dir.path(), &store).await;
    assert!(
        replicator.poll().await.unwrap().snapshot,
        "a first run ships a snapshot"
    );
    clock.advance(Duration::from_millis(20));
    insert(&conn, 1);
    replicator.poll().await.unwrap(); // read, not yet sealed
    replicator.close().await.unwrap();

    let mut replicator = reopen(dir.path(), &store, &clock).await;
    insert(&conn, 2);
    let report = replicator.poll().await.unwrap();
    assert!(!report.snapshot, "{:?}", report.snapshot_reason);
    assert_eq!(report.transactions, 1);
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_replicator_dropped_before_saving_its_position_resumes_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStorage::new();
    let (conn, mut replicator, clock) = setup(dir.path(), &store).await;
    replicator.poll().await.unwrap();
    clock.advance(Duration::from_millis(20));
    insert(&conn, 1);
    replicator.poll().await.unwrap();
    assert!(
        replicator.seal_due_in().is_some(),
        "the commit waits for its seal"
    );
    // Killed, in effect: no close, so the position covering the commit is never saved,
    // while the log keeps the commit.
    let applied = replicator.log().tracker().watermark(Durability::Applied);
    replicator
        .log()
        .wait(applied, Durability::Written)
        .await
        .unwrap();
    drop(replicator);

    let mut replicator = reopen(dir.path(), &store, &clock).await;
    let report = replicator.poll().await.unwrap();
    assert_eq!(
        report.snapshot_reason,
        Some(walvault::SnapshotReason::LogPastPosition),
        "reading on from the old position would ship the commit twice"
    );
    replicator.close().await.unwrap();
    let restored = dir.path().join("restored.db");
    let ns = NamespaceName::new("app").unwrap();
    store
        .restore_to_path(&ns, walvault::RestoreOptions::Latest, &restored, None)
        .await
        .unwrap();
    let rows: i64 = Connection::open(&restored)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_clock_stepping_back_does_not_hold_a_seal() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStorage::new();
    let (conn, mut replicator, clock) = setup(dir.path(), &store).await;
    replicator.poll().await.unwrap();
    clock.advance(Duration::from_millis(50));
    insert(&conn, 1);
    replicator.poll().await.unwrap();
    assert_eq!(replicator.seal_due_in(), Some(Duration::from_millis(50)));
    clock.set(chrono::Utc.with_ymd_and_hms(2026, 12, 3, 11, 0, 0).unwrap());
    assert_eq!(replicator.seal_due_in(), Some(Duration::ZERO));
    replicator.poll().await.unwrap();
    assert_eq!(
        replicator.seal_due_in(),
        None,
        "sealed despite the step back"
    );
    replicator.close().await.unwrap();
}

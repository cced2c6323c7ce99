//! Follow, verify and history of a history whose segments are many times the memory
//! budget (this binary runs under the smallest budget), through a storage wrapper on
//! which fetching a segment whole fails: each reads segments in bounded runs of frames,
//! and the follower's replica ends equal to the writer's database.

#[path = "support/whole.rs"]
mod whole;

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use tokio_stream::StreamExt;
use walvault::{
    commit_log, compact, integrity_check, transactions, verify_history, CompactionPolicy, Follower,
    LocalStorage, NamespaceName, Replicator, ReplicatorConfig, Storage, MIN_MEMORY_BUDGET,
};
use whole::NoWholeSegments;

type Store = NoWholeSegments<LocalStorage>;
type Rows = Vec<(i64, Vec<u8>)>;

fn rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

fn rows_of(db: &Path) -> Rows {
    rows(&Connection::open(db).unwrap())
}

/// Ships what the writer's WAL holds.
async fn ship(db: &Path, store: &Store, ns: &NamespaceName) {
    let mut config = ReplicatorConfig::new(db);
    config.checkpoint_wal_bytes = u64::MAX; // keep large transactions in the WAL
    let mut replicator = Replicator::open(store.clone(), ns.clone(), config)
        .await
        .unwrap();
    replicator.run_once().await.unwrap();
    replicator.close().await.unwrap();
}

/// One transaction writing `count` rows of about 4 KiB from `first` on.
fn write_rows(conn: &Connection, first: i64, count: i64, round: u8) {
    let tx = conn.unchecked_transaction().unwrap();
    for id in first..first + count {
        let v: Vec<u8> = (0..4000u32)
            .map(|i| (i as u8) ^ (id as u8) ^ round)
            .collect();
        tx.execute(
            "INSERT OR REPLACE INTO t(id, v) VALUES (?1, ?2)",
            rusqlite::params![id, v],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

async fn durable(store: &Store, ns: &NamespaceName) -> u64 {
    store.refresh(ns, None).await.unwrap();
    store.durable_frame_no(ns, None).await.unwrap()
}

/// Catches `follower` up and checks its output is the writer's database.
async fn follows(follower: &mut Follower<Store>, output: &Path, conn: &Connection, what: &str) {
    let position = follower
        .catch_up()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(position > 0, "{what}");
    integrity_check(output).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(rows_of(output) == rows(conn), "{what}: replica rows differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_of_segments_larger_than_the_budget_is_followed_verified_and_listed() {
    walvault::set_memory_budget(MIN_MEMORY_BUDGET).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();
    write_rows(&conn, 0, 10, 0);
    let ns = NamespaceName::new("app").unwrap();
    let store = NoWholeSegments::new(LocalStorage::open(dir.path().join("store")).unwrap());
    ship(&db, &store, &ns).await;

    // Two followers: one keeps up, one is left behind until after a compaction.
    let keeps_up = dir.path().join("keeps-up.db");
    let mut a = Follower::open(store.clone(), ns.clone(), &keeps_up).unwrap();
    follows(&mut a, &keeps_up, &conn, "the first restore").await;
    let behind = dir.path().join("behind.db");
    let mut b = Follower::open(store.clone(), ns.clone(), &behind).unwrap();
    follows(&mut b, &behind, &conn, "the other's first restore").await;
    let reader = Connection::open(&keeps_up).unwrap(); // stays open throughout
    let before_large = a.position();

    // One transaction of about 8 MiB, then small ones and a shrinking one.
    write_rows(&conn, 10, 2000, 1);
    ship(&db, &store, &ns).await;
    for round in 0..5 {
        write_rows(&conn, round * 3, 3, 2 + round as u8);
        ship(&db, &store, &ns).await;
    }
    conn.execute("DELETE FROM t WHERE id % 2 = 0", []).unwrap();
    ship(&db, &store, &ns).await;
    let largest = {
        let listing = store.list_segments(&ns, 0, None);
        tokio::pin!(listing);
        let mut largest = 0;
        while let Some(info) = listing.next().await {
            largest = largest.max(info.unwrap().size);
        }
        largest
    };
    assert!(
        largest > 6 * MIN_MEMORY_BUDGET as u64,
        "the large transaction's segment ({largest} bytes) dwarfs the budget"
    );

    store.take_count();
    follows(&mut a, &keeps_up, &conn, "applying the large segment").await;
    assert!(
        rows(&reader) == rows(&conn),
        "an open reader missed the catch-up"
    );
    let applied = store.take_count();
    assert!(
        applied >= largest * 9 / 10,
        "the follower read the segments' frames ({applied} bytes)"
    );

    // The public stream reads the same segments a run at a time.
    let upto = durable(&store, &ns).await;
    let stream = transactions(
        store.clone(),
        ns.clone(),
        before_large,
        Duration::from_millis(5),
    );
    tokio::pin!(stream);
    let mut commits = Vec::new();
    while commits.last() != Some(&upto) {
        let txn = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream delivered every transaction")
            .unwrap()
            .unwrap();
        commits.push(txn.commit.frame_no);
    }
    assert_eq!(commits.len(), 7, "{commits:?}");

    let report = verify_history(&store, &ns).await.unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!(report.commits_unchecked, 0, "{report:?}");
    assert!(report.commits_proved >= 8, "{report:?}");

    // A compaction that keeps one commit of each hour makes one sparse segment whose
    // frames the history counts a run at a time.
    let log = commit_log(&store, &ns, None, None).await.unwrap();
    let policy = CompactionPolicy {
        fan_in: 2,
        max_small: 1,
        target_size: 1 << 30,
        precision: Duration::from_secs(3600),
        ..CompactionPolicy::default()
    };
    let compacted = compact(&store, &ns, &policy, false).await.unwrap();
    assert!(!compacted.merges.is_empty(), "{compacted:?}");
    let sparse = commit_log(&store, &ns, None, None).await.unwrap();
    assert!(sparse.len() < log.len(), "{sparse:?}");
    assert_eq!(sparse.last().map(|e| e.frame_no), Some(upto));
    let report = verify_history(&store, &ns).await.unwrap();
    assert!(report.is_sound(), "{report:?}");

    // The follower left behind catches up through the compacted segment.
    follows(
        &mut b,
        &behind,
        &conn,
        "catching up through a sparse segment",
    )
    .await;
    assert_eq!(b.position(), upto);
}

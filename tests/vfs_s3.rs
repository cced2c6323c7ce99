//! The read-only VFS over a real S3 wire protocol (an `s3s-fs` server in this process on
//! 127.0.0.1), with every request counted: opening a view and querying it never lists
//! the bucket, a cold point query costs at most the table's b-tree depth plus two ranged
//! GETs, a following view costs one HEAD per read transaction when nothing is new (and
//! none within its `refresh` interval), and what it reads equals the database.

#[path = "support/counting.rs"]
mod counting;
#[path = "s3/mod.rs"]
mod s3;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use counting::{CountingStore, Counts};
use rusqlite::{Connection, OpenFlags};
use walvault::vfs::{self, VfsOptions};
use walvault::{NamespaceName, ObjectStorage, Replicator, ReplicatorConfig};

const PREFIX: &str = "vfs";

/// The S3 server, on a runtime of its own: the VFS blocks the thread that queries, so
/// the server must not need that thread.
struct Server {
    rt: tokio::runtime::Runtime,
    server: s3::S3Server,
    _dir: tempfile::TempDir,
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(async { s3::S3Server::start(dir.path()) });
    Server {
        rt,
        server,
        _dir: dir,
    }
}

/// A store over the server whose requests are counted, registered with the VFS under a
/// new name (so its cache and catalog start cold).
fn cold_store(s: &Server) -> (String, Arc<CountingStore>) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let counting = CountingStore::new(s.server.client());
    let name = format!("s3-{}", N.fetch_add(1, Ordering::Relaxed));
    let storage =
        s.rt.block_on(async { ObjectStorage::new(counting.clone(), PREFIX) });
    vfs::add_store(&name, Arc::new(storage));
    (name, counting)
}

/// `rows` rows of about 600 bytes, committed in batches of `batch`, shipped into the
/// server's bucket; the database file stays for comparing.
fn ship(s: &Server, db: &Path, rows: u64, batch: u64) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
    )
    .unwrap();
    let storage =
        s.rt.block_on(async { ObjectStorage::new(s.server.client(), PREFIX) });
    let mut replicator = s.rt.block_on(async {
        let ns = NamespaceName::new("app").unwrap();
        Replicator::open(storage, ns, ReplicatorConfig::new(db))
            .await
            .unwrap()
    });
    let mut id = 0;
    while id < rows {
        conn.execute(
            "WITH RECURSIVE n(k) AS (SELECT ?1 UNION ALL SELECT k + 1 FROM n WHERE k < ?2)
             INSERT INTO t(id, v) SELECT k, printf('%.600c', char(65 + k % 26)) FROM n",
            (id + 1, (id + batch).min(rows)),
        )
        .unwrap();
        id += batch;
        s.rt.block_on(replicator.poll()).unwrap();
    }
    s.rt.block_on(replicator.close()).unwrap();
}

fn open(uri: &str) -> Connection {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(uri, flags)
        .unwrap_or_else(|e| panic!("{uri}: {e} ({:?})", vfs::last_error()))
}

fn value(conn: &Connection, id: u64) -> String {
    conn.query_row("SELECT v FROM t WHERE id = ?1", [id], |r| r.get(0))
        .unwrap()
}

/// The depth of the table's b-tree (root to leaf), from SQLite's dbstat.
fn depth(db: &Path) -> u64 {
    let conn = Connection::open(db).unwrap();
    conn.query_row(
        "SELECT max(length(path) - length(replace(path, '/', ''))) FROM dbstat WHERE name = 't'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn delta(after: Counts, before: Counts) -> (u64, u64, u64) {
    (
        after.get - before.get,
        after.head - before.head,
        after.list - before.list,
    )
}

#[test]
fn a_cold_point_query_costs_the_tree_depth_and_never_lists() {
    vfs::register(VfsOptions::default()).unwrap();
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    ship(&s, &db, 20_000, 5_000);
    let depth = depth(&db);
    assert!(depth >= 3, "a tree of some depth: {depth}");
    let local = Connection::open(&db).unwrap();

    let (name, counts) = cold_store(&s);
    let conn = open(&format!(
        "file:app?vfs=walvault&store={name}&frame=999999999"
    ));
    let opened = counts.counts();
    assert_eq!(opened.list, 0, "opening lists nothing: {opened:?}");
    // The schema, then point queries on rows not read yet, each cold.
    let n: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    for id in [1, 7_777, 19_999] {
        let before = counts.counts();
        assert_eq!(value(&conn, id), value(&local, id));
        let (gets, heads, lists) = delta(counts.counts(), before);
        eprintln!("point query {id}: {gets} GETs, {heads} HEADs, {lists} LISTs; depth {depth}");
        assert_eq!(lists, 0);
        assert!(gets <= depth + 2, "{gets} GETs for depth {depth}");
    }
    // Warm: the same queries again read nothing.
    let before = counts.counts();
    for id in [1, 7_777, 19_999] {
        assert_eq!(value(&conn, id), value(&local, id));
    }
    assert_eq!(
        counts.counts().total(),
        before.total(),
        "a fixed, warm view"
    );
}

#[test]
fn a_following_view_costs_one_head_per_transaction_or_none_within_its_refresh() {
    vfs::register(VfsOptions::default()).unwrap();
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    ship(&s, &db, 3_000, 1_000);
    let local = Connection::open(&db).unwrap();

    let (name, counts) = cold_store(&s);
    let conn = open(&format!("file:app?vfs=walvault&store={name}"));
    assert_eq!(value(&conn, 2_999), value(&local, 2_999));
    let before = counts.counts();
    for _ in 0..10 {
        assert_eq!(value(&conn, 2_999), value(&local, 2_999));
    }
    let (gets, heads, lists) = delta(counts.counts(), before);
    assert_eq!((gets, lists), (0, 0), "nothing new: no GET, no LIST");
    assert_eq!(heads, 10, "one HEAD per read transaction");

    let (name, counts) = cold_store(&s);
    let conn = open(&format!("file:app?vfs=walvault&store={name}&refresh=1h"));
    assert_eq!(value(&conn, 17), value(&local, 17));
    let before = counts.counts();
    for _ in 0..10 {
        assert_eq!(value(&conn, 17), value(&local, 17));
    }
    assert_eq!(
        counts.counts().total(),
        before.total(),
        "within the refresh interval"
    );
}

#[test]
fn a_scan_reads_ahead_in_runs() {
    vfs::register(VfsOptions::default()).unwrap();
    let s = server();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    ship(&s, &db, 20_000, 20_000);
    let local = Connection::open(&db).unwrap();
    let pages: u64 = local
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();

    let (name, counts) = cold_store(&s);
    let conn = open(&format!("file:app?vfs=walvault&store={name}"));
    let sum = "SELECT sum(length(v)), count(*), max(id) FROM t";
    let read = |c: &Connection| -> (i64, i64, i64) {
        c.query_row(sum, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
    };
    assert_eq!(read(&conn), read(&local));
    let gets = counts.counts().get;
    eprintln!("scan of {pages} pages: {gets} GETs");
    assert!(
        gets * 20 < pages,
        "{gets} GETs for {pages} pages: no read-ahead"
    );
}

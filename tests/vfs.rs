//! The read-only VFS against real histories: a real SQLite writer's every commit, read
//! back through `file:app?vfs=walvault` at its frame and at its time, must be exactly the
//! rows the writer had (and pass `integrity_check`); views switch between transactions,
//! follow a store that grows, refuse writes, name the history's span for a time before
//! it, and turn a corrupt or missing segment into `SQLITE_CORRUPT`.

// Commits are stamped with wall-clock time, which the tests read to ask for moments.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use walvault::vfs::{self, VfsOptions, ViewAt};
use walvault::{Durability, LocalStorage, NamespaceName, Replicator, ReplicatorConfig, Storage};

type Rows = Vec<(i64, String, i64)>;

/// The cache every test of this binary shares (the VFS is set up once per process):
/// small, so that scans evict.
const CACHE_BYTES: u64 = 2 << 20;

fn setup() {
    vfs::register(VfsOptions {
        cache_bytes: CACHE_BYTES,
        default_store: None,
    })
    .unwrap();
}

/// One commit of the writer: its frame, a moment just after it, and the rows it left.
struct Commit {
    frame_no: u64,
    after: DateTime<Utc>,
    rows: Rows,
}

struct History {
    _dir: tempfile::TempDir,
    db: PathBuf,
    store: PathBuf,
    commits: Vec<Commit>,
}

fn rows(conn: &Connection) -> rusqlite::Result<Rows> {
    let mut stmt = conn.prepare("SELECT id, v, length(pad) FROM t ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Transaction `i` of the writer: inserts, updates, deletes and large rows.
fn write(conn: &Connection, i: u64) {
    match i % 6 {
        0 | 1 => conn.execute(
            "INSERT INTO t(v, pad) VALUES (?1, zeroblob(?2))",
            (format!("row {i}"), 100 + (i * 37) % 900),
        ),
        2 => conn.execute("UPDATE t SET v = v || '+' WHERE id % 5 = ?1", [i % 5]),
        3 => conn.execute(
            "DELETE FROM t WHERE id = (SELECT min(id) FROM t) + ?1",
            [i % 3],
        ),
        4 => conn.execute(
            "INSERT INTO t(v, pad) VALUES (?1, zeroblob(9000))",
            [format!("big {i}")],
        ),
        _ => conn
            .execute_batch(&format!(
                "BEGIN; INSERT INTO t(v, pad) VALUES ('a{i}', zeroblob(10));
             INSERT INTO t(v, pad) VALUES ('b{i}', zeroblob(20)); COMMIT;"
            ))
            .map(|()| 2),
    }
    .unwrap();
}

/// A writer's database in WAL mode (table `t`) and a replicator shipping it into a local
/// store beside it, sealing segments of at most `seal_frames` frames when given.
struct Writer {
    dir: tempfile::TempDir,
    db: PathBuf,
    store: PathBuf,
    conn: Connection,
    rt: tokio::runtime::Runtime,
    replicator: Replicator<LocalStorage>,
}

fn writer(seal_frames: Option<u32>) -> Writer {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let store = dir.path().join("store");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL, pad BLOB NOT NULL);",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let replicator = rt.block_on(async {
        let mut config = ReplicatorConfig::new(&db);
        if let Some(frames) = seal_frames {
            config.log.seal_frames = frames;
        }
        let storage = LocalStorage::open(&store).unwrap();
        let ns = NamespaceName::new("app").unwrap();
        Replicator::open(storage, ns, config).await.unwrap()
    });
    Writer {
        dir,
        db,
        store,
        conn,
        rt,
        replicator,
    }
}

/// A writer's history of `txns` transactions, each shipped by the replicator as it
/// commits, in segments of at most `seal_frames` frames; the application checkpoints
/// now and then, so the history holds WAL restarts too.
fn history(txns: u64, seal_frames: u32) -> History {
    history_with(txns, seal_frames, 0)
}

/// [`history`], starting with one transaction of `fill` rows of 3 KB when `fill > 0`
/// (pages that stay in that first segment while later segments change others).
fn history_with(txns: u64, seal_frames: u32, fill: u64) -> History {
    let Writer {
        dir,
        db,
        store,
        conn,
        rt,
        mut replicator,
    } = writer(Some(seal_frames));
    let commits = rt.block_on(async {
        let mut commits = Vec::new();
        for i in 0..txns + u64::from(fill > 0) {
            if fill > 0 && i == 0 {
                conn.execute(
                    "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?1)
                     INSERT INTO t(v, pad) SELECT 'fill ' || k, zeroblob(3000) FROM n",
                    [fill],
                )
                .unwrap();
            } else {
                write(&conn, i - u64::from(fill > 0));
            }
            if i % 37 == 36 {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                    .unwrap();
            }
            let report = replicator.poll().await.unwrap();
            let frame_no = report.last.expect("a commit was shipped").commit_frame_no();
            // Commit stamps are in milliseconds: the next commit gets a later one.
            tokio::time::sleep(Duration::from_millis(2)).await;
            commits.push(Commit {
                frame_no,
                after: Utc::now(),
                rows: rows(&conn).unwrap(),
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        replicator.close().await.unwrap();
        commits
    });
    History {
        _dir: dir,
        db,
        store,
        commits,
    }
}

fn uri(store: &Path, params: &str) -> String {
    format!("file:app?vfs=walvault&store={}{params}", store.display())
}

fn open(uri: &str) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(uri, flags)
}

fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn pragma(conn: &Connection, sql: &str) -> rusqlite::Result<String> {
    conn.query_row(sql, [], |r| r.get(0))
}

#[test]
fn every_commit_reads_back_at_its_frame_and_at_its_time() {
    setup();
    let h = history(120, 24);
    // By frame: a connection per commit, opened at it.
    for (i, c) in h.commits.iter().enumerate() {
        let conn = open(&uri(&h.store, &format!("&frame={}", c.frame_no))).unwrap();
        assert_eq!(integrity(&conn), "ok", "commit {i} at frame {}", c.frame_no);
        assert_eq!(
            rows(&conn).unwrap(),
            c.rows,
            "commit {i} at frame {}",
            c.frame_no
        );
    }
    // By time: one connection moved from moment to moment (oldest to newest and back).
    let conn = open(&uri(&h.store, "&at=latest")).unwrap();
    let order: Vec<usize> = (0..h.commits.len())
        .chain((0..h.commits.len()).rev())
        .collect();
    for i in order {
        let c = &h.commits[i];
        let at = c.after.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let said = pragma(&conn, &format!("PRAGMA walvault_at = '{at}'")).unwrap();
        assert!(said.contains(&format!("frame {}", c.frame_no)), "{said}");
        assert_eq!(rows(&conn).unwrap(), c.rows, "commit {i} at {at}");
    }
    assert_eq!(integrity(&conn), "ok");
}

/// Ships what the WAL holds and waits until it is durable.
fn ship(rt: &tokio::runtime::Runtime, replicator: &mut Replicator<LocalStorage>) {
    rt.block_on(async {
        let mut last = replicator.poll().await.unwrap().last;
        // A poll seals once the seal is due; poll again until it was.
        while let Some(due) = replicator.seal_due_in() {
            tokio::time::sleep(due).await;
            last = replicator.poll().await.unwrap().last.or(last);
        }
        if let Some(last) = last {
            last.wait(Durability::Durable).await.unwrap();
        }
    });
}

#[test]
fn a_view_without_a_moment_follows_the_store() {
    setup();
    let Writer {
        dir: _dir,
        store,
        conn,
        rt,
        mut replicator,
        ..
    } = writer(None);
    ship(&rt, &mut replicator);
    let reader = open(&uri(&store, "")).unwrap_or_else(|e| panic!("{e}: {:?}", vfs::last_error()));
    for i in 0..30 {
        write(&conn, i);
        ship(&rt, &mut replicator);
        // Each read transaction starts at the latest durable commit...
        assert_eq!(
            rows(&reader).unwrap(),
            rows(&conn).unwrap(),
            "after commit {i}"
        );
        // ...and a transaction keeps its commit while the store moves on.
        if i % 10 == 9 {
            reader.execute_batch("BEGIN").unwrap();
            let inside = rows(&reader).unwrap();
            write(&conn, 1000 + i);
            ship(&rt, &mut replicator);
            assert_eq!(rows(&reader).unwrap(), inside, "inside one transaction");
            reader.execute_batch("COMMIT").unwrap();
            assert_eq!(rows(&reader).unwrap(), rows(&conn).unwrap());
        }
    }
    rt.block_on(replicator.close()).unwrap();
}

#[test]
fn a_view_moves_only_between_transactions() {
    setup();
    let h = history(40, 1000);
    let (first, last) = (&h.commits[5], h.commits.last().unwrap());
    let conn = open(&uri(&h.store, &format!("&frame={}", first.frame_no))).unwrap();
    assert_eq!(rows(&conn).unwrap(), first.rows);
    conn.execute_batch("BEGIN").unwrap();
    assert_eq!(rows(&conn).unwrap(), first.rows);
    let said = pragma(&conn, &format!("PRAGMA walvault_frame = {}", last.frame_no)).unwrap();
    assert!(said.contains(&format!("frame {}", last.frame_no)), "{said}");
    assert_eq!(
        rows(&conn).unwrap(),
        first.rows,
        "the open transaction keeps its view"
    );
    conn.execute_batch("COMMIT").unwrap();
    assert_eq!(
        rows(&conn).unwrap(),
        last.rows,
        "the next transaction has the new view"
    );
    assert_eq!(
        pragma(&conn, "PRAGMA walvault_frame").unwrap(),
        last.frame_no.to_string()
    );
    let view = pragma(&conn, "PRAGMA walvault_view").unwrap();
    assert!(view.contains("fixed at frame"), "{view}");
    // Following again.
    let said = pragma(&conn, "PRAGMA walvault_at = 'latest'").unwrap();
    assert!(said.contains("following"), "{said}");
    // A malformed moment changes nothing and says what was wrong.
    let err = pragma(&conn, "PRAGMA walvault_at = 'yesterday'").unwrap_err();
    assert!(err.to_string().contains("RFC 3339"), "{err}");
    let err = pragma(&conn, "PRAGMA walvault_frame = 'x'").unwrap_err();
    assert!(err.to_string().contains("not a frame number"), "{err}");
    assert_eq!(rows(&conn).unwrap(), last.rows);
}

#[test]
fn writes_are_refused_and_nothing_is_created() {
    setup();
    let h = history(10, 1000);
    let before = std::fs::read_dir(h.db.parent().unwrap()).unwrap().count();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri(&h.store, ""), flags).unwrap();
    for sql in [
        "INSERT INTO t(v, pad) VALUES ('x', x'00')",
        "CREATE TABLE u(a)",
        "DELETE FROM t",
        "PRAGMA user_version = 3",
    ] {
        let err = conn.execute_batch(sql).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::ReadOnly),
            "{sql}: {err}"
        );
    }
    // Temporary files (a sort larger than memory, a temp table) work in memory.
    conn.execute_batch("PRAGMA temp_store = FILE; CREATE TEMP TABLE s AS SELECT * FROM t")
        .unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT * FROM s ORDER BY v DESC)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n as usize, h.commits.last().unwrap().rows.len());
    let after = std::fs::read_dir(h.db.parent().unwrap()).unwrap().count();
    assert_eq!(before, after, "the VFS created a file");
}

#[test]
fn a_time_before_the_history_names_its_span() {
    setup();
    let h = history(5, 1000);
    let err = open(&uri(&h.store, "&at=2001-01-01T00:00:00Z")).unwrap_err();
    assert_eq!(
        err.sqlite_error_code(),
        Some(ErrorCode::CannotOpen),
        "{err}"
    );
    let message = vfs::last_error().unwrap();
    assert!(message.contains("2001-01-01T00:00:00.000Z"), "{message}");
    assert!(message.contains("spans"), "{message}");
    let err = vfs::describe(
        Some(h.store.to_str().unwrap()),
        "app",
        ViewAt::Time("2001-01-01T00:00:00Z".parse().unwrap()),
    )
    .unwrap_err();
    let message = err.to_string();
    let last = h.commits.last().unwrap().frame_no;
    assert!(message.contains(&format!("(frame {last})")), "{message}");
    // Through the pragma, SQLite shows the message itself, and the view stays.
    let conn = open(&uri(&h.store, "")).unwrap();
    let err = pragma(&conn, "PRAGMA walvault_at = '2001-01-01T00:00:00Z'").unwrap_err();
    assert!(err.to_string().contains("spans"), "{err}");
    assert_eq!(rows(&conn).unwrap(), h.commits.last().unwrap().rows);
    // A namespace the store lacks, and a store that does not exist.
    assert!(open(&format!(
        "file:nope?vfs=walvault&store={}",
        h.store.display()
    ))
    .is_err());
    assert!(open("file:app?vfs=walvault&store=/no/such/store/dir").is_err());
    assert!(vfs::last_error().unwrap().contains("does not exist"));
}

/// Segment files of the local store, largest first.
fn segments(store: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "seg") {
                found.push(path);
            }
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    found
}

/// The last frame of a segment, from its file name (`{u64::MAX - end}-{start}-{time}`).
fn end_frame(segment: &Path) -> u64 {
    let name = segment.file_stem().unwrap().to_string_lossy().to_string();
    u64::MAX - name[..20].parse::<u64>().unwrap()
}

#[test]
fn a_corrupt_or_missing_segment_is_sqlite_corrupt() {
    setup();
    let h = history(60, 20);
    let segs = segments(&h.store);
    assert!(segs.len() > 3, "{segs:?}");
    // Damage every frame of the largest segment, and read the commit it ends with.
    let victim = &segs[0];
    let good = std::fs::read(victim).unwrap();
    let mut bad = good.clone();
    for at in (200..bad.len() - 200).step_by(512) {
        bad[at] ^= 0x40;
    }
    std::fs::write(victim, &bad).unwrap();
    let conn = open(&uri(&h.store, &format!("&frame={}", end_frame(victim))));
    let err = conn.and_then(|c| rows(&c)).unwrap_err();
    assert_eq!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt),
        "{err}"
    );
    let message = vfs::last_error().unwrap();
    let name = victim.file_stem().unwrap().to_string_lossy().to_string();
    assert!(message.contains(&name), "{message} should name {name}");
    // Mended, it reads again (nothing wrong was cached).
    std::fs::write(victim, &good).unwrap();
    let conn = open(&uri(&h.store, &format!("&frame={}", end_frame(victim)))).unwrap();
    assert_eq!(integrity(&conn), "ok");
    // A segment the catalog lists but the store lost.
    let lost = &segs[1];
    std::fs::remove_file(lost).unwrap();
    let conn = open(&uri(&h.store, &format!("&frame={}", end_frame(lost))));
    let err = conn.and_then(|c| rows(&c)).unwrap_err();
    assert!(
        matches!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::CannotOpen)
        ),
        "{err}"
    );
    let message = vfs::last_error().unwrap();
    let name = lost.file_stem().unwrap().to_string_lossy().to_string();
    assert!(message.contains(&name), "{message} should name {name}");
}

#[test]
fn a_scan_larger_than_the_cache_stays_within_it() {
    setup();
    // The first transaction adds 2,000 rows of 3 KB: the database outgrows the cache.
    let h = history_with(100, 64, 2000);
    let conn = open(&uri(&h.store, "")).unwrap();
    conn.execute_batch("PRAGMA cache_size = 10").unwrap();
    let size: i64 = conn
        .query_row("SELECT sum(length(pad)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(
        size as u64 > 2 * CACHE_BYTES,
        "the database must outgrow the cache"
    );
    assert_eq!(rows(&conn).unwrap(), h.commits.last().unwrap().rows);
    assert_eq!(integrity(&conn), "ok");
    let stats = vfs::cache_stats();
    assert!(stats.bytes <= stats.capacity, "{stats:?}");
    assert_eq!(stats.capacity, CACHE_BYTES);
    assert!(stats.page_misses > 0 && stats.page_hits > 0, "{stats:?}");
}

#[test]
fn a_fixed_view_reads_on_after_compaction_deletes_its_segments() {
    setup();
    let h = history(80, 16);
    let target = &h.commits[60];
    let conn = open(&uri(&h.store, &format!("&frame={}", target.frame_no))).unwrap();
    conn.execute_batch("PRAGMA cache_size = 0").unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as usize, target.rows.len());
    // Merge the segments the view found, and delete the merged-away ones at once.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let storage = LocalStorage::open(&h.store).unwrap();
        let ns = NamespaceName::new("app").unwrap();
        let policy = walvault::CompactionPolicy {
            max_small: 2,
            fan_in: 64,
            ..Default::default()
        };
        let report = walvault::compact(&storage, &ns, &policy, false)
            .await
            .unwrap();
        assert!(!report.merges.is_empty(), "{report:?}");
        let gc = walvault::GcOptions {
            grace: Duration::ZERO,
            dry_run: false,
        };
        storage.collect_garbage(&ns, gc, None).await.unwrap();
    });
    assert_eq!(
        rows(&conn).unwrap(),
        target.rows,
        "the same commit, found again"
    );
    assert_eq!(integrity(&conn), "ok");
}

#[test]
fn a_view_whose_walk_compaction_cut_across_resolves_again() {
    setup();
    // A bulk load, one row changed, then many small appends: the changed row's page has
    // its newest frame in the middle of the history, which a view reaches only after
    // walking the newer segments.
    let Writer {
        dir: _dir,
        store,
        conn,
        rt,
        mut replicator,
        ..
    } = writer(Some(4));
    let mut step = |sql: &str| {
        conn.execute_batch(sql).unwrap();
        rt.block_on(replicator.poll()).unwrap();
    };
    step(
        "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 300)
         INSERT INTO t(id, v, pad) SELECT k, 'row ' || k, zeroblob(3000) FROM n",
    );
    step("UPDATE t SET v = 'changed in the middle' WHERE id = 150");
    for i in 0..40 {
        step(&format!(
            "INSERT INTO t(id, v, pad) VALUES ({}, 'late', x'00')",
            1000 + i
        ));
    }
    // Page 1 changes last, so reading the schema walks only the newest segments.
    step("PRAGMA user_version = 7");
    rt.block_on(replicator.close()).unwrap();
    let want = rows(&conn).unwrap();

    let view = open(&uri(&store, "&frame=999999999")).unwrap();
    view.execute_batch("PRAGMA cache_size = 0").unwrap();
    let n: i64 = view
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    // Everything but the newest segments merged, across where the view's walk stands;
    // nothing deleted.
    rt.block_on(async {
        let storage = LocalStorage::open(&store).unwrap();
        let ns = NamespaceName::new("app").unwrap();
        let policy = walvault::CompactionPolicy {
            max_small: 2,
            fan_in: 1000,
            ..Default::default()
        };
        let report = walvault::compact(&storage, &ns, &policy, false)
            .await
            .unwrap();
        assert!(!report.merges.is_empty(), "{report:?}");
    });
    // A following connection on the same store brings the process's catalog up to date.
    let follower = open(&uri(&store, "")).unwrap();
    assert_eq!(rows(&follower).unwrap(), want);
    let v: String = view
        .query_row("SELECT v FROM t WHERE id = 150", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "changed in the middle");
    assert_eq!(rows(&view).unwrap(), want);
    assert_eq!(integrity(&view), "ok");
}

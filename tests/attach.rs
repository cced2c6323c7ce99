//! In-process attachment, as an application uses it: real SQLite connections attached
//! through `walvault::sqlite::attach`, the store checked after COMMIT returns (restored,
//! `integrity_check`ed, row for row), other connections and processes writing beside
//! them, SQLite's checkpoints, a store outage under a commit deadline, and a writer
//! process SIGKILLed right after its commits returned.
// The tests take wall-clock moments, as a user would, to restore to.
#![allow(clippy::disallowed_methods)]

mod s3;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use walvault::sqlite::{attach, AttachOptions, AttachedConnection, Vault};
use walvault::{
    integrity_check, restore_database, Durability, InstallOptions, LocalStorage, NamespaceName,
    ObjectStorage, RestoreOptions, Storage,
};

fn ns(name: &str) -> NamespaceName {
    NamespaceName::new(name).unwrap()
}

/// A WAL database with a table of ids and 1 KiB payloads.
fn create(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();
    conn
}

fn insert(conn: &Connection, id: i64) -> rusqlite::Result<usize> {
    conn.execute("INSERT INTO t(id, v) VALUES (?1, randomblob(1024))", [id])
}

fn ids(db: &Path) -> Vec<i64> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Restores `namespace` (as of `at`) into a fresh file, checks its integrity and returns
/// its ids.
/// Restores through a store opened afresh, as another process (`walvault restore`)
/// would.
fn restored_ids(store: &Path, namespace: &str, at: RestoreOptions) -> Vec<i64> {
    try_restored_ids(store, namespace, at).unwrap()
}

fn try_restored_ids(
    store: &Path,
    namespace: &str,
    at: RestoreOptions,
) -> walvault::Result<Vec<i64>> {
    restored_from(&LocalStorage::open(store)?, namespace, at)
}

fn restored_from<S: Storage + ?Sized>(
    store: &S,
    namespace: &str,
    at: RestoreOptions,
) -> walvault::Result<Vec<i64>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("restored.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(restore_database(
        store,
        &ns(namespace),
        at,
        &out,
        InstallOptions::default(),
        None,
    ))?;
    integrity_check(&out).unwrap();
    Ok(ids(&out))
}

fn upto(n: i64) -> Vec<i64> {
    (1..=n).collect()
}

/// A restore to `at`, taken right after commit `n` returned, has commits `1..=n`, and
/// later ones only if they began within `at`'s millisecond (times are kept in whole
/// milliseconds).
/// `began(j)` is when commit `j` began, where known.
fn assert_within_the_millisecond(
    got: &[i64],
    n: usize,
    at: DateTime<Utc>,
    began: impl Fn(usize) -> Option<DateTime<Utc>>,
) {
    let k = got.len();
    assert_eq!(got, upto(k as i64), "restore to just after commit {n}");
    assert!(k >= n, "restore to just after commit {n} has only {k}");
    for j in n + 1..=k {
        let Some(began) = began(j) else { continue };
        assert!(
            began.timestamp_millis() <= at.timestamp_millis(),
            "restore to just after commit {n} has commit {j}, begun in a later millisecond"
        );
    }
}

fn attached(db: &Path, store: &Path, options: AttachOptions) -> AttachedConnection {
    let conn = create(db);
    attach(conn, LocalStorage::open(store).unwrap(), ns("app"), options).unwrap()
}

#[test]
fn commits_return_at_their_level_and_a_restore_to_just_after_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store_dir) = (dir.path().join("app.db"), dir.path().join("store"));
    let conn = attached(&db, &store_dir, AttachOptions::default());
    let store = store_dir.as_path();
    let tracker = conn.vault().tracker().clone();
    // (moment before BEGIN, moment COMMIT returned) of each commit.
    let mut times: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    for id in 1..=30 {
        let level = [
            Durability::Durable,
            Durability::Written,
            Durability::Applied,
        ][id % 3];
        conn.set_durability(level);
        let before = Utc::now();
        insert(&conn, id as i64).unwrap();
        times.push((before, Utc::now()));
        // `Written` returns once SQLite's WAL is fsynced and the log has the commit in
        // memory; its log fsync follows (see `written_commits_survive_losing_the_logs_tail`).
        let watermark = match level {
            Durability::Written => Durability::Applied,
            level => level,
        };
        let applied = tracker.watermark(Durability::Applied);
        assert!(
            tracker.watermark(watermark) >= applied,
            "commit {id} returned before it was {level}"
        );
        if level == Durability::Durable && id < 10 {
            // Returned at `Durable`: the store has it, nothing to wait for.
            assert_eq!(
                restored_ids(store, "app", RestoreOptions::Latest),
                upto(id as i64)
            );
        }
    }
    conn.vault().commit(Durability::Durable).unwrap();
    for (i, (_, after)) in times.iter().enumerate() {
        let got = restored_ids(store, "app", RestoreOptions::Timestamp(*after));
        assert_within_the_millisecond(&got, i + 1, *after, |j| times.get(j - 1).map(|t| t.0));
    }
    assert!(conn.last_error().is_none());
}

#[test]
fn commits_of_connections_and_processes_not_attached_ship_too() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store_dir) = (dir.path().join("app.db"), dir.path().join("store"));
    let options = AttachOptions {
        durability: Durability::Durable,
        ..Default::default()
    };
    let conn = attached(&db, &store_dir, options);
    let store = store_dir.as_path();
    insert(&conn, 1).unwrap();
    // Another connection of this process, not attached.
    let plain = Connection::open(&db).unwrap();
    insert(&plain, 2).unwrap();
    // Another process: the system sqlite3 shell.
    let shell = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA busy_timeout=5000; INSERT INTO t(id, v) VALUES (3, randomblob(1024));")
        .stdout(Stdio::null())
        .status()
        .expect("the sqlite3 shell");
    assert!(shell.success());
    // Nobody attached commits now: the vault's poll ships them within its lag.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = restored_ids(store, "app", RestoreOptions::Latest);
        if got == upto(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unattached commits not shipped: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An attached commit ships whatever the WAL holds before it returns.
    insert(&plain, 4).unwrap();
    insert(&conn, 5).unwrap();
    assert_eq!(restored_ids(store, "app", RestoreOptions::Latest), upto(5));
}

#[test]
fn walvault_checkpoints_and_the_wal_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (db, store_dir) = (dir.path().join("app.db"), dir.path().join("store"));
    let options = AttachOptions {
        durability: Durability::Written,
        checkpoint_wal_bytes: 256 << 10,
        ..Default::default()
    };
    let mut conn = attached(&db, &store_dir, options);
    let wal = dir.path().join("app.db-wal");
    let mut largest = 0;
    let mut id = 0;
    for round in 0..80 {
        let tx = conn.transaction().unwrap();
        for _ in 0..100 {
            id += 1;
            insert(&tx, id).unwrap();
        }
        tx.commit().unwrap();
        // The application's own checkpoints, of every mode, beside walvault's.
        let mode = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"][round % 4];
        if round % 10 == 9 {
            let _: (i64, i64, i64) = conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
        }
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    // 8000 KiB of rows went through a WAL that never held much more than the threshold.
    assert!(largest < 4 << 20, "the WAL grew to {largest} bytes");
    let vault = conn.vault().clone();
    vault.commit(Durability::Durable).unwrap();
    assert_eq!(
        restored_ids(&store_dir, "app", RestoreOptions::Latest),
        upto(id)
    );
    // Detached, the connection has SQLite's auto-checkpoint back.
    let conn = conn.detach().unwrap();
    let every: i64 = conn
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(every, 1000);
}

#[test]
fn a_store_outage_fails_a_durable_commit_at_its_deadline_and_it_ships_later() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _entered = rt.enter();
    let mut server = s3::S3Server::start(&dir.path().join("s3"));
    let store = ObjectStorage::new(server.client(), "prefix");
    let db = dir.path().join("app.db");
    let options = AttachOptions {
        durability: Durability::Durable,
        commit_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let conn = attach(create(&db), store.clone(), ns("app"), options).unwrap();
    insert(&conn, 1).unwrap();
    rt.block_on(server.stop());
    let started = Instant::now();
    let failed = insert(&conn, 2).expect_err("a durable commit with the store away");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    // SQLite fails the statement with a bare SQLITE_ERROR; walvault keeps the reason.
    assert!(
        matches!(
            failed.sqlite_error_code(),
            Some(rusqlite::ErrorCode::Unknown)
        ),
        "{failed}"
    );
    let why = conn.last_error().expect("the reason is kept");
    assert!(
        matches!(why, walvault::Error::CommitTimeout { .. }),
        "{why}"
    );
    assert!(why.to_string().contains("is not durable after"), "{why}");
    // Committed all the same, as documented.
    assert_eq!(ids(&db), upto(2));
    // At `Written` the application goes on while the store is away.
    conn.set_durability(Durability::Written);
    insert(&conn, 3).unwrap();
    rt.block_on(server.start_again());
    // The uploads waiting on their retries go out once the store is back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = conn.vault().commit(Durability::Durable) {
        assert!(
            Instant::now() < deadline,
            "not durable after the outage: {e}"
        );
    }
    let fresh = ObjectStorage::new(server.client(), "prefix");
    assert_eq!(
        restored_from(&fresh, "app", RestoreOptions::Latest).unwrap(),
        upto(3)
    );
}

#[test]
fn attach_refuses_what_it_cannot_replicate_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let memory = Connection::open_in_memory().unwrap();
    let e = attach(memory, store.clone(), ns("m"), AttachOptions::default()).unwrap_err();
    assert!(e.to_string().contains("in-memory"), "{e}");

    let rollback = dir.path().join("rollback.db");
    let conn = Connection::open(&rollback).unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    let e = attach(conn, store.clone(), ns("r"), AttachOptions::default()).unwrap_err();
    assert!(e.to_string().contains("WAL"), "{e}");

    let db = dir.path().join("app.db");
    let first = attach(
        create(&db),
        store.clone(),
        ns("app"),
        AttachOptions::default(),
    )
    .unwrap();
    let e = attach(
        create(&db),
        store.clone(),
        ns("other"),
        AttachOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("namespace app"), "{e}");
    // The same namespace joins the vault: both connections commit through it.
    let second = attach(
        create(&db),
        store.clone(),
        ns("app"),
        AttachOptions::default(),
    )
    .unwrap();
    insert(&first, 1).unwrap();
    insert(&second, 2).unwrap();
    let store_dir = dir.path().join("store");
    assert_eq!(
        restored_ids(&store_dir, "app", RestoreOptions::Latest),
        upto(2)
    );

    // A database replicated by another process (the daemon) cannot be attached here.
    let other = dir.path().join("daemon.db");
    drop(create(&other));
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir.path())
        .args(["--store", "store2", "replicate", "--db", "daemon.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.path().join("daemon.db-walvault").join("LOCK");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let e = Vault::open(&other, store, ns("daemon"), AttachOptions::default()).unwrap_err();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(matches!(e, walvault::Error::Conflict { .. }), "{e}");
}

/// The writer `written_commits_survive_losing_the_logs_tail` kills: attaches `app.db` in
/// the directory the environment names at `Written`, with seals and checkpoints put off,
/// commits rows up to 15, says so and waits to be killed.
#[test]
fn written_writer_child() {
    let Ok(dir) = std::env::var("WALVAULT_WRITTEN_CHILD") else {
        return; // only as a child
    };
    std::env::set_current_dir(dir).unwrap();
    let options = AttachOptions {
        durability: Durability::Written,
        max_lag: Duration::from_secs(3600),
        checkpoint_wal_bytes: u64::MAX,
        ..Default::default()
    };
    let store = LocalStorage::open("store").unwrap();
    let conn = attach(create(Path::new("app.db")), store, ns("app"), options).unwrap();
    // The first seal after a start is due at once: have it done, then let the parent
    // copy the log as it is (all durable, quiet) before the `Written` commits.
    insert(&conn, 6).unwrap();
    conn.vault().commit(Durability::Durable).unwrap();
    println!("QUIET");
    std::io::stdin().read_line(&mut String::new()).unwrap();
    for id in 7..=15 {
        insert(&conn, id).unwrap();
    }
    println!("COMMITTED");
    std::thread::sleep(Duration::from_secs(600));
}

/// A commit at `Written` is fsynced in SQLite's WAL, not yet in the log (one fsync, not
/// two): after a power loss that cuts the log's unsynced tail, the next start ships it
/// from the WAL. Emulated: the writer is SIGKILLed after its `Written` commits and the
/// log directory is put back as it was before them.
#[test]
fn written_commits_survive_losing_the_logs_tail() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conn = attached(
        &d.join("app.db"),
        &d.join("store"),
        AttachOptions::default(),
    );
    for id in 1..=5 {
        insert(&conn, id).unwrap(); // at `Durable`
    }
    drop(conn.detach().unwrap());
    let log = d.join("app.db-walvault");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "written_writer_child", "--nocapture"])
        .args(["--test-threads=1"])
        .env("WALVAULT_WRITTEN_CHILD", d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut wait_for = |word: &str| {
        let mut line = String::new();
        while !line.ends_with(&format!("{word}\n")) {
            line.clear();
            let read = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(read > 0, "the writer child ended before {word}");
        }
    };
    wait_for("QUIET");
    copy_dir(&log, &d.join("log-before"));
    let mut go = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut go, b"go\n").unwrap();
    wait_for("COMMITTED");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        ids(&d.join("app.db")),
        upto(15),
        "the database has every commit"
    );
    // The store has only what was durable before; the log's tail is lost.
    assert_eq!(
        restored_ids(&d.join("store"), "app", RestoreOptions::Latest),
        upto(6)
    );
    std::fs::remove_dir_all(&log).unwrap();
    copy_dir(&d.join("log-before"), &log);

    let conn = attached(
        &d.join("app.db"),
        &d.join("store"),
        AttachOptions::default(),
    );
    conn.vault().commit(Durability::Durable).unwrap();
    assert_eq!(
        restored_ids(&d.join("store"), "app", RestoreOptions::Latest),
        upto(15)
    );
    insert(&conn, 16).unwrap();
    assert_eq!(
        restored_ids(&d.join("store"), "app", RestoreOptions::Latest),
        upto(16)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The writer the crash test kills: run as a child process of this test binary (the
/// environment says where), it attaches `app.db` (relative paths) at `Durable` and
/// commits one row per transaction, recording `<id> <ns before BEGIN> <ns after COMMIT
/// returned>` after each commit returns.
#[test]
fn attached_writer_child() {
    let Ok(dir) = std::env::var("WALVAULT_ATTACH_CHILD") else {
        return; // only as a child
    };
    std::env::set_current_dir(dir).unwrap();
    use std::io::Write;
    let conn = create(Path::new("app.db"));
    let next: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM t", [], |r| r.get(0))
        .unwrap();
    let options = AttachOptions {
        durability: Durability::Durable,
        ..Default::default()
    };
    let conn = attach(
        conn,
        LocalStorage::open("store").unwrap(),
        ns("app"),
        options,
    )
    .unwrap();
    let mut record = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("acked")
        .unwrap();
    for id in next.. {
        let began = Utc::now().timestamp_nanos_opt().unwrap();
        insert(&conn, id).unwrap();
        let now = Utc::now().timestamp_nanos_opt().unwrap();
        // One write per line: a SIGKILL cannot leave half of one.
        record
            .write_all(format!("{id} {began} {now}\n").as_bytes())
            .unwrap();
    }
}

#[test]
fn a_writer_killed_right_after_durable_commits_loses_none_of_them() {
    let iterations: u64 = std::env::var("WALVAULT_ATTACH_CRASHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    drop(create(&dir.path().join("app.db")));
    let store = dir.path().join("store");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    eprintln!("crash test seed {seed:#x}");
    let mut checked_at_time = 0;
    for round in 0..iterations {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "attached_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WALVAULT_ATTACH_CHILD", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + seed % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked: Vec<(i64, DateTime<Utc>, DateTime<Utc>)> =
            std::fs::read_to_string(dir.path().join("acked"))
                .unwrap_or_default()
                .split_terminator('\n')
                .filter_map(|l| {
                    let mut f = l.split(' ').map(|v| v.parse::<i64>().ok());
                    let (id, began, after) = (f.next()??, f.next()??, f.next()??);
                    let t = DateTime::from_timestamp_nanos;
                    Some((id, t(began), t(after)))
                })
                .collect();
        let max_acked = acked.last().map_or(0, |a| a.0);
        let latest = match try_restored_ids(&store, "app", RestoreOptions::Latest) {
            Ok(latest) => latest,
            // Killed before its first snapshot was stored: nothing was acknowledged.
            Err(e) if max_acked == 0 => {
                eprintln!("round {round}: nothing stored yet ({e})");
                continue;
            }
            Err(e) => panic!("round {round}: {e}"),
        };
        let n = latest.len() as i64;
        assert_eq!(latest, upto(n), "round {round}: not a state the writer had");
        assert!(
            n >= max_acked,
            "round {round}: commit {max_acked} returned at Durable, the store has {n}"
        );
        // A restore to just after a commit returned has the rows up to it (and later
        // ones only if they began within the same millisecond).
        if let Some(&(id, _, at)) = acked.get((seed as usize / 7) % acked.len().max(1)) {
            let got = restored_ids(&store, "app", RestoreOptions::Timestamp(at));
            let began = |j: usize| acked.iter().find(|a| a.0 == j as i64).map(|a| a.1);
            assert_within_the_millisecond(&got, id as usize, at, began);
            checked_at_time += 1;
        }
    }
    assert!(iterations == 0 || checked_at_time > iterations / 2);
}

//! Riding out store outages: the log keeps everything while the store is away, retries
//! with backoff, and catches up in frame order when it returns; a store that refuses the
//! credentials or a permission stops the log at once, with a message that says what to
//! fix. The last test plays the whole story with the real `walvault replicate` daemon, a
//! real SQLite writer in another process and an S3 server that goes down for seconds.

mod s3;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use rusqlite::Connection;
use support::faulty::{Faults, FaultyStore, Injected};
use tokio_stream::StreamExt;
use walvault::{
    Durability, ErrorKind, LogConfig, LogWriter, NamespaceName, ObjectStorage, RetryPolicy, Storage,
};

const PAGE: usize = 4096;

fn ns() -> NamespaceName {
    NamespaceName::new("app").unwrap()
}

/// Retries quick enough for a test.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}

fn config(dir: &Path, retry: RetryPolicy) -> LogConfig {
    LogConfig {
        page_size: PAGE as u32,
        store_retry: retry,
        ..LogConfig::new(dir.join("log"))
    }
}

/// A store whose every request fails with `error` while its faults are enabled (they
/// start disabled: the store works).
fn failing_store(error: Injected) -> (Arc<dyn ObjectStore>, Arc<FaultyStore>) {
    let raw: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faults = Faults {
        fail_fraction: 1.0,
        error,
        ..Faults::default()
    };
    let faulty = FaultyStore::new(raw.clone(), faults);
    faulty.set_enabled(false);
    (raw, faulty)
}

/// Appends one transaction writing page `n % 8 + 1`, seals it into its own segment,
/// and returns its commit frame number once it is `Written`.
async fn commit_segment(log: &mut LogWriter<ObjectStorage>, n: u8) -> u64 {
    let page = vec![n; PAGE];
    let appended = log.append(&[(u32::from(n % 8) + 1, &page)], 8).unwrap();
    log.seal().unwrap();
    within(10, appended.wait(Durability::Written))
        .await
        .unwrap()
}

async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

/// A store down for three seconds: the durable watermark stays where the store's own
/// manifest is (never ahead of it), the log keeps accepting transactions, and when the
/// store returns every segment is stored and the watermark catches up in frame order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_rides_out_an_outage_and_catches_up_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, faulty) = failing_store(Injected::Refused);
    let storage = ObjectStorage::new(faulty.clone(), "p");
    let mut log = LogWriter::open(storage, ns(), config(dir.path(), quick_retries()))
        .await
        .unwrap();
    let mut durable_seen = log.tracker().subscribe();
    let before = commit_segment(&mut log, 0).await;
    within(10, log.wait(before, Durability::Durable))
        .await
        .unwrap();

    faulty.set_enabled(true);
    let mut commits = Vec::new();
    for n in 1..=6 {
        commits.push(commit_segment(&mut log, n).await);
    }
    let outage_ends = Instant::now() + Duration::from_secs(3);
    while Instant::now() < outage_ends {
        assert_eq!(
            log.tracker().watermark(Durability::Durable),
            before,
            "the durable watermark moved while the store was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(faulty.failed() > 3, "the store was asked again and again");
    assert!(
        log.tracker().closed().is_none(),
        "the outage failed the log"
    );
    faulty.set_enabled(false);

    let last = *commits.last().unwrap();
    within(30, log.wait(last, Durability::Durable))
        .await
        .unwrap();
    // The watermark went up in order, through segment ends only.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(durable))) =
        tokio::time::timeout(Duration::from_millis(50), durable_seen.next()).await
    {
        seen.push(durable);
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.iter()
            .all(|d| *d == 0 || *d == before || commits.contains(d)),
        "{seen:?}"
    );
    let fresh = ObjectStorage::new(raw, "p");
    assert_eq!(fresh.durable_frame_no(&ns(), None).await.unwrap(), last);
    log.close().await.unwrap();
}

/// A store that denies a permission (HTTP 403) or rejects the credentials (401) stops
/// the log at once, even though the policy would retry transient errors forever; every
/// appended frame is `Written` first, and the message says what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_fails_fast_with_what_to_fix() {
    for (error, needle) in [
        (Injected::PermissionDenied, "denied the request"),
        (Injected::Unauthenticated, "credentials"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_raw, faulty) = failing_store(error);
        let storage = ObjectStorage::new(faulty.clone(), "p");
        let mut log = LogWriter::open(storage, ns(), config(dir.path(), quick_retries()))
            .await
            .unwrap();
        faulty.set_enabled(true);
        let started = Instant::now();
        let commit = commit_segment(&mut log, 1).await;
        let err = within(10, log.wait(commit, Durability::Durable))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "not fast");
        assert_eq!(faulty.failed(), 1, "a refused request was retried");
        assert!(log.tracker().watermark(Durability::Written) >= commit);
        assert!(log.close().await.is_err());
    }
}

/// Closing during an outage does not hang: after the close timeout the log gives up,
/// says what stays in the local log, and the next open submits it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_during_an_outage_is_bounded_and_the_next_open_resubmits() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, faulty) = failing_store(Injected::Refused);
    let retry = RetryPolicy {
        close_timeout: Duration::from_secs(1),
        ..quick_retries()
    };
    let storage = ObjectStorage::new(faulty.clone(), "p");
    let mut log = LogWriter::open(storage, ns(), config(dir.path(), retry.clone()))
        .await
        .unwrap();
    faulty.set_enabled(true);
    let commit = commit_segment(&mut log, 1).await;
    let started = Instant::now();
    let err = within(10, log.close()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("local log"), "{err}");

    faulty.set_enabled(false);
    let storage = ObjectStorage::new(faulty.clone(), "p");
    let log = LogWriter::open(storage, ns(), config(dir.path(), retry))
        .await
        .unwrap();
    within(10, log.wait(commit, Durability::Durable))
        .await
        .unwrap();
    log.close().await.unwrap();
    let fresh = ObjectStorage::new(raw, "p");
    assert_eq!(fresh.durable_frame_no(&ns(), None).await.unwrap(), commit);
}

/// A process that is killed when dropped, so a failing test leaves none behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A writer in another process: a new connection per transaction, each inserting one
/// row, until `stop` exists.
fn writer(dir: &Path, stop: &Path) -> Killed {
    let script = r#"
import os, sqlite3, sys, time
db, stop = sys.argv[1], sys.argv[2]
i = 0
while not os.path.exists(stop):
    conn = sqlite3.connect(db, timeout=30)
    with conn:
        conn.execute("INSERT INTO t(n, body) VALUES (?, randomblob(300))", (i,))
    conn.close()
    i += 1
    time.sleep(0.02)
"#;
    let child = Command::new("/usr/bin/python3")
        .current_dir(dir)
        .args(["-c", script, "app.db", stop.to_str().unwrap()])
        .spawn()
        .unwrap();
    Killed(child)
}

/// Sends SIGINT and waits (at most 60 s) for the exit.
async fn interrupt(daemon: &mut Killed) -> std::process::ExitStatus {
    let pid = daemon.0.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let started = Instant::now();
    loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no exit after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `walvault` with the S3 endpoint and credentials in the environment, from `dir`.
fn walvault(dir: &Path, endpoint: &str) -> Command {
    walvault_at(dir, endpoint, &format!("s3://{}/outage", s3::BUCKET))
}

/// [`walvault`] with the store URL `store`.
fn walvault_at(dir: &Path, endpoint: &str, store: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walvault"));
    cmd.current_dir(dir)
        .env("AWS_ENDPOINT", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env_remove("WALVAULT_LOG")
        .args(["--store", store]);
    cmd
}

/// Runs `cmd` to its end (killed after `secs`), with its exit status and stderr.
async fn run_bounded(
    mut cmd: Command,
    dir: &Path,
    secs: u64,
) -> (std::process::ExitStatus, String) {
    let err = dir.join("run.err");
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = Killed(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return (status, read(&err));
        }
        assert!(Instant::now() < deadline, "still running: {}", read(&err));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Credentials the store rejects, or a bucket that does not exist: the daemon does not
/// wait (it would wait forever), it exits at once with one line saying what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_stops_at_once_on_bad_credentials_or_a_missing_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(&dir.path().join("s3"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Connection::open(work.join("app.db"))
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(n); INSERT INTO t VALUES (1);")
        .unwrap();
    let replicate = [
        "replicate",
        "--db",
        "app.db",
        "--interval",
        "100ms",
        "--seal-age",
        "100ms",
    ];

    let mut wrong_secret = walvault(&work, &server.endpoint);
    wrong_secret
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(replicate);
    let (status, stderr) = run_bounded(wrong_secret, &work, 60).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("walvault: error: store refused"),
        "{stderr}"
    );
    assert!(stderr.contains("credentials"), "{stderr}");

    let mut no_bucket = walvault_at(&work, &server.endpoint, "s3://no-such-bucket/x");
    no_bucket.args(replicate);
    let (status, stderr) = run_bounded(no_bucket, &work, 60).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bucket (or container) does not exist"),
        "{stderr}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits (at most `secs`) until `done` holds, checking every 100 ms; `log` is shown on
/// a timeout.
async fn until(secs: u64, what: &str, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rows(db: &Path) -> Vec<(i64, Vec<u8>)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT n, body FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The daemon against a store that goes away for seconds while a writer keeps
/// committing: it does not exit, says the store is unreachable and then reachable
/// again, stops cleanly on SIGINT, and a restore equals the writer's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_rides_out_an_s3_outage_while_a_writer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let d: PathBuf = dir.path().to_path_buf();
    if std::env::var_os("WALVAULT_KEEP").is_some() {
        eprintln!("keeping {}", dir.keep().display());
    }
    let mut server = s3::S3Server::start(&d.join("s3"));
    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    Connection::open(work.join("app.db"))
        .unwrap()
        .execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE t(id INTEGER PRIMARY KEY, n INTEGER, body BLOB);",
        )
        .unwrap();
    let stop_writer = work.join("stop-writer");
    let _writer = writer(&work, &stop_writer);
    let (out, err) = (work.join("daemon.out"), work.join("daemon.err"));
    let daemon = walvault(&work, &server.endpoint)
        .args(["replicate", "--db", "app.db", "--interval", "100ms"])
        .args(["--seal-age", "500ms"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Killed(daemon);
    let alive = |daemon: &mut Killed| daemon.0.try_wait().unwrap().is_none();
    until(30, "the daemon to ship", &err, || {
        read(&out).contains("shipped")
    })
    .await;

    server.stop().await;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(6) {
        assert!(alive(&mut daemon), "the daemon exited: {}", read(&err));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.start_again().await;
    until(90, "the daemon to reach the store again", &err, || {
        read(&err).contains("reachable again")
    })
    .await;
    assert!(alive(&mut daemon), "the daemon exited: {}", read(&err));
    let stderr = read(&err);
    assert!(stderr.contains("store unreachable"), "{stderr}");

    std::fs::write(&stop_writer, b"").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // a few polls ship the last rows
    let exited = interrupt(&mut daemon).await;
    assert!(exited.success(), "{exited}: {}", read(&err));
    assert!(read(&out).contains("everything shipped is durable"));

    let restored = walvault(&work, &server.endpoint)
        .args(["restore", "--namespace", "app", "--output", "restored.db"])
        .args(["--integrity-check"])
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let check = Connection::open(work.join("restored.db"))
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap();
    assert_eq!(check, "ok");
    let expected = rows(&work.join("app.db"));
    assert!(
        expected.len() > 50,
        "the writer wrote only {}",
        expected.len()
    );
    assert_eq!(rows(&work.join("restored.db")), expected);
}

/// `--once` against a store that is down does not wait forever: it exits with status 1
/// and a line saying the store is unavailable; run again once the store is back, it
/// ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_gives_up_on_a_store_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = s3::S3Server::start(&dir.path().join("s3"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Connection::open(work.join("app.db"))
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(n); INSERT INTO t VALUES (1);")
        .unwrap();
    server.stop().await;
    let mut once = walvault(&work, &server.endpoint);
    once.args(["replicate", "--db", "app.db", "--once"]);
    let (status, stderr) = run_bounded(once, &work, 120).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("walvault: error: store unavailable"),
        "{stderr}"
    );

    server.start_again().await;
    let mut once = walvault(&work, &server.endpoint);
    once.args(["replicate", "--db", "app.db", "--once"]);
    let (status, stderr) = run_bounded(once, &work, 60).await;
    assert!(status.success(), "{stderr}");
}

/// A stop signal while the store is down: the daemon does not hang, it exits with
/// status 1 naming what stays in the local log, and the next run ships it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_an_outage_is_bounded_and_the_next_run_ships_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = s3::S3Server::start(&dir.path().join("s3"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let db = work.join("app.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(n); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = work.join("daemon.err");
    let daemon = walvault(&work, &server.endpoint)
        .args(["replicate", "--db", "app.db", "--interval", "100ms"])
        .args(["--seal-age", "200ms"])
        .stdout(std::fs::File::create(work.join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Killed(daemon);
    let out = work.join("daemon.out");
    until(30, "the daemon to ship", &err, || {
        read(&out).contains("shipped")
    })
    .await;
    server.stop().await;
    conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
    until(60, "the daemon to see the outage", &err, || {
        read(&err).contains("store unreachable")
    })
    .await;

    let exited = interrupt(&mut daemon).await;
    let stderr = read(&err);
    assert_eq!(exited.code(), Some(1), "{stderr}");
    assert!(stderr.contains("safe in the local log"), "{stderr}");
    assert!(stderr.contains("submits them again"), "{stderr}");

    server.start_again().await;
    let mut once = walvault(&work, &server.endpoint);
    once.args(["replicate", "--db", "app.db", "--once"]);
    let (status, stderr) = run_bounded(once, &work, 60).await;
    assert!(status.success(), "{stderr}");
    let mut restore = walvault(&work, &server.endpoint);
    restore.args(["restore", "--namespace", "app", "--output", "restored.db"]);
    let (status, stderr) = run_bounded(restore, &work, 60).await;
    assert!(status.success(), "{stderr}");
    let restored: Vec<i64> = Connection::open(work.join("restored.db"))
        .unwrap()
        .prepare("SELECT n FROM t ORDER BY n")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(restored, [1, 2]);
}

/// A daemon started while the store is down waits for it (saying so) instead of
/// exiting, and ships once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_during_an_outage_waits_for_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = s3::S3Server::start(&dir.path().join("s3"));
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Connection::open(work.join("app.db"))
        .unwrap()
        .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(n); INSERT INTO t VALUES (1);")
        .unwrap();
    server.stop().await;
    let (out, err) = (work.join("daemon.out"), work.join("daemon.err"));
    let daemon = walvault(&work, &server.endpoint)
        .args(["replicate", "--db", "app.db", "--interval", "100ms"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Killed(daemon);
    until(60, "the daemon to say it waits", &err, || {
        read(&err).contains("cannot start yet")
    })
    .await;
    assert!(daemon.0.try_wait().unwrap().is_none(), "{}", read(&err));
    server.start_again().await;
    until(90, "the daemon to ship", &err, || {
        read(&out).contains("shipped")
    })
    .await;
    let exited = interrupt(&mut daemon).await;
    assert!(exited.success(), "{}", read(&err));
}

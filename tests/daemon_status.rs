//! What a running `walvault replicate` tells operators, seen as they see it: the real
//! binary run from a temp directory with relative paths, `/metrics` scraped over HTTP by
//! a real client, `walvault status` asked over the control socket, and after SIGTERM no
//! daemon left to answer.

#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

/// Generous: a loaded 2-core machine may take long, and nothing here measures time.
const DEADLINE: Duration = Duration::from_secs(120);

fn walvault(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Kills the daemon if the test fails before it stops it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One scrape: the status and the body, or None if nothing answered.
fn scrape(rt: &tokio::runtime::Runtime, url: &str) -> Option<(u16, String)> {
    rt.block_on(async {
        let response = reqwest::get(url).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    })
}

/// The sample of `family` for app.db, from an exposition.
fn sample(text: &str, family: &str) -> Option<f64> {
    let prefix = format!("{family}{{db=\"app.db\",namespace=\"app\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// Polls `check` until it gives a value, failing with `what` after [`DEADLINE`].
fn wait_for<T>(what: &str, daemon: &mut Daemon, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("the daemon exited ({status}) while waiting for {what}");
        }
        assert!(start.elapsed() < DEADLINE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn durable_in_store(dir: &Path) -> Option<u64> {
    let out = walvault(
        dir,
        &["--store", "store", "info", "--namespace", "app", "--json"],
    );
    let info: Value = serde_json::from_slice(&out.stdout).ok()?;
    info["durable_frame_no"].as_u64()
}

#[test]
fn metrics_and_status_report_what_the_daemon_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let db = Connection::open(dir.path().join("app.db")).unwrap();
    db.pragma_update(None, "journal_mode", "wal").unwrap();
    db.execute_batch("CREATE TABLE t(x BLOB)").unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_walvault"))
            .current_dir(dir.path())
            .args(["--store", "store", "replicate", "--db", "app.db"])
            .args(["--interval", "200ms", "--metrics-addr", &addr])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://{addr}/metrics");
    // The first poll ships the snapshot (the table); then the commits are new.
    wait_for("the snapshot", &mut daemon, || {
        let (status, text) = scrape(&rt, &url)?;
        assert_eq!(status, 200, "{text}");
        sample(&text, "walvault_applied_frame_no").filter(|&applied| applied > 0.0)
    });

    for i in 0..5 {
        db.execute("INSERT INTO t VALUES (?1)", [vec![i as u8; 3000]])
            .unwrap();
    }
    // All five commits were read (after the snapshot's one transaction), and everything
    // read is durable: nothing moves any more.
    let text = wait_for("the commits to be durable", &mut daemon, || {
        let (_, text) = scrape(&rt, &url)?;
        let read = sample(&text, "walvault_transactions_total")?;
        let applied = sample(&text, "walvault_applied_frame_no")?;
        let durable = sample(&text, "walvault_durable_frame_no")?;
        (read == 6.0 && durable == applied).then_some(text)
    });
    let durable = sample(&text, "walvault_durable_frame_no").unwrap();
    assert_eq!(Some(durable as u64), durable_in_store(dir.path()), "{text}");
    assert_eq!(sample(&text, "walvault_written_frame_no"), Some(durable));
    assert_eq!(sample(&text, "walvault_lag_seconds"), Some(0.0), "{text}");
    assert!(sample(&text, "walvault_shipped_bytes_total").unwrap() > 5.0 * 3000.0);
    assert!(sample(&text, "walvault_shipped_segments_total").unwrap() >= 1.0);
    assert_eq!(
        sample(&text, "walvault_snapshots_total"),
        Some(1.0),
        "the first run"
    );
    assert_eq!(sample(&text, "walvault_upload_errors_total"), Some(0.0));
    assert_eq!(sample(&text, "walvault_upload_retries_total"), Some(0.0));
    assert!(sample(&text, "walvault_store_last_ok_age_seconds").unwrap() >= 0.0);
    let elsewhere = scrape(&rt, &format!("http://{addr}/")).unwrap();
    assert_eq!(elsewhere.0, 404);

    let out = walvault(dir.path(), &["status", "--db", "app.db", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["db"], "app.db");
    assert_eq!(doc["namespace"], "app");
    assert_eq!(doc["store"], "store");
    assert_eq!(doc["pid"], daemon.0.id());
    assert_eq!(doc["state"], "replicating");
    assert_eq!(doc["frames"]["durable"], durable as u64);
    assert_eq!(doc["frames"]["applied"], durable as u64);
    assert!(doc["counters"]["bytes_shipped"].as_u64().unwrap() > 5 * 3000);
    assert_eq!(doc["counters"]["snapshots"], 1);
    assert!(doc["last_poll"].is_string(), "{doc}");
    assert!(doc["last_error"].is_null(), "{doc}");
    let human = walvault(dir.path(), &["status", "--db", "./app.db"]);
    let table = String::from_utf8_lossy(&human.stdout);
    assert!(human.status.success(), "{human:?}");
    assert!(table.starts_with("DB "), "{table}");
    assert!(table.contains("replicating"), "{table}");

    let socket = dir.path().join("app.db-walvault").join("daemon.sock");
    assert!(socket.exists());
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    let sent = unsafe { libc::kill(daemon.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let exited = wait_for_exit(&mut daemon.0);
    assert!(exited.success(), "{exited}: {}", daemon_log(dir.path()));
    assert!(!socket.exists(), "the daemon removes its socket");
    let after = walvault(dir.path(), &["status", "--db", "app.db"]);
    assert_eq!(after.status.code(), Some(3), "{after:?}");
    let said = String::from_utf8_lossy(&after.stderr);
    assert!(
        said.contains("no walvault replicate running for app.db"),
        "{said}"
    );
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn daemon_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

#[test]
fn a_taken_metrics_address_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Connection::open(dir.path().join("app.db")).unwrap();
    db.pragma_update(None, "journal_mode", "wal").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = walvault(
        dir.path(),
        &[
            "--store",
            "store",
            "replicate",
            "--db",
            "app.db",
            "--metrics-addr",
            &addr,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("metrics endpoint to {addr}")),
        "{said}"
    );
}

#[test]
fn a_stale_socket_is_not_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("app.db-walvault");
    std::fs::create_dir(&log_dir).unwrap();
    drop(std::os::unix::net::UnixListener::bind(log_dir.join("daemon.sock")).unwrap());
    let out = walvault(
        dir.path(),
        &["status", "--db", "app.db", "--db", "other.db"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no walvault replicate running for app.db"),
        "{said}"
    );
    assert!(
        said.contains("no walvault replicate running for other.db"),
        "{said}"
    );
}

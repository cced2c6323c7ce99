//! The history a user gets from the command line, run as a person types it (relative
//! paths, the binary as a subprocess): a store emptied behind a killed daemon gets a
//! snapshot, a follower never patches a replica from another store's history, and a
//! daemon stopped right after a commit ships it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

fn walvault(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rows(db: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Commits `n` rows, each in its own connection and transaction (as a short-lived
/// application process would).
fn write(db: &Path, from: i64, n: i64) {
    for id in from..from + n {
        let conn = Connection::open(db).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        conn.execute(
            "INSERT INTO t(id, v) VALUES (?1, ?2)",
            rusqlite::params![id, format!("row {id} {}", "x".repeat(300))],
        )
        .unwrap();
    }
}

fn create(db: &Path) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
}

/// `walvault --store store replicate --db app.db` in `d`, once its first snapshot is in
/// the store (at most 30 s).
fn start_daemon(d: &Path, interval: &str) -> std::process::Child {
    let daemon = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(d)
        .args([
            "--store",
            "store",
            "replicate",
            "--db",
            "app.db",
            "--interval",
            interval,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !d.join("store/app").exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

fn restore_and_check(d: &Path, store: &str, out: &str) -> Vec<(i64, String)> {
    let _ = std::fs::remove_file(d.join(out));
    ok(&walvault(
        d,
        &[
            "--store",
            store,
            "restore",
            "--namespace",
            "app",
            "--output",
            out,
        ],
    ));
    walvault::integrity_check(&d.join(out)).unwrap();
    rows(&d.join(out))
}

#[test]
fn a_store_emptied_behind_a_killed_daemon_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(&d.join("app.db"));
    write(&d.join("app.db"), 1, 20);
    let mut daemon = start_daemon(d, "100ms");
    write(&d.join("app.db"), 21, 20);
    std::thread::sleep(Duration::from_millis(500)); // shipped into the open segment
    daemon.kill().unwrap(); // SIGKILL: the open segment stays pending in the log
    daemon.wait().unwrap();
    std::fs::remove_dir_all(d.join("store")).unwrap();
    write(&d.join("app.db"), 41, 5);
    let out = ok(&walvault(
        d,
        &["--store", "store", "replicate", "--db", "app.db", "--once"],
    ));
    assert!(out.contains("snapshot"), "{out}");
    assert_eq!(
        restore_and_check(d, "store", "r.db"),
        rows(&d.join("app.db"))
    );
    let verified = ok(&walvault(
        d,
        &["--store", "store", "verify", "--namespace", "app"],
    ));
    assert!(verified.contains("proved"), "{verified}");
}

#[test]
fn a_follower_refuses_a_replica_from_another_stores_history() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (db, rows_from) in [("one.db", 1), ("two.db", 100)] {
        create(&d.join(db));
        write(&d.join(db), rows_from, 5);
    }
    for (db, store) in [("one.db", "s1"), ("two.db", "s2")] {
        ok(&walvault(
            d,
            &[
                "--store",
                store,
                "replicate",
                "--db",
                db,
                "--namespace",
                "app",
                "--once",
            ],
        ));
    }
    ok(&walvault(
        d,
        &[
            "--store",
            "s1",
            "follow",
            "--namespace",
            "app",
            "--output",
            "r.db",
            "--once",
        ],
    ));
    let before = std::fs::read(d.join("r.db")).unwrap();
    // s2 has more frames than s1 holds, so the follower would have something to apply.
    write(&d.join("two.db"), 200, 5);
    ok(&walvault(
        d,
        &[
            "--store",
            "s2",
            "replicate",
            "--db",
            "two.db",
            "--namespace",
            "app",
            "--once",
        ],
    ));
    let out = walvault(
        d,
        &[
            "--store",
            "s2",
            "follow",
            "--namespace",
            "app",
            "--output",
            "r.db",
            "--once",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another store or a replaced history"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(d.join("r.db")).unwrap(),
        before,
        "nothing applied"
    );
    // Following its own store goes on.
    write(&d.join("one.db"), 6, 3);
    ok(&walvault(
        d,
        &[
            "--store",
            "s1",
            "replicate",
            "--db",
            "one.db",
            "--namespace",
            "app",
            "--once",
        ],
    ));
    ok(&walvault(
        d,
        &[
            "--store",
            "s1",
            "follow",
            "--namespace",
            "app",
            "--output",
            "r.db",
            "--once",
        ],
    ));
    assert_eq!(rows(&d.join("r.db")), rows(&d.join("one.db")));
}

#[test]
fn a_daemon_stopped_right_after_a_commit_ships_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(&d.join("app.db"));
    write(&d.join("app.db"), 1, 3);
    // A long interval: the commit below lands between two polls.
    let mut daemon = start_daemon(d, "1h");
    std::thread::sleep(Duration::from_millis(300)); // the first poll is over
    write(&d.join("app.db"), 4, 1);
    // SIGINT, as Ctrl-C sends.
    let pid = daemon.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        restore_and_check(d, "store", "r.db"),
        rows(&d.join("app.db"))
    );
}

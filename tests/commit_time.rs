//! Commit time stamps, as a user meets them: a writer process commits beside the running
//! daemon (relative paths, defaults), and every stamp `walvault log` shows must be no
//! earlier than the moment the writer began that commit, so a restore to a time before a
//! commit never contains it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The writer: one connection kept open, `n` one-row commits `gap_ms` apart; for each it
/// prints `<ns before BEGIN> <ns after COMMIT returned> <rows>`.
const WRITER: &str = r#"
import sqlite3, sys, time
n, gap = int(sys.argv[1]), float(sys.argv[2]) / 1000
con = sqlite3.connect("app.db", isolation_level=None)
for i in range(n):
    before = time.time_ns()
    con.execute("BEGIN")
    con.execute("INSERT INTO t(v) VALUES (?)", (i,))
    con.execute("COMMIT")
    after = time.time_ns()
    rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    print(before, after, rows, flush=True)
    time.sleep(gap)
"#;

fn walvault(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir)
        .args(["--store", "store"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "walvault {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (frame, stamp in ms) of every commit in the store, oldest first.
fn commits(dir: &Path) -> Vec<(u64, i64)> {
    let json: serde_json::Value =
        serde_json::from_str(&walvault(dir, &["log", "--namespace", "app", "--json"])).unwrap();
    json["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["frame_no"].as_u64().unwrap(),
                c["timestamp_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn wait_for_commits(dir: &Path, n: usize, daemon: &mut Child) -> Vec<(u64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        let seen = if dir.join("store/app").exists() {
            commits(dir)
        } else {
            Vec::new()
        };
        if seen.len() >= n {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} commits reached the store",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rows(db: &Path) -> i64 {
    let con = rusqlite::Connection::open(db).unwrap();
    let ok: String = con
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    con.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// Restores the namespace as of `at` into `output` (relative to `dir`); its row count.
fn restore_at(dir: &Path, at: &str, output: &str) -> i64 {
    walvault(
        dir,
        &[
            "restore",
            "--namespace",
            "app",
            "--at",
            at,
            "--output",
            output,
        ],
    );
    rows(&dir.join(output))
}

fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[test]
fn no_commit_is_stamped_before_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let con = rusqlite::Connection::open(d.join("app.db")).unwrap();
    con.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        .unwrap();
    drop(con);
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(d)
        .args(["--store", "store", "replicate", "--db", "app.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first snapshot: the empty table. Each writer commit then is one log commit.
    let snapshot = wait_for_commits(d, 1, &mut daemon);
    assert_eq!(snapshot.len(), 1);

    const N: usize = 40;
    let writer = Command::new("/usr/bin/python3")
        .current_dir(d)
        .args(["-c", WRITER, &N.to_string(), "30"])
        .output()
        .unwrap();
    assert!(
        writer.status.success(),
        "{}",
        String::from_utf8_lossy(&writer.stderr)
    );
    let made: Vec<(i64, i64, i64)> = String::from_utf8(writer.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<i64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (f[0], f[1], f[2])
        })
        .collect();
    assert_eq!(made.len(), N);
    let logged = wait_for_commits(d, N + 1, &mut daemon);
    let _ = Command::new("kill")
        .args(["-INT", &daemon.id().to_string()])
        .status();
    assert!(daemon.wait().unwrap().success());
    assert_eq!(logged.len(), N + 1, "one log commit per writer commit");

    let mut exact = 0;
    for (k, ((_, stamp_ms), (before, after, rows_after))) in
        logged[1..].iter().zip(&made).enumerate()
    {
        assert!(
            *stamp_ms >= before / 1_000_000,
            "commit {k} is stamped {stamp_ms} ms, before it began ({before} ns)"
        );
        // A restore to just before the commit began never holds it.
        let at = rfc3339_ns(before - 1_000_000);
        let restored = restore_at(d, &at, &format!("before{k}.db"));
        assert!(
            restored < *rows_after,
            "a restore to {at}, before commit {k} began, holds it ({restored} rows)"
        );
        // Right after COMMIT returned: the commit itself, as often as the OS allows.
        let at = rfc3339_ns(*after);
        let restored = restore_at(d, &at, &format!("after{k}.db"));
        assert!(
            restored <= *rows_after,
            "a restore to {at} holds a later commit"
        );
        exact += usize::from(restored == *rows_after);
    }
    eprintln!("restore --at right after COMMIT returned gave that commit {exact} of {N} times");
}

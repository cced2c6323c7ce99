//! Lock safety with real processes: `walvault replicate` runs as its own process (from
//! a working directory, with relative paths) while separate writer processes (the
//! `sqlite3` shell and python3's sqlite3 module) each commit through a short-lived
//! connection. Each writer's close is the application's last connection: if the daemon
//! had dropped its SHARED lock (POSIX locks belong to the process and go with *any*
//! closed descriptor of the file), that close would checkpoint and delete the WAL behind
//! the daemon and its commits would never be shipped.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_walvault");

/// Runs `sqlite3 app.db <sql>` in `dir`: one process, one connection, closed at exit.
fn sqlite3(dir: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .current_dir(dir)
        .args(["app.db", sql])
        .output()
        .expect("the sqlite3 shell runs");
    assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// One commit from python3's sqlite3 module, in its own process.
fn python_insert(dir: &Path, x: i64) {
    let script = format!(
        "import sqlite3\nc = sqlite3.connect('app.db')\nc.execute('insert into t values ({x})')\nc.commit()\nc.close()\n"
    );
    let status = Command::new("python3")
        .current_dir(dir)
        .args(["-c", &script])
        .status()
        .expect("python3 runs");
    assert!(status.success());
}

/// The daemon and the lines it prints, read on a thread.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .args(["--store", "store", "replicate", "--db", "app.db"])
            .args(["--interval", "100ms"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 30 s) for a line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no line with {needle:?}; saw {:?}", self.seen),
            }
        }
    }

    /// SIGINT, then the exit status and every line printed.
    fn interrupt(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        (status, self.seen)
    }
}

#[test]
fn a_running_daemon_keeps_every_commit_of_short_lived_writer_processes() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    sqlite3(
        cwd,
        "pragma journal_mode=wal; create table t(x); insert into t values(0);",
    );
    let mut daemon = Daemon::start(cwd);
    daemon.wait_for("shipped");
    let wal = cwd.join("app.db-wal");
    for x in 1..=12 {
        if x % 3 == 0 {
            python_insert(cwd, x);
        } else {
            sqlite3(cwd, &format!("insert into t values({x})"));
        }
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            wal.exists(),
            "commit {x}: the writer's close deleted the WAL behind the daemon"
        );
    }
    let expected = sqlite3(cwd, "select x from t order by x");
    std::thread::sleep(Duration::from_millis(500)); // a few polls after the last commit
    let (status, lines) = daemon.interrupt();
    assert!(status.success(), "{status}: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:?}");
    let snapshots: Vec<&String> = lines.iter().filter(|l| l.contains("snapshot")).collect();
    assert_eq!(
        snapshots.len(),
        1,
        "only the first run ships a snapshot: {lines:?}"
    );
    assert!(snapshots[0].contains("first run"), "{lines:?}");

    let out = Command::new(BIN)
        .current_dir(cwd)
        .args(["--store", "store", "restore", "--namespace", "app"])
        .args(["--output", "r.db", "--integrity-check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let restored = Command::new("sqlite3")
        .current_dir(cwd)
        .args(["r.db", "select x from t order by x"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(restored.stdout).unwrap(), expected);
    assert_eq!(expected.lines().count(), 13);
}

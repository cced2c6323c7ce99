//! `walvault restore` over real files and processes: `--force` never leaves the restored
//! database beside another database's WAL and never replaces a database another process
//! has open; an interrupted restore removes its temp file, and a killed one's temp file
//! is removed by the next restore.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_walvault");

fn walvault(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(["--store", "store"])
        .args(args)
        .output()
        .unwrap()
}

fn python(dir: &Path, script: &str) {
    let out = Command::new("python3")
        .current_dir(dir)
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn sqlite3(dir: &Path, db: &str, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .current_dir(dir)
        .args([db, sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `app.db` with some rows, shipped into `store` as namespace `app`.
fn replicated_app(dir: &Path) -> String {
    sqlite3(
        dir,
        "app.db",
        "pragma journal_mode=wal; create table t(x); insert into t values(1),(2),(3);",
    );
    let out = walvault(dir, &["replicate", "--db", "app.db", "--once"]);
    assert!(out.status.success(), "{out:?}");
    sqlite3(dir, "app.db", "select x from t order by x")
}

/// `out.db`, another database, left with a WAL holding commits not in its file (and
/// its -shm): what a crashed application leaves.
fn stale_database(dir: &Path) {
    python(
        dir,
        "import sqlite3, shutil
c = sqlite3.connect('out.db')
c.execute('pragma journal_mode=wal')
c.execute('pragma wal_autocheckpoint=0')
c.execute('create table old(y)')
c.executemany('insert into old values (randomblob(3000))', [()] * 50)
c.commit()
shutil.copy('out.db-wal', 'stale-wal'); shutil.copy('out.db-shm', 'stale-shm')
c.close()
shutil.move('stale-wal', 'out.db-wal'); shutil.move('stale-shm', 'out.db-shm')",
    );
    assert!(std::fs::metadata(dir.join("out.db-wal")).unwrap().len() > 100_000);
}

fn files(dir: &Path, names: &[&str]) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).ok())
        .collect()
}

#[test]
fn force_over_a_database_with_a_stale_wal_restores_exactly_the_requested_state() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let expected = replicated_app(cwd);
    stale_database(cwd);
    let names = ["out.db", "out.db-wal", "out.db-shm"];
    let before = files(cwd, &names);

    let refused = walvault(
        cwd,
        &["restore", "--namespace", "app", "--output", "out.db"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("pass --force"),
        "{}",
        stderr(&refused)
    );
    assert!(
        files(cwd, &names) == before,
        "a refused restore changed files"
    );

    let args = [
        "restore",
        "--namespace",
        "app",
        "--output",
        "out.db",
        "--force",
    ];
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::Permissions::from_mode(0o640);
    std::fs::set_permissions(cwd.join("out.db"), mode).unwrap();
    let out = walvault(cwd, &[&args[..], &["--integrity-check"]].concat());
    assert!(out.status.success(), "{out:?}");
    let kept = std::fs::metadata(cwd.join("out.db")).unwrap().permissions();
    assert_eq!(
        kept.mode() & 0o777,
        0o640,
        "the old file's permissions were lost"
    );
    assert!(!cwd.join("out.db-wal").exists() && !cwd.join("out.db-shm").exists());
    assert_eq!(sqlite3(cwd, "out.db", "pragma integrity_check"), "ok\n");
    assert_eq!(
        sqlite3(cwd, "out.db", "select x from t order by x"),
        expected
    );
    let tables = sqlite3(cwd, "out.db", "select name from sqlite_master");
    assert_eq!(
        tables, "t\n",
        "the old database's WAL was read over the restored file"
    );

    // Sidecars left without their database are refused too, and removed by --force.
    std::fs::remove_file(cwd.join("out.db")).unwrap();
    std::fs::write(cwd.join("out.db-wal"), vec![7u8; 4096]).unwrap();
    let refused = walvault(
        cwd,
        &["restore", "--namespace", "app", "--output", "out.db"],
    );
    assert!(stderr(&refused).contains("sidecar"), "{}", stderr(&refused));
    assert!(walvault(cwd, &args).status.success());
    assert!(!cwd.join("out.db-wal").exists());
    assert_eq!(
        sqlite3(cwd, "out.db", "select x from t order by x"),
        expected
    );
}

/// A python3 process holding a connection to `db` open until its stdin closes.
fn holder(dir: &Path, db: &str) -> Child {
    let script = format!(
        "import sqlite3, sys
c = sqlite3.connect('{db}')
c.execute('select count(*) from sqlite_master').fetchall()
print('ready', flush=True)
sys.stdin.read()"
    );
    let mut child = Command::new("python3")
        .current_dir(dir)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

#[test]
fn force_is_refused_while_another_process_has_the_database_open() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let expected = replicated_app(cwd);
    sqlite3(
        cwd,
        "out.db",
        "pragma journal_mode=wal; create table busy(z); insert into busy values(1);",
    );
    let mut app = holder(cwd, "out.db");
    let names = ["out.db", "out.db-wal", "out.db-shm"];
    let before = files(cwd, &names);
    let args = [
        "restore",
        "--namespace",
        "app",
        "--output",
        "out.db",
        "--force",
    ];
    let refused = walvault(cwd, &args);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let message = stderr(&refused);
    assert!(message.contains("open in another process"), "{message}");
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(
        files(cwd, &names) == before,
        "a refused --force changed files"
    );
    assert_eq!(sqlite3(cwd, "out.db", "select z from busy"), "1\n");

    drop(app.stdin.take()); // the application closes its connection and exits
    assert!(app.wait().unwrap().success());
    let out = walvault(cwd, &args);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        sqlite3(cwd, "out.db", "select x from t order by x"),
        expected
    );
}

/// The restore temp files beside `r.db`.
fn temps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".r.db.walvault-restore-"))
        .collect()
}

/// Starts `restore` of the big namespace into `r.db` and waits until its temp file
/// exists (the restore then takes a moment more).
fn start_restore(dir: &Path) -> Child {
    let child = Command::new(BIN)
        .current_dir(dir)
        .args(["--store", "store", "restore", "--namespace", "big"])
        .args(["--output", "r.db"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while temps(dir).is_empty() {
        assert!(Instant::now() < deadline, "no temp file appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// A restore SIGINTed while it writes. A restore that finished before the signal came
/// (a loaded machine) proves nothing: that attempt is undone and made again.
fn interrupted_restore(dir: &Path) -> Output {
    for _ in 0..5 {
        let restore = start_restore(dir);
        let sent = Command::new("kill")
            .args(["-INT", &restore.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let out = restore.wait_with_output().unwrap();
        if !out.status.success() {
            return out;
        }
        std::fs::remove_file(dir.join("r.db")).unwrap();
    }
    panic!("every restore finished before its SIGINT");
}

/// A restore SIGKILLed while it writes, leaving its temp file (retried as above).
fn killed_restore(dir: &Path) {
    for _ in 0..5 {
        let mut restore = start_restore(dir);
        restore.kill().unwrap(); // SIGKILL: nothing of ours runs
        if !restore.wait().unwrap().success() && !dir.join("r.db").exists() {
            return;
        }
        let _ = std::fs::remove_file(dir.join("r.db"));
    }
    panic!("every restore finished before its SIGKILL");
}

#[test]
fn an_interrupted_restore_removes_its_temp_file_and_a_killed_ones_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    python(
        cwd,
        "import sqlite3
c = sqlite3.connect('big.db')
c.execute('pragma journal_mode=wal')
c.execute('create table t(x)')
c.executemany('insert into t values (randomblob(1000000))', [()] * 80)
c.commit()
c.close()",
    );
    let out = walvault(cwd, &["replicate", "--db", "big.db", "--once"]);
    assert!(out.status.success(), "{out:?}");

    let out = interrupted_restore(cwd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("stopped by a signal"),
        "{}",
        stderr(&out)
    );
    assert!(temps(cwd).is_empty(), "left behind: {:?}", temps(cwd));
    assert!(!cwd.join("r.db").exists());

    killed_restore(cwd);
    assert_eq!(temps(cwd).len(), 1, "a killed restore leaves its temp file");

    let out = walvault(cwd, &["restore", "--namespace", "big", "--output", "r.db"]);
    assert!(out.status.success(), "{out:?}");
    assert!(temps(cwd).is_empty(), "not swept: {:?}", temps(cwd));
    assert_eq!(sqlite3(cwd, "r.db", "select count(*) from t"), "80\n");
}

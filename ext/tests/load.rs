//! The extension as applications load it: into the system `sqlite3` shell and the
//! system Python's `sqlite3` module, from a working directory with relative paths. What
//! they committed is restored from the store with the library and checked, with
//! `integrity_check` and row for row, by Python's SQLite.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use walvault::{LocalStorage, NamespaceName, RestoreOptions, Storage};

/// The extension `cargo build -p walvault-ext` built (`target/<profile>/`, or `deps/`
/// beside the test binary), without its suffix, as `.load` and `load_extension` take it.
fn extension() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [deps.to_path_buf(), deps.parent().unwrap().to_path_buf()];
    candidates
        .iter()
        .map(|dir| dir.join("libwalvault_ext"))
        .find(|lib| lib.with_extension("so").exists())
        .unwrap_or_else(|| {
            panic!("libwalvault_ext.so is not built: run cargo build -p walvault-ext")
        })
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn shell(dir: &Path, db: &str, commands: &[&str]) -> Output {
    Command::new("sqlite3")
        .current_dir(dir)
        .arg(db)
        .args(commands)
        .stdin(Stdio::null())
        .output()
        .expect("the system sqlite3 shell")
}

fn python(dir: &Path, script: &str) -> Output {
    Command::new("/usr/bin/python3")
        .current_dir(dir)
        .arg("-c")
        .arg(script)
        .env("WALVAULT_EXT", extension())
        .stdin(Stdio::null())
        .output()
        .expect("the system python3")
}

/// Restores the latest state of `namespace` from the local store `store` (relative to
/// `dir`) into `dir/name`, then returns Python's `integrity_check` and the ids of `t`.
fn restored(dir: &Path, store: &str, namespace: &str, name: &str) -> (String, Vec<i64>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = LocalStorage::open(dir.join(store)).unwrap();
    let ns = NamespaceName::new(namespace).unwrap();
    rt.block_on(store.restore_to_path(&ns, RestoreOptions::Latest, &dir.join(name), None))
        .unwrap();
    let check = format!(
        "import sqlite3\nc = sqlite3.connect({name:?})\n\
         print(c.execute('PRAGMA integrity_check').fetchone()[0])\n\
         print(' '.join(str(r[0]) for r in c.execute('SELECT id FROM t ORDER BY id')))"
    );
    let out = ok(python(dir, &check), "checking the restored database");
    let mut lines = out.lines();
    let integrity = lines.next().unwrap_or_default().to_string();
    let ids = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|i| i.parse().unwrap())
        .collect();
    (integrity, ids)
}

fn create(dir: &Path, db: &str) {
    ok(
        shell(
            dir,
            db,
            &["PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"],
        ),
        "creating the database",
    );
}

#[test]
fn the_sqlite3_shell_loads_it_and_every_commit_returns_durable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "app.db");
    let load = format!(".load {}", extension().display());
    let out = ok(
        shell(
            d,
            "app.db",
            &[
                &load,
                "SELECT walvault_attach('store', 'app', 'durable');",
                "INSERT INTO t VALUES (1, randomblob(1000));",
                "BEGIN; INSERT INTO t VALUES (2, randomblob(1000)); INSERT INTO t VALUES (3, NULL); COMMIT;",
                "SELECT walvault_attached();",
                "SELECT walvault_last_error() IS NULL;",
            ],
        ),
        "the shell",
    );
    assert!(out.contains("attached to namespace app of store"), "{out}");
    assert!(out.contains("app durable"), "{out}");
    assert_eq!(out.lines().last(), Some("1"), "{out}");
    // The shell exited: the vault closed with its connection, and the store has all.
    let (integrity, ids) = restored(d, "store", "app", "restored.db");
    assert_eq!(integrity, "ok");
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn bad_arguments_are_clear_sql_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "app.db");
    let load = format!(".load {}", extension().display());
    for (call, says) in [
        ("SELECT walvault_attach('store');", "1 arguments given"),
        ("SELECT walvault_attach('store', 'a/b');", "namespace name"),
        (
            "SELECT walvault_attach('store', 'app', 'eventually');",
            "use applied, written or durable",
        ),
        (
            "SELECT walvault_attach('store', 'app', 'durable', 'soon');",
            "commit_timeout",
        ),
        ("SELECT walvault_attach(1, 'app');", "must be text"),
        ("SELECT walvault_sync();", "not attached"),
    ] {
        let out = shell(d, "app.db", &[&load, call]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{call}: {err}");
    }
    let out = shell(
        d,
        ":memory:",
        &[&load, "SELECT walvault_attach('store', 'm');"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in-memory"), "{err}");
}

const PYTHON_WRITER: &str = r#"
import os, sqlite3, subprocess
con = sqlite3.connect("app.db", isolation_level=None)
con.enable_load_extension(True)
con.load_extension(os.environ["WALVAULT_EXT"])
print(con.execute("SELECT walvault_attach('store', 'app', 'written')").fetchone()[0])
for i in range(1, 101):
    con.execute("BEGIN")
    con.execute("INSERT INTO t VALUES (?, randomblob(1024))", (i,))
    con.execute("COMMIT")
    if i % 25 == 0:
        # An unattached process commits beside it: the vault ships its rows too.
        subprocess.run(["sqlite3", "app.db", "PRAGMA busy_timeout=5000;",
                        "INSERT INTO t VALUES (%d, NULL);" % (1000 + i)],
                       check=True, stdout=subprocess.DEVNULL)
    if i == 50:
        # The application's own checkpoints of every mode do not get in the way.
        for mode in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            con.execute("PRAGMA wal_checkpoint(%s)" % mode).fetchall()
print("synced", con.execute("SELECT walvault_sync('durable')").fetchone()[0] > 0)
print("detached", con.execute("SELECT walvault_detach()").fetchone()[0])
print("again", con.execute("SELECT walvault_detach()").fetchone()[0])
con.execute("INSERT INTO t VALUES (2000, NULL)")
print("reattached", "app written" in con.execute(
    "SELECT walvault_attach('store', 'app', 'written')").fetchone()[0] + " " +
    con.execute("SELECT walvault_attached()").fetchone()[0])
con.execute("INSERT INTO t VALUES (2001, NULL)")
con.execute("SELECT walvault_sync('durable')").fetchone()
con.close()
"#;

#[test]
fn python_loads_it_beside_an_unattached_process_and_everything_ships() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "app.db");
    let out = ok(python(d, PYTHON_WRITER), "the python writer");
    assert!(out.contains("COMMIT returns when written"), "{out}");
    for line in ["synced True", "detached 1", "again 0", "reattached True"] {
        assert!(out.contains(line), "{line}: {out}");
    }
    let (integrity, ids) = restored(d, "store", "app", "restored.db");
    assert_eq!(integrity, "ok");
    let mut want: Vec<i64> = (1..=100).collect();
    want.extend([1025, 1050, 1075, 1100, 2000, 2001]);
    assert_eq!(ids, want);
}

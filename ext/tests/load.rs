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

/// The `id`s of `t` as the shell prints `SELECT group_concat(id)`.
const IDS: &str =
    "SELECT 'ids', coalesce(group_concat(id), '') FROM (SELECT id FROM t ORDER BY id);";

/// The read-only VFS the extension registers, used from the shell and from Python: a
/// history committed through `walvault_attach`, then read back by its latest commit,
/// an earlier frame and an earlier time, with every write refused.
#[test]
fn the_shell_and_python_read_the_history_through_the_vfs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create(d, "app.db");
    let load = format!(".load {}", extension().display());
    // Five commits, each its own transaction, a little apart in time; the frame each
    // reached, as walvault_sync says.
    let mut commands = vec![
        load.clone(),
        "SELECT walvault_attach('store', 'app', 'durable');".to_string(),
    ];
    for sql in [
        "INSERT INTO t VALUES (1, 'one');",
        "INSERT INTO t VALUES (2, 'two');",
        "INSERT INTO t VALUES (3, 'three');",
        "INSERT INTO t VALUES (4, 'four');",
        "DELETE FROM t WHERE id = 1;",
    ] {
        commands.push(sql.to_string());
        commands.push("SELECT 'frame', walvault_sync();".to_string());
        commands.push(".shell sleep 0.05".to_string());
    }
    let args: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = ok(
        shell(d, "app.db", &args),
        "committing through the extension",
    );
    let frames: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("frame|"))
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(frames.len(), 5, "{out}");
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
    let states = ["1", "1,2", "1,2,3", "1,2,3,4", "2,3,4"];

    // Each commit's time, from the store's log (the library, not the VFS).
    let log = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = LocalStorage::open(d.join("store")).unwrap();
        let ns = NamespaceName::new("app").unwrap();
        rt.block_on(walvault::commit_log(&store, &ns, None, None))
            .unwrap()
    };
    let time_of = |frame: u64| {
        let c = log
            .iter()
            .find(|c| c.frame_no == frame)
            .unwrap_or_else(|| panic!("frame {frame} is not a commit of the log"));
        c.timestamp().to_rfc3339()
    };

    // The shell: latest, then an earlier frame; a write fails and creates nothing.
    let frame_pragma = format!("PRAGMA walvault_frame = {};", frames[1]);
    let out = shell(
        d,
        ":memory:",
        &[
            &load,
            ".open 'file:app?vfs=walvault&store=store'",
            IDS,
            "PRAGMA walvault_frame;",
            &frame_pragma,
            IDS,
            "PRAGMA walvault_frame;",
            "INSERT INTO t VALUES (9, 'nine');",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("ids|"))
            .copied()
            .collect::<Vec<_>>(),
        [format!("ids|{}", states[4]), format!("ids|{}", states[1])],
        "stdout {stdout}\nstderr {stderr}"
    );
    assert!(
        lines.contains(&frames[4].to_string().as_str())
            && lines.contains(&frames[1].to_string().as_str()),
        "PRAGMA walvault_frame: {stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("at frame {}", frames[1]))),
        "PRAGMA walvault_frame = {}: {stdout}",
        frames[1]
    );
    assert!(!out.status.success(), "the INSERT succeeded: {stdout}");
    assert!(stderr.contains("readonly"), "the INSERT: {stderr}");
    for name in ["app", "app-journal", "app-wal", "app-shm"] {
        assert!(!d.join(name).exists(), "{name} was created");
    }

    // Python: latest, at an earlier time, back to latest, then following a commit made
    // by another process meanwhile.
    let at = time_of(frames[2]);
    let script = format!(
        r#"
import os, sqlite3, subprocess
m = sqlite3.connect(":memory:")
m.enable_load_extension(True)
m.load_extension(os.environ["WALVAULT_EXT"])
c = sqlite3.connect("file:app?vfs=walvault&store=store", uri=True)
def ids():
    return ",".join(str(r[0]) for r in c.execute("SELECT id FROM t ORDER BY id"))
print("latest", ids())
print("view", c.execute("PRAGMA walvault_at = '{at}'").fetchone()[0])
print("at", ids())
print("frame", c.execute("PRAGMA walvault_frame").fetchone()[0])
c.execute("PRAGMA walvault_at = 'latest'").fetchall()
print("again", ids())
subprocess.run(["sqlite3", "app.db", ".load " + os.environ["WALVAULT_EXT"],
                "SELECT walvault_attach('store', 'app', 'durable');",
                "INSERT INTO t VALUES (5, 'five');"],
               check=True, stdout=subprocess.DEVNULL)
print("followed", ids())
try:
    c.execute("INSERT INTO t VALUES (9, 'nine')")
    c.commit()
    print("written")
except sqlite3.OperationalError as e:
    print("refused", e)
try:
    sqlite3.connect("file:app?vfs=walvault&store=store&at=2001-01-01T00:00:00Z", uri=True)
    print("opened")
except sqlite3.OperationalError as e:
    print("cannot open", e)
print("why", m.execute("SELECT walvault_vfs_error()").fetchone()[0])
"#
    );
    let out = ok(python(d, &script), "python reading through the VFS");
    let want = [
        format!("latest {}", states[4]),
        format!("at {}", states[2]),
        format!("frame {}", frames[2]),
        format!("again {}", states[4]),
        "followed 2,3,4,5".to_string(),
    ];
    for line in &want {
        assert!(out.lines().any(|l| l == line), "{line:?} not in {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("view ") && l.contains(&format!("at frame {}", frames[2]))),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("refused") && l.contains("readonly")),
        "{out}"
    );
    // A time before the history: SQLite says only that it cannot open; the extension
    // says why, naming the history's span.
    assert!(out.lines().any(|l| l.starts_with("cannot open")), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("why ") && l.contains("2001-01-01") && l.contains("spans")),
        "{out}"
    );
}

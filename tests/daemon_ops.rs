//! The daemon's operations features driven as users run them: a `walvault.toml` listing
//! three databases, `--exec` running the application under the daemon (its exit status
//! passed on, its signals forwarded, its last commit made durable), and the boot flow of
//! a machine that starts with an empty disk (`--restore-if-missing`). The binary runs as
//! a subprocess from a temp working directory with relative paths; the application is a
//! real writer process (`tests/support/writer.py`) recording every state it commits, and
//! every commit frame in the store is checked against that record (`daemon/harness.rs`).

#![cfg(target_os = "linux")]

#[path = "daemon/harness.rs"]
mod harness;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::{check_history_in, content_hash, Reader, StoreArg, Writer, PYTHON};

const RUN: Duration = Duration::from_secs(180);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The shell command that runs the writer on `db` (recording to `record`).
fn writer_cmd(db: &str, record: &str, args: &str) -> String {
    format!(
        "{PYTHON} {} --db {db} --record {record} {args}",
        harness::writer_script().display()
    )
}

/// Every commit frame `ns` holds in the local store `store` (relative to `dir`) is a
/// state the writer recorded in `record`, and the latest is its last. `envs`: for the
/// binary (the config file's variables).
fn check(dir: &Path, store: &str, envs: &[(String, String)], ns: &str, record: &str) {
    let history = harness::History::read(&dir.join(record));
    let reader = Reader::Local(dir.join(store));
    let arg = StoreArg {
        envs: envs.to_vec(),
        ..StoreArg::local(store)
    };
    let checked = check_history_in(dir, &reader, &arg, ns, &history, 200, &String::new);
    assert!(checked.written > 1, "{ns}: the writer committed nothing");
}

#[test]
fn three_databases_from_a_config_file_under_exec() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("data")).unwrap();
    fs::write(
        d.join("walvault.toml"),
        r#"# three databases, one process
store = "${BACKUPS}"

[[db]]
path = "a.db"
max_lag = "200ms"

[[db]]
path = "b.db"
interval = "1.5s"

[[db]]
path = "data/c.db"
namespace = "cee"
store = "${OTHER_STORE:-other}"
"#,
    )
    .unwrap();
    let a = Writer::new(d, "a.db", "a.rec");
    a.init();
    let b = Writer::new(d, "b.db", "b.rec");
    b.init();
    // c.db does not exist yet: the application creates it after the daemon started.
    let app = format!(
        "sh -c '{} && {} && {} && {}; exit 3'",
        writer_cmd("a.db", "a.rec", "--txns 15"),
        writer_cmd("b.db", "b.rec", "--txns 15 --checkpoint-every 5"),
        writer_cmd("data/c.db", "c.rec", "--init"),
        writer_cmd("data/c.db", "c.rec", "--txns 15"),
    );
    let env = [("BACKUPS".to_string(), "backups".to_string())];
    let out = harness::walvault(d, &env, &["replicate", "--exec", &app], RUN);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    for label in ["[a.db] ", "[b.db] ", "[data/c.db] "] {
        assert!(
            text.contains(&format!("{label}stopped; everything shipped is durable")),
            "{label}: {text}"
        );
    }
    assert!(
        text.contains("[data/c.db] waiting: data/c.db does not exist yet"),
        "{text}"
    );
    assert!(d.join("backups").is_dir() && d.join("other").is_dir());
    check(d, "backups", &env, "a", "a.rec");
    check(d, "backups", &env, "b", "b.rec");
    check(d, "other", &env, "cee", "c.rec");

    // Commands other than replicate find each namespace's store through the config.
    let env = [("BACKUPS".to_string(), "backups".to_string())];
    let out = harness::walvault(
        d,
        &env,
        &["restore", "--namespace", "cee", "--output", "c-again.db"],
        RUN,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        content_hash(&d.join("c-again.db")).unwrap(),
        content_hash(&d.join("data/c.db")).unwrap()
    );
}

#[test]
fn exec_passes_sigterm_on_and_ships_the_last_commit_the_application_makes() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = Writer::new(d, "app.db", "app.rec");
    app.init();
    // An application that commits one more transaction when told to stop.
    fs::write(
        d.join("app.py"),
        r#"
import signal, sqlite3, sys, time
def stop(signum, frame):
    con = sqlite3.connect("app.db", isolation_level=None)
    con.execute("INSERT INTO t(v, pad) VALUES ('bye', zeroblob(10))")
    con.close()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
con = sqlite3.connect("app.db", isolation_level=None)
con.execute("INSERT INTO t(v, pad) VALUES ('hello', zeroblob(10))")
con.close()
open("ready", "w").close()
while True:
    time.sleep(0.05)
"#,
    )
    .unwrap();
    let mut daemon = Command::new(harness::bin())
        .current_dir(d)
        .args([
            "--store",
            "store",
            "replicate",
            "--db",
            "app.db",
            "--exec",
            &format!("{PYTHON} app.py"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + RUN;
    while !d.join("ready").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the application never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(daemon.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = harness::wait_timeout(&mut daemon, RUN).expect("the daemon did not stop");
    let out = daemon.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("passing signal 15 on to the application"),
        "{text}"
    );
    assert!(
        text.contains("stopped; everything shipped is durable"),
        "{text}"
    );
    let out = harness::walvault(
        d,
        &[],
        &[
            "--store",
            "store",
            "restore",
            "--namespace",
            "app",
            "--output",
            "r.db",
        ],
        RUN,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    walvault::integrity_check(&d.join("r.db")).unwrap();
    let conn = rusqlite::Connection::open(d.join("r.db")).unwrap();
    let last: String = conn
        .query_row("SELECT v FROM t ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        last, "bye",
        "the commit made after the signal was not shipped"
    );
    assert_eq!(
        content_hash(&d.join("r.db")).unwrap(),
        content_hash(&d.join("app.db")).unwrap()
    );
}

#[test]
fn a_fresh_machine_boots_from_an_empty_then_a_populated_store() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for m in ["m1", "m2", "m3", "m4"] {
        fs::create_dir(d.join(m)).unwrap();
    }
    let store = ["--store", "../store"];
    let boot = ["replicate", "--db", "app.db", "--restore-if-missing"];

    // Machine 1, empty store: nothing to restore; the application creates the database.
    let app = format!(
        "sh -c '{} && {}'",
        writer_cmd("app.db", "../app.rec", "--init"),
        writer_cmd("app.db", "../app.rec", "--txns 20")
    );
    let args = [&store[..], &boot[..], &["--exec", &app]].concat();
    let out = harness::walvault(&d.join("m1"), &[], &args, RUN);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("has no commits in ../store: starting without a restore"));

    // Machine 2 starts with an empty disk: the database comes back as machine 1 left it.
    let args = [&store[..], &boot[..], &["--once"]].concat();
    let out = harness::walvault(&d.join("m2"), &[], &args, RUN);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("restored app.db from namespace app"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        content_hash(&d.join("m2/app.db")).unwrap(),
        content_hash(&d.join("m1/app.db")).unwrap()
    );

    // Machine 3 boots the same way under the daemon, and the application goes on from
    // there, writing the same history.
    let app = writer_cmd("app.db", "../app.rec", "--txns 20 --checkpoint-every 7");
    let args = [&store[..], &boot[..], &["--exec", &app]].concat();
    let out = harness::walvault(&d.join("m3"), &[], &args, RUN);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    check(d, "store", &[], "app", "app.rec");

    // A history that cannot be restored (every segment damaged): the application is not
    // started on an empty database, and the daemon fails.
    copy_dir(&d.join("store"), &d.join("damaged"));
    let mut damaged = 0;
    for entry in walk(&d.join("damaged")) {
        let mut bytes = fs::read(&entry).unwrap();
        if entry.extension().is_some_and(|e| e == "seg") {
            // One byte in every kilobyte: every frame, whichever the restore reads.
            for i in (100..bytes.len()).step_by(1000) {
                bytes[i] ^= 0xff;
            }
            fs::write(&entry, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no segment files found to damage");
    let args = [
        "--store",
        "../damaged",
        "replicate",
        "--db",
        "app.db",
        "--restore-if-missing",
    ];
    let args = [&args[..], &["--exec", "touch started"]].concat();
    let out = harness::walvault(&d.join("m4"), &[], &args, RUN);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !d.join("m4/started").exists(),
        "the application was started"
    );
    assert!(!d.join("m4/app.db").exists());
    assert!(
        stdout(&out).contains("the application was not started"),
        "{}",
        stdout(&out)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_bad_config_is_one_error_naming_the_file_the_line_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("conf")).unwrap();
    fs::write(
        d.join("conf/w.toml"),
        "store = \"s\"\n\n[[db]]\npath = \"a.db\"\nretain = \"a week\"\n",
    )
    .unwrap();
    let out = harness::walvault(d, &[], &["--config", "conf/w.toml", "replicate"], RUN);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("conf/w.toml, line 5") && err.contains("retain"),
        "{err}"
    );

    let env = [("WALVAULT_CONFIG".to_string(), "missing.toml".to_string())];
    let out = harness::walvault(d, &env, &["ls"], RUN);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reading the config file missing.toml"));
    // A command given its store needs nothing from the file: a warning, and on it goes.
    fs::create_dir(d.join("given")).unwrap();
    let env = [("WALVAULT_CONFIG".to_string(), "conf/w.toml".to_string())];
    let out = harness::walvault(d, &env, &["--store", "given", "ls"], RUN);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not using the config file"),
        "{}",
        stderr(&out)
    );

    // No database named anywhere: say how to name one.
    let out = harness::walvault(d, &[], &["replicate"], RUN);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--db app.db, or a config file"),
        "{}",
        stderr(&out)
    );

    // Malformed arguments exit with status 2, as clap's own errors do.
    let out = harness::walvault(d, &[], &["--log-level", "loud", "ls"], RUN);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not a level"), "{}", stderr(&out));
    let out = harness::walvault(
        d,
        &[],
        &["replicate", "--db", "a.db", "--exec", "'unclosed"],
        RUN,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a command line"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn log_lines_are_json_with_timestamps_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = Writer::new(d, "app.db", "app.rec");
    app.init();
    for _ in 0..12 {
        app.run(&["--txns", "1"], RUN);
        let out = harness::walvault(d, &[], &["replicate", "--db", "app.db", "--once"], RUN);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let env = [("WALVAULT_STORE".to_string(), "./walvault-store".to_string())];
    let args = [
        "--log-level",
        "info",
        "--log-format",
        "json",
        "compact",
        "--namespace",
        "app",
    ];
    let out = harness::walvault(d, &env, &args, RUN);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let compacted = lines
        .iter()
        .find(|l| l["fields"]["message"] == "compacted segments")
        .unwrap_or_else(|| panic!("no compaction event in {lines:?}"));
    assert!(compacted["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(compacted["level"], "INFO");
}

#[test]
fn a_second_daemon_for_one_database_is_refused_and_the_first_goes_on() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = Writer::new(d, "app.db", "app.rec");
    app.init();
    let store = StoreArg::local("store");
    let mut first = harness::Daemon::start(d, &store, &["replicate", "--db", "app.db"]);
    // The same database again, as a user might by mistake (and --once alike).
    for extra in [&[][..], &["--once"][..]] {
        let args = [
            &["--store", "store", "replicate", "--db", "app.db"][..],
            extra,
        ]
        .concat();
        let out = harness::walvault(d, &[], &args, RUN);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("app.db-walvault is in use by another writer"),
            "{}",
            stderr(&out)
        );
    }
    app.run(&["--txns", "10"], RUN);
    first.ensure_running("after the second daemon was refused");
    std::thread::sleep(Duration::from_millis(1500));
    first.stop();
    // And the next run of the database goes on from there.
    app.run(&["--txns", "5"], RUN);
    let out = harness::walvault(
        d,
        &[],
        &["--store", "store", "replicate", "--db", "app.db", "--once"],
        RUN,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    check(d, "store", &[], "app", "app.rec");
}

#[test]
fn an_application_that_cannot_start_stops_the_daemon_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let app = Writer::new(d, "app.db", "app.rec");
    app.init();
    let args = [
        "--store",
        "store",
        "replicate",
        "--db",
        "app.db",
        "--exec",
        "./no-such-app --flag",
    ];
    let out = harness::walvault(d, &[], &args, RUN);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("starting the application `./no-such-app --flag`"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("stopped; everything shipped is durable"),
        "{}",
        stdout(&out)
    );
    // What was there was shipped.
    let out = harness::walvault(
        d,
        &[],
        &[
            "--store",
            "store",
            "restore",
            "--namespace",
            "app",
            "--output",
            "r.db",
        ],
        RUN,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        content_hash(&d.join("r.db")).unwrap(),
        content_hash(&d.join("app.db")).unwrap()
    );
    // status --json says so for a database no daemon runs.
    let out = harness::walvault(d, &[], &["status", "--db", "app.db", "--json"], RUN);
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(doc["running"], false);
    assert_eq!(doc["db"], "app.db");
}

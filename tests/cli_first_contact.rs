//! The `walvault` binary as a new user first meets it: run from a scratch working
//! directory with relative paths (`--store store`, `--db app.db`), each rough edge seen
//! when it was tried cold (issue 14) now answers with a clear message and the right exit
//! status.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rusqlite::Connection;
use serde_json::Value;
use tempfile::TempDir;

/// Runs the binary in `dir` with `args` as typed (no `--store` added).
fn walvault(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir)
        .env_remove("WALVAULT_STORE")
        .args(args)
        .output()
        .unwrap()
}

/// [`walvault`] with the arguments of one command line as a person types it (words
/// separated by spaces, none quoted).
fn walvault_line(dir: &Path, line: &str) -> Output {
    walvault(dir, &line.split_whitespace().collect::<Vec<_>>())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 0; returns stdout.
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", stderr(out));
    stdout(out)
}

/// Exit status `code` and stderr containing every needle.
fn fails_with(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap_or_else(|e| panic!("{e}: {:?}", stdout(out)))
}

/// A scratch directory with `app.db` (two commits of rows) replicated into `store` as
/// namespace `app`, by relative paths.
fn replicated() -> TempDir {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let conn = Connection::open(d.join("app.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO items(name) VALUES ('apple'), ('pear');",
    )
    .unwrap();
    conn.execute_batch("INSERT INTO items(name) VALUES ('plum');")
        .unwrap();
    let args = ["--store", "store", "replicate", "--db", "app.db", "--once"];
    ok(&walvault(d, &args));
    dir
}

fn rows(db: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, name FROM items ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn integrity_ok(db: &Path) {
    let conn = Connection::open(db).unwrap();
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok");
}

/// The commits of `app`, oldest first: (frame, time).
fn commits(d: &Path) -> Vec<(u64, String)> {
    let log = json(&walvault(
        d,
        &["--store", "store", "log", "--namespace", "app", "--json"],
    ));
    log["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["frame_no"].as_u64().unwrap(),
                c["time"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn read_only_commands_refuse_a_store_directory_that_does_not_exist() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let cases: [&[&str]; 9] = [
        &["ls"],
        &["info", "--namespace", "app"],
        &["log", "--namespace", "app"],
        &["verify", "--namespace", "app"],
        &["restore", "--namespace", "app", "--output", "x.db"],
        &["follow", "--namespace", "app", "--output", "x.db", "--once"],
        &["compact", "--namespace", "app"],
        &["gc", "--namespace", "app"],
        &["fork", "--namespace", "app", "--to", "b"],
    ];
    for args in cases {
        let mut all = vec!["--store", "nostore"];
        all.extend_from_slice(args);
        let out = walvault(d, &all);
        fails_with(
            &out,
            1,
            &["store directory nostore does not exist", "replicate"],
        );
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    assert!(
        !d.join("nostore").exists(),
        "a read-only command created the store"
    );
    // The default store, and WALVAULT_STORE, are resolved alike.
    fails_with(
        &walvault(d, &["ls"]),
        1,
        &["./walvault-store does not exist"],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(d)
        .env("WALVAULT_STORE", "envstore")
        .arg("ls")
        .output()
        .unwrap();
    fails_with(&out, 1, &["store directory envstore does not exist"]);
}

#[test]
fn the_store_comes_from_walvault_store_unless_the_flag_says_otherwise() {
    let dir = replicated();
    let d = dir.path();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_walvault"))
            .current_dir(d)
            .env("WALVAULT_STORE", "store")
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(ok(&run(&["ls"])).trim(), "app");
    fails_with(
        &run(&["--store", "other", "ls"]),
        1,
        &["other does not exist"],
    );
}

#[test]
fn a_closed_stdout_does_not_panic() {
    let dir = replicated();
    let d = dir.path();
    let cases: [&[&str]; 4] = [
        &["info", "--namespace", "app"],
        &["ls", "--namespace", "app"],
        &["log", "--namespace", "app", "--json"],
        &["restore", "--namespace", "app", "--dry-run"],
    ];
    for args in cases {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walvault"))
            .current_dir(d)
            .args(["--store", "store"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader went away before anything was written
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(status.success(), "{args:?}: {status} {err}");
    }
}

#[test]
fn a_time_after_the_latest_commit_restores_it_and_says_so() {
    let dir = replicated();
    let d = dir.path();
    let (frame, time) = commits(d).pop().unwrap();
    let out = walvault_line(
        d,
        "--store store restore --namespace app --at 2999-01-01T00:00:00Z --output r.db --json",
    );
    let report = json(&out);
    let err = stderr(&out);
    assert!(err.contains("is after the latest commit"), "{err}");
    assert!(err.contains(&format!("frame {frame} at {time}")), "{err}");
    assert_eq!(report["restored"], true);
    assert_eq!(report["after_latest"], true);
    assert_eq!(report["frame_no"], frame);
    assert_eq!(report["time"], time.as_str());
    assert!(report["note"]
        .as_str()
        .unwrap()
        .contains("after the latest commit"));
    assert_eq!(rows(&d.join("r.db")), rows(&d.join("app.db")));
    integrity_ok(&d.join("r.db"));
    // A time within the history brings no note.
    let out = walvault(
        d,
        &[
            "--store",
            "store",
            "restore",
            "--namespace",
            "app",
            "--at",
            &time,
            "--output",
            "s.db",
        ],
    );
    ok(&out);
    assert!(!stderr(&out).contains("note"), "{}", stderr(&out));
    assert_eq!(rows(&d.join("s.db")), rows(&d.join("app.db")));
}

#[test]
fn an_unknown_namespace_is_named_with_those_the_store_has() {
    let dir = replicated();
    let d = dir.path();
    let restore = [
        "--store",
        "store",
        "restore",
        "--namespace",
        "nope",
        "--output",
        "x.db",
    ];
    let out = walvault(d, &restore);
    fails_with(
        &out,
        1,
        &["namespace nope is not in the store", "it has app"],
    );
    assert!(!stderr(&out).contains("frame 0"));
    for once in [true, false] {
        let mut args = vec![
            "--store",
            "store",
            "follow",
            "--namespace",
            "nope",
            "--output",
            "f.db",
        ];
        if once {
            args.push("--once");
        }
        let out = walvault(d, &args);
        fails_with(
            &out,
            1,
            &["namespace nope is not in the store", "it has app"],
        );
        assert!(!d.join("f.db").exists());
    }
    // An empty store says so.
    std::fs::create_dir(d.join("empty")).unwrap();
    let out = walvault_line(d, "--store empty restore --namespace app --output x.db");
    fails_with(
        &out,
        1,
        &["namespace app is not in the store; the store is empty"],
    );
}

#[test]
fn a_frame_or_time_before_the_history_names_the_first_commit() {
    let dir = replicated();
    let d = dir.path();
    let (first_frame, first_time) = commits(d).remove(0);
    assert!(
        first_frame > 1,
        "the first commit is at frame {first_frame}"
    );
    let out = walvault_line(
        d,
        "--store store restore --namespace app --frame 1 --output x.db",
    );
    let first = format!("frame {first_frame} at {first_time}");
    fails_with(
        &out,
        1,
        &["frame 1 is before the first restorable commit", &first],
    );
    assert!(
        !stderr(&out).contains("no segment ending"),
        "{}",
        stderr(&out)
    );
    let out = walvault_line(
        d,
        "--store store restore --namespace app --at 2000-01-01T00:00:00Z --output x.db",
    );
    fails_with(
        &out,
        1,
        &[
            "2000-01-01T00:00:00.000Z is before the first restorable commit",
            &first_time,
        ],
    );
    assert!(!d.join("x.db").exists());
}

#[test]
fn durations_take_humantime_and_zero_intervals_are_refused() {
    let dir = replicated();
    let d = dir.path();
    for retain in ["1h30m", "1.5s", "7d", "1h 30m"] {
        let out = walvault(
            d,
            &[
                "--store",
                "store",
                "gc",
                "--namespace",
                "app",
                "--retain",
                retain,
                "--dry-run",
            ],
        );
        ok(&out);
    }
    let out = walvault_line(d, "--store store gc --namespace app --grace 10 --dry-run");
    fails_with(&out, 2, &["duration \"10\""]);
    for zero in ["0s", "0ms", "0"] {
        let out = walvault(
            d,
            &[
                "--store",
                "store",
                "follow",
                "--namespace",
                "app",
                "--output",
                "f.db",
                "--interval",
                zero,
            ],
        );
        fails_with(&out, 2, &["--interval", "too short"]);
    }
    let out = walvault_line(
        d,
        "--store store follow --namespace app --output f.db --interval 1.5s --once",
    );
    ok(&out);
    assert_eq!(rows(&d.join("f.db")), rows(&d.join("app.db")));
}

#[test]
fn a_dry_run_needs_no_output_and_a_restore_needs_one() {
    let dir = replicated();
    let d = dir.path();
    let out = walvault_line(d, "--store store restore --namespace app --dry-run");
    let text = ok(&out);
    assert!(text.starts_with("plan: commit at frame"), "{text}");
    let out = walvault(d, &["--store", "store", "restore", "--namespace", "app"]);
    fails_with(&out, 2, &["--output"]);
}

#[test]
fn demo_uses_the_store_it_is_given() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let out = walvault(d, &["--store", "mystore", "demo", "--json"]);
    let report = json(&out);
    assert_eq!(report["store"], "mystore");
    assert_eq!(report["ok"], true);
    assert_eq!(report["phases"].as_array().unwrap().len(), 4);
    assert!(d.join("mystore").is_dir());
    assert!(!d.join("walvault-demo/store").exists());
    let listed = json(&walvault(d, &["--store", "mystore", "ls", "--json"]));
    assert_eq!(listed["namespaces"][0], "app");
    // Run again into the same store: refused, naming it, rather than mixing histories.
    let out = walvault(d, &["--store", "mystore", "demo"]);
    fails_with(&out, 1, &["mystore", "namespace app already"]);
    // Without --store its store is under ./walvault-demo, and it says where.
    let text = ok(&walvault(d, &["demo"]));
    assert!(
        text.contains("replicating into walvault-demo/store"),
        "{text}"
    );
}

#[test]
fn an_existing_output_is_refused_before_any_plan() {
    let dir = replicated();
    let d = dir.path();
    std::fs::write(d.join("taken.db"), b"mine").unwrap();
    let out = walvault_line(d, "--store store restore --namespace app --output taken.db");
    fails_with(&out, 1, &["taken.db exists", "--force"]);
    assert!(stdout(&out).is_empty(), "printed {:?}", stdout(&out));
    assert_eq!(std::fs::read(d.join("taken.db")).unwrap(), b"mine");
    let out = walvault_line(
        d,
        "--store store restore --namespace app --output nodir/x.db",
    );
    fails_with(&out, 1, &["nodir", "does not exist"]);
    assert!(stdout(&out).is_empty());
    // With --force it is replaced.
    let out = walvault_line(
        d,
        "--store store restore --namespace app --output taken.db --force",
    );
    ok(&out);
    assert_eq!(rows(&d.join("taken.db")), rows(&d.join("app.db")));
}

#[test]
fn times_print_in_one_format() {
    let dir = replicated();
    let d = dir.path();
    let rfc_ms_z = |t: &str| {
        t.len() == "2026-01-01T00:00:00.000Z".len() && t.ends_with('Z') && !t.contains("+00:00")
    };
    let info = json(&walvault(
        d,
        &["--store", "store", "info", "--namespace", "app", "--json"],
    ));
    for field in ["first_commit", "last_commit"] {
        assert!(
            rfc_ms_z(info[field].as_str().unwrap()),
            "{field}: {}",
            info[field]
        );
    }
    let listed = json(&walvault(
        d,
        &["--store", "store", "ls", "--namespace", "app", "--json"],
    ));
    let seg = &listed["segments"][0];
    assert!(
        rfc_ms_z(seg["first_commit"].as_str().unwrap())
            && rfc_ms_z(seg["last_commit"].as_str().unwrap())
    );
    let plan = ok(&walvault_line(
        d,
        "--store store restore --namespace app --dry-run",
    ));
    assert!(!plan.contains("+00:00") && plan.contains("Z)"), "{plan}");
}

#[test]
fn every_command_prints_json_with_the_global_flag() {
    let dir = replicated();
    let d = dir.path();
    let s = ["--store", "store", "--json"];
    let run = |args: &[&str]| json(&walvault(d, &[&s[..], args].concat()));
    assert_eq!(run(&["ls"])["namespaces"][0], "app");
    assert_eq!(run(&["info", "--namespace", "app"])["namespace"], "app");
    assert!(run(&["log", "--namespace", "app"])["commits"].is_array());
    let verify = run(&["verify", "--namespace", "app"]);
    assert_eq!(verify["sound"], true);
    assert!(verify["segments"].as_u64().unwrap() >= 1);
    let compact = run(&["compact", "--namespace", "app", "--dry-run"]);
    assert_eq!(compact["dry_run"], true);
    assert!(compact["merges"].is_array());
    let gc = run(&["gc", "--namespace", "app", "--retain", "1h", "--dry-run"]);
    assert!(gc["retention"]["cutoff"].is_string() && gc["deleted"].is_array());
    let fork = run(&["fork", "--namespace", "app", "--to", "branch"]);
    assert_eq!(
        (fork["source"].as_str(), fork["target"].as_str()),
        (Some("app"), Some("branch"))
    );
    let dry = run(&["restore", "--namespace", "app", "--dry-run"]);
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["restored"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(!dry["segments"].as_array().unwrap().is_empty());
    let restored = run(&["restore", "--namespace", "app", "--output", "r.db"]);
    assert_eq!(restored["restored"], true);
    assert_eq!(restored["output"], "r.db");
    assert_eq!(rows(&d.join("r.db")), rows(&d.join("app.db")));
    // follow: one object per line per event.
    let out = walvault(
        d,
        &[
            &s[..],
            &["follow", "--namespace", "app", "--output", "f.db", "--once"],
        ]
        .concat(),
    );
    let lines: Vec<Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "position");
    assert_eq!(lines[0]["frame_no"], commits(d).last().unwrap().0);
    // The flag after the subcommand works too (as before it became global).
    let after = json(&walvault(d, &["--store", "store", "ls", "--json"]));
    assert_eq!(after["namespaces"].as_array().unwrap().len(), 2);
}

#[test]
fn the_boot_flow_restores_once_and_otherwise_does_nothing() {
    let dir = replicated();
    let d = dir.path();
    let boot = |store: &str, ns: &str, db: &str| {
        walvault(
            d,
            &[
                "--store",
                store,
                "restore",
                "--namespace",
                ns,
                "--output",
                db,
                "--if-db-missing",
                "--if-replica-exists",
                "--json",
            ],
        )
    };
    // Fresh machine, populated store: restored.
    let first = json(&boot("store", "app", "boot.db"));
    assert_eq!(first["restored"], true);
    assert_eq!(rows(&d.join("boot.db")), rows(&d.join("app.db")));
    integrity_ok(&d.join("boot.db"));
    // The database is there now: left alone, exit 0, saying so.
    let conn = Connection::open(d.join("boot.db")).unwrap();
    conn.execute_batch("INSERT INTO items(name) VALUES ('local');")
        .unwrap();
    drop(conn);
    let out = boot("store", "app", "boot.db");
    let again = json(&out);
    assert_eq!(
        (again["restored"].as_bool(), again["skipped"].as_str()),
        (Some(false), Some("output exists"))
    );
    assert!(
        stderr(&out).contains("boot.db exists; nothing restored"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        rows(&d.join("boot.db")).len(),
        rows(&d.join("app.db")).len() + 1
    );
    // No such namespace, or no store at all: nothing to restore, exit 0, saying so.
    for store in ["store", "nostore"] {
        let out = boot(store, "other", "other.db");
        let report = json(&out);
        assert_eq!(report["skipped"], "no replica", "{store}");
        assert!(
            stderr(&out).contains("no commits of namespace other"),
            "{}",
            stderr(&out)
        );
        assert!(!d.join("other.db").exists());
    }
    assert!(!d.join("nostore").exists());
    // Without the flags the same cases fail.
    let out = walvault_line(d, "--store store restore --namespace other --output o.db");
    fails_with(&out, 1, &["namespace other is not in the store"]);
    // The shell line a boot script runs.
    let script = format!(
        "{} --store store restore --namespace app --output shell.db --if-db-missing \
         --if-replica-exists && echo started",
        env!("CARGO_BIN_EXE_walvault")
    );
    let out = Command::new("sh")
        .current_dir(d)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(ok(&out).lines().last(), Some("started"));
    assert_eq!(rows(&d.join("shell.db")), rows(&d.join("app.db")));
}

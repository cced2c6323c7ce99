//! The `walvault` CLI driven as a subprocess: every command on a real SQLite database,
//! and the exit codes and one-line messages for bad input.
// The tests take wall-clock moments, as a user would, to restore to.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::Connection;

mod s3;

fn walvault(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir)
        .arg("--store")
        .arg(dir.join("store"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit status 1 and one line on stderr that contains `needle`.
fn fails_with(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

fn database(dir: &Path) -> (PathBuf, Connection) {
    let db = dir.join("shop.db");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO items(name) VALUES ('apple'), ('pear');",
    )
    .unwrap();
    (db, conn)
}

fn names(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM items ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn replicate_list_inspect_restore_and_follow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, conn) = database(d);
    let db_arg = db.to_str().unwrap();
    assert!(ok(&walvault(d, &["replicate", "--db", db_arg, "--once"])).contains("snapshot"));
    std::thread::sleep(std::time::Duration::from_millis(5));
    let between = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(std::time::Duration::from_millis(5));
    conn.execute("INSERT INTO items(name) VALUES ('plum')", [])
        .unwrap();
    ok(&walvault(d, &["replicate", "--db", db_arg, "--once"]));

    assert_eq!(ok(&walvault(d, &["ls"])).trim(), "shop");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&walvault(d, &["ls", "--json"]))).unwrap();
    assert_eq!(json["namespaces"][0], "shop");
    let segs: serde_json::Value =
        serde_json::from_str(&ok(&walvault(d, &["ls", "--namespace", "shop", "--json"]))).unwrap();
    assert_eq!(segs["segments"].as_array().unwrap().len(), 2);
    let info: serde_json::Value = serde_json::from_str(&ok(&walvault(
        d,
        &["info", "--namespace", "shop", "--json"],
    )))
    .unwrap();
    assert_eq!(info["segments"], 2);
    assert_eq!(
        info["durable_frame_no"],
        segs["segments"][0]["end_frame_no"]
    );
    assert!(ok(&walvault(d, &["verify", "--namespace", "shop"])).contains("2 segments verified"));

    let dry = ok(&walvault(
        d,
        &[
            "restore",
            "--namespace",
            "shop",
            "--output",
            "x.db",
            "--dry-run",
        ],
    ));
    assert!(dry.contains("plan:") && !d.join("x.db").exists());
    let restored = walvault(
        d,
        &[
            "restore",
            "--namespace",
            "shop",
            "--output",
            "latest.db",
            "--integrity-check",
        ],
    );
    ok(&restored);
    assert_eq!(names(&d.join("latest.db")), ["apple", "pear", "plum"]);
    // Not a terminal: progress comes as plain lines on stderr.
    let progress = String::from_utf8_lossy(&restored.stderr);
    // However quick the restore, its last line says it wrote every page.
    let last = progress
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("restoring shop: "))
        .next()
        .and_then(|l| l.strip_suffix(" pages"))
        .and_then(|l| l.split_once('/'))
        .unwrap_or_else(|| panic!("no progress line: {progress}"));
    assert!(last.0 == last.1 && last.0 != "0", "{progress}");
    ok(&walvault(
        d,
        &[
            "restore",
            "--namespace",
            "shop",
            "--at",
            &between,
            "--output",
            "before.db",
        ],
    ));
    assert_eq!(names(&d.join("before.db")), ["apple", "pear"]);
    let out = walvault(
        d,
        &["restore", "--namespace", "shop", "--output", "before.db"],
    );
    fails_with(&out, 1, "exists; pass --force");
    ok(&walvault(
        d,
        &[
            "restore",
            "--namespace",
            "shop",
            "--output",
            "before.db",
            "--force",
        ],
    ));
    assert_eq!(names(&d.join("before.db")), ["apple", "pear", "plum"]);

    ok(&walvault(
        d,
        &[
            "follow",
            "--namespace",
            "shop",
            "--output",
            "replica.db",
            "--once",
        ],
    ));
    assert_eq!(names(&d.join("replica.db")), ["apple", "pear", "plum"]);
    conn.execute("DELETE FROM items WHERE name = 'pear'", [])
        .unwrap();
    ok(&walvault(d, &["replicate", "--db", db_arg, "--once"]));
    ok(&walvault(
        d,
        &[
            "follow",
            "--namespace",
            "shop",
            "--output",
            "replica.db",
            "--once",
        ],
    ));
    assert_eq!(names(&d.join("replica.db")), ["apple", "plum"]);
}

#[test]
fn bad_input_exits_non_zero_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, _conn) = database(d);
    ok(&walvault(
        d,
        &["replicate", "--db", db.to_str().unwrap(), "--once"],
    ));

    fails_with(
        &walvault(d, &["info", "--namespace", "nope"]),
        1,
        "not found: namespace nope",
    );
    fails_with(
        &walvault(d, &["restore", "--namespace", "nope", "--output", "o.db"]),
        1,
        "nope",
    );
    fails_with(
        &walvault(
            d,
            &[
                "restore",
                "--namespace",
                "shop",
                "--at",
                "yesterday",
                "--output",
                "o.db",
            ],
        ),
        2,
        "RFC 3339",
    );
    fails_with(
        &walvault(
            d,
            &[
                "restore",
                "--namespace",
                "shop",
                "--at",
                "1999-01-01T00:00:00Z",
                "--output",
                "o.db",
            ],
        ),
        1,
        "not found",
    );
    fails_with(
        &walvault(d, &["replicate", "--db", "missing.db", "--once"]),
        1,
        "missing.db",
    );
    let ftp = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .args(["--store", "ftp://bucket/x", "ls"])
        .output()
        .unwrap();
    fails_with(&ftp, 1, "scheme ftp");
    fails_with(
        &walvault(d, &["ls", "--namespace", "bad/name"]),
        1,
        "invalid input",
    );
    assert!(!d.join("o.db").exists());

    // A flipped byte in a stored segment: verify names it, restore writes nothing.
    let ns_dir = d.join("store").join("shop");
    let seg = std::fs::read_dir(&ns_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[200] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let key = seg.file_stem().unwrap().to_str().unwrap().to_string();
    let out = walvault(d, &["verify", "--namespace", "shop"]);
    fails_with(&out, 1, "failed verification");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&key));
    fails_with(
        &walvault(d, &["restore", "--namespace", "shop", "--output", "o.db"]),
        1,
        "corrupt",
    );
    assert!(!d.join("o.db").exists());
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !leftovers
            .iter()
            .any(|n| n.to_string_lossy().contains("walvault-restore")),
        "{leftovers:?}"
    );
}

#[test]
fn demo_runs_on_a_fresh_directory_and_checks_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&walvault(dir.path(), &["demo"]));
    let checked = out
        .lines()
        .filter(|l| l.trim_end().ends_with("matches"))
        .count();
    assert_eq!(checked, 4, "{out}");
    assert!(dir.path().join("walvault-demo").join("app.db").exists());
}

#[test]
fn a_follower_killed_mid_apply_resumes_and_ends_equal_to_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, conn) = database(d);
    let db_arg = db.to_str().unwrap().to_string();
    ok(&walvault(d, &["replicate", "--db", &db_arg, "--once"]));
    let mut seed = 0x9e37_79b9_u64;
    for round in 0..15 {
        for i in 0..40 {
            conn.execute(
                "INSERT INTO items(name) VALUES (?1)",
                [format!("r{round} i{i} {}", "y".repeat(i * 30))],
            )
            .unwrap();
        }
        ok(&walvault(d, &["replicate", "--db", &db_arg, "--once"]));
        let mut child = Command::new(env!("CARGO_BIN_EXE_walvault"))
            .current_dir(d)
            .arg("--store")
            .arg(d.join("store"))
            .args(["follow", "--namespace", "shop", "--output", "replica.db"])
            .args(["--interval", "1ms"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_millis(seed % 40));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    ok(&walvault(
        d,
        &[
            "follow",
            "--namespace",
            "shop",
            "--output",
            "replica.db",
            "--once",
        ],
    ));
    walvault::integrity_check(&d.join("replica.db")).unwrap();
    assert_eq!(names(&d.join("replica.db")), names(&db));
}

/// The CLI against S3: an in-process `s3s-fs` server on 127.0.0.1, reached through an
/// `s3://` store URL with the endpoint and credentials in the standard `AWS_*` variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_replicates_lists_and_restores_through_an_s3_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(&dir.path().join("s3"));
    let d = dir.path().to_path_buf();
    let (db, conn) = database(&d);
    let store = format!("s3://{}/walvault", s3::BUCKET);
    let endpoint = server.endpoint.clone();
    let run = move |args: Vec<String>| {
        let (d, store, endpoint) = (d.clone(), store.clone(), endpoint.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_walvault"))
                .current_dir(&d)
                .env("AWS_ENDPOINT", &endpoint)
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
                .arg("--store")
                .arg(&store)
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let db_arg = db.to_str().unwrap();
    ok(&run(args(&["replicate", "--db", db_arg, "--once"]))
        .await
        .unwrap());
    conn.execute("INSERT INTO items(name) VALUES ('plum')", [])
        .unwrap();
    ok(&run(args(&["replicate", "--db", db_arg, "--once"]))
        .await
        .unwrap());
    let listed = ok(&run(args(&["ls"])).await.unwrap());
    assert_eq!(listed.trim(), "shop");
    let info = ok(&run(args(&["info", "--namespace", "shop", "--json"]))
        .await
        .unwrap());
    assert!(info.contains("\"segments\""), "{info}");
    ok(&run(args(&["verify", "--namespace", "shop"])).await.unwrap());
    let out = [
        "restore",
        "--namespace",
        "shop",
        "--output",
        "from-s3.db",
        "--integrity-check",
    ];
    ok(&run(args(&out)).await.unwrap());
    assert_eq!(
        names(&dir.path().join("from-s3.db")),
        ["apple", "pear", "plum"]
    );
    let unknown = run(args(&["info", "--namespace", "nobody"])).await.unwrap();
    fails_with(&unknown, 1, "nobody");
}

#[test]
fn compact_and_gc_shrink_the_history_and_restores_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, conn) = database(d);
    let db_arg = db.to_str().unwrap();
    let mut moments = Vec::new();
    for i in 0..6 {
        conn.execute("INSERT INTO items(name) VALUES (?1)", [format!("item-{i}")])
            .unwrap();
        ok(&walvault(d, &["replicate", "--db", db_arg, "--once"]));
        moments.push((chrono::Utc::now().to_rfc3339(), names(&db)));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let segments = |d: &Path| {
        let out = ok(&walvault(d, &["ls", "--namespace", "shop", "--json"]));
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json["segments"].as_array().unwrap().len()
    };
    assert_eq!(segments(d), 6);
    let dry = ok(&walvault(
        d,
        &[
            "compact",
            "--namespace",
            "shop",
            "--max-small",
            "1",
            "--dry-run",
        ],
    ));
    assert!(
        dry.contains("would merge") && dry.contains("(dry run)"),
        "{dry}"
    );
    assert_eq!(segments(d), 6);
    let done = ok(&walvault(
        d,
        &["compact", "--namespace", "shop", "--max-small", "1"],
    ));
    assert!(done.contains("6 segments before, 1 after"), "{done}");
    // Every moment is still there; the inputs wait for the grace period.
    for (i, (at, expected)) in moments.iter().enumerate() {
        let out = d.join(format!("at-{i}.db"));
        let out_arg = out.to_str().unwrap();
        ok(&walvault(
            d,
            &[
                "restore",
                "--namespace",
                "shop",
                "--at",
                at,
                "--output",
                out_arg,
            ],
        ));
        assert_eq!(&names(&out), expected, "moment {i}");
    }
    // A branch just before the last insert, then writes of its own.
    let fork = ok(&walvault(
        d,
        &[
            "fork",
            "--namespace",
            "shop",
            "--to",
            "branch",
            "--at",
            &moments[4].0,
        ],
    ));
    assert!(fork.contains("into branch"), "{fork}");
    let branch = d.join("branch.db");
    let branch_arg = branch.to_str().unwrap();
    ok(&walvault(
        d,
        &["restore", "--namespace", "branch", "--output", branch_arg],
    ));
    assert_eq!(names(&branch), moments[4].1);
    fails_with(
        &walvault(d, &["fork", "--namespace", "shop", "--to", "branch"]),
        1,
        "already exists",
    );
    fails_with(
        &walvault(d, &["fork", "--namespace", "shop", "--to", "bad/name"]),
        1,
        "namespace name",
    );
    let gc = ok(&walvault(d, &["gc", "--namespace", "shop"]));
    assert!(
        gc.contains("deleted 0 retired") && gc.contains("6 wait"),
        "{gc}"
    );
    let gc = ok(&walvault(
        d,
        &[
            "gc",
            "--namespace",
            "shop",
            "--grace",
            "0s",
            "--retain",
            "1d",
        ],
    ));
    assert!(
        gc.contains("no history before") && gc.contains("deleted 6 retired"),
        "{gc}"
    );
    let latest = d.join("latest.db");
    ok(&walvault(
        d,
        &[
            "restore",
            "--namespace",
            "shop",
            "--output",
            latest.to_str().unwrap(),
        ],
    ));
    assert_eq!(names(&latest), names(&db));
    ok(&walvault(d, &["verify", "--namespace", "shop"]));
    fails_with(
        &walvault(d, &["gc", "--namespace", "shop", "--retain", "7x"]),
        2,
        "unknown time unit",
    );
    fails_with(
        &walvault(d, &["compact", "--namespace", "nobody"]),
        1,
        "not found",
    );
}

/// `replicate --maintain-every` compacts and collects beside the writer (the only way on
/// the local backend, whose manifest only the writer's process may edit); Ctrl-C stops it
/// with everything durable, and every moment it kept restores.
#[test]
fn replicate_maintains_the_namespace_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, conn) = database(d);
    let db_arg = db.to_str().unwrap().to_string();
    // Twelve small segments to start with, one per run.
    let mut moments = Vec::new();
    for i in 0..12 {
        conn.execute(
            "INSERT INTO items(name) VALUES (?1)",
            [format!("early {i}")],
        )
        .unwrap();
        ok(&walvault(d, &["replicate", "--db", &db_arg, "--once"]));
        moments.push((chrono::Utc::now(), names(&db)));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let child = Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(d)
        .arg("--store")
        .arg(d.join("store"))
        .args(["replicate", "--db", &db_arg, "--interval", "20ms"])
        .args(["--maintain-every", "100ms", "--grace", "0s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..20 {
        conn.execute("INSERT INTO items(name) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60));
        moments.push((chrono::Utc::now(), names(&db)));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("maintenance:") && stdout.contains("everything shipped is durable"),
        "{stdout}"
    );
    let listed = ok(&walvault(d, &["ls", "--namespace", "shop", "--json"]));
    let json: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let segments = json["segments"].as_array().unwrap().len();
    assert!(segments <= 10, "{segments} segments left after maintenance");
    // Early moments were durable when taken: exact. Later ones depend on when the
    // replicator polled: the restore must be one of the states written by then, and
    // restores of later moments never go back.
    let mut seen = 0;
    for (i, (at, expected)) in moments.iter().enumerate() {
        let out = d.join(format!("m{i}.db"));
        let at = at.to_rfc3339();
        ok(&walvault(
            d,
            &[
                "restore",
                "--namespace",
                "shop",
                "--at",
                &at,
                "--output",
                out.to_str().unwrap(),
            ],
        ));
        let restored = names(&out);
        if i < 12 {
            assert_eq!(&restored, expected, "moment {i}");
        } else {
            let j = moments[..=i].iter().position(|(_, m)| *m == restored);
            let j = j.unwrap_or_else(|| {
                let log = walvault(d, &["log", "--namespace", "shop"]);
                let ls = walvault(d, &["ls", "--namespace", "shop"]);
                panic!(
                    "moment {i} ({at}): {restored:?} was never the database by then\n{}\n{}",
                    String::from_utf8_lossy(&log.stdout),
                    String::from_utf8_lossy(&ls.stdout),
                )
            });
            assert!(j >= seen, "moment {i} went back to {j}");
            seen = j;
        }
    }
    let latest = d.join("latest.db");
    ok(&walvault(
        d,
        &[
            "restore",
            "--namespace",
            "shop",
            "--output",
            latest.to_str().unwrap(),
        ],
    ));
    assert_eq!(names(&latest), names(&db));
}

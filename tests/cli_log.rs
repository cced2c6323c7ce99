//! `walvault log` driven as a subprocess beside a real SQLite writer: one entry per
//! shipped transaction, the table and `--json` agree, every listed frame and time
//! restores exactly the rows the writer had after that commit, and the filters and
//! errors behave.

use std::path::Path;
use std::process::{Command, Output};

use rusqlite::Connection;
use serde_json::Value;

/// Runs `walvault --store store ARGS` in `dir`, with relative paths as a user types them.
fn walvault(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walvault"))
        .current_dir(dir)
        .args(["--store", "store"])
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

/// Exit status `code` and one line on stderr that contains `needle`.
fn fails_with(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

type Rows = Vec<(i64, String)>;

fn rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// What the writer saw after one commit: its rows and the database size in pages.
struct State {
    rows: Rows,
    pages: u32,
}

fn state(conn: &Connection) -> State {
    let pages = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    State {
        rows: rows(conn),
        pages,
    }
}

/// Ships what is new; returns how many transactions the run says it shipped.
fn replicate(dir: &Path) -> usize {
    let out = ok(&walvault(dir, &["replicate", "--db", "app.db", "--once"]));
    let shipped = out
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(" transactions"))
        .map(|(n, _)| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no transaction count in {out:?}"));
    std::thread::sleep(std::time::Duration::from_millis(5));
    shipped
}

/// A writer that keeps its connection open (so the WAL persists) commits in rounds,
/// replicating after each: one round of two commits, the others of one, with an update
/// and a delete among them. Returns the state after every shipped commit, oldest first,
/// and the transactions the replicator reported.
fn history(dir: &Path) -> (Vec<State>, usize) {
    let conn = Connection::open(dir.join("app.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('a'), ('b');",
    )
    .unwrap();
    let mut states = vec![state(&conn)];
    let mut shipped = replicate(dir);
    let rounds: [&[&str]; 4] = [
        &["INSERT INTO t(v) VALUES ('c')"],
        &[
            "UPDATE t SET v = 'b2' WHERE id = 2",
            "INSERT INTO t(v) SELECT hex(randomblob(1500)) FROM t",
        ],
        &["DELETE FROM t WHERE id = 1"],
        &["INSERT INTO t(v) VALUES ('d'), ('e')"],
    ];
    for round in rounds {
        for sql in round {
            conn.execute_batch(sql).unwrap();
            states.push(state(&conn));
        }
        shipped += replicate(dir);
    }
    (states, shipped)
}

fn log_json(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["log", "--namespace", "app", "--json"];
    args.extend_from_slice(extra);
    let json: Value = serde_json::from_str(&ok(&walvault(dir, &args))).unwrap();
    assert_eq!(json["namespace"], "app");
    json["commits"].as_array().unwrap().clone()
}

fn field(c: &Value, name: &str) -> u64 {
    c[name].as_u64().unwrap_or_else(|| panic!("{name} in {c}"))
}

fn restored_rows(dir: &Path, how: &str, value: &str, output: &str) -> Rows {
    ok(&walvault(
        dir,
        &[
            "restore",
            "--namespace",
            "app",
            how,
            value,
            "--output",
            output,
        ],
    ));
    rows(&Connection::open(dir.join(output)).unwrap())
}

#[test]
fn log_lists_each_shipped_commit_and_each_restores_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (states, shipped) = history(d);
    let commits = log_json(d, &[]);
    assert_eq!(commits.len(), shipped, "{commits:?}");
    assert_eq!(commits.len(), states.len(), "{commits:?}");

    let frames: Vec<u64> = commits.iter().map(|c| field(c, "frame_no")).collect();
    assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
    let times: Vec<u64> = commits.iter().map(|c| field(c, "timestamp_ms")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[0] < times[1], "runs 5 ms apart: {times:?}");
    for (c, s) in commits.iter().zip(&states) {
        assert_eq!(field(c, "db_size_pages"), u64::from(s.pages), "{c}");
        assert!(field(c, "pages_changed") >= 1, "{c}");
        let time = chrono::DateTime::parse_from_rfc3339(c["time"].as_str().unwrap()).unwrap();
        assert_eq!(time.timestamp_millis() as u64, field(c, "timestamp_ms"));
    }
    let lineage: Vec<bool> = commits.iter().map(|c| c["new_lineage"] == true).collect();
    assert!(lineage[0], "the first run ships a snapshot");
    assert!(lineage[1..].iter().all(|&l| !l), "{lineage:?}");

    for (i, (frame, s)) in frames.iter().zip(&states).enumerate() {
        let got = restored_rows(d, "--frame", &frame.to_string(), &format!("f{i}.db"));
        assert_eq!(got, s.rows, "restore --frame {frame}");
    }
    // A listed time restores its commit, or the last one stamped the same millisecond.
    for (i, c) in commits.iter().enumerate() {
        let last_same = times.iter().rposition(|&t| t == times[i]).unwrap();
        let got = restored_rows(d, "--at", c["time"].as_str().unwrap(), &format!("t{i}.db"));
        assert_eq!(got, states[last_same].rows, "restore --at {}", c["time"]);
    }
}

#[test]
fn the_table_agrees_with_json_and_filters_are_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    history(d);
    let commits = log_json(d, &[]);
    let table = ok(&walvault(d, &["log", "--namespace", "app"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("FRAME") && lines[0].contains("TIME"),
        "{table}"
    );
    let rows = &lines[1..lines.len() - 1];
    assert_eq!(rows.len(), commits.len(), "{table}");
    for (line, c) in rows.iter().zip(&commits) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], field(c, "frame_no").to_string(), "{line}");
        assert_eq!(cells[1], c["time"].as_str().unwrap(), "{line}");
        assert_eq!(cells[2], field(c, "db_size_pages").to_string(), "{line}");
        assert_eq!(cells[3], field(c, "pages_changed").to_string(), "{line}");
        assert_eq!(cells.get(4) == Some(&"snapshot"), c["new_lineage"] == true);
    }
    // Columns line up: numbers end where their header ends.
    for (name, field_name) in [("DB PAGES", "db_size_pages"), ("CHANGED", "pages_changed")] {
        let end = lines[0].find(name).unwrap() + name.len();
        for (line, c) in rows.iter().zip(&commits) {
            let cell = format!(" {}", field(c, field_name));
            assert!(line[..end].ends_with(&cell), "{name} in {line:?}\n{table}");
        }
    }
    let summary = lines[lines.len() - 1];
    assert!(
        summary.starts_with(&format!("{} commits", commits.len())),
        "{summary}"
    );

    let times: Vec<&str> = commits
        .iter()
        .map(|c| c["time"].as_str().unwrap())
        .collect();
    let ms: Vec<u64> = commits.iter().map(|c| field(c, "timestamp_ms")).collect();
    let pick = |v: &[Value]| v.iter().map(|c| field(c, "frame_no")).collect::<Vec<_>>();
    let expect = |keep: &dyn Fn(u64) -> bool| {
        commits
            .iter()
            .filter(|c| keep(field(c, "timestamp_ms")))
            .map(|c| field(c, "frame_no"))
            .collect::<Vec<_>>()
    };
    let (lo, hi) = (ms[1], ms[3]);
    assert_eq!(
        pick(&log_json(d, &["--since", times[1], "--until", times[3]])),
        expect(&|t| lo <= t && t <= hi)
    );
    assert_eq!(
        pick(&log_json(d, &["--since", times[2]])),
        expect(&|t| t >= ms[2])
    );
    assert_eq!(
        pick(&log_json(d, &["--until", times[0]])),
        expect(&|t| t <= ms[0])
    );
    assert!(!expect(&|t| lo <= t && t <= hi).is_empty());

    // Windows without commits: an empty list, not an error.
    let future = ["--since", "2999-01-01T00:00:00Z"];
    assert!(log_json(d, &future).is_empty());
    let empty = ok(&walvault(
        d,
        &["log", "--namespace", "app", future[0], future[1]],
    ));
    assert_eq!(empty.lines().last(), Some("0 commits"), "{empty}");
    assert!(log_json(d, &["--until", "2000-01-01T00:00:00+02:00"]).is_empty());

    fails_with(
        &walvault(d, &["log", "--namespace", "nope"]),
        1,
        "namespace nope",
    );
    fails_with(
        &walvault(d, &["log", "--namespace", "app", "--since", "yesterday"]),
        2,
        "RFC 3339",
    );
    fails_with(
        &walvault(
            d,
            &[
                "log",
                "--namespace",
                "app",
                "--until",
                "2026-13-01T00:00:00Z",
            ],
        ),
        2,
        "RFC 3339",
    );
    fails_with(
        &walvault(d, &["log", "--namespace", "../x"]),
        1,
        "namespace",
    );
}

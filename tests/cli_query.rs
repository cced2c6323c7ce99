//! `walvault query` driven as a user types it: the binary as a subprocess, from a
//! working directory, with relative paths (`--store store`, `app.db`), beside the real
//! `walvault replicate` daemon and a real writer process (`tests/support/writer.py`,
//! which records the content hash of every state it commits; see `daemon/harness.rs`).
//!
//! * Every commit `walvault log` lists, queried by its frame, is a state the writer had,
//!   in the writer's order, ending at its last state; a sample passes `integrity_check`
//!   and reads the same state by its time (`--at`).
//! * A query without a moment, repeated while the daemon ships a slow writer's commits,
//!   never goes backwards and ends at the writer's last state.
//! * The errors a user meets say what is wrong.

#![cfg(target_os = "linux")]

#[path = "daemon/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use harness::{fnv1a64, Daemon, History, StoreArg, Writer};
use serde_json::Value;

const NS: &str = "app";
const REPLICATE: &[&str] = &["replicate", "--db", "app.db", "--interval", "200ms"];
const HASH_SQL: &str = "SELECT id, v, length(pad) FROM t ORDER BY id";
const CALL: Duration = Duration::from_secs(60);
const WRITER_TIMEOUT: Duration = Duration::from_secs(120);
const CATCH_UP: Duration = Duration::from_secs(30);
/// The hash of an empty table (FNV-1a's offset basis).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn store() -> StoreArg {
    StoreArg::local("store")
}

/// `walvault --store store ARGS` in `dir`.
fn walvault(dir: &Path, args: &[&str]) -> Output {
    store().run(dir, args, CALL)
}

fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Exit status 1 and one error line on stderr, containing `needle`; that line.
fn fails_with(out: &Output, needle: &str, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit status; stdout {:?} stderr {stderr:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // One error line (after the note naming the view, when it resolved).
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("walvault: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: stderr {stderr:?}");
    assert!(
        errors[0].contains(needle),
        "{what}: {needle:?} not in the error {stderr:?}"
    );
    errors[0].to_string()
}

/// One commit `walvault log --json` lists.
#[derive(Debug, Clone)]
struct Commit {
    frame_no: u64,
    time: String,
    timestamp_ms: u64,
}

fn log(dir: &Path) -> Vec<Commit> {
    let text = stdout_ok(
        &walvault(dir, &["--json", "log", "--namespace", NS]),
        "walvault log",
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["commits"]
        .as_array()
        .unwrap_or_else(|| panic!("no commits array: {text}"))
        .iter()
        .map(|c| Commit {
            frame_no: c["frame_no"].as_u64().unwrap(),
            time: c["time"].as_str().unwrap().to_string(),
            timestamp_ms: c["timestamp_ms"].as_u64().unwrap(),
        })
        .collect()
}

/// `walvault --json query --namespace app [moment] SQL`: one JSON object per statement.
fn query_json(dir: &Path, moment: &[&str], sql: &str) -> Vec<Value> {
    let mut args = vec!["--json", "query", "--namespace", NS];
    args.extend_from_slice(moment);
    args.push(sql);
    let text = stdout_ok(&walvault(dir, &args), &format!("walvault {args:?}"));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {text}")))
        .collect()
}

/// The writer's content hash and row count of a statement's rows (`HASH_SQL`).
fn hash_of(result: &Value) -> (u64, u64) {
    let rows = result["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {result}"));
    let mut h = FNV_OFFSET;
    for row in rows {
        let id = row[0].as_i64().unwrap_or_else(|| panic!("id: {row}"));
        let v = row[1].as_str().unwrap_or_else(|| panic!("v: {row}"));
        let pad = row[2]
            .as_i64()
            .unwrap_or_else(|| panic!("length(pad): {row}"));
        h = fnv1a64(format!("{id}|{v}|{pad}\n").as_bytes(), h);
    }
    (h, rows.len() as u64)
}

/// The earliest writer seq with state `hash` at or after `floor`, else an explanation.
fn seq_at_or_after(history: &History, hash: u64, floor: u64) -> Result<u64, String> {
    match history.seqs_of(hash) {
        [] => Err(history.describe(hash)),
        seqs => seqs.iter().copied().find(|s| *s >= floor).ok_or_else(|| {
            format!(
                "{}, but an earlier one was at seq {floor}",
                history.describe(hash)
            )
        }),
    }
}

/// A temp directory with `app.db` (WAL mode, table `t`) and the writer's record.
fn setup() -> (tempfile::TempDir, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let writer = Writer::new(dir.path(), "app.db", "app.record");
    writer.init();
    (dir, writer)
}

/// Every commit of a history the daemon shipped while the writer checkpointed in every
/// mode, queried by its frame (and a sample by its time) through the binary.
#[test]
fn every_commit_queried_by_frame_is_a_state_the_writer_had_in_its_order() {
    let _serial = harness::serial();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    writer.run(
        &[
            "--txns",
            "150",
            "--sleep-ms",
            "3",
            "--checkpoint",
            "PASSIVE,FULL,RESTART,TRUNCATE",
            "--checkpoint-every",
            "20",
            "--fixed-after-restart",
            "3",
            "--seed",
            "11",
        ],
        WRITER_TIMEOUT,
    );
    let history = writer.history();
    daemon.ensure_running("after the writer");
    harness::wait_caught_up(d, NS, &history, CATCH_UP)
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.tail(20)));
    daemon.stop();

    let commits = log(d);
    assert!(
        commits.len() > 20,
        "only {} commits listed for {} writer commits",
        commits.len(),
        history.entries.len()
    );
    let started = Instant::now();
    let mut problems = Vec::new();
    let mut floor = 0;
    let mut seen = std::collections::HashSet::new();
    let mut last = None;
    for (i, c) in commits.iter().enumerate() {
        let f = c.frame_no.to_string();
        // A sample also checks the page structure, in the same process (two statements).
        let sampled = i % 15 == 0 || i + 1 == commits.len();
        let sql = if sampled {
            format!("{HASH_SQL}; PRAGMA integrity_check")
        } else {
            HASH_SQL.to_string()
        };
        let results = query_json(d, &["--frame", &f], &sql);
        assert_eq!(results.len(), if sampled { 2 } else { 1 }, "{results:?}");
        let r = &results[0];
        if r["frame_no"].as_u64() != Some(c.frame_no) || r["time"].as_str() != Some(&c.time) {
            problems.push(format!(
                "--frame {f}: the query says frame {} at {}, the log {} at {}",
                r["frame_no"], r["time"], c.frame_no, c.time
            ));
        }
        let (h, rows) = hash_of(r);
        match seq_at_or_after(&history, h, floor) {
            Ok(seq) => {
                floor = seq;
                seen.insert(seq);
            }
            Err(e) => problems.push(format!("--frame {f}: {e} ({rows} rows)")),
        }
        if sampled {
            let check = &results[1];
            if check["rows"] != serde_json::json!([["ok"]]) {
                problems.push(format!("--frame {f}: integrity_check {}", check["rows"]));
            }
        }
        last = Some((h, rows));
    }
    let elapsed = started.elapsed();
    let want = history.last();
    let (h, rows) = last.unwrap();
    assert_eq!(
        (h, rows),
        (want.hash, want.rows),
        "the last commit is {}; the writer's last is seq {}",
        history.describe(h),
        want.seq
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Each frame reads its own state, not one state for all: the daemon ships every
    // commit the WAL holds, so most of the writer's states are in the history.
    assert!(
        seen.len() * 2 > history.entries.len(),
        "only {} distinct writer states in {} commits",
        seen.len(),
        commits.len()
    );
    eprintln!(
        "{} commits queried by frame in {elapsed:.1?}: {} distinct states of the writer's {}",
        commits.len(),
        seen.len(),
        history.entries.len()
    );

    // By time: the same state as by frame, for a sample of commits whose millisecond
    // no later commit shares.
    let mut by_time = 0;
    for (i, c) in commits.iter().enumerate() {
        let shared = commits
            .get(i + 1)
            .is_some_and(|n| n.timestamp_ms == c.timestamp_ms);
        if shared || !(i % 12 == 0 || i + 1 == commits.len()) {
            continue;
        }
        let f = c.frame_no.to_string();
        let at = query_json(d, &["--at", &c.time], HASH_SQL);
        let frame = query_json(d, &["--frame", &f], HASH_SQL);
        assert_eq!(
            at[0]["frame_no"].as_u64(),
            Some(c.frame_no),
            "--at {} (commit {f}): {}",
            c.time,
            at[0]["frame_no"]
        );
        assert_eq!(
            hash_of(&at[0]),
            hash_of(&frame[0]),
            "--at {} vs --frame {f}",
            c.time
        );
        by_time += 1;
    }
    assert!(by_time >= 5, "only {by_time} commits queried by time");
    eprintln!("{by_time} commits queried by time");
}

/// Queries at the latest commit, repeated while the daemon ships a slow writer's
/// commits, never go backwards, and end at the writer's last state.
#[test]
fn the_latest_commit_is_followed_and_never_goes_backwards() {
    let _serial = harness::serial();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    let run = writer.spawn(&["--txns", "40", "--sleep-ms", "150", "--seed", "5"]);
    let mut run = Some(run);
    let (mut frame, mut count, mut floor) = (0u64, 0u64, 0u64);
    let mut queries = 0;
    let mut moved = 0;
    // The store has nothing until the daemon's first poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log_is_empty(d) {
        assert!(
            Instant::now() < deadline,
            "nothing shipped\n{}",
            daemon.tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    loop {
        let writing = run.as_mut().unwrap().is_running();
        let results = query_json(d, &[], &format!("SELECT count(*) FROM t; {HASH_SQL}"));
        queries += 1;
        let f = results[0]["frame_no"].as_u64().unwrap();
        let n = results[0]["rows"][0][0].as_u64().unwrap();
        assert!(f >= frame, "query {queries}: frame {f} after frame {frame}");
        assert!(
            n >= count,
            "query {queries}: {n} rows after {count} (frame {f})"
        );
        let (h, rows) = hash_of(&results[1]);
        assert_eq!(rows, n, "query {queries}: two statements, two views");
        // The writer records a state just after its commit: a state shipped and read in
        // between is in the record a moment later.
        let mut history = writer.history();
        if history.seqs_of(h).is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            history = writer.history();
        }
        floor = seq_at_or_after(&history, h, floor)
            .unwrap_or_else(|e| panic!("query {queries} (frame {f}): {e}"));
        if f > frame {
            moved += 1;
        }
        (frame, count) = (f, n);
        if !writing {
            break;
        }
    }
    run.take().unwrap().wait(WRITER_TIMEOUT);
    let history = writer.history();
    daemon.ensure_running("after the writer");
    harness::wait_caught_up(d, NS, &history, CATCH_UP)
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.tail(20)));
    let results = query_json(d, &[], &format!("SELECT count(*) FROM t; {HASH_SQL}"));
    let n = results[0]["rows"][0][0].as_u64().unwrap();
    assert!(n >= count, "{n} rows after {count}");
    assert_eq!(
        hash_of(&results[1]),
        (history.last().hash, history.last().rows)
    );
    assert_eq!(n, history.last().rows);
    daemon.stop();
    assert!(
        moved >= 3,
        "the latest view moved only {moved} times in {queries} queries"
    );
    eprintln!("{queries} queries while writing, the view moved {moved} times");
}

fn log_is_empty(dir: &Path) -> bool {
    let out = walvault(dir, &["--json", "log", "--namespace", NS]);
    !out.status.success()
        || serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["commits"].as_array().map(Vec::is_empty))
            .unwrap_or(true)
}

/// What a user meets: errors that say what is wrong, and the output's shape.
#[test]
fn errors_name_the_problem_and_output_has_its_shape() {
    let (dir, writer) = setup();
    let d = dir.path();
    writer.run(&["--txns", "5", "--seed", "3"], WRITER_TIMEOUT);
    stdout_ok(
        &walvault(d, &["replicate", "--once", "--db", "app.db"]),
        "walvault replicate --once",
    );
    let history = writer.history();
    let commits = log(d);
    let last = commits.last().unwrap();

    // The JSON shape.
    let results = query_json(d, &[], "SELECT id, v FROM t ORDER BY id LIMIT 2");
    assert_eq!(results.len(), 1, "{results:?}");
    let r = &results[0];
    assert_eq!(r["namespace"], NS, "{r}");
    assert_eq!(r["columns"], serde_json::json!(["id", "v"]), "{r}");
    assert_eq!(r["rows"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["frame_no"].as_u64(), Some(last.frame_no), "{r}");
    assert_eq!(r["time"].as_str(), Some(last.time.as_str()), "{r}");
    assert!(
        r["statement"].as_str().unwrap().contains("SELECT id, v"),
        "{r}"
    );
    let all = query_json(d, &[], HASH_SQL);
    assert_eq!(hash_of(&all[0]), (history.last().hash, history.last().rows));

    // The text output: rows as the sqlite3 shell prints them, the view on stderr.
    let out = walvault(
        d,
        &["query", "--namespace", NS, "SELECT 1, 'a', NULL, x'0aff'"],
    );
    assert_eq!(stdout_ok(&out, "text query"), "1|a||X'0AFF'\n");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains(&format!("-- namespace app at frame {}", last.frame_no)),
        "{note}"
    );

    // A time before the history names its span.
    let out = walvault(
        d,
        &[
            "query",
            "--namespace",
            NS,
            "--at",
            "2001-01-01T00:00:00Z",
            "SELECT 1",
        ],
    );
    let err = fails_with(&out, "spans", "--at before the history");
    assert!(err.contains(&last.time), "the span's end: {err}");

    // A namespace the store does not have.
    let out = walvault(d, &["query", "--namespace", "nope", "SELECT 1"]);
    fails_with(&out, "nope", "a missing namespace");

    // A store directory that does not exist: an error, and not created.
    let out = harness::walvault(
        d,
        &[],
        &["--store", "nostore", "query", "--namespace", NS, "SELECT 1"],
        CALL,
    );
    fails_with(&out, "does not exist", "a missing store");
    assert!(!d.join("nostore").exists(), "the query created the store");

    // Writes are refused; the store and the database are untouched.
    let out = walvault(
        d,
        &[
            "query",
            "--namespace",
            NS,
            "INSERT INTO t(v, pad) VALUES ('x', x'00')",
        ],
    );
    fails_with(&out, "readonly", "an INSERT");
    let out = walvault(d, &["query", "--namespace", NS, "CREATE TABLE u(x)"]);
    fails_with(&out, "readonly", "a CREATE TABLE");
    assert_eq!(log(d).len(), commits.len());

    // Bad SQL names the syntax error.
    let out = walvault(d, &["query", "--namespace", NS, "SELEC id FROM t"]);
    let err = fails_with(&out, "syntax error", "bad SQL");
    assert!(err.contains("SELEC"), "{err}");
    let out = walvault(d, &["query", "--namespace", NS, "SELECT nope FROM t"]);
    fails_with(&out, "no such column", "an unknown column");
}

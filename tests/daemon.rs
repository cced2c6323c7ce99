//! The long-running daemon tested the way users run it: `walvault replicate` as a
//! subprocess with relative paths (stopped with SIGINT, sometimes SIGKILLed and
//! restarted), beside a real writer process (`tests/support/writer.py`: Python's stdlib
//! `sqlite3`, a new connection per transaction, SQLite's default autocheckpoint on) that
//! records the content hash of every state it commits. Afterwards the latest restore
//! through the binary must equal the writer's last state, and every commit frame the
//! store holds must restore to a database that passes `integrity_check` and that the
//! writer really had, in the writer's order (see `daemon/harness.rs`).
//!
//! Each scenario runs well under a minute, one at a time (a serial guard: they measure
//! lags on a 2-core machine); each prints `[name] took ...`, pass or fail. Knobs:
//!
//! * `WALVAULT_DAEMON_SCALE=N` multiplies the scenarios' transaction counts;
//! * `WALVAULT_DAEMON_BIN=/path/to/walvault` runs the scenarios against another build
//!   of the binary (a branch with a fix); the checker still uses this build's library,
//!   so this works only while the store format is the same (otherwise the checker says
//!   the manifest is corrupt). To test a branch that changed the format, check these
//!   files out into it instead (`git checkout harness -- tests/daemon.rs tests/daemon
//!   tests/support/writer.py`): they use only the public API;
//! * `WALVAULT_DAEMON_OUTAGE_SECS` (default 12) is the S3 outage's length;
//! * the soak (`soak_cycles_every_behaviour_with_daemon_kills`) runs only when
//!   `WALVAULT_SOAK_SECS` is set, checks at most `WALVAULT_SOAK_RESTORES` (3000) commit
//!   frames, and with `WALVAULT_SOAK_EMPTY_STORE=1` also empties the store now and then:
//!
//! ```sh
//! WALVAULT_SOAK_SECS=600 cargo test --test daemon soak -- --nocapture
//! ```
//!
//! Scenarios whose subject is not the WAL's life (the emptied store, the S3 outage) keep
//! an idle application connection open, so they do not depend on the replicator
//! keeping SQLite's locks (scenario 1's subject).

#![cfg(target_os = "linux")]

#[path = "daemon/harness.rs"]
mod harness;
#[path = "daemon/proxy.rs"]
mod proxy;
mod s3;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{
    check_history, check_history_in, content_hash, scale, wait_caught_up, wait_caught_up_in,
    Checked, Daemon, History, Reader, StoreArg, Writer,
};

const NS: &str = "app";
/// Continuous mode, relative paths, a short interval. The database is named `./app.db`
/// and the store `./store` (see [`store`]) rather than `app.db` and `store`: bare names
/// are their own test (`bare_relative_paths_replicate`), so that one bug does not hide
/// the others.
const REPLICATE: &[&str] = &["replicate", "--db", "./app.db", "--interval", "200ms"];
/// The store as the scenarios name it: relative, `./store`.
fn store() -> StoreArg {
    StoreArg::local("./store")
}
const WRITER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the daemon may take to ship the writer's last commit once it stopped.
const CATCH_UP: Duration = Duration::from_secs(30);

/// A temp directory with `app.db` (WAL mode, table `t`) and the writer's record.
fn setup() -> (tempfile::TempDir, Writer) {
    let dir = tempfile::tempdir().unwrap();
    let writer = Writer::new(dir.path(), "app.db", "app.record");
    writer.init();
    (dir, writer)
}

/// Waits for the daemon to ship the writer's last commit, stops it with SIGINT, and runs
/// every check; prints the figures.
fn finish(
    name: &str,
    dir: &Path,
    daemon: &mut Daemon,
    writer: &Writer,
    started: Instant,
    max_restores: usize,
) -> Checked {
    let reader = Reader::Local(dir.join("store"));
    let store = StoreArg::local("store");
    finish_in(
        name,
        dir,
        (&reader, &store),
        daemon,
        writer,
        started,
        max_restores,
    )
}

/// [`finish`] for any store: the library reads it through `reader`, the binary through
/// `store`.
fn finish_in(
    name: &str,
    dir: &Path,
    (reader, store): (&Reader, &StoreArg),
    daemon: &mut Daemon,
    writer: &Writer,
    started: Instant,
    max_restores: usize,
) -> Checked {
    let history = writer.history();
    let caught_up = wait_caught_up_in(dir, reader, NS, &history, CATCH_UP);
    let caught = match &caught_up {
        Ok(lag) => format!("caught up {lag:?} after the writer's last commit"),
        Err(e) => format!("NEVER CAUGHT UP: {e}"),
    };
    if let Err(e) = daemon.try_stop() {
        panic!("{caught}\n{e}");
    }
    let tail = || format!("{caught}\n{}", daemon.tail(25));
    let checked = check_history_in(dir, reader, store, NS, &history, max_restores, &tail);
    if let Err(e) = caught_up {
        panic!("{e}\n{}", daemon.tail(25));
    }
    eprintln!(
        "{name}: ok in {:.1?}: {} commits written, {} restorable commit frames in {} segments \
         ({} distinct writer states), {} restores checked, {} snapshots, {} daemon runs; {caught}",
        started.elapsed(),
        checked.written,
        checked.commits,
        checked.segments,
        checked.states_seen,
        checked.restores_checked,
        daemon.snapshots(),
        daemon.runs(),
    );
    checked
}

fn txns(n: u64) -> String {
    scale(n).to_string()
}

/// `walvault --store store replicate --db app.db`, exactly as a user types it in the
/// database's directory: bare relative names (no directory part) for the database and
/// for a store directory that does not exist yet, with `--once` and in continuous mode.
#[test]
fn bare_relative_paths_replicate() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    writer.run(&["--txns", "5"], WRITER_TIMEOUT);
    let once = StoreArg::local("store").run(
        d,
        &["replicate", "--once", "--db", "app.db"],
        Duration::from_secs(60),
    );
    assert!(
        once.status.success(),
        "`walvault --store store replicate --once --db app.db` failed: {}",
        String::from_utf8_lossy(&once.stderr).trim()
    );
    let mut daemon = Daemon::start(
        d,
        &StoreArg::local("store"),
        &["replicate", "--db", "app.db", "--interval", "200ms"],
    );
    writer.run(&["--txns", "20", "--sleep-ms", "2"], WRITER_TIMEOUT);
    finish("bare path", d, &mut daemon, &writer, started, 2000);
}

/// Scenario 1: the case that lost data. The application opens a connection per
/// transaction and closes it after the commit; when it closes the last connection,
/// SQLite checkpoints and deletes the WAL, unless the daemon's read transaction (and
/// its locks) keep it from doing so.
#[test]
fn connection_per_transaction_writer_with_the_daemon_running_throughout() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    writer.run(
        &["--txns", &txns(250), "--sleep-ms", "4", "--seed", "1"],
        WRITER_TIMEOUT,
    );
    daemon.ensure_running("after the writer");
    let checked = finish("scenario 1", d, &mut daemon, &writer, started, 2000);
    assert_eq!(
        daemon.snapshots(),
        1,
        "only the first poll should ship a snapshot: the held read transaction keeps the WAL \
         from being reset behind the daemon\n{}",
        daemon.tail(25)
    );
    assert!(checked.commits > 1);
}

/// Scenario 2: the writer runs checkpoints of every mode itself (RESTART and TRUNCATE
/// report busy while the daemon holds its read transaction: expected, recorded), then
/// fixed-size transactions after RESTART checkpoints, so the WAL is rewritten at an
/// unchanged size.
#[test]
fn writer_checkpoints_of_every_mode_and_fixed_size_rewrites() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    writer.run(
        &[
            "--txns",
            &txns(160),
            "--checkpoint",
            "PASSIVE,FULL,RESTART,TRUNCATE",
            "--checkpoint-every",
            "5",
            "--fixed-after-restart",
            "6",
            "--sleep-ms",
            "3",
            "--seed",
            "2",
        ],
        WRITER_TIMEOUT,
    );
    writer.run(
        &[
            "--txns",
            &txns(60),
            "--fixed",
            "--checkpoint",
            "RESTART",
            "--checkpoint-every",
            "4",
            "--sleep-ms",
            "3",
        ],
        WRITER_TIMEOUT,
    );
    daemon.ensure_running("after the writers");
    let history = writer.history();
    for mode in ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] {
        let (runs, busy) = history.checkpoints(mode);
        eprintln!("scenario 2: {mode} checkpoints: {runs} ({busy} busy)");
        assert!(runs > 0, "the writer never ran a {mode} checkpoint");
    }
    finish("scenario 2", d, &mut daemon, &writer, started, 2000);
}

/// Scenario 2b, Litestream #1037/#1083: while the daemon is down, the application
/// RESTARTs the WAL (nobody reads it then, so the checkpoint succeeds) and rewrites it
/// with fixed-size transactions to exactly the size it had when the daemon stopped.
/// Size and mtime say nothing changed; only the salts and checksums do. The restarted
/// daemon must notice (and ship a snapshot), losing nothing.
#[test]
fn a_wal_rewritten_at_an_unchanged_size_while_the_daemon_was_down() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let app = app_connection(d); // the WAL outlives the writer's connections
    let wal = d.join("app.db-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let wal_salts = || {
        std::fs::read(&wal)
            .map(|b| b[16..24].to_vec())
            .unwrap_or_default()
    };
    let settle = || std::thread::sleep(Duration::from_millis(1000)); // > 2 polls
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    writer.run(&["--txns", "20", "--seed", "30"], WRITER_TIMEOUT);
    // Fixed-size rows in place, then an empty WAL (nobody reads: the daemon is down).
    settle();
    daemon.stop();
    writer.run(
        &[
            "--fixed",
            "--txns",
            "2",
            "--checkpoint",
            "TRUNCATE",
            "--checkpoint-every",
            "2",
        ],
        WRITER_TIMEOUT,
    );
    assert_eq!(
        wal_len(),
        0,
        "the TRUNCATE checkpoint did not empty the WAL"
    );
    writer.run(&["--fixed", "--txns", "10"], WRITER_TIMEOUT);
    daemon.restart();
    settle();
    daemon.stop();
    let (len_at_stop, salts_at_stop) = (wal_len(), wal_salts());
    // Daemon down: the application RESTARTs the WAL, and the same ten fixed-size
    // commits overwrite it from its start (SQLite keeps the file's length).
    let busy: i64 = app
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "the RESTART checkpoint was busy");
    writer.run(&["--fixed", "--txns", "10"], WRITER_TIMEOUT);
    assert_eq!(
        wal_len(),
        len_at_stop,
        "the WAL was not rewritten at the size it had when the daemon stopped: the test \
         proves nothing"
    );
    assert_ne!(wal_salts(), salts_at_stop, "the WAL was not restarted");
    daemon.restart();
    let checked = finish("scenario 2b", d, &mut daemon, &writer, started, 2000);
    assert!(checked.commits > 2);
    assert!(
        daemon.last_stdout().contains("(snapshot"),
        "the restarted daemon did not ship a snapshot of a WAL restarted behind it\n{}",
        daemon.tail(25)
    );
}

/// Scenario 3: writers exit and new writer processes start, and the daemon is SIGKILLed
/// in the middle of a writer's run and restarted (relative paths again).
#[test]
fn writers_come_and_go_and_the_daemon_is_killed_and_restarted() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    for round in 0..4u64 {
        let seed = (10 + round).to_string();
        let checkpoint = ["PASSIVE", "RESTART", "TRUNCATE", "FULL"][round as usize];
        let run = writer.spawn(&[
            "--txns",
            &txns(60),
            "--sleep-ms",
            "8",
            "--seed",
            &seed,
            "--checkpoint",
            checkpoint,
            "--checkpoint-every",
            "9",
        ]);
        std::thread::sleep(Duration::from_millis(250 + 100 * round));
        daemon.kill();
        std::thread::sleep(Duration::from_millis(100));
        daemon.restart();
        run.wait(WRITER_TIMEOUT);
        daemon.ensure_running(&format!("after writer round {round}"));
    }
    finish("scenario 3", d, &mut daemon, &writer, started, 2000);
}

/// Cron-style: `replicate --once` between writer processes, each writer ending with a
/// checkpoint of another mode (and its last close deleting the WAL), so most runs find
/// the WAL reset and must ship a snapshot. Every restorable state must be one the writer
/// had, and the latest the writer's last.
#[test]
fn replicate_once_between_writer_runs() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut outputs = Vec::new();
    for (round, mode) in ["PASSIVE", "FULL", "RESTART", "TRUNCATE", "PASSIVE"]
        .iter()
        .enumerate()
    {
        let seed = (20 + round).to_string();
        writer.run(
            &[
                "--txns",
                &txns(30),
                "--seed",
                &seed,
                "--checkpoint",
                mode,
                "--checkpoint-every",
                "30",
            ],
            WRITER_TIMEOUT,
        );
        let out = store().run(
            d,
            &["replicate", "--once", "--db", "./app.db"],
            Duration::from_secs(60),
        );
        let text = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(out.status.success(), "round {round}: {text}");
        outputs.push(text);
    }
    let history = writer.history();
    let context = || outputs.join("\n");
    let checked = check_history(d, NS, &history, 2000, &context);
    eprintln!(
        "replicate --once: ok in {:.1?}: {} commits written, {} restorable ({} states), {} snapshots",
        started.elapsed(),
        checked.written,
        checked.commits,
        checked.states_seen,
        outputs.iter().filter(|o| o.contains("(snapshot")).count()
    );
}

/// The checker itself: a record edited so that a restorable state is one the writer
/// "never had", or two states swapped in time, must make `check_history` fail and say so.
#[test]
fn the_checker_catches_unknown_and_reordered_states() {
    let _serial = harness::serial();
    let (dir, writer) = setup();
    let d = dir.path();
    let mut round_ends = Vec::new();
    for round in 0..2 {
        writer.run(
            &["--txns", "5", "--seed", &round.to_string()],
            WRITER_TIMEOUT,
        );
        let out = store().run(
            d,
            &["replicate", "--once", "--db", "./app.db"],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{out:?}");
        round_ends.push(writer.history().last());
    }
    let record = d.join("app.record");
    let original = std::fs::read_to_string(&record).unwrap();
    check_history(d, NS, &writer.history(), 100, &String::new); // the truth passes
    let edit = |f: &dyn Fn(&str) -> String| {
        let text: String = original.lines().map(|l| f(l) + "\n").collect();
        std::fs::write(&record, text).unwrap();
        let history = writer.history();
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_history(d, NS, &history, 100, &String::new)
        }));
        let payload = failed.expect_err("the checker accepted an edited record");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    };
    let hex = |e: &harness::Entry| format!("{:016x}", e.hash);
    let (a, b) = (round_ends[0], round_ends[1]);
    let unknown = edit(&|l: &str| l.replace(&hex(&a), "0123456789abcdef"));
    assert!(unknown.contains("never had"), "{unknown}");
    let swapped = edit(&|l: &str| {
        if l.starts_with(&format!("{} ", a.seq)) {
            l.replace(&hex(&a), &hex(&b))
        } else if l.starts_with(&format!("{} ", b.seq)) {
            l.replace(&hex(&b), &hex(&a))
        } else {
            l.to_string()
        }
    });
    assert!(swapped.contains("goes backwards"), "{swapped}");
    std::fs::write(&record, original).unwrap();
}

/// DESIGN.md: "A commit is durable within a bounded lag (default 1 s)". The daemon's last
/// commit of a burst, and a lone commit after an idle minute-fraction, must both be
/// restorable within `LAG_BOUND` (the design's 1 s plus slack for a loaded 2-core VM).
#[test]
fn a_commit_is_restorable_within_the_bounded_lag() {
    let _serial = harness::serial();
    const LAG_BOUND: Duration = Duration::from_secs(3);
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    writer.run(&["--txns", "1"], WRITER_TIMEOUT);
    // The first snapshot may take a moment; the lag is measured after it.
    if let Err(e) = wait_caught_up(d, NS, &writer.history(), CATCH_UP) {
        panic!("the first commit: {e}\n{}", daemon.tail(25));
    }
    let mut lags = Vec::new();
    for (what, args) in [
        ("a burst of 30", &["--txns", "30", "--sleep-ms", "10"][..]),
        ("one commit after 2 s idle", &["--txns", "1"][..]),
    ] {
        if what.contains("idle") {
            std::thread::sleep(Duration::from_secs(2));
        }
        writer.run(args, WRITER_TIMEOUT);
        daemon.ensure_running(what);
        match wait_caught_up(d, NS, &writer.history(), CATCH_UP) {
            Ok(lag) => lags.push((what, lag)),
            Err(e) => panic!("{what}: {e}\n{}", daemon.tail(25)),
        }
    }
    daemon.stop();
    eprintln!("lag: {lags:?}");
    for (what, lag) in lags {
        assert!(
            lag <= LAG_BOUND,
            "{what}: the last commit became restorable {lag:?} after it committed (bound \
             {LAG_BOUND:?}; DESIGN.md: 1 s)\n{}",
            daemon.tail(10)
        );
    }
}

/// An idle connection of the application to `dir/app.db`, kept open as a server does:
/// the writer's closes then never delete the WAL, so a scenario holding one does not
/// depend on the replicator keeping SQLite's locks (scenario 1's bug) and tests its own
/// subject alone.
fn app_connection(dir: &Path) -> rusqlite::Connection {
    let app = rusqlite::Connection::open(dir.join("app.db")).unwrap();
    app.query_row("SELECT count(*) FROM t", [], |_| Ok(()))
        .unwrap();
    app
}

/// Removes everything inside `store` (`rm -rf store/*`). The running daemon may add a
/// segment to a directory being removed (it stores ten a second): that directory is
/// removed again, as a person would run `rm -rf` again.
fn empty_dir(store: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(store).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let mut tries = 0;
            while let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() == std::io::ErrorKind::NotFound && !path.exists() {
                    break;
                }
                tries += 1;
                let racing = matches!(
                    e.kind(),
                    std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::NotFound
                );
                assert!(racing && tries < 50, "removing {}: {e}", path.display());
            }
        } else {
            std::fs::remove_file(&path).unwrap();
        }
        n += 1;
    }
    n
}

/// Scenario 4: the store is emptied under a running writer and daemon. The daemon must
/// keep running and ship a snapshot; afterwards the latest restore equals the writer and
/// no restorable state is one the writer never had.
#[test]
fn emptying_the_store_under_a_running_daemon_ships_a_snapshot() {
    let _serial = harness::serial();
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let _app = app_connection(d); // tests the emptied store alone
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    writer.run(&["--txns", &txns(60), "--sleep-ms", "3"], WRITER_TIMEOUT);
    if let Err(e) = wait_caught_up(d, NS, &writer.history(), CATCH_UP) {
        panic!("before emptying the store: {e}\n{}", daemon.tail(25));
    }
    let before = daemon.snapshots();
    let run = writer.spawn(&["--txns", &txns(150), "--sleep-ms", "5", "--seed", "4"]);
    std::thread::sleep(Duration::from_millis(400));
    let removed = empty_dir(&d.join("store"));
    eprintln!("scenario 4: removed {removed} entries from store/ under the running daemon");
    run.wait(WRITER_TIMEOUT);
    daemon.ensure_running("after the store was emptied");
    let history = writer.history();
    let caught_up = wait_caught_up(d, NS, &history, CATCH_UP);
    daemon.ensure_running("after the store was emptied");
    assert!(
        daemon.snapshots() > before,
        "no snapshot was shipped after the store was emptied ({}).\n{}",
        match &caught_up {
            Ok(lag) => format!("yet the store caught up in {lag:?}"),
            Err(e) => e.clone(),
        },
        daemon.tail(25)
    );
    finish("scenario 4", d, &mut daemon, &writer, started, 2000);
}

/// Scenario 5 over any store: two copies of one database alternate into one namespace
/// (a failover to c2 and a failback to c1), each with `replicate --once`. Afterwards
/// `restore` must equal c1's current state exactly, or the last `replicate` must have
/// failed with a clear one-line error (and then a restore gives a state that existed):
/// never a corrupt database or one that never existed.
///
/// With `app_connections`, the application on each host keeps an idle connection open
/// (as a server does), so the writer's commits stay in the WAL between runs; without, its
/// last connection's close checkpoints and deletes the WAL each time.
fn failover_and_failback(dir: &Path, store: &StoreArg, app_connections: bool) {
    let started = Instant::now();
    let d = dir;
    let original = Writer::new(d, "app.db", "app.record");
    original.init();
    original.run(
        &["--txns", "40", "--rows", "4", "--seed", "5"],
        WRITER_TIMEOUT,
    );
    assert!(
        !d.join("app.db-wal").exists(),
        "the writer left a WAL behind"
    );
    for c in ["c1", "c2"] {
        std::fs::create_dir_all(d.join(c)).unwrap();
        std::fs::copy(d.join("app.db"), d.join(c).join("app.db")).unwrap();
        std::fs::copy(d.join("app.record"), d.join(format!("{c}.record"))).unwrap();
    }
    let _app: Vec<rusqlite::Connection> = if app_connections {
        ["c1", "c2"]
            .iter()
            .map(|c| {
                let conn = rusqlite::Connection::open(d.join(c).join("app.db")).unwrap();
                conn.query_row("SELECT count(*) FROM t", [], |_| Ok(()))
                    .unwrap();
                conn
            })
            .collect()
    } else {
        Vec::new()
    };
    let c1 = Writer::new(d, "c1/app.db", "c1.record");
    let c2 = Writer::new(d, "c2/app.db", "c2.record");
    let timeout = Duration::from_secs(120);
    let once = |db: &str| {
        store.run(
            d,
            &["replicate", "--once", "--db", db, "--namespace", "shared"],
            timeout,
        )
    };
    let say = |o: &std::process::Output| {
        format!(
            "{} stdout: {} stderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    };
    let first = once("c1/app.db");
    assert!(first.status.success(), "c1, first: {}", say(&first));
    c2.run(
        &["--txns", "1", "--rows", "1", "--seed", "6"],
        WRITER_TIMEOUT,
    );
    let failover = once("c2/app.db");
    assert!(
        failover.status.success(),
        "c2 (failover): {}",
        say(&failover)
    );
    c1.run(
        &["--txns", "1", "--rows", "1", "--seed", "7"],
        WRITER_TIMEOUT,
    );
    let failback = once("c1/app.db");
    eprintln!(
        "scenario 5: failback `replicate --once --db c1/app.db`: {}",
        say(&failback)
    );

    let c1_last = c1.history().last();
    let c2_last = c2.history().last();
    let restored = store.run(
        d,
        &["restore", "--namespace", "shared", "--output", "shared.db"],
        timeout,
    );
    let outcome = if restored.status.success() {
        walvault::integrity_check(&d.join("shared.db"))
            .map_err(|e| e.to_string())
            .and_then(|()| content_hash(&d.join("shared.db")))
    } else {
        Err(format!("restore failed: {}", say(&restored)))
    };
    if failback.status.success() {
        match outcome {
            Ok((h, _)) if h == c1_last.hash => {}
            Ok((h, rows)) => panic!(
                "the failback exited 0 but the namespace restores to hash {h:016x} ({rows} rows): \
                 c1 is {:016x} ({} rows), c2 was {:016x}{}",
                c1_last.hash,
                c1_last.rows,
                c2_last.hash,
                if h == c2_last.hash {
                    " (c2's state: c1's commit is lost)"
                } else {
                    " (never existed)"
                }
            ),
            Err(e) => panic!(
                "the failback exited 0 but the namespace does not restore to c1's state: {e}"
            ),
        }
    } else {
        let stderr = String::from_utf8_lossy(&failback.stderr);
        assert!(
            stderr.starts_with("walvault: error:") && stderr.trim().lines().count() == 1,
            "the failback failed without a clear one-line error: {}",
            say(&failback)
        );
        // The store must still hold only states that existed.
        let known =
            |h: u64| !c1.history().seqs_of(h).is_empty() || !c2.history().seqs_of(h).is_empty();
        match outcome {
            Ok((h, _)) => assert!(
                known(h),
                "after a refused failback the namespace restores to hash {h:016x}, a state \
                 neither copy ever had"
            ),
            Err(e) => panic!("after a refused failback the namespace does not restore: {e}"),
        }
    }
    eprintln!("scenario 5: ok in {:.1?}", started.elapsed());
}

/// Scenario 5 on the local store, the applications keeping connections open.
#[test]
fn failover_and_failback_between_two_copies_local_store() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    failover_and_failback(dir.path(), &store(), true);
}

/// Scenario 5 on the local store, each writer's close deleting the WAL.
#[test]
fn failover_and_failback_between_two_copies_local_store_wal_deleted() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    failover_and_failback(dir.path(), &store(), false);
}

/// The binary's `--store` and environment for the test S3 server at `endpoint`.
fn s3_store(endpoint: &str) -> StoreArg {
    StoreArg {
        url: format!("s3://{}/prefix", s3::BUCKET),
        envs: [
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    }
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Scenario 6: the daemon replicating into S3 (the in-process server, reached through a
/// proxy on 127.0.0.1) while S3 goes away for `WALVAULT_DAEMON_OUTAGE_SECS` (default 12)
/// in the middle of a writer's run, every open connection cut. The daemon must ride the
/// outage out (keep running, no commit lost) and catch up once S3 is back. The outage
/// must outlast the log's 10 s seal age, so that an upload is attempted during it.
#[test]
fn an_s3_outage_under_a_running_daemon_is_ridden_out() {
    let _serial = harness::serial();
    let outage = Duration::from_secs(
        std::env::var("WALVAULT_DAEMON_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(12),
    );
    let started = Instant::now();
    let (dir, writer) = setup();
    let d = dir.path();
    let rt = multi_thread_runtime();
    let (server, proxy) = rt.block_on(async {
        let server = s3::S3Server::start(&d.join("s3"));
        let proxy = proxy::Proxy::start(&server.endpoint);
        (server, proxy)
    });
    let store = s3_store(&proxy.endpoint);
    let reader = Reader::Object(server.client(), "prefix".to_string());
    // Tests the outage alone (see `app_connection`).
    let app = app_connection(d);
    let mut daemon = Daemon::start(d, &store, REPLICATE);
    let run = writer.spawn(&["--txns", &txns(120), "--sleep-ms", "10", "--seed", "8"]);
    std::thread::sleep(Duration::from_millis(1000));
    proxy.set_down(true);
    eprintln!("scenario 6: S3 down for {outage:?}");
    std::thread::sleep(outage);
    proxy.set_down(false);
    daemon.ensure_running("right after the outage");
    run.wait(WRITER_TIMEOUT);
    daemon.ensure_running("after the outage and the writer");
    finish_in(
        "scenario 6",
        d,
        (&reader, &store),
        &mut daemon,
        &writer,
        started,
        2000,
    );
    drop(app);
    drop(proxy);
    drop(server);
}

/// Scenario 5 on S3 (the in-process `s3s-fs` server on 127.0.0.1).
#[test]
fn failover_and_failback_between_two_copies_s3_store() {
    let _serial = harness::serial();
    let dir = tempfile::tempdir().unwrap();
    let rt = multi_thread_runtime();
    let server = rt.block_on(async { s3::S3Server::start(&dir.path().join("s3")) });
    let store = s3_store(&server.endpoint);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    failover_and_failback(&work, &store, true);
    drop(server);
}

/// Reads `History` for the soak's phase log.
fn last_seq(h: &History) -> u64 {
    h.last().seq
}

/// The soak: for `WALVAULT_SOAK_SECS` seconds, writer processes cycle through every
/// behaviour above (plain transactions, checkpoints of each mode, fixed-size rewrites
/// after RESTART, pauses), the daemon is SIGKILLed and restarted every few phases, and
/// the lag to ship each phase's last commit is measured. Then every check, on a sample
/// of at most `WALVAULT_SOAK_RESTORES` (default 3000) commit frames. With
/// `WALVAULT_SOAK_EMPTY_STORE=1` the store is also emptied under the daemon every fourth
/// phase (scenario 4's behaviour).
#[test]
fn soak_cycles_every_behaviour_with_daemon_kills() {
    let _serial = harness::serial();
    let Some(secs) = std::env::var("WALVAULT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        eprintln!("soak skipped: set WALVAULT_SOAK_SECS=600 to run it");
        return;
    };
    let max_restores = std::env::var("WALVAULT_SOAK_RESTORES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let (dir, writer) = setup();
    let d = dir.path();
    let mut daemon = Daemon::start(d, &store(), REPLICATE);
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ secs;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let empty_store = std::env::var_os("WALVAULT_SOAK_EMPTY_STORE").is_some();
    let mut emptied = 0;
    let mut phases = 0u64;
    let mut max_lag = Duration::ZERO;
    let mut lags = Vec::new();
    while Instant::now() < deadline {
        phases += 1;
        let seed = (next() % 1_000_000).to_string();
        let n = (20 + next() % 100).to_string();
        let sleep = (next() % 10).to_string();
        let mode = [
            "PASSIVE",
            "FULL",
            "RESTART",
            "TRUNCATE",
            "PASSIVE,FULL,RESTART,TRUNCATE",
        ][(next() % 5) as usize];
        let every = (1 + next() % 12).to_string();
        let mut args: Vec<&str> = vec!["--txns", &n, "--sleep-ms", &sleep, "--seed", &seed];
        match next() % 4 {
            0 => {}
            1 => args.extend(["--checkpoint", mode, "--checkpoint-every", &every]),
            2 => args.extend([
                "--checkpoint",
                "RESTART",
                "--checkpoint-every",
                &every,
                "--fixed-after-restart",
                "8",
            ]),
            _ => args.extend([
                "--fixed",
                "--checkpoint",
                mode,
                "--checkpoint-every",
                &every,
            ]),
        }
        let run = writer.spawn(&args);
        if phases.is_multiple_of(4) {
            std::thread::sleep(Duration::from_millis(next() % 800));
            daemon.kill();
            std::thread::sleep(Duration::from_millis(next() % 300));
            daemon.restart();
        } else if empty_store && phases % 4 == 2 {
            std::thread::sleep(Duration::from_millis(next() % 800));
            empty_dir(&d.join("store"));
            emptied += 1;
        }
        run.wait(WRITER_TIMEOUT);
        daemon.ensure_running(&format!("soak phase {phases}"));
        let history = writer.history();
        match wait_caught_up(d, NS, &history, Duration::from_secs(60)) {
            Ok(lag) => {
                max_lag = max_lag.max(lag);
                lags.push(lag);
            }
            Err(e) => panic!(
                "soak phase {phases} (writer {args:?}, up to seq {}): {e}\n{}",
                last_seq(&history),
                daemon.tail(25)
            ),
        }
        if next().is_multiple_of(3) {
            std::thread::sleep(Duration::from_millis(next() % 1500)); // idle
        }
    }
    let checked = finish("soak", d, &mut daemon, &writer, started, max_restores);
    lags.sort();
    let history = writer.history();
    let (mut ckpts, mut busy) = (0, 0);
    for mode in ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] {
        let (r, b) = history.checkpoints(mode);
        ckpts += r;
        busy += b;
    }
    eprintln!(
        "soak figures after {:.0?}: {phases} writer phases, {} commits written, {} commit frames \
         restorable ({} distinct writer states), {} restores checked, {} snapshots shipped, \
         {} daemon runs ({} SIGKILLs), store emptied {emptied} times, {ckpts} writer checkpoints ({busy} busy), lag to ship \
         a phase's last commit: median {:?}, max {max_lag:?}",
        started.elapsed(),
        checked.written,
        checked.commits,
        checked.states_seen,
        checked.restores_checked,
        daemon.snapshots(),
        daemon.runs(),
        daemon.kills,
        lags.get(lags.len() / 2).copied().unwrap_or_default(),
    );
}

//! The harness behind `tests/daemon.rs`: the `walvault` binary run as users run it (a
//! subprocess, relative paths, stopped with SIGINT or killed with SIGKILL), a real writer
//! process beside it (`tests/support/writer.py`, Python's stdlib `sqlite3`), and a checker
//! that compares every state the store can restore with the states the writer recorded.
//!
//! * [`Daemon`] spawns, stops, kills and restarts `walvault ... replicate`; every run's
//!   stdout and stderr go to files under `logs/`, quoted in failure messages.
//! * [`Writer`] runs `writer.py` (one process per call, or in the background).
//! * [`History`] is the writer's record: `<seq> <hash> <rows>` per commit.
//! * [`check_history`] restores the latest state through the binary and every commit
//!   frame of the namespace through the library, and checks each one.
//!
//! Every wait is bounded: a failure can never hang the suite.

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio_stream::StreamExt;
use walvault::{LocalStorage, NamespaceName, RestoreOptions, Storage};

/// The `walvault` binary under test: this build's, or `WALVAULT_DAEMON_BIN` (to run the
/// scenarios against another build, e.g. a branch with a fix; the checker still reads
/// the store with this build's library).
pub fn bin() -> PathBuf {
    match std::env::var_os("WALVAULT_DAEMON_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_walvault")),
    }
}
pub const PYTHON: &str = "/usr/bin/python3";

/// `tests/support/writer.py`.
pub fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/writer.py")
}

/// A test-wide scale factor from `WALVAULT_DAEMON_SCALE` (default 1): transaction counts
/// are multiplied by it.
pub fn scale(n: u64) -> u64 {
    let factor = std::env::var("WALVAULT_DAEMON_SCALE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    n * factor
}

// ---------------------------------------------------------------------------------------
// Content hash, identical to writer.py's.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64, continued from `h`.
pub fn fnv1a64(data: &[u8], mut h: u64) -> u64 {
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// The content hash and row count of the database at `db` (opened read-only): FNV-1a 64
/// over `<id>|<v>|<length(pad)>\n` for every row of `SELECT id, v, length(pad) FROM t
/// ORDER BY id`, exactly as `writer.py` computes it.
pub fn content_hash(db: &Path) -> Result<(u64, u64), String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(|e| format!("opening: {e}"))?;
    let mut stmt = conn
        .prepare("SELECT id, v, length(pad) FROM t ORDER BY id")
        .map_err(|e| format!("preparing the hash query: {e}"))?;
    let mut rows = stmt.query([]).map_err(|e| format!("querying: {e}"))?;
    let (mut h, mut n) = (FNV_OFFSET, 0);
    while let Some(row) = rows.next().map_err(|e| format!("reading a row: {e}"))? {
        let id: i64 = row.get(0).map_err(|e| format!("id: {e}"))?;
        let v: String = row.get(1).map_err(|e| format!("v: {e}"))?;
        let pad: i64 = row.get(2).map_err(|e| format!("length(pad): {e}"))?;
        h = fnv1a64(format!("{id}|{v}|{pad}\n").as_bytes(), h);
        n += 1;
    }
    Ok((h, n))
}

// ---------------------------------------------------------------------------------------
// The writer's record.

/// One commit the writer made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub hash: u64,
    pub rows: u64,
}

/// Every state the writer had, in its order.
#[derive(Debug, Default)]
pub struct History {
    pub entries: Vec<Entry>,
    /// Notes (`#` lines): checkpoint results.
    pub notes: Vec<String>,
    by_hash: HashMap<u64, Vec<u64>>,
}

impl History {
    pub fn read(path: &Path) -> History {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading the writer's record {}: {e}", path.display()));
        let mut h = History::default();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                h.notes.push(line.to_string());
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let parsed = match parts.as_slice() {
                [seq, hash, rows] => (|| {
                    Some(Entry {
                        seq: seq.parse().ok()?,
                        hash: u64::from_str_radix(hash, 16).ok()?,
                        rows: rows.parse().ok()?,
                    })
                })(),
                [] => continue,
                _ => None,
            };
            let entry = parsed.unwrap_or_else(|| {
                panic!(
                    "{} line {}: malformed record line {line:?}",
                    path.display(),
                    i + 1
                )
            });
            h.by_hash.entry(entry.hash).or_default().push(entry.seq);
            h.entries.push(entry);
        }
        h
    }

    pub fn last(&self) -> Entry {
        *self.entries.last().expect("the writer recorded nothing")
    }

    /// The sequence numbers at which the writer had the state `hash`.
    pub fn seqs_of(&self, hash: u64) -> &[u64] {
        self.by_hash.get(&hash).map_or(&[], Vec::as_slice)
    }

    /// How many checkpoints of `mode` the writer ran, and how many reported busy.
    pub fn checkpoints(&self, mode: &str) -> (usize, usize) {
        let tag = format!("# checkpoint {mode} ");
        let runs: Vec<&String> = self.notes.iter().filter(|n| n.starts_with(&tag)).collect();
        let busy = runs.iter().filter(|n| !n.contains("busy=0")).count();
        (runs.len(), busy)
    }

    /// Describes `hash` for a failure message.
    pub fn describe(&self, hash: u64) -> String {
        match self.seqs_of(hash) {
            [] => format!("hash {hash:016x}, a state the writer never had"),
            seqs => format!("hash {hash:016x} = writer state at seq {seqs:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes.

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique() -> usize {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// The last `n` lines of the file at `path` (or a note that it is missing).
pub fn tail_of(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Waits for `child` at most `timeout`; `None` if it is still running then.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid; it has not been reaped (we hold the Child
    // and only reap through it), so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The `walvault` binary run once to completion (bounded by `timeout`), in `dir`.
pub fn walvault(dir: &Path, envs: &[(String, String)], args: &[&str], timeout: Duration) -> Output {
    let n = unique();
    let logs = dir.join("logs");
    fs::create_dir_all(&logs).unwrap();
    let out_path = logs.join(format!("cmd-{n}.out"));
    let err_path = logs.join(format!("cmd-{n}.err"));
    let mut child = Command::new(bin())
        .current_dir(dir)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawning walvault");
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "walvault {args:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                tail_of(&out_path, 20),
                tail_of(&err_path, 20)
            );
        }
    };
    Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    }
}

/// How the binary reaches the store: the `--store` argument and environment variables.
#[derive(Debug, Clone)]
pub struct StoreArg {
    pub url: String,
    pub envs: Vec<(String, String)>,
}

impl StoreArg {
    /// A local store at a path relative to the test directory.
    pub fn local(rel: &str) -> Self {
        Self {
            url: rel.to_string(),
            envs: Vec::new(),
        }
    }

    /// Runs `walvault --store <url> <args>` in `dir`, at most `timeout`.
    pub fn run(&self, dir: &Path, args: &[&str], timeout: Duration) -> Output {
        let mut all = vec!["--store", self.url.as_str()];
        all.extend_from_slice(args);
        walvault(dir, &self.envs, &all, timeout)
    }
}

/// `walvault --store <store> replicate ...` running in the background in `dir`.
pub struct Daemon {
    dir: PathBuf,
    store: StoreArg,
    args: Vec<String>,
    child: Option<Child>,
    /// (stdout, stderr) file of every run so far.
    runs: Vec<(PathBuf, PathBuf)>,
    /// How many times it was SIGKILLed.
    pub kills: usize,
}

impl Daemon {
    /// Starts `walvault --store <store> <args>` in `dir` and waits until it says it is
    /// replicating.
    pub fn start(dir: &Path, store: &StoreArg, args: &[&str]) -> Daemon {
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            store: store.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            runs: Vec::new(),
            kills: 0,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs).unwrap();
        let n = self.runs.len();
        let out = logs.join(format!("daemon-{n}.out"));
        let err = logs.join(format!("daemon-{n}.err"));
        let child = Command::new(bin())
            .current_dir(&self.dir)
            .envs(self.store.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_BACKTRACE", "1")
            .arg("--store")
            .arg(&self.store.url)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawning walvault replicate");
        self.runs.push((out, err));
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30));
    }

    /// Waits until this run printed "replicating" (the replicator is open).
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (out, _) = self.runs.last().unwrap().clone();
        loop {
            if fs::read_to_string(&out).is_ok_and(|s| s.contains("replicating ")) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "the daemon exited ({status}) before it started replicating\n{}",
                    self.tail(20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start replicating within {timeout:?}\n{}",
                self.tail(20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the daemon's last lines) if it is not running.
    pub fn ensure_running(&mut self, context: &str) {
        let child = self.child.as_mut().expect("the daemon was stopped");
        if let Some(status) = child.try_wait().unwrap() {
            self.child = None;
            panic!(
                "{context}: the daemon exited on its own ({status})\n{}",
                self.tail(30)
            );
        }
    }

    /// True while the current run is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGINT, then waits (at most 60 s) for a graceful exit; panics unless it exits 0
    /// and says everything shipped is durable.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon had already exited on its own ({status}) before SIGINT\n{}",
                self.tail(30)
            );
        }
        signal(&child, libc::SIGINT);
        let status = match wait_timeout(&mut child, Duration::from_secs(60)) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not stop within 60 s of SIGINT\n{}",
                    self.tail(30)
                );
            }
        };
        assert!(
            status.success(),
            "the daemon exited with {status} after SIGINT\n{}",
            self.tail(30)
        );
        let out = fs::read_to_string(&self.runs.last().unwrap().0).unwrap_or_default();
        assert!(
            out.contains("everything shipped is durable"),
            "the daemon exited 0 without saying everything shipped is durable\n{}",
            self.tail(30)
        );
    }

    /// SIGKILL (no chance to clean up) and reap.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the daemon is not running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon had already exited on its own ({status}) before SIGKILL\n{}",
                self.tail(30)
            );
        }
        signal(&child, libc::SIGKILL);
        wait_timeout(&mut child, Duration::from_secs(30)).expect("SIGKILLed daemon not reaped");
        self.kills += 1;
    }

    /// Starts a new run with the same arguments (after [`kill`](Self::kill) or
    /// [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// How many runs were started.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Every run's stdout, concatenated.
    pub fn stdout(&self) -> String {
        self.runs
            .iter()
            .map(|(out, _)| fs::read_to_string(out).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Snapshots the daemon reported shipping (`shipped ... (snapshot)`, or with a
    /// reason: `(snapshot: why)`), over all runs.
    pub fn snapshots(&self) -> usize {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with("shipped") && l.contains("(snapshot"))
            .count()
    }

    /// The last `n` lines of stdout and stderr of the last two runs, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let mut s = String::new();
        let first = self.runs.len().saturating_sub(2);
        for (i, (out, err)) in self.runs.iter().enumerate().skip(first) {
            s += &format!(
                "--- daemon run {i} ({} runs, {} SIGKILLs) stdout:\n{}\n--- daemon run {i} stderr:\n{}\n",
                self.runs.len(),
                self.kills,
                tail_of(out, n),
                tail_of(err, n)
            );
        }
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `writer.py` against one database and one record file, both relative to `dir`.
pub struct Writer {
    pub dir: PathBuf,
    pub db: String,
    pub record: String,
}

/// A writer process running in the background.
pub struct WriterRun {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    args: Vec<String>,
}

impl Writer {
    pub fn new(dir: &Path, db: &str, record: &str) -> Writer {
        Writer {
            dir: dir.to_path_buf(),
            db: db.to_string(),
            record: record.to_string(),
        }
    }

    /// Creates the schema (in WAL mode) and records state 0.
    pub fn init(&self) {
        self.run(&["--init"], Duration::from_secs(60));
    }

    /// Starts `writer.py --db <db> --record <record> <args>` in the background.
    pub fn spawn(&self, args: &[&str]) -> WriterRun {
        let n = unique();
        let logs = self.dir.join("logs");
        fs::create_dir_all(&logs).unwrap();
        let out = logs.join(format!("writer-{n}.out"));
        let err = logs.join(format!("writer-{n}.err"));
        let child = Command::new(PYTHON)
            .current_dir(&self.dir)
            .arg(writer_script())
            .args(["--db", &self.db, "--record", &self.record])
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawning /usr/bin/python3 writer.py");
        WriterRun {
            child: Some(child),
            out,
            err,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Runs the writer to completion (at most `timeout`); its stdout.
    pub fn run(&self, args: &[&str], timeout: Duration) -> String {
        self.spawn(args).wait(timeout)
    }

    pub fn history(&self) -> History {
        History::read(&self.dir.join(&self.record))
    }
}

impl WriterRun {
    /// Waits (at most `timeout`) for the writer to exit 0; its stdout.
    pub fn wait(mut self, timeout: Duration) -> String {
        let mut child = self.child.take().unwrap();
        let status = wait_timeout(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = fs::read_to_string(&self.out).unwrap_or_default();
        match status {
            Some(s) if s.success() => out,
            other => panic!(
                "writer {:?}: {}\nstdout:\n{out}\nstderr:\n{}",
                self.args,
                other.map_or(format!("still running after {timeout:?}"), |s| s
                    .to_string()),
                tail_of(&self.err, 30)
            ),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for WriterRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading the store through the library.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every commit frame of `ns` in the local store at `store`, ascending, with the key of
/// the segment holding it.
pub fn commit_frames(store: &Path, ns: &str) -> Result<Vec<(u64, String)>, String> {
    let rt = runtime();
    rt.block_on(async {
        let storage = LocalStorage::open(store).map_err(|e| format!("opening the store: {e}"))?;
        let ns = NamespaceName::new(ns).unwrap();
        let mut infos = Vec::new();
        let mut listed = storage.list_segments(&ns, 0, None);
        while let Some(info) = listed.next().await {
            infos.push(info.map_err(|e| format!("listing segments: {e}"))?);
        }
        drop(listed);
        let mut frames = Vec::new();
        for info in infos {
            let seg = storage
                .fetch_segment_data(&ns, &info.key, None)
                .await
                .map_err(|e| format!("fetching segment {}: {e}", info.key))?;
            for c in seg.commits() {
                frames.push((c.frame_no, info.key.to_string()));
            }
        }
        frames.sort();
        Ok(frames)
    })
}

/// Restores `ns` as of `options` from the local store into a new file at `out` (no
/// fsync: this is a scratch file) and returns its content hash and row count after
/// `integrity_check` passed.
fn restore_and_hash(
    rt: &tokio::runtime::Runtime,
    storage: &LocalStorage,
    ns: &NamespaceName,
    options: RestoreOptions,
    out: &Path,
) -> Result<(u64, u64, u64), String> {
    let _ = fs::remove_file(out);
    let mut file = fs::File::create(out).map_err(|e| e.to_string())?;
    let summary = rt
        .block_on(storage.restore(ns, options, &mut file, None))
        .map_err(|e| format!("restore failed: {e}"))?;
    drop(file);
    walvault::integrity_check(out).map_err(|e| format!("integrity_check: {e}"))?;
    let (h, rows) = content_hash(out)?;
    Ok((summary.frame_no, h, rows))
}

/// The content hash of the latest state of `ns` in the local store, if it has one.
pub fn latest_hash(store: &Path, ns: &str, scratch: &Path) -> Option<u64> {
    let rt = runtime();
    let storage = LocalStorage::open(store).ok()?;
    let ns = NamespaceName::new(ns).unwrap();
    restore_and_hash(&rt, &storage, &ns, RestoreOptions::Latest, scratch)
        .ok()
        .map(|(_, h, _)| h)
}

/// Waits (at most `timeout`) until the store's latest state is the writer's last
/// recorded one; how long that took. `Err` says where the store was at the deadline.
pub fn wait_caught_up(
    dir: &Path,
    ns: &str,
    history: &History,
    timeout: Duration,
) -> Result<Duration, String> {
    let want = history.last();
    let started = Instant::now();
    let scratch = dir.join(format!("lag-{}.db", unique()));
    let mut last = None;
    loop {
        last = latest_hash(&dir.join("store"), ns, &scratch).or(last);
        if last == Some(want.hash) {
            let _ = fs::remove_file(&scratch);
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            let _ = fs::remove_file(&scratch);
            return Err(format!(
                "after {timeout:?} the store's latest state is {} (the writer's last is seq {} {:016x})",
                last.map_or("nothing".to_string(), |h| history.describe(h)),
                want.seq,
                want.hash
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What [`check_history`] found.
#[derive(Debug, Default, Clone)]
pub struct Checked {
    /// Commits the writer recorded.
    pub written: usize,
    /// Commit frames the store holds (each restorable by frame).
    pub commits: usize,
    /// Restores checked through the library.
    pub restores_checked: usize,
    /// Distinct writer states among the restored ones.
    pub states_seen: usize,
    /// Segments in the namespace.
    pub segments: usize,
}

/// The checks after the daemon stopped (`dir/store`, namespace `ns`):
///
/// 1. `walvault restore` (latest, relative paths) equals the writer's last state, and
///    `integrity_check` passes; so does one `restore --frame` through the binary;
/// 2. every commit frame of the namespace (or an evenly spaced sample of at most
///    `max_restores`, always with the first and last 20) restores through the library
///    to a database that passes `integrity_check` and whose hash the writer recorded;
/// 3. those states appear in the writer's order.
///
/// Panics with every problem found (up to 20), the frame, segment and hash of each, and
/// `context` (the daemon's last lines).
pub fn check_history(
    dir: &Path,
    ns: &str,
    history: &History,
    max_restores: usize,
    context: &dyn Fn() -> String,
) -> Checked {
    let last = history.last();
    let mut problems: Vec<String> = Vec::new();
    let store = StoreArg::local("store");

    // (1) The binary, latest.
    let out_name = format!("latest-{}.db", unique());
    let out = store.run(
        dir,
        &["restore", "--namespace", ns, "--output", &out_name],
        Duration::from_secs(120),
    );
    if !out.status.success() {
        problems.push(format!(
            "`walvault restore --namespace {ns}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    } else {
        let path = dir.join(&out_name);
        match walvault::integrity_check(&path)
            .map_err(|e| e.to_string())
            .and_then(|()| content_hash(&path))
        {
            Ok((h, rows)) if h == last.hash => {
                assert_eq!(rows, last.rows);
            }
            Ok((h, rows)) => problems.push(format!(
                "latest restore through the binary: {} ({rows} rows); the writer's last state is seq {} {:016x} ({} rows)",
                history.describe(h),
                last.seq,
                last.hash,
                last.rows
            )),
            Err(e) => problems.push(format!("latest restore through the binary: {e}")),
        }
    }

    // (2) Every commit frame, through the library.
    let frames = match commit_frames(&dir.join("store"), ns) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("enumerating the commit frames: {e}"));
            Vec::new()
        }
    };
    let segments = frames
        .iter()
        .map(|(_, k)| k.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let chosen: Vec<usize> = if frames.len() <= max_restores {
        (0..frames.len()).collect()
    } else {
        let mut idx: Vec<usize> = (0..frames.len())
            .filter(|i| {
                *i < 20 || *i + 20 >= frames.len() || i % frames.len().div_ceil(max_restores) == 0
            })
            .collect();
        idx.dedup();
        idx
    };
    let rt = runtime();
    let storage = LocalStorage::open(dir.join("store")).unwrap();
    let nsn = NamespaceName::new(ns).unwrap();
    let scratch = dir.join(format!("check-{}.db", unique()));
    let mut prev: Option<(u64, u64)> = None; // (frame, seq)
    let mut seen = std::collections::HashSet::new();
    let mut checked = 0;
    for &i in &chosen {
        let (frame, key) = &frames[i];
        checked += 1;
        match restore_and_hash(
            &rt,
            &storage,
            &nsn,
            RestoreOptions::FrameNo(*frame),
            &scratch,
        ) {
            Err(e) => problems.push(format!("frame {frame} (segment {key}): {e}")),
            Ok((restored_frame, h, rows)) => {
                if restored_frame != *frame {
                    problems.push(format!(
                        "frame {frame} (segment {key}): the restore says it restored frame {restored_frame}"
                    ));
                }
                let seqs = history.seqs_of(h);
                // The earliest time the writer had this state that is not before the
                // previous frame's (states may repeat; none do with writer.py).
                let floor = prev.map_or(0, |(_, s)| s);
                match (seqs.iter().find(|s| **s >= floor), seqs.first()) {
                    (_, None) => problems.push(format!(
                        "frame {frame} (segment {key}): restored a state the writer never had: hash {h:016x}, {rows} rows"
                    )),
                    (Some(&s), _) => {
                        seen.insert(s);
                        prev = Some((*frame, s));
                    }
                    (None, Some(&s)) => {
                        let (pf, ps) = prev.unwrap();
                        problems.push(format!(
                            "frame {frame} (segment {key}) restores the writer's state at seq {s}, but the earlier frame {pf} restored seq {ps}: history goes backwards"
                        ));
                    }
                }
            }
        }
        if problems.len() >= 20 {
            problems.push("(stopped after 20 problems)".into());
            break;
        }
    }
    let _ = fs::remove_file(&scratch);

    // (1b) One restore by frame through the binary, from the middle of the history.
    if let Some((frame, _)) = frames.get(frames.len() / 2) {
        let out_name = format!("frame-{}.db", unique());
        let f = frame.to_string();
        let out = store.run(
            dir,
            &[
                "restore",
                "--namespace",
                ns,
                "--frame",
                &f,
                "--output",
                &out_name,
            ],
            Duration::from_secs(120),
        );
        if !out.status.success() {
            problems.push(format!(
                "`walvault restore --frame {f}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        } else if let Err(e) = walvault::integrity_check(&dir.join(&out_name))
            .map_err(|e| e.to_string())
            .and_then(|()| content_hash(&dir.join(&out_name)))
            .and_then(|(h, _)| match history.seqs_of(h) {
                [] => Err(format!("hash {h:016x}, a state the writer never had")),
                _ => Ok(()),
            })
        {
            problems.push(format!("`walvault restore --frame {f}`: {e}"));
        }
    }

    if !problems.is_empty() {
        panic!(
            "{} problem(s) in namespace {ns} ({} commit frames in {} segments, writer made {} commits, last seq {} {:016x}):\n  {}\n{}",
            problems.len(),
            frames.len(),
            segments,
            history.entries.len(),
            last.seq,
            last.hash,
            problems.join("\n  "),
            context()
        );
    }
    Checked {
        written: history.entries.len(),
        commits: frames.len(),
        restores_checked: checked,
        states_seen: seen.len(),
        segments,
    }
}

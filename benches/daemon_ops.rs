//! What one `replicate` process for several databases costs, against one process per
//! database (the only way before the config file), measured in the same run: the
//! `walvault` binary runs as a child from a scratch directory with relative paths beside
//! a writer committing 1 KiB rows to every database at a steady rate, and each child's
//! CPU time and peak RSS come from `wait4`. While the single process runs, its
//! `/metrics` endpoint is scraped every 100 ms, timing each scrape.
//!
//! ```sh
//! cargo bench --bench daemon_ops                         # 3 databases, 15 s a scenario
//! WALVAULT_OPS_DBS=8 WALVAULT_OPS_SECS=30 cargo bench --bench daemon_ops
//! ```
#![allow(clippy::disallowed_methods)] // wall-clock timing is the point of a bench

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// Transactions per second per database.
const RATE: u64 = 50;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dbs = env_u64("WALVAULT_OPS_DBS", 3).max(1);
    let secs = env_u64("WALVAULT_OPS_SECS", 15).max(2);
    let bin = Path::new(env!("CARGO_BIN_EXE_walvault"));
    println!("daemon_ops: {dbs} databases, {RATE} tx/s each of 1 KiB rows, {secs} s a scenario");

    let separate = scenario(bin, dbs, secs, Daemons::PerDatabase);
    let quiet = scenario(bin, dbs, secs, Daemons::One { metrics: false });
    let single = scenario(bin, dbs, secs, Daemons::One { metrics: true });
    println!(
        "{dbs} processes (baseline): CPU {:.2} s, peak RSS {} MiB in all; {} commits shipped",
        separate.cpu.as_secs_f64(),
        separate.rss_kib / 1024,
        separate.commits
    );
    for (what, f) in [
        ("1 process, config file", &quiet),
        ("the same, /metrics scraped every 100 ms", &single),
    ] {
        println!(
            "{what}: CPU {:.2} s ({:.0} % of the baseline), peak RSS {} MiB ({:.0} %); {} \
             commits shipped",
            f.cpu.as_secs_f64(),
            100.0 * f.cpu.as_secs_f64() / separate.cpu.as_secs_f64().max(1e-9),
            f.rss_kib / 1024,
            100.0 * f.rss_kib as f64 / separate.rss_kib.max(1) as f64,
            f.commits
        );
    }
    let mut scrapes = single.scrapes;
    scrapes.sort();
    if !scrapes.is_empty() {
        let at = |q: f64| scrapes[((scrapes.len() - 1) as f64 * q) as usize];
        println!(
            "/metrics scrape ({} samples): p50 {:.2} ms, p99 {:.2} ms",
            scrapes.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3
        );
    }
}

/// How the databases are replicated.
#[derive(Clone, Copy, PartialEq)]
enum Daemons {
    /// One `replicate --db` process per database (the baseline).
    PerDatabase,
    /// One `replicate` process for all, from a config file; with `metrics`, its
    /// `/metrics` is scraped every 100 ms.
    One { metrics: bool },
}

struct Figures {
    cpu: Duration,
    rss_kib: u64,
    commits: u64,
    scrapes: Vec<Duration>,
}

/// Runs the writer for `secs` beside the daemons `how` says, and measures the daemons.
fn scenario(bin: &Path, dbs: u64, secs: u64, how: Daemons) -> Figures {
    let dir = common::bench_dir();
    let d = dir.path();
    let names: Vec<String> = (1..=dbs).map(|i| format!("db{i}.db")).collect();
    for name in &names {
        let conn = rusqlite::Connection::open(d.join(name)).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
    }
    let port = free_port();
    let mut children: Vec<Child> = Vec::new();
    if let Daemons::One { .. } = how {
        let mut config = format!("store = \"store\"\nmetrics = \"127.0.0.1:{port}\"\n");
        for name in &names {
            config.push_str(&format!("\n[[db]]\npath = \"{name}\"\n"));
        }
        std::fs::write(d.join("walvault.toml"), config).unwrap();
        children.push(spawn(bin, d, &["replicate"]));
    } else {
        for name in &names {
            children.push(spawn(
                bin,
                d,
                &["--store", "store", "replicate", "--db", name],
            ));
        }
    }
    std::thread::sleep(Duration::from_secs(1)); // the first snapshots
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, names, d) = (stop.clone(), names.clone(), d.to_path_buf());
        std::thread::spawn(move || write_steadily(&d, &names, &stop))
    };
    let mut scrapes = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if how == (Daemons::One { metrics: true }) {
            if let Some(took) = scrape(port) {
                scrapes.push(took);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let commits = writer.join().unwrap();
    std::thread::sleep(Duration::from_secs(2)); // the last commits reach the store
    let (mut cpu, mut rss_kib) = (Duration::ZERO, 0);
    for child in children {
        // SAFETY: SIGTERM to our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let (status, used, rss) = wait4(child);
        assert_eq!(status, 0, "a daemon failed (wait status {status})");
        cpu += used;
        rss_kib += rss;
    }
    Figures {
        cpu,
        rss_kib,
        commits,
        scrapes,
    }
}

fn spawn(bin: &Path, dir: &Path, args: &[&str]) -> Child {
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning walvault")
}

/// Commits one 1 KiB row to each database, `RATE` times a second, each in a connection
/// of its own; the number of commits.
fn write_steadily(dir: &Path, names: &[String], stop: &AtomicBool) -> u64 {
    let mut commits = 0;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for name in names {
            let conn = rusqlite::Connection::open(dir.join(name)).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            conn.execute("INSERT INTO t(v) VALUES (randomblob(1024))", [])
                .unwrap();
            commits += 1;
        }
        let due = started + Duration::from_millis(commits / names.len() as u64 * 1000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    commits
}

/// One `GET /metrics`: how long until the whole answer was read.
fn scrape(port: u16) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    answer
        .starts_with(b"HTTP/1.1 200")
        .then(|| started.elapsed())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reaps `child`: its wait status, CPU time (user + system) and peak RSS in KiB.
fn wait4(child: Child) -> (i32, Duration, u64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, not reaped yet, with valid out-pointers.
    while unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {}
    std::mem::forget(child); // reaped
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let cpu = time(usage.ru_utime) + time(usage.ru_stime);
    (status, cpu, usage.ru_maxrss as u64)
}

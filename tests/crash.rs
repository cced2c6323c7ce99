//! Crash tests with real processes. A child process writes transactions, printing each
//! one whose `Written` wait returned, and is killed with SIGKILL at a random moment. After
//! each kill the log is reopened and checked: every acknowledged transaction is there
//! byte for byte, frame numbers never repeat, and watermarks never go back.
//!
//! 100 kills in the normal run; set `WALVAULT_CRASH_ITERATIONS` for more, and
//! `WALVAULT_CRASH_SEED` to replay a run (the seed is printed).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walvault::{Durability, LocalStorage, LogConfig, LogWriter, NamespaceName};

const CHILD_DIR: &str = "WALVAULT_CRASH_CHILD_DIR";
const CHILD_FIRST_TXN: &str = "WALVAULT_CRASH_CHILD_FIRST_TXN";
const PAGE: usize = 512;
const DB_PAGES: u32 = 16;

fn ns() -> NamespaceName {
    NamespaceName::new("crashy").unwrap()
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        page_size: PAGE as u32,
        seal_frames: 24,
        allocator_block: 64,
        ..LogConfig::new(dir.join("log"))
    }
}

fn page(txn: u64, page_no: u32) -> Vec<u8> {
    let mut p = vec![(txn.wrapping_mul(31) as u8) ^ (page_no as u8); PAGE];
    p[..8].copy_from_slice(&txn.to_le_bytes());
    p[8..12].copy_from_slice(&page_no.to_le_bytes());
    p
}

/// Transaction `txn` writes 1 to 3 pages; transaction 0 creates every page.
fn pages_of(txn: u64) -> Vec<u32> {
    if txn == 0 {
        return (1..=DB_PAGES).collect();
    }
    let mut pages: Vec<u32> = (0..=(txn % 3))
        .map(|k| ((txn * 7 + k * 5) % u64::from(DB_PAGES)) as u32 + 1)
        .collect();
    pages.dedup();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// The child: writes until it is killed. Does nothing when run as an ordinary test.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let first: u64 = std::env::var(CHILD_FIRST_TXN).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = Path::new(&dir);
        let storage = LocalStorage::open(dir.join("store")).unwrap();
        let mut log = LogWriter::open(storage, ns(), config(dir)).await.unwrap();
        let mut out = std::io::stdout().lock();
        let mut txn = first;
        loop {
            // Batches of 1 to 4 transactions share one wait (group commit), so sealing,
            // syncing and storing overlap the way they do in real use.
            let mut batch = Vec::new();
            for _ in 0..=(txn % 4) {
                let data: Vec<(u32, Vec<u8>)> = pages_of(txn)
                    .into_iter()
                    .map(|p| (p, page(txn, p)))
                    .collect();
                let refs: Vec<(u32, &[u8])> =
                    data.iter().map(|(p, d)| (*p, d.as_slice())).collect();
                let appended = match log.append(&refs, DB_PAGES) {
                    Ok(appended) => appended,
                    // A kill lost the page sums the log keeps: it takes only a whole
                    // database (a snapshot) next, as the replicator would ship one.
                    Err(e) if e.is_diverged() => {
                        let all: Vec<(u32, Vec<u8>)> =
                            (1..=DB_PAGES).map(|p| (p, page(txn, p))).collect();
                        let refs: Vec<(u32, &[u8])> =
                            all.iter().map(|(p, d)| (*p, d.as_slice())).collect();
                        log.append_snapshot(&refs, DB_PAGES).unwrap()
                    }
                    Err(e) => panic!("append: {e}"),
                };
                batch.push((txn, appended));
                txn += 1;
            }
            batch
                .last()
                .unwrap()
                .1
                .wait(Durability::Written)
                .await
                .unwrap();
            let durable = log.tracker().watermark(Durability::Durable);
            for (txn, a) in batch {
                writeln!(
                    out,
                    "ACK {txn} {} {} {durable}",
                    a.frames.start,
                    a.commit_frame_no()
                )
                .unwrap();
            }
            out.flush().unwrap();
        }
    });
}

/// One acknowledged transaction, as the child reported it.
#[derive(Debug, Clone, Copy)]
struct Ack {
    txn: u64,
    first_frame: u64,
    commit_frame: u64,
    durable: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    // The harness may print the test's name on the child's first line, before it.
    let mut words = line[line.find("ACK ")?..]
        .strip_prefix("ACK ")?
        .split(' ')
        .map(|w| w.parse::<u64>());
    Some(Ack {
        txn: words.next()?.ok()?,
        first_frame: words.next()?.ok()?,
        commit_frame: words.next()?.ok()?,
        durable: words.next()?.ok()?,
    })
}

/// When the kill timer of a child starts.
#[derive(Clone, Copy)]
enum KillClock {
    /// At spawn: the kill may land while the log is still opening (recovery).
    Spawn,
    /// Once the child acknowledged its first transaction: the kill lands while it
    /// writes, however slowly this machine starts a process and syncs its first file.
    Writing,
}

/// Runs a child from `first_txn`, kills it `after` the clock starts, returns what it
/// acknowledged.
fn run_child(dir: &Path, first_txn: u64, clock: KillClock, after: Duration) -> Vec<Ack> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_FIRST_TXN, first_txn.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let (writing_tx, writing) = std::sync::mpsc::channel();
    let reader = {
        let acks = acks.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            // Only whole lines count: a line cut by the kill was never fully reported.
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                if line.ends_with(b"\n") {
                    if let Some(ack) = parse_ack(String::from_utf8_lossy(&line).trim_end()) {
                        acks.lock().unwrap().push(ack);
                        let _ = writing_tx.send(());
                    }
                }
                line.clear();
            }
        })
    };
    if let KillClock::Writing = clock {
        // A child that never writes (it failed) is killed after the timeout anyway, and
        // the test fails: every such round must have acknowledged something.
        let _ = writing.recv_timeout(Duration::from_secs(60));
    }
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    Arc::try_unwrap(acks).unwrap().into_inner().unwrap()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_at_random_points_loses_nothing_written() {
    let iterations: usize = std::env::var("WALVAULT_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("WALVAULT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    println!("crash test: {iterations} kills, seed {seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut all: Vec<Ack> = Vec::new();
    let mut next_txn = 0;
    let mut writing_kills = 0;
    let mut writing_kills_with_acks = 0;
    for iteration in 0..iterations {
        // One kill in eight may land during open (recovery of the previous kill's log);
        // the rest land while the child writes, after its first acknowledgement.
        let clock = if rng.next().is_multiple_of(8) {
            KillClock::Spawn
        } else {
            KillClock::Writing
        };
        let after = Duration::from_millis(match clock {
            KillClock::Spawn => 15 + rng.next() % 60,
            KillClock::Writing => rng.next() % 60,
        });
        let acks = run_child(dir.path(), next_txn, clock, after);
        if let KillClock::Writing = clock {
            writing_kills += 1;
            writing_kills_with_acks += usize::from(!acks.is_empty());
        }
        check_acks(&all, &acks, iteration);
        let sample: Vec<Ack> = (0..10)
            .filter_map(|_| all.get((rng.next() as usize) % all.len().max(1)).copied())
            .collect();
        rt.block_on(verify(dir.path(), &acks, &sample, &all, iteration));
        if let Some(last) = acks.last() {
            next_txn = last.txn + 1;
        }
        all.extend(acks);
    }
    assert_eq!(
        writing_kills_with_acks, writing_kills,
        "every child killed while writing had acknowledged a transaction first"
    );
}

/// Frame numbers of acknowledged transactions only grow, across every kill.
fn check_acks(before: &[Ack], acks: &[Ack], iteration: usize) {
    let mut last = before.last().map_or(0, |a| a.commit_frame);
    for a in acks {
        assert!(
            a.first_frame > last,
            "iteration {iteration}: frame {} reused (last was {last})",
            a.first_frame
        );
        assert!(a.commit_frame >= a.first_frame);
        last = a.commit_frame;
    }
}

/// Reopens the log and checks every transaction acknowledged in this run and a sample of
/// earlier ones, byte for byte, plus the watermarks.
async fn verify(dir: &Path, acks: &[Ack], sample: &[Ack], all: &[Ack], iteration: usize) {
    let storage = LocalStorage::open(dir.join("store")).unwrap();
    let log = LogWriter::open(storage, ns(), config(dir)).await.unwrap();
    let highest = acks
        .iter()
        .chain(all)
        .map(|a| a.commit_frame)
        .max()
        .unwrap_or(0);
    assert!(
        log.next_frame_no() > highest,
        "iteration {iteration}: numbers would repeat"
    );
    assert!(
        log.tracker().watermark(Durability::Written) >= highest,
        "iteration {iteration}: Written went back"
    );
    let durable_seen = acks.iter().chain(all).map(|a| a.durable).max().unwrap_or(0);
    let durable_now = log.tracker().watermark(Durability::Durable);
    assert!(
        durable_now >= durable_seen,
        "iteration {iteration}: Durable went back from {durable_seen} to {durable_now}"
    );
    for ack in acks.iter().chain(sample) {
        for p in pages_of(ack.txn) {
            let found = log.read_page(p, ack.commit_frame).await.unwrap();
            let (frame, data) = found.unwrap_or_else(|| {
                panic!("iteration {iteration}: txn {} page {p} is gone", ack.txn)
            });
            assert!(
                frame >= ack.first_frame && frame <= ack.commit_frame,
                "iteration {iteration}: txn {} page {p} read from frame {frame}",
                ack.txn
            );
            assert!(
                data == page(ack.txn, p),
                "iteration {iteration}: txn {} page {p} differs",
                ack.txn
            );
        }
    }
    log.close().await.unwrap();
}

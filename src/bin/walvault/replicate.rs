//! `walvault replicate`: ship a SQLite database's WAL into the store.

use crate::args::Store;
use std::path::PathBuf;
use std::time::Duration;

use walvault::{Durability, Error, InvalidInput, Replicator, ReplicatorConfig, Result};

use crate::args;
use crate::monitor::{DbHandle, DbInfo, Monitor};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQLite database (in WAL mode).
    #[arg(long)]
    db: PathBuf,
    /// Namespace in the store (default: the database file's stem).
    #[arg(long)]
    namespace: Option<String>,
    /// Ship what is there, wait until it is durable, and exit.
    #[arg(long)]
    once: bool,
    /// The longest a commit waits before it is sent to the store (the store's own
    /// latency comes on top). Under steady writes a segment is sent every tenth of it;
    /// after a quiet spell a commit is sent at once.
    #[arg(long, default_value = "1s", value_parser = at_least_10ms)]
    max_lag: Duration,
    /// How often to look at the WAL when the OS reports no change: the safety net under
    /// file-change notification (which wakes the daemon at each write). Without
    /// notification the WAL is looked at every tenth of --max-lag instead.
    #[arg(long, default_value = "1s", value_parser = at_least_10ms)]
    interval: Duration,
    /// Advanced: also seal the open segment once its first transaction is this old
    /// (default: --max-lag).
    #[arg(long, value_parser = args::duration)]
    seal_age: Option<Duration>,
    /// Do not compact in the background. By default the daemon merges small segments
    /// in tiers (every second, every minute, every hour), keeping every commit restorable.
    #[arg(long)]
    no_compact: bool,
    /// Run the fast compaction tier, retention (--retain) and garbage collection of
    /// merged-away segments this often (default: 1s for the fast tier, 10m for collection).
    #[arg(long, value_parser = args::duration)]
    maintain_every: Option<Duration>,
    /// Keep this point-in-time window and drop older history.
    #[arg(long, value_parser = args::duration)]
    retain: Option<Duration>,
    /// Delete merged-away segments only after this long.
    #[arg(long, value_parser = args::duration, default_value = "1h")]
    grace: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDR", conflicts_with = "once")]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Starts background maintenance (tiered compaction, retention, garbage collection)
/// on the writer's own store handle; None with `--no-compact` and nothing else to do.
fn maintain<S: Store>(
    store: &S,
    namespace: &walvault::NamespaceName,
    a: &Args,
) -> Result<Option<walvault::MaintainerHandle>> {
    let mut config = walvault::MaintenanceConfig {
        retain: a.retain,
        grace: a.grace,
        ..Default::default()
    };
    if let Some(every) = a.maintain_every {
        config.collect_every = every;
        if let Some(fast) = config.tiers.first_mut() {
            fast.every = every;
        }
    }
    if a.no_compact {
        if a.maintain_every.is_none() && a.retain.is_none() {
            return Ok(None);
        }
        config.tiers.clear();
    }
    let clock = std::sync::Arc::new(walvault::SystemClock);
    let maintainer = walvault::Maintainer::new(store.clone(), namespace.clone(), config, clock)?;
    // The fast tier merges every few seconds: only the slower tiers and collection say so.
    Ok(Some(maintainer.spawn(|r| {
        if r.changed() && r.task != walvault::Task::Compact(0) {
            println!(
                "maintenance: {} merges of {} segments{}; deleted {} segments",
                r.merges,
                r.segments_merged,
                if r.history_dropped {
                    ", old history dropped"
                } else {
                    ""
                },
                r.deleted
            );
        }
    })))
}

/// A duration of at least 10 ms: shorter lags or intervals would have the daemon spin.
fn at_least_10ms(text: &str) -> std::result::Result<Duration, String> {
    let least = walvault::MIN_MAX_LAG;
    match args::duration(text)? {
        d if d < least => Err(format!("{text} is shorter than the shortest allowed, 10ms")),
        d => Ok(d),
    }
}

/// How long `--once` keeps retrying a store that does not answer.
const ONCE_GIVE_UP: Duration = Duration::from_secs(30);
/// After a stop signal, how long the store gets to take what was shipped.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The longest backoff between attempts to start while the store does not answer.
const START_BACKOFF: Duration = Duration::from_secs(30);
/// At most one warning this often about a poll that failed.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub async fn run<S: Store>(store: S, a: Args, store_url: &str) -> Result<()> {
    let name = match &a.namespace {
        Some(n) => n.clone(),
        None => stem(&a.db)?,
    };
    let namespace = args::namespace(&name)?;
    let mut config = ReplicatorConfig::new(&a.db);
    config.max_lag = a.max_lag;
    config.log.seal_age = a.max_lag;
    if let Some(age) = a.seal_age {
        config.log.seal_age = age;
    }
    if a.once {
        config.log.store_retry.give_up_after = Some(ONCE_GIVE_UP);
        return once(store, namespace, config, &a).await;
    }
    let mut stop = args::StopSignal::listen()?;
    let dir = config.log.dir.clone();
    let monitor = Monitor::new();
    if let Some(addr) = a.metrics_addr {
        monitor.serve_metrics(addr).await?;
    }
    let Some(replicator) = open(&store, &namespace, config, &mut stop).await? else {
        println!("stopped before the store answered; nothing was shipped");
        return Ok(());
    };
    let db = monitor.register(DbInfo::of(&replicator, &namespace, store_url));
    let wake = Wake::new(&a);
    println!(
        "replicating {} into namespace {namespace}, {}, lag at most {:?} plus the store's; \
         Ctrl-C or SIGTERM stops",
        a.db.display(),
        wake.describe(),
        a.max_lag,
    );
    let maintainer = maintain(&store, &namespace, &a)?;
    let outcome = follow(&a, replicator, wake, &mut stop, &db).await;
    if let Some(maintainer) = maintainer {
        maintainer.stop().await;
    }
    let stopped = stop_replicator(outcome, &dir).await;
    db.stopped();
    stopped
}

/// `--once`: ship, wait until it is durable (giving up after [`ONCE_GIVE_UP`] of store
/// failures), report.
async fn once<S: Store>(
    store: S,
    namespace: walvault::NamespaceName,
    config: ReplicatorConfig,
    a: &Args,
) -> Result<()> {
    let mut replicator = Replicator::open(store.clone(), namespace.clone(), config).await?;
    let report = replicator.run_once().await?;
    replicator.close().await?;
    let durable = walvault::Storage::durable_frame_no(&store, &namespace, None).await?;
    println!(
        "replicated {}: {} transactions, {} frames{}; durable frame {durable}",
        a.db.display(),
        report.transactions,
        report.frames,
        snapshot_note(&report),
    );
    Ok(())
}

/// Opens the replicator, waiting out a store that does not answer yet (None if a stop
/// signal came first).
async fn open<S: Store>(
    store: &S,
    namespace: &walvault::NamespaceName,
    config: ReplicatorConfig,
    stop: &mut args::StopSignal,
) -> Result<Option<Replicator<S>>> {
    let mut wait = Duration::from_secs(1);
    loop {
        let opened = Replicator::open(store.clone(), namespace.clone(), config.clone()).await;
        match opened {
            Ok(replicator) => return Ok(Some(replicator)),
            Err(e) if e.is_transient() => {
                eprintln!("walvault: warning: cannot start yet ({e}); trying again in {wait:?}");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.received() => return Ok(None),
        }
        wait = (wait * 2).min(START_BACKOFF);
    }
}

/// When the daemon looks at the WAL next: at once when the OS reports a write (but no
/// sooner than a fiftieth of --max-lag, 20 ms by default, after a poll that shipped
/// something, so a busy database is read in batches), when a shipped commit's seal is
/// due, and every --interval regardless. Reading soon matters beyond the lag: the time
/// of reading bounds a commit's time stamp.
struct Wake {
    watcher: Option<walvault::WalWatcher>,
    /// The fallback poll period.
    every: Duration,
    /// The least time between polls that ship.
    gap: Duration,
    last_busy: Option<tokio::time::Instant>,
}

impl Wake {
    fn new(a: &Args) -> Self {
        let gap = a.max_lag / 50;
        match walvault::WalWatcher::new(&a.db) {
            Ok(watcher) => Self {
                watcher: Some(watcher),
                every: a.interval,
                gap,
                last_busy: None,
            },
            Err(e) => {
                let every = a.interval.min(a.max_lag / 10);
                eprintln!(
                    "walvault: warning: no file-change notification for {} ({e}); \
                     looking at the WAL every {every:?}",
                    a.db.display()
                );
                Self {
                    watcher: None,
                    every,
                    gap,
                    last_busy: None,
                }
            }
        }
    }

    fn describe(&self) -> String {
        match self.watcher {
            Some(_) => format!(
                "reading each commit as it is written (and every {:?})",
                self.every
            ),
            None => format!("looking every {:?}", self.every),
        }
    }

    /// Waits until the next poll is due, or a stop signal (true).
    async fn wait(&mut self, seal_due_in: Option<Duration>, stop: &mut args::StopSignal) -> bool {
        let timer = seal_due_in.map_or(self.every, |due| due.min(self.every));
        let changed = async {
            match &self.watcher {
                Some(watcher) => watcher.changed().await,
                None => std::future::pending().await,
            }
            if let Some(at) = self.last_busy {
                tokio::time::sleep_until(at + self.gap).await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(timer) => false,
            _ = changed => false,
            _ = stop.received() => true,
        }
    }

    fn polled(&mut self, shipped: bool) {
        if shipped {
            self.last_busy = Some(tokio::time::Instant::now());
        }
    }
}

/// What the daemon prints about ordinary shipping: a line at the first, then at most one
/// every [`SUMMARY_EVERY`] adding up what was shipped since (a snapshot is always
/// reported at once).
#[derive(Default)]
struct Shipped {
    transactions: u64,
    frames: u64,
    printed: Option<tokio::time::Instant>,
}

/// At most one "shipped" line this often.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl Shipped {
    fn add(&mut self, report: &walvault::IngestReport) {
        self.transactions += report.transactions;
        self.frames += report.frames;
        let due = self.printed.is_none_or(|at| at.elapsed() >= SUMMARY_EVERY);
        if report.snapshot || (due && self.transactions > 0) {
            self.print(snapshot_note(report));
        }
    }

    fn print(&mut self, note: String) {
        println!(
            "shipped {} transactions, {} frames{note}",
            self.transactions, self.frames
        );
        self.transactions = 0;
        self.frames = 0;
        self.printed = Some(tokio::time::Instant::now());
    }
}

/// Polls whenever [`Wake`] says, until a stop signal or an error that waiting cannot fix.
/// A transient error (the store, or the database's files, failing for now) is reported
/// and the next interval tries again: the log keeps what was shipped meanwhile.
async fn follow<S: Store>(
    a: &Args,
    mut replicator: Replicator<S>,
    mut wake: Wake,
    stop: &mut args::StopSignal,
    db: &DbHandle,
) -> (Replicator<S>, Result<()>) {
    let mut warned: Option<tokio::time::Instant> = None;
    let mut shipped = Shipped::default();
    loop {
        let polled = replicator.poll().await;
        db.polled(&polled);
        let failed = polled.is_err();
        match polled {
            Ok(report) => {
                wake.polled(report.transactions > 0);
                shipped.add(&report);
                // The log may have stopped in the background (a store that refuses the
                // credentials, say): then so does the daemon.
                if let Some(e) = replicator.log().tracker().closed() {
                    return (replicator, Err(e));
                }
            }
            // The log itself failed (a permanent store error, a failed fsync): stop.
            // A store that refused a segment (its history moved on) is answered by the
            // next poll's snapshot, like a transient failure.
            Err(e)
                if !(e.is_transient() || e.is_diverged())
                    || replicator.log().tracker().closed().is_some() =>
            {
                return (replicator, Err(e));
            }
            Err(e) => {
                wake.polled(true); // no faster retries than shipping
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    eprintln!(
                        "walvault: warning: {e}; trying again every {:?}",
                        a.interval
                    );
                    warned = Some(tokio::time::Instant::now());
                }
            }
        }
        // After a failure, the next try waits for a change or --interval, not for a
        // seal that is due at once (the poll could not seal).
        let seal_due_in = if failed {
            None
        } else {
            replicator.seal_due_in()
        };
        if wake.wait(seal_due_in, stop).await {
            // Commits made since the last poll are shipped too, so a stop right after
            // a commit does not leave it for the next start.
            let last = replicator.run_once().await;
            db.polled(&last);
            if let Ok(report) = &last {
                shipped.add(report);
            }
            if shipped.transactions > 0 {
                shipped.print(String::new());
            }
            return (replicator, last.map(drop));
        }
    }
}

/// Closes the replicator, giving the store [`STOP_WAIT`] to take what was shipped. What
/// it does not take by then is safe in the local log (`dir`), and the next run submits
/// it again: say so, and fail, since it is not in the store.
async fn stop_replicator<S: Store>(
    (replicator, outcome): (Replicator<S>, Result<()>),
    dir: &std::path::Path,
) -> Result<()> {
    let tracker = replicator.log().tracker().clone();
    let applied = tracker.watermark(Durability::Applied);
    let written = replicator.log().wait(applied, Durability::Written);
    let _ = tokio::time::timeout(STOP_WAIT, written).await;
    let closed = tokio::time::timeout(STOP_WAIT, replicator.close()).await;
    outcome?;
    match closed {
        Ok(Ok(())) => {
            println!("stopped; everything shipped is durable");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let durable = tracker.watermark(Durability::Durable);
            let written = tracker.watermark(Durability::Written);
            let what = format!(
                "stopping: the store did not take frames {}..={written} within {STOP_WAIT:?}; \
                 they are safe in the local log {} and the next `walvault replicate` \
                 submits them again",
                durable + 1,
                dir.display()
            );
            Err(Error::io(what, std::io::ErrorKind::TimedOut.into()))
        }
    }
}

/// ` (snapshot: <why>)` when the step shipped a snapshot, so a discontinuity is seen.
fn snapshot_note(report: &walvault::IngestReport) -> String {
    match (report.snapshot, report.snapshot_reason) {
        (true, Some(reason)) => format!(" (snapshot: {reason})"),
        (true, None) => " (snapshot)".to_string(),
        (false, _) => String::new(),
    }
}

/// The database file's stem, as the default namespace.
pub fn stem(db: &std::path::Path) -> Result<String> {
    db.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::from(InvalidInput::Config(format!(
                "cannot name a namespace after {}; pass --namespace",
                db.display()
            )))
        })
}

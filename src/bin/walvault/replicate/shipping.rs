//! The poll loop of one database: when to look at the WAL ([`Wake`]), what to print
//! about it ([`Shipped`]), and the stop that makes what was shipped durable.

use std::time::Duration;

use walvault::{Durability, Error, Replicator, Result};

use super::{Spec, Stop};
use crate::args::Store;
use crate::monitor::DbHandle;

/// After a stop, how long the store gets to take what was shipped.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// At most one warning this often about a poll that failed.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// When the daemon looks at the WAL next: at once when the OS reports a write (but no
/// sooner than a fiftieth of --max-lag, 20 ms by default, after a poll that shipped
/// something, so a busy database is read in batches), when a shipped commit's seal is
/// due, and every --interval regardless. Reading soon matters beyond the lag: the time
/// of reading bounds a commit's time stamp.
pub struct Wake {
    watcher: Option<walvault::WalWatcher>,
    /// The fallback poll period.
    every: Duration,
    /// The least time between polls that ship.
    gap: Duration,
    last_busy: Option<tokio::time::Instant>,
}

impl Wake {
    pub fn new(a: &Spec) -> Self {
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
                    "walvault: warning: {}no file-change notification for {} ({e}); \
                     looking at the WAL every {every:?}",
                    a.label,
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

    pub fn describe(&self) -> String {
        match self.watcher {
            Some(_) => format!(
                "reading each commit as it is written (and every {:?})",
                self.every
            ),
            None => format!("looking every {:?}", self.every),
        }
    }

    /// Waits until the next poll is due, or a stop signal (true).
    async fn wait(&mut self, seal_due_in: Option<Duration>, stop: &mut Stop) -> bool {
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
struct Shipped {
    spec: Spec,
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
            self.print(report);
        }
    }

    /// Prints what was shipped since the last line (`last`: the step that ends it, for
    /// its snapshot).
    fn print(&mut self, last: &walvault::IngestReport) {
        let (transactions, frames) = (self.transactions, self.frames);
        self.spec.say(
            "shipped",
            || {
                format!(
                    "shipped {transactions} transactions, {frames} frames{}",
                    snapshot_note(last)
                )
            },
            serde_json::json!({
                "transactions": transactions,
                "frames": frames,
                "snapshot": last.snapshot,
                "snapshot_reason": last.snapshot_reason.map(|r| r.to_string()),
            }),
        );
        self.transactions = 0;
        self.frames = 0;
        self.printed = Some(tokio::time::Instant::now());
    }
}

/// Polls whenever [`Wake`] says, until a stop signal or an error that waiting cannot fix.
/// A transient error (the store, or the database's files, failing for now) is reported
/// and the next interval tries again: the log keeps what was shipped meanwhile.
/// `ready` is called after the first poll.
pub async fn follow<S: Store>(
    a: &Spec,
    mut replicator: Replicator<S>,
    stop: &mut Stop,
    db: &DbHandle,
    mut ready: impl FnMut(),
) -> (Replicator<S>, Result<()>) {
    let wake = Wake::new(a);
    a.say(
        "replicating",
        || {
            format!(
                "replicating {} into namespace {} of {}, {}, lag at most {:?} plus the \
                 store's; Ctrl-C or SIGTERM stops",
                a.db.display(),
                a.namespace,
                a.store,
                wake.describe(),
                a.max_lag,
            )
        },
        serde_json::json!({ "store": a.store, "max_lag_ms": a.max_lag.as_millis() as u64 }),
    );
    let mut wake = wake;
    let mut warned: Option<tokio::time::Instant> = None;
    let mut shipped = Shipped {
        spec: a.clone(),
        transactions: 0,
        frames: 0,
        printed: None,
    };
    loop {
        let polled = replicator.poll().await;
        db.polled(&polled);
        ready();
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
                        "walvault: warning: {}{e}; trying again every {:?}",
                        a.label, a.interval
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
                shipped.print(&walvault::IngestReport::default());
            }
            return (replicator, last.map(drop));
        }
    }
}

/// Closes the replicator, giving the store [`STOP_WAIT`] to take what was shipped. What
/// it does not take by then is safe in the local log (`dir`), and the next run submits
/// it again: say so, and fail, since it is not in the store.
pub async fn stop_replicator<S: Store>(
    (replicator, outcome): (Replicator<S>, Result<()>),
    a: &Spec,
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
            a.say(
                "stopped",
                || "stopped; everything shipped is durable".into(),
                serde_json::json!({ "durable": true }),
            );
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
pub fn snapshot_note(report: &walvault::IngestReport) -> String {
    match (report.snapshot, report.snapshot_reason) {
        (true, Some(reason)) => format!(" (snapshot: {reason})"),
        (true, None) => " (snapshot)".to_string(),
        (false, _) => String::new(),
    }
}

//! What a running `walvault replicate` tells operators: a Prometheus endpoint
//! (`--metrics-addr`) and, per database, a control socket that `walvault status` asks.
//!
//! # Contract (how the replicate loop uses it)
//!
//! One [`Monitor`] per process, any number of databases:
//!
//! ```text
//! let monitor = Monitor::new();
//! // Once, before the databases open (a bad address fails at once, naming it):
//! let _metrics = monitor.serve_metrics(addr).await?;          // JoinHandle, runs until exit
//! // Per database, once its Replicator is open:
//! let handle = monitor.register(DbInfo::of(&replicator, &namespace, store_url));
//! // After every poll (and the last run_once at stop):
//! handle.polled(&outcome);                                     // &Result<IngestReport>
//! // When that database's replication has stopped (everything flushed or given up):
//! handle.stopped();                                            // also done on drop
//! ```
//!
//! `register` starts the database's control socket, `<db>-walvault/daemon.sock` (inside
//! the log directory the replicator created; see `ReplicatorConfig::new`). A socket file
//! nobody answers on (a daemon that was killed) is removed first; the file goes when the
//! handle is stopped or dropped. A socket that cannot be served (another daemon answers
//! there, a path too long for a Unix socket) is a warning, never a reason to stop
//! replicating. Each connection gets one JSON document ([`DbState::document`]) and is
//! closed.
//!
//! `walvault status --db PATH...` ([`status::run`]) asks those sockets;
//! [`status::status_of`] answers for one database, for callers that find the databases
//! elsewhere (a config file).
//!
//! Everything here reads time through `walvault::SystemClock` and the log's own clock
//! (lag and store age come from [`walvault::LogStats`]).

mod control;
mod metrics;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use walvault::{
    Clock, Durability, DurabilityTracker, IngestReport, LogStats, Replicator, Result, Storage,
    SystemClock,
};

/// The name of the control socket inside a database's log directory.
pub const SOCKET_NAME: &str = "daemon.sock";

/// The monitor of one `replicate` process: the databases it replicates, shared by the
/// metrics endpoint and the control sockets. Clones share it.
#[derive(Clone, Default)]
pub struct Monitor {
    dbs: Arc<Mutex<Vec<Arc<DbState>>>>,
}

/// What the monitor needs to know about a database being replicated.
pub struct DbInfo {
    /// The database as the user named it (relative paths stay relative).
    pub db: PathBuf,
    /// The namespace it is replicated into.
    pub namespace: String,
    /// The store, as `--store` (or the config file) named it.
    pub store_url: String,
    /// The replicator's log directory, where the control socket goes.
    pub log_dir: PathBuf,
    /// The log's watermarks: applied, written and durable frame numbers.
    pub tracker: DurabilityTracker,
    /// The log's shipping counters, lag and store age.
    pub stats: LogStats,
}

impl DbInfo {
    /// What `replicator` (open) shows of itself, replicating into `namespace` of the
    /// store named `store_url`.
    pub fn of<S: Storage + Clone>(
        replicator: &Replicator<S>,
        namespace: &walvault::NamespaceName,
        store_url: &str,
    ) -> Self {
        let db = replicator.db().to_path_buf();
        Self {
            log_dir: log_dir(&db),
            db,
            namespace: namespace.to_string(),
            store_url: store_url.to_string(),
            tracker: replicator.log().tracker().clone(),
            stats: replicator.log().stats().clone(),
        }
    }
}

/// The log directory the replicator keeps for `db`: `<db>-walvault`, as
/// `ReplicatorConfig::new` names it.
pub fn log_dir(db: &Path) -> PathBuf {
    walvault::ReplicatorConfig::new(db).log.dir
}

impl Monitor {
    /// A monitor with no databases yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a database (its replicator is open) and starts its control socket.
    pub fn register(&self, info: DbInfo) -> DbHandle {
        let state = Arc::new(DbState::new(info));
        self.lock().push(state.clone());
        let control = control::serve(state.clone());
        DbHandle {
            monitor: self.clone(),
            state,
            control,
        }
    }

    /// Serves `GET /metrics` on `addr` until the process exits; fails at once, naming the
    /// address, if it cannot be bound.
    pub async fn serve_metrics(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<tokio::task::JoinHandle<()>> {
        metrics::serve(self.clone(), addr).await
    }

    /// The databases registered now.
    fn databases(&self) -> Vec<Arc<DbState>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<DbState>>> {
        self.dbs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove(&self, state: &Arc<DbState>) {
        self.lock().retain(|s| !Arc::ptr_eq(s, state));
    }
}

/// One registered database: report each poll to it; dropping it (or
/// [`stopped`](Self::stopped)) takes the database off the monitor and removes its socket.
pub struct DbHandle {
    monitor: Monitor,
    state: Arc<DbState>,
    control: Option<control::Control>,
}

impl DbHandle {
    /// A poll (or `run_once`) ended with `outcome`.
    pub fn polled(&self, outcome: &Result<IngestReport>) {
        self.state.polled(outcome);
    }

    /// The database's replication stopped: it leaves the metrics and `status`.
    pub fn stopped(self) {}

    /// The database's replication failed for good: it stays in the metrics and `status`,
    /// in state `failed` with this error, for as long as the handle is kept (the
    /// daemon keeps it until it exits, so an alert on the lag fires).
    pub fn failed(&self, error: &walvault::Error) {
        let mut last = self
            .state
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.failed = true;
        last.error = Some((SystemClock.now(), error.to_string()));
    }
}

impl Drop for DbHandle {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            control.stop();
        }
        self.monitor.remove(&self.state);
    }
}

/// What the monitor keeps of one database, beyond what the log counts.
pub(crate) struct DbState {
    info: DbInfo,
    registered_at: DateTime<Utc>,
    snapshots: AtomicU64,
    transactions: AtomicU64,
    polls: AtomicU64,
    poll_errors: AtomicU64,
    last: Mutex<LastPoll>,
}

#[derive(Default)]
struct LastPoll {
    at: Option<DateTime<Utc>>,
    ok: bool,
    /// The last failed poll's error and time, kept after later polls succeed.
    error: Option<(DateTime<Utc>, String)>,
    /// True once replication of the database failed for good.
    failed: bool,
}

impl DbState {
    fn new(info: DbInfo) -> Self {
        Self {
            info,
            registered_at: SystemClock.now(),
            snapshots: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            last: Mutex::new(LastPoll::default()),
        }
    }

    fn polled(&self, outcome: &Result<IngestReport>) {
        let now = SystemClock.now();
        self.polls.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.at = Some(now);
        last.ok = outcome.is_ok();
        match outcome {
            Ok(report) => {
                self.snapshots
                    .fetch_add(u64::from(report.snapshot), Ordering::Relaxed);
                self.transactions
                    .fetch_add(report.transactions, Ordering::Relaxed);
            }
            Err(e) => {
                self.poll_errors.fetch_add(1, Ordering::Relaxed);
                last.error = Some((now, e.to_string()));
            }
        }
    }

    fn watermark(&self, level: Durability) -> u64 {
        self.info.tracker.watermark(level)
    }

    /// The document `walvault status` prints for this database (field names are part of
    /// the CLI's interface; see the README).
    pub(crate) fn document(&self) -> Value {
        let info = &self.info;
        let stats = &info.stats;
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let state = match (info.tracker.closed(), last.at, last.ok) {
            _ if last.failed => "failed",
            (Some(_), _, _) => "failed",
            (None, None, _) => "starting",
            (None, Some(_), true) => "replicating",
            (None, Some(_), false) => "retrying",
        };
        json!({
            "running": true,
            "db": info.db.display().to_string(),
            "namespace": info.namespace,
            "store": info.store_url,
            "pid": std::process::id(),
            "started_at": rfc3339(self.registered_at),
            "state": state,
            "frames": {
                "applied": self.watermark(Durability::Applied),
                "written": self.watermark(Durability::Written),
                "durable": self.watermark(Durability::Durable),
            },
            "lag_seconds": stats.lag().as_secs_f64(),
            "oldest_pending_commit": stats.oldest_pending_commit().map(rfc3339),
            "last_poll": last.at.map(rfc3339),
            "store_last_ok": stats.store_last_ok().map(rfc3339),
            "store_last_ok_age_seconds": stats.since_store_ok().map(|d| d.as_secs_f64()),
            "last_error": last.error.as_ref().map(|(at, e)| json!({"at": rfc3339(*at), "error": e})),
            "log_error": info.tracker.closed().map(|e| e.to_string()),
            "counters": {
                "transactions": self.transactions.load(Ordering::Relaxed),
                "snapshots": self.snapshots.load(Ordering::Relaxed),
                "segments_shipped": stats.segments_shipped(),
                "bytes_shipped": stats.bytes_shipped(),
                "upload_errors": stats.upload_errors(),
                "upload_retries": stats.upload_retries(),
                "polls": self.polls.load(Ordering::Relaxed),
                "poll_errors": self.poll_errors.load(Ordering::Relaxed),
            },
        })
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

//! One database's life in the daemon: restore on boot, waiting for the database to be
//! created, opening against a store that may not answer yet, the poll loop
//! (`shipping.rs`) and the stop. [`start_all`] runs every database on a task of its own;
//! [`once_all`] is `--once`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use walvault::{Error, InvalidInput, Replicator, ReplicatorConfig, Result};

use super::shipping::{follow, snapshot_note, stop_replicator};
use super::{Spec, Stop};
use crate::args::{self, Store};
use crate::monitor::{DbHandle, DbInfo, Monitor};
use crate::restore;

/// Starts background maintenance (tiered compaction, retention, garbage collection)
/// on the writer's own store handle; None with `--no-compact` and nothing else to do.
fn maintain<S: Store>(
    store: &S,
    namespace: &walvault::NamespaceName,
    a: &Spec,
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
    if !a.compact {
        if a.maintain_every.is_none() && a.retain.is_none() {
            return Ok(None);
        }
        config.tiers.clear();
    }
    let clock = std::sync::Arc::new(walvault::SystemClock);
    let maintainer = walvault::Maintainer::new(store.clone(), namespace.clone(), config, clock)?;
    // The fast tier merges every few seconds: only the slower tiers and collection say so.
    let spec = a.clone();
    Ok(Some(maintainer.spawn(move |r| {
        if r.changed() && r.task != walvault::Task::Compact(0) {
            let dropped = if r.history_dropped {
                ", old history dropped"
            } else {
                ""
            };
            spec.say(
                "maintenance",
                || {
                    format!(
                        "maintenance: {} merges of {} segments{dropped}; deleted {} segments",
                        r.merges, r.segments_merged, r.deleted
                    )
                },
                json!({ "merges": r.merges, "segments_merged": r.segments_merged,
                        "history_dropped": r.history_dropped, "deleted": r.deleted }),
            );
        }
    })))
}

/// How long `--once` keeps retrying a store that does not answer.
const ONCE_GIVE_UP: Duration = Duration::from_secs(30);
/// The longest backoff between attempts to start while the store does not answer.
const START_BACKOFF: Duration = Duration::from_secs(30);
/// How often to look for a database that does not exist yet.
const CREATION_POLL: Duration = Duration::from_millis(200);

/// The databases' tasks.
pub struct Running {
    tasks: JoinSet<(bool, Option<DbHandle>)>,
    /// Databases that failed after they were registered with the monitor: kept, so they
    /// stay in the metrics and `status` as failed until the daemon exits.
    failed_handles: Vec<DbHandle>,
    /// One per database: resolves (or is dropped) once it has shipped what was there.
    ready: Vec<oneshot::Receiver<()>>,
    failed: usize,
}

/// Starts a task per database.
pub fn start_all(specs: Vec<Spec>, stop: Stop, monitor: &Monitor) -> Result<Running> {
    let mut stores = std::collections::HashMap::new();
    let mut running = Running {
        tasks: JoinSet::new(),
        ready: Vec::new(),
        failed: 0,
        failed_handles: Vec::new(),
    };
    for spec in specs {
        let opened = match stores.get(&spec.store) {
            Some(opened) => Clone::clone(opened),
            None => {
                let opened = args::open_store(&spec.store)?;
                stores.insert(spec.store.clone(), Clone::clone(&opened));
                opened
            }
        };
        let (tx, rx) = oneshot::channel();
        running.ready.push(rx);
        let (stop, monitor) = (stop.clone(), monitor.clone());
        match opened {
            args::Opened::Local(s) => running.tasks.spawn(task(s, spec, stop, tx, monitor)),
            args::Opened::Object(s) => running.tasks.spawn(task(s, spec, stop, tx, monitor)),
        };
    }
    Ok(running)
}

impl Running {
    /// Waits until every database has shipped what was there (or is waiting for the
    /// application to create it): true. False if one failed first (a boot restore that
    /// could not be done: the application must not start on an empty database while
    /// its history exists), or a stop signal came first.
    pub async fn ready(&mut self, signals: &mut super::exec::Signals) -> bool {
        let all = all_ready(std::mem::take(&mut self.ready));
        tokio::select! {
            ok = all => ok,
            _ = signals.received() => false,
        }
    }

    /// Resolves once every database task has ended (each failed: they only end on a
    /// stop otherwise).
    pub async fn ended(&mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            self.count(joined);
        }
    }

    /// Asks every database to stop and waits until they have.
    pub async fn stop(&mut self, stop: &tokio::sync::watch::Sender<bool>) {
        let _ = stop.send(true);
        self.ended().await;
    }

    /// [`stop`](Self::stop), unless another signal comes first: then the daemon does not
    /// wait any longer (false). What was not shipped is safe in each database's local
    /// log and its WAL, and the next `walvault replicate` ships it.
    pub async fn stop_or_quit(
        &mut self,
        stop: &tokio::sync::watch::Sender<bool>,
        signals: &mut super::exec::Signals,
    ) -> bool {
        tokio::select! {
            () = self.stop(stop) => true,
            _ = signals.received() => {
                eprintln!(
                    "walvault: error: a second signal: exiting without waiting for the \
                     store; what was not shipped stays in the local logs and the next \
                     `walvault replicate` ships it"
                );
                self.tasks.abort_all();
                false
            }
        }
    }

    fn count(
        &mut self,
        joined: std::result::Result<(bool, Option<DbHandle>), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((true, _)) => {}
            Ok((false, handle)) => {
                self.failed += 1;
                self.failed_handles.extend(handle);
            }
            Err(e) => {
                eprintln!("walvault: error: a database task ended abnormally: {e}");
                self.failed += 1;
            }
        }
    }

    /// The process's status: the application's if it ran and failed, else 1 if a
    /// database failed, else 0.
    pub fn exit_code(&self, application: Option<u8>) -> std::process::ExitCode {
        match application {
            Some(code) if code != 0 => code.into(),
            _ if self.failed > 0 => std::process::ExitCode::FAILURE,
            _ => std::process::ExitCode::SUCCESS,
        }
    }
}

/// Waits for every receiver; false as soon as one's sender is dropped unsent (its task
/// failed before it was ready).
async fn all_ready(ready: Vec<oneshot::Receiver<()>>) -> bool {
    for rx in ready {
        if rx.await.is_err() {
            return false;
        }
    }
    true
}

/// One database until the stop: true if it ended well. Its error is printed here, as it
/// happens, not when the whole daemon ends.
async fn task<S: Store + Send + Sync + 'static>(
    store: S,
    spec: Spec,
    mut stop: Stop,
    ready: oneshot::Sender<()>,
    monitor: Monitor,
) -> (bool, Option<DbHandle>) {
    let mut failed = None;
    match replicate(store, &spec, &mut stop, ready, &monitor, &mut failed).await {
        Ok(()) => (true, None),
        Err(e) => {
            let message = e.to_string().replace('\n', " ");
            eprintln!("walvault: error: {}{message}", spec.label);
            (false, failed)
        }
    }
}

async fn replicate<S: Store>(
    store: S,
    spec: &Spec,
    stop: &mut Stop,
    ready: oneshot::Sender<()>,
    monitor: &Monitor,
    failed: &mut Option<DbHandle>,
) -> Result<()> {
    if spec.restore_if_missing && !restore_if_missing(&store, spec, stop, None).await? {
        return Ok(());
    }
    let mut ready = Some(ready);
    let config = replicator_config(spec);
    let dir = config.log.dir.clone();
    let Some(replicator) = open(&store, spec, config, stop, &mut ready).await? else {
        spec.say(
            "stopped",
            || "stopped before the database was created; nothing to ship".into(),
            json!({ "shipped": false }),
        );
        return Ok(());
    };
    let db = monitor.register(DbInfo::of(&replicator, &spec.namespace, &spec.store));
    let maintainer = maintain(&store, &spec.namespace, spec)?;
    let outcome = follow(spec, replicator, stop, &db, || {
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
    })
    .await;
    if let Some(maintainer) = maintainer {
        maintainer.stop().await;
    }
    let stopped = stop_replicator(outcome, spec, &dir).await;
    match &stopped {
        Ok(()) => db.stopped(),
        Err(e) => {
            db.failed(e);
            *failed = Some(db);
        }
    }
    stopped
}

/// The replicator's settings for `spec`.
fn replicator_config(spec: &Spec) -> ReplicatorConfig {
    let mut config = ReplicatorConfig::new(&spec.db);
    config.max_lag = spec.max_lag;
    config.log.seal_age = spec.seal_age.unwrap_or(spec.max_lag);
    config
}

/// `--restore-if-missing`: when the database file does not exist, restores it from the
/// store's latest commit, if the store has one. A store that does not answer is waited
/// for (for at most `give_up` of failures, when given): starting the application on an
/// empty database while its history is out of reach would fork that history. False if
/// a stop came first (a restore under way is then cancelled; its temp file is removed).
async fn restore_if_missing<S: Store>(
    store: &S,
    spec: &Spec,
    stop: &mut Stop,
    give_up: Option<Duration>,
) -> Result<bool> {
    if spec.db.exists() {
        return Ok(true);
    }
    let mut wait = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    loop {
        let restored = tokio::select! {
            restored = restore_latest(store, spec) => restored,
            _ = stop.received() => return Ok(false),
        };
        match restored {
            Ok(()) => return Ok(true),
            Err(e) if e.is_transient() && give_up.is_some_and(|g| started.elapsed() >= g) => {
                return Err(e);
            }
            Err(e) if e.is_transient() => {
                eprintln!(
                    "walvault: warning: {}cannot restore {} yet ({e}); trying again in {wait:?}",
                    spec.label,
                    spec.db.display()
                );
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.received() => return Ok(false),
        }
        wait = (wait * 2).min(START_BACKOFF);
    }
}

async fn restore_latest<S: Store>(store: &S, spec: &Spec) -> Result<()> {
    if restore::boot_plan(store, &spec.namespace, &spec.db).await? == restore::Boot::NoReplica {
        spec.say(
            "no_replica",
            || {
                format!(
                    "{} does not exist and namespace {} has no commits in {}: starting \
                     without a restore",
                    spec.db.display(),
                    spec.namespace,
                    spec.store
                )
            },
            json!({ "store": spec.store }),
        );
        return Ok(());
    }
    if let Some(summary) = restore::restore_if_missing(store, &spec.namespace, &spec.db).await? {
        let at = args::rfc3339(summary.timestamp);
        spec.say(
            "restored",
            || {
                format!(
                    "restored {} from namespace {} at frame {} ({at})",
                    spec.db.display(),
                    spec.namespace,
                    summary.frame_no,
                )
            },
            json!({ "frame_no": summary.frame_no, "timestamp": at }),
        );
    }
    Ok(())
}

/// Opens the replicator: waits for a database that does not exist yet (the application
/// creates it; `ready` is sent meanwhile, so `--exec` starts the application) and for a
/// store that does not answer yet. None if a stop came first.
async fn open<S: Store>(
    store: &S,
    spec: &Spec,
    config: ReplicatorConfig,
    stop: &mut Stop,
    ready: &mut Option<oneshot::Sender<()>>,
) -> Result<Option<Replicator<S>>> {
    let mut created_late = false;
    let mut said = None;
    let mut wait = Duration::from_secs(1);
    loop {
        let pause = match not_ready(&spec.db, created_late) {
            Some(why) => {
                created_late = true;
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
                if said.as_deref() != Some(why.as_str()) {
                    spec.say(
                        "waiting",
                        || format!("waiting: {why}"),
                        json!({ "why": why }),
                    );
                    said = Some(why);
                }
                CREATION_POLL
            }
            None => {
                let opened =
                    Replicator::open(store.clone(), spec.namespace.clone(), config.clone()).await;
                match opened {
                    Ok(replicator) => return Ok(Some(replicator)),
                    Err(e) if e.is_transient() => {
                        eprintln!(
                            "walvault: warning: {}cannot start yet ({e}); trying again in {wait:?}",
                            spec.label
                        );
                    }
                    Err(e) => return Err(e),
                }
                let pause = wait;
                wait = (wait * 2).min(START_BACKOFF);
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.received() => {
                // The application may have created the database and committed since the
                // last look (and then exited, which is why the stop came), or the store
                // may answer now: one last try, so the commits are shipped before the
                // daemon exits, or its error says they were not.
                match not_ready(&spec.db, created_late) {
                    None => {}
                    Some(_) if !spec.db.exists() => return Ok(None),
                    // The application made a database walvault cannot replicate.
                    Some(why) => {
                        return Err(InvalidInput::Config(format!(
                            "stopping: {why}; nothing of it was replicated (walvault \
                             replicates databases in WAL mode: PRAGMA journal_mode=WAL)"
                        ))
                        .into())
                    }
                }
                let opened = Replicator::open(store.clone(), spec.namespace.clone(), config).await;
                return opened.map(Some);
            }
        }
    }
}

/// Why the database cannot be opened yet, if it cannot: it does not exist, or (when it
/// did not exist at the start, so the application is creating it) it has no header
/// yet or is not in WAL mode yet.
fn not_ready(db: &Path, created_late: bool) -> Option<String> {
    if !db.exists() {
        return Some(format!("{} does not exist yet", db.display()));
    }
    if !created_late {
        return None;
    }
    let mut header = [0u8; 20];
    let read = std::fs::File::open(db).and_then(|mut f| {
        use std::io::Read;
        f.read_exact(&mut header)
    });
    match read {
        // Bytes 18 and 19 are the file format's read and write versions: 2 in WAL mode.
        Ok(()) if header[18] == 2 && header[19] == 2 => None,
        Ok(()) => Some(format!("{} is not in WAL mode yet", db.display())),
        Err(_) => Some(format!("{} has no SQLite header yet", db.display())),
    }
}

/// `--once`: ships each database, waits until it is durable (giving up after
/// [`ONCE_GIVE_UP`] of store failures), reports.
pub async fn once_all(specs: Vec<Spec>) -> Result<()> {
    let mut failed = Vec::new();
    let count = specs.len();
    for spec in specs {
        let shipped = match args::open_store(&spec.store) {
            Ok(args::Opened::Local(store)) => once(store, &spec).await,
            Ok(args::Opened::Object(store)) => once(store, &spec).await,
            Err(e) => Err(e),
        };
        if let Err(e) = shipped {
            // Each database is tried; the first error is the command's.
            if count > 1 {
                eprintln!(
                    "walvault: error: {}{}",
                    spec.label,
                    e.to_string().replace('\n', " ")
                );
            }
            failed.push(e);
        }
    }
    match failed.len() {
        0 => Ok(()),
        1 if count == 1 => Err(failed.remove(0)),
        n => {
            Err(InvalidInput::Config(format!("{n} of {count} databases failed (see above)")).into())
        }
    }
}

async fn once<S: Store>(store: S, spec: &Spec) -> Result<()> {
    if spec.restore_if_missing {
        let mut never = never_stop();
        restore_if_missing(&store, spec, &mut never, Some(ONCE_GIVE_UP)).await?;
    }
    let mut config = replicator_config(spec);
    config.log.store_retry.give_up_after = Some(ONCE_GIVE_UP);
    let mut replicator = Replicator::open(store.clone(), spec.namespace.clone(), config).await?;
    let report = replicator.run_once().await?;
    replicator.close().await?;
    let durable = walvault::Storage::durable_frame_no(&store, &spec.namespace, None).await?;
    spec.say(
        "replicated",
        || {
            format!(
                "replicated {}: {} transactions, {} frames{}; durable frame {durable}",
                spec.db.display(),
                report.transactions,
                report.frames,
                snapshot_note(&report),
            )
        },
        json!({
            "transactions": report.transactions,
            "frames": report.frames,
            "snapshot": report.snapshot,
            "snapshot_reason": report.snapshot_reason.map(|r| r.to_string()),
            "durable_frame_no": durable,
        }),
    );
    Ok(())
}

/// A stop that never comes (for `--once`, which a signal simply ends).
fn never_stop() -> Stop {
    Stop(None)
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

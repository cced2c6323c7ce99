//! `walvault replicate`: ship SQLite databases' WALs into their stores.
//!
//! One database from flags (`--db`), or every `[[db]]` of the config file, each on a task
//! of its own in one process (`database.rs`: restore on boot, waiting for the database
//! to be created, the poll loop, the stop). `--exec` runs the application under the
//! daemon (`exec.rs`). What the process does with signals:
//! * without `--exec`, SIGINT or SIGTERM stops every database: what was committed is
//!   shipped and made durable, then the process exits;
//! * with `--exec`, the signal goes to the application; when the application exits, for
//!   whatever reason, every database is stopped the same way and the process exits with
//!   the application's status (128 + the signal's number if a signal ended it).
//!
//! A database that fails for good (not in WAL mode, a store refusing the credentials)
//! stops alone: its error is printed, the others go on, and the process exits with
//! status 1 at the end (or the application's status, if that is not 0).

mod database;
mod exec;
mod shipping;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;
use walvault::{Error, InvalidInput, NamespaceName, Result};

use crate::args;
use crate::config::{Config, DbOptions};
use crate::monitor::Monitor;
use crate::output::Output;
use crate::Context;

pub use database::stem;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQLite database (in WAL mode). Without it, every database of the config
    /// file (walvault.toml).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Namespace in the store (default: the database file's stem).
    #[arg(long, requires = "db")]
    namespace: Option<String>,
    /// Ship what is there, wait until it is durable, and exit.
    #[arg(long, conflicts_with = "exec")]
    once: bool,
    /// The longest a commit waits before it is sent to the store (the store's own
    /// latency comes on top). Under steady writes a segment is sent every tenth of it;
    /// after a quiet spell a commit is sent at once. Default 1s.
    #[arg(long, value_parser = at_least_10ms)]
    max_lag: Option<Duration>,
    /// How often to look at the WAL when the OS reports no change: the safety net under
    /// file-change notification (which wakes the daemon at each write). Without
    /// notification the WAL is looked at every tenth of --max-lag instead. Default 1s.
    #[arg(long, value_parser = at_least_10ms)]
    interval: Option<Duration>,
    /// Advanced: also seal the open segment once its first transaction is this old
    /// (default: --max-lag).
    #[arg(long, value_parser = at_least_10ms)]
    seal_age: Option<Duration>,
    /// Do not compact in the background. By default the daemon merges small segments
    /// in tiers (every second, every minute, every hour), keeping every commit restorable.
    #[arg(long)]
    no_compact: bool,
    /// Run the fast compaction tier, retention (--retain) and garbage collection of
    /// merged-away segments this often (default: 1s for the fast tier, 10m for collection).
    #[arg(long, value_parser = at_least_10ms)]
    maintain_every: Option<Duration>,
    /// Keep this point-in-time window and drop older history.
    #[arg(long, value_parser = args::duration)]
    retain: Option<Duration>,
    /// Delete merged-away segments only after this long. Default 1h.
    #[arg(long, value_parser = args::duration)]
    grace: Option<Duration>,
    /// When the database file does not exist, restore it from the store first (when the
    /// store has it; otherwise the application starts it empty). For machines that
    /// start with an empty disk.
    #[arg(long)]
    restore_if_missing: bool,
    /// Start this command once every database has been shipped (split into words as a
    /// shell would, run without a shell: write `sh -c '...'` for pipes or `&&`), forward
    /// SIGINT and SIGTERM to it, and when it exits make everything durable and exit
    /// with its status.
    #[arg(long, value_name = "CMD", value_parser = exec_arg)]
    exec: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (for example 127.0.0.1:9090;
    /// config: `metrics`).
    #[arg(long, value_name = "ADDR", conflicts_with = "once")]
    metrics_addr: Option<SocketAddr>,
}

/// One database the daemon replicates, with every option resolved.
#[derive(Debug, Clone)]
pub struct Spec {
    pub db: PathBuf,
    pub namespace: NamespaceName,
    pub store: String,
    pub max_lag: Duration,
    pub interval: Duration,
    pub seal_age: Option<Duration>,
    pub compact: bool,
    pub maintain_every: Option<Duration>,
    pub retain: Option<Duration>,
    pub grace: Duration,
    pub restore_if_missing: bool,
    /// What the database's lines start with: empty with one database, `[app.db] `
    /// with several.
    pub label: String,
    pub out: Output,
}

impl Spec {
    /// Reports one event on stdout: a line for people (after the label), or with
    /// `--json` one object `{"event", "db", "namespace", ...fields}`.
    pub fn say(&self, event: &str, human: impl FnOnce() -> String, fields: serde_json::Value) {
        self.out.emit(
            || format!("{}{}", self.label, human()),
            || {
                let mut value = serde_json::json!({
                    "event": event,
                    "db": self.db.display().to_string(),
                    "namespace": self.namespace.as_str(),
                });
                if let (Some(all), serde_json::Value::Object(more)) =
                    (value.as_object_mut(), fields)
                {
                    all.extend(more);
                }
                value
            },
        );
    }
}

/// `--exec`: a command line that splits into words (see `exec.rs`).
fn exec_arg(text: &str) -> std::result::Result<String, String> {
    exec::words(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// A lag or interval of at least 10 ms: shorter ones would have the daemon spin.
fn at_least_10ms(text: &str) -> std::result::Result<Duration, String> {
    let least = walvault::MIN_MAX_LAG;
    match args::duration(text)? {
        d if d < least => Err(format!("{text} is shorter than the shortest allowed, 10ms")),
        d => Ok(d),
    }
}

pub async fn run(context: &Context, a: Args, out: Output) -> Result<ExitCode> {
    let specs = specs(context, &a, out)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    if a.once {
        return database::once_all(specs).await.map(|()| ExitCode::SUCCESS);
    }
    let mut signals = exec::Signals::listen()?;
    let monitor = Monitor::new();
    let metrics = a
        .metrics_addr
        .or(context.config.as_ref().and_then(|c| c.metrics));
    if let Some(addr) = metrics {
        monitor.serve_metrics(addr).await?;
    }
    let mut running = database::start_all(specs, Stop(Some(stop_rx)), &monitor)?;
    // The application starts once every database has shipped what was there.
    let mut child = None;
    if let Some(command) = &a.exec {
        if !running.ready(&mut signals).await {
            running.stop(&stop_tx).await;
            out.emit(
                || {
                    "stopped before every database was ready (see above); the application \
                     was not started"
                        .into()
                },
                || serde_json::json!({ "event": "stopped", "application_started": false }),
            );
            // Not started is not success, unless a signal asked for it.
            return Ok(running.exit_code(None));
        }
        match exec::Child::spawn(command, out) {
            Ok(started) => child = Some(started),
            Err(e) => {
                // The databases are stopped as on any stop: what was shipped is made
                // durable.
                running.stop(&stop_tx).await;
                return Err(e);
            }
        }
    }
    let status = exec::supervise(child, &mut signals, &mut running, out).await;
    let stopped = running.stop_or_quit(&stop_tx, &mut signals).await;
    let status = status?;
    Ok(if stopped {
        running.exit_code(status)
    } else {
        ExitCode::FAILURE
    })
}

/// Every database to replicate: `--db`, or the config file's `[[db]]` tables (with the
/// flags given overriding the file's options).
fn specs(context: &Context, a: &Args, out: Output) -> Result<Vec<Spec>> {
    let flags = DbOptions {
        max_lag: a.max_lag,
        interval: a.interval,
        seal_age: a.seal_age,
        compact: a.no_compact.then_some(false),
        maintain_every: a.maintain_every,
        retain: a.retain,
        grace: a.grace,
        restore_if_missing: a.restore_if_missing.then_some(true),
    };
    if let Some(db) = &a.db {
        let name = match &a.namespace {
            Some(n) => n.clone(),
            None => stem(db)?,
        };
        let store = context.store_url(Some(&name));
        return Ok(vec![spec(
            db.clone(),
            &name,
            store,
            &flags,
            String::new(),
            out,
        )?]);
    }
    let Some(config) = &context.config else {
        return Err(InvalidInput::Config(format!(
            "say which database to replicate: --db app.db, or a config file listing them \
             ({}, --config PATH or WALVAULT_CONFIG)",
            crate::config::DEFAULT_FILE
        ))
        .into());
    };
    from_config(context, config, &flags, out)
}

fn from_config(
    context: &Context,
    config: &Config,
    flags: &DbOptions,
    out: Output,
) -> Result<Vec<Spec>> {
    if config.dbs.is_empty() {
        return Err(InvalidInput::Config(format!(
            "{} lists no databases: add a [[db]] table with a path",
            config.file.display()
        ))
        .into());
    }
    let several = config.dbs.len() > 1;
    config
        .dbs
        .iter()
        .map(|db| {
            let name = match &db.namespace {
                Some(n) => n.clone(),
                None => stem(&db.path)?,
            };
            let store = match (&context.store_flag, &db.store) {
                (None, Some(own)) => own.clone(),
                _ => context.store_url(None),
            };
            let label = if several {
                format!("[{}] ", db.path.display())
            } else {
                String::new()
            };
            let options = db.options.overridden_by(flags);
            spec(db.path.clone(), &name, store, &options, label, out)
        })
        .collect::<Result<Vec<_>>>()
        .and_then(one_writer_each)
}

/// Two databases must not write one namespace of one store (object stores do not fence
/// writers): the config file checks this as written, this checks it once `--store` has
/// had its say.
fn one_writer_each(specs: Vec<Spec>) -> Result<Vec<Spec>> {
    let mut seen = std::collections::HashMap::new();
    for spec in &specs {
        let key = (spec.store.as_str(), spec.namespace.as_str());
        if let Some(other) = seen.insert(key, &spec.db) {
            return Err(InvalidInput::Config(format!(
                "{} and {} would both replicate into namespace {} of {}; give one a \
                 namespace of its own",
                other.display(),
                spec.db.display(),
                spec.namespace,
                spec.store
            ))
            .into());
        }
    }
    Ok(specs)
}

fn spec(
    db: PathBuf,
    namespace: &str,
    store: String,
    o: &DbOptions,
    label: String,
    out: Output,
) -> Result<Spec> {
    let namespace = args::namespace(namespace).map_err(|e| {
        Error::from(InvalidInput::Config(format!(
            "{}: {e}; pass a namespace (--namespace, or namespace = \"...\" in the config)",
            db.display()
        )))
    })?;
    Ok(Spec {
        db,
        namespace,
        store,
        max_lag: o.max_lag.unwrap_or(walvault::DEFAULT_MAX_LAG),
        interval: o.interval.unwrap_or(Duration::from_secs(1)),
        seal_age: o.seal_age,
        compact: o.compact.unwrap_or(true),
        maintain_every: o.maintain_every,
        retain: o.retain,
        grace: o.grace.unwrap_or(Duration::from_secs(3600)),
        restore_if_missing: o.restore_if_missing.unwrap_or(false),
        label,
        out,
    })
}

/// Tells the database tasks to stop: set once, by a signal or the application's exit.
/// (None: a stop that never comes, for `--once`, which a signal simply ends.)
#[derive(Clone)]
pub struct Stop(Option<watch::Receiver<bool>>);

impl Stop {
    /// Resolves once the stop was asked for (at any time since the start).
    pub async fn received(&mut self) {
        match &mut self.0 {
            // An error means the sender is gone: the daemon is ending, so stop too.
            Some(rx) => drop(rx.wait_for(|stop| *stop).await),
            None => std::future::pending().await,
        }
    }
}

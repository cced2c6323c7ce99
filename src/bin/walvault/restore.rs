//! `walvault restore` and `walvault follow`.
//!
//! Boot flow for a fresh machine: `walvault restore --namespace app --output app.db
//! --if-db-missing --if-replica-exists && exec app` restores the latest state when the
//! database is missing and the store has it, and otherwise does nothing (exit 0, saying
//! why). [`restore_if_missing`] is the same decision for other commands.
//!
//! `--json` output is stable (fields are only ever added); times are RFC 3339 in UTC with
//! milliseconds.
//! * `restore --json`: one object, `{"namespace", "output" (path or null), "dry_run",
//!   "restored" (bool), "skipped" (null, "output exists" or "no replica"), "note" (null or
//!   text, such as a time after the latest commit)}`, and when a commit was chosen also
//!   `"frame_no", "time", "timestamp_ms", "page_size", "db_pages", "segments" (keys to
//!   read), "bytes", "after_latest"` (the requested time is after the latest commit,
//!   which was chosen), and after a restore `"segments_read", "integrity_check"`.
//! * `follow --json`: one object per line per event: `{"event": "position", "output",
//!   "namespace", "frame_no"}` each time the output moved to a new durable frame (and once
//!   at the start), `{"event": "stopped", ...}` when a signal stopped it.

use crate::args::Store;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use walvault::{
    plan_restore, restore_database, Error, Follower, InstallOptions, InvalidInput, NamespaceName,
    RestoreOptions, RestorePlan, RestoreProgress, RestoreSummary, Result,
};

use crate::args;
use crate::inspect;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace to restore.
    #[arg(long)]
    pub(crate) namespace: String,
    /// Restore the last commit at or before this time (RFC 3339). A time after the
    /// latest commit restores the latest commit, with a note saying so.
    #[arg(long, value_parser = args::time, conflicts_with = "frame")]
    at: Option<DateTime<Utc>>,
    /// Restore the last commit at or before this frame number.
    #[arg(long)]
    frame: Option<u64>,
    /// The database file to write (optional with --dry-run).
    #[arg(long, required_unless_present = "dry_run")]
    output: Option<PathBuf>,
    /// Print the plan (segments, bytes) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run SQLite's PRAGMA integrity_check on the result before it is put in place.
    #[arg(long)]
    integrity_check: bool,
    /// Replace the output database if it exists, and remove its -wal, -shm and
    /// -journal files; refused while another process has it open.
    #[arg(long, conflicts_with = "if_db_missing")]
    force: bool,
    /// Boot flow: when the output database exists, do nothing and exit 0 (saying so).
    #[arg(long)]
    if_db_missing: bool,
    /// Boot flow: when the store has no commits of the namespace (no such namespace, or
    /// no local store directory), do nothing and exit 0 (saying so) instead of failing.
    #[arg(long)]
    if_replica_exists: bool,
}

/// Why a boot-time restore has nothing to do, or that it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// The database file exists: it is the newer state, never overwritten.
    DbExists,
    /// The store has no commits of the namespace (or not the namespace at all).
    NoReplica,
    /// The database is missing and the store has commits: restore the latest.
    Restore,
}

impl Boot {
    /// Why nothing is done, in the words `restore --json` uses (`skipped`).
    fn reason(self) -> Option<&'static str> {
        match self {
            Boot::DbExists => Some("output exists"),
            Boot::NoReplica => Some("no replica"),
            Boot::Restore => None,
        }
    }
}

/// What a machine starting up should do for `db`: nothing when it exists, nothing when
/// the store holds no commits of `namespace`, else restore. Looks only; writes nothing.
pub async fn boot_plan<S: Store>(store: &S, namespace: &NamespaceName, db: &Path) -> Result<Boot> {
    if exists(db) {
        return Ok(Boot::DbExists);
    }
    if !has_commits(store, namespace).await? {
        return Ok(Boot::NoReplica);
    }
    Ok(Boot::Restore)
}

/// The boot flow in one call (for `replicate --restore-if-missing` and the like): when
/// `db` does not exist and the store has commits of `namespace`, restores the latest
/// commit to `db` and returns its summary; otherwise returns `None` and touches nothing
/// (use [`boot_plan`] first to tell *why*, for a log line). The restore is the library's
/// atomic one: a temp file beside `db`, renamed into place, never a partial file; it does
/// not run `integrity_check` (every frame is checksummed on the way).
pub async fn restore_if_missing<S: Store>(
    store: &S,
    namespace: &NamespaceName,
    db: &Path,
) -> Result<Option<RestoreSummary>> {
    if boot_plan(store, namespace, db).await? != Boot::Restore {
        return Ok(None);
    }
    let options = InstallOptions::default();
    let summary =
        restore_database(store, namespace, RestoreOptions::Latest, db, options, None).await?;
    Ok(Some(summary))
}

/// Whether the store has at least one segment of `namespace` (a namespace it does not
/// list has none).
async fn has_commits<S: Store>(store: &S, namespace: &NamespaceName) -> Result<bool> {
    if !store.namespaces().await?.contains(namespace) {
        return Ok(false);
    }
    let listing = store.list_segments(namespace, 0, None);
    tokio::pin!(listing);
    match listing.next().await {
        Some(first) => first.map(|_| true),
        None => Ok(false),
    }
}

/// A path exists when anything is there, also a dangling symlink (never replaced
/// silently).
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Before the store is opened: the boot flags' answers that need no store, `None` when
/// the restore has to open it. `--if-db-missing` with an existing output, and
/// `--if-replica-exists` with a local store directory that does not exist, finish here.
pub fn without_store(a: &Args, url: &str, out: Output) -> Option<Result<()>> {
    if a.if_db_missing && a.output.as_deref().is_some_and(exists) {
        skipped(a, Boot::DbExists, out);
        return Some(Ok(()));
    }
    let dir = args::local_dir(url)?;
    if a.if_replica_exists && !dir.is_dir() {
        skipped(a, Boot::NoReplica, out);
        return Some(Ok(()));
    }
    None
}

/// Says why the restore did nothing: on stderr for people, the JSON object on stdout.
fn skipped(a: &Args, why: Boot, out: Output) {
    let output = a.output.as_deref().map(Path::display);
    match why {
        Boot::DbExists => eprintln!(
            "walvault: {} exists; nothing restored (--if-db-missing)",
            output.map(|p| p.to_string()).unwrap_or_default()
        ),
        _ => eprintln!(
            "walvault: the store has no commits of namespace {}; nothing restored \
             (--if-replica-exists)",
            a.namespace
        ),
    }
    out.json(&json!({
        "namespace": a.namespace,
        "output": a.output.as_deref().map(|p| p.display().to_string()),
        "dry_run": a.dry_run,
        "restored": false,
        "skipped": why.reason(),
        "note": Value::Null,
    }));
}

/// Refuses, before anything is planned, an output the restore could not write: one that
/// exists (without --force) or one in a directory that does not exist.
fn check_output(output: &Path, force: bool) -> Result<()> {
    if exists(output) && !force {
        return Err(InvalidInput::Output(format!(
            "{} exists; pass --force to replace it (or --if-db-missing to keep it)",
            output.display()
        ))
        .into());
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(InvalidInput::Output(format!(
            "the directory {} of {} does not exist",
            dir.display(),
            output.display()
        ))
        .into());
    }
    Ok(())
}

pub async fn run<S: Store>(store: S, a: Args, out: Output) -> Result<()> {
    // Listening from the start: a Ctrl-C at any point cancels the restore, whose temp
    // file is then removed, rather than killing the process and leaving it behind.
    let mut stop = args::StopSignal::listen()?;
    let namespace = args::namespace(&a.namespace)?;
    if a.if_db_missing && a.output.as_deref().is_some_and(exists) {
        skipped(&a, Boot::DbExists, out);
        return Ok(());
    }
    let names = store.namespaces().await?;
    if !names.contains(&namespace) || !has_commits(&store, &namespace).await? {
        if a.if_replica_exists {
            skipped(&a, Boot::NoReplica, out);
            return Ok(());
        }
        if !names.contains(&namespace) {
            return Err(inspect::unknown(&namespace, &names));
        }
    }
    let output = match (&a.output, a.dry_run) {
        (Some(output), false) => {
            check_output(output, a.force)?;
            Some(output.clone())
        }
        (output, _) => output.clone(),
    };
    let options = match (a.at, a.frame) {
        (Some(t), _) => RestoreOptions::Timestamp(t),
        (None, Some(n)) => RestoreOptions::FrameNo(n),
        (None, None) => RestoreOptions::Latest,
    };
    let plan = plan_restore(&store, &namespace, options, None).await?;
    let note = after_latest(&store, &namespace, a.at, &plan).await?;
    if let Some(note) = &note {
        eprintln!("walvault: note: {note}");
    }
    let mut report = plan_json(
        &namespace,
        output.as_deref(),
        &plan,
        note.as_deref(),
        a.dry_run,
    );
    out.line(format!(
        "plan: commit at frame {} ({}), {} pages of {} bytes, {} segments, {} bytes to read",
        plan.frame_no,
        args::rfc3339(plan.timestamp),
        plan.db_pages,
        plan.page_size,
        plan.segments.len(),
        plan.bytes
    ));
    let Some(output) = output.filter(|_| !a.dry_run) else {
        for key in &plan.segments {
            out.line(format!("  {key}"));
        }
        out.json(&report);
        return Ok(());
    };
    let progress = RestoreProgress::new();
    let (finished, done) = tokio::sync::watch::channel(false);
    let shown = show_progress(
        &format!("restoring {namespace}"),
        &progress,
        plan.db_pages,
        done,
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let install = InstallOptions {
        force: a.force,
        integrity_check: a.integrity_check,
        cancel: Some(Arc::clone(&cancel)),
    };
    // On a task of its own, so a signal is seen while the restore writes pages.
    let restore = {
        let (store, namespace, output, progress) = (
            store.clone(),
            namespace.clone(),
            output.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            let progress = Some(&progress);
            restore_database(&store, &namespace, options, &output, install, progress).await
        })
    };
    let summary = stop_on_signal(restore, &mut stop, &cancel, &output).await;
    let _ = finished.send(true);
    let _ = shown.await; // the bar is cleared before anything else is printed
    let summary = summary?;
    out.line(format!(
        "restored {namespace} to {} at frame {} ({}): {} pages, {} segments read{}",
        output.display(),
        summary.frame_no,
        args::rfc3339(summary.timestamp),
        summary.db_pages,
        summary.segments_read,
        if a.integrity_check {
            ", integrity_check ok"
        } else {
            ""
        }
    ));
    report["restored"] = json!(true);
    report["segments_read"] = json!(summary.segments_read);
    report["integrity_check"] = json!(a.integrity_check);
    out.json(&report);
    Ok(())
}

/// A note when `--at` is after the latest commit, which is then what is restored: a
/// future time would otherwise silently give "now".
async fn after_latest<S: Store>(
    store: &S,
    namespace: &NamespaceName,
    at: Option<DateTime<Utc>>,
    plan: &RestorePlan,
) -> Result<Option<String>> {
    let Some(at) = at.filter(|at| *at > plan.timestamp) else {
        return Ok(None);
    };
    let durable = store.durable_frame_no(namespace, None).await?;
    if plan.frame_no < durable {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} is after the latest commit of {namespace} (frame {} at {}); restoring that",
        args::rfc3339(at),
        plan.frame_no,
        args::rfc3339(plan.timestamp)
    )))
}

/// The JSON object of a planned restore (completed by `run` once it restored).
fn plan_json(
    namespace: &NamespaceName,
    output: Option<&Path>,
    plan: &RestorePlan,
    note: Option<&str>,
    dry_run: bool,
) -> Value {
    json!({
        "namespace": namespace.as_str(),
        "output": output.map(|p| p.display().to_string()),
        "dry_run": dry_run,
        "restored": false,
        "skipped": Value::Null,
        "note": note,
        "frame_no": plan.frame_no,
        "time": args::rfc3339(plan.timestamp),
        "timestamp_ms": plan.timestamp.timestamp_millis(),
        "page_size": plan.page_size,
        "db_pages": plan.db_pages,
        "segments": plan.segments.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "bytes": plan.bytes,
        "after_latest": note.is_some(),
    })
}

/// Waits for the restore, cancelling it on SIGINT or SIGTERM: the error then says so
/// (unless the restore had finished already, which is then reported as it is).
async fn stop_on_signal(
    mut restore: tokio::task::JoinHandle<Result<walvault::RestoreSummary>>,
    stop: &mut args::StopSignal,
    cancel: &AtomicBool,
    output: &Path,
) -> Result<walvault::RestoreSummary> {
    tokio::select! {
        done = &mut restore => return joined(done),
        _ = stop.received() => {}
    }
    cancel.store(true, Ordering::Relaxed);
    restore.abort(); // at its next await, if it does not see `cancel` first
    match joined(restore.await) {
        Ok(summary) => Ok(summary),
        Err(_) => Err(interrupted(output)),
    }
}

fn joined(
    done: std::result::Result<Result<walvault::RestoreSummary>, tokio::task::JoinError>,
) -> Result<walvault::RestoreSummary> {
    match done {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(Error::Closed),
        Err(e) => Err(Error::io("restoring", std::io::Error::other(e.to_string()))),
    }
}

/// The error of a restore stopped by SIGINT or SIGTERM (its future was dropped, which
/// removed its temp file).
fn interrupted(output: &Path) -> Error {
    let reason = std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        format!(
            "stopped by a signal; {} was left as it was and the temp file removed",
            output.display()
        ),
    );
    Error::io(format!("restoring {}", output.display()), reason)
}

/// Shows how far a restore has come until `done` is set: a progress bar (pages written
/// of `total`) on a terminal, a plain line at each tenth otherwise. When plain, the
/// last line always says where the restore ended, so a restore too quick for the first
/// look still reports its pages.
fn show_progress(
    message: &str,
    progress: &RestoreProgress,
    total: u32,
    done: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let progress = progress.clone();
    let message = message.to_string();
    let plan_total = u64::from(total);
    // The plan's total, until the restore has found its own target.
    let written = {
        let progress = progress.clone();
        move || progress.pages_written()
    };
    let total = move || match progress.pages_total() {
        0 => plan_total,
        found => found,
    };
    let mut done = done;
    let terminal = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let bar = terminal.then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} pages ({percent}%, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(total())
                .with_style(style)
                .with_message(message.clone())
        });
        let _clear = ClearOnDrop(bar.clone());
        let mut shown = None;
        loop {
            let finished = *done.borrow();
            let (written, total) = (written(), total());
            match &bar {
                Some(bar) => {
                    bar.set_length(total);
                    bar.set_position(written);
                }
                // Nothing written yet is not progress: a line of 0/N would read as a
                // failure.
                None if written > 0 => {
                    let tenths = (written * 10).checked_div(total).unwrap_or(10);
                    if shown != Some(tenths) {
                        eprintln!("{message}: {written}/{total} pages");
                        shown = Some(tenths);
                    }
                }
                None => {}
            }
            if finished {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), done.changed()).await;
        }
    })
}

/// Clears the bar when the task showing it ends (it is aborted when the restore ends).
struct ClearOnDrop(Option<indicatif::ProgressBar>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct FollowArgs {
    /// The namespace to follow (it must be in the store).
    #[arg(long)]
    pub(crate) namespace: String,
    /// The local database file kept in step.
    #[arg(long)]
    output: PathBuf,
    /// How often to look for new durable frames, above zero (the replica lags the store
    /// by about half of it on average).
    #[arg(long, default_value = "250ms", value_parser = args::positive_duration)]
    interval: Duration,
    /// Bring the output up to date once and exit.
    #[arg(long)]
    once: bool,
}

/// At most one "at frame" line this often while following (JSON: every move).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Follows a namespace with [`Follower`]: restores the latest state once, then applies
/// each new durable transaction in place, recording its position beside the output.
pub async fn follow<S: Store>(store: S, a: FollowArgs, out: Output) -> Result<()> {
    let namespace = inspect::known(&store, &a.namespace).await?;
    let mut follower = Follower::open(store, namespace.clone(), &a.output)?;
    let (mut reported, mut sent) = (None, None);
    let mut printed: Option<tokio::time::Instant> = None;
    let mut stop = args::StopSignal::listen()?;
    let event = |name: &str, frame_no: u64| {
        json!({
            "event": name,
            "output": a.output.display().to_string(),
            "namespace": namespace.as_str(),
            "frame_no": frame_no,
        })
    };
    loop {
        let position = follower.catch_up().await?;
        // A line when the position moves, at most one every REPORT_EVERY.
        let due = printed.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if sent != Some(position) {
            out.json(&event("position", position));
            sent = Some(position);
        }
        if !out.is_json() && reported != Some(position) && (due || a.once) {
            out.line(format!("{}: at frame {position}", a.output.display()));
            reported = Some(position);
            printed = Some(tokio::time::Instant::now());
        }
        if a.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = stop.received() => {
                out.json(&event("stopped", position));
                return Ok(());
            }
        }
    }
}

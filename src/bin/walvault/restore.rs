//! `walvault restore` and `walvault follow`.

use crate::args::Store;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use walvault::{
    plan_restore, restore_database, Error, Follower, InstallOptions, RestoreOptions,
    RestoreProgress, Result,
};

use crate::args;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace to restore.
    #[arg(long)]
    pub(crate) namespace: String,
    /// Restore the last commit at or before this time (RFC 3339).
    #[arg(long, value_parser = args::time, conflicts_with = "frame")]
    at: Option<DateTime<Utc>>,
    /// Restore the last commit at or before this frame number.
    #[arg(long)]
    frame: Option<u64>,
    /// The database file to write.
    #[arg(long)]
    output: PathBuf,
    /// Print the plan (segments, bytes) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run SQLite's PRAGMA integrity_check on the result before it is put in place.
    #[arg(long)]
    integrity_check: bool,
    /// Replace the output database if it exists, and remove its -wal, -shm and
    /// -journal files; refused while another process has it open.
    #[arg(long)]
    force: bool,
}

pub async fn run<S: Store>(store: S, a: Args) -> Result<()> {
    // Listening from the start: a Ctrl-C at any point cancels the restore, whose temp
    // file is then removed, rather than killing the process and leaving it behind.
    let mut stop = args::StopSignal::listen()?;
    let namespace = args::namespace(&a.namespace)?;
    let options = match (a.at, a.frame) {
        (Some(t), _) => RestoreOptions::Timestamp(t),
        (None, Some(n)) => RestoreOptions::FrameNo(n),
        (None, None) => RestoreOptions::Latest,
    };
    let plan = plan_restore(&store, &namespace, options, None).await?;
    println!(
        "plan: commit at frame {} ({}), {} pages of {} bytes, {} segments, {} bytes to read",
        plan.frame_no,
        plan.timestamp.to_rfc3339(),
        plan.db_pages,
        plan.page_size,
        plan.segments.len(),
        plan.bytes
    );
    if a.dry_run {
        for key in &plan.segments {
            println!("  {key}");
        }
        return Ok(());
    }
    let progress = RestoreProgress::new();
    let shown = show_progress(&format!("restoring {namespace}"), &progress, plan.db_pages);
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
            a.output.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            let progress = Some(&progress);
            restore_database(&store, &namespace, options, &output, install, progress).await
        })
    };
    let summary = stop_on_signal(restore, &mut stop, &cancel, &a.output).await;
    shown.abort();
    let _ = shown.await; // the bar is cleared before anything else is printed
    let summary = summary?;
    println!(
        "restored {namespace} to {} at frame {} ({}): {} pages, {} segments read{}",
        a.output.display(),
        summary.frame_no,
        summary.timestamp.to_rfc3339(),
        summary.db_pages,
        summary.segments_read,
        if a.integrity_check {
            ", integrity_check ok"
        } else {
            ""
        }
    );
    Ok(())
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

/// Shows how far a restore has come until the returned task is aborted: a progress bar
/// (pages written of `total`) on a terminal, a plain line at each tenth otherwise.
fn show_progress(
    message: &str,
    progress: &RestoreProgress,
    total: u32,
) -> tokio::task::JoinHandle<()> {
    let progress = progress.clone();
    let total = u64::from(total);
    let message = message.to_string();
    let terminal = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let bar = terminal.then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} pages ({percent}%, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(total)
                .with_style(style)
                .with_message(message.clone())
        });
        let _clear = ClearOnDrop(bar.clone());
        let mut tenths_shown = None;
        let mut total = total;
        loop {
            // The plan's total, until the restore has found its own target.
            total = match progress.pages_total() {
                0 => total,
                found => found,
            };
            if let Some(bar) = &bar {
                bar.set_length(total);
            }
            let written = progress.pages_written();
            match &bar {
                Some(bar) => bar.set_position(written),
                None => {
                    let tenths = (written * 10).checked_div(total).unwrap_or(10);
                    if tenths_shown != Some(tenths) {
                        eprintln!("{message}: {written}/{total} pages");
                        tenths_shown = Some(tenths);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
    /// The namespace to follow.
    #[arg(long)]
    pub(crate) namespace: String,
    /// The local database file kept in step.
    #[arg(long)]
    output: PathBuf,
    /// How often to look for new durable frames (the replica lags the store by about
    /// half of it on average).
    #[arg(long, default_value = "250ms", value_parser = args::duration)]
    interval: Duration,
    /// Bring the output up to date once and exit.
    #[arg(long)]
    once: bool,
}

/// At most one "at frame" line this often while following.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Follows a namespace with [`Follower`]: restores the latest state once, then applies
/// each new durable transaction in place, recording its position beside the output.
pub async fn follow<S: Store>(store: S, a: FollowArgs) -> Result<()> {
    let namespace = args::namespace(&a.namespace)?;
    let mut follower = Follower::open(store, namespace, &a.output)?;
    let mut reported = None;
    let mut printed: Option<tokio::time::Instant> = None;
    let mut stop = args::StopSignal::listen()?;
    loop {
        let position = follower.catch_up().await?;
        // A line when the position moves, at most one every REPORT_EVERY.
        let due = printed.is_none_or(|at| at.elapsed() >= REPORT_EVERY);
        if reported != Some(position) && (due || a.once) {
            println!("{}: at frame {position}", a.output.display());
            reported = Some(position);
            printed = Some(tokio::time::Instant::now());
        }
        if a.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = stop.received() => return Ok(()),
        }
    }
}

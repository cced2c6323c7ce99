//! `walvault restore` and `walvault follow`.

use crate::args::Store;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use walvault::{
    integrity_check, plan_restore, restore_to_path_with_progress, Error, Follower, InvalidInput,
    NamespaceName, RestoreOptions, RestoreProgress, Result,
};

use crate::args;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace to restore.
    #[arg(long)]
    namespace: String,
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
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
}

pub async fn run<S: Store>(store: S, a: Args) -> Result<()> {
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
    if a.output.exists() && !a.force {
        return Err(InvalidInput::Output(format!(
            "{} exists; pass --force to replace it",
            a.output.display()
        ))
        .into());
    }
    let progress = RestoreProgress::new();
    let shown = show_progress(&format!("restoring {namespace}"), &progress, plan.db_pages);
    let summary = restore_into(
        &store,
        &namespace,
        options,
        &a.output,
        a.integrity_check,
        &progress,
    )
    .await;
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

/// Restores into a temp file beside `output`, checks it if asked, then renames it over
/// `output`: an error leaves `output` as it was.
pub async fn restore_into<S: Store>(
    store: &S,
    namespace: &NamespaceName,
    options: RestoreOptions,
    output: &Path,
    check: bool,
    progress: &RestoreProgress,
) -> Result<walvault::RestoreSummary> {
    let tmp = sibling(output, ".walvault-restore");
    let _ = std::fs::remove_file(&tmp);
    let result = async {
        let summary =
            restore_to_path_with_progress(store, namespace, options, &tmp, None, progress).await?;
        if check {
            integrity_check(&tmp)?;
        }
        std::fs::rename(&tmp, output)
            .and_then(|()| sync_parent(output))
            .map_err(|e| Error::io(format!("putting {} in place", output.display()), e))?;
        Ok(summary)
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    result
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
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
    namespace: String,
    /// The local database file kept in step.
    #[arg(long)]
    output: PathBuf,
    /// How often to look for new durable frames.
    #[arg(long, default_value = "1s", value_parser = args::duration)]
    interval: Duration,
    /// Bring the output up to date once and exit.
    #[arg(long)]
    once: bool,
}

/// Follows a namespace with [`Follower`]: restores the latest state once, then applies
/// each new durable transaction in place, recording its position beside the output.
pub async fn follow<S: Store>(store: S, a: FollowArgs) -> Result<()> {
    let namespace = args::namespace(&a.namespace)?;
    let mut follower = Follower::open(store, namespace, &a.output)?;
    let mut reported = None;
    let mut stop = args::StopSignal::listen()?;
    loop {
        let position = follower.catch_up().await?;
        if reported != Some(position) {
            println!("{}: at frame {position}", a.output.display());
            reported = Some(position);
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

/// fsyncs the directory holding `path`, so a rename into it is durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

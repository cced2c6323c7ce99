//! `walvault replicate`: ship a SQLite database's WAL into the store.

use crate::args::Store;
use std::path::PathBuf;
use std::time::Duration;

use walvault::{Error, InvalidInput, Replicator, ReplicatorConfig, Result};

use crate::args;

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
    /// How often to look for new transactions.
    #[arg(long, default_value = "1s", value_parser = args::duration)]
    interval: Duration,
    /// Also compact the namespace (default policy) and collect its garbage this often.
    /// On the local backend this is the way to maintain a namespace that is being
    /// written, since only the writer's process may edit its manifest.
    #[arg(long, value_parser = args::duration)]
    maintain_every: Option<Duration>,
    /// With --maintain-every: keep this point-in-time window and drop older history.
    #[arg(long, value_parser = args::duration, requires = "maintain_every")]
    retain: Option<Duration>,
    /// With --maintain-every: delete unreferenced segments only after this long.
    #[arg(long, value_parser = args::duration, default_value = "1h")]
    grace: Duration,
}

/// One round of maintenance beside the writer: compaction, retention, garbage
/// collection. Reports what it did; a failure is reported and replication goes on.
async fn maintain<S: Store>(store: &S, namespace: &walvault::NamespaceName, a: &Args) {
    let round = async {
        let policy = walvault::CompactionPolicy::default();
        let compacted = walvault::compact(store, namespace, &policy, false).await?;
        let mut dropped = false;
        if let Some(window) = a.retain {
            let now = chrono::Utc::now();
            dropped = walvault::apply_retention(store, namespace, window, now, false)
                .await?
                .merge
                .is_some();
        }
        let options = walvault::GcOptions {
            grace: a.grace,
            dry_run: false,
        };
        let gc = store.collect_garbage(namespace, options, None).await?;
        Ok::<_, Error>((compacted.merges.len(), dropped, gc))
    };
    match round.await {
        Ok((0, false, gc)) if gc.deleted.is_empty() && gc.orphans.is_empty() => {}
        Ok((merges, dropped, gc)) => println!(
            "maintenance: {merges} merges{}; deleted {} segments",
            if dropped { ", old history dropped" } else { "" },
            gc.deleted.len() + gc.orphans.len()
        ),
        Err(e) => eprintln!("walvault: warning: maintenance failed (replication goes on): {e}"),
    }
}

pub async fn run<S: Store>(store: S, a: Args) -> Result<()> {
    let name = match &a.namespace {
        Some(n) => n.clone(),
        None => stem(&a.db)?,
    };
    let namespace = args::namespace(&name)?;
    let mut replicator = Replicator::open(
        store.clone(),
        namespace.clone(),
        ReplicatorConfig::new(&a.db),
    )
    .await?;
    if a.once {
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
        return Ok(());
    }
    println!(
        "replicating {} into namespace {namespace} every {:?}; Ctrl-C or SIGTERM stops",
        a.db.display(),
        a.interval
    );
    let mut stop = args::StopSignal::listen()?;
    let mut maintained = tokio::time::Instant::now();
    loop {
        let report = replicator.poll().await?;
        if a.maintain_every
            .is_some_and(|every| maintained.elapsed() >= every)
        {
            maintain(&store, &namespace, &a).await;
            maintained = tokio::time::Instant::now();
        }
        if report.transactions > 0 || report.snapshot {
            println!(
                "shipped {} transactions, {} frames{}",
                report.transactions,
                report.frames,
                snapshot_note(&report)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = stop.received() => break,
        }
    }
    replicator.close().await?;
    println!("stopped; everything shipped is durable");
    Ok(())
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

//! `walvault compact` and `walvault gc` keep a namespace's history small; `walvault
//! fork` branches one.
//!
//! On the local backend `compact` and `gc --retain` edit the namespace's manifest, which
//! only its writer may do: run them while no `walvault replicate` writes the namespace
//! (they fail with a clear error otherwise), or use `replicate --maintain-every`. On
//! object stores they run beside a writer without fencing it.
//!
//! `--json` output is stable (fields are only ever added); times are RFC 3339 in UTC with
//! milliseconds. A merge is `{"inputs": [key, ...], "input_bytes", "start_frame_no",
//! "end_frame_no", "output": key or null, "output_bytes"}` (`output` null in a dry run).
//! * `compact --json`: `{"namespace", "dry_run", "segments_before", "segments_after",
//!   "merges": [merge, ...]}`
//! * `gc --json`: `{"namespace", "dry_run", "retention": null or {"cutoff", "merge":
//!   merge or null}, "deleted": [key, ...], "orphans": [key, ...], "waiting",
//!   "kept_for_forks"}` (`retention` null without `--retain`)
//! * `fork --json`: `{"source", "target", "frame_no", "time", "inherited", "copied": null
//!   or {"start_frame_no", "end_frame_no"}, "floor"}`

use std::time::Duration;

use chrono::DateTime;
use chrono::Utc;
use walvault::{
    apply_retention, compact, CompactionPolicy, GcOptions, Merge, RestoreOptions, Result,
};

use crate::args::{self, Store};
use crate::inspect::known;
use crate::output::Output;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// The namespace to compact.
    #[arg(long)]
    pub(crate) namespace: String,
    /// Print the merges the policy asks for and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep only the last commit of each window of this length inside merged segments
    /// (such as 1s or 1m); by default every commit stays restorable.
    #[arg(long, value_parser = args::duration)]
    precision: Option<Duration>,
    /// Merged segments stop growing at this many MiB.
    #[arg(long, default_value_t = 64)]
    target_mib: u64,
    /// Segments of one size tier merged at a time.
    #[arg(long, default_value_t = 8)]
    fan_in: usize,
    /// At most this many segments below full size remain.
    #[arg(long, default_value_t = 8)]
    max_small: usize,
}

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The namespace to collect.
    #[arg(long)]
    pub(crate) namespace: String,
    /// Keep every moment of this window restorable (such as 7d or 12h); history before
    /// it is dropped. Without it only unreferenced segments are deleted.
    #[arg(long, value_parser = args::duration)]
    retain: Option<Duration>,
    /// Delete segments only once unreferenced for this long, so restores in flight and
    /// uploads in progress are never cut short.
    #[arg(long, value_parser = args::duration, default_value = "1h")]
    grace: Duration,
    /// Print what would be dropped and deleted, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct ForkArgs {
    /// The namespace to fork.
    #[arg(long)]
    pub(crate) namespace: String,
    /// The new namespace.
    #[arg(long)]
    to: String,
    /// Fork at the last commit at or before this time (RFC 3339).
    #[arg(long, value_parser = args::time, conflicts_with = "frame")]
    at: Option<DateTime<Utc>>,
    /// Fork at the last commit at or before this frame number.
    #[arg(long)]
    frame: Option<u64>,
}

pub async fn fork_cmd<S: Store>(store: S, a: ForkArgs, out: Output) -> Result<()> {
    let source = known(&store, &a.namespace).await?;
    let target = args::namespace(&a.to)?;
    let at = match (a.at, a.frame) {
        (Some(t), _) => RestoreOptions::Timestamp(t),
        (None, Some(n)) => RestoreOptions::FrameNo(n),
        (None, None) => RestoreOptions::Latest,
    };
    let report = store.fork(&source, &target, at, None).await?;
    let time = args::rfc3339(report.timestamp);
    out.emit(
        || format!(
            "forked {source} at frame {} ({time}) into {target}: {} segments shared{}; {target}'s frames start above {}",
            report.frame_no,
            report.inherited,
            report
                .copied
                .map(|k| format!(", frames {}..={} copied", k.start_frame_no, k.end_frame_no))
                .unwrap_or_default(),
            report.floor
        ),
        || json!({
            "source": source.as_str(),
            "target": target.as_str(),
            "frame_no": report.frame_no,
            "time": time,
            "inherited": report.inherited,
            "copied": report.copied.map(|k| json!({
                "start_frame_no": k.start_frame_no,
                "end_frame_no": k.end_frame_no,
            })),
            "floor": report.floor,
        }),
    );
    Ok(())
}

pub async fn compact_cmd<S: Store>(store: S, a: CompactArgs, out: Output) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let policy = CompactionPolicy {
        target_size: a.target_mib.saturating_mul(1 << 20),
        precision: a.precision.unwrap_or_default(),
        fan_in: a.fan_in,
        max_small: a.max_small,
        min_size: 0,
    };
    let report = compact(&store, &namespace, &policy, a.dry_run).await?;
    out.json(&json!({
        "namespace": namespace.as_str(),
        "dry_run": a.dry_run,
        "segments_before": report.segments_before,
        "segments_after": report.segments_after,
        "merges": report.merges.iter().map(merge_json).collect::<Vec<_>>(),
    }));
    let verb = if a.dry_run { "would merge" } else { "merged" };
    for m in &report.merges {
        print_merge(out, verb, m);
    }
    out.line(format!(
        "{namespace}: {} segments before, {} after{}",
        report.segments_before,
        report.segments_after,
        if a.dry_run { " (dry run)" } else { "" }
    ));
    Ok(())
}

pub async fn gc_cmd<S: Store>(store: S, a: GcArgs, out: Output) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let mut retention = serde_json::Value::Null;
    if let Some(window) = a.retain {
        let report = apply_retention(
            &store,
            &namespace,
            window,
            walvault::Clock::now(&walvault::SystemClock),
            a.dry_run,
        )
        .await?;
        let cutoff = args::rfc3339(report.cutoff);
        retention = json!({ "cutoff": cutoff, "merge": report.merge.as_ref().map(merge_json) });
        match &report.merge {
            Some(m) if a.dry_run => {
                out.line(format!(
                    "history before {cutoff} is in {} segments:",
                    m.inputs.len()
                ));
                print_merge(out, "would merge", m);
            }
            Some(m) => {
                out.line(format!("dropped history before {cutoff}:"));
                print_merge(out, "merged", m);
            }
            None => out.line(format!("no history before {cutoff}")),
        }
    }
    let options = GcOptions {
        grace: a.grace,
        dry_run: a.dry_run,
    };
    let report = store.collect_garbage(&namespace, options, None).await?;
    let keys = |keys: &[walvault::SegmentKey]| -> Vec<String> {
        keys.iter().map(ToString::to_string).collect()
    };
    out.json(&json!({
        "namespace": namespace.as_str(),
        "dry_run": a.dry_run,
        "retention": retention,
        "deleted": keys(&report.deleted),
        "orphans": keys(&report.orphans),
        "waiting": report.waiting,
        "kept_for_forks": report.kept_for_forks,
    }));
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for key in &report.deleted {
        out.line(format!("{verb} {key}"));
    }
    for key in &report.orphans {
        out.line(format!("{verb} {key} (orphan)"));
    }
    out.line(format!(
        "{namespace}: {verb} {} retired and {} orphan segments; {} wait for the grace period; {} kept for forks",
        report.deleted.len(),
        report.orphans.len(),
        report.waiting,
        report.kept_for_forks
    ));
    Ok(())
}

fn merge_json(m: &Merge) -> serde_json::Value {
    json!({
        "inputs": m.inputs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "input_bytes": m.input_bytes,
        "start_frame_no": m.inputs.first().map(|k| k.start_frame_no),
        "end_frame_no": m.inputs.last().map(|k| k.end_frame_no),
        "output": m.output.map(|k| k.to_string()),
        "output_bytes": m.output_bytes,
    })
}

fn print_merge(out: Output, verb: &str, m: &Merge) {
    let (first, last) = (m.inputs.first(), m.inputs.last());
    let range = match (first, last) {
        (Some(f), Some(l)) => format!("frames {}..={}", f.start_frame_no, l.end_frame_no),
        _ => "nothing".into(),
    };
    match &m.output {
        Some(key) => out.line(format!(
            "{verb} {} segments ({} bytes, {range}) into {key} ({} bytes)",
            m.inputs.len(),
            m.input_bytes,
            m.output_bytes
        )),
        None => out.line(format!(
            "{verb} {} segments ({} bytes, {range})",
            m.inputs.len(),
            m.input_bytes
        )),
    }
}

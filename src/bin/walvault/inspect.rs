//! `walvault ls`, `info` and `verify`: read-only looks at the store.
//!
//! `--json` output is stable: fields are only ever added.
//! * `ls --json`: `{"namespaces": ["name", ...]}`
//! * `ls --namespace N --json`: `{"namespace": N, "segments": [{"key", "start_frame_no",
//!   "end_frame_no", "first_commit", "last_commit", "size"}, ...]}` newest first, times
//!   in RFC 3339.
//! * `info --json`: `{"namespace", "durable_frame_no", "segments", "bytes",
//!   "first_commit", "last_commit"}` (times null when there are no segments).

use crate::args::Store;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio_stream::StreamExt;
use walvault::{Error, NamespaceName, Result, SegmentInfo};

use crate::args;

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// List this namespace's segments instead of the namespaces.
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// Print JSON (a stable, documented shape).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The namespace.
    #[arg(long)]
    pub(crate) namespace: String,
    /// Print JSON (a stable, documented shape).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The namespace.
    #[arg(long)]
    pub(crate) namespace: String,
}

pub async fn ls<S: Store>(store: S, a: LsArgs) -> Result<()> {
    let Some(name) = a.namespace else {
        let names = store.namespaces().await?;
        if a.json {
            let names: Vec<&str> = names.iter().map(NamespaceName::as_str).collect();
            println!("{}", json!({ "namespaces": names }));
        } else {
            names.iter().for_each(|n| println!("{n}"));
        }
        return Ok(());
    };
    let namespace = known(&store, &name).await?;
    let segments = segments(&store, &namespace).await?;
    if a.json {
        let list: Vec<_> = segments
            .iter()
            .map(|s| {
                json!({
                    "key": s.key.to_string(),
                    "start_frame_no": s.key.start_frame_no,
                    "end_frame_no": s.key.end_frame_no,
                    "first_commit": s.key.timestamp().to_rfc3339(),
                    "last_commit": ms(s.last_commit_ts).to_rfc3339(),
                    "size": s.size,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "namespace": namespace.as_str(), "segments": list })
        );
        return Ok(());
    }
    println!(
        "{:<62} {:>21} {:>25} {:>10}",
        "KEY", "FRAMES", "LAST COMMIT", "BYTES"
    );
    for s in &segments {
        println!(
            "{:<62} {:>21} {:>25} {:>10}",
            s.key.to_string(),
            format!("{}-{}", s.key.start_frame_no, s.key.end_frame_no),
            ms(s.last_commit_ts)
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            s.size
        );
    }
    Ok(())
}

pub async fn info<S: Store>(store: S, a: InfoArgs) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let durable = store.durable_frame_no(&namespace, None).await?;
    let segments = segments(&store, &namespace).await?;
    let bytes: u64 = segments.iter().map(|s| s.size).sum();
    let first = segments.last().map(|s| s.key.timestamp().to_rfc3339());
    let last = segments.first().map(|s| ms(s.last_commit_ts).to_rfc3339());
    if a.json {
        let value = json!({
            "namespace": namespace.as_str(),
            "durable_frame_no": durable,
            "segments": segments.len(),
            "bytes": bytes,
            "first_commit": first,
            "last_commit": last,
        });
        println!("{value}");
        return Ok(());
    }
    println!("namespace         {namespace}");
    println!("durable frame     {durable}");
    println!("segments          {}", segments.len());
    println!("bytes             {bytes}");
    println!("first commit      {}", first.as_deref().unwrap_or("-"));
    println!("last commit       {}", last.as_deref().unwrap_or("-"));
    Ok(())
}

pub async fn verify<S: Store>(store: S, a: VerifyArgs) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let report = walvault::verify_history(&store, &namespace).await?;
    for (key, why) in &report.problems {
        println!("BAD {key}: {why}");
    }
    if report.is_sound() {
        println!(
            "{namespace}: {} segments verified, every checksum matches; {} commits proved by \
             replaying the lineage chain{}",
            report.segments,
            report.commits_proved,
            match report.commits_unchecked {
                0 => String::new(),
                n => format!(" ({n} older commits carry no lineage checksum)"),
            }
        );
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "{} of {} segments of {namespace} failed verification (first: {})",
            report.problems.len(),
            report.segments,
            report.problems[0].0
        )))
    }
}

/// The namespace, if the store has it: an unknown one is an error, not an empty listing.
pub async fn known<S: Store>(store: &S, name: &str) -> Result<NamespaceName> {
    let namespace = args::namespace(name)?;
    if !store.namespaces().await?.contains(&namespace) {
        return Err(Error::NotFound(format!(
            "namespace {namespace} in the store"
        )));
    }
    Ok(namespace)
}

async fn segments<S: Store>(store: &S, namespace: &NamespaceName) -> Result<Vec<SegmentInfo>> {
    let listing = store.list_segments(namespace, 0, None);
    tokio::pin!(listing);
    let mut all = Vec::new();
    while let Some(info) = listing.next().await {
        all.push(info?);
    }
    Ok(all)
}

fn ms(ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or_default()
}

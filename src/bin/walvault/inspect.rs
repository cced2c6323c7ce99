//! `walvault ls`, `info` and `verify`: read-only looks at the store.
//!
//! `--json` output is stable: fields are only ever added. Times are RFC 3339 in UTC with
//! milliseconds (`2026-11-21T10:00:00.123Z`).
//! * `ls --json`: `{"namespaces": ["name", ...]}`
//! * `ls --namespace N --json`: `{"namespace": N, "segments": [{"key", "start_frame_no",
//!   "end_frame_no", "first_commit", "last_commit", "size"}, ...]}` newest first.
//! * `info --json`: `{"namespace", "durable_frame_no", "segments", "bytes",
//!   "first_commit", "last_commit"}` (times null when there are no segments).
//! * `verify --json`: `{"namespace", "segments", "commits_proved", "commits_unchecked",
//!   "sound", "problems": [{"key", "problem"}, ...]}`; printed also when unsound (the
//!   exit status is then 1, with the error on stderr).

use crate::args::Store;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio_stream::StreamExt;
use walvault::{Error, NamespaceName, Result, SegmentInfo};

use crate::args;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// List this namespace's segments instead of the namespaces.
    #[arg(long)]
    pub(crate) namespace: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The namespace.
    #[arg(long)]
    pub(crate) namespace: String,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The namespace.
    #[arg(long)]
    pub(crate) namespace: String,
}

pub async fn ls<S: Store>(store: S, a: LsArgs, out: Output) -> Result<()> {
    let Some(name) = a.namespace else {
        let names = store.namespaces().await?;
        let names: Vec<&str> = names.iter().map(NamespaceName::as_str).collect();
        out.json(&json!({ "namespaces": names }));
        names.iter().for_each(|n| out.line(n));
        return Ok(());
    };
    let namespace = known(&store, &name).await?;
    let segments = segments(&store, &namespace).await?;
    if out.is_json() {
        let list: Vec<_> = segments
            .iter()
            .map(|s| {
                json!({
                    "key": s.key.to_string(),
                    "start_frame_no": s.key.start_frame_no,
                    "end_frame_no": s.key.end_frame_no,
                    "first_commit": args::rfc3339(s.key.timestamp()),
                    "last_commit": args::rfc3339(ms(s.last_commit_ts)),
                    "size": s.size,
                })
            })
            .collect();
        out.json(&json!({ "namespace": namespace.as_str(), "segments": list }));
        return Ok(());
    }
    out.line(format!(
        "{:<62} {:>21} {:>25} {:>10}",
        "KEY", "FRAMES", "LAST COMMIT", "BYTES"
    ));
    for s in &segments {
        out.line(format!(
            "{:<62} {:>21} {:>25} {:>10}",
            s.key.to_string(),
            format!("{}-{}", s.key.start_frame_no, s.key.end_frame_no),
            args::rfc3339(ms(s.last_commit_ts)),
            s.size
        ));
    }
    Ok(())
}

pub async fn info<S: Store>(store: S, a: InfoArgs, out: Output) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let durable = store.durable_frame_no(&namespace, None).await?;
    let segments = segments(&store, &namespace).await?;
    let bytes: u64 = segments.iter().map(|s| s.size).sum();
    let first = segments.last().map(|s| args::rfc3339(s.key.timestamp()));
    let last = segments
        .first()
        .map(|s| args::rfc3339(ms(s.last_commit_ts)));
    if out.is_json() {
        let value = json!({
            "namespace": namespace.as_str(),
            "durable_frame_no": durable,
            "segments": segments.len(),
            "bytes": bytes,
            "first_commit": first,
            "last_commit": last,
        });
        out.json(&value);
        return Ok(());
    }
    out.line(format!("namespace         {namespace}"));
    out.line(format!("durable frame     {durable}"));
    out.line(format!("segments          {}", segments.len()));
    out.line(format!("bytes             {bytes}"));
    out.line(format!(
        "first commit      {}",
        first.as_deref().unwrap_or("-")
    ));
    out.line(format!(
        "last commit       {}",
        last.as_deref().unwrap_or("-")
    ));
    Ok(())
}

pub async fn verify<S: Store>(store: S, a: VerifyArgs, out: Output) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let report = walvault::verify_history(&store, &namespace).await?;
    let problems: Vec<_> = report
        .problems
        .iter()
        .map(|(key, why)| json!({ "key": key.to_string(), "problem": why.to_string() }))
        .collect();
    out.json(&json!({
        "namespace": namespace.as_str(),
        "segments": report.segments,
        "commits_proved": report.commits_proved,
        "commits_unchecked": report.commits_unchecked,
        "sound": report.is_sound(),
        "problems": problems,
    }));
    for (key, why) in &report.problems {
        out.line(format!("BAD {key}: {why}"));
    }
    if report.is_sound() {
        out.line(format!(
            "{namespace}: {} segments verified, every checksum matches; {} commits proved by \
             replaying the lineage chain{}",
            report.segments,
            report.commits_proved,
            match report.commits_unchecked {
                0 => String::new(),
                n => format!(" ({n} older commits carry no lineage checksum)"),
            }
        ));
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
    let names = store.namespaces().await?;
    if !names.contains(&namespace) {
        return Err(unknown(&namespace, &names));
    }
    Ok(namespace)
}

/// The error for a namespace the store does not have, listing those it has (a typo is
/// then plain to see).
pub fn unknown(namespace: &NamespaceName, names: &[NamespaceName]) -> Error {
    const SHOWN: usize = 20;
    let has = match names.len() {
        0 => "the store is empty".to_string(),
        n => {
            let list: Vec<&str> = names
                .iter()
                .take(SHOWN)
                .map(NamespaceName::as_str)
                .collect();
            let more = if n > SHOWN {
                format!(" and {} more", n - SHOWN)
            } else {
                String::new()
            };
            format!("it has {}{more}", list.join(", "))
        }
    };
    Error::NotFound(format!("namespace {namespace} is not in the store; {has}"))
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

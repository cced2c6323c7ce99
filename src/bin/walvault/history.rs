//! `walvault log`: a namespace's commits, oldest first, so a user can pick a state to
//! restore: its frame (for `restore --frame`), its time (for `restore --at`), the
//! database size after it and the pages it changed.
//!
//! `--json` output is stable (fields are only ever added): `{"namespace": N, "commits":
//! [{"frame_no", "time", "timestamp_ms", "db_size_pages", "pages_changed",
//! "new_lineage"}, ...]}`, oldest first, `time` in RFC 3339 with milliseconds.

use chrono::{DateTime, Utc};
use serde_json::json;
use walvault::{CommitEntry, Result};

use crate::args::{self, Store};
use crate::inspect::known;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The namespace.
    #[arg(long)]
    pub(crate) namespace: String,
    /// List only commits at or after this time (RFC 3339, like 2026-11-21T10:00:00Z).
    #[arg(long, value_parser = args::time)]
    since: Option<DateTime<Utc>>,
    /// List only commits at or before this time (RFC 3339).
    #[arg(long, value_parser = args::time)]
    until: Option<DateTime<Utc>>,
}

pub async fn log<S: Store>(store: S, a: LogArgs, out: Output) -> Result<()> {
    let namespace = known(&store, &a.namespace).await?;
    let commits = walvault::commit_log(&store, &namespace, a.since, a.until).await?;
    if out.is_json() {
        let list: Vec<_> = commits.iter().map(to_json).collect();
        out.json(&json!({ "namespace": namespace.as_str(), "commits": list }));
    } else {
        print_table(&commits, out);
    }
    Ok(())
}

fn to_json(c: &CommitEntry) -> serde_json::Value {
    json!({
        "frame_no": c.frame_no,
        "time": time(c),
        "timestamp_ms": c.timestamp_ms,
        "db_size_pages": c.db_size_pages,
        "pages_changed": c.pages_changed,
        "new_lineage": c.new_lineage,
    })
}

/// RFC 3339 with milliseconds, in UTC: exactly the stored stamp, and what `restore --at`
/// takes to return this commit.
fn time(c: &CommitEntry) -> String {
    args::rfc3339(c.timestamp())
}

fn print_table(commits: &[CommitEntry], out: Output) {
    let widest = commits.iter().map(|c| c.frame_no).max().unwrap_or(0);
    let w = widest.to_string().len().max("FRAME".len());
    out.line(format!(
        "{:>w$}  {:<24}  {:>8}  {:>7}  NOTE",
        "FRAME", "TIME", "DB PAGES", "CHANGED"
    ));
    for c in commits {
        let line = format!(
            "{:>w$}  {:<24}  {:>8}  {:>7}  {}",
            c.frame_no,
            time(c),
            c.db_size_pages,
            c.pages_changed,
            if c.new_lineage { "snapshot" } else { "" }
        );
        out.line(line.trim_end());
    }
    out.line(summary(commits));
}

fn summary(commits: &[CommitEntry]) -> String {
    match (commits.first(), commits.last()) {
        (Some(first), Some(last)) => format!(
            "{} commit{}, frames {}..={}, {} to {}",
            commits.len(),
            if commits.len() == 1 { "" } else { "s" },
            first.frame_no,
            last.frame_no,
            time(first),
            time(last)
        ),
        _ => "0 commits".to_string(),
    }
}

//! Retention: keep a point-in-time window, give up the history before it.
//!
//! Every moment from `now − window` on must stay restorable. The moment `now − window`
//! itself restores to the last commit at or before it, the *base*; nothing older is
//! needed. So the segments from the oldest through the one holding the base are merged
//! into one that keeps only the base's database and the commits after it (see
//! `merge.rs`), swapped in with one catalog edit. The old segments become retired: a
//! later [`collect_garbage`](crate::Storage::collect_garbage) deletes them after its
//! grace period, so a restore that planned before the edit still finds them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_stream::StreamExt;

use super::merge::{merge, Retain};
use super::Merge;
use crate::error::{InvalidInput, Result};
use crate::format::{timestamp_ms, NamespaceName, SegmentKey};
use crate::storage::{FindSegmentReq, SegmentInfo, Storage};

/// What [`apply_retention`] did (or would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionReport {
    /// The oldest moment kept restorable: `now − window`.
    pub cutoff: DateTime<Utc>,
    /// The merge that dropped the history before the cutoff; None when there was
    /// nothing to drop. In a dry run its output is None.
    pub merge: Option<Merge>,
}

/// Drops the history of `namespace` from before `now − window`, keeping every moment
/// after it restorable. With `dry_run` only the catalog is read.
pub async fn apply_retention<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    window: Duration,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<RetentionReport> {
    let cutoff = chrono::Duration::from_std(window)
        .ok()
        .and_then(|w| now.checked_sub_signed(w))
        .ok_or_else(|| {
            InvalidInput::Config(format!(
                "a retention window of {window:?} reaches before any date"
            ))
        })?;
    let mut report = RetentionReport {
        cutoff,
        merge: None,
    };
    let Ok(cutoff_ms) = timestamp_ms(cutoff) else {
        return Ok(report); // before 1970: nothing is that old
    };
    let base = match storage
        .find_segment(namespace, FindSegmentReq::Timestamp(cutoff), None)
        .await
    {
        Ok(key) => key,
        Err(e) if e.is_not_found() => return Ok(report), // all history is in the window
        Err(e) => return Err(e),
    };
    let inputs: Vec<SegmentInfo> = storage
        .list_segments(namespace, 0, None)
        .filter(|s| {
            !s.as_ref()
                .is_ok_and(|s| s.key.end_frame_no > base.end_frame_no)
        })
        .collect::<Result<_>>()
        .await?;
    let input_bytes = inputs.iter().map(|s| s.size).sum();
    let inputs: Vec<SegmentKey> = inputs.iter().rev().map(|s| s.key).collect();
    let retain = Retain {
        precision_ms: 0,
        keep_first: false,
        cutoff_ms: Some(cutoff_ms),
    };
    let mut merged = Merge {
        inputs,
        input_bytes,
        output: None,
        output_bytes: 0,
    };
    if dry_run {
        // Without reading the base segment it is unknown whether it holds commits
        // before the base; a lone input is reported as a candidate only.
        report.merge = Some(merged);
        return Ok(report);
    }
    let output = merge(storage, namespace, &merged.inputs, retain, &None).await?;
    if merged.inputs == [output.key()] {
        return Ok(report); // the oldest segment starts at the base: nothing to drop
    }
    merged.output = Some(output.key());
    merged.output_bytes = output.encoded_len();
    storage
        .replace_segments(namespace, &merged.inputs, output, None)
        .await?;
    report.merge = Some(merged);
    Ok(report)
}

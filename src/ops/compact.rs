//! Compaction: merging runs of adjacent small segments so that a restore reads few.
//!
//! **Policy** (size-tiered, [`CompactionPolicy`]). Segments are taken oldest first onto
//! a stack of groups; whenever the newest `fan_in` groups are in the same size tier
//! (tier `t` holds sizes in `4 KiB · fan_in^t ..< 4 KiB · fan_in^(t+1)`) and together
//! fit `target_size`, they become one group. A segment of at least half `target_size`
//! is full and never merged again (nor is one below `min_size`, left to a faster tier).
//! This bounds how often a byte is rewritten by the number of tiers (log of the target
//! over the segment size). Then, while more than `max_small` groups are not full, the
//! smallest adjacent pair that fits is merged, so a restore of the latest state reads
//! at most `max_small` small segments besides the full ones. Each group of two or more segments becomes one merge, swapped in with one
//! catalog edit ([`Storage::replace_segments`]).
//!
//! Merged segments keep every commit, or with a `precision` the last commit of each
//! window of that length plus the first, and always the original commit times.

use std::time::Duration;

use tokio_stream::StreamExt;

use super::merge::{merge, Retain};
use crate::error::{InvalidInput, Result};
use crate::format::{NamespaceName, SegmentKey};
use crate::storage::{SegmentInfo, Storage};

/// Tier 0 holds segments smaller than this times `fan_in`.
const TIER_UNIT: u64 = 4096;

/// How [`compact`] chooses what to merge (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Merged segments stop growing at this many bytes, and a segment of at least half
    /// of it is full and left alone. Default 64 MiB.
    pub target_size: u64,
    /// How many segments of one size tier are merged at a time. Default 8.
    pub fan_in: usize,
    /// At most this many segments below full remain after compaction (unless merging
    /// them would pass `target_size`). Default 8.
    pub max_small: usize,
    /// The point-in-time precision kept inside merged segments: the last commit of each
    /// window of this length (aligned to the Unix epoch) stays restorable, as does the
    /// first. Zero (the default) keeps every commit.
    pub precision: Duration,
    /// Segments smaller than this are left alone, like full ones, and do not count
    /// against `max_small`: a slower tier of the background maintainer leaves them to
    /// the faster tier that owns them, so it never rewrites its band's newest segment
    /// just to absorb them. Default 0.
    pub min_size: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            target_size: 64 << 20,
            fan_in: 8,
            max_small: 8,
            precision: Duration::ZERO,
            min_size: 0,
        }
    }
}

impl CompactionPolicy {
    pub(crate) fn check(&self) -> Result<()> {
        let bad =
            |what: &str| Err(InvalidInput::Config(format!("compaction policy: {what}")).into());
        if self.fan_in < 2 {
            return bad("fan_in must be at least 2");
        }
        if self.target_size < 2 * TIER_UNIT {
            return bad("target_size must be at least 8 KiB");
        }
        if self.max_small == 0 {
            return bad("max_small must be at least 1");
        }
        Ok(())
    }

    fn full(&self, size: u64) -> bool {
        size >= self.target_size / 2
    }

    /// Whether this policy may merge a segment (or group) of `size` bytes.
    fn mergeable(&self, size: u64) -> bool {
        size >= self.min_size && !self.full(size)
    }

    fn tier(&self, size: u64) -> u32 {
        let mut tier = 0;
        let mut bound = TIER_UNIT.saturating_mul(self.fan_in as u64);
        while size >= bound && bound < u64::MAX {
            tier += 1;
            bound = bound.saturating_mul(self.fan_in as u64);
        }
        tier
    }

    fn retain(&self) -> Retain {
        Retain {
            precision_ms: u64::try_from(self.precision.as_millis()).unwrap_or(u64::MAX),
            keep_first: true,
            cutoff_ms: None,
        }
    }
}

/// One merge: its inputs and, once done, its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The segments merged, oldest first.
    pub inputs: Vec<SegmentKey>,
    /// Their total size in bytes.
    pub input_bytes: u64,
    /// The merged segment (None in a dry run).
    pub output: Option<SegmentKey>,
    /// Its size in bytes (0 in a dry run).
    pub output_bytes: u64,
}

/// What [`compact`] did or, in a dry run, would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments in the namespace before.
    pub segments_before: usize,
    /// Segments after (or after the plan, in a dry run).
    pub segments_after: usize,
    /// The merges, oldest first.
    pub merges: Vec<Merge>,
}

/// A group of consecutive segments the plan merges into one.
struct Group {
    members: Vec<SegmentInfo>,
    size: u64,
}

/// The merges `policy` asks for in `namespace`, oldest first; reads only the catalog.
pub async fn plan_compaction<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    policy: &CompactionPolicy,
) -> Result<CompactionReport> {
    policy.check()?;
    let mut segments: Vec<SegmentInfo> = storage
        .list_segments(namespace, 0, None)
        .collect::<Result<_>>()
        .await?;
    segments.reverse();
    let before = segments.len();
    let groups = plan(&segments, policy);
    let merges = groups
        .iter()
        .filter(|g| g.members.len() > 1)
        .map(|g| Merge {
            inputs: g.members.iter().map(|s| s.key).collect(),
            input_bytes: g.size,
            output: None,
            output_bytes: 0,
        })
        .collect();
    Ok(CompactionReport {
        segments_before: before,
        segments_after: groups.len(),
        merges,
    })
}

/// Compacts `namespace` by `policy`: plans, then merges each group and swaps it in.
/// With `dry_run` nothing is read beyond the catalog and nothing is written. A writer
/// may keep storing meanwhile; an edit that lost a race to another compaction fails
/// with the merges done so far kept.
pub async fn compact<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    policy: &CompactionPolicy,
    dry_run: bool,
) -> Result<CompactionReport> {
    let mut report = plan_compaction(storage, namespace, policy).await?;
    if dry_run {
        return Ok(report);
    }
    for m in &mut report.merges {
        let output = merge(storage, namespace, &m.inputs, policy.retain(), &None).await?;
        let (key, bytes) = (output.key(), output.encoded_len());
        storage
            .replace_segments(namespace, &m.inputs, output, None)
            .await?;
        tracing::info!(%namespace, inputs = m.inputs.len(), %key, bytes, "compacted segments");
        m.output = Some(key);
        m.output_bytes = bytes;
    }
    Ok(report)
}

fn plan(segments: &[SegmentInfo], policy: &CompactionPolicy) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for s in segments {
        groups.push(Group {
            members: vec![*s],
            size: s.size,
        });
        while let Some(at) = tier_run(&groups, policy) {
            let merged = groups.split_off(at);
            groups.push(join(merged));
        }
    }
    bound_small(&mut groups, policy);
    groups
}

/// Where the newest `fan_in` groups start, if they share a tier and fit the target.
fn tier_run(groups: &[Group], policy: &CompactionPolicy) -> Option<usize> {
    let at = groups.len().checked_sub(policy.fan_in)?;
    let run = &groups[at..];
    let tier = policy.tier(run[0].size);
    let size: u64 = run.iter().map(|g| g.size).sum();
    let same = run
        .iter()
        .all(|g| policy.mergeable(g.size) && policy.tier(g.size) == tier);
    (same && size <= policy.target_size).then_some(at)
}

/// While more than `max_small` groups are small, merges the adjacent pair of small
/// groups that together are smallest (the newest such pair on a tie) and fit the
/// target. Merging the smallest pair, not always the newest, makes this a binary
/// counter: a byte is rewritten about log2(band) times, where absorbing the newest
/// segments into one growing segment would rewrite it at every run.
fn bound_small(groups: &mut Vec<Group>, policy: &CompactionPolicy) {
    let small = |groups: &[Group]| groups.iter().filter(|g| policy.mergeable(g.size)).count();
    while small(groups) > policy.max_small {
        let pair = (1..groups.len())
            .rev()
            .filter(|&i| {
                let (a, b) = (&groups[i - 1], &groups[i]);
                policy.mergeable(a.size)
                    && policy.mergeable(b.size)
                    && a.size + b.size <= policy.target_size
            })
            .min_by_key(|&i| groups[i - 1].size + groups[i].size);
        let Some(i) = pair else {
            return; // no pair fits the target
        };
        let b = groups.remove(i);
        let a = groups.remove(i - 1);
        groups.insert(i - 1, join(vec![a, b]));
    }
}

fn join(groups: Vec<Group>) -> Group {
    let size = groups.iter().map(|g| g.size).sum();
    let members = groups.into_iter().flat_map(|g| g.members).collect();
    Group { members, size }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(sizes: &[u64]) -> Vec<SegmentInfo> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| SegmentInfo {
                key: SegmentKey {
                    start_frame_no: i as u64 * 10 + 1,
                    end_frame_no: i as u64 * 10 + 10,
                    timestamp: 1_000 + i as u64,
                },
                size,
                last_commit_ts: 1_000 + i as u64,
            })
            .collect()
    }

    fn sizes(groups: &[Group]) -> Vec<usize> {
        groups.iter().map(|g| g.members.len()).collect()
    }

    #[test]
    fn equal_small_segments_merge_in_tiers_then_the_tail_is_bounded() {
        let policy = CompactionPolicy::default();
        let groups = plan(&segs(&[1_000; 100_000]), &policy);
        let small = groups.iter().filter(|g| !policy.full(g.size)).count();
        assert!(small <= policy.max_small, "{small} small segments remain");
        assert!(groups.len() <= 20, "{} segments remain", groups.len());
        assert_eq!(
            groups.iter().map(|g| g.members.len()).sum::<usize>(),
            100_000
        );
        assert!(groups.iter().all(|g| g.size <= policy.target_size));
    }

    #[test]
    fn full_segments_are_left_alone_and_split_runs() {
        let policy = CompactionPolicy {
            target_size: 1 << 20,
            max_small: 1,
            ..CompactionPolicy::default()
        };
        let groups = plan(&segs(&[600_000, 10, 10, 600_000, 10]), &policy);
        assert_eq!(sizes(&groups), vec![1, 2, 1, 1]);
    }

    #[test]
    fn segments_below_min_size_are_left_to_a_faster_tier() {
        let policy = CompactionPolicy {
            target_size: 1 << 20,
            fan_in: 2,
            max_small: 1,
            min_size: 1_000,
            ..CompactionPolicy::default()
        };
        let groups = plan(&segs(&[5_000, 5_000, 5_000, 10, 10, 10]), &policy);
        assert_eq!(sizes(&groups), vec![3, 1, 1, 1]);
    }

    #[test]
    fn nothing_to_do_plans_nothing() {
        let policy = CompactionPolicy::default();
        assert_eq!(sizes(&plan(&segs(&[5; 3]), &policy)), vec![1, 1, 1]);
        assert!(plan(&[], &policy).is_empty());
    }

    #[test]
    fn bad_policies_are_refused() {
        for policy in [
            CompactionPolicy {
                fan_in: 1,
                ..Default::default()
            },
            CompactionPolicy {
                target_size: 100,
                ..Default::default()
            },
            CompactionPolicy {
                max_small: 0,
                ..Default::default()
            },
        ] {
            assert!(policy.check().is_err(), "{policy:?}");
        }
    }
}

//! Fork: a new namespace that starts from another's history up to a moment, without
//! copying it.
//!
//! The fork's catalog names the source's segments up to the target commit, each marked
//! with the namespace that stores it (the catalog's *lineage*), so reads go to the
//! source's objects. Only when the target commit falls inside a segment are that
//! segment's frames up to the commit copied into one new segment of the fork. The
//! fork's own frames start above the source's durable frame number at the fork, so
//! they never collide with anything the source stores later. Each namespace a fork
//! reads from gets a marker (`forks/<fork>`), and its garbage collection keeps every
//! segment a fork still names.

use chrono::{DateTime, Utc};

use super::catalog::Catalog;
use super::restore::locate_target;
use super::{entry_for, FindSegmentReq, RestoreOptions, Storage};
use crate::error::{Error, InvalidInput, Result};
use crate::format::{
    ms_to_datetime, Commit, CommitTable, Frame, NamespaceName, SealedSegment, SegmentBuilder,
    SegmentKey,
};

/// The directory (or object prefix) of fork markers, inside a namespace.
pub(crate) const FORKS_DIR: &str = "forks";

/// What [`Storage::fork`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkReport {
    /// The source's commit the fork starts from.
    pub frame_no: u64,
    /// Its time.
    pub timestamp: DateTime<Utc>,
    /// Segments of the source the fork names without copying.
    pub inherited: usize,
    /// The segment copied because the commit fell inside it, if any.
    pub copied: Option<SegmentKey>,
    /// The fork's own frames start above this frame number.
    pub floor: u64,
}

/// What a fork needs, worked out from the source through the `Storage` API.
pub(crate) struct Plan {
    /// Source segments wholly at or before the target commit, oldest first.
    pub inherited: Vec<SegmentKey>,
    /// The target segment cut at the commit, when the commit is not its last.
    pub cut: Option<SealedSegment>,
    pub commit: Commit,
    pub floor: u64,
}

impl Plan {
    pub(crate) fn report(&self) -> ForkReport {
        ForkReport {
            frame_no: self.commit.frame_no,
            timestamp: ms_to_datetime(self.commit.timestamp_ms),
            inherited: self.inherited.len(),
            copied: self.cut.as_ref().map(SealedSegment::key),
            floor: self.floor,
        }
    }
}

/// Checks the names and works out the fork of `source` at `at`.
pub(crate) async fn plan<S: Storage + ?Sized>(
    storage: &S,
    source: &NamespaceName,
    target: &NamespaceName,
    at: RestoreOptions,
    config: &Option<S::Config>,
) -> Result<Plan> {
    if source == target {
        return Err(InvalidInput::Config(format!("cannot fork {source} into itself")).into());
    }
    // Plan from the source as it is now, not as this handle last saw it.
    storage.refresh(source, config.clone()).await?;
    let floor = storage.durable_frame_no(source, config.clone()).await?;
    // The target commit from catalog lookups and commit tables: nothing of the target
    // segment is read but its table, unless it has to be cut.
    let target = locate_target(storage, source, at, config).await?;
    let (key, commit) = (target.key, target.commit);
    let mut inherited = Vec::new();
    let mut before = if commit.frame_no == key.end_frame_no {
        key.end_frame_no
    } else {
        key.start_frame_no - 1
    };
    while before > 0 {
        let req = FindSegmentReq::EndFrameNoLessThan(before);
        match storage.find_segment(source, req, config.clone()).await {
            Ok(key) => {
                inherited.push(key);
                before = key.start_frame_no - 1;
            }
            Err(Error::NotFound(_)) => break,
            Err(e) => return Err(e),
        }
    }
    inherited.reverse();
    let cut = match commit.frame_no != key.end_frame_no {
        true => Some(cut(storage, source, &target.table, &commit, config).await?),
        false => None,
    };
    Ok(Plan {
        inherited,
        cut,
        commit,
        floor,
    })
}

/// The frames of the stored segment of `source` that `table` describes up to `commit`,
/// as a segment of their own: read a bounded run at a time, built in a spill file next
/// to the source's segments once it outgrows its share of the memory budget.
async fn cut<S: Storage + ?Sized>(
    storage: &S,
    source: &NamespaceName,
    table: &CommitTable,
    commit: &Commit,
    config: &Option<S::Config>,
) -> Result<SealedSegment> {
    let key = &table.key();
    let mut b = SegmentBuilder::new(key.start_frame_no, table.page_size())?
        .with_log_id(table.log_id())
        .with_spill(
            storage.spill_dir(source, config.clone()),
            crate::budget::share(4),
        );
    if let Some(base) = table.lineage_base() {
        b.start_lineage(base)?; // a prefix of the segment builds on what it built on
    }
    let mut commits = table.commits().iter();
    'runs: for run in super::frames::runs(table.frame_count(), table.page_size()) {
        for frame in storage
            .fetch_frame_run(source, key, run, config.clone())
            .await?
        {
            if frame.frame_no > commit.frame_no {
                break 'runs;
            }
            append(
                &mut b,
                &frame,
                &mut commits,
                key,
                table.lineage_base().is_some(),
            )?;
        }
    }
    b.seal(ms_to_datetime(table.sealed_at_ms()))
}

/// Appends one frame of the segment being cut; a commit frame takes the next entry of
/// the segment's commit table.
fn append<'a>(
    b: &mut SegmentBuilder,
    frame: &Frame,
    commits: &mut impl Iterator<Item = &'a Commit>,
    key: &SegmentKey,
    lineage: bool,
) -> Result<()> {
    b.skip_to(frame.frame_no)?;
    if frame.size_after == 0 {
        b.append_frame(frame.page_no, &frame.data)?;
        return Ok(());
    }
    let c = commits.next().ok_or_else(|| {
        InvalidInput::Config(format!("segment {key} has more commits than its table"))
    })?;
    let (page_no, data, size) = (frame.page_no, &frame.data[..], frame.size_after);
    match lineage {
        true => b.append_commit_with_checksum(page_no, data, size, c.timestamp(), c.checksum)?,
        false => b.append_commit(page_no, data, size, c.timestamp())?,
    };
    Ok(())
}

/// The fork's catalog: the source's entries for the inherited keys, each owned by the
/// namespace that stores it (the source, or whatever the source itself inherited it
/// from), then the cut segment as the fork's own.
pub(crate) fn catalog(
    source_name: &NamespaceName,
    source: &Catalog,
    plan: &Plan,
) -> Result<Catalog> {
    let mut entries = Vec::with_capacity(plan.inherited.len() + 1);
    let mut bases: Vec<NamespaceName> = Vec::new();
    let mut owners = Vec::with_capacity(plan.inherited.len() + 1);
    for key in &plan.inherited {
        let entry = source.get(key).ok_or_else(|| {
            Error::NotFound(format!(
                "segment {key} of {source_name}, which the fork would name"
            ))
        })?;
        let owner = source.owner(key).unwrap_or(source_name);
        let b = match bases.iter().position(|n| n == owner) {
            Some(b) => b,
            None => {
                bases.push(owner.clone());
                bases.len() - 1
            }
        };
        entries.push(*entry);
        owners.push(b as u16 + 1);
    }
    if let Some(cut) = &plan.cut {
        entries.push(entry_for(cut));
        owners.push(0);
    }
    let invalid = |why: String| {
        Error::from(InvalidInput::Config(format!(
            "forking {source_name}: {why}"
        )))
    };
    let mut catalog = Catalog::from_entries(entries).map_err(invalid)?;
    catalog
        .set_lineage(bases, owners, plan.floor)
        .map_err(invalid)?;
    Ok(catalog)
}

/// Checks, after the fork's markers are written, that the source still names every
/// segment the fork will: from then on the source's collection protects them, and
/// before then a compaction of the source may have retired one (the grace period keeps
/// it for now, but not for good).
pub(crate) fn check_still_named(
    source_name: &NamespaceName,
    source: &Catalog,
    plan: &Plan,
) -> Result<()> {
    match plan.inherited.iter().find(|key| source.get(key).is_none()) {
        None => Ok(()),
        Some(key) => Err(Error::Conflict {
            namespace: source_name.to_string(),
            detail: format!("segment {key} was replaced while the fork was being made; fork again"),
        }),
    }
}

/// The error for a fork into a namespace that already has history.
pub(crate) fn target_exists(target: &NamespaceName) -> Error {
    InvalidInput::Config(format!(
        "cannot fork into {target}: that namespace already exists"
    ))
    .into()
}

//! Merging a run of adjacent segments into one: the work behind compaction and
//! retention.
//!
//! The merged segment keeps the commits a [`Retain`] rule selects and, for each retained
//! commit, exactly the page versions a restore to it needs: of the frames since the
//! previous retained commit, the newest of each page. Every retained commit therefore
//! restores to the same database as before, and the frames keep their original numbers
//! (the segment is sparse, `docs/FORMAT.md` §3.2), so lookups by frame number and time
//! keep their meaning.
//!
//! Two passes keep memory to one run of frames (a share of the memory budget) plus a few
//! bytes per kept frame: the first reads the inputs newest first, a run at a time, and
//! decides which frames to keep (a frame is kept unless a newer frame of its page falls
//! before the same retained commit); the second fetches only the kept frames, oldest
//! first, in batches of about a run, and appends them to a builder that spills to a
//! file (where the backend can link it into place) once the output outgrows its share.

use hashbrown::HashMap;

use crate::error::{InvalidInput, Result};
use crate::format::{
    ms_to_datetime, Commit, NamespaceName, SealedSegment, SegmentBuilder, SegmentKey,
};
use crate::storage::{frames, Storage};

/// Which commits a merge keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retain {
    /// Keep the last commit of every window of this many milliseconds (windows are
    /// aligned to the Unix epoch); 0 keeps every commit, `u64::MAX` only the last.
    pub precision_ms: u64,
    /// Also keep the first commit, so the merged segment's key keeps the first input's
    /// time (a compacted segment must not look newer than its inputs).
    pub keep_first: bool,
    /// Retention's cutoff (ms): a commit followed by another at or before it restores
    /// only moments before the cutoff, and is dropped.
    pub cutoff_ms: Option<u64>,
}

impl Retain {
    /// Whether `commit` is kept, given the time of the commit after it (None for the
    /// last one) and whether it is the first of the run.
    fn keeps(&self, ts: u64, next_ts: Option<u64>, first: bool) -> bool {
        let Some(next_ts) = next_ts else {
            return true;
        };
        if self.cutoff_ms.is_some_and(|cutoff| next_ts <= cutoff) {
            return false;
        }
        (first && self.keep_first)
            || self.precision_ms == 0
            || ts / self.precision_ms != next_ts / self.precision_ms
    }
}

/// One kept frame of an input: its position there, its number, and the commit it
/// carries if it is a retained commit.
#[derive(Debug, Clone, Copy)]
struct Kept {
    position: u32,
    frame_no: u64,
    page_no: u32,
    commit: Option<Commit>,
}

/// What the first pass learns.
struct Selection {
    /// Per input, oldest input first: its kept frames in frame order.
    kept: Vec<Vec<Kept>>,
    page_size: u32,
    log_id: uuid::Uuid,
    sealed_at: u64,
    /// The first input's lineage base when every input carries lineage: the merged
    /// segment then carries it too (its first kept commit applies to the same state as
    /// the first input's first commit, and each kept commit keeps its checksum).
    lineage: Option<u64>,
}

/// Merges the consecutive stored segments `inputs` (oldest first) into one segment.
pub(crate) async fn merge<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    inputs: &[SegmentKey],
    retain: Retain,
    config: &Option<S::Config>,
) -> Result<SealedSegment> {
    let Some(first) = inputs.first() else {
        return Err(InvalidInput::Config("nothing to merge".into()).into());
    };
    let selection = select(storage, ns, inputs, retain, config).await?;
    // The output may be as large as the inputs: past a share of the budget it goes to a
    // spill file where the backend can link it into place.
    let mut builder = SegmentBuilder::new(first.start_frame_no, selection.page_size)?
        .with_log_id(selection.log_id)
        .with_spill(
            storage.spill_dir(ns, config.clone()),
            crate::budget::share(4),
        );
    if let Some(base) = selection.lineage {
        builder.start_lineage(base)?;
    }
    // Kept frames are fetched a batch of segments at a time: one call per batch (a
    // backend may serve it with one thread hand-off or concurrent requests), and memory
    // bounded by the batch besides the output.
    let frame_len = crate::format::FRAME_HEADER_LEN + selection.page_size as usize;
    let per_chunk = (frames::run_bytes() / frame_len).max(1);
    let wanted: Vec<(SegmentKey, &[Kept])> = inputs
        .iter()
        .copied()
        .zip(&selection.kept)
        .flat_map(|(key, kept)| kept.chunks(per_chunk).map(move |chunk| (key, chunk)))
        .collect();
    for batch in batches(&wanted, u64::from(selection.page_size)) {
        let requests = batch
            .iter()
            .map(|(key, kept)| (*key, kept.iter().map(|k| k.position).collect()))
            .collect();
        let fetched = storage
            .fetch_frames_batch(ns, requests, config.clone())
            .await?;
        if fetched.len() != batch.len() {
            return Err(crate::storage::frames::miscounted(
                ns,
                &batch[0].0,
                "returned another number of segments",
            ));
        }
        for ((key, kept), frames) in batch.iter().zip(fetched) {
            append(&mut builder, ns, key, kept, frames)?;
        }
    }
    builder.seal(ms_to_datetime(selection.sealed_at))
}

/// Segments whose kept frames one call fetches, at most.
const BATCH_SEGMENTS: usize = 64;

/// Consecutive groups of `wanted` of at most [`BATCH_SEGMENTS`] segments and about
/// [`frames::run_bytes`] of frames each; one input's kept frames past that are split
/// over several batches.
fn batches<'a>(
    wanted: &'a [(SegmentKey, &'a [Kept])],
    page_size: u64,
) -> impl Iterator<Item = &'a [(SegmentKey, &'a [Kept])]> {
    let mut rest = wanted;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < rest.len() && n < BATCH_SEGMENTS && (n == 0 || bytes < frames::run_bytes() as u64)
        {
            bytes += rest[n].1.len() as u64 * page_size;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

/// Appends one input's kept frames, checking they are the pages the first pass saw.
fn append(
    builder: &mut SegmentBuilder,
    ns: &NamespaceName,
    key: &SegmentKey,
    kept: &[Kept],
    frames: Vec<(u32, bytes::Bytes)>,
) -> Result<()> {
    if frames.len() != kept.len() {
        return Err(crate::storage::frames::miscounted(
            ns,
            key,
            "returned another number of frames",
        ));
    }
    for (k, (page_no, page)) in kept.iter().zip(frames) {
        if page_no != k.page_no {
            return Err(crate::storage::frames::miscounted(
                ns,
                key,
                "holds another page than when first read",
            ));
        }
        builder.skip_to(k.frame_no)?;
        match k.commit {
            Some(c) if builder.lineage_base().is_some() => builder.append_commit_with_checksum(
                page_no,
                &page,
                c.size_after,
                c.timestamp(),
                c.checksum,
            )?,
            Some(c) => builder.append_commit(page_no, &page, c.size_after, c.timestamp())?,
            None => builder.append_frame(page_no, &page)?,
        };
    }
    Ok(())
}

/// The first pass: reads the inputs newest first and picks the frames to keep.
async fn select<S: Storage + ?Sized>(
    storage: &S,
    ns: &NamespaceName,
    inputs: &[SegmentKey],
    retain: Retain,
    config: &Option<S::Config>,
) -> Result<Selection> {
    let mut kept = vec![Vec::new(); inputs.len()];
    let mut next_ts = None;
    // The retained commit the frames being read lead up to, counted from the newest,
    // and for each page the newest such number among the frames read so far.
    let mut interval = 0u64;
    let mut newest: HashMap<u32, u64> = HashMap::new();
    let mut meta: Option<(u32, uuid::Uuid, u64)> = None;
    let mut lineage = Some(0);
    for (i, key) in inputs.iter().enumerate().rev() {
        // The header and commit table, then the frames a bounded run at a time, newest
        // run first: an input of any size costs one run of memory.
        let table = storage.fetch_commit_table(ns, key, config.clone()).await?;
        lineage = lineage.and(table.lineage_base());
        let (page_size, ..) =
            *meta.get_or_insert((table.page_size(), table.log_id(), table.sealed_at_ms()));
        if table.page_size() != page_size {
            return Err(InvalidInput::Config(format!(
                "segments {key} and {} of {ns} have different page sizes ({} and {page_size} bytes) and cannot be merged",
                inputs[i + 1],
                table.page_size()
            ))
            .into());
        }
        let commits = table.commits();
        let mut commit_at = commits.len();
        let out = &mut kept[i];
        for run in frames::runs(table.frame_count(), page_size).rev() {
            let start = run.start;
            let frames = storage
                .fetch_frame_run(ns, key, run, config.clone())
                .await?;
            for (offset, frame) in frames.iter().enumerate().rev() {
                let mut retained = None;
                if frame.size_after != 0 {
                    commit_at = commit_at.checked_sub(1).ok_or_else(|| {
                        crate::storage::frames::miscounted(
                            ns,
                            key,
                            "has more commit frames than commits",
                        )
                    })?;
                    let c = commits[commit_at];
                    let first = i == 0 && commit_at == 0;
                    if retain.keeps(c.timestamp_ms, next_ts, first) {
                        interval += 1;
                        retained = Some(c);
                    }
                    next_ts = Some(c.timestamp_ms);
                }
                if newest.insert(frame.page_no, interval) != Some(interval) {
                    out.push(Kept {
                        position: start + offset as u32,
                        frame_no: frame.frame_no,
                        page_no: frame.page_no,
                        commit: retained,
                    });
                }
            }
        }
        out.reverse();
    }
    let (page_size, log_id, sealed_at) =
        meta.ok_or_else(|| InvalidInput::Config("nothing to merge".into()))?;
    Ok(Selection {
        kept,
        page_size,
        log_id,
        sealed_at,
        lineage,
    })
}

#[cfg(test)]
mod tests;

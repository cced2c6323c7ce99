//! Opening a log: recover the open-segment files an earlier run left, re-submit what is
//! not durable yet, record the gap a crash left in the frame numbers, start fresh.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use uuid::Uuid;

use super::shared::{run_submitter, run_syncer, Sealed, Shared};
use super::stats::LogStats;
use super::sums::{self, Stamped};
use super::wal::{self, Recovered, WalFile};
use super::{LogConfig, LogWriter};
use crate::durability::{Durability, DurabilityTracker, FrameAllocator};
use crate::error::{Error, InvalidInput, Result};
use crate::format::{ms_to_datetime, NamespaceName, PageSums, SealedSegment, SegmentBuilder};
use crate::storage::fsutil::{create_dir_durable, fsync_dir, write_atomic};
use crate::storage::Storage;

/// What the files of an earlier run held.
struct Found {
    /// Sealed segments not yet durable, oldest first.
    resubmit: Vec<Sealed>,
    /// Every segment the files held, oldest first, to bring the page sums forward.
    recovered: Vec<SealedSegment>,
    /// The highest frame number kept (in a file or in storage).
    last_frame: u64,
    /// The newest commit time kept.
    last_commit_ms: u64,
}

pub(super) async fn open<S: Storage + Clone>(
    storage: S,
    namespace: NamespaceName,
    config: LogConfig,
) -> Result<LogWriter<S>> {
    SegmentBuilder::new(1, config.page_size)?;
    create_dir_durable(&config.dir)
        .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
    let dir_lock = super::dirlock::DirLock::take(&config.dir, &namespace)?;
    crate::format::spill::remove_leftovers(&config.dir);
    bind_namespace(&storage, &config.dir, &namespace).await?;
    let mut allocator = FrameAllocator::open(&config.dir, config.allocator_block)?.reserve_ahead();
    // A storage that keeps nothing reports u64::MAX: it holds no position to resume from.
    let durable = match storage.durable_frame_no(&namespace, None).await? {
        u64::MAX => 0,
        durable => durable,
    };
    let mut found = recover_files(&config, durable, &allocator)?;
    if durable > 0 {
        let newest = storage.list_segments(&namespace, durable, None);
        tokio::pin!(newest);
        if let Some(info) = newest.next().await {
            found.last_commit_ms = found.last_commit_ms.max(info?.last_commit_ts);
        }
    }
    resume_numbers(&mut allocator, found.last_frame)?;
    let sums = recover_sums(&config.dir, &found);

    let tracker = DurabilityTracker::new(durable);
    if found.last_frame > durable {
        tracker.advance(Durability::Written, found.last_frame)?;
    }
    let log_id = Uuid::new_v4();
    let mut builder = SegmentBuilder::new(allocator.peek(), config.page_size)?
        .with_log_id(log_id)
        .with_spill(&config.dir, super::spill_threshold());
    builder.reserve(super::segment_frames(&config));
    let salt = Uuid::new_v4().as_u128() as u32;
    let file_base = match &sums {
        Some(sums) if sums.db_size() > 0 => sums.checksum(),
        _ => 0,
    };
    let wal = WalFile::create(
        &config.dir,
        allocator.peek(),
        config.page_size,
        salt,
        file_base,
    )?;
    let stats = LogStats::new(config.clock.clone());
    // Asked for the durable frame number above, the store answered.
    stats.store_answered();
    for sealed in &found.resubmit {
        let s = &sealed.segment;
        if !s.commits().is_empty() {
            stats.recovered(s.end_frame_no(), s.first_commit_timestamp());
        }
    }
    let shared = Arc::new(Shared::new(tracker, config.dir.clone(), stats));
    shared.on_stored(durable);
    shared.rotate_sync_target(wal.sync_target(), None);
    let (submit, segments) = mpsc::unbounded_channel();
    for sealed in found.resubmit {
        let _ = submit.send(sealed.segment.clone());
        shared.push_sealed(sealed);
    }
    let tasks = vec![
        tokio::spawn(run_syncer(shared.clone(), config.sync_interval)),
        tokio::spawn(run_submitter(
            storage.clone(),
            namespace.clone(),
            shared.clone(),
            segments,
            config.store_retry.clone(),
        )),
    ];
    Ok(LogWriter {
        namespace,
        config,
        storage,
        allocator,
        builder,
        wal,
        opened_at: None,
        last_commit_ms: found.last_commit_ms,
        log_id,
        shared,
        submit: Some(submit),
        tasks,
        failed: None,
        sums,
        file_base,
        _dir_lock: dir_lock,
    })
}

/// The page sums of the state after the last kept frame: the saved ones brought forward
/// over the frames recovered after them (see [`super::sums`]), or, with none saved and
/// no history anywhere, those of an empty database. None when they cannot be known: the
/// log's next transaction must then be a snapshot.
fn recover_sums(dir: &Path, found: &Found) -> Option<PageSums> {
    let saved = match sums::load(dir) {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring damaged page sums; the next transaction ships a snapshot");
            None
        }
    };
    // With nothing saved, only a recovered segment that starts a new lineage (or an
    // empty history) can tell the state from scratch.
    let mut stamped = saved.unwrap_or(Stamped {
        frame_no: 0,
        sums: PageSums::new(),
    });
    for segment in &found.recovered {
        if !sums::replay(&mut stamped, segment) {
            tracing::info!(segment = %segment.key(), "the saved page sums do not lead up to the recovered log; the next transaction ships a snapshot");
            return None;
        }
    }
    if stamped.frame_no != found.last_frame {
        tracing::info!(
            sums_at = stamped.frame_no,
            log_at = found.last_frame,
            "the page sums are not at the log's last frame; the next transaction ships a snapshot"
        );
        return None;
    }
    Some(stamped.sums)
}

/// The file in a log directory naming the namespace its frames belong to.
pub(crate) const OWNER_FILE: &str = "NAMESPACE";

/// A log directory serves one namespace at a time, named in [`OWNER_FILE`]. Frames it
/// holds for another namespace that are not durable there yet would be shipped into the
/// wrong one: refuse, naming the owner. With nothing pending the directory changes hands
/// (the owner's files, all durable, are removed).
async fn bind_namespace<S: Storage>(
    storage: &S,
    dir: &Path,
    namespace: &NamespaceName,
) -> Result<()> {
    let path = dir.join(OWNER_FILE);
    let owner = match fs::read_to_string(&path) {
        Ok(name) => Some(name),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    if owner.as_deref() == Some(namespace.as_str()) {
        return Ok(());
    }
    if let Some(owner) = owner {
        let owner = NamespaceName::new(&owner).map_err(|_| {
            let reason = crate::FormatError::Invalid {
                part: crate::Part::Header,
                offset: 0,
                reason: "not a namespace name",
            };
            Error::corrupt(path.display(), reason)
        })?;
        let durable = storage.durable_frame_no(&owner, None).await?;
        let files = wal_files(dir)?;
        for file in &files {
            let last = wal::recover(file)?.and_then(|r| r.last_frame_no());
            if last.is_some_and(|frame_no| frame_no > durable) {
                return Err(InvalidInput::Config(format!(
                    "log directory {} holds frames of namespace {owner} that are not durable \
                     yet; open it for {owner} to finish shipping them, or use another directory",
                    dir.display()
                ))
                .into());
            }
        }
        files.iter().for_each(|file| wal::remove(file));
        // The page sums describe the other namespace's database.
        let _ = fs::remove_file(dir.join(sums::FILE_NAME));
    }
    write_atomic(dir, OWNER_FILE, &[namespace.as_str().as_bytes()])
        .map_err(|e| Error::io(format!("writing {}", path.display()), e.source))?;
    Ok(())
}

/// Numbers the allocator reserved beyond the last kept frame were never kept: a gap. If
/// the allocator is behind what storage holds (its state was lost), skip ahead.
fn resume_numbers(allocator: &mut FrameAllocator, last_frame: u64) -> Result<()> {
    let next = allocator.peek();
    let after_last = last_frame.saturating_add(1);
    if next < after_last {
        allocator.allocate(after_last - next)?;
    } else if after_last < next {
        allocator.record_gap(after_last..next)?;
    }
    Ok(())
}

/// Recovers the files in frame order. Each must continue where the previous one's kept
/// frames end, or after a gap the allocator recorded: a file that starts after a hole
/// (the earlier file lost a tail that was never fsynced) holds frames that were never
/// acknowledged either, because the syncer fsyncs sealed files before the open one. It
/// and every later file are dropped, and their numbers become part of the gap.
fn recover_files(config: &LogConfig, durable: u64, allocator: &FrameAllocator) -> Result<Found> {
    let mut found = Found {
        resubmit: Vec::new(),
        recovered: Vec::new(),
        last_frame: durable,
        last_commit_ms: 0,
    };
    let mut previous_end: Option<u64> = None;
    let mut in_memory = 0u64;
    let mut files = wal_files(&config.dir)?.into_iter();
    for path in files.by_ref() {
        let Some(recovered) = wal::recover(&path)? else {
            wal::remove(&path);
            continue;
        };
        check_page_size(&path, &recovered, config)?;
        if let Some(end) = previous_end {
            let next = end + 1;
            if recovered.start != next && !allocator.is_gap(next) {
                tracing::warn!(file = %path.display(), expected = next, "dropping open-segment files after a hole left by a crash");
                wal::remove(&path);
                break;
            }
        }
        if recovered.dropped > 0 {
            tracing::warn!(file = %path.display(), frames = recovered.dropped, "dropped a torn transaction");
        }
        let Some(mut segment) = seal_recovered(&recovered, &path, config)? else {
            wal::remove(&path);
            previous_end = Some(recovered.start - 1);
            continue;
        };
        // As in `rotate`: a backlog past a quarter of the budget waits in spill files.
        if segment.is_in_memory() {
            in_memory += segment.encoded_len();
        }
        if segment.is_in_memory() && in_memory > super::spill_threshold() as u64 {
            in_memory -= segment.encoded_len();
            segment = segment.spill_to(&config.dir)?;
        }
        previous_end = Some(segment.end_frame_no());
        found.recovered.push(segment.clone());
        found.last_frame = found.last_frame.max(segment.end_frame_no());
        let last_ms = segment.commits().last().map_or(0, |c| c.timestamp_ms);
        found.last_commit_ms = found.last_commit_ms.max(last_ms);
        if segment.end_frame_no() <= durable {
            wal::remove(&path);
        } else {
            found.resubmit.push(Sealed { segment, path });
        }
    }
    files.for_each(|path| wal::remove(&path));
    fsync_dir(&config.dir)
        .map_err(|e| Error::io(format!("syncing {}", config.dir.display()), e))?;
    Ok(found)
}

fn check_page_size(path: &Path, recovered: &Recovered, config: &LogConfig) -> Result<()> {
    if recovered.page_size == config.page_size {
        return Ok(());
    }
    Err(InvalidInput::Config(format!(
        "{} holds {}-byte pages but the log is configured for {}",
        path.display(),
        recovered.page_size,
        config.page_size
    ))
    .into())
}

/// Rebuilds the segment a file's committed frames make, or `None` if it has none. The
/// frames are read back one at a time, and the builder spills past its threshold.
fn seal_recovered(r: &Recovered, path: &Path, config: &LogConfig) -> Result<Option<SealedSegment>> {
    if r.kept == 0 {
        return Ok(None);
    }
    let mut builder = SegmentBuilder::new(r.start, r.page_size)?
        .with_spill(&config.dir, super::spill_threshold());
    builder.start_lineage(r.base)?;
    r.for_each_frame(path, |f| {
        if f.size_after == 0 {
            builder.append_frame(f.page_no, &f.page)?;
        } else {
            builder.append_commit_with_checksum(
                f.page_no,
                &f.page,
                f.size_after,
                ms_to_datetime(f.commit_ts),
                f.checksum,
            )?;
        }
        Ok(())
    })?;
    builder.seal(config.clock.now()).map(Some)
}

/// The open-segment files in `dir`, oldest first.
fn wal_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut files: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            wal::parse_name(&e.file_name().to_string_lossy()).map(|start| (start, e.path()))
        })
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

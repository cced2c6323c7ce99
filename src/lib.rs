//! walvault stores the sealed segments of a SQLite-style write-ahead log, tracks which
//! frames are durable, and restores a database to any point in time.
//!
//! The crate is built in layers; each module knows nothing of the ones above it:
//!
//! 1. **format**: [`NamespaceName`], [`SegmentKey`], the [`SegmentBuilder`] that turns
//!    frames into an immutable, checksummed [`SealedSegment`], and its [`PageIndex`].
//!    The byte layout is specified in `docs/FORMAT.md`.
//! 2. **storage**: the [`Storage`] trait and its backends: [`LocalStorage`] (the embedded
//!    default), [`MemoryStorage`] and [`NoStorage`], plus [`FaultyStorage`] for tests.
//!    Each namespace has a catalog, persisted as a manifest journal, so lookups never
//!    list a directory.
//! 3. **durability**: the [`FrameAllocator`] (frame numbers never reused), the
//!    [`DurabilityTracker`] (`Applied < Written < Durable` watermarks, waiters, callbacks)
//!    and the [`StoreScheduler`] (background uploads in frame order, retries,
//!    back-pressure).
//! 4. **log**: the [`LogWriter`] a WAL calls into: transactions in, frame numbers and
//!    durability handles out, the open segment kept in a checksummed file, recovery.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use walvault::{on_store, FindSegmentReq, LocalStorage, NamespaceName, SegmentBuilder, Storage};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> walvault::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let storage = LocalStorage::open(dir.path())?;
//! let ns = NamespaceName::new("orders")?;
//!
//! // One transaction writing pages 1 and 2 of a 4 KiB-page database.
//! let at = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
//! let mut builder = SegmentBuilder::new(1, 4096)?;
//! builder.append_frame(1, &[1u8; 4096])?;
//! builder.append_commit(2, &[2u8; 4096], 2, at)?;
//! let segment = builder.seal(at)?;
//!
//! storage.store(&ns, segment, None, on_store(|durable| async move {
//!     assert_eq!(durable, 2);
//! })).await?;
//!
//! assert_eq!(storage.durable_frame_no(&ns, None).await?, 2);
//! let key = storage.find_segment(&ns, FindSegmentReq::Containing(1), None).await?;
//! let fetched = storage.fetch_segment_data(&ns, &key, None).await?;
//! assert_eq!(fetched.read_page(2).unwrap().data, &[2u8; 4096][..]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod budget;
mod clock;
mod durability;
mod error;
mod format;
mod log;
mod ops;
mod random;
mod replica;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod storage;
#[cfg(feature = "sqlite")]
pub mod vfs;

pub use crate::budget::{
    memory_budget, set_memory_budget, DEFAULT_MEMORY_BUDGET, MIN_MEMORY_BUDGET,
};
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::durability::{
    Durability, DurabilityTracker, DurableStream, FrameAllocator, SchedulerConfig, ShutdownReport,
    StoreScheduler, DEFAULT_BLOCK_SIZE,
};
pub use crate::error::{Error, ErrorKind, FormatError, InvalidInput, Part, Result};
pub use crate::format::{
    page_hash, Commit, CommitTable, Frame, FrameRef, NamespaceName, PageIndex, PageIndexIter,
    PageSums, SealedSegment, SegmentBuilder, SegmentKey, CHECKSUM_FLAG,
};
pub use crate::log::{Appended, LogConfig, LogStats, LogWriter, RetryPolicy};
pub use crate::ops::{
    apply_retention, commit_log, compact, plan_compaction, verify_history, CommitEntry,
    CompactionPolicy, CompactionReport, Maintainer, MaintainerHandle, MaintenanceConfig, Merge,
    RetentionReport, Schedule, Task, TaskReport, Tier, VerifyReport,
};
#[cfg(feature = "sqlite")]
pub use crate::replica::Follower;
pub use crate::replica::{durable_frames, transactions, Transaction};
#[cfg(feature = "sqlite")]
pub use crate::sqlite::{
    integrity_check, restore_database, IngestReport, InstallOptions, Replicator, ReplicatorConfig,
    SnapshotReason, WalWatcher, DEFAULT_MAX_LAG, MIN_MAX_LAG,
};
pub use crate::storage::restore_to_path_with_progress;
pub use crate::storage::{
    local_store_dir, on_store, plan_restore, Faults, FaultyStorage, FindSegmentReq, ForkReport,
    GcOptions, GcReport, LocalConfig, LocalStorage, MemoryStorage, NoStorage, ObjectStorage,
    OnStoreCallback, RestoreOptions, RestorePlan, RestoreProgress, RestoreSummary, SegmentInfo,
    Storage,
};

#[doc(hidden)]
pub use crate::storage::write_manifest_for_bench;

/// Compiles the README's code blocks as doc tests, so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

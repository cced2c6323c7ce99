//! How the replicator tells whether the WAL continues from the last frame it shipped,
//! and the reasons it gives when it does not (and ships a snapshot instead).
//!
//! The WAL proves continuity by itself: the salts of its header, and the checksum chain
//! up to the frame we stopped at ([`wal::Check`]). Beyond that, the WAL *file* we saw
//! must still be the one under the name (its inode): SQLite deletes a WAL only after
//! checkpointing it, so a replaced file may have taken unread frames with it.

use std::path::Path;

use super::wal::{self, WalPosition};
use crate::error::{Error, Result};

/// Why a run shipped a snapshot of the whole database rather than the WAL's new
/// transactions: the WAL could not prove it continues from the last shipped frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotReason {
    /// No saved position: the first run with this log directory.
    FirstRun,
    /// The saved position was taken for another namespace or page size.
    PositionForOtherHistory,
    /// The log holds fewer frames than the saved position says were shipped (an
    /// emptied or another store).
    LogLacksPosition,
    /// The log holds transactions past the saved position: the replicator stopped
    /// (crashed, or was killed) after shipping them and before saving where they end
    /// in the WAL, so reading on from the saved position would ship them twice.
    LogPastPosition,
    /// The WAL file is gone (SQLite deletes it when its last connection closes, after
    /// checkpointing it into the database).
    WalDeleted,
    /// The WAL file seen at the last run was deleted and another created in its place.
    WalReplaced,
    /// The WAL is shorter than its header (a `TRUNCATE` checkpoint) or its header is
    /// not valid.
    WalTruncated,
    /// New salts that are not SQLite's restart of our generation (salt-1 + 1): the WAL
    /// was deleted and recreated, or restarted more than once.
    WalRestartedBySomeoneElse,
    /// SQLite restarted the WAL (salt-1 + 1) while no read transaction of ours was
    /// held, so frames after our position may have been checkpointed unseen.
    WalRestartedUnwatched,
    /// The same salts, but the checksum chain no longer reaches our position: frames
    /// were written again over the ones we shipped (after a crash of the application's
    /// host), or the WAL now ends before our position.
    FramesRewritten,
    /// The WAL was empty at the last run and the database file changed since (checked
    /// when no read transaction of ours was held throughout, or the WAL file changed).
    DatabaseChanged,
    /// The log cannot continue the store's history: the store refused a segment because
    /// its history moved on (emptied, or written by another copy of the database), or
    /// the log does not know the database state it continues (its page sums are lost).
    LineageUnknown,
}

impl std::fmt::Display for SnapshotReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FirstRun => "first run",
            Self::PositionForOtherHistory => "saved position is for another namespace or page size",
            Self::LogLacksPosition => "log lacks the position",
            Self::LogPastPosition => "log holds transactions past the saved position",
            Self::WalDeleted => "WAL deleted",
            Self::WalReplaced => "WAL deleted and created anew",
            Self::WalTruncated => "WAL truncated",
            Self::WalRestartedBySomeoneElse => "WAL restarted by someone else (salt-1 jumped)",
            Self::WalRestartedUnwatched => "WAL restarted while no read transaction was held",
            Self::FramesRewritten => "frames rewritten at the same position",
            Self::DatabaseChanged => "database file changed while the WAL was empty",
            Self::LineageUnknown => {
                "the store's history and this log's diverged, or the log lost its page sums"
            }
        })
    }
}

/// Whether the WAL continues from the last shipped frame: `Err` says why not.
pub(crate) type Continuity = std::result::Result<(), SnapshotReason>;

/// How a WAL header with other salts than `start`'s relates to it: `Ok` when it is
/// SQLite's restart of that generation (walRestartHdr sets salt-1 to the old one plus
/// one, salt-2 at random; a WAL created anew has both at random).
pub(crate) fn restart_kind(start: WalPosition, header: &wal::WalHeader) -> Continuity {
    if header.salt == start.salt {
        Err(SnapshotReason::FramesRewritten)
    } else if header.salt.0 == start.salt.0.wrapping_add(1) {
        Ok(())
    } else {
        Err(SnapshotReason::WalRestartedBySomeoneElse)
    }
}

/// Says, in the log, why a snapshot is shipped: a warning unless it is the first run.
pub(crate) fn log_snapshot(db: &Path, reason: SnapshotReason) {
    match reason {
        SnapshotReason::FirstRun => {
            tracing::info!(db = %db.display(), %reason, "shipping a snapshot of the whole database")
        }
        SnapshotReason::LineageUnknown => tracing::warn!(
            db = %db.display(),
            %reason,
            "the store cannot take the WAL's transactions on top of its history; shipping a snapshot of the whole database"
        ),
        _ => tracing::warn!(
            db = %db.display(),
            %reason,
            "the WAL does not continue from the last shipped frame; shipping a snapshot of the whole database"
        ),
    }
}

/// Which file a path names: (device, inode).
pub(crate) type WalIdentity = (u64, u64);

/// The identity of the WAL file now, None when there is none.
pub(crate) fn wal_identity(path: &Path) -> Result<Option<WalIdentity>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(file_identity(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("looking at {}", path.display()), e)),
    }
}

#[cfg(unix)]
fn file_identity(m: &std::fs::Metadata) -> WalIdentity {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Without inode numbers every WAL looks the same; the salts still tell.
#[cfg(not(unix))]
fn file_identity(_: &std::fs::Metadata) -> WalIdentity {
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(salt: (u32, u32)) -> wal::WalHeader {
        wal::WalHeader {
            page_size: 4096,
            checkpoint_seq: 1,
            salt,
            checksum: (0, 0),
            big_endian: false,
        }
    }

    #[test]
    fn only_salt_1_plus_one_is_a_restart_of_ours_and_it_wraps() {
        let at = |salt1| WalPosition {
            salt: (salt1, 77),
            frames: 3,
            checksum: (1, 2),
        };
        assert_eq!(restart_kind(at(5), &header((6, 12345))), Ok(()));
        assert_eq!(restart_kind(at(u32::MAX), &header((0, 9))), Ok(()));
        let jumped = Err(SnapshotReason::WalRestartedBySomeoneElse);
        assert_eq!(restart_kind(at(5), &header((7, 77))), jumped);
        assert_eq!(restart_kind(at(5), &header((4, 77))), jumped);
        let same = Err(SnapshotReason::FramesRewritten);
        assert_eq!(restart_kind(at(5), &header((5, 77))), same);
    }
}

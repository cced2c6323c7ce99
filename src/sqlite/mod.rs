//! SQLite ingestion: read a real SQLite database in WAL mode and ship its committed
//! transactions into a walvault log.
//!
//! * [`wal`] reads SQLite's own `-wal` file format (header, salts, cumulative checksums)
//!   and hands out committed transactions only.
//! * [`state`] is the replicator's position in that WAL, kept in a small sidecar file
//!   written atomically after the frames it covers are `Written` in the log.
//! * [`replicate`] decides, on each run, between shipping the new transactions and
//!   shipping a fresh snapshot (first run, or the WAL cannot prove it continues from
//!   the last shipped frame: the reason is reported), and in continuous mode holds a
//!   read transaction so that nobody else's checkpoint can reset the WAL before we have
//!   read it.
//! * [`dbfile`] is how the database file is read in a process that has SQLite
//!   connections to it: **never open and close that database's files outside SQLite**,
//!   since closing any descriptor drops the process's POSIX locks on the file, SQLite's
//!   included.
//! * [`attach`] runs the replicator inside the application's process, behind the commit
//!   hook of its connections: COMMIT returns once the transaction is at the durability
//!   the application chose.
//! * [`install`] restores a database file in place: sidecars removed before the new
//!   file appears, refused while another process has it open, temp files cleaned up.

mod attach;
mod continuity;
mod dbfile;
mod install;
mod replicate;
mod snapshot;
mod state;
pub(crate) mod wal;
mod watch;

pub use attach::{
    attach, attach_handle, attached_vault, detach_handle, take_last_error, AttachOptions,
    AttachedConnection, Vault,
};
pub use continuity::SnapshotReason;
pub use install::{restore_database, InstallOptions};
pub use replicate::{IngestReport, Replicator, ReplicatorConfig, DEFAULT_MAX_LAG, MIN_MAX_LAG};
pub use watch::WalWatcher;

use std::path::Path;

use crate::error::{Error, Result};

/// Runs SQLite's own `PRAGMA integrity_check` on the database at `path` (opened read-only);
/// an error carrying SQLite's findings unless it reports `ok`.
pub fn integrity_check(path: &Path) -> Result<()> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let context = format!("checking the integrity of {}", path.display());
    let conn = rusqlite::Connection::open_with_flags(path, flags)
        .map_err(|e| Error::sqlite(&context, e))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite(&context, e))?;
    let findings: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| Error::sqlite(&context, e))?;
    match findings.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        _ => Err(Error::sqlite(context, findings.join("; "))),
    }
}

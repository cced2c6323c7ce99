//! Notice of changes to a database's files, from the operating system.
//!
//! The daemon reads a commit as soon as SQLite writes it rather than on its next timed
//! poll. The directory holding the database is watched (not the WAL itself: SQLite
//! deletes and creates the WAL, and a watch on a deleted file goes with it), and a change
//! to the database, its `-wal` or its `-journal` wakes the waiter. Reads do not count:
//! the replicator's own reads of the WAL would otherwise wake it forever.
//!
//! Notification is a hint, never the proof of anything: a wake-up only makes the caller
//! poll sooner, and the caller still polls on a timer for filesystems that do not notify
//! (network filesystems) and for events the OS drops when its queue overflows.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// Watches one database's files. Dropping it stops the watch.
#[derive(Debug)]
pub struct WalWatcher {
    _watcher: RecommendedWatcher,
    changed: Arc<Notify>,
}

impl WalWatcher {
    /// Starts watching the directory of `db` for writes to `db`, `<db>-wal` and
    /// `<db>-journal`. Fails when the OS offers no notification for it (the caller then
    /// polls on a timer).
    pub fn new(db: &Path) -> Result<Self> {
        let name = db
            .file_name()
            .ok_or_else(|| Error::NotFound(format!("database file name in {}", db.display())))?;
        let names: Vec<OsString> = ["", "-wal", "-journal"]
            .iter()
            .map(|suffix| {
                let mut n = name.to_os_string();
                n.push(suffix);
                n
            })
            .collect();
        let changed = Arc::new(Notify::new());
        let wake = changed.clone();
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(event) if is_change(&event.kind) => {
                let ours = event.paths.iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| names.iter().any(|want| want == n))
                });
                if ours {
                    wake.notify_one();
                }
            }
            Ok(_) => {}
            // An error (a queue overflow, say) may hide a change: wake to be safe.
            Err(_) => wake.notify_one(),
        };
        let io = |e: notify::Error| {
            Error::io(
                format!("watching {} for changes", db.display()),
                std::io::Error::other(e.to_string()),
            )
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(io)?;
        let dir = match db.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(io)?;
        Ok(Self {
            _watcher: watcher,
            changed,
        })
    }

    /// Resolves once a change was reported since the last call returned (at once if one
    /// was reported meanwhile).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Whether an event may mean new content: writes, creations, removals, renames; not
/// reads, opens or closes after reading.
fn is_change(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Any | EventKind::Other => true,
        EventKind::Access(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_to_the_wal_wakes_the_watcher_and_a_read_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        std::fs::write(&db, b"db").unwrap();
        let wal = dir.path().join("app.db-wal");
        std::fs::write(&wal, b"wal").unwrap();
        let watcher = WalWatcher::new(&db).unwrap();
        // Drain whatever the setup reported.
        let _ = tokio::time::timeout(Duration::from_millis(200), watcher.changed()).await;

        let _ = std::fs::read(&wal).unwrap();
        std::fs::write(dir.path().join("other.db-wal"), b"x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), watcher.changed()).await;
        assert!(
            quiet.is_err(),
            "a read or another file's write woke the watcher"
        );

        std::fs::write(&wal, b"more").unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(5), watcher.changed()).await;
        assert!(woke.is_ok(), "a write to the WAL did not wake the watcher");
    }
}

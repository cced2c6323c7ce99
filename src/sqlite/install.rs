//! Restoring a SQLite database file in place: the output appears whole or not at all,
//! never beside another database's WAL, never under a process that has it open, and an
//! interrupted restore leaves no temp file behind.
//!
//! * **Temp file.** The database is written to `.<name>.walvault-restore-<uuid>` beside
//!   the output, which is removed when the restore fails or its future is dropped (a
//!   Ctrl-C). Its writer holds an `flock` on it while it lives; a restore removes such
//!   files of the same output that nobody holds locked, i.e. ones left by a killed run.
//!   (`flock` locks are separate from SQLite's `fcntl` locks and belong to the open file,
//!   so SQLite opening and closing the temp file for `integrity_check` does not drop it.)
//! * **Sidecars.** SQLite reads `<db>-wal` (and rolls back a hot `<db>-journal`) over
//!   whatever database file sits beside it: a restored file next to the old database's
//!   WAL is a corrupt or wrong database. So the sidecars go first: `-wal`, `-journal`,
//!   `-shm` are removed and the directory fsynced *before* the new file is renamed into
//!   place (then the directory is fsynced again). A crash at any point leaves the old
//!   database (perhaps without its WAL, which `force` gave up) or the new one without
//!   sidecars, never the new one beside the old WAL.
//! * **In use.** Replacing a database another process has open would pull it from under
//!   that process (it keeps reading and writing the old, unlinked file, and may write a
//!   WAL beside the new one). Before replacing, we take the write locks SQLite's unix VFS
//!   uses ourselves, without waiting: its PENDING, RESERVED and SHARED bytes of the
//!   database file and the WAL lock and "DMS" bytes of the `-shm`. Every SQLite
//!   connection to a WAL database holds a read lock on the DMS byte for as long as it is
//!   open, and any transaction holds the database's SHARED lock, so another process with
//!   the database open makes this fail, and the replacement is refused, changing
//!   nothing. Held until the rename, the locks also keep new connections out meanwhile.
//!   Not seen: connections of the calling process (POSIX locks never conflict within
//!   a process) and idle connections to a rollback-journal database (which hold no lock).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use uuid::Uuid;

use crate::error::{Error, InvalidInput, Result};
use crate::format::NamespaceName;
use crate::storage::fsutil::fsync_dir;
use crate::storage::restore::restore as restore_into;
use crate::storage::{RestoreOptions, RestoreProgress, RestoreSummary, Storage};

/// How [`restore_database`] puts the restored database in place.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Replace an existing database (and remove its `-wal`, `-shm` and `-journal`),
    /// unless another process has it open. Without it, an existing output or a
    /// leftover sidecar is an error.
    pub force: bool,
    /// Run SQLite's `PRAGMA integrity_check` on the restored file before it is put in
    /// place.
    pub integrity_check: bool,
    /// Set it to stop the restore from another task or thread (a signal handler): its
    /// next page write fails, the temp file is removed and the call returns an error,
    /// leaving the output as it was. Once the new file is being put in place, the
    /// restore completes.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// The sidecar files of a database, in the order they are removed: the WAL and the
/// rollback journal first (what SQLite would apply), the shared-memory index last.
const SIDECARS: [&str; 3] = ["-wal", "-journal", "-shm"];
/// The middle of a temp file's name: `.<output name>.walvault-restore-<uuid>`.
const TEMP_TAG: &str = ".walvault-restore-";

/// Restores `namespace` as of `options` into the SQLite database file `output`, as
/// the module docs describe: written to a locked temp file beside it, fsynced, checked
/// if asked, then put in place atomically and durably. On error, and when the returned
/// future is dropped before it completes, `output` is as it was and the temp file is
/// gone.
pub async fn restore_database<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    options: RestoreOptions,
    output: &Path,
    install: InstallOptions,
    progress: Option<&RestoreProgress>,
) -> Result<RestoreSummary> {
    let target = Target::new(output)?;
    target.check_replaceable(install.force)?;
    target.remove_stale_temps();
    let mut temp = target.create_temp()?;
    let cancel = install.cancel.as_deref();
    let io_err = |e| Error::io(format!("writing {}", temp.path.display()), e);
    let mut out = Cancellable {
        file: &mut temp.file,
        cancel,
    };
    let summary = restore_into(storage, namespace, options, &mut out, None, progress).await?;
    temp.file.sync_all().map_err(io_err)?;
    if install.integrity_check {
        check_cancel(cancel).map_err(io_err)?;
        super::integrity_check(&temp.path)?;
        remove_sidecars(&temp.path).map_err(io_err)?;
    }
    check_cancel(cancel).map_err(io_err)?;
    target.install(&mut temp, install.force)?;
    Ok(summary)
}

/// The temp file as the restore writes it: every write and seek first checks whether
/// the restore was cancelled.
struct Cancellable<'a> {
    file: &'a mut File,
    cancel: Option<&'a AtomicBool>,
}

fn check_cancel(cancel: Option<&AtomicBool>) -> io::Result<()> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(io::Error::other("the restore was cancelled")),
        _ => Ok(()),
    }
}

impl Write for Cancellable<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        check_cancel(self.cancel)?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Cancellable<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        check_cancel(self.cancel)?;
        self.file.seek(pos)
    }
}

/// The output path, split into the directory it lives in and its file name.
struct Target {
    path: PathBuf,
    dir: PathBuf,
    name: OsString,
}

impl Target {
    fn new(output: &Path) -> Result<Self> {
        let name = output.file_name().ok_or_else(|| {
            InvalidInput::Output(format!("{} does not name a file", output.display()))
        })?;
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Self {
            path: output.to_path_buf(),
            dir,
            name: name.to_os_string(),
        })
    }

    fn temp_prefix(&self) -> OsString {
        let mut prefix = OsString::from(".");
        prefix.push(&self.name);
        prefix.push(TEMP_TAG);
        prefix
    }

    /// Refuses, before any work, what the install would refuse: an existing output or
    /// sidecar without `force`; with it, a database another process has open.
    fn check_replaceable(&self, force: bool) -> Result<()> {
        let present: Vec<PathBuf> = std::iter::once(self.path.clone())
            .chain(SIDECARS.iter().map(|s| sidecar(&self.path, s)))
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .collect();
        match present.first() {
            None => Ok(()),
            Some(first) if !force => Err(InvalidInput::Output(format!(
                "{} exists; pass --force to replace it{}",
                first.display(),
                if *first == self.path {
                    ""
                } else {
                    " (a leftover SQLite sidecar file)"
                }
            ))
            .into()),
            Some(_) => SqliteLocks::take(&self.path).map(drop),
        }
    }

    /// Removes temp files of this output that no live restore holds locked.
    fn remove_stale_temps(&self) {
        let prefix = self.temp_prefix();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name
                .as_encoded_bytes()
                .starts_with(prefix.as_encoded_bytes())
                || name.as_encoded_bytes().ends_with(b"-wal")
                || name.as_encoded_bytes().ends_with(b"-shm")
                || name.as_encoded_bytes().ends_with(b"-journal")
            {
                continue;
            }
            let path = entry.path();
            match remove_if_unlocked(&path) {
                Ok(true) => {
                    tracing::info!(file = %path.display(), "removed the temp file of an interrupted restore")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove an old restore's temp file")
                }
            }
        }
    }

    /// A new temp file beside the output, created and locked by us. A stale-file sweep
    /// of another restore may remove a file in the instant before we lock it: then the
    /// name no longer leads to our file, and we make another.
    fn create_temp(&self) -> Result<TempFile> {
        let io_err = |e| Error::io(format!("creating a temp file in {}", self.dir.display()), e);
        for _ in 0..3 {
            let mut name = self.temp_prefix();
            name.push(Uuid::new_v4().simple().to_string());
            let path = self.dir.join(name);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_err)?;
            let temp = TempFile { path, file };
            if temp.file.try_lock().is_ok() && same_file(&temp.file, &temp.path) {
                return Ok(temp);
            }
        }
        let e = io::Error::other("another restore kept removing our temp file");
        Err(io_err(e))
    }

    /// Puts `temp` in place: with `force`, under SQLite's locks, sidecars first; without,
    /// by a link that fails if the output appeared meanwhile.
    fn install(&self, temp: &mut TempFile, force: bool) -> Result<()> {
        let io_err = |e| Error::io(format!("putting {} in place", self.path.display()), e);
        let exists = || {
            InvalidInput::Output(format!(
                "{} appeared meanwhile; nothing was replaced",
                self.path.display()
            ))
        };
        if !force {
            fs::hard_link(&temp.path, &self.path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => exists().into(),
                _ => io_err(e),
            })?;
            return fsync_dir(&self.dir).map_err(io_err);
        }
        let locks = SqliteLocks::take(&self.path)?;
        if let Ok(old) = fs::metadata(&self.path) {
            // The replacement keeps the old file's permission bits (not its owner).
            fs::set_permissions(&temp.path, old.permissions()).map_err(io_err)?;
        }
        remove_sidecars(&self.path).map_err(io_err)?;
        fsync_dir(&self.dir).map_err(io_err)?;
        fs::rename(&temp.path, &self.path).map_err(io_err)?;
        drop(locks); // the old file is unlinked; the new one was never locked
        fsync_dir(&self.dir).map_err(io_err)
    }
}

/// The restore's own temp file, removed (with any sidecars SQLite left beside it) when
/// dropped: on error, on a dropped future, and after a successful install (when the
/// name is gone or a second link of the output).
struct TempFile {
    path: PathBuf,
    file: File,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = remove_sidecars(&self.path);
    }
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes `db`'s `-wal`, `-journal` and `-shm`, in that order, if present.
fn remove_sidecars(db: &Path) -> io::Result<()> {
    for suffix in SIDECARS {
        match fs::remove_file(sidecar(db, suffix)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes the file at `path` if no one holds an `flock` on it; true if removed.
fn remove_if_unlocked(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => {
            fs::remove_file(path)?;
            remove_sidecars(path)?;
            Ok(true)
        }
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

/// SQLite's own locks on a database, taken by us (see the module docs); released when
/// dropped.
struct SqliteLocks {
    _files: Vec<File>,
}

/// Byte offsets of SQLite's unix-VFS locks: in the database file, the PENDING byte,
/// then RESERVED, then the 510 SHARED bytes; in the `-shm`, the eight WAL locks at 120
/// and the "DMS" byte every connection holds a read lock on at 128.
const DB_LOCKS: (u64, u64) = (0x4000_0000, 512);
const SHM_LOCKS: (u64, u64) = (120, 9);

impl SqliteLocks {
    /// Takes them without waiting, or says who is in the way.
    fn take(db: &Path) -> Result<Self> {
        let mut files = Vec::new();
        for (path, range) in [
            (db.to_path_buf(), DB_LOCKS),
            (sidecar(db, "-shm"), SHM_LOCKS),
        ] {
            let io_err = |e| Error::io(format!("locking {}", path.display()), e);
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(e)),
            };
            if !write_lock(&file, range).map_err(io_err)? {
                return Err(InvalidInput::Output(format!(
                    "{} is open in another process (it holds SQLite's locks on {}); close it before replacing it with --force; nothing was changed",
                    db.display(),
                    path.display()
                ))
                .into());
            }
            files.push(file);
        }
        Ok(Self { _files: files })
    }
}

/// An `fcntl` write lock on `range` (start, length) without waiting; false when
/// another process holds a conflicting lock.
#[cfg(unix)]
fn write_lock(file: &File, (start, len): (u64, u64)) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` is plain data, fully initialised below; `fcntl(F_SETLK)` reads
    // it and touches nothing else; the descriptor is open for the call.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    // SAFETY: as above; `lock` outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Elsewhere SQLite's locks cannot be probed this way; the replacement goes ahead.
#[cfg(not(unix))]
fn write_lock(_: &File, _: (u64, u64)) -> io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_unlocked_temps_of_this_output_only() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::new(&dir.path().join("out.db")).unwrap();
        let live = target.create_temp().unwrap();
        let stale = dir.path().join(".out.db.walvault-restore-dead");
        let other = dir.path().join(".other.db.walvault-restore-dead");
        for path in [&stale, &other] {
            std::fs::write(path, b"left by a killed run").unwrap();
        }
        std::fs::write(sidecar(&stale, "-wal"), b"x").unwrap();
        target.remove_stale_temps();
        assert!(live.path.exists(), "a live restore's temp file was removed");
        assert!(!stale.exists() && !sidecar(&stale, "-wal").exists());
        assert!(other.exists(), "another output's temp file was removed");
        let path = live.path.clone();
        drop(live);
        assert!(!path.exists());
    }

    #[test]
    fn a_bare_name_lives_in_the_current_directory_and_a_root_is_refused() {
        assert_eq!(Target::new(Path::new("r.db")).unwrap().dir, Path::new("."));
        assert!(Target::new(Path::new("/")).is_err());
        assert!(Target::new(Path::new("")).is_err());
    }
}

//! Reading a database file that SQLite connections in this process hold locks on,
//! without dropping those locks.
//!
//! POSIX advisory (`fcntl`) locks belong to a (process, inode) pair, not to a
//! descriptor: closing *any* descriptor of a file drops every lock the process holds on
//! it, SQLite's included. A replicator that opened the database with `File::open`, read
//! it and closed it silently dropped the SHARED lock of its own held read transaction;
//! the application's last connection then got its EXCLUSIVE lock on close, believed it
//! was alone, checkpointed and deleted the WAL, and the commits in it were never shipped.
//!
//! **The rule:** in a process with SQLite connections to a database, walvault never
//! opens *and closes* that database's files outside SQLite. Every read of the database
//! file goes through [`DbFile`], a descriptor opened once per (device, inode) and kept
//! in a process-wide table that never closes it, as SQLite's own unix VFS keeps its
//! inode table. Reads are positional (`pread`), so one descriptor serves every reader.
//!
//! * The `-shm` is never opened by walvault.
//! * The `-wal` is read with ordinary opens: SQLite takes no locks on it (its WAL locks
//!   live in the `-shm`, its database locks in the database file).
//!
//! The cost: one descriptor per database inode this process ever read. A database
//! replaced by a rename keeps its old descriptor (and the old file's disk space) until
//! the process exits.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// A database file opened for reading through the process-wide table; dropping it
/// closes nothing.
#[derive(Debug, Clone)]
pub(crate) struct DbFile {
    file: Arc<File>,
}

impl DbFile {
    /// The database file at `path`, or None when there is none.
    pub(crate) fn open(path: &Path) -> io::Result<Option<Self>> {
        match table::open(path) {
            Ok(file) => Ok(Some(Self { file })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file's length in bytes now.
    pub(crate) fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Reads at `offset` until `buf` is full or the file ends; the bytes read.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match positional_read(&self.file, &mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

#[cfg(unix)]
fn positional_read(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn positional_read(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

#[cfg(unix)]
mod table {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Mutex, OnceLock};

    type Key = (u64, u64);

    /// Every database descriptor this process opened, by (device, inode). `spare`
    /// holds the losers of a race between two openers of one inode: they hold no
    /// locks, but closing them would still drop the process's locks on it.
    #[derive(Default)]
    struct Table {
        by_inode: HashMap<Key, Arc<File>>,
        spare: Vec<File>,
    }

    fn table() -> &'static Mutex<Table> {
        static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
        TABLE.get_or_init(Mutex::default)
    }

    fn key(m: &std::fs::Metadata) -> Key {
        (m.dev(), m.ino())
    }

    /// The kept descriptor of the file at `path` now, opened on first use.
    pub(super) fn open(path: &Path) -> io::Result<Arc<File>> {
        let wanted = key(&std::fs::metadata(path)?);
        if let Some(file) = lock().by_inode.get(&wanted) {
            return Ok(Arc::clone(file));
        }
        // Opened outside the table's mutex (an open may block on a slow disk). The path
        // may name another inode by now: the descriptor's own inode is the key.
        let file = File::open(path)?;
        let opened = key(&file.metadata()?);
        let mut table = lock();
        if let Some(kept) = table.by_inode.get(&opened) {
            let kept = Arc::clone(kept);
            table.spare.push(file);
            return Ok(kept);
        }
        let file = Arc::new(file);
        table.by_inode.insert(opened, Arc::clone(&file));
        Ok(file)
    }

    /// The table survives a panic of another holder: its entries stay valid.
    fn lock() -> std::sync::MutexGuard<'static, Table> {
        table()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Elsewhere closing one handle drops no lock held through another (Windows locks
/// belong to a handle), so each use opens its own.
#[cfg(not(unix))]
mod table {
    use super::*;

    pub(super) fn open(path: &Path) -> io::Result<Arc<File>> {
        File::open(path).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_descriptor_per_inode_and_reads_stop_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"0123456789").unwrap();
        let a = DbFile::open(&path).unwrap().unwrap();
        let b = DbFile::open(&path).unwrap().unwrap();
        #[cfg(unix)]
        assert!(Arc::ptr_eq(&a.file, &b.file));
        let mut buf = [0u8; 8];
        assert_eq!(b.read_at(&mut buf, 4).unwrap(), 6);
        assert_eq!(&buf[..6], b"456789");
        assert_eq!(a.len().unwrap(), 10);
        assert!(DbFile::open(&dir.path().join("none")).unwrap().is_none());
    }
}

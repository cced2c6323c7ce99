//! One writer per log directory. The directory holds the open segment, the frame
//! allocator and the saved position: two processes appending to them would interleave
//! frames and leave a segment no store accepts (a second `walvault replicate` of the same
//! database, started by mistake beside the first). So the writer takes an exclusive
//! `flock` on `<dir>/LOCK` when it opens, and keeps the file open while it lives; the
//! kernel lets go when the process ends, however it ends, so a crash leaves no stale
//! lock. Off Unix there is no lock.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::NamespaceName;

/// The held lock (released when dropped).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// The lock file's name inside the log directory.
const NAME: &str = "LOCK";

impl DirLock {
    /// Takes the lock on `dir`, or fails at once, naming the directory, if another
    /// writer (this process or another) holds it.
    pub(crate) fn take(dir: &Path, namespace: &NamespaceName) -> Result<Self> {
        let path = dir.join(NAME);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor we own; it only takes an advisory lock.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(Error::Conflict {
                        namespace: namespace.to_string(),
                        detail: format!(
                            "the local log {} is in use by another writer (is `walvault \
                             replicate` already running for this database?)",
                            dir.display()
                        ),
                    });
                }
                return Err(Error::io(format!("locking {}", path.display()), e));
            }
        }
        let _ = namespace;
        Ok(Self { _file: file })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let ns = NamespaceName::new("app").unwrap();
        let first = DirLock::take(dir.path(), &ns).unwrap();
        let second = DirLock::take(dir.path(), &ns).unwrap_err();
        assert!(
            second.to_string().contains("in use by another writer"),
            "{second}"
        );
        drop(first);
        DirLock::take(dir.path(), &ns).unwrap();
    }
}

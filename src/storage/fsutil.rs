//! Small filesystem helpers that make writes durable: data is written to a temp file,
//! fsynced, renamed into place, and the directory fsynced, so a crash leaves either the
//! old state or the new one, never a torn file under the final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::format::SealedSegment;

/// Prefix of temp files; files with this prefix are never read as data.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// fsyncs a directory so that entries created or renamed in it survive a crash.
/// An empty path (the parent of a bare relative name) is the current directory.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return File::open(".")?.sync_all();
    }
    File::open(dir)?.sync_all()
}

/// A fresh temp path in `dir`.
pub(crate) fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{TEMP_PREFIX}{}", Uuid::new_v4().simple()))
}

/// A path removed when this is dropped: a temp file that must not outlive its writer,
/// also when the future writing it is dropped (a cancelled restore) rather than ending.
pub(crate) struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A failed [`write_atomic`]: `renamed` says whether the new file had already replaced
/// the old one (so only the directory fsync failed, and the old file is gone).
#[derive(Debug)]
pub(crate) struct AtomicWriteError {
    pub renamed: bool,
    pub source: io::Error,
}

impl From<AtomicWriteError> for io::Error {
    fn from(e: AtomicWriteError) -> Self {
        e.source
    }
}

/// Writes `parts` to `dir/name` atomically and durably, returning the open file (for
/// callers that keep appending to it).
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    parts: &[&[u8]],
) -> Result<File, AtomicWriteError> {
    let tmp = temp_path(dir);
    let before_rename = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        fs::rename(&tmp, dir.join(name))?;
        Ok(file)
    })();
    let file = before_rename.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        AtomicWriteError {
            renamed: false,
            source,
        }
    })?;
    fsync_dir(dir).map_err(|source| AtomicWriteError {
        renamed: true,
        source,
    })?;
    Ok(file)
}

/// Writes `segment` to `dir/name` atomically and durably, with the protocol of
/// [`write_atomic`] (`docs/FORMAT.md` §6): a temp name, fsynced data, a rename, an
/// fsynced directory. A segment in memory is written from there. A segment held in a
/// spill file is never loaded: its file is fsynced and hard-linked into `dir` (no copy
/// when the spill file lives on the same filesystem), or, when linking fails (another
/// filesystem, links unsupported), copied in the kernel's chunks into a temp file.
pub(crate) fn write_segment(dir: &Path, name: &str, segment: &SealedSegment) -> io::Result<()> {
    let (Some(spill), Some(file)) = (segment.spill_path(), segment.spill_file()) else {
        return write_atomic(dir, name, &[segment.encoded()])
            .map(drop)
            .map_err(io::Error::from);
    };
    file.sync_all()?;
    let tmp = temp_path(dir);
    let placed = link_or_copy(spill, &tmp).and_then(|()| fs::rename(&tmp, dir.join(name)));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(dir)
}

/// Puts the bytes of `from` at the new path `to`, durably: a hard link (the data is
/// already fsynced by the caller), else a copy that is fsynced.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    // A file of its own, so its cursor is not shared with other readers of the spill file.
    let mut source = File::open(from)?;
    let mut out = OpenOptions::new().write(true).create_new(true).open(to)?;
    io::copy(&mut source, &mut out)?;
    out.sync_all()
}

/// Creates `dir` (and missing parents) and makes the new entries durable.
/// An empty path (the parent of a bare relative name such as `app.db-walvault`) is the
/// current directory, which exists.
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read (fewer than
/// `buf.len()` only at the end).
pub(crate) fn read_full(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Starts writing `range` of `file` back to the disk without waiting for it, so that
/// the next `fdatasync` finds it (mostly) done. Only a hint, and with `WRITE` alone it
/// does not consume a writeback error the `fdatasync` would report; still, an error it
/// returns stops the caller (the log, a restore) rather than being ignored, which is the
/// conservative choice.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(file: &File, range: std::ops::Range<u64>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        i64::try_from(range.start),
        i64::try_from(range.end.saturating_sub(range.start)),
    ) else {
        return Ok(());
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a system call on a descriptor that `file` keeps open throughout; it reads
    // and writes no memory of this process.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Not supported here (some filesystems, some sandboxes): nothing was started.
        Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &File, _range: std::ops::Range<u64>) -> io::Result<()> {
    Ok(())
}

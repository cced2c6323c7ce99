//! Spill files: where a segment too large for the memory budget lives while it is built
//! and until it is stored.
//!
//! This is the format layer's only I/O. A [`SegmentBuilder`](super::SegmentBuilder) told
//! where it may spill ([`with_spill`](super::SegmentBuilder::with_spill)) keeps its frames
//! in memory up to a threshold, then moves them to a file and writes every later frame
//! through a small buffer; sealing appends the commit table, index and trailer and fills
//! in the header in place. The sealed segment then reads its frames from that file, so a
//! snapshot of a database of any size costs a bounded amount of memory.
//!
//! The file is named `.spill-<uuid>` in the spill directory and removed when the last
//! handle to it drops. A backend on the same filesystem may hard-link it into place
//! instead of copying; the link outlives the spill name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Prefix of spill files. Anything with it left in a directory after a crash is garbage.
pub(crate) const SPILL_PREFIX: &str = ".spill-";

/// The most frames a spilling builder buffers before it writes them to its file.
pub(crate) const SPILL_WRITE_CHUNK: usize = 1 << 20;

/// A segment's bytes in a local file, removed when dropped.
#[derive(Debug)]
pub(crate) struct SpillFile {
    file: File,
    path: PathBuf,
}

impl SpillFile {
    /// Creates a new, empty spill file in `dir` (created if missing).
    pub(crate) fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{SPILL_PREFIX}{}", Uuid::new_v4().simple()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self { file, path })
    }

    /// The file's path (valid until this is dropped).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Fills `buf` from `offset`; a file shorter than that is an `UnexpectedEof` error.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes spill files a crashed process left in `dir`. Errors are ignored: a leftover
/// file wastes space but is never read.
pub(crate) fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPILL_PREFIX)
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

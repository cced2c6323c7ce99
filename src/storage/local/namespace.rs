//! One namespace of the local backend: its catalog, its single writer, and reads of its
//! segment files. Everything here is blocking and runs on tokio's blocking threads.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use bytes::Bytes;

use super::{LOCK_FILE, SEGMENT_EXT};
use crate::error::{Error, FormatError, InvalidInput, Part, Result};
use crate::format::{
    commits_range, index_range, parse_index_with_crc, verify_frame, CommitTable, Frame, Header,
    NamespaceName, PageIndex, SealedSegment, SegmentKey, FRAME_HEADER_LEN, HEADER_LEN,
};
use crate::storage::catalog::{Catalog, CatalogEntry};
use crate::storage::frames;
use crate::storage::fsutil::{create_dir_durable, fsync_dir, write_segment};
use crate::storage::listing::{self, SharedCatalog};
use crate::storage::manifest::{self, Edit, ManifestFile};
use crate::storage::{check_append, check_replace, entry_for};

#[derive(Debug)]
pub(super) struct Namespace {
    pub name: NamespaceName,
    pub dir: PathBuf,
    pub catalog: SharedCatalog,
    /// Held from the catalog check through `on_store`: stores of one namespace run one at
    /// a time, so the manifest is appended in frame order and callbacks fire in order.
    pub store_lock: async_lock::Mutex<()>,
    /// `None` until the first store takes the namespace's lock.
    writer: Mutex<Option<Writer>>,
    /// Set when a manifest write failed: its on-disk state is unknown until reopened.
    poisoned: OnceLock<String>,
    /// The manifest's identity and length when last read (see [`Namespace::refresh`]).
    seen: Mutex<Option<ManifestStamp>>,
}

/// What tells a reader the manifest changed: its inode (compaction renames a new file
/// into place), length (appends) and modification time.
type ManifestStamp = (u64, u64, Option<std::time::SystemTime>);

fn manifest_stamp(dir: &Path) -> Option<ManifestStamp> {
    let m = fs::metadata(dir.join(crate::storage::manifest::MANIFEST_FILE)).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some((inode, m.len(), m.modified().ok()))
}

/// The exclusive right to write a namespace: an advisory lock on `LOCK`, held for the
/// life of this handle, and the manifest opened for appending.
#[derive(Debug)]
struct Writer {
    _lock: File,
    manifest: Option<ManifestFile>,
}

impl Namespace {
    /// Opens for reading: replays the manifest without touching it.
    pub(super) fn open(name: NamespaceName, dir: PathBuf) -> Result<Self> {
        let seen = manifest_stamp(&dir);
        let catalog = manifest::load(&dir)?.unwrap_or_default();
        Ok(Self {
            seen: Mutex::new(seen),
            name,
            dir,
            catalog: Arc::new(RwLock::new(catalog)),
            store_lock: async_lock::Mutex::new(()),
            writer: Mutex::new(None),
            poisoned: OnceLock::new(),
        })
    }

    /// Replays the manifest again if it changed since this handle last read it (a
    /// writer in another handle or process stored segments). The writer's own view is
    /// always current, so it skips this.
    pub(super) fn refresh(&self) -> Result<()> {
        if self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        let stamp = manifest_stamp(&self.dir);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if stamp.is_some() && stamp == *seen {
            return Ok(());
        }
        let catalog = manifest::load(&self.dir)?.unwrap_or_default();
        *self.catalog.write().unwrap_or_else(PoisonError::into_inner) = catalog;
        *seen = stamp;
        Ok(())
    }

    pub(super) fn check_usable(&self) -> Result<()> {
        match self.poisoned.get() {
            Some(cause) => Err(Error::Poisoned {
                namespace: self.name.to_string(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn segment_path(&self, key: &SegmentKey) -> PathBuf {
        self.dir.join(format!("{key}{SEGMENT_EXT}"))
    }

    /// Stores `segment` (the caller holds the store lock); returns the durable frame number.
    pub(super) fn store(&self, segment: &SealedSegment) -> Result<u64> {
        let mut slot = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = match slot.take() {
            Some(writer) if self.vanished(&writer) => {
                tracing::warn!(namespace = %self.name, dir = %self.dir.display(), "the namespace's manifest vanished from the store (emptied or removed); its history starts over");
                drop(writer);
                self.acquire_writer()?
            }
            Some(writer) => writer,
            None => self.acquire_writer()?,
        };
        let writer = slot.insert(writer);
        let entry = entry_for(segment);
        if !check_append(&listing::read(&self.catalog), &self.name, &entry)? {
            return Ok(listing::read(&self.catalog).durable_frame_no());
        }
        self.write_segment(segment)?;
        let durable = self
            .record(&mut writer.manifest, entry)
            .inspect_err(|e| self.poison(e))?;
        self.compact(&mut writer.manifest);
        Ok(durable)
    }

    /// Replaces `inputs` with `output` (the caller holds the store lock): writes the
    /// output's file, records the inputs as retired (for garbage collection), then
    /// rewrites the manifest as one snapshot of the new catalog, atomically.
    pub(super) fn replace(&self, inputs: &[SegmentKey], output: &SealedSegment) -> Result<()> {
        let mut slot = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = match slot.take() {
            Some(writer) if self.vanished(&writer) => {
                tracing::warn!(namespace = %self.name, dir = %self.dir.display(), "the namespace's manifest vanished from the store (emptied or removed); its history starts over");
                drop(writer);
                self.acquire_writer()?
            }
            Some(writer) => writer,
            None => self.acquire_writer()?,
        };
        let writer = slot.insert(writer);
        let next = check_replace(&listing::read(&self.catalog), &self.name, inputs, output)?;
        self.write_segment(output)?;
        super::gc::record_retired(&self.dir, inputs)?;
        match ManifestFile::create(&self.dir, &next) {
            Ok(file) => writer.manifest = Some(file),
            Err(failed) => {
                let context = format!("rewriting the manifest of {}", self.name);
                let e = Error::io(context, failed.source);
                // Renamed but not durable: the manifest on disk is unknown until reopened.
                if failed.renamed {
                    self.poison(&e);
                }
                return Err(e);
            }
        }
        *listing::write(&self.catalog) = next;
        Ok(())
    }

    /// Creates this namespace as a fork holding `catalog` (the caller holds the store
    /// lock): takes the namespace's lock, refuses if it has history, writes the cut
    /// segment if any, then the manifest.
    pub(super) fn create_fork(&self, catalog: Catalog, cut: Option<&SealedSegment>) -> Result<()> {
        let mut slot = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let writer = match slot.take() {
            Some(writer) if self.vanished(&writer) => {
                tracing::warn!(namespace = %self.name, dir = %self.dir.display(), "the namespace's manifest vanished from the store (emptied or removed); its history starts over");
                drop(writer);
                self.acquire_writer()?
            }
            Some(writer) => writer,
            None => self.acquire_writer()?,
        };
        let writer = slot.insert(writer);
        if writer.manifest.is_some() || listing::read(&self.catalog).durable_frame_no() > 0 {
            return Err(crate::storage::fork::target_exists(&self.name));
        }
        if let Some(cut) = cut {
            self.write_segment(cut)?;
        }
        let file = ManifestFile::create(&self.dir, &catalog)
            .map_err(|e| Error::io(format!("writing the manifest of {}", self.name), e.source))?;
        writer.manifest = Some(file);
        *listing::write(&self.catalog) = catalog;
        Ok(())
    }

    /// Writes `segment`'s file durably, from memory or by linking its spill file.
    fn write_segment(&self, segment: &SealedSegment) -> Result<()> {
        let key = segment.key();
        write_segment(&self.dir, &format!("{key}{SEGMENT_EXT}"), segment)
            .map_err(|e| Error::io(format!("writing segment {key} of {}", self.name), e))
    }

    /// Takes the namespace's lock, then replays the manifest again (another writer may
    /// have appended since this handle loaded it) and drops a torn tail, which only the
    /// lock holder may do.
    /// True when this writer's manifest is no longer in the store (someone emptied or
    /// removed the namespace): appending to the file it holds open would store nothing
    /// anyone can find. The writer is then taken again over what the store now holds.
    fn vanished(&self, writer: &Writer) -> bool {
        writer.manifest.is_some()
            && !self
                .dir
                .join(crate::storage::manifest::MANIFEST_FILE)
                .exists()
    }

    fn acquire_writer(&self) -> Result<Writer> {
        make_dir_durable(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Conflict {
                    namespace: self.name.to_string(),
                    detail: format!("{} is locked", path.display()),
                })
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        let (manifest, catalog) = match ManifestFile::open(&self.dir)? {
            Some((manifest, catalog)) => (Some(manifest), catalog),
            None => (None, Catalog::default()),
        };
        *listing::write(&self.catalog) = catalog;
        Ok(Writer {
            _lock: lock,
            manifest,
        })
    }

    /// Appends the edit, then updates the catalog. Returns the new durable frame number.
    fn record(&self, manifest: &mut Option<ManifestFile>, entry: CatalogEntry) -> Result<u64> {
        let io_err = |e| Error::io(format!("writing the manifest of {}", self.name), e);
        let file = match manifest.take() {
            Some(file) => file,
            None => ManifestFile::create(&self.dir, &listing::read(&self.catalog))
                .map_err(|e| io_err(e.source))?,
        };
        manifest
            .insert(file)
            .append(&Edit::Add(entry))
            .map_err(io_err)?;
        let mut catalog = listing::write(&self.catalog);
        catalog.push(entry);
        Ok(catalog.durable_frame_no())
    }

    /// Rewrites the manifest as a snapshot when due. The store already succeeded, so a
    /// failure is only logged, unless the new file replaced the old one without its
    /// directory entry being made durable: then this handle must stop writing.
    fn compact(&self, manifest: &mut Option<ManifestFile>) {
        let Some(file) = manifest.as_mut() else {
            return;
        };
        if let Err(e) = file.maybe_compact(&listing::read(&self.catalog)) {
            let context = format!("compacting the manifest of {}", self.name);
            if e.renamed {
                self.poison(&Error::io(context, e.source));
            } else {
                tracing::warn!(namespace = %self.name, error = %e.source, "{context} failed; will retry");
            }
        }
    }

    fn poison(&self, e: &Error) {
        let _ = self.poisoned.set(e.to_string());
        tracing::error!(namespace = %self.name, error = %e, "manifest write failed; namespace refuses stores until reopened");
    }

    pub(super) fn read_segment(&self, key: &SegmentKey) -> Result<SealedSegment> {
        let path = self.segment_path(key);
        let bytes = fs::read(&path).map_err(|e| self.read_error(key, &path, e))?;
        let segment = SealedSegment::decode(Bytes::from(bytes))
            .map_err(|e| Error::corrupt(self.describe(key, &path), e))?;
        self.check_key(key, segment.key(), &path)?;
        Ok(segment)
    }

    /// `NotFound` unless the catalog holds `key` or its file is still there: segments a
    /// compaction replaced stay readable by key until garbage collection, so restores
    /// that planned before the edit keep working.
    pub(super) fn check_catalogued(&self, key: &SegmentKey) -> Result<()> {
        if listing::read(&self.catalog).get(key).is_none() && !self.segment_path(key).exists() {
            return Err(Error::NotFound(format!(
                "segment {key} in namespace {}",
                self.name
            )));
        }
        Ok(())
    }

    /// Reads only the frames at `positions` (ascending) and the header, verifying each
    /// frame's checksum. The frames share one buffer holding just them, so memory
    /// follows the frames asked for; consecutive positions are read with one call.
    ///
    /// Unneeded frames between two wanted ones are not read to save a call: from the
    /// page cache, copying one frame costs more than a system call, and on a cold
    /// cache the kernel's readahead already reads nearby frames in one request.
    pub(super) fn read_frames(
        &self,
        key: &SegmentKey,
        positions: &[u32],
    ) -> Result<Vec<(u32, Bytes)>> {
        if !positions.windows(2).all(|w| w[0] < w[1]) {
            return Err(InvalidInput::Config(format!(
                "frame positions for segment {key} must be strictly ascending"
            ))
            .into());
        }
        let (opened, header, _) = self.open_segment(key)?;
        if positions
            .last()
            .is_some_and(|&last| last >= header.frame_count)
        {
            let reason = FormatError::Invalid {
                part: Part::PageIndex,
                offset: 0,
                reason: "frame positions beyond the segment",
            };
            return Err(opened.corrupt(reason));
        }
        let frame_len = FRAME_HEADER_LEN + header.page_size as usize;
        let mut buf = vec![0u8; positions.len() * frame_len];
        let mut i = 0;
        while i < positions.len() {
            let mut end = i + 1;
            while end < positions.len() && positions[end] == positions[end - 1] + 1 {
                end += 1;
            }
            let off = HEADER_LEN as u64 + u64::from(positions[i]) * frame_len as u64;
            opened.read_at(&mut buf[i * frame_len..end * frame_len], off)?;
            i = end;
        }
        let buf = Bytes::from(buf);
        let frame = |j: usize| buf.slice(j * frame_len..(j + 1) * frame_len);
        let verify = |(j, &position): (usize, &u32)| {
            verify_frame(&header, position, frame(j)).map_err(|e| opened.corrupt(e))
        };
        positions.iter().enumerate().map(verify).collect()
    }

    /// Reads the consecutive frames at `run` whole, verifying each.
    pub(super) fn read_run(&self, key: &SegmentKey, run: Range<u32>) -> Result<Vec<Frame>> {
        let (opened, header, _) = self.open_segment(key)?;
        let range = frames::run_range(&header, &run).map_err(|e| opened.corrupt(e))?;
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        opened.read_at(&mut bytes, range.start)?;
        frames::decode_run(&header, run, Bytes::from(bytes)).map_err(|e| opened.corrupt(e))
    }

    /// Reads the header and the page index only, verifying both.
    pub(super) fn read_index(&self, key: &SegmentKey) -> Result<PageIndex> {
        let (opened, header, range) = self.open_segment(key)?;
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        opened.read_at(&mut bytes, range.start)?;
        parse_index_with_crc(&header, Bytes::from(bytes)).map_err(|e| opened.corrupt(e))
    }

    /// Reads the header and the commit table only, verifying both.
    pub(super) fn read_commits(&self, key: &SegmentKey) -> Result<CommitTable> {
        let (opened, header, _) = self.open_segment(key)?;
        let range = commits_range(&header).map_err(|e| opened.corrupt(e))?;
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        opened.read_at(&mut bytes, range.start)?;
        CommitTable::parse(&header, &bytes).map_err(|e| opened.corrupt(e))
    }

    /// Opens a segment file and reads its header, verified and checked against `key`;
    /// returns the header and where the page index lies.
    fn open_segment(&self, key: &SegmentKey) -> Result<(OpenSegment<'_>, Header, Range<u64>)> {
        let path = self.segment_path(key);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => return Err(self.read_error(key, &path, e)),
        };
        let opened = OpenSegment {
            namespace: self,
            key: *key,
            path,
            file,
        };
        let mut head = [0u8; HEADER_LEN];
        opened.read_at(&mut head, 0)?;
        let (header, index) = index_range(&head).map_err(|e| opened.corrupt(e))?;
        self.check_key(key, header.key(), &opened.path)?;
        Ok((opened, header, index))
    }

    fn check_key(&self, expected: &SegmentKey, found: SegmentKey, path: &Path) -> Result<()> {
        if found == *expected {
            return Ok(());
        }
        let reason = FormatError::Invalid {
            part: Part::Header,
            offset: 0,
            reason: "file holds a different segment than its name says",
        };
        Err(Error::corrupt(self.describe(expected, path), reason))
    }

    fn read_error(&self, key: &SegmentKey, path: &Path, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!(
                "segment {key} of {} is in the manifest but its file {} is missing",
                self.name,
                path.display()
            )),
            _ => Error::io(format!("reading {}", path.display()), e),
        }
    }

    fn describe(&self, key: &SegmentKey, path: &Path) -> String {
        format!("segment {key} of {} ({})", self.name, path.display())
    }
}

/// Creates `dir`, then fsyncs it, its parent (the store root) and the root's parent, so a
/// directory that a crashed run created but never synced is made durable too.
fn make_dir_durable(dir: &Path) -> io::Result<()> {
    create_dir_durable(dir)?;
    let nonempty = |p: &&Path| !p.as_os_str().is_empty();
    for ancestor in dir.ancestors().filter(nonempty).take(3) {
        fsync_dir(ancestor)?;
    }
    Ok(())
}

/// A segment file open for ranged reads, with what its errors name.
struct OpenSegment<'a> {
    namespace: &'a Namespace,
    key: SegmentKey,
    path: PathBuf,
    file: File,
}

impl OpenSegment<'_> {
    /// Reads exactly `buf.len()` bytes at `offset`; a file too short for them is corrupt.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match read_exact_at(&self.file, buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let actual = self.file.metadata().map_or(0, |m| m.len());
                let expected = offset + buf.len() as u64;
                Err(self.corrupt(FormatError::Length { expected, actual }))
            }
            Err(e) => Err(self.namespace.read_error(&self.key, &self.path, e)),
        }
    }

    fn corrupt(&self, e: FormatError) -> Error {
        Error::corrupt(self.namespace.describe(&self.key, &self.path), e)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

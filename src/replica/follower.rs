//! A follower keeps a local database file equal to a namespace's latest durable state.
//!
//! The first catch-up restores the latest state (each page read once). Later ones apply
//! the committed transactions after the recorded position, page by page, in place. The
//! position is kept in a sidecar file `<output>.walvault-position`, replaced atomically
//! after the database file is fsynced, so after a crash the follower re-applies at most
//! the transactions since the last recorded position (page images: applying them again
//! changes nothing) and never skips one. The sidecar is written before the first restore
//! too (position 0), so it also marks the output as the follower's: an existing file
//! without one is never replaced.
//!
//! Readers use the output through SQLite while the follower runs. The file is kept in
//! rollback-journal mode (header bytes 18 and 19 set to 1, whatever the source's WAL mode)
//! so readers open no WAL beside it, and each catch-up:
//!
//! * holds SQLite's own exclusive lock (`BEGIN EXCLUSIVE` on a connection of its own)
//!   while it writes pages, so a reader's transaction sees the database before or after
//!   a catch-up, never halfway;
//! * bumps the file change counter (header bytes 24 and 92), which tells connections
//!   that stay open to drop their cached pages at their next transaction.
//!
//! Apart from those header bytes (and the page count in bytes 28..32, which the follower
//! sets from the commit and which equals the source's) the output equals the source
//! database page for page.
//!
//! Memory stays bounded whatever the size of a segment or a transaction: a segment's
//! frames are read a run at a time (a share of the memory budget) and written as they
//! come. The lock is taken once the first run is read and held until the segment's last
//! commit is written and fsynced, so a segment larger than a run (a snapshot, a large
//! transaction) keeps readers waiting while its later runs are fetched too, and readers
//! still see the output only between segments. A segment within one run is fetched
//! whole before the lock is taken.
//!
//! A crash in the middle of a catch-up leaves the output half-applied until the next
//! catch-up applies the same transactions again. That next catch-up has to take SQLite's
//! lock on the half-applied file first, which SQLite refuses if the header claims more
//! pages than the file holds, so the writes are ordered never to leave such a file behind
//! (see `plan`), and a catch-up that finds one anyway (after a power loss) first extends
//! the file to the length its header claims.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::{SegmentTxns, TxnFrame};
use crate::error::{Error, FormatError, InvalidInput, Part, Result};
use crate::format::{Commit, NamespaceName};
use crate::storage::fsutil::{fsync_dir, write_atomic};
use crate::storage::{RestoreOptions, Storage};

/// How long a catch-up waits for readers to let go of the output.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps `output` in step with a namespace. See the module docs.
#[derive(Debug)]
pub struct Follower<S: Storage> {
    storage: S,
    namespace: NamespaceName,
    output: PathBuf,
    sidecar: PathBuf,
    /// The commit frame applied; None until the sidecar exists.
    position: Option<u64>,
    /// The lineage checksum of that commit (0: unknown, as in a version 1 sidecar), so
    /// a later catch-up proves the store still holds the history the replica is at.
    checksum: u64,
}

impl<S: Storage> Follower<S> {
    /// A follower of `namespace` writing `output`, resuming from its sidecar if there is
    /// one. A sidecar that records applied frames without its database file is an error
    /// (the position would lie), and so is an existing `output` without a sidecar (it is
    /// not the follower's to replace).
    pub fn open(storage: S, namespace: NamespaceName, output: impl Into<PathBuf>) -> Result<Self> {
        let output = output.into();
        let mut sidecar = output.clone().into_os_string();
        sidecar.push(".walvault-position");
        let sidecar = PathBuf::from(sidecar);
        let (position, checksum) = match read_position(&sidecar)? {
            Some((frame_no, checksum)) => (Some(frame_no), checksum),
            None => (None, 0),
        };
        match position {
            Some(frame_no) if frame_no > 0 && !output.exists() => {
                return Err(Error::NotFound(format!(
                    "{} (its position file {} says frame {frame_no} was applied)",
                    output.display(),
                    sidecar.display()
                )));
            }
            None if output.exists() => {
                return Err(InvalidInput::Output(format!(
                    "{} exists and has no position file {}: it is not a follower's output; \
                     remove it or follow into another path",
                    output.display(),
                    sidecar.display()
                ))
                .into());
            }
            _ => {}
        }
        Ok(Self {
            storage,
            namespace,
            output,
            sidecar,
            position,
            checksum,
        })
    }

    /// The commit frame the output file is at (0 before the first catch-up).
    pub fn position(&self) -> u64 {
        self.position.unwrap_or(0)
    }

    /// Brings the output up to the namespace's durable frame number; returns the new
    /// position.
    pub async fn catch_up(&mut self) -> Result<u64> {
        self.storage.refresh(&self.namespace, None).await?;
        let durable = self.storage.durable_frame_no(&self.namespace, None).await?;
        if self.position() == 0 {
            if durable == 0 {
                return Ok(0);
            }
            if self.position.is_none() {
                self.record(0, 0)?; // the output is ours from here on
            }
            let (frame_no, checksum) = self.restore_latest().await?;
            self.record(frame_no, checksum)?;
        } else if self.position() < durable {
            self.check_lineage().await?;
        }
        while self.position() < durable {
            let Some(last) = self.apply_segment(self.position(), durable).await? else {
                break;
            };
            self.record(last.frame_no, last.checksum)?;
        }
        Ok(self.position())
    }

    /// Applies the transactions of the segment after `after` whose commits are at most
    /// `upto`, a run of frames at a time, and fsyncs; returns the last commit applied
    /// (None when the segment holds none).
    async fn apply_segment(&self, after: u64, upto: u64) -> Result<Option<Commit>> {
        let mut txns = SegmentTxns::open(&self.storage, &self.namespace, after, upto).await?;
        if txns.is_empty() {
            return Ok(None);
        }
        let page_size = txns.page_size();
        let mut writer: Option<Writer> = None;
        let mut last = None;
        while let Some(run) = txns.next_run().await? {
            let w = match writer.as_mut() {
                Some(w) => w,
                None => writer.insert(self.open_writer(page_size)?),
            };
            last = w.write(&run)?.or(last);
        }
        if let Some(w) = writer {
            w.finish()?;
        }
        Ok(last)
    }

    /// Opens the output for a catch-up with `page_size`-byte pages and takes SQLite's
    /// exclusive lock on it.
    fn open_writer(&self, page_size: u32) -> Result<Writer<'_>> {
        let path = &self.output;
        let io_err = |e| Error::io(format!("applying to {}", path.display()), e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        let current = read_header(&mut file).map_err(io_err)?;
        if current.page_size != page_size {
            return Err(InvalidInput::Output(format!(
                "{} has {}-byte pages but the history of {} now has {page_size}-byte pages; \
                 remove it and its position file to restore afresh",
                path.display(),
                current.page_size,
                self.namespace
            ))
            .into());
        }
        let len = file.metadata().map_err(io_err)?.len();
        // SQLite refuses to lock a file whose header claims more pages than it has
        // ("database disk image is malformed"), so such a file would stop every later
        // catch-up. `Planner` never leaves one behind, but a crash can: after a power
        // loss the header write may be on disk without the extension before it, and
        // older versions wrote page 1 before growing the file. Zeros up to the claimed
        // length are harmless: a page past the file's end is one that a transaction
        // after the recorded position added (and so writes again below) or cut off (and
        // cuts again), since all of them are applied again. Readers cannot use such a
        // file meanwhile (SQLite calls it malformed), so this write needs no lock.
        let claimed = current.claimed_len(page_size);
        if claimed > len {
            file.set_len(claimed).map_err(io_err)?;
        }
        let lock = ExclusiveLock::take(path)?;
        let planner = Planner::new(
            page_size,
            current.bytes,
            len.max(claimed),
            current.change_counter.wrapping_add(1),
        );
        Ok(Writer {
            lock,
            file,
            path,
            planner,
        })
    }

    /// Proves the store still holds the history the replica is at: its commit at the
    /// recorded frame carries the recorded lineage checksum. A replica of another
    /// store's namespace of the same name, or of a history that was replaced, is refused
    /// before anything is applied to it.
    async fn check_lineage(&self) -> Result<()> {
        let at = self.position();
        if self.checksum == 0 {
            return Ok(()); // a version 1 sidecar: nothing to prove against
        }
        let refused = |what: String| Error::Diverged {
            namespace: self.namespace.to_string(),
            detail: format!(
                "the replica {} is at frame {at} (database state {:016x}) but {what}; \
                     it was made from another store or a replaced history: remove it and \
                     its position file {} to follow afresh",
                self.output.display(),
                self.checksum,
                self.sidecar.display()
            ),
        };
        let key = match self
            .storage
            .find_segment(&self.namespace, crate::FindSegmentReq::Containing(at), None)
            .await
        {
            Ok(key) => key,
            Err(e) if e.is_not_found() => {
                return Err(refused("the store holds no segment with that frame".into()))
            }
            Err(e) => return Err(e),
        };
        let segment = self
            .storage
            .fetch_commit_table(&self.namespace, &key, None)
            .await?;
        match segment.commits().iter().find(|c| c.frame_no == at) {
            Some(c) if c.checksum == 0 || c.checksum == self.checksum => Ok(()),
            Some(c) => Err(refused(format!(
                "the store's commit at that frame is state {:016x}",
                c.checksum
            ))),
            // Compaction or retention may have dropped that commit from a sparse merge;
            // the merge keeps what the commits after it need, so the replica goes on.
            None if segment.is_sparse() => Ok(()),
            None => Err(refused("the store has no commit at that frame".into())),
        }
    }

    /// Restores the latest state beside the output and renames it over the output: a
    /// crash before the position is recorded leaves a file the next run replaces.
    /// Returns the commit's frame number and lineage checksum.
    async fn restore_latest(&self) -> Result<(u64, u64)> {
        let mut tmp = self.output.clone().into_os_string();
        tmp.push(".walvault-restore");
        let tmp = PathBuf::from(tmp);
        let io_err = |e| Error::io(format!("restoring into {}", self.output.display()), e);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
        let summary = self
            .storage
            .restore_to_path(&self.namespace, RestoreOptions::Latest, &tmp, None)
            .await?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(io_err)?;
        let header = read_header(&mut file).map_err(io_err)?;
        mark_changed(
            &mut file,
            header.change_counter.wrapping_add(1),
            summary.db_pages,
        )
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
        drop(file);
        std::fs::rename(&tmp, &self.output).map_err(io_err)?;
        fsync_dir(&self.dir()).map_err(io_err)?;
        Ok((summary.frame_no, summary.checksum))
    }

    fn dir(&self) -> PathBuf {
        match self.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Records the position: `frame_no` u64, lineage checksum u64, CRC-32C u32.
    fn record(&mut self, frame_no: u64, checksum: u64) -> Result<()> {
        let dir = self.dir();
        let name = self
            .sidecar
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        let mut bytes = frame_no.to_le_bytes().to_vec();
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        write_atomic(&dir, &name, &[&bytes])
            .map_err(|e| Error::io(format!("writing {}", self.sidecar.display()), e.source))?;
        self.position = Some(frame_no);
        self.checksum = checksum;
        Ok(())
    }
}

/// SQLite's exclusive lock on a database file, taken through SQLite itself so that it
/// excludes readers in this process and in others alike.
struct ExclusiveLock(Connection);

impl ExclusiveLock {
    fn take(path: &Path) -> Result<Self> {
        let err = |e| Error::sqlite(format!("locking {}", path.display()), e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(LOCK_TIMEOUT).map_err(err)?;
        conn.execute_batch("BEGIN EXCLUSIVE").map_err(err)?;
        Ok(Self(conn))
    }

    fn release(self, path: &Path) -> Result<()> {
        let err = |e| Error::sqlite(format!("unlocking {}", path.display()), e);
        self.0.execute_batch("COMMIT").map_err(err)
    }
}

/// A catch-up in progress: the output under SQLite's exclusive lock, written a run of
/// frames at a time.
struct Writer<'a> {
    /// Declared before `file` so that it is released first when a catch-up fails:
    /// closing a descriptor drops the process's POSIX locks, SQLite's among them.
    lock: ExclusiveLock,
    file: File,
    path: &'a Path,
    planner: Planner,
}

impl Writer<'_> {
    /// Writes the frames of `run` (the next of the segment's transactions, in order);
    /// returns the last commit among them.
    fn write(&mut self, run: &[TxnFrame]) -> Result<Option<Commit>> {
        let mut steps = Vec::new();
        let mut last = None;
        for frame in run {
            self.planner.frame(frame.page_no, &frame.data, &mut steps);
            if let Some(commit) = frame.commit {
                self.planner.commit(commit.size_after, &mut steps);
                last = Some(commit);
            }
        }
        let path = self.path;
        let io_err = |e| Error::io(format!("applying to {}", path.display()), e);
        run_steps(&mut self.file, &steps).map_err(io_err)?;
        Ok(last)
    }

    /// Fsyncs the output, then lets readers in.
    fn finish(self) -> Result<()> {
        let path = self.path;
        let io_err = |e| Error::io(format!("applying to {}", path.display()), e);
        self.file.sync_all().map_err(io_err)?;
        self.lock.release(path)?;
        drop(self.file); // after the lock: closing a descriptor drops the process's POSIX locks
        Ok(())
    }
}

/// The fields of a SQLite database header the follower reads.
struct DbHeader {
    page_size: u32,
    change_counter: u32,
    /// The first 100 bytes of the file, for catch-ups that leave page 1 unchanged.
    bytes: [u8; 100],
}

impl DbHeader {
    /// The file length the header claims, 0 if it claims none. SQLite believes the page
    /// count in bytes 28..32 only if the change counter (24..28) equals the "version
    /// valid for" number (92..96), and otherwise goes by the file's length.
    fn claimed_len(&self, page_size: u32) -> u64 {
        let h = &self.bytes;
        if h[24..28] != h[92..96] {
            return 0;
        }
        u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]])) * u64::from(page_size)
    }
}

fn read_header(file: &mut File) -> std::io::Result<DbHeader> {
    let mut h = [0u8; 100];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut h)?;
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65_536,
        size => u32::from(size),
    };
    let change_counter = u32::from_be_bytes([h[24], h[25], h[26], h[27]]);
    Ok(DbHeader {
        page_size,
        change_counter,
        bytes: h,
    })
}

/// One write of a catch-up.
#[derive(Debug)]
enum Step<'a> {
    /// Writes `data` at byte `offset`.
    Write { offset: u64, data: Cow<'a, [u8]> },
    /// Sets the file's length in bytes: cuts it off, or extends it with zeros.
    SetLen(u64),
}

/// Works out the writes that apply transactions to an output, fed their frames in
/// order (a transaction may span several feeds).
///
/// A crash can stop the writes after any step, and the next run must be able to take
/// SQLite's lock on what is left in order to apply them again. SQLite refuses a file
/// whose header claims more pages than the file holds, so each transaction writes its
/// pages other than page 1 first, then grows the file to the commit's size, then writes
/// the header (page 1 if the transaction has it, or the current header), and only then
/// cuts the file down to the commit's size. The header always claims the commit's size,
/// which is what the file is after the commit, so it never claims more than the file
/// has, after any step.
struct Planner {
    page_size: u64,
    /// The first 100 bytes of the output as the writes so far leave them.
    header: [u8; 100],
    /// The output's length as the writes so far leave it.
    len: u64,
    /// The change counter every header written carries.
    counter: u32,
    /// Page 1 of the transaction in progress, if it wrote it (the later image wins):
    /// held back to its commit.
    first: Option<Vec<u8>>,
}

impl Planner {
    /// A planner for an output of `len` bytes whose header is `header`, leaving change
    /// counter `counter` in it.
    fn new(page_size: u32, header: [u8; 100], len: u64, counter: u32) -> Self {
        Self {
            page_size: u64::from(page_size),
            header,
            len,
            counter,
            first: None,
        }
    }

    /// The writes for one frame of the transaction in progress.
    fn frame<'a>(&mut self, page_no: u32, data: &'a [u8], steps: &mut Vec<Step<'a>>) {
        if page_no == 1 {
            self.first = Some(data.to_vec());
            return;
        }
        let offset = u64::from(page_no - 1) * self.page_size;
        self.len = self.len.max(offset + data.len() as u64);
        steps.push(Step::Write {
            offset,
            data: Cow::Borrowed(data),
        });
    }

    /// The writes that commit the transaction in progress, leaving `size_after` pages.
    fn commit(&mut self, size_after: u32, steps: &mut Vec<Step<'_>>) {
        let size = u64::from(size_after) * self.page_size;
        if self.len < size {
            steps.push(Step::SetLen(size));
            self.len = size;
        }
        // Page 1 goes down already patched, so the file never shows the source's
        // WAL-mode header, even after a crash right after it.
        let mut image = self.first.take().unwrap_or_else(|| self.header.to_vec());
        patch_header(&mut image, self.counter, size_after);
        self.header.copy_from_slice(&image[..100]);
        self.len = self.len.max(image.len() as u64);
        steps.push(Step::Write {
            offset: 0,
            data: Cow::Owned(image),
        });
        if self.len > size {
            steps.push(Step::SetLen(size));
            self.len = size;
        }
    }
}

/// The writes that apply `txns` whole, in order (see [`Planner`]).
#[cfg(test)]
fn plan<'a>(
    txns: &'a [super::Transaction],
    page_size: u32,
    header: [u8; 100],
    len: u64,
    counter: u32,
) -> Vec<Step<'a>> {
    let mut planner = Planner::new(page_size, header, len, counter);
    let mut steps = Vec::new();
    for txn in txns {
        for (page_no, data) in &txn.pages {
            planner.frame(*page_no, data, &mut steps);
        }
        planner.commit(txn.commit.size_after, &mut steps);
    }
    steps
}

/// Carries out `steps` on `file`.
fn run_steps(file: &mut File, steps: &[Step]) -> std::io::Result<()> {
    for step in steps {
        match step {
            Step::Write { offset, data } => {
                file.seek(SeekFrom::Start(*offset))?;
                file.write_all(data)?;
            }
            Step::SetLen(len) => file.set_len(*len)?,
        }
    }
    Ok(())
}

/// Puts the database in rollback-journal mode and sets its change counter (and the
/// "version valid for" number that must equal it) and page count, in the file.
fn mark_changed(file: &mut File, counter: u32, pages: u32) -> std::io::Result<()> {
    let mut header = [0u8; 100];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut header)?;
    patch_header(&mut header, counter, pages);
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header)
}

/// The same, in a copy of page 1 (or its first 100 bytes). Setting the "version valid
/// for" number tells SQLite to believe the page count in bytes 28..32, so the page count
/// is set too: from the commit, not from the source's header, which SQLite only
/// believed if the source's own two numbers matched.
fn patch_header(page: &mut [u8], counter: u32, pages: u32) {
    page[18] = 1;
    page[19] = 1;
    page[24..28].copy_from_slice(&counter.to_be_bytes());
    page[28..32].copy_from_slice(&pages.to_be_bytes());
    page[92..96].copy_from_slice(&counter.to_be_bytes());
}

/// The recorded frame and lineage checksum; a version 1 sidecar (12 bytes: frame and
/// CRC) has no checksum (0).
fn read_position(path: &Path) -> Result<Option<(u64, u64)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let corrupt = |reason| Error::corrupt(path.display(), reason);
    if bytes.len() != 12 && bytes.len() != 20 {
        return Err(corrupt(FormatError::Length {
            expected: 20,
            actual: bytes.len() as u64,
        }));
    }
    let (value, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(value).to_le_bytes() != crc {
        return Err(corrupt(FormatError::Checksum {
            part: Part::Header,
            offset: value.len() as u64,
        }));
    }
    let word = |at: usize| u64::from_le_bytes(value[at..at + 8].try_into().unwrap_or_default());
    let checksum = if value.len() == 16 { word(8) } else { 0 };
    Ok(Some((word(0), checksum)))
}

#[cfg(test)]
mod tests;

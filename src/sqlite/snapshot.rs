//! A snapshot of a SQLite database as of the end of a WAL prefix: every page from the
//! database file, except those the WAL prefix holds a newer image of.
//!
//! Consistent while writers keep writing, because the replicator holds a read
//! transaction meanwhile: SQLite then copies no WAL frame newer than that reader's mark
//! into the database file, and every frame it may copy is in the WAL prefix read
//! afterwards, whose images win.
//!
//! The database file is read only through [`DbFile`], never opened and closed here:
//! closing a descriptor would drop the SHARED lock of that very read transaction (see
//! [`super::dbfile`]).

use std::fs::File;
use std::path::Path;

use hashbrown::HashMap;

use super::dbfile::DbFile;
use super::wal::{self, FrameLoc, WalHeader, WalTransaction};
use crate::error::{Error, FormatError, Part, Result};

/// Bytes read at once when checksumming the whole file.
const CHUNK: usize = 1 << 20;

fn io_err(db: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("reading {}", db.display()), e)
}

/// The database's size in pages from its header when the header vouches for it (its
/// "version valid for" equals its change counter), else from the file length.
pub(crate) fn db_pages(db: &Path, page_size: u32) -> Result<u32> {
    let Some(file) = DbFile::open(db).map_err(io_err(db))? else {
        return Ok(0);
    };
    let len = file.len().map_err(io_err(db))?;
    let mut header = [0u8; 100];
    if file.read_at(&mut header, 0).map_err(io_err(db))? < header.len() {
        return Ok(0);
    }
    let word =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (change_counter, in_header, valid_for) = (word(24), word(28), word(92));
    if in_header > 0 && valid_for == change_counter {
        return Ok(in_header);
    }
    u32::try_from(len / u64::from(page_size)).map_err(|_| {
        let reason = FormatError::Invalid {
            part: Part::Header,
            offset: 28,
            reason: "database has more pages than SQLite allows",
        };
        Error::corrupt(db.display(), reason)
    })
}

/// The newest image of each page a WAL prefix holds: where it is in the WAL, and its
/// bytes too while the images held stay under [`wal::hold_limit`] (beyond that they are
/// read back from the WAL, checked against what the scan proved).
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    header: Option<WalHeader>,
    at: HashMap<u32, FrameLoc>,
    held: HashMap<u32, Vec<u8>>,
    held_bytes: usize,
    /// The images passed the limit: none are held, all are read back.
    over: bool,
}

impl Overlay {
    /// Adds a transaction scanned after the ones added before.
    pub(crate) fn add(&mut self, txn: WalTransaction) {
        self.header = Some(txn.located.header);
        for loc in &txn.located.frames {
            self.at.insert(loc.page_no, *loc);
        }
        if self.over {
            return;
        }
        // A transaction too large to have been held has no pages here.
        let too_large = txn.pages.is_empty();
        for (page_no, data) in txn.pages {
            self.held_bytes += data.len();
            self.held.insert(page_no, data);
        }
        if too_large || self.held_bytes > wal::hold_limit() {
            self.over = true;
            self.held = HashMap::new();
        }
    }

    fn contains(&self, page_no: u32) -> bool {
        self.at.contains_key(&page_no)
    }
}

/// Reads the database as of the WAL prefix in an [`Overlay`], a chunk of pages at a time:
/// [`Reader::fill`] is the callback
/// [`LogWriter::append_snapshot_with`](crate::LogWriter::append_snapshot_with) takes.
pub(crate) struct Reader<'a> {
    db: &'a Path,
    file: Option<DbFile>,
    wal_path: &'a Path,
    wal: Option<File>,
    page_size: usize,
    overlay: &'a mut Overlay,
    page_nos: Vec<u32>,
    /// The checksum of the file's bytes read so far, while they were read in order from
    /// offset 0 (a snapshot with an empty WAL reads the whole file): what
    /// [`fingerprint`] would compute, without reading the file a second time.
    crc: Option<(u32, u64)>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(
        db: &'a Path,
        wal_path: &'a Path,
        page_size: u32,
        overlay: &'a mut Overlay,
    ) -> Result<Self> {
        let wal = match overlay.over {
            false => None,
            true => Some(File::open(wal_path).map_err(io_err(wal_path))?),
        };
        Ok(Self {
            db,
            file: DbFile::open(db).map_err(io_err(db))?,
            wal_path,
            wal,
            page_size: page_size as usize,
            overlay,
            page_nos: Vec::new(),
            crc: Some((0, 0)),
        })
    }

    /// The database file's [`fingerprint`]: from the bytes the snapshot read in order,
    /// plus whatever follows them, or read again when they were not read in order.
    pub(crate) fn fingerprint(&self) -> Result<u32> {
        match (&self.file, self.crc) {
            (None, _) => Ok(0),
            (Some(file), Some((crc, offset))) => fingerprint_from(self.db, file, crc, offset),
            (Some(file), None) => fingerprint_from(self.db, file, 0, 0),
        }
    }

    /// Fills `buf` with the pages from `first` on, each `page_size` bytes: the WAL's
    /// image where it has one, else the database file's. Runs of pages the WAL does not
    /// hold are read from the file in one call.
    pub(crate) fn fill(&mut self, first: u32, buf: &mut [u8]) -> Result<()> {
        let ps = self.page_size;
        let count = buf.len() / ps;
        let mut i = 0;
        while i < count {
            let page_no = first + i as u32;
            if self.overlay.contains(page_no) {
                self.wal_page(page_no, &mut buf[i * ps..(i + 1) * ps])?;
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < count && !self.overlay.contains(first + j as u32) {
                j += 1;
            }
            self.read_run(page_no, &mut buf[i * ps..j * ps])?;
            i = j;
        }
        Ok(())
    }

    /// The WAL's newest image of `page_no`, held or read back.
    fn wal_page(&mut self, page_no: u32, out: &mut [u8]) -> Result<()> {
        if let Some(data) = self.overlay.held.remove(&page_no) {
            out.copy_from_slice(&data);
            return Ok(());
        }
        let (Some(wal), Some(header), Some(loc)) = (
            &self.wal,
            &self.overlay.header,
            self.overlay.at.get(&page_no),
        ) else {
            return Err(Error::NotFound(format!(
                "page {page_no} of {} is not in its WAL any more",
                self.db.display()
            )));
        };
        let mut data = Vec::with_capacity(out.len());
        self.page_nos.clear();
        wal::read_located(
            wal,
            self.wal_path,
            header,
            &[*loc],
            &mut self.page_nos,
            &mut data,
        )?;
        out.copy_from_slice(&data);
        Ok(())
    }

    /// Reads pages `from..` of the database file into `buf`.
    fn read_run(&mut self, from: u32, buf: &mut [u8]) -> Result<()> {
        let offset = u64::from(from - 1) * self.page_size as u64;
        let got = match &self.file {
            Some(f) => f.read_at(buf, offset).map_err(io_err(self.db))?,
            None => 0,
        };
        self.crc = match self.crc {
            Some((crc, at)) if at == offset => {
                Some((crc32c::crc32c_append(crc, &buf[..got]), at + got as u64))
            }
            _ => None,
        };
        if got < buf.len() {
            let missing = from + (got / self.page_size) as u32;
            return Err(Error::NotFound(format!(
                "page {missing} of {} is in neither the database file nor its WAL",
                self.db.display()
            )));
        }
        Ok(())
    }
}

/// A checksum of the whole database file (every byte, not its size or time), to tell
/// later whether it changed. A missing file has the checksum of an empty one.
pub(crate) fn fingerprint(db: &Path) -> Result<u32> {
    let Some(file) = DbFile::open(db).map_err(io_err(db))? else {
        return Ok(0);
    };
    fingerprint_from(db, &file, 0, 0)
}

/// The fingerprint of `file`, given `crc`, the checksum of its first `offset` bytes.
fn fingerprint_from(db: &Path, file: &DbFile, mut crc: u32, mut offset: u64) -> Result<u32> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read_at(&mut buf, offset).map_err(io_err(db))? {
            0 => return Ok(crc),
            n => {
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                offset += n as u64;
            }
        }
    }
}

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

use std::path::Path;

use hashbrown::HashMap;

use super::dbfile::DbFile;
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

/// Pages 1..=`db_size` of the database as of the WAL prefix whose newest page images are
/// in `overlay`.
pub(crate) fn read(
    db: &Path,
    page_size: u32,
    db_size: u32,
    overlay: &mut HashMap<u32, Vec<u8>>,
) -> Result<Vec<(u32, Vec<u8>)>> {
    let file = DbFile::open(db).map_err(io_err(db))?;
    let mut pages = Vec::with_capacity(db_size as usize);
    for page_no in 1..=db_size {
        if let Some(newer) = overlay.remove(&page_no) {
            pages.push((page_no, newer));
            continue;
        }
        let mut page = vec![0u8; page_size as usize];
        let offset = u64::from(page_no - 1) * u64::from(page_size);
        let got = match &file {
            Some(f) => f.read_at(&mut page, offset).map_err(io_err(db))?,
            None => 0,
        };
        if got < page.len() {
            return Err(Error::NotFound(format!(
                "page {page_no} of {} is in neither the database file nor its WAL",
                db.display()
            )));
        }
        pages.push((page_no, page));
    }
    Ok(pages)
}

/// A checksum of the whole database file (every byte, not its size or time), to tell
/// later whether it changed. A missing file has the checksum of an empty one.
pub(crate) fn fingerprint(db: &Path) -> Result<u32> {
    let Some(file) = DbFile::open(db).map_err(io_err(db))? else {
        return Ok(0);
    };
    let mut crc = 0;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
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

//! A snapshot of a SQLite database as of the end of a WAL prefix: every page from the
//! database file, except those the WAL prefix holds a newer image of.
//!
//! Consistent while writers keep writing, because the replicator holds a read
//! transaction meanwhile: SQLite then copies no WAL frame newer than that reader's mark
//! into the database file, and every frame it may copy is in the WAL prefix read
//! afterwards, whose images win.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use hashbrown::HashMap;

use crate::error::{Error, FormatError, Part, Result};
use crate::storage::fsutil::read_full;

/// The database's size in pages from its header when the header vouches for it (its
/// "version valid for" equals its change counter), else from the file length.
pub(crate) fn db_pages(db: &Path, page_size: u32) -> Result<u32> {
    let io_err = |e| Error::io(format!("reading {}", db.display()), e);
    let mut file = File::open(db).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut header = [0u8; 100];
    if len < 100 {
        return Ok(0);
    }
    file.read_exact(&mut header).map_err(io_err)?;
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
    let io_err = |e| Error::io(format!("reading {}", db.display()), e);
    let mut reader = match File::open(db) {
        Ok(f) => Some(BufReader::with_capacity(1 << 20, f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(e)),
    };
    let mut pages = Vec::with_capacity(db_size as usize);
    for page_no in 1..=db_size {
        let mut page = vec![0u8; page_size as usize];
        let got = match reader.as_mut() {
            Some(r) => read_full(r, &mut page).map_err(io_err)?,
            None => 0,
        };
        if got < page.len() {
            reader = None; // the file ends here; later pages must come from the WAL
        }
        match overlay.remove(&page_no) {
            Some(newer) => pages.push((page_no, newer)),
            None if got == page.len() => pages.push((page_no, page)),
            None => {
                return Err(Error::NotFound(format!(
                    "page {page_no} of {} is in neither the database file nor its WAL",
                    db.display()
                )))
            }
        }
    }
    Ok(pages)
}

/// A checksum of the whole database file, to tell later whether it changed.
pub(crate) fn fingerprint(db: &Path) -> Result<u32> {
    let io_err = |e| Error::io(format!("reading {}", db.display()), e);
    let mut reader = BufReader::with_capacity(1 << 20, File::open(db).map_err(io_err)?);
    let mut crc = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf).map_err(io_err)? {
            0 => return Ok(crc),
            n => crc = crc32c::crc32c_append(crc, &buf[..n]),
        }
    }
}

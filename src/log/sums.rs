//! The log's page sums on disk: `PAGESUMS` in the log directory, so a reopened log knows
//! the lineage checksum of the database it continues without reading the database.
//!
//! Replaced whole (temp file, rename) once a sealed segment's frames are fsynced, and
//! when the log closes, stamped with the commit frame the sums are at; never fsynced
//! itself, since the sums only save work. A power loss may leave an older file (its
//! stamp then no longer reaches the log's frames) or a torn one (its CRC fails); either
//! way the log's next transaction is a snapshot, never one built on wrong sums. Two
//! fsyncs at every seal would cost the group commit more than that. On
//! open, the frames the log directory still holds after that stamp are replayed onto it
//! (they are all there: a segment's local file is deleted only after it is durable, which
//! is after the seal that wrote the sums past it). If the stamp cannot be brought up to
//! the log's last frame, the log does not know its lineage, and its next transaction must
//! be a snapshot ([`super::LogWriter::append_snapshot`]).
//!
//! Layout (little-endian): magic `WVPGSUMS`, version u16 (1), reserved u16, page count
//! u32, frame u64, checksum u64, `page count` × hash u64, CRC-32C u32 of everything
//! before it. Eight bytes per database page.

use std::path::Path;

use crate::error::{Error, FormatError, Part, Result};
use crate::format::{PageSums, SealedSegment};
use crate::storage::fsutil::temp_path;

pub(crate) const FILE_NAME: &str = "PAGESUMS";
const MAGIC: [u8; 8] = *b"WVPGSUMS";
const VERSION: u16 = 1;
const HEAD_LEN: usize = 32;

/// Page sums as of a commit frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamped {
    pub frame_no: u64,
    pub sums: PageSums,
}

/// Saves `sums`, at commit frame `frame_no`, durably.
pub(crate) fn save(dir: &Path, frame_no: u64, sums: &PageSums) -> Result<()> {
    let hashes = sums.hashes();
    let mut bytes = Vec::with_capacity(HEAD_LEN + hashes.len() * 8 + 4);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(&sums.db_size().to_le_bytes());
    bytes.extend_from_slice(&frame_no.to_le_bytes());
    bytes.extend_from_slice(&sums.checksum().to_le_bytes());
    hashes
        .iter()
        .for_each(|h| bytes.extend_from_slice(&h.to_le_bytes()));
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = temp_path(dir);
    let io_err = |e| Error::io(format!("writing {}", dir.join(FILE_NAME).display()), e);
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, dir.join(FILE_NAME)))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(e)
        })
}

/// The saved sums, or None when there are none. A damaged file is reported as corrupt
/// only to the log, which then treats its lineage as unknown.
pub(crate) fn load(dir: &Path) -> Result<Option<Stamped>> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| Error::corrupt(path.display(), reason))
}

/// Brings `stamped` forward over `segment`'s transactions after its frame, checking
/// each commit's recorded checksum. False when the segment does not continue from the
/// sums (it builds on another state, or a recorded checksum disagrees): the sums are
/// then of no use.
pub(crate) fn replay(stamped: &mut Stamped, segment: &SealedSegment) -> bool {
    if segment.end_frame_no() <= stamped.frame_no {
        return true;
    }
    match segment.lineage_base() {
        None => return false,
        Some(0) if segment.start_frame_no() > stamped.frame_no => {
            stamped.sums = PageSums::new();
        }
        Some(base) if segment.start_frame_no() > stamped.frame_no => {
            if base != stamped.sums.checksum() {
                return false;
            }
        }
        Some(_) => {} // the stamp is inside the segment: checked at the first commit
    }
    match stamped.sums.replay(segment, stamped.frame_no) {
        Ok(last) => {
            stamped.frame_no = last;
            true
        }
        Err(_) => false,
    }
}

fn decode(b: &[u8]) -> Result<Stamped, FormatError> {
    let bad = |offset, reason| FormatError::Invalid {
        part: Part::Header,
        offset,
        reason,
    };
    if b.len() < HEAD_LEN + 4 {
        return Err(FormatError::Length {
            expected: (HEAD_LEN + 4) as u64,
            actual: b.len() as u64,
        });
    }
    if b[..8] != MAGIC {
        return Err(FormatError::BadMagic(Part::Header));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        let offset = body.len() as u64;
        return Err(FormatError::Checksum {
            part: Part::Header,
            offset,
        });
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let pages = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
    if body.len() != HEAD_LEN + pages * 8 {
        return Err(FormatError::Length {
            expected: (HEAD_LEN + pages * 8 + 4) as u64,
            actual: b.len() as u64,
        });
    }
    let hashes = body[HEAD_LEN..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let sums = PageSums::from_hashes(hashes);
    if sums.checksum() != u64_at(24) {
        return Err(bad(24, "checksum disagrees with the page hashes"));
    }
    Ok(Stamped {
        frame_no: u64_at(16),
        sums,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_round_trip_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut sums = PageSums::new();
        sums.apply(&[(1, &[1u8; 512][..]), (3, &[3u8; 512][..])], 3)
            .unwrap();
        save(dir.path(), 42, &sums).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!((loaded.frame_no, &loaded.sums), (42, &sums));
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            assert!(load(dir.path()).unwrap_err().is_corrupt(), "flip at {at}");
        }
        std::fs::write(&path, &good[..good.len() - 9]).unwrap();
        assert!(load(dir.path()).unwrap_err().is_corrupt());
    }
}

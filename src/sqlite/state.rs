//! The replicator's position in a database's WAL, kept in `SQLITE_POSITION` in the log
//! directory. Written atomically (temp file, fsync, rename, directory fsync) only after
//! the transactions it covers are `Written` in the log, so after a crash the replicator
//! resumes at or before what it shipped: a transaction may be shipped twice (its page
//! images are applied again, which changes nothing), never skipped.
//!
//! Layout (48 bytes, little-endian): magic `WVSQLPOS`, version u16 (1), reserved u16,
//! page size u32, flags u32 (bit 0: a WAL position follows; bit 1: a database
//! fingerprint follows), salt-1 u32, salt-2 u32, frames u32, checksum-1 u32,
//! checksum-2 u32, fingerprint u32, CRC-32C of bytes 0..44.

use std::path::Path;

use super::wal::WalPosition;
use crate::error::{Error, FormatError, Part, Result};
use crate::storage::fsutil::write_atomic;

pub(crate) const FILE_NAME: &str = "SQLITE_POSITION";
const MAGIC: [u8; 8] = *b"WVSQLPOS";
const VERSION: u16 = 1;
const LEN: usize = 48;
const HAS_POSITION: u32 = 1;
const HAS_FINGERPRINT: u32 = 2;

/// Where the replicator stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct IngestState {
    pub page_size: u32,
    /// After the last shipped transaction of the WAL generation it names.
    pub position: Option<WalPosition>,
    /// When the WAL was empty at the last run: a checksum of the database file then, so
    /// a later run with an empty WAL can tell whether anything changed.
    pub fingerprint: Option<u32>,
}

impl IngestState {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let flags = self.position.map_or(0, |_| HAS_POSITION)
            | self.fingerprint.map_or(0, |_| HAS_FINGERPRINT);
        let p = self.position.unwrap_or(WalPosition {
            salt: (0, 0),
            frames: 0,
            checksum: (0, 0),
        });
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let words = [
            self.page_size,
            flags,
            p.salt.0,
            p.salt.1,
            p.frames,
            p.checksum.0,
            p.checksum.1,
            self.fingerprint.unwrap_or(0),
        ];
        for (i, w) in words.iter().enumerate() {
            b[12 + 4 * i..16 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..44]);
        b[44..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let invalid = |offset, reason| FormatError::Invalid {
            part: Part::Header,
            offset,
            reason,
        };
        if b.len() != LEN {
            return Err(FormatError::Length {
                expected: LEN as u64,
                actual: b.len() as u64,
            });
        }
        if b[..8] != MAGIC {
            return Err(FormatError::BadMagic(Part::Header));
        }
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if crc32c::crc32c(&b[..44]) != word(44) {
            return Err(FormatError::Checksum {
                part: Part::Header,
                offset: 44,
            });
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let flags = word(16);
        if b[10..12] != [0, 0] || flags & !(HAS_POSITION | HAS_FINGERPRINT) != 0 {
            return Err(invalid(10, "reserved bits are set"));
        }
        let position = (flags & HAS_POSITION != 0).then(|| WalPosition {
            salt: (word(20), word(24)),
            frames: word(28),
            checksum: (word(32), word(36)),
        });
        let fingerprint = (flags & HAS_FINGERPRINT != 0).then(|| word(40));
        Ok(Self {
            page_size: word(12),
            position,
            fingerprint,
        })
    }

    /// Loads the state in `dir`; the default (ship a snapshot) when there is none.
    pub(crate) fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => Self::decode(&bytes).map_err(|e| Error::corrupt(path.display(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Replaces the state in `dir`, durably.
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(dir, FILE_NAME, &[&self.encode()])
            .map(drop)
            .map_err(|e| {
                Error::io(
                    format!("writing {}", dir.join(FILE_NAME).display()),
                    e.into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_damage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            IngestState::load(dir.path()).unwrap(),
            IngestState::default()
        );
        let state = IngestState {
            page_size: 1024,
            position: Some(WalPosition {
                salt: (7, 9),
                frames: 12,
                checksum: (3, 4),
            }),
            fingerprint: Some(77),
        };
        state.save(dir.path()).unwrap();
        assert_eq!(IngestState::load(dir.path()).unwrap(), state);
        let good = state.encode();
        for at in 0..LEN {
            let mut bad = good;
            bad[at] ^= 0x10;
            assert!(IngestState::decode(&bad).is_err(), "flip at {at}");
        }
        for len in 0..LEN {
            assert!(IngestState::decode(&good[..len]).is_err());
        }
    }
}

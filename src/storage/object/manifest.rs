//! The manifest of a namespace in an object store: a sequence of immutable, numbered
//! objects, each the whole catalog as of one edit, created with a conditional PUT
//! (`PutMode::Create`) so that two writers can never both write version `n`.
//!
//! Object `manifest/<n:020>` (n = 1, 2, ...) holds a 52-byte header followed by a
//! manifest in the local format (`WVMANIFS` file header and one snapshot record; see
//! `docs/FORMAT.md` §5). Header, little-endian: magic `WVOBJMAN`, version u16 (1),
//! flags u16 (bit 0: a maintenance edit, written under the current writer's epoch by
//! compaction or retention; other bits zero), body length u32 (bytes after the header), manifest version u64
//! (n, repeated so a misplaced object is caught), writer epoch u64, writer id (16
//! bytes), CRC-32C of bytes 0..48.
//!
//! `manifest/LATEST` is a hint (a 20-digit decimal version, overwritten after each new
//! version): readers start there and probe the next numbers with HEADs until one is
//! missing, then GET only the newest, so finding it takes two GETs and a HEAD and never
//! a LIST. A stale or missing hint only costs more probes.

use bytes::Bytes;
use uuid::Uuid;

use crate::error::{Error, FormatError, Part, Result};
use crate::storage::catalog::Catalog;
use crate::storage::manifest::{encode_snapshot_file, replay};

const MAGIC: [u8; 8] = *b"WVOBJMAN";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 52;
const FLAG_MAINTENANCE: u16 = 1;

/// One decoded manifest version.
#[derive(Debug)]
pub(crate) struct Version {
    /// Its number (1 for the first).
    pub number: u64,
    /// The epoch of the writer that created it.
    pub epoch: u64,
    /// That writer's id.
    pub writer: Uuid,
    /// Written by a maintenance edit rather than by the epoch's writer.
    pub maintenance: bool,
    /// The catalog as of this version.
    pub catalog: Catalog,
}

/// Encodes version `number` of a manifest holding `catalog`.
pub(crate) fn encode(
    number: u64,
    epoch: u64,
    writer: Uuid,
    maintenance: bool,
    catalog: &Catalog,
) -> Result<Bytes> {
    let body = encode_snapshot_file(catalog)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&u16::from(maintenance).to_le_bytes());
    let body_len = u32::try_from(body.len()).map_err(|_| {
        crate::error::InvalidInput::Config(format!(
            "a manifest of {} bytes is more than one object version holds",
            body.len()
        ))
    })?;
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(writer.as_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// Decodes the object stored as version `number`; `what` names it in errors.
pub(crate) fn decode(number: u64, bytes: &[u8], what: &str) -> Result<Version> {
    let corrupt = |reason| Error::corrupt(what, reason);
    let invalid = |offset, reason| {
        corrupt(FormatError::Invalid {
            part: Part::ManifestHeader,
            offset,
            reason,
        })
    };
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(corrupt(FormatError::Length {
            expected: HEADER_LEN as u64,
            actual: bytes.len() as u64,
        }));
    };
    if h[..8] != MAGIC {
        return Err(corrupt(FormatError::BadMagic(Part::ManifestHeader)));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let stored = u32::from_le_bytes([h[48], h[49], h[50], h[51]]);
    if crc32c::crc32c(&h[..48]) != stored {
        return Err(corrupt(FormatError::Checksum {
            part: Part::ManifestHeader,
            offset: 48,
        }));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(corrupt(FormatError::Version(version)));
    }
    let flags = u16::from_le_bytes([h[10], h[11]]);
    if flags & !FLAG_MAINTENANCE != 0 {
        return Err(invalid(10, "unknown flags"));
    }
    let body_len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
    if bytes.len() - HEADER_LEN != body_len {
        return Err(corrupt(FormatError::Length {
            expected: (HEADER_LEN + body_len) as u64,
            actual: bytes.len() as u64,
        }));
    }
    if u64_at(16) != number {
        return Err(invalid(16, "the object holds another manifest version"));
    }
    let mut writer = [0u8; 16];
    writer.copy_from_slice(&h[32..48]);
    let body = &bytes[HEADER_LEN..];
    let replayed = replay(body, body.len() as u64, what)?;
    if replayed.torn_tail {
        return Err(invalid(HEADER_LEN as u64, "the manifest body is cut short"));
    }
    Ok(Version {
        number,
        epoch: u64_at(24),
        writer: Uuid::from_bytes(writer),
        maintenance: flags & FLAG_MAINTENANCE != 0,
        catalog: replayed.catalog,
    })
}

/// The text of the `LATEST` hint for version `number`.
pub(crate) fn hint(number: u64) -> Bytes {
    Bytes::from(format!("{number:020}"))
}

/// The version a `LATEST` hint names; None if it is not one (it is only a hint).
pub(crate) fn parse_hint(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    (text.len() == 20).then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SegmentKey;
    use crate::storage::catalog::CatalogEntry;

    fn catalog(n: u64) -> Catalog {
        let entries = (0..n)
            .map(|i| CatalogEntry {
                key: SegmentKey {
                    start_frame_no: i * 10 + 1,
                    end_frame_no: i * 10 + 10,
                    timestamp: 1_000 + i,
                },
                size: 4096,
                last_commit_ts: 1_000 + i,
                base_checksum: 0,
                end_checksum: (1 << 63) | i,
            })
            .collect();
        Catalog::from_entries(entries).unwrap()
    }

    #[test]
    fn versions_round_trip_and_every_flip_is_caught() {
        let writer = Uuid::from_u128(7);
        let bytes = encode(3, 2, writer, true, &catalog(4)).unwrap();
        let v = decode(3, &bytes, "v3").unwrap();
        assert_eq!(
            (v.number, v.epoch, v.writer, v.maintenance),
            (3, 2, writer, true)
        );
        assert_eq!(v.catalog.entries(), catalog(4).entries());
        assert!(decode(4, &bytes, "v4").unwrap_err().is_corrupt());
        for at in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[at] ^= 0x01;
            assert!(decode(3, &bad, "flipped").is_err(), "flip at {at}");
        }
        for len in 0..bytes.len() {
            assert!(decode(3, &bytes[..len], "cut").is_err(), "cut at {len}");
        }
    }

    #[test]
    fn hints_parse_or_are_ignored() {
        assert_eq!(parse_hint(&hint(42)), Some(42));
        assert_eq!(parse_hint(b"42"), None);
        assert_eq!(parse_hint(b"\xff\xfe"), None);
    }
}

//! The manifest: a journal of catalog edits, replayed on open.
//!
//! Each namespace's catalog is persisted as a file of records: add a segment, remove
//! segments, or a snapshot of every segment. Appending one record per store keeps writes
//! small; once the records appended since the last snapshot outnumber the entries that
//! snapshot held (and at least 1024), the file is rewritten as a single snapshot (temp
//! file, fsync, rename). The file is therefore at most about twice the size of a
//! snapshot of the catalog, and replay time stays proportional to the live segments.
//!
//! A record is `len: u32 | kind: u8 | head_crc: u32 | payload[len] | payload_crc: u32`,
//! little-endian, with CRC-32C checksums; `docs/FORMAT.md` has the details. A crash in
//! the middle of an append leaves a torn last record, which replay drops (it was never
//! acknowledged). A damaged record that is followed by more data is corruption and is
//! reported, never skipped.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::catalog::{Append, Catalog, CatalogEntry};
use super::fsutil::{write_atomic, AtomicWriteError};
use crate::error::{Error, FormatError, Part, Result};
use crate::format::SegmentKey;

pub(crate) const MANIFEST_FILE: &str = "MANIFEST";
const MAGIC: [u8; 8] = *b"WVMANIFS";
const VERSION: u16 = 1;
const FILE_HEADER_LEN: usize = 16;
const RECORD_HEAD_LEN: usize = 9;
/// An entry as written (kinds ADD_L and SNAPSHOT_L): key, size, last commit time, then
/// the lineage (base and end checksums).
const ENTRY_LEN: usize = 56;
/// An entry in the kinds without lineage (ADD and SNAPSHOT), still read.
const ENTRY_LEN_V1: usize = 40;
const KEY_LEN: usize = 24;
/// Records past the last snapshot before a rewrite is considered, at minimum.
const MIN_COMPACT_RECORDS: u64 = 1024;
/// The most entries one snapshot record can hold (its length is a `u32`).
const MAX_SNAPSHOT_ENTRIES: usize = (u32::MAX as usize - 8) / ENTRY_LEN;

const KIND_ADD: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;
const KIND_LINEAGE: u8 = 4;
/// ADD with a 56-byte entry that carries the segment's lineage checksums.
const KIND_ADD_L: u8 = 5;
/// SNAPSHOT of 56-byte entries.
const KIND_SNAPSHOT_L: u8 = 6;

/// One change to a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
// `Remove` is written by compaction and retention, which build on this layer; replay
// already understands it so that manifests they write stay readable here.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Edit {
    Add(CatalogEntry),
    Remove(Vec<SegmentKey>),
    Snapshot(Vec<CatalogEntry>),
}

impl Edit {
    /// The whole record: head, payload and checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Edit::Add(e) => (KIND_ADD_L, encode_entry(e).to_vec()),
            Edit::Remove(keys) => {
                let mut p = (keys.len() as u64).to_le_bytes().to_vec();
                keys.iter()
                    .for_each(|k| p.extend_from_slice(&encode_key(k)));
                (KIND_REMOVE, p)
            }
            Edit::Snapshot(entries) => {
                let mut p = Vec::with_capacity(8 + entries.len() * ENTRY_LEN);
                p.extend_from_slice(&(entries.len() as u64).to_le_bytes());
                entries
                    .iter()
                    .for_each(|e| p.extend_from_slice(&encode_entry(e)));
                (KIND_SNAPSHOT_L, p)
            }
        };
        let mut out = Vec::with_capacity(RECORD_HEAD_LEN + payload.len() + 4);
        out.extend_from_slice(&record_head(payload.len() as u32, kind));
        out.extend_from_slice(&payload);
        out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        out
    }
}

fn record_head(len: u32, kind: u8) -> [u8; RECORD_HEAD_LEN] {
    let mut head = [0u8; RECORD_HEAD_LEN];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    let crc = crc32c::crc32c(&head[..5]);
    head[5..].copy_from_slice(&crc.to_le_bytes());
    head
}

fn encode_key(k: &SegmentKey) -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    b[..8].copy_from_slice(&k.start_frame_no.to_le_bytes());
    b[8..16].copy_from_slice(&k.end_frame_no.to_le_bytes());
    b[16..].copy_from_slice(&k.timestamp.to_le_bytes());
    b
}

fn decode_key(b: &[u8]) -> SegmentKey {
    SegmentKey {
        start_frame_no: u64_at(b, 0),
        end_frame_no: u64_at(b, 8),
        timestamp: u64_at(b, 16),
    }
}

fn encode_entry(e: &CatalogEntry) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[..KEY_LEN].copy_from_slice(&encode_key(&e.key));
    b[24..32].copy_from_slice(&e.size.to_le_bytes());
    b[32..40].copy_from_slice(&e.last_commit_ts.to_le_bytes());
    b[40..48].copy_from_slice(&e.base_checksum.to_le_bytes());
    b[48..].copy_from_slice(&e.end_checksum.to_le_bytes());
    b
}

/// Decodes an entry of either length; the short form has no lineage (zeros).
fn decode_entry(b: &[u8]) -> CatalogEntry {
    let lineage = |at| {
        if b.len() == ENTRY_LEN {
            u64_at(b, at)
        } else {
            0
        }
    };
    CatalogEntry {
        key: decode_key(b),
        size: u64_at(b, 24),
        last_commit_ts: u64_at(b, 32),
        base_checksum: lineage(40),
        end_checksum: lineage(48),
    }
}

/// The entry length of a record kind.
fn entry_len(kind: u8) -> usize {
    match kind {
        KIND_ADD_L | KIND_SNAPSHOT_L => ENTRY_LEN,
        _ => ENTRY_LEN_V1,
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The result of replaying a manifest.
#[derive(Debug)]
pub(crate) struct Replay {
    pub catalog: Catalog,
    /// Bytes of whole, valid records (including the file header).
    pub valid_len: u64,
    /// True when a torn last record was dropped.
    pub torn_tail: bool,
    /// Records after the last snapshot.
    pub records_since_snapshot: u64,
}

/// Why replay stopped early.
enum Stop {
    /// The file ends inside this record: a crash during its append.
    Torn,
    /// A payload failed its checksum and the stored checksum is zero: a torn append if
    /// this is the last record (the file was extended but the data never reached the
    /// disk), corruption otherwise.
    ZeroTail(u64),
    /// The file is damaged at this offset.
    Corrupt(FormatError),
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

/// Replays a manifest of `file_len` bytes read from `reader`. `what` names it in errors.
pub(crate) fn replay(reader: impl Read, file_len: u64, what: &str) -> Result<Replay> {
    if file_len < FILE_HEADER_LEN as u64 {
        let reason = FormatError::Length {
            expected: FILE_HEADER_LEN as u64,
            actual: file_len,
        };
        return Err(Error::corrupt(what, reason));
    }
    let mut r = BufReader::with_capacity(1 << 16, reader);
    let mut head = [0u8; FILE_HEADER_LEN];
    r.read_exact(&mut head)
        .map_err(|e| Error::io(format!("reading {what}"), e))?;
    if head[..8] != MAGIC {
        return Err(Error::corrupt(
            what,
            FormatError::BadMagic(Part::ManifestHeader),
        ));
    }
    if crc32c::crc32c(&head[..12]) != u32::from_le_bytes([head[12], head[13], head[14], head[15]]) {
        let reason = FormatError::Checksum {
            part: Part::ManifestHeader,
            offset: 0,
        };
        return Err(Error::corrupt(what, reason));
    }
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != VERSION {
        return Err(Error::corrupt(what, FormatError::Version(version)));
    }
    if head[10..12] != [0, 0] {
        let reason = FormatError::Invalid {
            part: Part::ManifestHeader,
            offset: 10,
            reason: "reserved bytes not zero",
        };
        return Err(Error::corrupt(what, reason));
    }
    let mut state = Replay {
        catalog: Catalog::default(),
        valid_len: FILE_HEADER_LEN as u64,
        torn_tail: false,
        records_since_snapshot: 0,
    };
    while state.valid_len < file_len {
        match read_record(&mut r, state.valid_len, file_len, &mut state) {
            Ok(len) => state.valid_len += len,
            Err(Stop::Torn) => {
                state.torn_tail = true;
                break;
            }
            Err(Stop::Corrupt(reason)) => return Err(Error::corrupt(what, reason)),
            Err(Stop::ZeroTail(offset)) => {
                let reason = FormatError::Checksum {
                    part: Part::ManifestRecord,
                    offset,
                };
                return Err(Error::corrupt(what, reason));
            }
            Err(Stop::Io(e)) => return Err(Error::io(format!("reading {what}"), e)),
        }
    }
    state.catalog.shrink_to_fit();
    Ok(state)
}

/// Reads and applies one record at `offset`; returns its length in bytes.
fn read_record(
    r: &mut impl Read,
    offset: u64,
    file_len: u64,
    state: &mut Replay,
) -> Result<u64, Stop> {
    let remaining = file_len - offset;
    if remaining < RECORD_HEAD_LEN as u64 {
        return Err(Stop::Torn);
    }
    let mut head = [0u8; RECORD_HEAD_LEN];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let kind = head[4];
    if record_head(len, kind) != head {
        // A head that fails its checksum is torn only if nothing but zeros follows it
        // (a crash can leave a zero-filled tail); otherwise the file is damaged.
        return if rest_is_zero(r)? {
            Err(Stop::Torn)
        } else {
            Err(corrupt(offset, "record header checksum mismatch"))
        };
    }
    let known = [
        KIND_ADD,
        KIND_REMOVE,
        KIND_SNAPSHOT,
        KIND_LINEAGE,
        KIND_ADD_L,
        KIND_SNAPSHOT_L,
    ];
    if !known.contains(&kind) {
        // The head's checksum holds, so the kind is what was written: not a torn append.
        return Err(corrupt(offset, "unknown record kind"));
    }
    // Snapshots (and the lineage that follows one) are only ever written whole (temp
    // file and rename), never appended, so damage there cannot be a torn append.
    let appended = !matches!(kind, KIND_SNAPSHOT | KIND_SNAPSHOT_L | KIND_LINEAGE);
    let total = RECORD_HEAD_LEN as u64 + u64::from(len) + 4;
    if total > remaining {
        return if appended {
            Err(Stop::Torn)
        } else {
            Err(corrupt(offset, "snapshot runs past the end of the file"))
        };
    }
    let is_last = total == remaining;
    let payload_at = offset + RECORD_HEAD_LEN as u64;
    let outcome = match kind {
        KIND_ADD | KIND_ADD_L => read_add(r, len, entry_len(kind), payload_at, state),
        KIND_REMOVE => read_remove(r, len, payload_at, state),
        KIND_LINEAGE => read_lineage(r, len, payload_at, state),
        _ => read_snapshot(r, len, entry_len(kind), payload_at, state),
    };
    match outcome {
        Err(Stop::ZeroTail(_)) if is_last && appended => Err(Stop::Torn),
        other => other.map(|()| total),
    }
}

fn rest_is_zero(r: &mut impl Read) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

fn corrupt(offset: u64, reason: &'static str) -> Stop {
    Stop::Corrupt(FormatError::Invalid {
        part: Part::ManifestRecord,
        offset,
        reason,
    })
}

/// Reads a payload of `len` bytes plus its checksum, verifying it.
fn read_payload(r: &mut impl Read, len: u32, at: u64) -> Result<Vec<u8>, Stop> {
    let mut payload = vec![0u8; len as usize + 4];
    r.read_exact(&mut payload)?;
    let crc = payload.split_off(len as usize);
    if crc32c::crc32c(&payload).to_le_bytes()[..] != crc[..] {
        // An acknowledged record with a flipped bit keeps a non-zero checksum, so it is
        // reported; only a never-written (zero-filled) tail can be dropped as torn.
        return Err(if crc == [0; 4] {
            Stop::ZeroTail(at)
        } else {
            Stop::Corrupt(FormatError::Checksum {
                part: Part::ManifestRecord,
                offset: at,
            })
        });
    }
    Ok(payload)
}

fn read_add(
    r: &mut impl Read,
    len: u32,
    entry_len: usize,
    at: u64,
    state: &mut Replay,
) -> Result<(), Stop> {
    if len as usize != entry_len {
        return Err(corrupt(at, "add record of the wrong length"));
    }
    let entry = decode_entry(&read_payload(r, len, at)?);
    match state.catalog.check_append(&entry) {
        Append::New => state.catalog.push(entry),
        _ => return Err(corrupt(at, "added segment conflicts with the catalog")),
    }
    state.records_since_snapshot += 1;
    Ok(())
}

fn read_remove(r: &mut impl Read, len: u32, at: u64, state: &mut Replay) -> Result<(), Stop> {
    let payload = read_payload(r, len, at)?;
    let count = counted(&payload, KEY_LEN).ok_or_else(|| corrupt(at, "bad remove record"))?;
    let keys: Vec<SegmentKey> = payload[8..].chunks_exact(KEY_LEN).map(decode_key).collect();
    if state.catalog.remove(&keys) != count {
        return Err(corrupt(at, "removed segment is not in the catalog"));
    }
    state.records_since_snapshot += 1;
    Ok(())
}

/// Validates a `count: u64` prefix followed by `count` items of `item_len` bytes.
fn counted(payload: &[u8], item_len: usize) -> Option<usize> {
    let count = usize::try_from(u64_at(payload.get(..8)?, 0)).ok()?;
    (payload.len() - 8 == count.checked_mul(item_len)?).then_some(count)
}

/// A fork's lineage, right after its snapshot: `floor: u64 | base count: u16 | per
/// base, name length: u8 and name | run count: u32 | per run, owner: u16 and count: u32`
/// (owners of the snapshot's entries, run-length encoded, in entry order).
fn read_lineage(r: &mut impl Read, len: u32, at: u64, state: &mut Replay) -> Result<(), Stop> {
    let payload = read_payload(r, len, at)?;
    let entries = state.catalog.len();
    let (bases, owners, floor) =
        decode_lineage(&payload, entries).ok_or_else(|| corrupt(at, "bad lineage record"))?;
    state
        .catalog
        .set_lineage(bases, owners, floor)
        .map_err(|_| corrupt(at, "lineage disagrees with the snapshot"))
}

/// `entries` bounds the owners the runs may add up to, so a damaged or crafted record
/// cannot make replay allocate more than the catalog it describes.
fn decode_lineage(
    p: &[u8],
    entries: usize,
) -> Option<(Vec<crate::format::NamespaceName>, Vec<u16>, u64)> {
    let mut at = 0;
    let mut take = |n: usize| {
        let bytes = p.get(at..at + n)?;
        at += n;
        Some(bytes)
    };
    let floor = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let base_count = u16::from_le_bytes(take(2)?.try_into().ok()?);
    let mut bases = Vec::with_capacity(usize::from(base_count));
    for _ in 0..base_count {
        let len = usize::from(take(1)?[0]);
        let name = std::str::from_utf8(take(len)?).ok()?;
        bases.push(crate::format::NamespaceName::new(name).ok()?);
    }
    let runs = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut owners = Vec::new();
    for _ in 0..runs {
        let owner = u16::from_le_bytes(take(2)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        if count > entries - owners.len() {
            return None;
        }
        owners.extend(std::iter::repeat_n(owner, count));
    }
    (at == p.len()).then_some((bases, owners, floor))
}

/// The lineage record of `catalog`, if it has one (a fork's).
fn lineage_record(catalog: &Catalog) -> Option<Vec<u8>> {
    let (bases, owners, floor) = catalog.lineage();
    if bases.is_empty() && owners.is_empty() && floor == 0 {
        return None;
    }
    let mut p = floor.to_le_bytes().to_vec();
    p.extend_from_slice(&(bases.len() as u16).to_le_bytes());
    for name in bases {
        p.push(name.as_str().len() as u8);
        p.extend_from_slice(name.as_str().as_bytes());
    }
    let mut runs: Vec<(u16, u32)> = Vec::new();
    for &o in owners {
        match runs.last_mut() {
            Some((owner, count)) if *owner == o => *count += 1,
            _ => runs.push((o, 1)),
        }
    }
    p.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for (owner, count) in runs {
        p.extend_from_slice(&owner.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
    }
    let mut out = Vec::with_capacity(RECORD_HEAD_LEN + p.len() + 4);
    out.extend_from_slice(&record_head(p.len() as u32, KIND_LINEAGE));
    out.extend_from_slice(&p);
    out.extend_from_slice(&crc32c::crc32c(&p).to_le_bytes());
    Some(out)
}

/// Snapshots can hold millions of entries, so they are streamed: entries go straight
/// into the catalog while the checksum is computed, and nothing is kept if it fails.
fn read_snapshot(
    r: &mut impl Read,
    len: u32,
    entry_len: usize,
    at: u64,
    state: &mut Replay,
) -> Result<(), Stop> {
    let mut count_bytes = [0u8; 8];
    if (len as usize) < 8 {
        return Err(corrupt(at, "bad snapshot record"));
    }
    r.read_exact(&mut count_bytes)?;
    let count = u64::from_le_bytes(count_bytes);
    if Some(u64::from(len) - 8) != count.checked_mul(entry_len as u64) {
        return Err(corrupt(at, "snapshot length disagrees with its count"));
    }
    let mut crc = crc32c::crc32c(&count_bytes);
    let mut entries = Vec::with_capacity(count as usize);
    let mut chunk = vec![0u8; entry_len * 1024];
    let mut left = count as usize;
    while left > 0 {
        let n = left.min(1024);
        let buf = &mut chunk[..n * entry_len];
        r.read_exact(buf)?;
        crc = crc32c::crc32c_append(crc, buf);
        entries.extend(buf.chunks_exact(entry_len).map(decode_entry));
        left -= n;
    }
    let mut stored = [0u8; 4];
    r.read_exact(&mut stored)?;
    if crc.to_le_bytes() != stored {
        return Err(Stop::Corrupt(FormatError::Checksum {
            part: Part::ManifestRecord,
            offset: at,
        }));
    }
    state.catalog =
        Catalog::from_entries(entries).map_err(|_| corrupt(at, "snapshot entries out of order"))?;
    state.records_since_snapshot = 0;
    Ok(())
}

/// An open manifest that edits are appended to.
#[derive(Debug)]
pub(crate) struct ManifestFile {
    dir: PathBuf,
    file: File,
    records_since_snapshot: u64,
    /// Entries in the catalog when the file was last rewritten as a snapshot (or opened).
    entries_at_snapshot: u64,
}

/// Replays `dir/MANIFEST` without modifying it, for readers: a torn tail (possibly an
/// append in progress by the writer) is left alone and simply not applied. `Ok(None)`
/// when there is no manifest.
pub(crate) fn load(dir: &Path) -> Result<Option<Catalog>> {
    let path = dir.join(MANIFEST_FILE);
    let what = path.display().to_string();
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {what}"), e)),
    };
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(format!("replaying {what}"), e))?
        .len();
    Ok(Some(replay(&mut file, file_len, &what)?.catalog))
}

impl ManifestFile {
    /// Opens `dir/MANIFEST` for appending and replays it, truncating a torn tail. Only the
    /// namespace's single writer (holder of its lock) may call this. `Ok(None)` when there
    /// is no manifest yet.
    pub(crate) fn open(dir: &Path) -> Result<Option<(Self, Catalog)>> {
        let path = dir.join(MANIFEST_FILE);
        let what = path.display().to_string();
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("opening {what}"), e)),
        };
        let io_err = |e| Error::io(format!("replaying {what}"), e);
        let file_len = file.metadata().map_err(io_err)?.len();
        let replay = replay(&mut file, file_len, &what)?;
        if replay.torn_tail {
            tracing::warn!(manifest = %what, valid_len = replay.valid_len, file_len, "dropping a torn manifest record left by a crash");
            file.set_len(replay.valid_len).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err)?;
        let manifest = Self {
            dir: dir.to_path_buf(),
            file,
            records_since_snapshot: replay.records_since_snapshot,
            entries_at_snapshot: replay.catalog.len() as u64,
        };
        Ok(Some((manifest, replay.catalog)))
    }

    /// Creates `dir/MANIFEST` holding `catalog` as a snapshot (atomically).
    pub(crate) fn create(dir: &Path, catalog: &Catalog) -> Result<Self, AtomicWriteError> {
        if catalog.len() > MAX_SNAPSHOT_ENTRIES {
            let source = io::Error::other(format!(
                "a catalog of {} segments exceeds the {MAX_SNAPSHOT_ENTRIES} one snapshot record holds",
                catalog.len()
            ));
            return Err(AtomicWriteError {
                renamed: false,
                source,
            });
        }
        let snapshot = Edit::Snapshot(catalog.entries().to_vec()).encode();
        let lineage = lineage_record(catalog).unwrap_or_default();
        let mut file = write_atomic(dir, MANIFEST_FILE, &[&file_header(), &snapshot, &lineage])?;
        file.seek(SeekFrom::End(0))
            .map_err(|source| AtomicWriteError {
                renamed: true,
                source,
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            records_since_snapshot: 0,
            entries_at_snapshot: catalog.len() as u64,
        })
    }

    /// Appends `edit` and makes it durable.
    pub(crate) fn append(&mut self, edit: &Edit) -> io::Result<()> {
        self.file.write_all(&edit.encode())?;
        self.file.sync_data()?;
        self.records_since_snapshot += 1;
        Ok(())
    }

    /// Rewrites the manifest as one snapshot of `catalog` once the records appended since
    /// the last snapshot outnumber its entries (and at least [`MIN_COMPACT_RECORDS`]).
    /// On an error with `renamed == false` the old file and this handle are intact.
    pub(crate) fn maybe_compact(&mut self, catalog: &Catalog) -> Result<(), AtomicWriteError> {
        if self.records_since_snapshot < MIN_COMPACT_RECORDS.max(self.entries_at_snapshot) {
            return Ok(());
        }
        *self = Self::create(&self.dir, catalog)?;
        Ok(())
    }
}

/// A whole manifest file holding `catalog` as one snapshot, as bytes (object stores keep
/// one per manifest version).
pub(crate) fn encode_snapshot_file(catalog: &Catalog) -> Result<Vec<u8>> {
    if catalog.len() > MAX_SNAPSHOT_ENTRIES {
        return Err(crate::error::InvalidInput::Config(format!(
            "a catalog of {} segments exceeds the {MAX_SNAPSHOT_ENTRIES} one snapshot record holds",
            catalog.len()
        ))
        .into());
    }
    let mut out = file_header().to_vec();
    out.extend_from_slice(&Edit::Snapshot(catalog.entries().to_vec()).encode());
    out.extend_from_slice(&lineage_record(catalog).unwrap_or_default());
    Ok(out)
}

/// Writes a manifest holding `entries` into `dir`, for tools and benchmarks that need a
/// large catalog without storing that many segments.
pub(crate) fn write_snapshot(dir: &Path, entries: Vec<CatalogEntry>) -> Result<()> {
    let catalog = Catalog::from_entries(entries)
        .map_err(|why| Error::from(crate::error::InvalidInput::Config(why)))?;
    ManifestFile::create(dir, &catalog)
        .map(drop)
        .map_err(io::Error::from)
        .map_err(|e| Error::io(format!("writing the manifest in {}", dir.display()), e))
}

#[cfg(test)]
mod tests;

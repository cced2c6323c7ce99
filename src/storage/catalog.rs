//! The in-memory catalog of one namespace's segments.
//!
//! Segments never overlap and are appended in frame order, and their timestamps never go
//! backwards, so one vector sorted by end frame number is also sorted by start frame and
//! by timestamp. Every lookup is a binary search. The searched fields are also kept in
//! two dense columns (end frame, timestamp), each with a sparse fence of every 64th
//! value: a search first narrows to one 512-byte block through the fence (small enough to
//! stay in cache), then searches that block. This keeps a lookup in a million-segment
//! catalog within a few cache misses of one in a small catalog. An entry costs about 56
//! bytes.

use chrono::{DateTime, Utc};

use super::{FindSegmentReq, SegmentInfo};
use crate::format::{NamespaceName, SegmentKey};

/// One catalogued segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CatalogEntry {
    pub key: SegmentKey,
    pub size: u64,
    pub last_commit_ts: u64,
    /// The lineage checksum of the state the segment builds on; 0 when it starts a new
    /// lineage (or carries none: see `end_checksum`).
    pub base_checksum: u64,
    /// The lineage checksum after the segment's last commit; 0 when the segment carries
    /// no lineage (format version 1), so nothing can be checked against it.
    pub end_checksum: u64,
}

impl CatalogEntry {
    pub(crate) fn info(&self) -> SegmentInfo {
        SegmentInfo {
            key: self.key,
            size: self.size,
            last_commit_ts: self.last_commit_ts,
        }
    }
}

/// What appending an entry would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Append {
    /// The entry extends the log.
    New,
    /// The same segment is already catalogued.
    AlreadyStored,
    /// The entry conflicts with the log; the string says how.
    Rejected(String),
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Catalog {
    entries: Vec<CatalogEntry>,
    /// `entries[i].key.end_frame_no`, for searching.
    ends: Column,
    /// `entries[i].key.timestamp`, for searching.
    stamps: Column,
    /// A fork's lineage: the namespaces its inherited segments are stored in...
    bases: Vec<NamespaceName>,
    /// ...and for each entry, 0 if this namespace stores it, else `i + 1` for
    /// `bases[i]`. Empty when every entry is this namespace's own.
    owners: Vec<u16>,
    /// A fork's frames start above this (the source's high-water mark at the fork).
    floor: u64,
    /// Inherited segments this handle's edits took out, with where they are stored, so
    /// readers that planned before an edit still find them (in memory only, newest last).
    retired_owners: Vec<(SegmentKey, NamespaceName)>,
}

/// Retired inherited segments remembered at most.
const RETIRED_OWNERS_KEPT: usize = 4096;

/// A sorted column of `u64` with a fence of every [`BLOCK`]th value.
#[derive(Debug, Default, Clone)]
struct Column {
    values: Vec<u64>,
    fence: Vec<u64>,
}

const BLOCK: usize = 64;

impl Column {
    fn with_capacity(n: usize) -> Self {
        Self {
            values: Vec::with_capacity(n),
            fence: Vec::with_capacity(n / BLOCK + 1),
        }
    }

    fn push(&mut self, value: u64) {
        if self.values.len().is_multiple_of(BLOCK) {
            self.fence.push(value);
        }
        self.values.push(value);
    }

    fn rebuild(values: impl Iterator<Item = u64>) -> Self {
        let mut column = Self::default();
        values.for_each(|v| column.push(v));
        column
    }

    fn shrink_to_fit(&mut self) {
        self.values.shrink_to_fit();
        self.fence.shrink_to_fit();
    }

    /// Like `slice::partition_point` over the (sorted) values, for a predicate that holds
    /// for a prefix of them.
    fn partition_point(&self, pred: impl Fn(u64) -> bool) -> usize {
        let blocks = self.fence.partition_point(|&v| pred(v));
        let Some(block) = blocks.checked_sub(1) else {
            return 0;
        };
        let lo = block * BLOCK;
        let hi = (lo + BLOCK).min(self.values.len());
        lo + self.values[lo..hi].partition_point(|&v| pred(v))
    }
}

impl Catalog {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The highest catalogued frame number, or 0; for a fork, at least the source's
    /// high-water mark at the fork (its own frames start above it).
    pub(crate) fn durable_frame_no(&self) -> u64 {
        self.entries
            .last()
            .map_or(0, |e| e.key.end_frame_no)
            .max(self.floor)
    }

    /// The namespace that stores `key`'s object when it is not this one's own: a fork
    /// reads the segments it inherited where its source keeps them.
    pub(crate) fn owner(&self, key: &SegmentKey) -> Option<&NamespaceName> {
        let Some(i) = self.index_of(key) else {
            let mut retired = self.retired_owners.iter().rev();
            return retired.find(|(k, _)| k == key).map(|(_, owner)| owner);
        };
        let owner = *self.owners.get(i)?;
        owner.checked_sub(1).map(|b| &self.bases[usize::from(b)])
    }

    /// The keys this catalog reads from `namespace`'s store (for its garbage collection).
    pub(crate) fn inherited_from(&self, namespace: &NamespaceName) -> Vec<SegmentKey> {
        let Some(b) = self.bases.iter().position(|n| n == namespace) else {
            return Vec::new();
        };
        let wanted = b as u16 + 1;
        self.entries
            .iter()
            .zip(&self.owners)
            .filter(|(_, &o)| o == wanted)
            .map(|(e, _)| e.key)
            .collect()
    }

    /// The lineage as stored: bases, one owner per entry (empty: all own), floor.
    pub(crate) fn lineage(&self) -> (&[NamespaceName], &[u16], u64) {
        (&self.bases, &self.owners, self.floor)
    }

    /// Sets the lineage: `owners` has one value per entry (or is empty), each at most
    /// `bases.len()`; frames appended later must start above `floor`.
    pub(crate) fn set_lineage(
        &mut self,
        bases: Vec<NamespaceName>,
        owners: Vec<u16>,
        floor: u64,
    ) -> Result<(), String> {
        if !owners.is_empty() && owners.len() != self.entries.len() {
            return Err(format!(
                "{} owners for {} segments",
                owners.len(),
                self.entries.len()
            ));
        }
        if owners.iter().any(|&o| usize::from(o) > bases.len())
            || bases.len() >= usize::from(u16::MAX)
        {
            return Err("an owner that is not a base namespace".into());
        }
        self.bases = bases;
        self.owners = owners;
        self.floor = floor;
        Ok(())
    }

    /// Judges whether `entry` may be appended.
    pub(crate) fn check_append(&self, entry: &CatalogEntry) -> Append {
        if self.get(&entry.key).is_some() {
            return Append::AlreadyStored;
        }
        if entry.key.start_frame_no <= self.floor {
            return Append::Rejected(format!(
                "it starts at frame {} but this fork's frames start above {}",
                entry.key.start_frame_no, self.floor
            ));
        }
        let Some(last) = self.entries.last() else {
            return Append::New;
        };
        if entry.key.start_frame_no <= last.key.end_frame_no {
            return Append::Rejected(format!(
                "it starts at frame {} but frames up to {} are already stored",
                entry.key.start_frame_no, last.key.end_frame_no
            ));
        }
        if entry.key.timestamp < last.last_commit_ts {
            return Append::Rejected(format!(
                "its first commit ({}) is older than the last stored commit ({})",
                fmt_ms(entry.key.timestamp),
                fmt_ms(last.last_commit_ts)
            ));
        }
        Append::New
    }

    /// Whether a new segment builds on the namespace's latest state (`docs/FORMAT.md`
    /// §3.9): it starts a new lineage, or its base checksum is the checksum after the
    /// last catalogued commit. Segments without lineage, and segments after one without
    /// (history written before lineage existed), cannot be checked and pass. Checked
    /// for new stores only, not on replay of what was accepted before.
    pub(crate) fn check_lineage(&self, entry: &CatalogEntry) -> Result<(), String> {
        if entry.end_checksum == 0 || entry.base_checksum == 0 {
            return Ok(()); // no lineage, or a new one
        }
        match self.entries.last() {
            None => Err(format!(
                "it builds on database state {:016x} but the namespace holds no history",
                entry.base_checksum
            )),
            Some(last) if last.end_checksum == 0 => Ok(()),
            Some(last) if last.end_checksum == entry.base_checksum => Ok(()),
            Some(last) => Err(format!(
                "it builds on database state {:016x} but the namespace's latest state is \
                 {:016x} (frame {}): another copy of the database wrote this namespace, or \
                 its history was replaced",
                entry.base_checksum, last.end_checksum, last.key.end_frame_no
            )),
        }
    }

    /// Appends an entry that [`check_append`](Self::check_append) judged `New`.
    pub(crate) fn push(&mut self, entry: CatalogEntry) {
        debug_assert_eq!(self.check_append(&entry), Append::New);
        self.entries.push(entry);
        self.ends.push(entry.key.end_frame_no);
        self.stamps.push(entry.key.timestamp);
        if !self.owners.is_empty() {
            self.owners.push(0);
        }
    }

    /// Replaces the whole catalog with `entries`, which must satisfy the catalog's order.
    pub(crate) fn from_entries(entries: Vec<CatalogEntry>) -> Result<Self, String> {
        let mut catalog = Catalog {
            entries: Vec::with_capacity(entries.len()),
            ends: Column::with_capacity(entries.len()),
            stamps: Column::with_capacity(entries.len()),
            ..Catalog::default()
        };
        for entry in entries {
            match catalog.check_append(&entry) {
                Append::New => catalog.push(entry),
                Append::AlreadyStored => return Err(format!("segment {} listed twice", entry.key)),
                Append::Rejected(why) => return Err(format!("segment {}: {why}", entry.key)),
            }
        }
        Ok(catalog)
    }

    /// Removes the entries with these keys; returns how many were found.
    pub(crate) fn remove(&mut self, keys: &[SegmentKey]) -> usize {
        let before = self.entries.len();
        if !self.owners.is_empty() {
            let mut i = 0;
            let entries = &self.entries;
            self.owners.retain(|_| {
                i += 1;
                !keys.contains(&entries[i - 1].key)
            });
        }
        self.entries.retain(|e| !keys.contains(&e.key));
        self.ends = Column::rebuild(self.entries.iter().map(|e| e.key.end_frame_no));
        self.stamps = Column::rebuild(self.entries.iter().map(|e| e.key.timestamp));
        before - self.entries.len()
    }

    /// This catalog with the consecutive entries `inputs` replaced by `output`, which
    /// must cover exactly their frames: the same first and last frame, a first commit no
    /// earlier than the first input's, and the last input's last commit time (so
    /// lookups by time keep their answers). An error says which rule failed.
    pub(crate) fn replaced(
        &self,
        inputs: &[SegmentKey],
        output: CatalogEntry,
    ) -> Result<Self, String> {
        let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
            return Err("no segments to replace".into());
        };
        let at = self.first_ending_at_or_after(first.end_frame_no);
        let run = self.entries.get(at..at + inputs.len());
        if run.is_none_or(|run| !run.iter().map(|e| e.key).eq(inputs.iter().copied())) {
            return Err("the segments to replace are not consecutive entries of the catalog (another compaction may have replaced them)".into());
        }
        let last_ts = self.entries[at + inputs.len() - 1].last_commit_ts;
        let key = output.key;
        if key.start_frame_no != first.start_frame_no || key.end_frame_no != last.end_frame_no {
            return Err(format!(
                "segment {key} does not cover frames {}..={} exactly",
                first.start_frame_no, last.end_frame_no
            ));
        }
        if key.timestamp < first.timestamp || output.last_commit_ts != last_ts {
            return Err(format!(
                "segment {key} changes the commit times of the segments it replaces"
            ));
        }
        if inputs.contains(&key) {
            return Err(format!("segment {key} would replace itself"));
        }
        let mut entries = Vec::with_capacity(self.entries.len() + 1 - inputs.len());
        entries.extend_from_slice(&self.entries[..at]);
        entries.push(output);
        entries.extend_from_slice(&self.entries[at + inputs.len()..]);
        let mut next = Self::from_entries(entries)?;
        // The output is this namespace's own, whoever stored the inputs.
        let mut owners = Vec::new();
        if !self.owners.is_empty() {
            owners.extend_from_slice(&self.owners[..at]);
            owners.push(0);
            owners.extend_from_slice(&self.owners[at + inputs.len()..]);
        }
        next.set_lineage(self.bases.clone(), owners, self.floor)?;
        next.retired_owners = self.retired_owners.clone();
        for key in inputs {
            if let Some(owner) = self.owner(key) {
                next.retired_owners.push((*key, owner.clone()));
            }
        }
        let excess = next
            .retired_owners
            .len()
            .saturating_sub(RETIRED_OWNERS_KEPT);
        next.retired_owners.drain(..excess);
        Ok(next)
    }

    /// Frees capacity left over from growth.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.stamps.shrink_to_fit();
    }

    /// Index of the first entry whose end frame is at least `n`.
    fn first_ending_at_or_after(&self, n: u64) -> usize {
        self.ends.partition_point(|end| end < n)
    }

    pub(crate) fn get(&self, key: &SegmentKey) -> Option<&CatalogEntry> {
        self.index_of(key).map(|i| &self.entries[i])
    }

    /// Where `key` is in the catalog, if it is there.
    fn index_of(&self, key: &SegmentKey) -> Option<usize> {
        let i = self.first_ending_at_or_after(key.end_frame_no);
        self.entries
            .get(i)
            .is_some_and(|e| e.key == *key)
            .then_some(i)
    }

    /// Answers a lookup in O(log n).
    pub(crate) fn find(&self, req: FindSegmentReq) -> Option<SegmentKey> {
        let entry = match req {
            FindSegmentReq::Containing(n) => {
                let i = self.first_ending_at_or_after(n);
                self.entries.get(i).filter(|e| e.key.start_frame_no <= n)
            }
            FindSegmentReq::EndFrameNoLessThan(n) => {
                let i = self.ends.partition_point(|end| end <= n);
                i.checked_sub(1).map(|i| &self.entries[i])
            }
            FindSegmentReq::Timestamp(t) => {
                let t = u64::try_from(t.timestamp_millis()).ok()?;
                let i = self.stamps.partition_point(|ts| ts <= t);
                i.checked_sub(1).map(|i| &self.entries[i])
            }
        };
        entry.map(|e| e.key)
    }

    /// Up to `limit` segments with end frame at least `until` and below `before` (or all,
    /// when `before` is `None`), newest first.
    pub(crate) fn page_newest_first(
        &self,
        until: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Vec<SegmentInfo> {
        let hi = before.map_or(self.entries.len(), |b| self.first_ending_at_or_after(b));
        let lo = self.first_ending_at_or_after(until);
        let lo = lo.max(hi.saturating_sub(limit));
        self.entries[lo.min(hi)..hi]
            .iter()
            .rev()
            .map(CatalogEntry::info)
            .collect()
    }
}

fn fmt_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map_or_else(|| format!("{ms} ms"), |t| t.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(start: u64, end: u64, ts: u64, last_ts: u64) -> CatalogEntry {
        CatalogEntry {
            key: SegmentKey {
                start_frame_no: start,
                end_frame_no: end,
                timestamp: ts,
            },
            size: 100,
            base_checksum: 0,
            end_checksum: 0,
            last_commit_ts: last_ts,
        }
    }

    #[test]
    fn rejects_overlaps_and_time_going_backwards() {
        let mut c = Catalog::default();
        c.push(entry(1, 10, 100, 200));
        assert_eq!(
            c.check_append(&entry(1, 10, 100, 200)),
            Append::AlreadyStored
        );
        assert!(matches!(
            c.check_append(&entry(10, 20, 300, 300)),
            Append::Rejected(_)
        ));
        assert!(matches!(
            c.check_append(&entry(11, 20, 199, 300)),
            Append::Rejected(_)
        ));
        assert_eq!(c.check_append(&entry(15, 20, 200, 300)), Append::New);
    }

    /// A straightforward model: scan every entry.
    fn model_find(entries: &[CatalogEntry], req: FindSegmentReq) -> Option<SegmentKey> {
        match req {
            FindSegmentReq::Containing(n) => entries.iter().find(|e| e.key.includes(n)),
            FindSegmentReq::EndFrameNoLessThan(n) => entries
                .iter()
                .filter(|e| e.key.end_frame_no <= n)
                .max_by_key(|e| e.key.end_frame_no),
            FindSegmentReq::Timestamp(t) => entries
                .iter()
                .filter(|e| (e.key.timestamp as i64) <= t.timestamp_millis())
                .max_by_key(|e| e.key.end_frame_no),
        }
        .map(|e| e.key)
    }

    proptest! {
        #[test]
        fn fenced_search_agrees_with_a_plain_one(
            mut values in proptest::collection::vec(0u64..1000, 0..400),
            probe in 0u64..1001,
        ) {
            values.sort_unstable();
            let column = Column::rebuild(values.iter().copied());
            prop_assert_eq!(column.partition_point(|v| v < probe), values.partition_point(|&v| v < probe));
            prop_assert_eq!(column.partition_point(|v| v <= probe), values.partition_point(|&v| v <= probe));
        }

        #[test]
        fn lookups_agree_with_a_linear_scan(
            spans in proptest::collection::vec((0u64..5, 1u64..6, 0u64..3, 0u64..3), 0..40),
            probes in proptest::collection::vec(0u64..250, 1..30),
        ) {
            let mut c = Catalog::default();
            let (mut next, mut ts) = (1u64, 0u64);
            for (gap, len, dts, dur) in spans {
                let start = next + gap;
                let first = ts + dts;
                let e = entry(start, start + len - 1, first, first + dur);
                c.push(e);
                next = start + len;
                ts = first + dur;
            }
            for n in probes {
                let at = DateTime::<Utc>::from_timestamp_millis(n as i64 / 2).unwrap();
                for req in [FindSegmentReq::Containing(n), FindSegmentReq::EndFrameNoLessThan(n), FindSegmentReq::Timestamp(at)] {
                    prop_assert_eq!(c.find(req), model_find(c.entries(), req), "{:?}", req);
                }
                let page = c.page_newest_first(n, None, usize::MAX);
                let expected: Vec<_> = c.entries().iter().rev().filter(|e| e.key.end_frame_no >= n).map(CatalogEntry::info).collect();
                prop_assert_eq!(page, expected);
            }
        }
    }
}

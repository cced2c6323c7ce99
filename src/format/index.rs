//! The page index: an `fst::Map` from page number to the position of the newest frame of
//! that page in a segment.
//!
//! Keys are page numbers as 4 big-endian bytes, so the fst's byte order is numeric order
//! and a range of pages is a range of keys. Values are frame positions (0-based) inside
//! the segment, from which the frame's byte offset follows.

use bytes::Bytes;

use crate::error::{FormatError, Part};

/// Maps page numbers to the newest frame of that page in one segment.
#[derive(Clone)]
pub struct PageIndex {
    map: fst::Map<Bytes>,
}

impl PageIndex {
    /// Encodes an index from `(page_no, position)` pairs sorted by page number. The
    /// bytes are parsed (and checked) with [`parse`](Self::parse) where they are stored.
    pub(crate) fn encode(sorted: impl IntoIterator<Item = (u32, u32)>) -> Vec<u8> {
        let mut builder = fst::MapBuilder::memory();
        for (page_no, position) in sorted {
            // Keys are strictly increasing (one entry per page, sorted) and the builder
            // writes to memory, so insertion cannot fail.
            let inserted = builder.insert(page_no.to_be_bytes(), u64::from(position));
            debug_assert!(inserted.is_ok());
        }
        builder.into_inner().unwrap_or_default()
    }

    /// Parses index bytes and checks that every key is a 4-byte page number and every
    /// value a frame position below `frame_count`. `offset` locates the index in its file,
    /// for error messages.
    ///
    /// The `fst` crate trusts its input and can panic on malformed nodes, and checksums
    /// only prove the bytes are what a writer wrote, not that the writer was sound. So the
    /// whole index is walked here, inside `catch_unwind`: a walk that completes has
    /// visited every node a later lookup can reach.
    pub(crate) fn parse(bytes: Bytes, frame_count: u32, offset: u64) -> Result<Self, FormatError> {
        let bad = |reason| FormatError::Invalid {
            part: Part::PageIndex,
            offset,
            reason,
        };
        let walked = std::panic::catch_unwind(move || {
            let map = fst::Map::new(bytes).map_err(|_| "not a valid fst")?;
            check_entries(&map, frame_count)?;
            Ok(map)
        });
        match walked {
            Ok(Ok(map)) => Ok(Self { map }),
            Ok(Err(reason)) => Err(bad(reason)),
            Err(_) => Err(bad("malformed fst")),
        }
    }

    /// Position of the newest frame of `page_no` in the segment.
    pub fn get(&self, page_no: u32) -> Option<u32> {
        // Values were checked to be frame positions (< u32::MAX) when the index was made.
        self.map
            .get(page_no.to_be_bytes())
            .and_then(|v| u32::try_from(v).ok())
    }

    /// Number of distinct pages in the segment.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when the index has no pages (never the case for a sealed segment).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `(page_no, position)` pairs in page order.
    pub fn iter(&self) -> PageIndexIter<'_> {
        PageIndexIter(self.map.stream())
    }

    /// The underlying `fst::Map`, for range queries and set operations.
    pub fn as_fst(&self) -> &fst::Map<Bytes> {
        &self.map
    }

    /// The encoded bytes of the index.
    pub fn as_bytes(&self) -> &[u8] {
        self.map.as_fst().as_bytes()
    }
}

impl std::fmt::Debug for PageIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageIndex")
            .field("pages", &self.len())
            .finish()
    }
}

/// Iterator over a [`PageIndex`] in page order.
pub struct PageIndexIter<'a>(fst::map::Stream<'a>);

impl Iterator for PageIndexIter<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        let (key, value) = fst::Streamer::next(&mut self.0)?;
        let page = u32::from_be_bytes(key.try_into().ok()?);
        Some((page, u32::try_from(value).ok()?))
    }
}

/// Checks every entry of a freshly parsed index.
fn check_entries(map: &fst::Map<Bytes>, frame_count: u32) -> Result<(), &'static str> {
    let mut stream = map.stream();
    while let Some((key, value)) = fst::Streamer::next(&mut stream) {
        if key.len() != 4 {
            return Err("key is not a 4-byte page number");
        }
        if key == [0; 4] {
            return Err("page number 0");
        }
        if value >= u64::from(frame_count) {
            return Err("frame position out of range");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_follow_the_pairs() {
        let bytes = PageIndex::encode([(1, 0), (7, 3), (70_000, 2)]);
        let idx = PageIndex::parse(Bytes::from(bytes), 4, 0).unwrap();
        assert_eq!(idx.get(1), Some(0));
        assert_eq!(idx.get(7), Some(3));
        assert_eq!(idx.get(70_000), Some(2));
        assert_eq!(idx.get(2), None);
        assert_eq!(
            idx.iter().collect::<Vec<_>>(),
            [(1, 0), (7, 3), (70_000, 2)]
        );
        let reparsed = PageIndex::parse(Bytes::copy_from_slice(idx.as_bytes()), 4, 0).unwrap();
        assert_eq!(
            reparsed.iter().collect::<Vec<_>>(),
            idx.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn parse_rejects_out_of_range_positions_and_garbage() {
        let bytes = Bytes::from(PageIndex::encode([(1, 5)]));
        assert!(PageIndex::parse(bytes.clone(), 5, 0).is_err());
        assert!(PageIndex::parse(bytes, 6, 0).is_ok());
        assert!(PageIndex::parse(Bytes::from_static(b"garbage"), 6, 0).is_err());
    }
}

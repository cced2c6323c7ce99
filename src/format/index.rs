//! The page index: an `fst::Map` from page number to the position of the newest frame of
//! that page in a segment.
//!
//! Keys are page numbers as 4 big-endian bytes, so the fst's byte order is numeric order
//! and a range of pages is a range of keys. Values are frame positions (0-based) inside
//! the segment, from which the frame's byte offset follows.

use std::sync::Arc;

use bytes::Bytes;
use fst::raw::{Node, Output};

use crate::error::{FormatError, Part};

/// Maps page numbers to the newest frame of that page in one segment.
#[derive(Clone)]
pub struct PageIndex {
    map: fst::Map<Bytes>,
    /// Every `(page_no, position)` pair in page order, decoded by the walk that checks
    /// the index when it is parsed: iterating reads these instead of walking the fst
    /// again (restore iterates every index it reads).
    pairs: Arc<[(u32, u32)]>,
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
            let pairs = check_entries(&map, frame_count)?;
            Ok((map, pairs))
        });
        match walked {
            Ok(Ok((map, pairs))) => Ok(Self {
                map,
                pairs: pairs.into(),
            }),
            Ok(Err(reason)) => Err(bad(reason)),
            Err(_) => Err(bad("malformed fst")),
        }
    }

    /// The same index over its own copy of the fst bytes, so it no longer keeps alive
    /// the buffer it was parsed from (a whole segment's, for one built in memory).
    pub(crate) fn detached(&self) -> Self {
        let bytes = Bytes::copy_from_slice(self.map.as_fst().as_bytes());
        // The bytes are the ones this map was built over, which parsed.
        let map = fst::Map::new(bytes).expect("bytes of a parsed index parse");
        Self {
            map,
            pairs: self.pairs.clone(),
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
        self.pairs.len()
    }

    /// True when the index has no pages (never the case for a sealed segment).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `(page_no, position)` pairs in page order.
    pub fn iter(&self) -> PageIndexIter<'_> {
        PageIndexIter(self.pairs.iter())
    }

    /// The `(page_no, position)` pairs in page order, as a slice: a walk through a large
    /// index resumes at an offset instead of holding a copy.
    pub(crate) fn pairs(&self) -> &[(u32, u32)] {
        &self.pairs
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
pub struct PageIndexIter<'a>(std::slice::Iter<'a, (u32, u32)>);

impl Iterator for PageIndexIter<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        self.0.next().copied()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for PageIndexIter<'_> {}

/// Key length of an entry: a page number, 4 bytes big-endian.
const KEY_LEN: u8 = 4;

/// Checks every entry of a freshly parsed index and returns them in page order. A
/// valid index has at most one entry per frame, which bounds the walk on any input.
fn check_entries(map: &fst::Map<Bytes>, frame_count: u32) -> Result<Vec<(u32, u32)>, &'static str> {
    let fst = map.as_fst();
    let mut walk = Walk {
        fst,
        frame_count,
        pairs: Vec::with_capacity(map.len().min(frame_count as usize)),
    };
    walk.visit(fst.root(), 0, 0, Output::zero())?;
    Ok(walk.pairs)
}

/// A depth-first walk of the fst's nodes in input order, which is key order: cheaper
/// than `fst`'s generic streams, which keep a key buffer and a stack of states.
struct Walk<'f> {
    fst: &'f fst::raw::Fst<Bytes>,
    frame_count: u32,
    pairs: Vec<(u32, u32)>,
}

impl Walk<'_> {
    /// Visits `node`, reached by the first `depth` bytes of a key (`prefix`, big-endian)
    /// with `out` accumulated on the way.
    fn visit(
        &mut self,
        node: Node<'_>,
        depth: u8,
        prefix: u32,
        out: Output,
    ) -> Result<(), &'static str> {
        if node.is_final() {
            self.entry(depth, prefix, out.cat(node.final_output()).value())?;
        }
        if depth == KEY_LEN {
            return match node.is_empty() {
                true => Ok(()),
                false => Err("key is not a 4-byte page number"),
            };
        }
        for t in node.transitions() {
            let prefix = prefix << 8 | u32::from(t.inp);
            self.visit(self.fst.node(t.addr), depth + 1, prefix, out.cat(t.out))?;
        }
        Ok(())
    }

    fn entry(&mut self, depth: u8, page_no: u32, position: u64) -> Result<(), &'static str> {
        if depth != KEY_LEN {
            return Err("key is not a 4-byte page number");
        }
        if page_no == 0 {
            return Err("page number 0");
        }
        if position >= u64::from(self.frame_count) {
            return Err("frame position out of range");
        }
        if self.pairs.len() >= self.frame_count as usize {
            return Err("more pages than frames");
        }
        // Below `frame_count`, so it fits.
        self.pairs.push((page_no, position as u32));
        Ok(())
    }
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
    fn iteration_agrees_with_the_fst_stream() {
        let mut state = 7u64;
        for round in 0..50u32 {
            let mut pages: Vec<u32> = (0..round * 40 + 1)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1);
                    (state >> 40) as u32 % (1 << (round % 24 + 1)) + 1
                })
                .collect();
            pages.sort_unstable();
            pages.dedup();
            let count = pages.len() as u32;
            let pairs: Vec<(u32, u32)> = pages.iter().map(|&p| (p, p % count)).collect();
            let idx = PageIndex::parse(Bytes::from(PageIndex::encode(pairs.clone())), count, 0);
            let idx = idx.unwrap();
            let mut streamed = Vec::new();
            let mut stream = idx.as_fst().stream();
            while let Some((key, value)) = fst::Streamer::next(&mut stream) {
                streamed.push((u32::from_be_bytes(key.try_into().unwrap()), value as u32));
            }
            assert_eq!(idx.iter().collect::<Vec<_>>(), pairs);
            assert_eq!(streamed, pairs);
            assert_eq!(idx.len(), pairs.len());
        }
    }

    #[test]
    fn parse_rejects_keys_that_are_not_page_numbers() {
        let with_keys = |keys: &[&[u8]]| {
            let mut builder = fst::MapBuilder::memory();
            for key in keys {
                builder.insert(key, 0).unwrap();
            }
            Bytes::from(builder.into_inner().unwrap())
        };
        let short = PageIndex::parse(with_keys(&[&[0, 0, 1]]), 4, 0).unwrap_err();
        assert!(short.to_string().contains("4-byte"), "{short}");
        let long = PageIndex::parse(with_keys(&[&[0, 0, 0, 1], &[0, 0, 0, 1, 0]]), 4, 0);
        assert!(long.unwrap_err().to_string().contains("4-byte"));
        let empty = PageIndex::parse(with_keys(&[&[]]), 4, 0);
        assert!(empty.unwrap_err().to_string().contains("4-byte"));
        let zero = PageIndex::parse(with_keys(&[&[0, 0, 0, 0]]), 4, 0);
        assert!(zero.unwrap_err().to_string().contains("page number 0"));
        let many = PageIndex::parse(with_keys(&[&[0, 0, 0, 1], &[0, 0, 0, 2]]), 1, 0);
        assert!(many.unwrap_err().to_string().contains("more pages"));
    }

    #[test]
    fn parse_rejects_out_of_range_positions_and_garbage() {
        let bytes = Bytes::from(PageIndex::encode([(1, 5)]));
        assert!(PageIndex::parse(bytes.clone(), 5, 0).is_err());
        assert!(PageIndex::parse(bytes, 6, 0).is_ok());
        assert!(PageIndex::parse(Bytes::from_static(b"garbage"), 6, 0).is_err());
    }
}

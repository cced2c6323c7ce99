//! Reading segments for a restore: batches of page indexes and of frames, each segment's
//! reads in flight beside the others', and segment headers remembered between the two.
//!
//! Restore reads a segment's page index (a GET of the header, which says where the index
//! is, then a GET of the index), and later the frames it needs (whose offsets the header
//! also gives). Segments never change once written, so the header read for the index is
//! kept for the frames: a segment that supplies pages costs three GETs, not four.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use hashbrown::HashMap;

use super::{compact, concurrent, ObjectStorage};
use crate::error::Result;
use crate::format::{Header, NamespaceName, PageIndex, SegmentKey};
use crate::storage::Storage;

/// Headers kept at most; restore needs about two batches' worth (64) at a time. When
/// full, the cache starts over, which costs a re-read, never a wrong answer.
const HEADERS_KEPT: usize = 1024;

/// A verified header and the byte range of the segment's page index.
type Known = (Header, Range<u64>);

/// Verified headers of stored segments, with the byte range of each one's page index.
#[derive(Debug, Default)]
pub(super) struct HeaderCache {
    map: Mutex<HashMap<(NamespaceName, SegmentKey), Known>>,
}

impl HeaderCache {
    pub(super) fn get(&self, name: &NamespaceName, key: &SegmentKey) -> Option<Known> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&(name.clone(), *key)).cloned()
    }

    pub(super) fn insert(&self, name: &NamespaceName, key: &SegmentKey, header: Known) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= HEADERS_KEPT {
            map.clear();
        }
        map.insert((name.clone(), *key), header);
    }
}

impl ObjectStorage {
    /// The page indexes of `keys`, at most `read_concurrency` read at once, in order.
    pub(super) async fn indexes(
        &self,
        name: &NamespaceName,
        keys: &[SegmentKey],
    ) -> Vec<Result<PageIndex>> {
        // Collected first: a lazy iterator held across the awaits trips up the compiler's
        // proof that the future is `Send`.
        let reads: Vec<_> = keys
            .iter()
            .map(|key| self.fetch_segment_index(name, key, None))
            .collect();
        concurrent::ordered(reads, self.tuning.read_concurrency).await
    }

    /// The frames asked for, at most `read_concurrency` segments read at once, in order.
    ///
    /// Each segment's frames are copied into a buffer of their own: ranged reads fetch
    /// runs that may include frames nobody asked for, and a store client may merge
    /// nearby ranges into one larger read (the S3 client does), so the returned slices
    /// could otherwise keep much more memory alive than the frames themselves.
    pub(super) async fn frames_batch(
        &self,
        name: &NamespaceName,
        requests: &[(SegmentKey, Vec<u32>)],
    ) -> Result<Vec<Vec<(u32, Bytes)>>> {
        let read = |key, positions| async move {
            let frames = self.fetch_frames(name, key, positions, None).await?;
            Ok(compact(frames))
        };
        let reads: Vec<_> = requests.iter().map(|(k, p)| read(k, p)).collect();
        concurrent::try_ordered(reads, self.tuning.read_concurrency).await
    }
}

//! The VFS's cache: page images and page indexes, bounded by bytes and shared by every
//! connection of the VFS.
//!
//! Entries are keyed by where they are stored (store, namespace, segment, frame
//! position), never by page number: a sealed segment never changes, so an entry is
//! right for every view that reads it, and moving a view (a new commit, another time)
//! keeps everything cached that the new view still reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache as Quick;
use quick_cache::Weighter;

use crate::format::{NamespaceName, PageIndex, SegmentKey};

/// The cache's default size: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Bytes an entry is charged beyond its payload (key, map slot, reference counts).
const ENTRY_OVERHEAD: u64 = 96;

/// A segment of one namespace of one store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SegmentId {
    pub(crate) store: u64,
    pub(crate) ns: NamespaceName,
    pub(crate) key: SegmentKey,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Page(SegmentId, u32),
    Index(SegmentId),
}

#[derive(Clone)]
enum Value {
    Page(Bytes),
    Index(Arc<PageIndex>),
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Value> for ByBytes {
    fn weight(&self, _key: &Key, value: &Value) -> u64 {
        let payload = match value {
            Value::Page(page) => page.len() as u64,
            // The decoded pairs and the fst bytes.
            Value::Index(index) => index.len() as u64 * 8 + index.as_bytes().len() as u64,
        };
        payload + ENTRY_OVERHEAD
    }
}

/// Pages and indexes, at most `capacity` bytes of them.
pub(crate) struct Cache {
    inner: Quick<Key, Value, ByBytes>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cache {
    pub(crate) fn new(capacity: u64) -> Self {
        // quick_cache wants an estimate of the item count; pages of 4 KiB are typical.
        let items = usize::try_from(capacity / 4096)
            .unwrap_or(usize::MAX)
            .max(16);
        // Its defaults suit many threads and tiny items: the capacity is split into a
        // shard per thread or so, and a new entry first goes into 3 % of a shard. Pages
        // read once per query would then leave before the next query asks again, and a
        // big segment's page index might fit nowhere. A few shards, and half of each
        // for new entries: a working set that fits is kept after one pass, and a scan
        // (whose pages SQLite asks for once) still cannot push out what is read twice.
        let options = quick_cache::OptionsBuilder::new()
            .shards(4)
            .estimated_items_capacity(items)
            .weight_capacity(capacity)
            .hot_allocation(0.5)
            .ghost_allocation(0.5)
            .build();
        let inner = match options {
            Ok(options) => {
                Quick::with_options(options, ByBytes, Default::default(), Default::default())
            }
            Err(_) => Quick::with_weighter(items, capacity, ByBytes),
        };
        Self {
            inner,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub(crate) fn page(&self, segment: &SegmentId, position: u32) -> Option<Bytes> {
        let found = match self.inner.get(&Key::Page(segment.clone(), position)) {
            Some(Value::Page(page)) => Some(page),
            _ => None,
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps a page. It is copied out of the buffer it came in, so that an entry holds
    /// its own bytes and not a whole batch's buffer alive.
    pub(crate) fn put_page(&self, segment: &SegmentId, position: u32, page: &[u8]) -> Bytes {
        let page = Bytes::copy_from_slice(page);
        self.inner.insert(
            Key::Page(segment.clone(), position),
            Value::Page(page.clone()),
        );
        page
    }

    pub(crate) fn index(&self, segment: &SegmentId) -> Option<Arc<PageIndex>> {
        match self.inner.get(&Key::Index(segment.clone())) {
            Some(Value::Index(index)) => Some(index),
            _ => None,
        }
    }

    pub(crate) fn put_index(&self, segment: &SegmentId, index: Arc<PageIndex>) {
        self.inner
            .insert(Key::Index(segment.clone()), Value::Index(index));
    }

    /// What the cache holds and how it has been used.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            bytes: self.inner.weight(),
            capacity: self.inner.capacity(),
            entries: self.inner.len() as u64,
            page_hits: self.hits.load(Ordering::Relaxed),
            page_misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// The VFS cache's size and use ([`crate::vfs::cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes held, entries' overhead included.
    pub bytes: u64,
    /// The most it holds.
    pub capacity: u64,
    /// Pages and indexes held.
    pub entries: u64,
    /// Page reads the cache answered.
    pub page_hits: u64,
    /// Page reads that went to the store.
    pub page_misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(n: u64) -> SegmentId {
        SegmentId {
            store: 1,
            ns: NamespaceName::new("app").unwrap(),
            key: SegmentKey {
                start_frame_no: n,
                end_frame_no: n,
                timestamp: 0,
            },
        }
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = Cache::new(1 << 20);
        let page = vec![7u8; 4096];
        for n in 1..2_000u64 {
            cache.put_page(&segment(n), 0, &page);
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 1 << 20, "{stats:?}");
        assert!(stats.entries < 2_000 && stats.entries > 100, "{stats:?}");
        let kept = (1..2_000u64)
            .filter(|&n| cache.page(&segment(n), 0).is_some())
            .count();
        assert_eq!(kept as u64, cache.stats().entries);
    }

    #[test]
    fn a_cached_page_holds_only_its_own_bytes() {
        let cache = Cache::new(1 << 20);
        let batch = Bytes::from(vec![1u8; 1 << 16]);
        let page = cache.put_page(&segment(1), 0, &batch[..4096]);
        assert_eq!(page.len(), 4096);
        assert_ne!(page.as_ptr(), batch.as_ptr());
    }
}

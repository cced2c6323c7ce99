//! How an [`ObjectStorage`] shapes its requests: when a segment is uploaded in parts, how
//! large the parts are, and how many requests it keeps in flight. None of this changes
//! what is stored, only how fast.

use super::ObjectStorage;

/// Segments larger than this upload in parts. A single PUT of a large object is one long
/// request that restarts from zero after any failure and moves at one connection's
/// speed; parts upload side by side. Below this size one PUT is quicker.
pub(super) const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 << 20;
/// The size of each part but the last. S3 and GCS refuse parts under 5 MiB (but the
/// last).
pub(super) const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts of one segment in flight at once.
pub(super) const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Reads in flight at once for one batch of a restore (segments' frames or indexes).
pub(super) const DEFAULT_READ_CONCURRENCY: usize = 8;
/// Reads longer than this are split into ranged reads of about this size, read side by
/// side: one HTTP stream moves far less than several.
pub(super) const DEFAULT_READ_PART_SIZE: u64 = 4 << 20;

/// The request settings of one handle; see the `with_*` methods of [`ObjectStorage`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub multipart_threshold: u64,
    pub part_size: usize,
    pub upload_concurrency: usize,
    pub read_concurrency: usize,
    pub read_part_size: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            read_concurrency: DEFAULT_READ_CONCURRENCY,
            read_part_size: DEFAULT_READ_PART_SIZE,
        }
    }
}

impl ObjectStorage {
    /// Segments larger than `bytes` are uploaded in parts (a multipart upload) instead of
    /// one PUT. Default 16 MiB.
    ///
    /// Settings belong to this handle and the clones made from it afterwards; clones
    /// made before keep theirs (all share one writer identity).
    pub fn with_multipart_threshold(mut self, bytes: u64) -> Self {
        self.tuning.multipart_threshold = bytes;
        self
    }

    /// The size of each part of a multipart upload but the last (at least 1 byte).
    /// Default 8 MiB. S3 and GCS refuse parts smaller than 5 MiB; local and in-memory
    /// stores take any size.
    pub fn with_multipart_part_size(mut self, bytes: usize) -> Self {
        self.tuning.part_size = bytes.max(1);
        self
    }

    /// How many parts of one segment upload at once (at least 1). Default 4.
    pub fn with_upload_concurrency(mut self, parts: usize) -> Self {
        self.tuning.upload_concurrency = parts.max(1);
        self
    }

    /// How many ranged reads one call keeps in flight (at least 1): a restore batch's
    /// frames across its segments, its page indexes, the parts of one large segment.
    /// Default 8. Results come back in the order asked whatever this is.
    pub fn with_read_concurrency(mut self, requests: usize) -> Self {
        self.tuning.read_concurrency = requests.max(1);
        self
    }

    /// Reads of more than `bytes` (a long run of frames, a whole large segment) are
    /// split into ranged reads of about this size, read side by side (at least 1 byte).
    /// Default 4 MiB. Nearby frames of one segment are read in one request up to this
    /// size. Larger parts make fewer requests (a restore of 1 GiB of whole segments is
    /// about 256 GETs at the default); smaller ones more transfers at once.
    pub fn with_read_part_size(mut self, bytes: u64) -> Self {
        self.tuning.read_part_size = bytes.max(1);
        self
    }
}

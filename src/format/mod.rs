//! The format layer: synchronous. Names, keys, frames, the segment builder, the encoded
//! segment and its page index. Nothing here does I/O beyond byte slices, except the
//! spill file a builder past its memory threshold writes its frames to (`spill`).

mod builder;
mod commits;
mod index;
mod key;
pub(crate) mod layout;
pub(crate) mod lineage;
mod name;
mod segment;
pub(crate) mod spill;

pub(crate) use builder::timestamp_ms;
pub use builder::SegmentBuilder;
pub(crate) use commits::commits_range;
pub use commits::CommitTable;
pub use index::{PageIndex, PageIndexIter};
pub use key::SegmentKey;
pub(crate) use layout::{Header, FRAME_HEADER_LEN, HEADER_LEN};
pub use lineage::{page_hash, PageSums, CHECKSUM_FLAG};
pub use name::NamespaceName;
pub(crate) use segment::{index_range, ms_to_datetime, parse_index_with_crc, verify_frame};
pub use segment::{Commit, Frame, FrameRef, SealedSegment};

#[cfg(test)]
mod tests;

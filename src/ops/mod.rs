//! Operations over any [`Storage`](crate::Storage): compaction, retention and fork.

mod compact;
mod merge;
mod retain;

pub use compact::{compact, plan_compaction, CompactionPolicy, CompactionReport, Merge};
pub use retain::{apply_retention, RetentionReport};

//! Operations over any [`Storage`](crate::Storage): compaction, retention, fork,
//! verification of a whole history and the list of its commits, and their background
//! schedule beside a writer.

mod background;
mod compact;
mod history;
mod merge;
mod retain;
mod verify;

pub use background::{
    Maintainer, MaintainerHandle, MaintenanceConfig, Schedule, Task, TaskReport, Tier,
};
pub use compact::{compact, plan_compaction, CompactionPolicy, CompactionReport, Merge};
pub use history::{commit_log, CommitEntry};
pub use retain::{apply_retention, RetentionReport};
pub use verify::{verify_history, VerifyReport};

//! Operations over any [`Storage`](crate::Storage): compaction, retention, fork and
//! verification of a whole history, and their background schedule beside a writer.

mod background;
mod compact;
mod merge;
mod retain;
mod verify;

pub use background::{
    Maintainer, MaintainerHandle, MaintenanceConfig, Schedule, Task, TaskReport, Tier,
};
pub use compact::{compact, plan_compaction, CompactionPolicy, CompactionReport, Merge};
pub use retain::{apply_retention, RetentionReport};
pub use verify::{verify_history, VerifyReport};

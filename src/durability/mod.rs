//! The durability layer: frame numbers that are never reused, and the watermarks that
//! tell callers when their frames are applied, written and durable.

mod allocator;
mod scheduler;
mod tracker;

pub use allocator::{FrameAllocator, DEFAULT_BLOCK_SIZE};
pub use scheduler::{SchedulerConfig, ShutdownReport, StoreScheduler};
pub use tracker::{Durability, DurabilityTracker, DurableStream};

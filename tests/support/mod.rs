//! `ObjectStore` wrappers for tests and benches: one counts requests, one injects
//! faults. Shared with `benches/object.rs` through `#[path]`.

pub mod counting;
pub mod faulty;

//! Setup shared by the benchmarks (each bench is its own crate and includes this module).

#![allow(dead_code)]

/// The runtime every benchmark drives its async work on: two workers, like the machine
/// the figures in the README come from.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A scratch directory under the target directory: on the disk being measured, not a
/// tmpfs, and cleaned up on drop.
pub fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

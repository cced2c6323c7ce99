//! The memory budget: how much heap walvault's data buffers may take at once, whatever
//! the size of the database or the length of its history.
//!
//! Every path that moves pages (a snapshot, incremental shipping, restore from any
//! backend, `follow`, compaction, the retention base, a fork's cut) sizes its buffers
//! from this one number: a segment past a share of it is built in a spill file
//! (`format::spill`), reads and uploads go in chunks that fit, and the number of reads in
//! flight is what fits. Bookkeeping that grows with the database (a bit or a few bytes
//! per page, and a segment's page index) comes on top; it is about 0.3 % of the
//! database at 4 KiB pages.
//!
//! It is process-wide because every layer reads it and a daemon runs one budget; the CLI
//! sets it from `--memory-budget`. The default is [`DEFAULT_MEMORY_BUDGET`].

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{InvalidInput, Result};

/// The default budget: 64 MiB.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 << 20;
/// The smallest budget accepted: 1 MiB (a few pages at the largest page size).
pub const MIN_MEMORY_BUDGET: usize = 1 << 20;

static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_MEMORY_BUDGET);

/// The current budget in bytes.
pub fn memory_budget() -> usize {
    BUDGET.load(Ordering::Relaxed)
}

/// Sets the budget for every later operation of this process. Below
/// [`MIN_MEMORY_BUDGET`] is an error.
pub fn set_memory_budget(bytes: usize) -> Result<()> {
    if bytes < MIN_MEMORY_BUDGET {
        return Err(InvalidInput::Config(format!(
            "memory budget of {bytes} bytes is below the minimum of {MIN_MEMORY_BUDGET}"
        ))
        .into());
    }
    BUDGET.store(bytes, Ordering::Relaxed);
    Ok(())
}

/// The smallest buffer a share is: one frame of the largest page size fits.
const MIN_SHARE: usize = 64 << 10;

/// A share of the budget: `1/parts` of it, at least 64 KiB. The shares a path holds at
/// once add up to at most the budget (each site says which part it takes).
pub(crate) fn share(parts: usize) -> usize {
    (memory_budget() / parts.max(1)).max(MIN_SHARE)
}

//! Runs the conformance suite against every backend.

mod conformance;

use conformance::Backend;
use walvault::{LocalStorage, MemoryStorage};

struct Memory(MemoryStorage);

impl Backend for Memory {
    type S = MemoryStorage;
    /// A memory store lives as long as a handle does: "reopening" is a new handle on the
    /// data the harness keeps, so `reopen_after_drop` checks that dropping one handle
    /// loses nothing.
    fn open(&self) -> MemoryStorage {
        self.0.clone()
    }
}

struct Local(tempfile::TempDir);

impl Backend for Local {
    type S = LocalStorage;
    fn open(&self) -> LocalStorage {
        LocalStorage::open(self.0.path()).unwrap()
    }
}

fn memory() -> Memory {
    Memory(MemoryStorage::new())
}

fn local() -> Local {
    Local(tempfile::tempdir().unwrap())
}

macro_rules! suite {
    ($backend:ident: $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::conformance::$check(&super::$backend()).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($check:ident),* $(,)?) => {
        suite!(memory: $($check),*);
        suite!(local: $($check),*);
    };
}

every_backend!(
    compaction_keeps_every_commit,
    replace_checks_its_inputs,
    gc_waits_for_grace_then_deletes,
    retention_keeps_the_window,
    fork_shares_history_and_diverges,
    a_fork_compacting_inherited_segments_keeps_its_readers,
    store_fetch_round_trip,
    callbacks_report_durable_in_order,
    lookups_at_every_boundary,
    listing_is_newest_first_and_bounded,
    long_listings_page_through_the_catalog,
    out_of_order_is_rejected_and_restore_is_idempotent,
    namespaces_are_isolated,
    unknown_namespaces_are_empty,
    concurrent_stores,
    restore_matches_a_replay,
    reopen_after_drop,
    shutdown_refuses_new_work,
    lineage_is_checked_on_store_restore_and_verify,
);

#[tokio::test]
async fn the_whole_suite_runs_in_sequence_on_one_store() {
    conformance::run_all(&local()).await;
}

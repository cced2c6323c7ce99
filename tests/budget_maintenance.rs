//! Compaction and a fork's cut under a memory budget smaller than their inputs and
//! outputs (1 MiB, process-wide, hence a test binary of its own): inputs are read a run
//! of frames at a time and outputs are built in spill files, and every commit restores
//! exactly as before.

mod conformance;

use conformance::{check_commits, ns, replay_model, segment, store};
use walvault::{
    compact, CompactionPolicy, LocalStorage, MemoryStorage, RestoreOptions, SealedSegment, Storage,
};

/// A 1.6 MiB first segment (3000 frames of 512-byte pages, larger than the budget and
/// than one run of frames), then seven of about 215 KiB: 580 commits over 700 pages.
fn history() -> Vec<SealedSegment> {
    walvault::set_memory_budget(1 << 20).unwrap();
    let mut out = vec![segment(1, 3000, 10, 700, 1_000)];
    for i in 0..7u64 {
        out.push(segment(
            3001 + i * 400,
            400,
            10,
            700,
            100_000 + i as i64 * 1_000,
        ));
    }
    out
}

/// Every 13th commit, and the last.
fn sampled(c: &walvault::Commit) -> bool {
    c.frame_no.is_multiple_of(130) || c.frame_no == 5800
}

async fn compaction_restores_every_commit_as_before<S: Storage>(s: &S) {
    let name = ns("budget");
    let history = history();
    for seg in history.clone() {
        store(s, &name, seg).await.unwrap();
    }
    let policy = CompactionPolicy {
        max_small: 1, // merge the whole history into one segment
        ..CompactionPolicy::default()
    };
    let report = compact(s, &name, &policy, false).await.unwrap();
    assert_eq!(report.merges.len(), 1, "{report:?}");
    assert!(report.merges[0].output_bytes > 2 << 20, "{report:?}");
    assert_eq!(report.segments_after, 1);
    check_commits(s, &name, &history, sampled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_compaction_in_a_small_budget_restores_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(dir.path().join("store")).unwrap();
    compaction_restores_every_commit_as_before(&s).await;
    let leftovers: Vec<_> = std::fs::read_dir(s.spill_dir(&ns("budget"), None))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".spill-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_compaction_in_a_small_budget_restores_every_commit() {
    compaction_restores_every_commit_as_before(&MemoryStorage::new()).await;
}

/// A fork at a commit inside the large first segment: the cut (about 1.2 MiB) is read
/// in runs and built in a spill file; the fork restores to the source's state there.
/// Every source segment's trailer is damaged first, so that fetching one whole fails:
/// the fork finds its target from commit tables and reads frames only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_cut_in_a_small_budget_restores_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(dir.path().join("store")).unwrap();
    let (source, target) = (ns("source"), ns("fork"));
    let history = history();
    for seg in history.clone() {
        store(&s, &source, seg).await.unwrap();
    }
    for seg in &history {
        let path = dir
            .path()
            .join("store/source")
            .join(format!("{}.seg", seg.key()));
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let whole = s.fetch_segment_data(&source, &seg.key(), None).await;
        assert!(whole.is_err(), "the damage makes a whole fetch fail");
    }
    let report = s
        .fork(&source, &target, RestoreOptions::FrameNo(2300), None)
        .await
        .unwrap();
    assert_eq!(report.frame_no, 2300);
    assert!(report.copied.is_some(), "{report:?}");
    let mut out = std::io::Cursor::new(Vec::new());
    s.restore(&target, RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert!(out.into_inner() == replay_model(&history, 2300));
}

//! Compaction, retention and garbage collection, on every backend.

use std::io::Cursor;
use std::time::Duration;

use walvault::{
    apply_retention, compact, CompactionPolicy, GcOptions, RestoreOptions, SealedSegment,
    SegmentBuilder, Storage,
};

use super::{at, list, ns, replay_model, segment, store, Backend, PAGE};

/// 24 segments of 4 frames and 2 commits each over a 6-page database; segment `i`
/// commits at `1000 + 10i` and `1001 + 10i` ms.
pub fn small_history() -> Vec<SealedSegment> {
    (0..24)
        .map(|i| segment(1 + 4 * i as u64, 4, 2, 6, 1_000 + 10 * i))
        .collect()
}

/// A small policy, so that a few small segments already merge.
pub fn small_policy() -> CompactionPolicy {
    CompactionPolicy {
        target_size: 1 << 20,
        fan_in: 4,
        max_small: 2,
        ..CompactionPolicy::default()
    }
}

/// Restores each of `commits` by frame number and by time and compares it with a
/// replay of `segments` (the original history).
pub async fn check_commits<S: Storage>(
    s: &S,
    name: &walvault::NamespaceName,
    segments: &[SealedSegment],
    keep: impl Fn(&walvault::Commit) -> bool,
) {
    let commits = segments.iter().flat_map(|s| s.commits().to_vec());
    for commit in commits.filter(|c| keep(c)) {
        for options in [
            RestoreOptions::FrameNo(commit.frame_no),
            RestoreOptions::Timestamp(commit.timestamp()),
        ] {
            let mut out = Cursor::new(Vec::new());
            let summary = s.restore(name, options, &mut out, None).await.unwrap();
            assert_eq!(summary.frame_no, commit.frame_no, "{options:?}");
            let expected = replay_model(segments, commit.frame_no);
            assert!(out.into_inner() == expected, "{options:?} differs");
        }
    }
}

/// One dense segment holding every frame of `segments`, for hand-made edits.
pub fn concat(segments: &[SealedSegment]) -> SealedSegment {
    let mut b = SegmentBuilder::new(segments[0].start_frame_no(), PAGE as u32).unwrap();
    for seg in segments {
        b.skip_to(seg.start_frame_no()).unwrap();
        let mut commits = seg.commits().iter();
        for f in seg.frames() {
            if f.is_commit() {
                let c = commits.next().unwrap();
                b.append_commit(f.page_no, f.data, f.size_after, c.timestamp())
                    .unwrap();
            } else {
                b.append_frame(f.page_no, f.data).unwrap();
            }
        }
    }
    b.seal(at(9_999)).unwrap()
}

pub async fn compaction_keeps_every_commit<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("compact");
    let history = small_history();
    for seg in history.clone() {
        store(&s, &name, seg).await.unwrap();
    }
    let dry = compact(&s, &name, &small_policy(), true).await.unwrap();
    assert!(!dry.merges.is_empty());
    assert_eq!(
        list(&s, &name, 0).await.len(),
        24,
        "a dry run changes nothing"
    );
    let report = compact(&s, &name, &small_policy(), false).await.unwrap();
    assert_eq!(report.merges.len(), dry.merges.len());
    let after = list(&s, &name, 0).await;
    assert_eq!(after.len(), report.segments_after);
    assert!(
        after.len() <= 4,
        "{} segments after compaction",
        after.len()
    );
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 96);
    check_commits(&s, &name, &history, |_| true).await;
    // Readers that planned before the edit can still read an input.
    let input = report.merges[0].inputs[0];
    s.fetch_segment_data(&name, &input, None).await.unwrap();
    // Another handle sees the compacted catalog, and the writer goes on.
    let other = b.open();
    other.refresh(&name, None).await.unwrap();
    assert_eq!(list(&other, &name, 0).await, after);
    store(&s, &name, segment(97, 4, 2, 6, 2_000)).await.unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 100);
}

pub async fn replace_checks_its_inputs<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("replace-rules");
    let history = small_history();
    for seg in history[..4].iter().cloned() {
        store(&s, &name, seg).await.unwrap();
    }
    let keys: Vec<_> = history[..4].iter().map(SealedSegment::key).collect();
    let first_two = concat(&history[..2]);
    let refused = [
        (vec![keys[0], keys[2]], first_two.clone()), // not consecutive
        (vec![keys[1], keys[2]], first_two.clone()), // does not cover them
        (vec![keys[0]], history[0].clone()),         // replaces itself
    ];
    for (inputs, output) in refused {
        let err = s
            .replace_segments(&name, &inputs, output, None)
            .await
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
    }
    assert_eq!(
        list(&s, &name, 0).await.len(),
        4,
        "refused edits change nothing"
    );
    s.replace_segments(&name, &keys[..2], first_two.clone(), None)
        .await
        .unwrap();
    assert_eq!(list(&s, &name, 0).await.len(), 3);
    let err = s
        .replace_segments(&name, &keys[..2], first_two, None)
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "inputs already replaced: {err}");
    check_commits(&s, &name, &history[..4], |_| true).await;
}

pub async fn gc_waits_for_grace_then_deletes<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("gc");
    let history = small_history();
    for seg in history.clone() {
        store(&s, &name, seg).await.unwrap();
    }
    let report = compact(&s, &name, &small_policy(), false).await.unwrap();
    let inputs: Vec<_> = report
        .merges
        .iter()
        .flat_map(|m| m.inputs.clone())
        .collect();
    let hour = GcOptions {
        grace: Duration::from_secs(3600),
        dry_run: false,
    };
    let waiting = s.collect_garbage(&name, hour, None).await.unwrap();
    assert!(waiting.deleted.is_empty() && waiting.orphans.is_empty());
    assert_eq!(waiting.waiting, inputs.len());
    let now = GcOptions {
        grace: Duration::ZERO,
        dry_run: true,
    };
    let dry = s.collect_garbage(&name, now, None).await.unwrap();
    let mut expected = inputs.clone();
    expected.sort_unstable();
    assert_eq!(dry.deleted, expected);
    s.fetch_segment_data(&name, &inputs[0], None).await.unwrap();
    let done = s
        .collect_garbage(
            &name,
            GcOptions {
                dry_run: false,
                ..now
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(done.deleted, expected);
    assert!(done.orphans.is_empty());
    let gone = s
        .fetch_segment_data(&name, &inputs[0], None)
        .await
        .unwrap_err();
    assert!(gone.is_not_found(), "{gone}");
    check_commits(&s, &name, &history, |_| true).await;
    let again = s
        .collect_garbage(
            &name,
            GcOptions {
                dry_run: false,
                ..now
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(again, walvault::GcReport::default());
}

pub async fn retention_keeps_the_window<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("retain");
    let history = small_history();
    for seg in history.clone() {
        store(&s, &name, seg).await.unwrap();
    }
    // The cutoff falls between segment 8's two commits (1080 and 1081 ms).
    let cutoff = at(1_080);
    let window = Duration::from_secs(60);
    let now = cutoff + chrono::Duration::seconds(60);
    let report = apply_retention(&s, &name, window, now, false)
        .await
        .unwrap();
    assert_eq!(report.cutoff, cutoff);
    let merge = report.merge.expect("history before the window was dropped");
    assert_eq!(merge.inputs.len(), 9);
    let base = history[8].commits()[0];
    check_commits(&s, &name, &history, |c| c.timestamp_ms >= base.timestamp_ms).await;
    let before = s
        .restore(
            &name,
            RestoreOptions::Timestamp(at(1_079)),
            &mut Cursor::new(Vec::new()),
            None,
        )
        .await
        .unwrap_err();
    assert!(before.is_not_found(), "{before}");
    // Nothing more to drop at the same moment.
    let again = apply_retention(&s, &name, window, now, false)
        .await
        .unwrap();
    assert!(again.merge.is_none(), "{again:?}");
    let collected = s
        .collect_garbage(
            &name,
            GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(collected.deleted.len(), 9);
    check_commits(&s, &name, &history, |c| c.timestamp_ms >= base.timestamp_ms).await;
}

/// Restores the latest state of `name` and compares it with a replay of `segments`.
async fn latest_is<S: Storage>(s: &S, name: &walvault::NamespaceName, segments: &[SealedSegment]) {
    let mut out = Cursor::new(Vec::new());
    let summary = s
        .restore(name, RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert!(
        out.into_inner() == replay_model(segments, summary.frame_no),
        "latest of {name} differs"
    );
}

pub async fn fork_shares_history_and_diverges<B: Backend>(b: &B) {
    let s = b.open();
    let (src, dst) = (ns("fork-src"), ns("fork-dst"));
    let history = small_history();
    for seg in history.clone() {
        store(&s, &src, seg).await.unwrap();
    }
    // Frame 42 is the first of segment 10's two commits: that segment is cut.
    let report = s
        .fork(&src, &dst, RestoreOptions::FrameNo(43), None)
        .await
        .unwrap();
    assert_eq!(
        (report.frame_no, report.inherited, report.floor),
        (42, 10, 96)
    );
    let copied = report.copied.expect("the commit is inside a segment");
    assert_eq!((copied.start_frame_no, copied.end_frame_no), (41, 42));
    let cut = s.fetch_segment_data(&dst, &copied, None).await.unwrap();
    let mut base: Vec<SealedSegment> = history[..10].to_vec();
    base.push(cut);
    latest_is(&s, &dst, &base).await;
    check_commits(&s, &dst, &base, |_| true).await;
    assert_eq!(s.durable_frame_no(&dst, None).await.unwrap(), 96);
    // The fork's own frames start above the source's high-water mark.
    let early = s.store(
        &dst,
        segment(50, 2, 2, 6, 5_000),
        None,
        walvault::on_store(|_| async {}),
    );
    assert!(early.await.unwrap_err().is_invalid_input());
    let mine = super::frames(97, 5_000, &[(1, 0), (2, 6)]);
    store(&s, &dst, mine.clone()).await.unwrap();
    base.push(mine);
    latest_is(&s, &dst, &base).await;
    // The source goes on, unaffected.
    let mut src_history = history.clone();
    src_history.push(segment(97, 4, 2, 6, 5_000));
    store(&s, &src, src_history[24].clone()).await.unwrap();
    latest_is(&s, &src, &src_history).await;
    // A fork of the fork reads from both.
    let dst2 = ns("fork-dst2");
    let second = s
        .fork(&dst, &dst2, RestoreOptions::Latest, None)
        .await
        .unwrap();
    assert_eq!(
        (second.frame_no, second.inherited, second.copied),
        (98, 12, None)
    );
    latest_is(&s, &dst2, &base).await;
    // The source's garbage collection keeps what the forks name.
    compact(&s, &src, &small_policy(), false).await.unwrap();
    let no_grace = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let gc = s.collect_garbage(&src, no_grace, None).await.unwrap();
    assert_eq!(gc.kept_for_forks, 10, "{gc:?}");
    // Another handle sees the lineage.
    let other = b.open();
    other.refresh(&dst2, None).await.unwrap();
    latest_is(&other, &dst2, &base).await;
    latest_is(&other, &dst, &base).await;
    // Refused: into an existing namespace, into itself, from nothing.
    for (from, to) in [
        (&src, &dst),
        (&src, &src),
        (&ns("fork-nobody"), &ns("fork-x")),
    ] {
        let err = s
            .fork(from, to, RestoreOptions::Latest, None)
            .await
            .unwrap_err();
        assert!(err.is_invalid_input() || err.is_not_found(), "{err}");
    }
}

/// A fork that compacts the segments it inherited: its readers that planned before still
/// read them, and the source's collection keeps them until the fork's own collection
/// forgets its retired record.
pub async fn a_fork_compacting_inherited_segments_keeps_its_readers<B: Backend>(b: &B) {
    let s = b.open();
    let (src, dst) = (ns("inherit-src"), ns("inherit-dst"));
    let history = small_history();
    for seg in history.clone() {
        store(&s, &src, seg).await.unwrap();
    }
    s.fork(&src, &dst, RestoreOptions::Latest, None)
        .await
        .unwrap();
    let inherited = history[0].key();
    let report = compact(&s, &dst, &small_policy(), false).await.unwrap();
    assert!(report.merges.iter().any(|m| m.inputs.contains(&inherited)));
    // A reader that planned before the compaction still reads the inherited segment.
    s.fetch_segment_data(&dst, &inherited, None).await.unwrap();
    compact(&s, &src, &small_policy(), false).await.unwrap();
    let no_grace = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let gc = s.collect_garbage(&src, no_grace, None).await.unwrap();
    assert!(gc.kept_for_forks > 0, "{gc:?}");
    assert!(
        !gc.orphans.contains(&inherited) && !gc.deleted.contains(&inherited),
        "{gc:?}"
    );
    s.fetch_segment_data(&dst, &inherited, None).await.unwrap();
    latest_is(&s, &dst, &history).await;
    // Once the fork's collection forgets it, the source lets it go.
    s.collect_garbage(&dst, no_grace, None).await.unwrap();
    s.collect_garbage(&src, no_grace, None).await.unwrap();
    latest_is(&s, &dst, &history).await;
    latest_is(&s, &src, &history).await;
}

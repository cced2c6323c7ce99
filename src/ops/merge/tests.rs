use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use crate::storage::{on_store, MemoryStorage};

const PAGE: u32 = 512;

/// A transaction: pages written (page number, fill byte), the size after, the time (ms).
type Txn = (Vec<(u32, u8)>, u32, u64);

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE as usize]
}

/// Stores `txns` as segments of `per_segment` transactions; returns the keys.
async fn store(
    storage: &MemoryStorage,
    ns: &NamespaceName,
    txns: &[Txn],
    per_segment: usize,
) -> Vec<SegmentKey> {
    let mut keys = Vec::new();
    let mut next = 1;
    for chunk in txns.chunks(per_segment) {
        let mut b = SegmentBuilder::new(next, PAGE).unwrap();
        for (pages, size, ts) in chunk {
            let at = Utc.timestamp_millis_opt(*ts as i64).unwrap();
            let (last, rest) = pages.split_last().unwrap();
            for &(p, fill) in rest {
                b.append_frame(p, &page(fill)).unwrap();
            }
            b.append_commit(last.0, &page(last.1), *size, at).unwrap();
        }
        let segment = b.seal(ms_to_datetime(1_000)).unwrap();
        next = segment.end_frame_no() + 1;
        keys.push(segment.key());
        storage
            .store(ns, segment, None, on_store(|_| async {}))
            .await
            .unwrap();
    }
    keys
}

/// What a restore of the unmerged log gives after each commit, by frame number: the
/// newest version of each page so far, cut to the commit's size.
fn states(txns: &[Txn]) -> Vec<(u64, u64, BTreeMap<u32, u8>)> {
    let mut db = BTreeMap::new();
    let mut frame_no = 0;
    let mut out = Vec::new();
    for (pages, size, ts) in txns {
        for &(p, fill) in pages {
            db.insert(p, fill);
            frame_no += 1;
        }
        let mut cut = db.clone();
        cut.retain(|p, _| p <= size);
        out.push((frame_no, *ts, cut));
    }
    out
}

/// The database a segment restores to at `commit`: newest frame of each page at or
/// before it, cut to the commit's size.
fn restore_from(segment: &SealedSegment, commit: &Commit) -> BTreeMap<u32, u8> {
    let mut db = BTreeMap::new();
    for f in segment.frames().filter(|f| f.frame_no <= commit.frame_no) {
        db.insert(f.page_no, f.data[0]);
    }
    db.retain(|p, _| *p <= commit.size_after);
    db
}

fn txns() -> impl Strategy<Value = Vec<Txn>> {
    let txn = (
        prop::collection::vec((1u32..12, any::<u8>()), 1..5),
        1u32..14,
        0u64..3_000,
    );
    prop::collection::vec(txn, 1..40).prop_map(|mut v| {
        let mut ts = 1_000_000;
        for (pages, size, step) in &mut v {
            ts += *step;
            *step = ts;
            *size = (*size).max(pages.iter().map(|p| p.0).max().unwrap_or(1));
        }
        v
    })
}

fn check(txns: &[Txn], per_segment: usize, retain: Retain) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let storage = MemoryStorage::new();
        let ns = NamespaceName::new("merge").unwrap();
        let keys = store(&storage, &ns, txns, per_segment).await;
        let merged = merge(&storage, &ns, &keys, retain, &None).await.unwrap();
        let again = SealedSegment::decode(merged.encoded().clone()).unwrap();
        prop_assert_eq!(again.key(), merged.key());
        prop_assert_eq!(merged.start_frame_no(), keys[0].start_frame_no);
        prop_assert_eq!(merged.end_frame_no(), keys.last().unwrap().end_frame_no);
        let all = states(txns);
        prop_assert_eq!(
            merged.last_commit_timestamp().timestamp_millis() as u64,
            all.last().unwrap().1
        );
        if retain.keep_first {
            prop_assert_eq!(merged.key().timestamp, keys[0].timestamp);
        }
        // Every retained commit restores exactly; the retained ones are the rule's.
        let by_frame: BTreeMap<u64, &(u64, u64, BTreeMap<u32, u8>)> =
            all.iter().map(|s| (s.0, s)).collect();
        for c in merged.commits() {
            let original = by_frame
                .get(&c.frame_no)
                .expect("a retained commit was a commit");
            prop_assert_eq!(original.1, c.timestamp_ms);
            prop_assert_eq!(&restore_from(&merged, c), &original.2);
        }
        let expected: Vec<u64> = all
            .iter()
            .enumerate()
            .filter(|(i, s)| retain.keeps(s.1, all.get(i + 1).map(|n| n.1), *i == 0))
            .map(|(_, s)| s.0)
            .collect();
        let got: Vec<u64> = merged.commits().iter().map(|c| c.frame_no).collect();
        prop_assert_eq!(got, expected);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_commit_kept_restores_every_commit(txns in txns(), per in 1usize..6) {
        check(&txns, per, Retain { precision_ms: 0, keep_first: true, cutoff_ms: None })?;
    }

    #[test]
    fn windows_keep_their_last_commit(txns in txns(), per in 1usize..6, window in 1u64..5_000, first in any::<bool>()) {
        check(&txns, per, Retain { precision_ms: window, keep_first: first, cutoff_ms: None })?;
    }

    #[test]
    fn a_cutoff_keeps_the_last_commit_before_it_and_all_after(txns in txns(), per in 1usize..6, back in 0u64..60_000) {
        let cutoff = 1_000_000 + back;
        check(&txns, per, Retain { precision_ms: 0, keep_first: false, cutoff_ms: Some(cutoff) })?;
    }

    #[test]
    fn last_only_is_the_final_state(txns in txns(), per in 1usize..6) {
        check(&txns, per, Retain { precision_ms: u64::MAX, keep_first: false, cutoff_ms: None })?;
    }
}

#[tokio::test]
async fn overwritten_versions_are_dropped_and_the_segment_is_sparse() {
    let storage = MemoryStorage::new();
    let ns = NamespaceName::new("sparse").unwrap();
    let txns: Vec<Txn> = (0..10)
        .map(|i| (vec![(1, i), (2, i)], 2, 1_000 + u64::from(i)))
        .collect();
    let keys = store(&storage, &ns, &txns, 2).await;
    let last_only = Retain {
        precision_ms: u64::MAX,
        keep_first: false,
        cutoff_ms: None,
    };
    let merged = merge(&storage, &ns, &keys, last_only, &None).await.unwrap();
    assert_eq!(merged.frame_count(), 2);
    assert!(merged.is_sparse());
    assert_eq!(merged.read_page(1).unwrap().data[0], 9);
    assert_eq!((merged.start_frame_no(), merged.end_frame_no()), (1, 20));
    assert_eq!(merged.position_of(20), Some(1));
    assert_eq!(merged.position_of(3), None);
}

#[tokio::test]
async fn different_page_sizes_are_refused() {
    let storage = MemoryStorage::new();
    let ns = NamespaceName::new("sizes").unwrap();
    let at = Utc.timestamp_millis_opt(1_000).unwrap();
    let mut keys = Vec::new();
    for (start, size) in [(1u64, 512u32), (2, 1024)] {
        let mut b = SegmentBuilder::new(start, size).unwrap();
        b.append_commit(1, &vec![1; size as usize], 1, at).unwrap();
        let s = b.seal(at).unwrap();
        keys.push(s.key());
        storage
            .store(&ns, s, None, on_store(|_| async {}))
            .await
            .unwrap();
    }
    let err = merge(
        &storage,
        &ns,
        &keys,
        Retain {
            precision_ms: 0,
            keep_first: true,
            cutoff_ms: None,
        },
        &None,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("different page sizes"), "{err}");
}

//! Lineage checks every backend must keep: a segment is stored only if it builds on the
//! namespace's latest state (or starts a new lineage), a restore proves its output
//! against the commit's checksum, and `verify_history` replays the chain.

use walvault::{
    verify_history, NamespaceName, PageSums, RestoreOptions, SealedSegment, SegmentBuilder, Storage,
};

use super::{at, list, ns, store, Backend, PAGE};

/// One transaction: the pages it writes (`page_no`, fill byte) and the size after it.
pub type Txn = (Vec<(u32, u8)>, u32);

/// A segment of `txns` from frame `start` that carries lineage, built on `sums` (which
/// it brings forward). `fresh` starts a new lineage (its first transaction must write the
/// whole database). `lie` records a wrong checksum for the last commit.
pub fn lineage_segment(
    start: u64,
    sums: &mut PageSums,
    txns: &[Txn],
    fresh: bool,
    ts: i64,
    lie: bool,
) -> SealedSegment {
    if fresh {
        *sums = PageSums::new();
    }
    let mut b = SegmentBuilder::new(start, PAGE as u32).unwrap();
    let base = if fresh || sums.db_size() == 0 {
        0
    } else {
        sums.checksum()
    };
    b.start_lineage(base).unwrap();
    for (i, (pages, size)) in txns.iter().enumerate() {
        let data: Vec<(u32, Vec<u8>)> = pages
            .iter()
            .map(|&(p, fill)| (p, vec![fill; PAGE]))
            .collect();
        let refs: Vec<(u32, &[u8])> = data.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let mut sum = sums.apply(&refs, *size).unwrap();
        if lie && i + 1 == txns.len() {
            sum ^= 0x55;
        }
        let (last, rest) = data.split_last().unwrap();
        for (p, d) in rest {
            b.append_frame(*p, d).unwrap();
        }
        b.append_commit_with_checksum(last.0, &last.1, *size, at(ts + i as i64), sum)
            .unwrap();
    }
    b.seal(at(ts + txns.len() as i64)).unwrap()
}

fn whole(size: u32, fill: u8) -> Txn {
    ((1..=size).map(|p| (p, fill)).collect(), size)
}

async fn restored<S: Storage>(s: &S, name: &NamespaceName) -> walvault::Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    s.restore(name, RestoreOptions::Latest, &mut out, None)
        .await?;
    Ok(out.into_inner())
}

pub async fn lineage_is_checked_on_store_restore_and_verify<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("lineage");
    let mut ours = PageSums::new();
    let first = lineage_segment(
        1,
        &mut ours,
        &[whole(3, 1), (vec![(2, 2)], 3)],
        true,
        1_000,
        false,
    );
    store(&s, &name, first).await.unwrap();
    let mut theirs = ours.clone();
    let next = lineage_segment(
        5,
        &mut ours,
        &[(vec![(3, 3), (4, 4)], 4)],
        false,
        2_000,
        false,
    );
    assert_eq!(store(&s, &name, next.clone()).await.unwrap(), 6);

    // A copy of the database that went its own way after the first segment.
    let stray = lineage_segment(7, &mut theirs, &[(vec![(1, 9)], 3)], false, 3_000, false);
    let err = store(&s, &name, stray).await.unwrap_err();
    assert!(err.is_diverged(), "{err}");
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 6);
    assert_eq!(list(&s, &name, 0).await.len(), 2, "nothing was stored");

    // What builds on the latest state goes on; a snapshot goes on whatever came before.
    let on_top = lineage_segment(7, &mut ours, &[(vec![(1, 5)], 4)], false, 3_000, false);
    assert_eq!(store(&s, &name, on_top).await.unwrap(), 7);
    let snapshot = lineage_segment(8, &mut theirs, &[whole(2, 7)], true, 4_000, false);
    assert_eq!(store(&s, &name, snapshot.clone()).await.unwrap(), 9);
    let bytes = restored(&s, &name).await.unwrap();
    assert_eq!(bytes, [vec![7u8; PAGE], vec![7u8; PAGE]].concat());
    let report = verify_history(&s, &name).await.unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!((report.commits_proved, report.commits_unchecked), (5, 0));

    // A namespace with no history takes no segment that builds on something.
    let empty = ns("lineage-empty");
    let err = store(&s, &empty, next).await.unwrap_err();
    assert!(
        err.is_diverged() && err.to_string().contains("no history"),
        "{err}"
    );

    // A commit whose recorded checksum is not what its pages make: stored (its base is
    // right), but a restore to it fails and verify names it.
    let liar = lineage_segment(10, &mut theirs, &[(vec![(1, 8)], 2)], false, 5_000, true);
    store(&s, &name, liar).await.unwrap();
    let err = restored(&s, &name).await.unwrap_err();
    assert!(
        err.is_corrupt() && err.to_string().contains("lineage"),
        "{err}"
    );
    let report = verify_history(&s, &name).await.unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
}

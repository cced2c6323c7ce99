//! One conformance suite for the `Storage` contract, run against every backend.
//!
//! Each backend's test file implements [`Backend`] and calls [`run_all`]-style entry
//! points; the checks themselves are written once, here.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use tokio_stream::StreamExt;
use walvault::{
    CommitTable, FindSegmentReq, NamespaceName, RestoreOptions, SealedSegment, SegmentBuilder,
    SegmentInfo, SegmentKey, Storage,
};

mod lineage;
mod maintain;
#[allow(unused_imports)]
pub use lineage::*;
#[allow(unused_imports)]
pub use maintain::*;

/// How a test opens (and reopens) one backend over the same underlying data.
pub trait Backend {
    type S: Storage;
    fn open(&self) -> Self::S;
}

pub const PAGE: usize = 512;

pub fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

pub fn ns(name: &str) -> NamespaceName {
    NamespaceName::new(name).unwrap()
}

/// Page contents that identify the frame that wrote them.
pub fn page_for(frame_no: u64, page_no: u32) -> Vec<u8> {
    let mut p = vec![(frame_no % 251) as u8; PAGE];
    p[..8].copy_from_slice(&frame_no.to_le_bytes());
    p[8..12].copy_from_slice(&page_no.to_le_bytes());
    p
}

/// A segment of `frames` frames from `start`, one commit every `per_txn` frames (and at
/// the end), writing pages `1..=db_pages` round-robin from frame 1, so a history that
/// starts at frame 1 has written every page of the database at each commit. Commit `i`
/// of the segment has timestamp `ts + i`.
pub fn segment(start: u64, frames: u64, per_txn: u64, db_pages: u32, ts: i64) -> SealedSegment {
    let mut b = SegmentBuilder::new(start, PAGE as u32).unwrap();
    let mut commits = 0;
    for i in 0..frames {
        let frame_no = start + i;
        let page_no = ((frame_no - 1) % u64::from(db_pages)) as u32 + 1;
        let data = page_for(frame_no, page_no);
        if (i + 1) % per_txn == 0 || i + 1 == frames {
            let size = frame_no.min(u64::from(db_pages)) as u32;
            b.append_commit(page_no, &data, size, at(ts + commits))
                .unwrap();
            commits += 1;
        } else {
            b.append_frame(page_no, &data).unwrap();
        }
    }
    b.seal(at(ts + commits)).unwrap()
}

/// A segment from explicit frames: `(page_no, size_after)`, where a non-zero size marks a
/// commit. Commit `i` of the segment has timestamp `ts + i`.
pub fn frames(start: u64, ts: i64, frames: &[(u32, u32)]) -> SealedSegment {
    let mut b = SegmentBuilder::new(start, PAGE as u32).unwrap();
    let mut commits = 0;
    for &(page_no, size) in frames {
        let data = page_for(b.next_frame_no(), page_no);
        if size == 0 {
            b.append_frame(page_no, &data).unwrap();
        } else {
            b.append_commit(page_no, &data, size, at(ts + commits))
                .unwrap();
            commits += 1;
        }
    }
    b.seal(at(ts + commits)).unwrap()
}

/// A database that grows, shrinks (as after `VACUUM`) and grows back, rewriting only some
/// pages each time: a restore that counted pages instead of using `size_after`, or that
/// kept a stale page from before the shrink, would differ from the replay.
pub fn shrinking_history() -> Vec<SealedSegment> {
    vec![
        frames(1, 1_000, &[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 6)]),
        frames(7, 2_000, &[(2, 0), (5, 6), (1, 3)]),
        frames(10, 3_000, &[(4, 0), (3, 4)]),
    ]
}

/// Stores and returns the durable frame number the callback reported.
pub async fn store<S: Storage>(
    s: &S,
    name: &NamespaceName,
    seg: SealedSegment,
) -> walvault::Result<u64> {
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    s.store(
        name,
        seg,
        None,
        Box::new(move |d| Box::pin(async move { *seen2.lock().unwrap() = Some(d) })),
    )
    .await?;
    let reported = seen.lock().unwrap().take();
    Ok(reported.expect("on_store ran before store resolved"))
}

pub async fn list<S: Storage>(s: &S, name: &NamespaceName, until: u64) -> Vec<SegmentInfo> {
    let stream = s.list_segments(name, until, None);
    tokio::pin!(stream);
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item.unwrap());
    }
    out
}

/// Three segments with a gap in frame numbers between the second and third.
pub fn history() -> Vec<SealedSegment> {
    vec![
        segment(1, 10, 3, 4, 1_000), // frames 1..=10, commits at 3,6,9,10, ts 1000..=1003
        segment(11, 10, 5, 6, 2_000), // frames 11..=20, commits at 15,20, ts 2000..=2001
        segment(31, 10, 10, 6, 3_000), // frames 31..=40, one commit, ts 3000
    ]
}

pub async fn store_fetch_round_trip<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("round-trip");
    for seg in history() {
        let end = seg.end_frame_no();
        assert_eq!(store(&s, &name, seg).await.unwrap(), end);
    }
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 40);
    for seg in history() {
        let key = seg.key();
        let fetched = s.fetch_segment_data(&name, &key, None).await.unwrap();
        assert_eq!(fetched.encoded(), seg.encoded());
        let index = s.fetch_segment_index(&name, &key, None).await.unwrap();
        assert_eq!(
            index.iter().collect::<Vec<_>>(),
            seg.index().iter().collect::<Vec<_>>()
        );
        let table = s.fetch_commit_table(&name, &key, None).await.unwrap();
        assert_eq!(table, CommitTable::of(&seg));
        assert_eq!(table.commits(), seg.commits());
    }
    let missing = SegmentKey {
        start_frame_no: 21,
        end_frame_no: 30,
        timestamp: 0,
    };
    assert!(s
        .fetch_segment_data(&name, &missing, None)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .fetch_segment_index(&name, &missing, None)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(s
        .fetch_commit_table(&name, &missing, None)
        .await
        .unwrap_err()
        .is_not_found());
}

pub async fn callbacks_report_durable_in_order<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("callbacks");
    let seen = Arc::new(Mutex::new(Vec::new()));
    for seg in history() {
        let seen = seen.clone();
        s.store(
            &name,
            seg,
            None,
            Box::new(move |d| Box::pin(async move { seen.lock().unwrap().push(d) })),
        )
        .await
        .unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), [10, 20, 40]);
}

/// A model of the lookups: a linear scan over the stored keys.
fn model(keys: &[SegmentKey], req: FindSegmentReq) -> Option<SegmentKey> {
    let newest =
        |it: &mut dyn Iterator<Item = &SegmentKey>| it.max_by_key(|k| k.end_frame_no).copied();
    match req {
        FindSegmentReq::Containing(n) => keys.iter().find(|k| k.includes(n)).copied(),
        FindSegmentReq::EndFrameNoLessThan(n) => {
            newest(&mut keys.iter().filter(|k| k.end_frame_no <= n))
        }
        FindSegmentReq::Timestamp(t) => newest(&mut keys.iter().filter(|k| k.timestamp() <= t)),
    }
}

pub async fn lookups_at_every_boundary<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("lookups");
    let keys: Vec<_> = history().iter().map(SealedSegment::key).collect();
    for seg in history() {
        store(&s, &name, seg).await.unwrap();
    }
    let mut reqs = Vec::new();
    for n in 0..=45 {
        reqs.push(FindSegmentReq::Containing(n));
        reqs.push(FindSegmentReq::EndFrameNoLessThan(n));
    }
    for ms in [
        0,
        999,
        1_000,
        1_001,
        1_003,
        1_999,
        2_000,
        2_001,
        2_999,
        3_000,
        3_001,
        253_402_300_799_000,
    ] {
        reqs.push(FindSegmentReq::Timestamp(at(ms)));
    }
    for req in reqs {
        match (s.find_segment(&name, req, None).await, model(&keys, req)) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{req}"),
            (Err(e), None) => assert!(e.is_not_found(), "{req}: {e}"),
            (got, want) => panic!("{req}: got {got:?}, want {want:?}"),
        }
    }
    let err = s
        .find_segment(&name, FindSegmentReq::Timestamp(at(999)), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("1970-01-01T00:00:01"),
        "names where history starts: {err}"
    );
}

pub async fn listing_is_newest_first_and_bounded<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("listing");
    let keys: Vec<_> = history().iter().map(SealedSegment::key).collect();
    for seg in history() {
        store(&s, &name, seg).await.unwrap();
    }
    for until in 0..=45 {
        let got: Vec<_> = list(&s, &name, until)
            .await
            .into_iter()
            .map(|i| i.key)
            .collect();
        let want: Vec<_> = keys
            .iter()
            .rev()
            .filter(|k| k.end_frame_no >= until)
            .copied()
            .collect();
        assert_eq!(got, want, "until {until}");
    }
    let infos = list(&s, &name, 0).await;
    assert_eq!(infos[0].size, history()[2].encoded_len());
    assert_eq!(infos[2].last_commit_ts, 1_003);
}

pub async fn long_listings_page_through_the_catalog<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("long-listing");
    for i in 0..2_500u64 {
        store(&s, &name, segment(i + 1, 1, 1, 1, i as i64))
            .await
            .unwrap();
    }
    let got: Vec<_> = list(&s, &name, 0)
        .await
        .into_iter()
        .map(|i| i.key.end_frame_no)
        .collect();
    assert_eq!(got, (1..=2_500).rev().collect::<Vec<_>>());
}

pub async fn out_of_order_is_rejected_and_restore_is_idempotent<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("ordering");
    let [first, second, third]: [SealedSegment; 3] = history().try_into().unwrap();
    store(&s, &name, second.clone()).await.unwrap();
    let err = store(&s, &name, first).await.unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("already stored"),
        "{err}"
    );
    // Re-storing the same segment is a no-op that reports the current durable frame.
    assert_eq!(store(&s, &name, second.clone()).await.unwrap(), 20);
    let overlapping = segment(15, 10, 10, 6, 5_000);
    assert!(store(&s, &name, overlapping)
        .await
        .unwrap_err()
        .is_invalid_input());
    let older_clock = segment(31, 10, 10, 6, 1_500);
    let err = store(&s, &name, older_clock).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("older than the last stored commit"),
        "{err}"
    );
    assert_eq!(store(&s, &name, third).await.unwrap(), 40);
    assert_eq!(list(&s, &name, 0).await.len(), 2);
}

pub async fn namespaces_are_isolated<B: Backend>(b: &B) {
    let s = b.open();
    for i in 0..40u64 {
        let name = ns(&format!("tenant-{i}"));
        for j in 0..=(i % 3) {
            store(&s, &name, segment(j * 10 + 1, 10, 10, 2, (j * 100) as i64))
                .await
                .unwrap();
        }
    }
    for i in 0..40u64 {
        let name = ns(&format!("tenant-{i}"));
        assert_eq!(
            s.durable_frame_no(&name, None).await.unwrap(),
            (i % 3 + 1) * 10
        );
        assert_eq!(list(&s, &name, 0).await.len() as u64, i % 3 + 1);
    }
}

pub async fn unknown_namespaces_are_empty<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("never-written");
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 0);
    let err = s
        .find_segment(&name, FindSegmentReq::Containing(1), None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(list(&s, &name, 0).await.is_empty());
    let key = history()[0].key();
    assert!(s
        .fetch_segment_data(&name, &key, None)
        .await
        .unwrap_err()
        .is_not_found());
}

pub async fn concurrent_stores<B: Backend>(b: &B)
where
    B::S: Clone,
{
    let s = b.open();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let name = ns(&format!("concurrent-{t}"));
            for j in 0..8u64 {
                store(&s, &name, segment(j * 4 + 1, 4, 2, 3, (j * 10) as i64))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for t in 0..16u64 {
        assert_eq!(
            s.durable_frame_no(&ns(&format!("concurrent-{t}")), None)
                .await
                .unwrap(),
            32
        );
    }
    // Racing stores of one namespace: whatever order they land in, the log only ever
    // grows and every acknowledged segment is listed.
    let name = ns("racing");
    let mut racers = Vec::new();
    for j in 0..20u64 {
        let s = s.clone();
        let name = name.clone();
        racers.push(tokio::spawn(async move {
            let seg = segment(j * 2 + 1, 2, 2, 3, j as i64);
            (seg.key(), store(&s, &name, seg).await)
        }));
    }
    let mut acked = Vec::new();
    for r in racers {
        let (key, result) = r.await.unwrap();
        match result {
            Ok(_) => acked.push(key),
            Err(e) => assert!(e.is_invalid_input(), "{e}"),
        }
    }
    let mut listed: Vec<_> = list(&s, &name, 0)
        .await
        .into_iter()
        .map(|i| i.key)
        .collect();
    listed.reverse();
    acked.sort_by_key(|k| k.end_frame_no);
    assert_eq!(listed, acked);
}

pub async fn reopen_after_drop<B: Backend>(b: &B) {
    let name = ns("reopen");
    {
        let s = b.open();
        for seg in history() {
            store(&s, &name, seg).await.unwrap();
        }
    }
    let s = b.open();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 40);
    let keys: Vec<_> = list(&s, &name, 0)
        .await
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(
        keys,
        history()
            .iter()
            .rev()
            .map(SealedSegment::key)
            .collect::<Vec<_>>()
    );
    let seg = s.fetch_segment_data(&name, &keys[1], None).await.unwrap();
    assert_eq!(seg.encoded(), history()[1].encoded());
    store(&s, &name, segment(41, 2, 2, 6, 4_000)).await.unwrap();
    assert_eq!(s.durable_frame_no(&name, None).await.unwrap(), 42);
}

pub async fn shutdown_refuses_new_work<B: Backend>(b: &B) {
    let s = b.open();
    let name = ns("shutdown");
    store(&s, &name, history().remove(0)).await.unwrap();
    s.shutdown().await;
    let err = store(&s, &name, history().remove(1)).await.unwrap_err();
    assert!(matches!(err, walvault::Error::Closed), "{err}");
}

/// The database as of frame `upto`, by replaying every frame: the restore model.
pub fn replay_model(segments: &[SealedSegment], upto: u64) -> Vec<u8> {
    let mut pages = BTreeMap::new();
    let mut size = 0;
    for seg in segments {
        for f in seg.frames().filter(|f| f.frame_no <= upto) {
            pages.insert(f.page_no, f.data.to_vec());
            if f.is_commit() {
                size = f.size_after;
            }
        }
    }
    (1..=size).flat_map(|p| pages[&p].clone()).collect()
}

/// Stores `segments` and restores the database at every commit, by frame number and by
/// timestamp, comparing each with a replay of every frame.
async fn restore_every_commit<B: Backend>(b: &B, namespace: &str, segments: Vec<SealedSegment>) {
    let s = b.open();
    let name = ns(namespace);
    for seg in segments.clone() {
        store(&s, &name, seg).await.unwrap();
    }
    let commits: Vec<_> = segments.iter().flat_map(|s| s.commits().to_vec()).collect();
    for commit in &commits {
        for options in [
            RestoreOptions::FrameNo(commit.frame_no),
            RestoreOptions::Timestamp(commit.timestamp()),
        ] {
            let mut out = Cursor::new(Vec::new());
            let summary = s.restore(&name, options, &mut out, None).await.unwrap();
            assert_eq!(summary.frame_no, commit.frame_no, "{options:?}");
            assert_eq!(
                out.into_inner(),
                replay_model(&segments, commit.frame_no),
                "{options:?}"
            );
        }
    }
}

pub async fn restore_matches_a_replay<B: Backend>(b: &B) {
    restore_every_commit(b, "restore", history()).await;
    restore_every_commit(b, "restore-shrinking", shrinking_history()).await;
    let s = b.open();
    let name = ns("restore");
    let segments = history();
    // A frame number between commits restores the commit before it.
    let mut out = Cursor::new(Vec::new());
    assert_eq!(
        s.restore(&name, RestoreOptions::FrameNo(25), &mut out, None)
            .await
            .unwrap()
            .frame_no,
        20
    );
    let mut out = Cursor::new(Vec::new());
    let latest = s
        .restore(&name, RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert_eq!((latest.frame_no, latest.db_pages), (40, 6));
    assert_eq!(out.into_inner(), replay_model(&segments, 40));
    let before = s
        .restore(
            &name,
            RestoreOptions::Timestamp(at(999)),
            &mut Cursor::new(Vec::new()),
            None,
        )
        .await;
    assert!(before.unwrap_err().is_not_found());
    let before = s
        .restore(
            &name,
            RestoreOptions::FrameNo(2),
            &mut Cursor::new(Vec::new()),
            None,
        )
        .await;
    assert!(before.unwrap_err().is_not_found());
}

/// Runs every check in the suite.
pub async fn run_all<B: Backend>(b: &B)
where
    B::S: Clone,
{
    store_fetch_round_trip(b).await;
    callbacks_report_durable_in_order(b).await;
    lookups_at_every_boundary(b).await;
    listing_is_newest_first_and_bounded(b).await;
    long_listings_page_through_the_catalog(b).await;
    out_of_order_is_rejected_and_restore_is_idempotent(b).await;
    namespaces_are_isolated(b).await;
    unknown_namespaces_are_empty(b).await;
    concurrent_stores(b).await;
    restore_matches_a_replay(b).await;
    reopen_after_drop(b).await;
    shutdown_refuses_new_work(b).await;
    lineage_is_checked_on_store_restore_and_verify(b).await;
}

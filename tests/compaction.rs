//! Compaction, retention and garbage collection under load, with real SQLite; a restore
//! racing a compaction; and the policy's bound on what a restore reads.
// The tests take wall-clock moments, as a user would, to restore to.
#![allow(clippy::disallowed_methods)]

mod conformance;

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use conformance::{check_commits, ns, segment, small_policy, store};
use rusqlite::Connection;
use tokio_stream::Stream;
use walvault::{
    apply_retention, compact, integrity_check, CompactionPolicy, FindSegmentReq, GcOptions,
    LocalStorage, MemoryStorage, NamespaceName, OnStoreCallback, PageIndex, Replicator,
    ReplicatorConfig, RestoreOptions, SealedSegment, SegmentInfo, SegmentKey, Storage,
};

type Rows = Vec<(i64, Vec<u8>)>;

fn rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn write_phase(conn: &Connection, phase: u64) {
    for i in 0..150u64 {
        let n = phase * 1000 + i;
        match i % 4 {
            0 | 1 => conn.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [100 + n % 900]),
            2 => conn.execute(
                "UPDATE t SET v = randomblob(200) WHERE id % 5 = ?1",
                [n % 5],
            ),
            _ => conn.execute(
                "DELETE FROM t WHERE id = (SELECT max(id) FROM t) - ?1",
                [n % 9],
            ),
        }
        .unwrap();
    }
}

async fn restore_rows(
    store: &LocalStorage,
    ns: &NamespaceName,
    options: RestoreOptions,
    out: &Path,
) -> Rows {
    store.restore_to_path(ns, options, out, None).await.unwrap();
    integrity_check(out).unwrap();
    rows(&Connection::open(out).unwrap())
}

/// A writer ships phase after phase while compaction and garbage collection (no grace)
/// run in a loop beside it on the same store; then retention drops the first phases.
/// Every phase still in the window restores exactly, by time and by frame number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_gc_under_load_keep_every_retained_moment_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let store = LocalStorage::open(dir.path().join("store")).unwrap();
    let ns = NamespaceName::new("app").unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
         PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
    )
    .unwrap();
    let mut config = ReplicatorConfig::new(&db);
    config.log.seal_frames = 64; // many small segments to compact
    let mut replicator = Replicator::open(store.clone(), ns.clone(), config)
        .await
        .unwrap();

    let running = Arc::new(AtomicBool::new(true));
    let maintenance = {
        let (store, ns, running) = (store.clone(), ns.clone(), running.clone());
        let policy = CompactionPolicy {
            target_size: 256 << 10,
            fan_in: 4,
            max_small: 2,
            ..Default::default()
        };
        tokio::spawn(async move {
            let no_grace = GcOptions {
                grace: Duration::ZERO,
                dry_run: false,
            };
            let mut merges = 0;
            while running.load(Ordering::Acquire) {
                merges += compact(&store, &ns, &policy, false)
                    .await
                    .unwrap()
                    .merges
                    .len();
                store.collect_garbage(&ns, no_grace, None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            merges
        })
    };
    let mut boundaries: Vec<(DateTime<Utc>, u64, Rows)> = Vec::new();
    for phase in 0..10 {
        write_phase(&conn, phase);
        let report = replicator.poll().await.unwrap();
        let frame_no = report
            .last
            .map(|l| l.commit_frame_no())
            .unwrap_or_else(|| boundaries.last().unwrap().1);
        boundaries.push((Utc::now(), frame_no, rows(&conn)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicator.close().await.unwrap();
    running.store(false, Ordering::Release);
    let merges = maintenance.await.unwrap();
    assert!(
        merges > 0,
        "compaction never ran beside the writer: the test proves nothing"
    );

    // Keep the window from phase 3 on.
    let window = Duration::from_secs(3600);
    let now = boundaries[3].0 + chrono::Duration::from_std(window).unwrap();
    let retention = apply_retention(&store, &ns, window, now, false)
        .await
        .unwrap();
    assert!(
        retention.merge.is_some(),
        "nothing before phase 3 was dropped"
    );
    let no_grace = GcOptions {
        grace: Duration::ZERO,
        dry_run: false,
    };
    let gc = store.collect_garbage(&ns, no_grace, None).await.unwrap();
    assert!(!gc.deleted.is_empty());
    compact(&store, &ns, &CompactionPolicy::default(), false)
        .await
        .unwrap();

    for (i, (at, frame_no, expected)) in boundaries.iter().enumerate().skip(3) {
        for (how, options) in [
            ("time", RestoreOptions::Timestamp(*at)),
            ("frame", RestoreOptions::FrameNo(*frame_no)),
        ] {
            let out = dir.path().join(format!("restored-{i}-{how}.db"));
            let restored = restore_rows(&store, &ns, options, &out).await;
            assert!(
                &restored == expected,
                "phase {i} by {how}: {} rows vs {}",
                restored.len(),
                expected.len()
            );
        }
    }
    let dropped = store
        .restore(
            &ns,
            RestoreOptions::Timestamp(boundaries[2].0),
            &mut Cursor::new(Vec::new()),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        dropped.is_not_found(),
        "a moment before the window: {dropped}"
    );
}

/// A backend that compacts itself the first time a restore reads page indexes ahead,
/// so the catalog changes under a restore in flight.
#[derive(Clone)]
struct CompactsMidRestore {
    inner: MemoryStorage,
    armed: Arc<AtomicBool>,
}

impl Storage for CompactsMidRestore {
    type Config = ();

    fn store(
        &self,
        ns: &NamespaceName,
        s: SealedSegment,
        c: Option<()>,
        cb: OnStoreCallback,
    ) -> impl std::future::Future<Output = walvault::Result<()>> + Send {
        self.inner.store(ns, s, c, cb)
    }
    async fn durable_frame_no(&self, ns: &NamespaceName, c: Option<()>) -> walvault::Result<u64> {
        self.inner.durable_frame_no(ns, c).await
    }
    async fn find_segment(
        &self,
        ns: &NamespaceName,
        req: FindSegmentReq,
        c: Option<()>,
    ) -> walvault::Result<SegmentKey> {
        self.inner.find_segment(ns, req, c).await
    }
    async fn fetch_segment_index(
        &self,
        ns: &NamespaceName,
        key: &SegmentKey,
        c: Option<()>,
    ) -> walvault::Result<PageIndex> {
        self.inner.fetch_segment_index(ns, key, c).await
    }
    async fn fetch_segment_indexes(
        &self,
        ns: &NamespaceName,
        keys: &[SegmentKey],
        c: Option<()>,
    ) -> Vec<walvault::Result<PageIndex>> {
        if self.armed.swap(false, Ordering::AcqRel) {
            let report = compact(&self.inner, ns, &small_policy(), false)
                .await
                .unwrap();
            assert!(!report.merges.is_empty());
        }
        self.inner.fetch_segment_indexes(ns, keys, c).await
    }
    async fn fetch_segment_data(
        &self,
        ns: &NamespaceName,
        key: &SegmentKey,
        c: Option<()>,
    ) -> walvault::Result<SealedSegment> {
        self.inner.fetch_segment_data(ns, key, c).await
    }
    fn list_segments<'a>(
        &'a self,
        ns: &'a NamespaceName,
        until: u64,
        c: Option<()>,
    ) -> impl Stream<Item = walvault::Result<SegmentInfo>> + Send + 'a {
        self.inner.list_segments(ns, until, c)
    }
    async fn replace_segments(
        &self,
        ns: &NamespaceName,
        inputs: &[SegmentKey],
        output: SealedSegment,
        c: Option<()>,
    ) -> walvault::Result<()> {
        self.inner.replace_segments(ns, inputs, output, c).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_racing_a_compaction_is_still_exact() {
    let storage = CompactsMidRestore {
        inner: MemoryStorage::new(),
        armed: Arc::new(AtomicBool::new(false)),
    };
    // A 40-page database: the first segments write every page, the last 80 only the
    // first four, so a restore of a late commit reads older segments well past its
    // look-ahead, across whatever the compaction swapped in; a stale page would show.
    let all: Vec<(u32, u32)> = (1..=40)
        .map(|p| (p, if p == 40 { 40 } else { 0 }))
        .collect();
    let mut history = Vec::new();
    for i in 0..41 {
        history.push(conformance::frames(1 + 40 * i, 1_000 + i as i64, &all));
    }
    for i in 0..80 {
        let hot = [(1, 0), (2, 0), (3, 0), (4, 40)];
        history.push(conformance::frames(1_641 + 4 * i, 2_000 + i as i64, &hot));
    }
    for (i, at) in [
        RestoreOptions::Latest,
        RestoreOptions::FrameNo(1_640 + 4 * 70),
    ]
    .into_iter()
    .enumerate()
    {
        let name = ns(&format!("racing-{i}"));
        for seg in history.clone() {
            store(&storage, &name, seg).await.unwrap();
        }
        storage.armed.store(true, Ordering::Release);
        let mut out = Cursor::new(Vec::new());
        let summary = storage.restore(&name, at, &mut out, None).await.unwrap();
        assert!(
            !storage.armed.load(Ordering::Acquire),
            "the compaction did not run"
        );
        let expected = conformance::replay_model(&history, summary.frame_no);
        assert!(out.into_inner() == expected, "{at:?}");
        check_commits(&storage, &name, &history, |c| c.frame_no % 40 == 0).await;
    }
}

/// The policy's promise: after many small segments, compaction leaves few enough that
/// a restore of the latest state reads at most 20. The issue asks for 10^5 segments:
/// `WALVAULT_MANY_SEGMENTS=100000` runs that (about two minutes in a debug build, most of
/// it building the segments); the normal run uses 10^4, and the policy's plan for 10^5
/// is checked in `ops::compact`'s unit tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_many_small_segments_latest_reads_few() {
    let storage = MemoryStorage::new();
    let name = ns("many");
    let count: u64 = std::env::var("WALVAULT_MANY_SEGMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    for i in 0..count {
        // One page per segment over a 2000-page database, committed 1 ms apart.
        let seg = segment(i + 1, 1, 1, 2_000, 1_000 + i as i64);
        store(&storage, &name, seg).await.unwrap();
    }
    let report = compact(&storage, &name, &CompactionPolicy::default(), false)
        .await
        .unwrap();
    assert_eq!(report.segments_before, count as usize);
    assert!(
        report.segments_after <= 20,
        "{} segments after compaction",
        report.segments_after
    );
    let mut out = Cursor::new(Vec::new());
    let summary = storage
        .restore(&name, RestoreOptions::Latest, &mut out, None)
        .await
        .unwrap();
    assert!(
        summary.segments_read <= 20,
        "a restore of latest read {} segments",
        summary.segments_read
    );
    assert_eq!(summary.frame_no, count);
    eprintln!(
        "{count} segments: {} after compaction, {} read by a restore of latest",
        report.segments_after, summary.segments_read
    );
    // Spot-check pages against what wrote them: page p last written by the newest frame
    // n with (n - 1) % 2000 + 1 == p.
    let bytes = out.into_inner();
    for page in [1u64, 2, 777, 2_000] {
        let newest = (0..count)
            .rev()
            .map(|i| i + 1)
            .find(|n| (n - 1) % 2_000 + 1 == page)
            .unwrap();
        let at = ((page - 1) * conformance::PAGE as u64) as usize;
        assert_eq!(
            bytes[at..at + conformance::PAGE],
            conformance::page_for(newest, page as u32)[..]
        );
    }
}

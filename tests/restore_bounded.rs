//! Restore in bounded memory: a real SQLite database's history held in one segment many
//! times larger than a frame batch (this binary runs under the smallest memory budget),
//! restored at its last commit (through the page index, the segment split across
//! batches) and at commits inside it (a bounded scan), from the local backend and from
//! an in-process S3 server. The storage is wrapped so that fetching a whole segment
//! fails, and the frame bytes fetched are counted.

mod s3;
#[path = "support/whole.rs"]
mod whole;

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::Connection;
use walvault::{
    on_store, LocalStorage, NamespaceName, ObjectStorage, PageSums, RestoreOptions, SealedSegment,
    SegmentBuilder, Storage,
};
use whole::NoWholeSegments;

const PAGE: usize = 4096;

/// A database state: its bytes (the file, page by page) and its commit.
struct State {
    bytes: Vec<u8>,
    frame_no: u64,
    at: DateTime<Utc>,
}

/// Three states of a real SQLite database, 4 KiB pages, several MiB: each state adds
/// rows, and the second also rewrites rows of the first (so pages change between
/// commits of one segment). The whole history is one segment: the first commit writes
/// every page, each later one the pages that changed.
fn history(dir: &Path) -> (SealedSegment, Vec<State>) {
    let path = dir.join("source.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = DELETE;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    let mut b = SegmentBuilder::new(1, PAGE as u32).unwrap();
    b.start_lineage(0).unwrap();
    let mut sums = PageSums::new();
    let mut previous: Vec<u8> = Vec::new();
    let mut states = Vec::new();
    let steps = [
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
         INSERT INTO t (v) SELECT randomblob(2000) FROM n;",
        "UPDATE t SET v = randomblob(2000) WHERE id % 7 = 0;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t (v) SELECT randomblob(1500) FROM n;",
        "DELETE FROM t WHERE id % 5 = 0;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO t (v) SELECT randomblob(3000) FROM n;",
    ];
    for (i, sql) in steps.iter().enumerate() {
        conn.execute_batch(sql).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let size = (bytes.len() / PAGE) as u32;
        let changed: Vec<u32> = (1..=size)
            .filter(|&p| {
                let range = (p as usize - 1) * PAGE..p as usize * PAGE;
                previous.get(range.clone()) != Some(&bytes[range])
            })
            .collect();
        let page = |p: u32| &bytes[(p as usize - 1) * PAGE..p as usize * PAGE];
        let written: Vec<(u32, &[u8])> = changed.iter().map(|&p| (p, page(p))).collect();
        let checksum = sums.apply(&written, size).unwrap();
        let (&last, rest) = changed.split_last().unwrap();
        for &p in rest {
            b.append_frame(p, page(p)).unwrap();
        }
        let at = Utc
            .timestamp_millis_opt(1_000_000 + 1_000 * i as i64)
            .unwrap();
        let frame_no = b
            .append_commit_with_checksum(last, page(last), size, at, checksum)
            .unwrap();
        states.push(State {
            bytes: bytes.clone(),
            frame_no,
            at,
        });
        previous = bytes;
    }
    let segment = b.seal(states.last().unwrap().at).unwrap();
    (segment, states)
}

/// Restores `options` into a new file, checks it is `state` byte for byte and a sound
/// database, and returns the frame bytes the restore fetched.
async fn restores<S: Storage>(
    storage: &NoWholeSegments<S>,
    ns: &NamespaceName,
    options: RestoreOptions,
    state: &State,
    out: &Path,
) -> u64 {
    storage.take_count();
    let summary = storage
        .restore_to_path(ns, options, out, None)
        .await
        .unwrap_or_else(|e| panic!("restore {options:?}: {e}"));
    assert_eq!(summary.frame_no, state.frame_no, "{options:?}");
    assert_ne!(summary.checksum, 0, "the lineage proof ran");
    let restored = std::fs::read(out).unwrap();
    assert_eq!(restored.len(), state.bytes.len(), "{options:?}");
    let differing = restored
        .chunks(PAGE)
        .zip(state.bytes.chunks(PAGE))
        .position(|(a, b)| a != b);
    assert_eq!(
        differing, None,
        "first differing page (0-based), {options:?}"
    );
    let conn = Connection::open(out).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    storage.take_count()
}

/// Every target of the one-segment history restores exactly, and none reads more frame
/// bytes than the frames up to its commit (the last commit: one frame per page).
async fn restores_every_state<S: Storage>(inner: S, dir: &Path) {
    walvault::set_memory_budget(walvault::MIN_MEMORY_BUDGET).unwrap();
    let (segment, states) = history(dir);
    // Several times a batch (a quarter of the budget), so batches split the segment.
    assert!(segment.encoded_len() > 4 * walvault::MIN_MEMORY_BUDGET as u64);
    let storage = NoWholeSegments::new(inner);
    let ns = NamespaceName::new("big").unwrap();
    let stored = storage.store(&ns, segment.clone(), None, on_store(|_| async {}));
    stored.await.unwrap();

    let last = states.last().unwrap();
    let read = restores(
        &storage,
        &ns,
        RestoreOptions::Latest,
        last,
        &dir.join("latest.db"),
    )
    .await;
    // The index names each page's newest frame: one frame per page, plus the one read
    // to learn the page size.
    assert_eq!(read, last.bytes.len() as u64 + PAGE as u64);

    let middle = &states[1];
    let options = RestoreOptions::FrameNo(middle.frame_no + 1);
    let read = restores(&storage, &ns, options, middle, &dir.join("frame.db")).await;
    // A commit inside the segment is found by scanning the frames up to it, no further.
    assert!(
        read <= (middle.frame_no + 1) * PAGE as u64,
        "{read} bytes read"
    );

    let first = &states[0];
    let options = RestoreOptions::Timestamp(first.at + chrono::Duration::milliseconds(500));
    let read = restores(&storage, &ns, options, first, &dir.join("time.db")).await;
    assert!(
        read <= (first.frame_no + 1) * PAGE as u64,
        "{read} bytes read"
    );

    let plan = walvault::plan_restore(
        &storage,
        &ns,
        RestoreOptions::FrameNo(middle.frame_no),
        None,
    );
    let plan = plan.await.unwrap();
    assert_eq!(plan.segments, vec![segment.key()]);
    assert_eq!(plan.bytes, segment.encoded_len());
}

#[tokio::test]
async fn a_segment_far_larger_than_a_batch_restores_from_the_local_backend() {
    let dir = tempfile::tempdir().unwrap();
    let storage = LocalStorage::open(dir.path().join("store")).unwrap();
    restores_every_state(storage, dir.path()).await;
}

#[tokio::test]
async fn a_segment_far_larger_than_a_batch_restores_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(&dir.path().join("s3"));
    let storage = ObjectStorage::new(server.client(), "bounded");
    restores_every_state(storage, dir.path()).await;
}

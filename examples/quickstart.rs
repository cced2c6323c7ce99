//! The README's main job: store WAL segments in a local directory, look them up, and
//! restore the database to each point in time, checking every byte.
//!
//! ```text
//! cargo run --release --example quickstart [STORE_DIR]
//! ```
//!
//! STORE_DIR defaults to `./walvault-store`. Run it again and it continues the same log.

use std::collections::BTreeMap;
use std::io::Cursor;

use chrono::{DateTime, Duration, Utc};
use walvault::{
    FindSegmentReq, LocalStorage, NamespaceName, RestoreOptions, SealedSegment, SegmentBuilder,
    Storage,
};

const PAGE_SIZE: u32 = 4096;
const DB_PAGES: u32 = 64;
const PHASES: usize = 5;
const TXNS_PER_PHASE: u64 = 40;

/// One phase of work: a segment and the database it leaves behind.
struct Phase {
    segment: SealedSegment,
    at: DateTime<Utc>,
    image: Vec<u8>,
}

#[tokio::main]
async fn main() -> walvault::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "walvault-store".into());
    let storage = LocalStorage::open(&root)?;
    let ns = NamespaceName::new("quickstart")?;

    // Continue the log where a previous run left it.
    let durable = storage.durable_frame_no(&ns, None).await?;
    let mut db = match durable {
        0 => BTreeMap::new(),
        _ => restore_pages(&storage, &ns, RestoreOptions::Latest).await?,
    };
    let mut clock = walvault::Clock::now(&walvault::SystemClock);
    if let Ok(key) = storage
        .find_segment(&ns, FindSegmentReq::EndFrameNoLessThan(durable), None)
        .await
    {
        let newest = storage.fetch_segment_data(&ns, &key, None).await?;
        clock = clock.max(newest.last_commit_timestamp() + Duration::milliseconds(1));
    }
    println!("store {root}: namespace {ns} is durable up to frame {durable}");

    let mut phases = Vec::new();
    let mut next_frame = durable + 1;
    for phase in 0..PHASES {
        let (segment, image) = write_phase(&mut db, next_frame, phase as u64, &mut clock)?;
        next_frame = segment.end_frame_no() + 1;
        let at = segment.last_commit_timestamp();
        storage
            .store(
                &ns,
                segment.clone(),
                None,
                Box::new(move |d| {
                    Box::pin(async move {
                        println!("  phase {phase}: durable up to frame {d}");
                    })
                }),
            )
            .await?;
        phases.push(Phase { segment, at, image });
    }

    println!(
        "\n{:<6} {:<26} {:>14} {:>7} {:>9}",
        "phase", "restored to", "frames", "pages", "check"
    );
    for (i, phase) in phases.iter().enumerate() {
        let key = storage
            .find_segment(&ns, FindSegmentReq::Timestamp(phase.at), None)
            .await?;
        assert_eq!(
            key,
            phase.segment.key(),
            "timestamp lookup finds the phase's segment"
        );
        let mut out = Cursor::new(Vec::new());
        let summary = storage
            .restore(&ns, RestoreOptions::Timestamp(phase.at), &mut out, None)
            .await?;
        let ok = out.get_ref() == &phase.image;
        println!(
            "{:<6} {:<26} {:>14} {:>7} {:>9}",
            i,
            summary.timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            format!("{}..={}", phase.segment.start_frame_no(), summary.frame_no),
            summary.db_pages,
            if ok { "exact" } else { "MISMATCH" }
        );
        if !ok {
            std::process::exit(1);
        }
    }
    println!("\nall {PHASES} restores match the database byte for byte");
    Ok(())
}

/// Writes one phase of transactions into a segment; returns it and the database image
/// after its last commit. The very first transaction creates every page.
fn write_phase(
    db: &mut BTreeMap<u32, Vec<u8>>,
    start: u64,
    phase: u64,
    clock: &mut DateTime<Utc>,
) -> walvault::Result<(SealedSegment, Vec<u8>)> {
    let mut builder = SegmentBuilder::new(start, PAGE_SIZE)?;
    if db.is_empty() {
        let all: Vec<u32> = (1..=DB_PAGES).collect();
        write_txn(&mut builder, db, &all, clock)?;
    }
    for txn in 0..TXNS_PER_PHASE {
        let pages: Vec<u32> = (0..3)
            .map(|k| ((phase * 31 + txn * 7 + k * 13) % u64::from(DB_PAGES)) as u32 + 1)
            .collect();
        write_txn(&mut builder, db, &pages, clock)?;
    }
    let segment = builder.seal(*clock)?;
    *clock += Duration::milliseconds(20);
    let image = db.values().flatten().copied().collect();
    Ok((segment, image))
}

/// Appends one transaction writing `pages`, committing on the last one.
fn write_txn(
    builder: &mut SegmentBuilder,
    db: &mut BTreeMap<u32, Vec<u8>>,
    pages: &[u32],
    clock: &mut DateTime<Utc>,
) -> walvault::Result<()> {
    for (k, &page_no) in pages.iter().enumerate() {
        let data = page_image(page_no, builder.next_frame_no());
        if k + 1 == pages.len() {
            builder.append_commit(page_no, &data, DB_PAGES, *clock)?;
            *clock += Duration::milliseconds(5);
        } else {
            builder.append_frame(page_no, &data)?;
        }
        db.insert(page_no, data);
    }
    Ok(())
}

fn page_image(page_no: u32, frame_no: u64) -> Vec<u8> {
    let mut page = vec![(page_no as u8) ^ (frame_no as u8); PAGE_SIZE as usize];
    page[..4].copy_from_slice(&page_no.to_be_bytes());
    page[4..12].copy_from_slice(&frame_no.to_be_bytes());
    page
}

async fn restore_pages(
    storage: &LocalStorage,
    ns: &NamespaceName,
    at: RestoreOptions,
) -> walvault::Result<BTreeMap<u32, Vec<u8>>> {
    let mut out = Cursor::new(Vec::new());
    storage.restore(ns, at, &mut out, None).await?;
    let bytes = out.into_inner();
    let pages = bytes.chunks(PAGE_SIZE as usize).map(<[u8]>::to_vec);
    Ok((1..).zip(pages).collect())
}

//! Format-layer benchmarks: key format/parse, seal+encode, decode+verify, index lookups.
//!
//! Run with `cargo bench --bench format`. Targets (see README): key ≤ 100 ns each way;
//! seal+encode and decode+verify ≥ 1.5 GB/s with 4 KiB pages; page-index lookup in a
//! 20,000-page segment ≤ 200 ns. Lineage: the rolling database checksum of 8 MiB of
//! 4 KiB pages (what every commit, restore and verify adds) beside `memcpy`.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walvault::{PageSums, SealedSegment, SegmentBuilder, SegmentKey};

const PAGE: usize = 4096;

fn keys(c: &mut Criterion) {
    let key = SegmentKey {
        start_frame_no: 123_456_789,
        end_frame_no: 123_460_000,
        timestamp: 1_763_700_000_000,
    };
    let text = key.to_string();
    let mut g = c.benchmark_group("segment_key");
    g.bench_function("format_to_bytes", |b| b.iter(|| black_box(&key).to_bytes()));
    g.bench_function("format_to_string", |b| {
        b.iter(|| black_box(&key).to_string())
    });
    g.bench_function("parse", |b| {
        b.iter(|| black_box(&text).parse::<SegmentKey>().unwrap())
    });
    g.finish();
}

/// 8 MiB of 4 KiB pages: 2048 frames, a commit every 16 frames.
fn build(frames: u32, pages: &[Vec<u8>]) -> SealedSegment {
    let at = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
    let mut b = SegmentBuilder::new(1, PAGE as u32).unwrap();
    b.reserve(frames as usize);
    for i in 0..frames {
        let page_no = i % 1024 + 1;
        let data = &pages[i as usize % pages.len()];
        if (i + 1) % 16 == 0 {
            b.append_commit(page_no, data, 1024, at).unwrap();
        } else {
            b.append_frame(page_no, data).unwrap();
        }
    }
    b.seal(at).unwrap()
}

fn codec(c: &mut Criterion) {
    let frames = 2048u32;
    let pages: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; PAGE]).collect();
    let sealed = build(frames, &pages);
    let mut g = c.benchmark_group("segment_8MiB_4KiB_pages");
    g.throughput(Throughput::Bytes(sealed.encoded_len()));
    g.sample_size(30);
    g.bench_function("baseline_memcpy", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(sealed.encoded().len()),
            |out: &mut Vec<u8>| out.extend_from_slice(black_box(sealed.encoded())),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("seal_encode", |b| {
        b.iter(|| build(frames, black_box(&pages)))
    });
    g.bench_function("decode_verify", |b| {
        b.iter(|| SealedSegment::decode(black_box(sealed.encoded().clone())).unwrap())
    });
    g.finish();
}

fn index(c: &mut Criterion) {
    let at = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
    let pages = 20_000u32;
    let mut b = SegmentBuilder::new(1, 512).unwrap();
    let data = vec![7u8; 512];
    for p in 1..pages {
        b.append_frame(p, &data).unwrap();
    }
    b.append_commit(pages, &data, pages, at).unwrap();
    let seg = b.seal(at).unwrap();
    // A fixed pseudo-random probe order, so lookups are not sequential.
    let probes: Vec<u32> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) % pages) + 1)
        .collect();
    let mut g = c.benchmark_group("page_index_20000_pages");
    let mut i = 0usize;
    g.bench_function("lookup", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            seg.index().get(black_box(probes[i])).unwrap()
        })
    });
    g.bench_function("read_page", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            seg.read_page(black_box(probes[i])).unwrap().frame_no
        })
    });
    g.finish();
}

/// The lineage checksum's cost: `PageSums::apply` over 2048 page writes to a 1024-page
/// database, in commits of 16 pages, against copying the same bytes.
fn lineage(c: &mut Criterion) {
    let pages: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; PAGE]).collect();
    let txns: Vec<Vec<(u32, &[u8])>> = (0..128u32)
        .map(|t| {
            (0..16u32)
                .map(|i| {
                    let n = t * 16 + i;
                    (n % 1024 + 1, pages[n as usize % pages.len()].as_slice())
                })
                .collect()
        })
        .collect();
    let bytes: Vec<u8> = pages.concat().repeat(32);
    let mut g = c.benchmark_group("lineage_8MiB_4KiB_pages");
    g.throughput(Throughput::Bytes((2048 * PAGE) as u64));
    g.sample_size(30);
    g.bench_function("baseline_memcpy", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(bytes.len()),
            |out: &mut Vec<u8>| out.extend_from_slice(black_box(&bytes)),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("page_sums_apply", |b| {
        b.iter_batched_ref(
            PageSums::new,
            |sums| {
                for txn in &txns {
                    sums.apply(txn, 1024).unwrap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, keys, codec, index, lineage);
criterion_main!(benches);

//! Format tests: a golden encoding, exhaustive corruption and truncation, and property
//! tests against a last-write-wins model.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::error::{Error, FormatError};

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

fn page(byte: u8, size: usize) -> Vec<u8> {
    (0..size).map(|i| byte.wrapping_add(i as u8)).collect()
}

/// A small segment with two transactions and a page written twice.
fn small_segment() -> SealedSegment {
    let mut b = SegmentBuilder::new(7, 512)
        .unwrap()
        .with_log_id(Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677));
    b.append_frame(1, &page(0x10, 512)).unwrap();
    b.append_commit(3, &page(0x30, 512), 3, at(1_700_000_000_000))
        .unwrap();
    b.append_commit(1, &page(0x11, 512), 3, at(1_700_000_000_250))
        .unwrap();
    b.seal(at(1_700_000_001_000)).unwrap()
}

/// The same transactions in a segment that carries lineage, building on a known state.
fn small_lineage_segment() -> SealedSegment {
    let mut b = SegmentBuilder::new(7, 512)
        .unwrap()
        .with_log_id(Uuid::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677));
    let base = CHECKSUM_FLAG | 0x1111_2222_3333_4444;
    b.start_lineage(base).unwrap();
    b.append_frame(1, &page(0x10, 512)).unwrap();
    b.append_commit_with_checksum(3, &page(0x30, 512), 3, at(1_700_000_000_000), base ^ 5)
        .unwrap();
    b.append_commit_with_checksum(1, &page(0x11, 512), 3, at(1_700_000_000_250), base ^ 6)
        .unwrap();
    b.seal(at(1_700_000_001_000)).unwrap()
}

#[test]
fn version_1_segments_still_decode_without_lineage() {
    let golden_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/segment-v1.bin");
    let decoded = SealedSegment::decode(std::fs::read(golden_path).unwrap()).unwrap();
    assert_eq!(decoded.format_version(), 1);
    assert_eq!(
        (decoded.lineage_base(), decoded.end_checksum()),
        (None, None)
    );
    assert_eq!(decoded.key(), small_segment().key());
    assert_eq!(decoded.commits(), small_segment().commits());
    assert_eq!(decoded.read_page(1), small_segment().read_page(1));
}

#[test]
fn lineage_round_trips_and_is_checked() {
    let s = small_lineage_segment();
    let decoded = SealedSegment::decode(s.encoded().clone()).unwrap();
    assert_eq!(decoded.format_version(), 2);
    assert_eq!(
        decoded.lineage_base(),
        Some(CHECKSUM_FLAG | 0x1111_2222_3333_4444)
    );
    assert_eq!(
        decoded.end_checksum(),
        Some(CHECKSUM_FLAG ^ 0x1111_2222_3333_4442)
    );
    assert_eq!(small_segment().lineage_base(), None);
    // A builder with lineage refuses commits without checksums, and the reverse.
    let mut b = SegmentBuilder::new(1, 512).unwrap();
    b.start_lineage(0).unwrap();
    assert!(b.append_commit(1, &page(1, 512), 1, at(1)).is_err());
    assert!(b
        .append_commit_with_checksum(1, &page(1, 512), 1, at(1), 5)
        .is_err());
    let mut plain = SegmentBuilder::new(1, 512).unwrap();
    assert!(plain
        .append_commit_with_checksum(1, &page(1, 512), 1, at(1), CHECKSUM_FLAG)
        .is_err());
}

#[test]
fn golden_bytes_pin_the_format() {
    let encoded = small_lineage_segment().encoded().clone();
    let golden_path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/segment-v2.bin");
    if std::env::var_os("WALVAULT_BLESS").is_some() {
        std::fs::write(golden_path, &encoded).unwrap();
    }
    let golden = std::fs::read(golden_path).expect("golden file (WALVAULT_BLESS=1 writes it)");
    assert_eq!(
        &encoded[..],
        &golden[..],
        "the encoding changed: bump the format version"
    );
    let decoded = SealedSegment::decode(golden).unwrap();
    assert_eq!(decoded.key(), small_lineage_segment().key());
}

#[test]
fn a_sealed_segment_knows_what_it_holds() {
    let s = small_segment();
    assert_eq!(
        s.key(),
        SegmentKey {
            start_frame_no: 7,
            end_frame_no: 9,
            timestamp: 1_700_000_000_000
        }
    );
    assert_eq!((s.start_frame_no(), s.end_frame_no()), (7, 9));
    assert_eq!(
        (s.page_size(), s.db_size(), s.frame_count(), s.page_count()),
        (512, 3, 3, 2)
    );
    assert_eq!(s.sealed_at(), at(1_700_000_001_000));
    assert_eq!(s.last_commit_timestamp(), at(1_700_000_000_250));
    let commits: Vec<_> = s
        .commits()
        .iter()
        .map(|c| (c.frame_no, c.timestamp_ms, c.size_after))
        .collect();
    assert_eq!(
        commits,
        [(8, 1_700_000_000_000, 3), (9, 1_700_000_000_250, 3)]
    );
    let newest = s.read_page(1).unwrap();
    assert_eq!((newest.frame_no, newest.data), (9, &page(0x11, 512)[..]));
    assert!(s.read_page(2).is_none());
    let frames: Vec<_> = s
        .frames()
        .map(|f| (f.frame_no, f.page_no, f.size_after))
        .collect();
    assert_eq!(frames, [(7, 1, 0), (8, 3, 3), (9, 1, 3)]);
}

#[test]
fn every_single_byte_corruption_is_detected() {
    let encoded = small_segment().encoded().to_vec();
    let mut copy = encoded.clone();
    for offset in 0..encoded.len() {
        for delta in 1..=255u8 {
            copy[offset] = encoded[offset] ^ delta;
            if let Ok(s) = SealedSegment::decode(copy.clone()) {
                panic!("byte {offset} ^ {delta:#x} went unnoticed: {s:?}");
            }
        }
        copy[offset] = encoded[offset];
    }
}

#[test]
fn every_truncation_and_extension_is_detected() {
    let encoded = small_segment().encoded().to_vec();
    for len in 0..encoded.len() {
        let err = SealedSegment::decode(encoded[..len].to_vec()).unwrap_err();
        assert!(
            matches!(err, FormatError::Length { .. }),
            "len {len}: {err}"
        );
    }
    let mut longer = encoded.clone();
    longer.push(0);
    assert!(matches!(
        SealedSegment::decode(longer),
        Err(FormatError::Length { .. })
    ));
}

#[test]
fn errors_name_the_part_that_failed() {
    let encoded = small_segment().encoded().to_vec();
    let mut bad = encoded.clone();
    bad[128 + 24 + 100] ^= 1; // a byte of the first frame's page
    assert_eq!(
        SealedSegment::decode(bad).unwrap_err(),
        FormatError::Checksum {
            part: crate::Part::Frame(0),
            offset: 128
        }
    );
    let mut bad = encoded;
    bad[0] = b'X';
    assert_eq!(
        SealedSegment::decode(bad).unwrap_err(),
        FormatError::BadMagic(crate::Part::Header)
    );
}

fn invalid(result: Result<impl std::fmt::Debug, Error>) -> String {
    let err = result.unwrap_err();
    assert!(err.is_invalid_input(), "{err}");
    err.to_string()
}

#[test]
fn the_builder_rejects_bad_input_and_stays_usable() {
    for size in [0, 256, 1000, 131_072] {
        assert!(invalid(SegmentBuilder::new(1, size)).contains("page size"));
    }
    assert!(invalid(SegmentBuilder::new(0, 4096)).contains("frame number 0"));
    let mut b = SegmentBuilder::new(1, 512).unwrap();
    assert!(invalid(b.seal(at(0))).contains("no frames"));
    assert!(invalid(b.append_frame(0, &page(0, 512))).contains("page number 0"));
    assert!(invalid(b.append_frame(1, &page(0, 511))).contains("511 bytes"));
    assert!(invalid(b.append_commit(1, &page(0, 512), 0, at(5))).contains("at least 1 page"));
    assert!(invalid(b.append_commit(1, &page(0, 512), 1, at(-1))).contains("timestamp"));
    b.append_commit(1, &page(1, 512), 1, at(10)).unwrap();
    assert!(invalid(b.append_commit(1, &page(0, 512), 1, at(9))).contains("before the previous"));
    b.append_frame(2, &page(2, 512)).unwrap();
    assert!(invalid(b.seal(at(11))).contains("not a commit"));
    b.append_commit(2, &page(3, 512), 2, at(10)).unwrap();
    let s = b.seal(at(11)).unwrap();
    assert_eq!((s.start_frame_no(), s.end_frame_no()), (1, 3));
    assert_eq!(b.next_frame_no(), 4);
    assert!(b.is_empty());
}

#[test]
fn frame_numbers_cannot_overflow() {
    let mut b = SegmentBuilder::new(u64::MAX - 1, 512).unwrap();
    b.append_commit(1, &page(0, 512), 1, at(0)).unwrap();
    assert!(invalid(b.append_frame(1, &page(0, 512))).contains("no frame numbers left"));
    let s = b.seal(at(0)).unwrap();
    assert_eq!(
        SealedSegment::decode(s.encoded().clone())
            .unwrap()
            .end_frame_no(),
        u64::MAX - 1
    );
}

/// A transaction: page writes (page number, fill byte) and the commit's size.
type Txn = (Vec<(u32, u8)>, u32);

fn txns() -> impl Strategy<Value = (u32, Vec<Txn>)> {
    let page_size = prop::sample::select(vec![512u32, 1024, 4096, 65536]);
    let txn = (
        prop::collection::vec((1u32..40, any::<u8>()), 1..8),
        1u32..60,
    );
    (page_size, prop::collection::vec(txn, 1..6))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_decode_round_trips_and_reads_agree_with_a_model(
        (page_size, txns) in txns(),
        start in 1u64..1_000_000,
    ) {
        let mut b = SegmentBuilder::new(start, page_size).unwrap();
        let mut model = std::collections::HashMap::new();
        let mut frames = Vec::new();
        for (i, (writes, size)) in txns.iter().enumerate() {
            for (j, (page_no, fill)) in writes.iter().enumerate() {
                let data = page(*fill, page_size as usize);
                let frame_no = if j + 1 == writes.len() {
                    b.append_commit(*page_no, &data, *size, at(1000 + i as i64)).unwrap()
                } else {
                    b.append_frame(*page_no, &data).unwrap()
                };
                model.insert(*page_no, (frame_no, data));
                frames.push(frame_no);
            }
        }
        let sealed = b.seal(at(5000)).unwrap();
        let decoded = SealedSegment::decode(sealed.encoded().clone()).unwrap();
        prop_assert_eq!(decoded.encoded(), sealed.encoded());
        prop_assert_eq!(decoded.key(), sealed.key());
        prop_assert_eq!(decoded.commits(), sealed.commits());
        prop_assert_eq!(decoded.commits().len(), txns.len());
        prop_assert_eq!(decoded.db_size(), txns.last().unwrap().1);
        prop_assert_eq!(decoded.frames().map(|f| f.frame_no).collect::<Vec<_>>(), frames);
        for page_no in 0..45 {
            let got = decoded.read_page(page_no).map(|f| (f.frame_no, f.data.to_vec()));
            prop_assert_eq!(got, model.get(&page_no).cloned());
        }
        prop_assert_eq!(decoded.index().len(), model.len());
    }
}

/// Recomputes every checksum after the page index, as a buggy or malicious writer could.
fn refresh_checksums_after_index(bytes: &mut [u8]) {
    use super::layout::{digest_add, encode_trailer, frm, hdr, le_u32, Header, COMMIT_LEN};
    let header = Header::decode(bytes).unwrap();
    let layout = header.layout().unwrap();
    let (index_at, index_len) = (layout.index_off as usize, header.index_len as usize);
    let index_crc = crc32c::crc32c(&bytes[index_at..index_at + index_len]);
    bytes[index_at + index_len..index_at + index_len + 4].copy_from_slice(&index_crc.to_le_bytes());
    let mut digest = digest_add(0, le_u32(bytes, hdr::CRC));
    for position in 0..header.frame_count {
        digest = digest_add(
            digest,
            le_u32(bytes, layout.frame_off(position) as usize + frm::CRC),
        );
    }
    let commit_crc_at = layout.commits_off as usize + header.commit_count as usize * COMMIT_LEN;
    digest = digest_add(digest, le_u32(bytes, commit_crc_at));
    digest = digest_add(digest, index_crc);
    let trailer = encode_trailer(layout.file_len, digest);
    bytes[layout.trailer_off as usize..].copy_from_slice(&trailer);
}

/// Silences the panic messages of the `fst` crate, whose panics decoding catches.
fn quiet_fst_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|l| l.file().contains("fst-")) {
                previous(info);
            }
        }));
    });
}

#[test]
fn a_malformed_index_with_valid_checksums_is_an_error_not_a_panic() {
    quiet_fst_panics();
    let mut b = SegmentBuilder::new(1, 512).unwrap();
    for p in 1..40u32 {
        b.append_frame(p * 7, &page(p as u8, 512)).unwrap();
    }
    b.append_commit(1, &page(0, 512), 300, at(0)).unwrap();
    let good = b.seal(at(0)).unwrap().encoded().to_vec();
    let header = super::layout::Header::decode(&good).unwrap();
    let index_at = header.layout().unwrap().index_off as usize;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut caught = 0;
    for _ in 0..3000 {
        let mut bad = good.clone();
        for _ in 0..=next() % 3 {
            let at = index_at + (next() % header.index_len) as usize;
            bad[at] = next() as u8;
        }
        refresh_checksums_after_index(&mut bad);
        match SealedSegment::decode(bad) {
            // A mutation can still be a valid index of the same pages; then it must agree.
            Ok(s) => assert!(s.frames().all(|f| s.read_page(f.page_no).is_some())),
            Err(FormatError::Invalid {
                reason: "malformed fst",
                ..
            }) => caught += 1,
            Err(_) => {}
        }
    }
    assert!(
        caught > 0,
        "no mutation reached a panic inside fst; the test lost its teeth"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, and valid segments with arbitrary edits, decode to a value or an
    /// error: never a panic.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        noise in prop::collection::vec(any::<u8>(), 0..2048),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        quiet_fst_panics();
        let _ = SealedSegment::decode(noise);
        let mut bytes = small_segment().encoded().to_vec();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = SealedSegment::decode(bytes.clone());
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = SealedSegment::decode(bytes);
    }
}

/// Frames 12, 13 and 15 of the range 10..=15: a sparse segment, as compaction writes.
fn sparse_segment() -> SealedSegment {
    let mut b = SegmentBuilder::new(10, 512).unwrap();
    b.skip_to(12).unwrap();
    b.append_frame(1, &page(1, 512)).unwrap();
    b.append_commit(2, &page(2, 512), 2, at(1_000)).unwrap();
    b.skip_to(15).unwrap();
    b.append_commit(1, &page(3, 512), 2, at(2_000)).unwrap();
    b.seal(at(3_000)).unwrap()
}

#[test]
fn sparse_segments_keep_frame_numbers_and_are_verified() {
    let s = sparse_segment();
    assert!(s.is_sparse() && !small_segment().is_sparse());
    assert_eq!(
        (s.start_frame_no(), s.end_frame_no(), s.frame_count()),
        (10, 15, 3)
    );
    let decoded = SealedSegment::decode(s.encoded().clone()).unwrap();
    let numbers: Vec<u64> = decoded.frames().map(|f| f.frame_no).collect();
    assert_eq!(numbers, vec![12, 13, 15]);
    assert_eq!(decoded.position_of(13), Some(1));
    assert_eq!(decoded.position_of(14), None);
    assert_eq!(decoded.read_page_as_of(1, 14).unwrap().data[0], 1);
    assert_eq!(decoded.read_page(1).unwrap().data[0], 3);
    let mut b = SegmentBuilder::new(10, 512).unwrap();
    b.skip_to(12).unwrap();
    assert!(b.skip_to(11).is_err(), "numbers only move forward");
    let encoded = s.encoded().to_vec();
    let mut copy = encoded.clone();
    for offset in 0..encoded.len() {
        for delta in [0x01, 0x10, 0x80, 0xff] {
            copy[offset] = encoded[offset] ^ delta;
            assert!(
                SealedSegment::decode(copy.clone()).is_err(),
                "byte {offset} ^ {delta:#x} went unnoticed"
            );
        }
        copy[offset] = encoded[offset];
    }
}

#[test]
fn a_segment_with_holes_must_say_it_is_sparse() {
    use super::layout::{Header, HEADER_LEN};
    let mut bytes = sparse_segment().encoded().to_vec();
    let mut header = Header::decode(&bytes).unwrap();
    header.sparse = false;
    bytes[..HEADER_LEN].copy_from_slice(&header.encode());
    // The header's own checksum holds; its fields do not.
    let err = Header::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("frame count"), "{err}");
    assert!(SealedSegment::decode(bytes).is_err());
}

/// Builds the same transactions in memory and through a spill file of a tiny threshold:
/// the encodings are identical byte for byte, and the spilled segment's reads agree.
#[test]
fn a_spilled_segment_encodes_exactly_as_one_built_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let build = |spill: bool| {
        let mut b = SegmentBuilder::new(5, 512).unwrap();
        if spill {
            b = b.with_spill(dir.path(), 2_000);
        }
        b.start_lineage(0).unwrap();
        for txn in 0..40u32 {
            for p in 1..=30u32 {
                if (p + txn) % 3 == 0 {
                    b.append_frame(p, &page((p * 7 + txn) as u8, 512)).unwrap();
                }
            }
            let sum = CHECKSUM_FLAG | u64::from(txn);
            b.append_commit_with_checksum(
                31,
                &page(txn as u8, 512),
                31,
                at(1_000 + i64::from(txn)),
                sum,
            )
            .unwrap();
        }
        assert_eq!(b.is_spilled(), spill);
        let found = b
            .find_page(3, 60)
            .unwrap()
            .map(|(n, d)| (n, d.into_owned()));
        (b.seal(at(9_000)).unwrap(), found)
    };
    let (memory, found_memory) = build(false);
    let (spilled, found_spilled) = build(true);
    assert_eq!(found_memory, found_spilled);
    assert!(memory.is_in_memory());
    assert!(!spilled.is_in_memory());
    let path = spilled.spill_path().unwrap().to_path_buf();
    assert!(path.exists());
    let mut copy = Vec::new();
    spilled.write_encoded(&mut copy).unwrap();
    assert_eq!(&copy[..], &memory.encoded()[..]);
    assert_eq!(spilled.load().unwrap().encoded(), memory.encoded());
    let range = 100..5_000;
    assert_eq!(
        spilled.read_encoded(range.clone()).unwrap(),
        memory.encoded().slice(100..5_000)
    );
    let positions: Vec<u32> = vec![0, 1, 2, 9, 10, 40, memory.frame_count() - 1];
    assert_eq!(
        spilled.read_frames(&positions).unwrap(),
        memory.read_frames(&positions).unwrap()
    );
    for (page_no, as_of) in [(3, 60), (31, 100), (2, 7), (29, 1_000)] {
        assert_eq!(
            spilled.find_page(page_no, as_of).unwrap(),
            memory.find_page(page_no, as_of).unwrap(),
            "page {page_no} as of {as_of}"
        );
        let expected = memory
            .read_page_as_of(page_no, as_of)
            .map(|f| f.data.to_vec());
        let got = spilled
            .find_page(page_no, as_of)
            .unwrap()
            .map(|f| f.data.to_vec());
        assert_eq!(got, expected);
    }
    drop(spilled);
    assert!(!path.exists(), "the spill file goes with the last handle");
}

/// A spill file damaged after sealing is caught when its frames are read.
#[test]
fn a_damaged_spill_file_is_reported_not_returned() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut b = SegmentBuilder::new(1, 512)
        .unwrap()
        .with_spill(dir.path(), 0);
    for p in 1..=8 {
        b.append_frame(p, &page(p as u8, 512)).unwrap();
    }
    b.append_commit(9, &page(9, 512), 9, at(1_000)).unwrap();
    let segment = b.seal(at(2_000)).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment.spill_path().unwrap())
        .unwrap();
    file.write_all_at(&[0xff], 128 + 24 + 3).unwrap();
    let err = segment.read_frames(&[0]).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(segment.read_frames(&[1, 2]).is_ok());
    assert!(segment.load().is_err());
}

use super::*;

fn entry(n: u64) -> CatalogEntry {
    CatalogEntry {
        key: SegmentKey {
            start_frame_no: n * 10 + 1,
            end_frame_no: n * 10 + 10,
            timestamp: 1000 + n * 10,
        },
        size: 4096 + n,
        last_commit_ts: 1005 + n * 10,
        base_checksum: if n == 0 { 0 } else { (1 << 63) | n },
        end_checksum: (1 << 63) | (n + 1),
    }
}

fn journal(edits: &[Edit]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = file_header().to_vec();
    let mut ends = Vec::new();
    for edit in edits {
        bytes.extend_from_slice(&edit.encode());
        ends.push(bytes.len());
    }
    (bytes, ends)
}

fn replay_bytes(bytes: &[u8]) -> Result<Replay> {
    replay(bytes, bytes.len() as u64, "test manifest")
}

#[test]
fn replays_adds_removes_and_snapshots() {
    let edits = [
        Edit::Snapshot(vec![entry(0), entry(1)]),
        Edit::Add(entry(2)),
        Edit::Add(entry(3)),
        Edit::Remove(vec![entry(1).key, entry(2).key]),
        Edit::Add(entry(4)),
    ];
    let (bytes, _) = journal(&edits);
    let r = replay_bytes(&bytes).unwrap();
    assert_eq!(r.catalog.entries(), &[entry(0), entry(3), entry(4)]);
    assert!(!r.torn_tail);
    assert_eq!(r.valid_len, bytes.len() as u64);
    assert_eq!(r.records_since_snapshot, 4);
}

#[test]
fn a_torn_last_record_is_dropped_at_every_cut() {
    let edits = [
        Edit::Add(entry(0)),
        Edit::Add(entry(1)),
        Edit::Add(entry(2)),
    ];
    let (bytes, ends) = journal(&edits);
    for cut in ends[1] + 1..bytes.len() {
        let r = replay_bytes(&bytes[..cut]).unwrap();
        assert!(r.torn_tail, "cut at {cut}");
        assert_eq!(r.catalog.entries(), &[entry(0), entry(1)], "cut at {cut}");
        assert_eq!(r.valid_len, ends[1] as u64);
    }
}

#[test]
fn a_zero_filled_tail_is_torn() {
    let (mut bytes, ends) = journal(&[Edit::Add(entry(0))]);
    bytes.extend_from_slice(&[0u8; 100]);
    let r = replay_bytes(&bytes).unwrap();
    assert!(r.torn_tail);
    assert_eq!(r.valid_len, ends[0] as u64);
}

#[test]
fn damage_before_the_last_record_is_corruption() {
    let edits = [
        Edit::Add(entry(0)),
        Edit::Add(entry(1)),
        Edit::Add(entry(2)),
    ];
    let (bytes, ends) = journal(&edits);
    for at in 0..ends[1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        match replay_bytes(&damaged) {
            Err(e) => assert!(e.is_corrupt(), "flip at {at}: {e}"),
            Ok(r) => panic!("flip at {at} went unnoticed: {:?}", r.catalog.entries()),
        }
    }
}

#[test]
fn a_damaged_snapshot_is_never_mistaken_for_a_torn_append() {
    let (bytes, _) = journal(&[Edit::Snapshot(vec![entry(0), entry(1)])]);
    for at in FILE_HEADER_LEN..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        assert!(
            replay_bytes(&damaged).unwrap_err().is_corrupt(),
            "flip at {at}"
        );
    }
    let cut = &bytes[..bytes.len() - 3];
    assert!(replay_bytes(cut).unwrap_err().is_corrupt());
}

#[test]
fn conflicting_edits_are_corruption() {
    let (bytes, _) = journal(&[
        Edit::Add(entry(1)),
        Edit::Add(entry(0)),
        Edit::Add(entry(2)),
    ]);
    assert!(replay_bytes(&bytes).unwrap_err().is_corrupt());
    let (bytes, _) = journal(&[
        Edit::Add(entry(0)),
        Edit::Remove(vec![entry(5).key]),
        Edit::Add(entry(2)),
    ]);
    assert!(replay_bytes(&bytes).unwrap_err().is_corrupt());
}

#[test]
fn the_file_grows_by_appends_and_compacts_into_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = Catalog::default();
    let mut file = ManifestFile::create(dir.path(), &catalog).unwrap();
    for n in 0..MIN_COMPACT_RECORDS + 5 {
        let e = entry(n);
        file.append(&Edit::Add(e)).unwrap();
        catalog.push(e);
        file.maybe_compact(&catalog).unwrap();
    }
    let path = dir.path().join(MANIFEST_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let (reopened, replayed) = ManifestFile::open(dir.path()).unwrap().unwrap();
    assert_eq!(replayed.entries(), catalog.entries());
    // Compacted once at MIN_COMPACT_RECORDS: the file is a snapshot plus a few adds.
    assert_eq!(reopened.records_since_snapshot, 5);
    let snapshot = Edit::Snapshot(vec![entry(0); MIN_COMPACT_RECORDS as usize])
        .encode()
        .len();
    assert!(len < (FILE_HEADER_LEN + snapshot + 6 * 69) as u64, "{len}");
}

#[test]
fn open_truncates_a_torn_tail_so_later_appends_are_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = ManifestFile::create(dir.path(), &Catalog::default()).unwrap();
    file.append(&Edit::Add(entry(0))).unwrap();
    drop(file);
    let path = dir.path().join(MANIFEST_FILE);
    let mut raw = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    raw.write_all(&Edit::Add(entry(1)).encode()[..20]).unwrap();
    drop(raw);
    let (mut file, catalog) = ManifestFile::open(dir.path()).unwrap().unwrap();
    assert_eq!(catalog.entries(), &[entry(0)]);
    file.append(&Edit::Add(entry(2))).unwrap();
    let (_, catalog) = ManifestFile::open(dir.path()).unwrap().unwrap();
    assert_eq!(catalog.entries(), &[entry(0), entry(2)]);
}

#[test]
fn header_damage_and_unknown_kinds_are_corruption() {
    let (bytes, _) = journal(&[Edit::Add(entry(0))]);
    for len in 0..FILE_HEADER_LEN {
        assert!(
            replay_bytes(&bytes[..len]).unwrap_err().is_corrupt(),
            "len {len}"
        );
    }
    let mut reserved = bytes.clone();
    reserved[10] = 1;
    let crc = crc32c::crc32c(&reserved[..12]);
    reserved[12..16].copy_from_slice(&crc.to_le_bytes());
    assert!(replay_bytes(&reserved).unwrap_err().is_corrupt());
    // A record of an unknown kind whose payload runs past the end is not a torn append.
    let mut unknown = bytes.clone();
    unknown.extend_from_slice(&record_head(1000, 9));
    unknown.extend_from_slice(&[1, 2, 3]);
    assert!(replay_bytes(&unknown).unwrap_err().is_corrupt());
}

#[test]
fn a_flipped_bit_in_the_last_acknowledged_record_is_corruption() {
    let edits = [Edit::Add(entry(0)), Edit::Add(entry(1))];
    let (bytes, ends) = journal(&edits);
    for at in ends[0]..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut damaged = bytes.clone();
            damaged[at] ^= bit;
            match replay_bytes(&damaged) {
                Err(e) => assert!(e.is_corrupt(), "flip at {at}: {e}"),
                Ok(r) => panic!("flip at {at} was taken for a torn tail: {r:?}"),
            }
        }
    }
}

#[test]
fn a_last_record_whose_data_never_reached_the_disk_is_torn() {
    let (mut bytes, ends) = journal(&[Edit::Add(entry(0)), Edit::Add(entry(1))]);
    // The file was extended (length and head written) but the payload and checksum read
    // back as zeros.
    bytes[ends[0] + RECORD_HEAD_LEN..].fill(0);
    let r = replay_bytes(&bytes).unwrap();
    assert!(r.torn_tail);
    assert_eq!(r.catalog.entries(), &[entry(0)]);
    // The same damage before the last record is corruption.
    let (mut bytes, ends) = journal(&[
        Edit::Add(entry(0)),
        Edit::Add(entry(1)),
        Edit::Add(entry(2)),
    ]);
    bytes[ends[0] + RECORD_HEAD_LEN..ends[1]].fill(0);
    assert!(replay_bytes(&bytes).unwrap_err().is_corrupt());
}

#[test]
fn readers_never_modify_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = ManifestFile::create(dir.path(), &Catalog::default()).unwrap();
    file.append(&Edit::Add(entry(0))).unwrap();
    let path = dir.path().join(MANIFEST_FILE);
    let mut raw = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    raw.write_all(&Edit::Add(entry(1)).encode()[..20]).unwrap();
    let before = std::fs::read(&path).unwrap();
    let catalog = load(dir.path()).unwrap().unwrap();
    assert_eq!(catalog.entries(), &[entry(0)]);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "an append in progress was cut"
    );
}

proptest::proptest! {
    /// Replay of arbitrary bytes after a valid header, or of a valid journal with
    /// arbitrary edits, returns a catalog or an error: never a panic.
    #[test]
    fn replaying_arbitrary_bytes_never_panics(
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        edits in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..4),
    ) {
        let mut bytes = file_header().to_vec();
        bytes.extend_from_slice(&noise);
        let _ = replay_bytes(&bytes);
        let (mut journal_bytes, _) = journal(&[Edit::Snapshot(vec![entry(0)]), Edit::Add(entry(1)), Edit::Remove(vec![entry(0).key])]);
        for (at, value) in edits {
            let i = at % journal_bytes.len();
            journal_bytes[i] = value;
        }
        let _ = replay_bytes(&journal_bytes);
    }
}

#[test]
fn a_forks_lineage_round_trips_and_damage_is_caught() {
    let mut catalog = Catalog::from_entries((0..5).map(entry).collect()).unwrap();
    let bases = vec![
        crate::format::NamespaceName::new("origin").unwrap(),
        crate::format::NamespaceName::new("middle").unwrap(),
    ];
    catalog
        .set_lineage(bases.clone(), vec![1, 1, 2, 0, 0], 500)
        .unwrap();
    let bytes = encode_snapshot_file(&catalog).unwrap();
    let mut r = replay_bytes(&bytes).unwrap();
    assert_eq!(r.catalog.entries(), catalog.entries());
    assert_eq!(r.catalog.lineage(), (&bases[..], &[1, 1, 2, 0, 0][..], 500));
    assert_eq!(r.catalog.owner(&entry(2).key), Some(&bases[1]));
    assert_eq!(r.catalog.owner(&entry(3).key), None);
    assert_eq!(r.catalog.durable_frame_no(), 500);
    assert_eq!(
        r.catalog.inherited_from(&bases[0]),
        vec![entry(0).key, entry(1).key]
    );
    // Appends after the lineage are the fork's own, above its floor.
    let late = CatalogEntry {
        key: SegmentKey {
            start_frame_no: 501,
            end_frame_no: 510,
            timestamp: 9_000,
        },
        size: 1,
        last_commit_ts: 9_000,
        base_checksum: 0,
        end_checksum: 0,
    };
    assert!(matches!(
        r.catalog.check_append(&entry(45)),
        Append::Rejected(_)
    ));
    assert_eq!(r.catalog.check_append(&late), Append::New);
    r.catalog.push(late);
    assert_eq!(r.catalog.owner(&late.key), None);
    // A damaged lineage is corruption, not a torn tail.
    for at in bytes.len() - 20..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x10;
        assert!(replay_bytes(&bad).is_err(), "flip at {at}");
    }
    // A lineage that names more entries than the snapshot holds is refused.
    let mut short = Catalog::from_entries((0..4).map(entry).collect()).unwrap();
    assert!(short.set_lineage(bases, vec![1; 5], 0).is_err());
}

#[test]
fn a_lineage_cannot_name_more_owners_than_entries() {
    let mut p = 7u64.to_le_bytes().to_vec();
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        decode_lineage(&p, 10).is_none(),
        "4 billion owners for 10 entries"
    );
    let n = p.len();
    p[n - 4..].copy_from_slice(&10u32.to_le_bytes());
    let (bases, owners, floor) = decode_lineage(&p, 10).unwrap();
    assert_eq!((bases.len(), owners.len(), floor), (0, 10, 7));
}

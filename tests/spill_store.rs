//! A segment held in a spill file is stored by every backend without being loaded:
//! the local backend links (or copies) the file into place, the memory backend loads
//! it, the object backend uploads it in parts read from the file. What is stored is
//! the segment byte for byte.

mod conformance;
mod s3;
mod support;

use std::path::Path;

use conformance::{at, ns, store};
use support::counting::CountingStore;
use walvault::{
    LocalStorage, MemoryStorage, ObjectStorage, SealedSegment, SegmentBuilder, Storage,
};

const PAGE: usize = 4096;

/// One transaction of `pages` pages from frame 1, built with a spill threshold of
/// 64 KiB in `dir`, so it ends up held in a spill file there.
fn spilled(dir: &Path, pages: u32) -> SealedSegment {
    let mut b = SegmentBuilder::new(1, PAGE as u32)
        .unwrap()
        .with_spill(dir, 64 << 10);
    for page in 1..=pages {
        let mut data = vec![(page % 251) as u8; PAGE];
        data[..4].copy_from_slice(&page.to_le_bytes());
        if page == pages {
            b.append_commit(page, &data, pages, at(1_000)).unwrap();
        } else {
            b.append_frame(page, &data).unwrap();
        }
    }
    let segment = b.seal(at(1_000)).unwrap();
    assert!(!segment.is_in_memory(), "the test segment must be spilled");
    segment
}

fn spill_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".spill-"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// The namespace directory's segment file: the spill file itself (a hard link, same
/// inode), byte-identical to the segment; it decodes; the spill name is gone once the
/// segment is dropped and the stored file stays.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_links_a_spilled_segment_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let s = LocalStorage::open(&root).unwrap();
    let name = ns("spilled");
    let spill_dir = s.spill_dir(&name, None);
    assert_eq!(spill_dir, root.join("spilled"));
    let segment = spilled(&spill_dir, 600);
    let expected = segment.load().unwrap();
    let spill_inode = {
        let names = spill_files(&spill_dir);
        assert_eq!(names.len(), 1, "{names:?}");
        inode(&spill_dir.join(&names[0]))
    };
    store(&s, &name, segment.clone()).await.unwrap();
    let file = spill_dir.join(format!("{}.seg", segment.key()));
    assert_eq!(inode(&file), spill_inode, "stored by a hard link");
    assert!(std::fs::read(&file).unwrap() == expected.encoded()[..]);
    drop(segment);
    assert!(spill_files(&spill_dir).is_empty(), "spill file left behind");
    let fetched = LocalStorage::open(&root)
        .unwrap()
        .fetch_segment_data(&name, &expected.key(), None)
        .await
        .unwrap();
    assert!(fetched.encoded() == expected.encoded());
}

/// A spill file on another filesystem than the store (tmpfs) cannot be linked: it is
/// copied, byte for byte, and the copy is a file of its own.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_copies_a_spilled_segment_it_cannot_link() {
    let shm = Path::new("/dev/shm");
    let dir = tempfile::tempdir().unwrap();
    let other = match tempfile::tempdir_in(shm) {
        Ok(other)
            if std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(shm).unwrap())
                != std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(dir.path()).unwrap()) =>
        {
            other
        }
        _ => {
            eprintln!("no second filesystem at /dev/shm; the copy path is not exercised");
            return;
        }
    };
    let s = LocalStorage::open(dir.path().join("store")).unwrap();
    let name = ns("copied");
    let segment = spilled(other.path(), 300);
    let expected = segment.load().unwrap();
    store(&s, &name, segment.clone()).await.unwrap();
    let file = s
        .spill_dir(&name, None)
        .join(format!("{}.seg", segment.key()));
    let spill = other.path().join(&spill_files(other.path())[0]);
    assert_ne!(inode(&file), inode(&spill));
    assert!(std::fs::read(&file).unwrap() == expected.encoded()[..]);
    drop(segment);
    assert!(spill_files(other.path()).is_empty());
    let fetched = s
        .fetch_segment_data(&name, &expected.key(), None)
        .await
        .unwrap();
    assert!(fetched.encoded() == expected.encoded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_loads_a_spilled_segment() {
    let dir = tempfile::tempdir().unwrap();
    let s = MemoryStorage::new();
    let name = ns("spilled");
    let segment = spilled(dir.path(), 300);
    let expected = segment.load().unwrap();
    store(&s, &name, segment.clone()).await.unwrap();
    drop(segment);
    assert!(spill_files(dir.path()).is_empty());
    let fetched = s
        .fetch_segment_data(&name, &expected.key(), None)
        .await
        .unwrap();
    assert!(fetched.is_in_memory());
    assert!(fetched.encoded() == expected.encoded());
}

/// Over a real S3 wire protocol: a spilled segment goes up as a multipart upload (three
/// 5 MiB parts for about 11 MiB), reads back byte for byte, and storing it again is the
/// idempotent no-op it is for a segment in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uploads_a_spilled_segment_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let server = s3::S3Server::start(&dir.path().join("s3"));
    let counted = CountingStore::new(server.client());
    let s = ObjectStorage::new(counted.clone(), "walvault/test").with_multipart_part_size(5 << 20);
    let name = ns("spilled");
    let segment = spilled(&dir.path().join("spill"), 2816);
    assert!(segment.encoded_len() > 10 << 20);
    let expected = segment.load().unwrap();
    store(&s, &name, segment.clone()).await.unwrap();
    let c = counted.counts();
    assert_eq!((c.multipart, c.parts), (1, 3), "{c:?}");
    let fetched = ObjectStorage::new(server.client(), "walvault/test")
        .fetch_segment_data(&name, &expected.key(), None)
        .await
        .unwrap();
    assert!(fetched.encoded() == expected.encoded());
    // The same segment from a new handle (a retried store after a restart): the object
    // there is compared part by part and kept.
    let again =
        ObjectStorage::new(server.client(), "walvault/test").with_multipart_part_size(5 << 20);
    store(&again, &name, segment).await.unwrap();
}

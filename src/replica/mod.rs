//! Replica follow: from any process that can reach the store, watch a namespace's durable
//! frame number, read its committed transactions in order, and keep a local database file
//! in step.
//!
//! Everything here polls the catalog ([`Storage::refresh`] then
//! [`Storage::durable_frame_no`]: one `stat`, and a manifest read only when it changed),
//! never a listing of segment files or objects.

#[cfg(feature = "sqlite")]
mod follower;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::error::{Error, FormatError, Part, Result};
use crate::format::{Commit, CommitTable, NamespaceName, SegmentKey};
use crate::storage::frames::RunReader;
use crate::storage::{FindSegmentReq, Storage};

#[cfg(feature = "sqlite")]
pub use follower::Follower;

/// One committed transaction read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Its commit: frame number, time and database size after it.
    pub commit: Commit,
    /// Its frames in log order: page number and page image (a page may repeat; the later
    /// image wins).
    pub pages: Vec<(u32, Bytes)>,
}

/// The namespace's durable frame number, re-read every `interval`: the current value
/// first, then each new value as it advances. Ends after an error.
pub fn durable_frames<S: Storage + Clone>(
    storage: S,
    namespace: NamespaceName,
    interval: Duration,
) -> impl Stream<Item = Result<u64>> + Send + 'static {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let durable = match current_durable(&storage, &namespace).await {
                Ok(durable) => durable,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            if last != Some(durable) {
                last = Some(durable);
                if tx.send(Ok(durable)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Committed transactions whose commit frame is after `after`, in order, following new
/// durable segments as they appear (checking every `interval`). Ends after an error, for
/// example a gap in the history.
///
/// Segments are read a run of frames at a time, and each transaction is sent as soon as
/// its commit is read, in a buffer of its own: the stream holds one run of frames, the
/// transaction being read and the (at most four) transactions not yet taken. A
/// transaction is returned whole, so one larger than the memory budget is held whole;
/// a [`Follower`] applies transactions of any size in bounded memory.
pub fn transactions<S: Storage + Clone>(
    storage: S,
    namespace: NamespaceName,
    after: u64,
    interval: Duration,
) -> impl Stream<Item = Result<Transaction>> + Send + 'static {
    let (tx, rx) = mpsc::channel(TXN_QUEUE);
    tokio::spawn(async move {
        let mut position = after;
        loop {
            match send_next_segment(&storage, &namespace, &mut position, &tx).await {
                Ok(Sent::Some) => {}
                Ok(Sent::None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = tx.closed() => return,
                    }
                }
                Ok(Sent::Closed) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Transactions [`transactions`] reads ahead of its consumer, at most.
const TXN_QUEUE: usize = 4;

/// What one step of [`transactions`] did.
enum Sent {
    /// Sent at least one transaction.
    Some,
    /// Found nothing new.
    None,
    /// The receiver is gone.
    Closed,
}

/// Sends the durable transactions of the segment after `position`, moving `position`
/// to each one's commit as it goes.
async fn send_next_segment<S: Storage>(
    storage: &S,
    namespace: &NamespaceName,
    position: &mut u64,
    tx: &mpsc::Sender<Result<Transaction>>,
) -> Result<Sent> {
    let durable = current_durable(storage, namespace).await?;
    if durable <= *position {
        return Ok(Sent::None);
    }
    let mut reader = SegmentTxns::open(storage, namespace, *position, durable).await?;
    let mut sent = Sent::None;
    let mut pages = Vec::new();
    while let Some(run) = reader.next_run().await? {
        for frame in run {
            pages.push((frame.page_no, frame.data));
            let Some(commit) = frame.commit else { continue };
            let pages = crate::storage::compact(std::mem::take(&mut pages));
            *position = commit.frame_no;
            if tx.send(Ok(Transaction { commit, pages })).await.is_err() {
                return Ok(Sent::Closed);
            }
            sent = Sent::Some;
        }
    }
    Ok(sent)
}

async fn current_durable<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
) -> Result<u64> {
    storage.refresh(namespace, None).await?;
    storage.durable_frame_no(namespace, None).await
}

/// The key of the stored segment holding the first frame after `position`. Frame
/// numbers may skip (allocator gaps), so when no segment contains `position + 1`, the
/// oldest segment that starts after it is taken.
async fn next_segment_key<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    position: u64,
) -> Result<SegmentKey> {
    let next = position.saturating_add(1);
    let key = match storage
        .find_segment(namespace, FindSegmentReq::Containing(next), None)
        .await
    {
        Ok(key) => key,
        Err(Error::NotFound(_)) => oldest_after(storage, namespace, next).await?,
        Err(e) => return Err(e),
    };
    Ok(key)
}

async fn oldest_after<S: Storage + ?Sized>(
    storage: &S,
    namespace: &NamespaceName,
    frame_no: u64,
) -> Result<SegmentKey> {
    use tokio_stream::StreamExt;
    let listing = storage.list_segments(namespace, frame_no, None);
    tokio::pin!(listing);
    let mut oldest = None;
    while let Some(info) = listing.next().await {
        oldest = Some(info?.key);
    }
    oldest.ok_or_else(|| {
        Error::NotFound(format!(
            "a segment of {namespace} after frame {}",
            frame_no - 1
        ))
    })
}

/// One frame of a transaction being read, with the commit it ends, if it does.
#[derive(Debug)]
pub(crate) struct TxnFrame {
    pub page_no: u32,
    pub data: Bytes,
    pub commit: Option<Commit>,
}

/// The transactions of the stored segment after a position whose commit is in
/// `(after, upto]`, each whole (with its frames at or before `after` too, should
/// `after` fall inside a transaction), read a run of frames at a time: a segment of any
/// size costs one run of memory.
pub(crate) struct SegmentTxns<'a, S: Storage + ?Sized> {
    storage: &'a S,
    namespace: &'a NamespaceName,
    table: CommitTable,
    /// A frame belongs to a wanted transaction when its number is in `(lo, hi]`: after
    /// the last commit at or before `after`, up to the last commit at or before `upto`.
    lo: u64,
    hi: u64,
    frames: RunReader,
    /// Commits of the table met so far.
    commits_met: usize,
}

impl<'a, S: Storage + ?Sized> SegmentTxns<'a, S> {
    /// The transactions of the segment holding the first frame after `after` (or the
    /// oldest one after it), read from its commit table; no frame is read yet.
    pub(crate) async fn open(
        storage: &'a S,
        namespace: &'a NamespaceName,
        after: u64,
        upto: u64,
    ) -> Result<Self> {
        let key = next_segment_key(storage, namespace, after).await?;
        let table = storage.fetch_commit_table(namespace, &key, None).await?;
        let commits = table.commits();
        let last_at = |n: u64| commits.iter().rev().find(|c| c.frame_no <= n);
        let lo = last_at(after).map_or(0, |c| c.frame_no);
        let hi = last_at(upto).map_or(lo, |c| c.frame_no).max(lo);
        // Only a dense segment's positions follow from frame numbers; a sparse one is
        // read from its start, the frames outside `(lo, hi]` dropped.
        let positions = if table.is_sparse() {
            0..table.frame_count()
        } else {
            let at = |n: u64| {
                let p = n.saturating_sub(key.start_frame_no);
                u32::try_from(p).map_or(table.frame_count(), |p| p.min(table.frame_count()))
            };
            at(lo.saturating_add(1))..at(hi.saturating_add(1))
        };
        let commits_met = commits.iter().take_while(|c| c.frame_no <= lo).count();
        Ok(Self {
            storage,
            namespace,
            frames: RunReader::new(key, positions, table.page_size()),
            table,
            lo,
            hi,
            commits_met,
        })
    }

    /// The segment's page size.
    // Used by the SQLite integration only.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn page_size(&self) -> u32 {
        self.table.page_size()
    }

    /// True when the segment holds no commit in `(after, upto]`.
    pub(crate) fn is_empty(&self) -> bool {
        self.hi <= self.lo
    }

    /// The next run's frames of the wanted transactions, in log order, each commit
    /// frame carrying its commit (checked against the commit table); None after the
    /// last.
    pub(crate) async fn next_run(&mut self) -> Result<Option<Vec<TxnFrame>>> {
        if self.is_empty() {
            return Ok(None);
        }
        let Some(run) = self
            .frames
            .next(self.storage, self.namespace, &None)
            .await?
        else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(run.len());
        for frame in run {
            if frame.frame_no <= self.lo || frame.frame_no > self.hi {
                continue;
            }
            let commit = match frame.size_after {
                0 => None,
                size => Some(self.commit_at(frame.frame_no, size)?),
            };
            out.push(TxnFrame {
                page_no: frame.page_no,
                data: frame.data,
                commit,
            });
        }
        Ok(Some(out))
    }

    /// The commit table's next entry, which must be the commit at `frame_no` leaving
    /// `size` pages.
    fn commit_at(&mut self, frame_no: u64, size: u32) -> Result<Commit> {
        let commit = self.table.commits().get(self.commits_met).copied();
        match commit {
            Some(c) if c.frame_no == frame_no && c.size_after == size => {
                self.commits_met += 1;
                Ok(c)
            }
            _ => Err(Error::corrupt(
                format!("segment {} of {}", self.table.key(), self.namespace),
                FormatError::Invalid {
                    part: Part::CommitTable,
                    offset: 0,
                    reason: "a commit frame disagrees with the commit table",
                },
            )),
        }
    }
}

/// The transactions of the segment after `after` whose commit is at most `upto`,
/// collected: what tests compare against.
#[cfg(test)]
pub(crate) async fn transactions_after<S: Storage>(
    storage: &S,
    namespace: &NamespaceName,
    after: u64,
    upto: u64,
) -> Result<Vec<Transaction>> {
    let mut reader = SegmentTxns::open(storage, namespace, after, upto).await?;
    let (mut txns, mut pages) = (Vec::new(), Vec::new());
    while let Some(run) = reader.next_run().await? {
        for frame in run {
            pages.push((frame.page_no, frame.data));
            if let Some(commit) = frame.commit {
                let pages = std::mem::take(&mut pages);
                txns.push(Transaction { commit, pages });
            }
        }
    }
    Ok(txns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{SealedSegment, SegmentBuilder};
    use crate::storage::{on_store, MemoryStorage};

    /// Three transactions: frames 10-11, 12-14 and 15.
    fn segment() -> SealedSegment {
        let mut b = SegmentBuilder::new(10, 512).unwrap();
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for txn in [&[1u32, 2][..], &[3, 1, 4], &[2]] {
            let (last, rest) = txn.split_last().unwrap();
            for &p in rest {
                b.append_frame(p, &[p as u8; 512]).unwrap();
            }
            b.append_commit(*last, &[*last as u8; 512], 4, at).unwrap();
        }
        b.seal(at).unwrap()
    }

    #[tokio::test]
    async fn transactions_are_whole_whatever_frame_they_start_after() {
        let storage = MemoryStorage::new();
        let ns = NamespaceName::new("ns").unwrap();
        let stored = storage.store(&ns, segment(), None, on_store(|_| async {}));
        stored.await.unwrap();
        let read = |after, upto| {
            let (storage, ns) = (storage.clone(), ns.clone());
            async move {
                transactions_after(&storage, &ns, after, upto)
                    .await
                    .unwrap()
            }
        };
        let commits =
            |txns: &[Transaction]| -> Vec<u64> { txns.iter().map(|t| t.commit.frame_no).collect() };
        assert_eq!(commits(&read(0, u64::MAX).await), [11, 14, 15]);
        assert_eq!(commits(&read(11, u64::MAX).await), [14, 15]);
        // After a frame inside the second transaction: it still comes whole.
        let mid = read(12, u64::MAX).await;
        assert_eq!(commits(&mid), [14, 15]);
        let pages: Vec<u32> = mid[0].pages.iter().map(|(p, _)| *p).collect();
        assert_eq!(pages, [3, 1, 4]);
        assert_eq!(mid[0].pages[1].1, Bytes::from(vec![1u8; 512]));
        // Only what is durable: a commit past `upto` is left for later.
        assert_eq!(commits(&read(0, 14).await), [11, 14]);
        assert_eq!(commits(&read(0, 13).await), [11]);
        assert!(read(14, 14).await.is_empty());
    }
}

//! What a log has shipped, for monitoring: counters the submitter keeps as it hands
//! segments to the store, the last time the store answered, and the commits that are
//! not durable yet (for the replication lag).
//!
//! [`LogStats`] is a cheap handle (an `Arc` of atomics) that any task may clone and read
//! while the log runs; reading never blocks the log for longer than a short lock on the
//! list of pending segments.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::format::ms_to_datetime;

/// Counters of one log's shipping. Clones share them. Every counter starts at zero when
/// the log opens (a process's counters, as monitoring systems expect).
#[derive(Debug, Clone)]
pub struct LogStats {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: Arc<dyn Clock>,
    segments_shipped: AtomicU64,
    bytes_shipped: AtomicU64,
    upload_errors: AtomicU64,
    upload_retries: AtomicU64,
    /// Milliseconds since the epoch of the store's last successful answer; 0 for never.
    store_ok_ms: AtomicU64,
    pending: Mutex<Pending>,
}

/// Commits appended but not durable, one entry per segment: its last commit's frame
/// number so far and its first commit's time. Per segment, not per commit, so an outage
/// costs an entry per segment (which the log keeps anyway), not per commit.
#[derive(Debug, Default)]
struct Pending {
    segments: VecDeque<PendingSegment>,
    /// The next commit starts a new segment's entry.
    sealed: bool,
}

#[derive(Debug, Clone, Copy)]
struct PendingSegment {
    last_commit: u64,
    first_commit_ms: u64,
}

impl LogStats {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                clock,
                segments_shipped: AtomicU64::new(0),
                bytes_shipped: AtomicU64::new(0),
                upload_errors: AtomicU64::new(0),
                upload_retries: AtomicU64::new(0),
                store_ok_ms: AtomicU64::new(0),
                pending: Mutex::new(Pending::default()),
            }),
        }
    }

    /// Segments the store reported stored.
    pub fn segments_shipped(&self) -> u64 {
        self.inner.segments_shipped.load(Ordering::Relaxed)
    }

    /// Encoded bytes of the segments the store reported stored.
    pub fn bytes_shipped(&self) -> u64 {
        self.inner.bytes_shipped.load(Ordering::Relaxed)
    }

    /// Attempts to store a segment that failed (each retry that fails counts again).
    pub fn upload_errors(&self) -> u64 {
        self.inner.upload_errors.load(Ordering::Relaxed)
    }

    /// Attempts to store a segment after a failed one.
    pub fn upload_retries(&self) -> u64 {
        self.inner.upload_retries.load(Ordering::Relaxed)
    }

    /// When the store last answered successfully: it reported a segment stored, or
    /// (when the log opened) its durable frame number. None if it never has.
    pub fn store_last_ok(&self) -> Option<DateTime<Utc>> {
        match self.inner.store_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms_to_datetime(ms)),
        }
    }

    /// How long ago the store last answered successfully, by the log's clock. It grows
    /// while there is nothing to ship, too: read it beside [`lag`](Self::lag).
    pub fn since_store_ok(&self) -> Option<Duration> {
        self.store_last_ok().map(|at| self.elapsed_since(at))
    }

    /// The time of the oldest commit appended to the log that is not durable yet; None
    /// when every commit appended is durable. Kept per segment: when the durable
    /// watermark stands inside a segment (briefly, while the local fsync catches up with
    /// the store), this is the segment's first commit, a little older than the truth.
    pub fn oldest_pending_commit(&self) -> Option<DateTime<Utc>> {
        let pending = self.pending();
        pending
            .segments
            .front()
            .map(|s| ms_to_datetime(s.first_commit_ms))
    }

    /// The replication lag: how long ago the oldest commit that is not durable yet was
    /// made ([`oldest_pending_commit`](Self::oldest_pending_commit)), by the log's clock;
    /// zero when every commit appended is durable.
    pub fn lag(&self) -> Duration {
        self.oldest_pending_commit()
            .map_or(Duration::ZERO, |at| self.elapsed_since(at))
    }

    /// Time from `at` to the clock's now; zero if the clock stands before it.
    fn elapsed_since(&self, at: DateTime<Utc>) -> Duration {
        (self.inner.clock.now() - at).to_std().unwrap_or_default()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A transaction committed at frame `frame_no`, stamped `ms`.
    pub(crate) fn committed(&self, frame_no: u64, ms: u64) {
        let mut pending = self.pending();
        let sealed = std::mem::take(&mut pending.sealed);
        match pending.segments.back_mut() {
            Some(last) if !sealed => last.last_commit = frame_no,
            _ => pending.segments.push_back(PendingSegment {
                last_commit: frame_no,
                first_commit_ms: ms,
            }),
        }
    }

    /// The open segment was sealed: the next commit is another segment's.
    pub(crate) fn sealed(&self) {
        self.pending().sealed = true;
    }

    /// A recovered segment, not durable, whose commits run to `last_commit` and start at
    /// `first_commit`.
    pub(crate) fn recovered(&self, last_commit: u64, first_commit: DateTime<Utc>) {
        self.committed(last_commit, first_commit.timestamp_millis().max(1) as u64);
        self.sealed();
    }

    /// The durable watermark reached `frame_no`.
    pub(crate) fn durable(&self, frame_no: u64) {
        let mut pending = self.pending();
        while pending
            .segments
            .front()
            .is_some_and(|s| s.last_commit <= frame_no)
        {
            pending.segments.pop_front();
        }
    }

    /// The store reported a segment of `bytes` stored.
    pub(crate) fn shipped(&self, bytes: u64) {
        self.inner.segments_shipped.fetch_add(1, Ordering::Relaxed);
        self.inner.bytes_shipped.fetch_add(bytes, Ordering::Relaxed);
        self.store_answered();
    }

    /// An attempt to store a segment failed.
    pub(crate) fn upload_failed(&self) {
        self.inner.upload_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A segment is tried again after a failure.
    pub(crate) fn upload_retried(&self) {
        self.inner.upload_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The store answered successfully now.
    pub(crate) fn store_answered(&self) {
        let now = self.inner.clock.now().timestamp_millis().max(1) as u64;
        self.inner.store_ok_ms.fetch_max(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_commit_not_durable() {
        let clock = ManualClock::new(at(0));
        let stats = LogStats::new(Arc::new(clock.clone()));
        assert_eq!(stats.lag(), Duration::ZERO);
        let ms = |secs| at(secs).timestamp_millis() as u64;
        stats.committed(3, ms(0));
        stats.committed(5, ms(1));
        stats.sealed();
        stats.committed(8, ms(2));
        clock.advance(Duration::from_secs(4));
        assert_eq!(stats.lag(), Duration::from_secs(4));
        // Durable within the first segment: it still holds a commit that is not.
        stats.durable(3);
        assert_eq!(stats.oldest_pending_commit(), Some(at(0)));
        stats.durable(5);
        assert_eq!(stats.lag(), Duration::from_secs(2));
        stats.durable(8);
        assert_eq!(stats.lag(), Duration::ZERO);
        assert_eq!(stats.oldest_pending_commit(), None);
    }

    #[test]
    fn the_store_answer_time_never_goes_back() {
        let clock = ManualClock::new(at(10));
        let stats = LogStats::new(Arc::new(clock.clone()));
        assert_eq!(stats.since_store_ok(), None);
        stats.shipped(100);
        clock.set(at(5));
        stats.store_answered();
        assert_eq!(stats.store_last_ok(), Some(at(10)));
        clock.set(at(13));
        assert_eq!(stats.since_store_ok(), Some(Duration::from_secs(3)));
        assert_eq!((stats.segments_shipped(), stats.bytes_shipped()), (1, 100));
    }

    /// Through a real log: the first two stores fail, the third takes the segment.
    #[tokio::test]
    async fn a_log_counts_what_it_shipped_failed_and_retried() {
        use crate::durability::Durability;
        use crate::format::NamespaceName;
        use crate::log::{LogConfig, LogWriter, RetryPolicy};
        use crate::storage::{Faults, FaultyStorage, MemoryStorage};

        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(at(0));
        let store = FaultyStorage::new(
            MemoryStorage::new(),
            Faults {
                fail_calls: vec![1, 2],
                ..Faults::default()
            },
        );
        let config = LogConfig {
            page_size: 512,
            clock: Arc::new(clock.clone()),
            store_retry: RetryPolicy {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
                ..RetryPolicy::default()
            },
            ..LogConfig::new(dir.path().join("log"))
        };
        let ns = NamespaceName::new("stats").unwrap();
        let mut log = LogWriter::open(store.clone(), ns, config).await.unwrap();
        let stats = log.stats().clone();
        assert_eq!(
            stats.store_last_ok(),
            Some(at(0)),
            "the open asked the store"
        );
        let appended = log.append(&[(1, &[7u8; 512])], 1).unwrap();
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            stats.lag(),
            Duration::from_secs(5),
            "the open segment's commit"
        );
        log.seal().unwrap();
        appended.wait(Durability::Durable).await.unwrap();
        assert_eq!(store.store_calls(), 3);
        assert_eq!(stats.upload_errors(), 2);
        assert_eq!(stats.upload_retries(), 2);
        assert_eq!(stats.segments_shipped(), 1);
        assert!(stats.bytes_shipped() > 512, "{}", stats.bytes_shipped());
        assert_eq!(
            stats.lag(),
            Duration::ZERO,
            "everything appended is durable"
        );
        assert_eq!(stats.store_last_ok(), Some(at(5)));
        log.close().await.unwrap();
    }
}

//! Riding out a store outage: how the log's submitter retries a segment the store would
//! not take, and what it tells the operator meanwhile.
//!
//! The local log holds every sealed segment until the store has it, so waiting costs
//! disk, not data: a transient failure (see [`ErrorKind::Transient`](crate::ErrorKind))
//! is retried with capped exponential backoff and jitter for as long as the
//! [`RetryPolicy`] allows (by default, forever). The `Durable` watermark moves only when
//! the store reports a segment stored, so it never moves early, and segments are
//! submitted one at a time in frame order, so it catches up in order.
//!
//! An outage is reported with `tracing` at most once every [`REPORT_EVERY`] (how long the
//! store has been unreachable, how much waits in the local log, the last error), once
//! when the store answers again, and once when the backlog is stored.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::shared::Sealed;
use crate::error::Error;
use crate::random::SeededRng;

/// The longest an outage goes without a log line.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How the log retries a segment the store did not take because of a transient error
/// (an unreachable, failing or throttling store). Every field has a documented default.
///
/// Over a [`StoreScheduler`](crate::StoreScheduler), which accepts a segment at once
/// and uploads it later, the scheduler's own retries
/// ([`SchedulerConfig`](crate::SchedulerConfig)) decide once it has accepted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubles with each failure (with jitter: a random
    /// wait in the upper half). Default 250 ms.
    pub initial_backoff: Duration,
    /// Longest wait between two retries, which is also how long a store that is back
    /// may go unnoticed. Default 5 s.
    pub max_backoff: Duration,
    /// Give up once the store has failed for this long without a success, failing the
    /// log with the last error. Default `None`: never; the local log keeps everything
    /// until the store takes it.
    pub give_up_after: Option<Duration>,
    /// Once the log is closing (or dropped), how long uploads still go on. What is not
    /// stored by then stays in the local log, and the next open submits it again.
    /// Default 10 s.
    pub close_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            give_up_after: None,
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `failures` (1 for the first): a random duration in
    /// the upper half of `initial_backoff * 2^(failures - 1)`, capped at `max_backoff`.
    fn backoff(&self, failures: u32, rng: &SeededRng) -> Duration {
        let doubled = 1u32 << failures.saturating_sub(1).min(20);
        let base = self
            .initial_backoff
            .saturating_mul(doubled)
            .min(self.max_backoff);
        let factor = 0.5 + rng.unit() / 2.0;
        Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
    }
}

/// What waits in the local log for the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Backlog {
    pub segments: usize,
    pub frames: u64,
    pub bytes: u64,
}

impl Backlog {
    pub(crate) fn of(sealed: &[Sealed]) -> Self {
        sealed.iter().fold(Self::default(), |b, s| Self {
            segments: b.segments + 1,
            frames: b.frames + u64::from(s.segment.frame_count()),
            bytes: b.bytes + s.segment.encoded_len(),
        })
    }
}

impl std::fmt::Display for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = if self.segments == 1 { "" } else { "s" };
        write!(
            f,
            "{} segment{plural} ({} frames, {:.1} MiB)",
            self.segments,
            self.frames,
            self.bytes as f64 / f64::from(1u32 << 20)
        )
    }
}

/// Why the submitter stopped retrying a segment.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The error is not transient, or the policy gave up: fail the log with it.
    Failed(Error),
    /// The log is closing and its close timeout passed; the last error, if any.
    Closing(Option<Error>),
}

/// The submitter's retry state across segments: the policy, the current outage, and
/// the log's stop signal.
#[derive(Debug)]
pub(crate) struct Retrier {
    policy: RetryPolicy,
    rng: SeededRng,
    stop: watch::Receiver<bool>,
    stop_seen: Option<Instant>,
    outage: Option<Outage>,
    /// After an outage: stored segments, until the backlog is gone.
    catching_up: Option<usize>,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    failures: u32,
    reported: Instant,
    last: Error,
}

impl Retrier {
    pub(crate) fn new(policy: RetryPolicy, stop: watch::Receiver<bool>, seed: u64) -> Self {
        Self {
            policy,
            rng: SeededRng::new(seed),
            stop,
            stop_seen: None,
            outage: None,
            catching_up: None,
        }
    }

    /// Runs `attempt`, unless the close timeout passes first.
    pub(crate) async fn attempt<T>(
        &mut self,
        attempt: impl std::future::Future<Output = T>,
    ) -> Result<T, Stop> {
        tokio::select! {
            done = attempt => Ok(done),
            () = self.close_deadline() => Err(Stop::Closing(self.last_error())),
        }
    }

    /// An attempt failed with `e`: waits out the backoff, or says why not to retry.
    pub(crate) async fn failed(&mut self, e: Error, backlog: Backlog) -> Result<(), Stop> {
        if !e.is_transient() {
            return Err(Stop::Failed(e));
        }
        let now = Instant::now();
        let outage = self.outage.get_or_insert_with(|| {
            tracing::warn!("store unreachable; retrying until it answers, the local log keeps {backlog}; error: {e}");
            Outage {
                since: now,
                failures: 0,
                reported: now,
                last: e.clone(),
            }
        });
        outage.failures += 1;
        outage.last = e;
        let elapsed = now - outage.since;
        if self
            .policy
            .give_up_after
            .is_some_and(|limit| elapsed >= limit)
        {
            let last = outage.last.clone().gave_up(elapsed, outage.failures);
            return Err(Stop::Failed(last));
        }
        if now - outage.reported >= REPORT_EVERY {
            outage.reported = now;
            tracing::warn!(
                "store unreachable for {:.1} s ({} attempts); {backlog} wait in the local log; last error: {}",
                elapsed.as_secs_f64(),
                outage.failures,
                outage.last
            );
        }
        let wait = self.policy.backoff(outage.failures, &self.rng);
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.close_deadline() => Err(Stop::Closing(self.last_error())),
        }
    }

    /// A segment was stored; `backlog` is what still waits.
    pub(crate) fn stored(&mut self, backlog: Backlog) {
        if let Some(outage) = self.outage.take() {
            tracing::warn!(
                "store reachable again after {:.1} s; {backlog} still to store",
                outage.since.elapsed().as_secs_f64()
            );
            self.catching_up = Some(0);
        }
        if let Some(stored) = &mut self.catching_up {
            *stored += 1;
            if backlog.segments == 0 {
                let plural = if *stored == 1 { "" } else { "s" };
                tracing::warn!("caught up after the outage: {stored} segment{plural} stored");
                self.catching_up = None;
            }
        }
    }

    /// True while the store is failing.
    #[cfg(test)]
    pub(crate) fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// How long uploads go on once the log is closing.
    pub(crate) fn close_timeout(&self) -> Duration {
        self.policy.close_timeout
    }

    fn last_error(&self) -> Option<Error> {
        self.outage.as_ref().map(|o| o.last.clone())
    }

    /// Resolves `close_timeout` after the log began to close; never before that.
    async fn close_deadline(&mut self) {
        let seen = match self.stop_seen {
            Some(seen) => seen,
            None => {
                // A dropped sender means the log is gone: that is a stop too.
                let _ = self.stop.wait_for(|stopping| *stopping).await;
                *self.stop_seen.insert(Instant::now())
            }
        };
        tokio::time::sleep_until(seen + self.policy.close_timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stays_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        let rng = SeededRng::new(7);
        for failures in 1..40 {
            let base = Duration::from_millis(100)
                .saturating_mul(1 << (failures - 1).min(20))
                .min(Duration::from_secs(2));
            let wait = policy.backoff(failures, &rng);
            assert!(wait >= base / 2 && wait <= base, "{failures}: {wait:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried_and_give_up_after_is_kept() {
        let (_tx, rx) = watch::channel(false);
        let policy = RetryPolicy {
            give_up_after: Some(Duration::from_secs(3)),
            ..RetryPolicy::default()
        };
        let mut retry = Retrier::new(policy, rx, 1);
        let denied = Error::Unsupported("no".into());
        assert!(matches!(
            retry.failed(denied, Backlog::default()).await,
            Err(Stop::Failed(_))
        ));
        let transient = || Error::io("writing", std::io::ErrorKind::TimedOut.into());
        let start = Instant::now();
        let gave_up = loop {
            match retry.failed(transient(), Backlog::default()).await {
                Ok(()) => continue,
                Err(stop) => break stop,
            }
        };
        let Stop::Failed(e) = gave_up else {
            panic!("{gave_up:?}")
        };
        assert!(e.to_string().contains("gave up after"), "{e}");
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert!(retry.in_outage());
    }

    #[tokio::test(start_paused = true)]
    async fn closing_bounds_the_retries() {
        let (tx, rx) = watch::channel(false);
        let mut retry = Retrier::new(RetryPolicy::default(), rx, 1);
        tx.send_replace(true);
        let start = Instant::now();
        let never = std::future::pending::<()>();
        assert!(matches!(
            retry.attempt(never).await,
            Err(Stop::Closing(None))
        ));
        assert_eq!(start.elapsed(), RetryPolicy::default().close_timeout);
    }
}

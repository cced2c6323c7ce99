//! Background maintenance beside a writer: compaction in tiers, retention and garbage
//! collection on a schedule, in a task of its own.
//!
//! **Why tiers.** A writer that seals a segment every 100 ms adds 864 000 segments a
//! day; every restore, `ls` and `info` pays for each one. Compacting everything every
//! few seconds would rewrite large segments again and again, and compacting rarely lets
//! thousands of small ones pile up. So each [`Tier`] runs [`compact`] with its own
//! [`CompactionPolicy`] at its own pace, over its own band of sizes (`min_size` up to
//! half its `target_size`): the fast tier (every second) merges only the newest small
//! segments; the minute tier builds segments of megabytes from those, the hour tier
//! segments of a hundred megabytes and more. Each tier's size-tiered cascade rewrites a
//! byte about log_fan_in(target / input size) times, and its `max_small` bounds how many
//! segments remain in its band after it runs. So the count in a namespace stays below
//! the sum of the tiers' `max_small`, plus what arrives in a band between two runs of
//! its tier, plus the final segments (one per 128 MiB or more of history with the
//! default tiers), which grow with history alone.
//!
//! **What stays restorable.** The tiers' policies have precision zero, so merged
//! segments keep every commit with its frame number and time: a restore by frame or by
//! time gives the same database before and after.
//!
//! **Failure.** A task that fails (a store outage, an edit that lost a race) is logged
//! with `tracing::warn` and runs again at its next due time; it never stops the writer.
//!
//! **Time.** What is due is a pure function of the [`Schedule`] and the time the
//! injected [`Clock`] gives ([`Schedule::due`]), so tests and simulations drive the
//! schedule with a [`ManualClock`](crate::ManualClock) and [`Maintainer::run_due`],
//! without sleeping. Only [`Maintainer::spawn`]'s loop sleeps, for the time the clock
//! says is left.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{apply_retention, compact, CompactionPolicy};
use crate::clock::Clock;
use crate::error::{Error, InvalidInput, Result};
use crate::format::NamespaceName;
use crate::storage::{GcOptions, Storage};

/// The longest the background loop sleeps before it reads the clock again, so a clock
/// that steps (or a due time far off) is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// One compaction tier: how often it runs and what it merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    /// The pause between the end of one run and the start of the next.
    pub every: Duration,
    /// What a run merges. Segments of at least half `target_size` are left alone, so a
    /// fast tier with a small target touches only the newest small segments.
    pub policy: CompactionPolicy,
}

/// What the background maintainer does, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// Compaction tiers, fastest first ([`MaintenanceConfig::default_tiers`]); empty to
    /// only collect garbage.
    pub tiers: Vec<Tier>,
    /// How often retention (if set) and garbage collection run.
    pub collect_every: Duration,
    /// Retired segments are deleted only once retired this long (see [`GcOptions`]).
    pub grace: Duration,
    /// Keep this point-in-time window and drop older history (see [`apply_retention`]).
    pub retain: Option<Duration>,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            tiers: Self::default_tiers(),
            collect_every: Duration::from_secs(600),
            grace: GcOptions::default().grace,
            retain: None,
        }
    }
}

impl MaintenanceConfig {
    /// Three tiers, every commit kept (precision zero), each owning a band of sizes:
    ///
    /// | every | merges segments of | fan-in | at most left in its band |
    /// |---|---|---|---|
    /// | 1 s | below 512 KiB | 8 | 8 |
    /// | 1 min | 512 KiB to 32 MiB | 8 | 8 |
    /// | 1 h | 32 MiB to 128 MiB | 8 | 4 |
    ///
    /// Segments of 128 MiB or more are final. The fast tier runs every second so that
    /// at most a second of seals (10 at the daemon's cadence) waits for it; a slower
    /// tier leaves the faster tiers' bands alone, so it never rewrites its own newest
    /// segment just to absorb theirs. A merge holds one input and its output in memory,
    /// which caps the hour tier's target at 256 MiB.
    pub fn default_tiers() -> Vec<Tier> {
        let tier = |secs, min_size, target_size, max_small| Tier {
            every: Duration::from_secs(secs),
            policy: CompactionPolicy {
                target_size,
                fan_in: 8,
                max_small,
                precision: Duration::ZERO,
                min_size,
            },
        };
        vec![
            tier(1, 0, 1 << 20, 8),
            tier(60, 512 << 10, 64 << 20, 8),
            tier(3600, 32 << 20, 256 << 20, 4),
        ]
    }

    /// Refuses a period of zero and a policy [`compact`] would refuse.
    pub fn check(&self) -> Result<()> {
        let zero = |what: String| -> Result<()> {
            Err(InvalidInput::Config(format!("{what} must be above zero")).into())
        };
        for (i, tier) in self.tiers.iter().enumerate() {
            if tier.every.is_zero() {
                return zero(format!("compaction tier {i}'s period"));
            }
            tier.policy.check()?;
        }
        if self.collect_every.is_zero() {
            return zero("the garbage collection period".into());
        }
        Ok(())
    }
}

/// A piece of maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Compaction by tier `i` of [`MaintenanceConfig::tiers`].
    Compact(usize),
    /// Retention (if configured), then garbage collection.
    Collect,
}

/// When each task is next due. Pure bookkeeping: no clock, no storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Per tier, then the collection task: (next due time, period).
    next: Vec<(DateTime<Utc>, chrono::Duration)>,
}

impl Schedule {
    /// Every task first due one period after `start`.
    pub fn new(config: &MaintenanceConfig, start: DateTime<Utc>) -> Self {
        let periods = config
            .tiers
            .iter()
            .map(|t| t.every)
            .chain([config.collect_every]);
        let next = periods
            .map(|every| {
                let every = chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
                (add(start, every), every)
            })
            .collect();
        Self { next }
    }

    /// The tasks due at `now`, tiers fastest first, collection last. A task is also due
    /// if `now` is before its last run (its due time is more than a period ahead): the
    /// clock stepped back, and waiting for it to catch up would stall maintenance.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<Task> {
        self.next
            .iter()
            .enumerate()
            .filter(|(_, &(at, every))| at <= now || at > add(now, every))
            .map(|(i, _)| self.task(i))
            .collect()
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.next.iter().map(|&(at, _)| at).min()
    }

    /// Records that `task` ran (or failed) and finished at `now`: it is next due one
    /// period later. A failed task so retries at its next due time, not at once.
    pub fn ran(&mut self, task: Task, now: DateTime<Utc>) {
        let i = match task {
            Task::Compact(i) => i,
            Task::Collect => self.next.len() - 1,
        };
        if let Some((at, every)) = self.next.get_mut(i) {
            *at = add(now, *every);
        }
    }

    fn task(&self, i: usize) -> Task {
        if i + 1 == self.next.len() {
            Task::Collect
        } else {
            Task::Compact(i)
        }
    }
}

fn add(at: DateTime<Utc>, by: chrono::Duration) -> DateTime<Utc> {
    at.checked_add_signed(by)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// What one task did.
#[derive(Debug, Clone)]
pub struct TaskReport {
    /// The task.
    pub task: Task,
    /// Merges done (compaction and retention).
    pub merges: usize,
    /// Segments those merges replaced.
    pub segments_merged: usize,
    /// Bytes those merges read.
    pub bytes_read: u64,
    /// Bytes those merges wrote: the write amplification's numerator.
    pub bytes_written: u64,
    /// Retention dropped history.
    pub history_dropped: bool,
    /// Segments garbage collection deleted (retired and orphans).
    pub deleted: usize,
    /// Segments in the namespace after a compaction.
    pub segments_after: Option<usize>,
    /// Why the task failed, if it did; it runs again at its next due time.
    pub error: Option<Error>,
}

impl TaskReport {
    fn new(task: Task) -> Self {
        Self {
            task,
            merges: 0,
            segments_merged: 0,
            bytes_read: 0,
            bytes_written: 0,
            history_dropped: false,
            deleted: 0,
            segments_after: None,
            error: None,
        }
    }

    /// Whether the task changed anything in the store.
    pub fn changed(&self) -> bool {
        self.merges > 0 || self.history_dropped || self.deleted > 0
    }
}

/// Runs maintenance on one namespace when it is due by its clock.
///
/// On the local backend only the writer's process may edit a namespace's manifest, so
/// give this the writer's own store handle (a clone of it) and run it in that process.
#[derive(Debug)]
pub struct Maintainer<S> {
    storage: S,
    namespace: NamespaceName,
    config: MaintenanceConfig,
    clock: Arc<dyn Clock>,
    schedule: Schedule,
}

impl<S: Storage> Maintainer<S> {
    /// A maintainer whose tasks are first due one period from the clock's `now`.
    pub fn new(
        storage: S,
        namespace: NamespaceName,
        config: MaintenanceConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        config.check()?;
        let schedule = Schedule::new(&config, clock.now());
        Ok(Self {
            storage,
            namespace,
            config,
            clock,
            schedule,
        })
    }

    /// When each task is next due.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The store this maintains.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Runs the tasks due now by the clock, in [`Schedule::due`]'s order. A failure is
    /// logged and reported, and the other due tasks still run.
    pub async fn run_due(&mut self) -> Vec<TaskReport> {
        let mut reports = Vec::new();
        for task in self.schedule.due(self.clock.now()) {
            let report = self.run(task).await;
            self.schedule.ran(task, self.clock.now());
            reports.push(report);
        }
        reports
    }

    /// Runs one task now, whether due or not (the schedule is not changed).
    pub async fn run(&self, task: Task) -> TaskReport {
        let mut report = TaskReport::new(task);
        let outcome = match task {
            Task::Compact(tier) => self.compact(tier, &mut report).await,
            Task::Collect => self.collect(&mut report).await,
        };
        if let Err(e) = outcome {
            tracing::warn!(namespace = %self.namespace, ?task, error = %e,
                "background maintenance failed; it runs again at its next due time");
            report.error = Some(e);
        } else if report.changed() {
            tracing::debug!(namespace = %self.namespace, ?task, merges = report.merges,
                segments = report.segments_merged, deleted = report.deleted,
                "background maintenance");
        }
        report
    }

    async fn compact(&self, tier: usize, report: &mut TaskReport) -> Result<()> {
        let Some(tier) = self.config.tiers.get(tier) else {
            return Ok(());
        };
        let done = compact(&self.storage, &self.namespace, &tier.policy, false).await?;
        report.segments_after = Some(done.segments_after);
        for m in &done.merges {
            report.merges += 1;
            report.segments_merged += m.inputs.len();
            report.bytes_read += m.input_bytes;
            report.bytes_written += m.output_bytes;
        }
        Ok(())
    }

    async fn collect(&self, report: &mut TaskReport) -> Result<()> {
        if let Some(window) = self.config.retain {
            let dropped = apply_retention(
                &self.storage,
                &self.namespace,
                window,
                self.clock.now(),
                false,
            )
            .await?;
            if let Some(m) = dropped.merge {
                report.history_dropped = true;
                report.merges += 1;
                report.segments_merged += m.inputs.len();
                report.bytes_read += m.input_bytes;
                report.bytes_written += m.output_bytes;
            }
        }
        let options = GcOptions {
            grace: self.config.grace,
            dry_run: false,
        };
        let gc = self
            .storage
            .collect_garbage(&self.namespace, options, None)
            .await?;
        report.deleted = gc.deleted.len() + gc.orphans.len();
        Ok(())
    }

    /// How long until the next task is due by the clock (at most a minute, so a clock
    /// that steps is noticed).
    fn until_next_due(&self) -> Duration {
        let Some(at) = self.schedule.next_due() else {
            return MAX_SLEEP;
        };
        (at - self.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP)
    }
}

impl<S: Storage> Maintainer<S> {
    /// Runs the schedule in a tokio task of its own until [`MaintainerHandle::stop`]:
    /// sleeps until a task is due, runs what is due, and calls `on_report` with each
    /// task's report. The writer's polls never wait for a merge; they wait only for
    /// the catalog edit that swaps one in, as for any store.
    pub fn spawn<F>(self, on_report: F) -> MaintainerHandle
    where
        F: Fn(&TaskReport) + Send + Sync + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let join = tokio::spawn(self.run_loop(stopped, on_report));
        MaintainerHandle { stop, join }
    }

    async fn run_loop<F: Fn(&TaskReport) + Send + Sync>(
        mut self,
        mut stop: watch::Receiver<bool>,
        on_report: F,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.until_next_due()) => {}
                _ = stop.changed() => return,
            }
            // A stop interrupts a merge: the merged segment only exists once swapped in
            // by one catalog edit, which runs to completion or not at all, so nothing is
            // left half done (an output written but never catalogued is an orphan that
            // garbage collection deletes).
            tokio::select! {
                reports = self.run_due() => reports.iter().for_each(&on_report),
                _ = stop.changed() => return,
            }
        }
    }
}

/// The running background maintainer; [`stop`](MaintainerHandle::stop) ends it.
#[derive(Debug)]
pub struct MaintainerHandle {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl MaintainerHandle {
    /// Stops the maintainer, interrupting a merge in progress, and waits for its task
    /// to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.join.await {
            if e.is_panic() {
                tracing::warn!("background maintenance panicked: {e}");
            }
        }
    }
}

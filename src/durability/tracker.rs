//! The durability tracker: per namespace, three watermarks that only move forward, and the
//! ways to learn when they pass a frame number.
//!
//! Waiters are kept in one ordered map per level, keyed by the frame they wait for, so
//! moving a watermark wakes exactly the waiters it satisfies (`O(k log n)`), however many
//! others are registered. Closing the tracker, or a fatal storage error, wakes every
//! waiter with an error that says why: no waiter hangs.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

use crate::error::{Error, InvalidInput, Result};
use crate::storage::OnStoreCallback;

/// How safe a frame is. Levels are ordered: `Applied < Written < Durable`, and a frame
/// at one level is at every lower level too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Durability {
    /// Accepted in memory; lost if the process crashes.
    Applied,
    /// In a local file that is fsynced; survives a process or machine crash, not the
    /// loss of the disk.
    Written,
    /// Stored in the backend; survives the loss of this machine.
    Durable,
}

impl std::str::FromStr for Durability {
    type Err = Error;

    /// `applied`, `written` or `durable`, in any case.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "applied" => Ok(Durability::Applied),
            "written" => Ok(Durability::Written),
            "durable" => Ok(Durability::Durable),
            _ => Err(InvalidInput::Config(format!(
                "durability {text:?}: use applied, written or durable"
            ))
            .into()),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Applied => "applied",
            Durability::Written => "written",
            Durability::Durable => "durable",
        })
    }
}

impl Durability {
    const ALL: [Durability; 3] = [
        Durability::Applied,
        Durability::Written,
        Durability::Durable,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Tracks the watermarks of one namespace. Cloning gives another handle on the same
/// tracker.
#[derive(Debug, Clone)]
pub struct DurabilityTracker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    published: watch::Sender<Published>,
    /// Runs callbacks one at a time, in the order they became due.
    callbacks: OnceLock<mpsc::UnboundedSender<(OnStoreCallback, u64)>>,
}

/// What subscribers see: the durable watermark, and why the tracker closed, if it did.
#[derive(Debug, Clone)]
struct Published {
    durable: u64,
    closed: Option<Error>,
}

type Waiters = BTreeMap<u64, Vec<oneshot::Sender<Result<u64>>>>;

#[derive(Default)]
struct State {
    marks: [u64; 3],
    waiters: [Waiters; 3],
    callbacks: BTreeMap<u64, Vec<OnStoreCallback>>,
    closed: Option<Error>,
    /// No frame after this one will ever exist (the log was closed).
    last_frame: Option<u64>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("marks", &self.marks)
            .field(
                "waiters",
                &self.waiters.iter().map(BTreeMap::len).collect::<Vec<_>>(),
            )
            .field("callbacks", &self.callbacks.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl DurabilityTracker {
    /// A tracker whose three watermarks start at `frame_no` (0 when nothing is known).
    pub fn new(frame_no: u64) -> Self {
        let (published, _) = watch::channel(Published {
            durable: frame_no,
            closed: None,
        });
        let state = State {
            marks: [frame_no; 3],
            ..State::default()
        };
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                published,
                callbacks: OnceLock::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current watermark of `level`.
    pub fn watermark(&self, level: Durability) -> u64 {
        self.state().marks[level.index()]
    }

    /// Moves the watermark of `level` (and of every lower level that is behind it) to
    /// `frame_no`, waking the waiters and running the callbacks it satisfies. Moving a
    /// watermark backwards is a bug in the caller: it is reported and not applied.
    pub fn advance(&self, level: Durability, frame_no: u64) -> Result<()> {
        let mut state = self.state();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        let current = state.marks[level.index()];
        if frame_no < current {
            tracing::error!(
                ?level,
                current,
                frame_no,
                "refusing to move a watermark backwards"
            );
            return Err(InvalidInput::FrameNo {
                frame_no,
                reason: "a watermark cannot move backwards",
            }
            .into());
        }
        for lower in Durability::ALL.into_iter().filter(|l| *l <= level) {
            let i = lower.index();
            let mark = state.marks[i].max(frame_no);
            state.marks[i] = mark;
            wake(&mut state.waiters[i], mark);
        }
        if level == Durability::Durable {
            // Published and queued under the lock, so that concurrent advances reach
            // subscribers and callbacks in watermark order.
            let due = take_through(&mut state.callbacks, frame_no);
            self.shared.published.send_modify(|p| p.durable = frame_no);
            self.run_callbacks(due, frame_no);
        }
        Ok(())
    }

    /// Resolves once the watermark of `level` reaches `frame_no`, with the watermark's
    /// value then; or with the reason the tracker closed.
    pub fn wait(
        &self,
        frame_no: u64,
        level: Durability,
    ) -> impl Future<Output = Result<u64>> + Send + 'static {
        let ready = {
            let mut state = self.state();
            let mark = state.marks[level.index()];
            if mark >= frame_no {
                Ok(Ok(mark))
            } else if let Some(reason) = &state.closed {
                Ok(Err(reason.clone()))
            } else if state.last_frame.is_some_and(|last| frame_no > last) {
                Ok(Err(Error::Closed))
            } else {
                let (tx, rx) = oneshot::channel();
                state.waiters[level.index()]
                    .entry(frame_no)
                    .or_default()
                    .push(tx);
                Err(rx)
            }
        };
        async move {
            match ready {
                Ok(done) => done,
                Err(rx) => rx.await.unwrap_or(Err(Error::Closed)),
            }
        }
    }

    /// Calls `callback` once, with the durable watermark, when it reaches `frame_no` (at
    /// once if it already has). Callbacks run one at a time on the tokio runtime this is
    /// first called from: those due at one advance run in frame order, and the durable
    /// frame numbers callbacks receive never decrease. If the tracker closes first, the
    /// callback is dropped without being called.
    pub fn on_durable(&self, frame_no: u64, callback: OnStoreCallback) -> Result<()> {
        let mut state = self.state();
        if let Some(reason) = &state.closed {
            return Err(reason.clone());
        }
        self.callback_runner()?;
        let durable = state.marks[Durability::Durable.index()];
        if durable >= frame_no {
            self.run_callbacks(vec![callback], durable);
        } else {
            state.callbacks.entry(frame_no).or_default().push(callback);
        }
        Ok(())
    }

    /// A stream of the durable watermark: its current value, then each new value (a
    /// subscriber that falls behind sees the newest). It ends with the close reason.
    pub fn subscribe(&self) -> DurableStream {
        DurableStream {
            inner: WatchStream::new(self.shared.published.subscribe()),
            done: false,
        }
    }

    /// Closes the tracker: every waiter and subscriber gets [`Error::Closed`].
    pub fn close(&self) {
        self.fail(Error::Closed);
    }

    /// Closes the tracker with `reason` (for example a storage error that retries could
    /// not overcome): every waiter and subscriber gets it. Later calls change nothing.
    pub fn fail(&self, reason: Error) {
        let mut state = self.state();
        if state.closed.is_some() {
            return;
        }
        state.closed = Some(reason.clone());
        for waiters in &mut state.waiters {
            for tx in std::mem::take(waiters).into_values().flatten() {
                let _ = tx.send(Err(reason.clone()));
            }
        }
        state.callbacks.clear();
        drop(state);
        self.shared
            .published
            .send_modify(|p| p.closed = Some(reason));
    }

    /// Declares that no frame after `last_frame` will ever exist (the log was closed):
    /// waiters for later frames, now and from now on, get [`Error::Closed`]. Waiters for
    /// earlier frames keep waiting for their level.
    pub fn end_at(&self, last_frame: u64) {
        let mut state = self.state();
        state.last_frame = Some(state.last_frame.map_or(last_frame, |l| l.min(last_frame)));
        for waiters in &mut state.waiters {
            let Some(after) = last_frame.checked_add(1) else {
                continue;
            };
            for tx in waiters.split_off(&after).into_values().flatten() {
                let _ = tx.send(Err(Error::Closed));
            }
        }
    }

    /// The reason the tracker closed, if it did.
    pub fn closed(&self) -> Option<Error> {
        self.state().closed.clone()
    }

    fn callback_runner(&self) -> Result<&mpsc::UnboundedSender<(OnStoreCallback, u64)>> {
        if let Some(tx) = self.shared.callbacks.get() {
            return Ok(tx);
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::from(InvalidInput::Config(
                "durability callbacks need a tokio runtime".into(),
            ))
        })?;
        Ok(self.shared.callbacks.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(OnStoreCallback, u64)>();
            rt.spawn(async move {
                while let Some((callback, durable)) = rx.recv().await {
                    // Run each in its own task: a panicking callback must not stop the rest.
                    if let Err(e) = tokio::spawn(callback(durable)).await {
                        tracing::error!(error = %e, "a durability callback panicked");
                    }
                }
            });
            tx
        }))
    }

    fn run_callbacks(&self, due: Vec<OnStoreCallback>, durable: u64) {
        if due.is_empty() {
            return;
        }
        match self.callback_runner() {
            Ok(tx) => due.into_iter().for_each(|cb| {
                let _ = tx.send((cb, durable));
            }),
            Err(e) => tracing::error!(error = %e, "dropping durability callbacks"),
        }
    }
}

/// Wakes every waiter for a frame at or below `mark`.
fn wake(waiters: &mut Waiters, mark: u64) {
    for tx in take_through(waiters, mark) {
        let _ = tx.send(Ok(mark));
    }
}

/// Removes and returns, in key order, the values of every key at or below `through`.
fn take_through<T>(map: &mut BTreeMap<u64, Vec<T>>, through: u64) -> Vec<T> {
    let later = match through.checked_add(1) {
        Some(next) => map.split_off(&next),
        None => BTreeMap::new(),
    };
    std::mem::replace(map, later)
        .into_values()
        .flatten()
        .collect()
}

/// The stream returned by [`DurabilityTracker::subscribe`].
pub struct DurableStream {
    inner: WatchStream<Published>,
    done: bool,
}

impl Stream for DurableStream {
    type Item = Result<u64>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<u64>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Published {
                closed: Some(reason),
                ..
            })) => {
                self.done = true;
                Poll::Ready(Some(Err(reason)))
            }
            Poll::Ready(Some(p)) => Poll::Ready(Some(Ok(p.durable))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests;

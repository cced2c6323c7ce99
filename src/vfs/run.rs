//! SQLite calls the VFS synchronously, from the application's threads; the stores are
//! async. The VFS runs its reads on a small runtime of its own and the calling thread
//! waits for each answer. A thread that is itself a tokio worker (an async application
//! running a query inline) can wait this way too: the work never runs on the thread
//! that waits.

use std::future::Future;
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};

/// Worker threads: enough for one read while another is parsed; the concurrency of
/// ranged reads comes from the backends' own request pipelining, not from threads.
const WORKERS: usize = 2;

/// A read that takes longer than this fails (`SQLITE_IOERR`) instead of hanging the
/// SQLite call: a store that stopped answering.
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// The runtime of this process. A child made by `fork()` (Python's multiprocessing) has
/// none of its parent's threads, so it makes its own: the runtime is per process id.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    let pid = std::process::id();
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return Ok(rt);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .thread_name("walvault-vfs")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the VFS's runtime", e))?;
    // Kept for the life of the process (a parent's runtime, in a forked child, is never
    // dropped: its threads are not there to stop).
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

async fn deadline<T, F>(work: F) -> T
where
    T: Send + 'static + From<RunError>,
    F: Future<Output = T> + Send + 'static,
{
    tokio::time::timeout(READ_DEADLINE, work)
        .await
        .unwrap_or_else(|_| {
            T::from(RunError(Error::io(
                "reading from the store",
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {}s", READ_DEADLINE.as_secs()),
                ),
            )))
        })
}

/// Runs `work` on the VFS's runtime and waits for it.
pub(crate) fn block<T, F>(work: F) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
    T: From<RunError>,
{
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return T::from(RunError(e)),
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let work = deadline(work);
    rt.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().unwrap_or_else(|_| {
        T::from(RunError(Error::io(
            "waiting for the VFS's runtime",
            std::io::Error::other("the read was dropped before it finished"),
        )))
    })
}

/// Starts `work` on the VFS's runtime; its result arrives on the receiver (or the
/// runtime's error, if it could not start).
pub(crate) fn spawn<T, F>(work: F) -> mpsc::Receiver<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
    T: From<RunError>,
{
    let (tx, rx) = mpsc::sync_channel(1);
    match runtime() {
        Ok(rt) => {
            let work = deadline(work);
            rt.spawn(async move {
                let _ = tx.send(work.await);
            });
        }
        Err(e) => {
            let _ = tx.send(T::from(RunError(e)));
        }
    }
    rx
}

/// The runtime could not run a read: becomes the read's own error type.
pub(crate) struct RunError(pub(crate) Error);

impl<T> From<RunError> for Result<T> {
    fn from(e: RunError) -> Self {
        Err(e.0)
    }
}

impl<T> From<RunError> for Vec<Result<T>> {
    fn from(e: RunError) -> Self {
        vec![Err(e.0)]
    }
}

//! SQLite calls the VFS synchronously, from the application's threads; the stores are
//! async. The VFS runs its reads on a small runtime of its own and the calling thread
//! waits for each answer. A thread that is itself a tokio worker (an async application
//! running a query inline) can wait this way too: the work never runs on the thread
//! that waits.

use std::future::Future;
use std::sync::mpsc;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Worker threads: enough for one read while another is parsed; the concurrency of
/// ranged reads comes from the backends' own request pipelining, not from threads.
const WORKERS: usize = 2;

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        OnceLock::new();
    let made = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("walvault-vfs")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    made.as_ref().map_err(|e| {
        Error::io(
            "starting the VFS's runtime",
            std::io::Error::other(e.clone()),
        )
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

//! Bounded concurrency for requests to an object store, within the calling task.
//!
//! An object-store request spends nearly all its time waiting on the network, so the way
//! to go faster is to have several in flight. The futures here are polled by the task
//! that awaits them rather than spawned: they may borrow the caller's data, no runtime
//! has to be at hand, and dropping the caller's future cancels them all. The work between
//! the waits (checksums) is small beside the transfers.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

use crate::error::Result;

/// Runs `futures`, at most `limit` at a time (at least one), and returns their outputs in
/// the order given.
pub(super) async fn ordered<F: Future>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
) -> Vec<F::Output> {
    run(futures, limit, |_| false).await
}

/// Like [`ordered`] for fallible futures, but stops at the first error (dropping, and so
/// cancelling, the futures still running) and returns it.
pub(super) async fn try_ordered<T, F: Future<Output = Result<T>>>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
) -> Result<Vec<T>> {
    run(futures, limit, |r: &Result<T>| r.is_err())
        .await
        .into_iter()
        .collect()
}

/// The outputs in order; when `stop` holds for an output, that output is the last one
/// returned and the futures not yet finished are dropped.
async fn run<F: Future>(
    futures: impl IntoIterator<Item = F>,
    limit: usize,
    stop: impl Fn(&F::Output) -> bool,
) -> Vec<F::Output> {
    let mut waiting = futures.into_iter().enumerate();
    let mut running: Vec<(usize, Pin<Box<F>>)> = Vec::new();
    let mut done: Vec<Option<F::Output>> = Vec::new();
    let mut stopped = None;
    poll_fn(|cx| loop {
        while running.len() < limit.max(1) {
            let Some((i, future)) = waiting.next() else {
                break;
            };
            running.push((i, Box::pin(future)));
        }
        if running.is_empty() || stopped.is_some() {
            return Poll::Ready(());
        }
        let before = running.len();
        let mut j = 0;
        while j < running.len() {
            let (i, future) = &mut running[j];
            let Poll::Ready(output) = future.as_mut().poll(cx) else {
                j += 1;
                continue;
            };
            let i = *i;
            if stop(&output) {
                stopped = Some(i);
            }
            if done.len() <= i {
                done.resize_with(i + 1, || None);
            }
            done[i] = Some(output);
            running.swap_remove(j);
        }
        if running.len() == before {
            return Poll::Pending;
        }
    })
    .await;
    drop(running);
    match stopped {
        // Only the failure: the outputs before it may be incomplete.
        Some(i) => done.swap_remove(i).into_iter().collect(),
        // Every future ran to completion, so every slot is filled.
        None => done.into_iter().flatten().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn outputs_keep_their_order_and_the_limit_holds() {
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let tasks = (0..20u64).map(|i| {
            let (now, peak) = (&now, &peak);
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(running, Ordering::SeqCst);
                // Later ones finish first, so order comes from the indexes.
                tokio::time::sleep(Duration::from_millis(20 - i)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                i
            }
        });
        let out = ordered(tasks, 4).await;
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_first_error_stops_the_rest() {
        let started = AtomicUsize::new(0);
        let tasks = (0..10u64).map(|i| {
            let started = &started;
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 2 {
                    return Err(crate::Error::NotFound(format!("#{i}")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(i)
            }
        });
        let err = try_ordered(tasks, 3).await.unwrap_err();
        assert!(err.to_string().contains("#2"), "{err}");
        assert_eq!(started.load(Ordering::SeqCst), 3);
        let none: Vec<std::future::Ready<Result<u8>>> = Vec::new();
        assert!(try_ordered(none, 0).await.unwrap().is_empty());
    }
}

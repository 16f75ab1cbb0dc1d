//! HTTP/2 streams driven inside their connection's task instead of as tasks of their own.
//!
//! hyper's HTTP/2 server hands every stream's future (the service's future, then the answer's body) to
//! its executor; hyper-util's `TokioExecutor` spawns a task for each. `StreamExecutor` is the executor
//! instead: it queues the futures, and `ConnectionStreams` polls them beside the connection, in the
//! connection's task. Per stream that saves a task (its allocation, its trips through the runtime's
//! queue, the wake-ups between it and the connection's task), and the answers of all the streams that
//! became ready in one poll are written in the connection's next flush, in the same poll.
//!
//! It is not a scheduler: a stream is polled only when it was woken (`FuturesUnordered`), and a
//! connection's streams all run on its thread, as they did before (each worker thread runs a
//! current-thread runtime, `workers`). A stream can outlive its connection (the client went away while
//! its request was with an instance): it is driven to its end after the connection's, in the same task.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: it queues the futures hyper gives it for `ConnectionStreams`.
#[derive(Clone, Default)]
pub(super) struct StreamExecutor {
    queued: Arc<Mutex<Vec<StreamFuture>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        // A stream that panics ends alone, as its own task did: the unwinding stops at its future
        // (whose drop resets the stream), not at the connection's task.
        // Allocated first, then written: made in its box rather than on the stack and copied there.
        let future = Box::write(
            Box::new_uninit(),
            AssertUnwindSafe(future).catch_unwind().map(|_| ()),
        );
        let future: StreamFuture = Box::into_pin(future);
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(future);
    }
}

/// The streams of one connection, polled in its task.
pub(super) struct ConnectionStreams {
    executor: StreamExecutor,
    running: FuturesUnordered<StreamFuture>,
    /// Moved out of the executor's queue under its lock, so the lock is not held while they are polled
    /// (a stream's poll can start another through hyper).
    taken: Vec<StreamFuture>,
}

/// How many times one poll goes round the connection and its streams before it yields: each round
/// writes the answers of the streams the previous one finished and starts the streams the client sent
/// meanwhile.
const ROUNDS_PER_POLL: usize = 4;

impl ConnectionStreams {
    pub(super) fn new(executor: StreamExecutor) -> ConnectionStreams {
        ConnectionStreams {
            executor,
            running: FuturesUnordered::new(),
            taken: Vec::new(),
        }
    }

    /// Polls `connection`, then its streams (those it just started, those woken), then `connection`
    /// again while that finished streams (their answers are then written in this poll, not after a
    /// wake-up). Ready with the connection's output when it ends; its streams may still be running
    /// (`finish`).
    pub(super) fn poll_with<C: Future>(
        &mut self,
        mut connection: Pin<&mut C>,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        for _ in 0..ROUNDS_PER_POLL {
            if let Poll::Ready(output) = connection.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            // Every stream the connection started is polled before this returns: nothing else would
            // wake a future that was never polled.
            if !self.run(cx) {
                return Poll::Pending;
            }
        }
        // Still busy: the next poll comes after the runtime's other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Drives the streams that are left to their ends (after the connection ended).
    pub(super) async fn finish(&mut self) {
        std::future::poll_fn(|cx| {
            self.run(cx);
            if self.running.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Starts the queued streams and polls those that are due. True when one was started or one
    /// ended, that is when the connection may have something new to write or to read.
    fn run(&mut self, cx: &mut Context<'_>) -> bool {
        {
            let mut queued = self
                .executor
                .queued
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut self.taken, &mut *queued);
        }
        let started = !self.taken.is_empty();
        self.running.extend(self.taken.drain(..));
        let mut ended = false;
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {
            ended = true;
        }
        started || ended
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::rt::Executor;

    use super::*;

    /// A stand-in for hyper's connection: on its first poll it starts `streams` streams, each counting
    /// `ran` when it is first polled and ending when `release` is sent; it ends when told to.
    fn connection(
        executor: StreamExecutor,
        streams: usize,
        ran: Arc<AtomicUsize>,
        release: tokio::sync::watch::Receiver<bool>,
        end: tokio::sync::watch::Receiver<bool>,
    ) -> impl Future<Output = ()> {
        let mut started = false;
        let mut end = Box::pin(async move {
            let mut end = end;
            let _ = end.wait_for(|end| *end).await;
        });
        std::future::poll_fn(move |cx| {
            if !started {
                started = true;
                for _ in 0..streams {
                    let ran = Arc::clone(&ran);
                    let mut release = release.clone();
                    executor.execute(async move {
                        ran.fetch_add(1, Ordering::Relaxed);
                        let _ = release.wait_for(|release| *release).await;
                    });
                }
            }
            end.as_mut().poll(cx)
        })
    }

    #[tokio::test]
    async fn streams_a_connection_starts_run_in_the_same_poll_and_outlive_it() {
        let executor = StreamExecutor::default();
        let ran = Arc::new(AtomicUsize::new(0));
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let (end, end_rx) = tokio::sync::watch::channel(false);
        let connection = connection(executor.clone(), 3, Arc::clone(&ran), release_rx, end_rx);
        tokio::pin!(connection);
        let mut streams = ConnectionStreams::new(executor);
        let poll =
            std::future::poll_fn(|cx| Poll::Ready(streams.poll_with(connection.as_mut(), cx)))
                .await;
        assert!(poll.is_pending());
        assert_eq!(
            ran.load(Ordering::Relaxed),
            3,
            "every stream was polled once"
        );
        // The connection ends first; its streams still run to their ends.
        let _ = end.send(true);
        std::future::poll_fn(|cx| streams.poll_with(connection.as_mut(), cx)).await;
        assert_eq!(streams.running.len(), 3);
        let _ = release.send(true);
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.finish())
            .await
            .expect("the streams end once released");
        assert!(streams.running.is_empty());
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_alone() {
        let executor = StreamExecutor::default();
        let done = Arc::new(AtomicUsize::new(0));
        executor.execute(async { panic!("a stream's bug") });
        let counted = Arc::clone(&done);
        executor.execute(async move {
            tokio::task::yield_now().await;
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let mut streams = ConnectionStreams::new(executor);
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.finish())
            .await
            .expect("both streams end");
        assert_eq!(done.load(Ordering::Relaxed), 1);
    }
}

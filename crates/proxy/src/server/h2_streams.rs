//! HTTP/2 streams driven inside their connection's task instead of as tasks of their own.
//!
//! hyper's HTTP/2 server hands every stream's future (the service's future, then the answer's body) to
//! its executor; hyper-util's `TokioExecutor` spawns a task for each. `StreamExecutor` is the executor
//! instead: it queues the futures, and `ConnectionStreams` polls them beside the connection, in the
//! connection's task. Per stream that saves a task (its allocation, its trips through the runtime's
//! queue, the wake-ups between it and the connection's task), and the answers of all the streams that
//! became ready in one poll are written in the connection's next flush, in the same poll.
//!
//! The futures are held by their type, not boxed: hyper gives one type of future per connection (its
//! stream future, `H2Stream`), for which the first one makes the connection's typed lane (a
//! `FuturesUnordered` of that type behind `dyn Lane`, one allocation per connection instead of a box
//! per stream), and each is pushed into it as it is given (one move of it). The type cannot be named
//! here (hyper does not export it, and it holds the executor, so an executor generic over it would be
//! of infinite size). A future of another type (none in hyper 1.12's server, which gives CONNECT
//! upgrades to the executor only with extended CONNECT, not enabled), or one given while the lane is
//! being polled, goes to a boxed lane.
//!
//! It is not a scheduler: a stream is polled only when it was woken (`FuturesUnordered`), and a
//! connection's streams all run on its thread, as they did before (each worker thread runs a
//! current-thread runtime, `workers`). A stream can outlive its connection (the client went away while
//! its request was with an instance): it is driven to its end after the connection's, in the same task.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use futures_util::stream::{FuturesUnordered, StreamExt};

type BoxedStream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: it hands the futures hyper gives it to `ConnectionStreams`.
#[derive(Clone, Default)]
pub(super) struct StreamExecutor {
    shared: Arc<Mutex<Shared>>,
}

/// What the executor and `ConnectionStreams` share.
#[derive(Default)]
struct Shared {
    /// The running futures of the type of the first future given (a `TypedLane`): a future of that
    /// type is pushed here as it is given, with one move. `ConnectionStreams` takes the lane out while
    /// it polls it (`lane_out`), so the lock is not held then.
    typed: Option<Box<dyn Lane>>,
    lane_out: bool,
    /// Futures of any other type, or given while the lane is out (a stream's poll can start another
    /// through hyper).
    boxed: Vec<BoxedStream>,
}

impl StreamExecutor {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let mut shared = self.lock();
        let shared = &mut *shared;
        if let Some(lane) = shared
            .typed
            .as_mut()
            .and_then(|lane| lane.as_any_mut().downcast_mut::<TypedLane<F>>())
        {
            lane.push(future);
        } else if shared.typed.is_none() && !shared.lane_out {
            let mut lane = TypedLane::<F>::default();
            lane.push(future);
            shared.typed = Some(Box::new(lane));
        } else {
            shared.boxed.push(Box::pin(future));
        }
    }
}

/// The running futures of one type.
trait Lane: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Polls the futures that are due. True when one was started since the last run, or one ended.
    fn run(&mut self, cx: &mut Context<'_>) -> bool;
    fn len(&self) -> usize;
}

struct TypedLane<F> {
    /// A stream that panics ends alone, as its own task did: the unwinding stops at its future (whose
    /// drop resets the stream), not at the connection's task.
    running: FuturesUnordered<CatchUnwind<AssertUnwindSafe<F>>>,
    /// A future was pushed since the last run.
    started: bool,
}

impl<F> Default for TypedLane<F> {
    fn default() -> TypedLane<F> {
        TypedLane {
            running: FuturesUnordered::new(),
            started: false,
        }
    }
}

impl<F> TypedLane<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    fn push(&mut self, future: F) {
        self.running.push(AssertUnwindSafe(future).catch_unwind());
        self.started = true;
    }
}

impl<F> Lane for TypedLane<F>
where
    F: Future<Output = ()> + Send + 'static,
{
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn run(&mut self, cx: &mut Context<'_>) -> bool {
        let started = std::mem::take(&mut self.started);
        let mut ended = false;
        while let Poll::Ready(Some(_)) = self.running.poll_next_unpin(cx) {
            ended = true;
        }
        started || ended
    }

    fn len(&self) -> usize {
        self.running.len()
    }
}

/// The streams of one connection, polled in its task.
pub(super) struct ConnectionStreams {
    executor: StreamExecutor,
    boxed: TypedLane<BoxedStream>,
    /// Moved out of the executor's boxed queue under its lock (swapped, so both keep their capacity).
    boxed_taken: Vec<BoxedStream>,
}

/// How many times one poll goes round the connection and its streams before it yields: each round
/// writes the answers of the streams the previous one finished and starts the streams the client sent
/// meanwhile.
const ROUNDS_PER_POLL: usize = 4;

impl ConnectionStreams {
    pub(super) fn new(executor: StreamExecutor) -> ConnectionStreams {
        ConnectionStreams {
            executor,
            boxed: TypedLane::default(),
            boxed_taken: Vec::new(),
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
            if self.len() == 0 {
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
        let typed = {
            let mut shared = self.executor.lock();
            let lane = shared.typed.take();
            shared.lane_out = lane.is_some();
            lane
        };
        let mut progressed = false;
        {
            let typed = typed.map(|mut lane| {
                progressed = lane.run(cx);
                lane
            });
            let mut shared = self.executor.lock();
            if typed.is_some() {
                shared.typed = typed;
                shared.lane_out = false;
            }
            // Taken after the typed lane ran, so that a future its streams gave is started now.
            std::mem::swap(&mut self.boxed_taken, &mut shared.boxed);
        }
        if self.boxed_taken.is_empty() && self.boxed.len() == 0 {
            return progressed;
        }
        for future in self.boxed_taken.drain(..) {
            self.boxed.push(future);
        }
        progressed |= self.boxed.run(cx);
        if !self.executor.lock().boxed.is_empty() {
            // Given while the boxed lane ran: started by the next run, which is due.
            cx.waker().wake_by_ref();
            progressed = true;
        }
        progressed
    }

    /// The streams running or queued: those of hyper's type, those boxed.
    fn lanes(&self) -> (Option<usize>, usize) {
        let shared = self.executor.lock();
        let typed = shared.typed.as_ref().map(|lane| lane.len());
        (typed, self.boxed.len() + shared.boxed.len())
    }

    fn len(&self) -> usize {
        let (typed, boxed) = self.lanes();
        typed.unwrap_or(0) + boxed
    }
}

impl Drop for ConnectionStreams {
    /// Drops the futures still held by the executor (the task ended before they did): each holds a
    /// clone of the executor, which holds it.
    fn drop(&mut self) {
        let queued = std::mem::take(&mut *self.executor.lock());
        drop(queued);
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
        assert_eq!(streams.len(), 3);
        assert_eq!(
            streams.lanes(),
            (Some(3), 0),
            "hyper's futures, of one type, are held unboxed"
        );
        let _ = release.send(true);
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.finish())
            .await
            .expect("the streams end once released");
        assert_eq!(streams.len(), 0);
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

    #[tokio::test]
    async fn futures_of_another_type_than_the_first_run_boxed() {
        let executor = StreamExecutor::default();
        let (release, release_rx) = tokio::sync::watch::channel(false);
        let first = |mut release: tokio::sync::watch::Receiver<bool>| async move {
            let _ = release.wait_for(|release| *release).await;
        };
        executor.execute(first(release_rx.clone()));
        executor.execute(first(release_rx.clone()));
        let mut other = release_rx.clone();
        executor.execute(async move {
            let _ = other.wait_for(|release| *release).await;
        });
        let mut streams = ConnectionStreams::new(executor.clone());
        std::future::poll_fn(|cx| Poll::Ready(streams.run(cx))).await;
        assert_eq!(streams.lanes(), (Some(2), 1));
        // One more of the first type, given after the lane was taken, joins it.
        executor.execute(first(release_rx));
        std::future::poll_fn(|cx| Poll::Ready(streams.run(cx))).await;
        assert_eq!(streams.lanes().0, Some(3));
        let _ = release.send(true);
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.finish())
            .await
            .expect("every stream ends once released");
    }

    #[test]
    fn futures_left_with_the_executor_are_dropped_with_the_streams() {
        let executor = StreamExecutor::default();
        let held = Arc::new(());
        let (typed, boxed) = (Arc::clone(&held), Arc::clone(&held));
        executor.execute(async move {
            drop(typed);
        });
        executor.execute(async move {
            drop(boxed);
            std::future::ready(()).await;
        });
        let streams = ConnectionStreams::new(executor.clone());
        assert_eq!(streams.lanes(), (Some(1), 1));
        assert_eq!(Arc::strong_count(&held), 3);
        drop(streams);
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "both futures were dropped, not kept by the executor they hold"
        );
    }

    #[tokio::test]
    async fn a_future_given_while_the_lane_is_polled_runs_boxed() {
        let executor = StreamExecutor::default();
        let done = Arc::new(AtomicUsize::new(0));
        let (inner_executor, counted) = (executor.clone(), Arc::clone(&done));
        let outer: BoxedStream = Box::pin(async move {
            let inner: BoxedStream = Box::pin(async move {
                counted.fetch_add(1, Ordering::Relaxed);
            });
            // The lane of `BoxedStream`s is out, being polled: this one waits in the boxed queue.
            inner_executor.execute(inner);
        });
        executor.execute(outer);
        let mut streams = ConnectionStreams::new(executor);
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.finish())
            .await
            .expect("both streams end");
        assert_eq!(done.load(Ordering::Relaxed), 1);
        assert_eq!(streams.lanes(), (Some(0), 0));
    }
}

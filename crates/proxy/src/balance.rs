//! Keeps the workers' client connections even (`crate::workers`).
//!
//! The kernel spreads new connections over the workers' `SO_REUSEPORT` listeners by a hash of their
//! addresses, not by load: 64 connections come out 22 / 42 often enough, and two HTTP/2 connections from
//! a load balancer in front land on one worker one time in two, leaving the other core idle while every
//! request waits on one thread. So each worker counts the client connections it serves, and one that
//! accepts a connection while it serves more than the least busy worker (by two, and by a sixteenth of
//! that worker's count) hands the connection to that worker instead, as HAProxy's listener queues do.
//! The connection has sent nothing the proxy read yet: the other worker registers the socket with its own
//! runtime and serves it from the start. A connection that stays where it was accepted costs two atomic
//! loads and an increment.
//!
//! Counts are taken when a connection is placed (by the worker that accepted it, for the worker that will
//! serve it, so a burst of accepts sees its own placements) and given back when the connection's task
//! ends, on the thread that served it (`Counted`, a field of the connection's task; each worker thread
//! knows its counter through `enter`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The client connections each worker serves.
#[derive(Debug)]
pub(crate) struct Balance {
    open: Box<[Counter]>,
}

/// One worker's count, on a cache line of its own: every accept and close of that worker writes it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counter(AtomicUsize);

impl Balance {
    pub(crate) fn new(workers: usize) -> Arc<Balance> {
        Arc::new(Balance {
            open: (0..workers.max(1)).map(|_| Counter::default()).collect(),
        })
    }

    /// The client connections each worker serves now.
    pub(crate) fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|count| count.0.load(Ordering::Relaxed))
            .collect()
    }

    /// Where a connection accepted by worker `here` should be served: `here`, or the least busy worker
    /// when `here` serves more than it by two and by a sixteenth of its count. The choice is counted.
    fn place(&self, here: usize) -> usize {
        let mine = self.open[here].0.load(Ordering::Relaxed);
        let (least, fewest) = self
            .open
            .iter()
            .enumerate()
            .map(|(index, count)| (index, count.0.load(Ordering::Relaxed)))
            .min_by_key(|&(_, count)| count)
            .unwrap_or((here, mine));
        let chosen = if mine >= fewest + 2 + fewest / 16 {
            least
        } else {
            here
        };
        self.open[chosen].0.fetch_add(1, Ordering::Relaxed);
        chosen
    }

    fn closed(&self, worker: usize) {
        self.open[worker].0.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection counted for worker `from` is served by worker `to` after all.
    fn moved(&self, from: usize, to: usize) {
        self.closed(from);
        self.open[to].0.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    // The balance this worker thread counts its connections in, and its index there.
    static WORKER: RefCell<Option<(Arc<Balance>, usize)>> = const { RefCell::new(None) };
}

/// Marks this thread as worker `index` of `balance`: connections served here count there.
pub(crate) fn enter(balance: Arc<Balance>, index: usize) {
    WORKER.with(|worker| *worker.borrow_mut() = Some((balance, index)));
}

/// A connection counted for the worker that serves it, given back when its task ends (a field of the
/// connection's task; no bytes). On threads that are not workers, nothing was counted and nothing is
/// given back.
#[derive(Debug)]
pub(crate) struct Counted(());

impl Counted {
    /// The count `Balancer::place` (or `Balancer::handed`) took for this connection on this thread.
    pub(crate) fn taken() -> Counted {
        Counted(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        WORKER.with(|worker| {
            if let Some((balance, index)) = worker.borrow().as_ref() {
                balance.closed(*index);
            }
        });
    }
}

/// A connection accepted by one worker for another to serve.
#[derive(Debug)]
pub(crate) struct Handed {
    stream: std::net::TcpStream,
    client_addr: SocketAddr,
}

/// One worker's end of the balance for one kind of listener (plain or HTTPS): where its accepted
/// connections go, and the connections other workers hand it.
#[derive(Debug)]
pub(crate) struct Balancer {
    balance: Arc<Balance>,
    index: usize,
    peers: Arc<[mpsc::UnboundedSender<Handed>]>,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// The balancers of `balance`'s workers for one kind of listener, worker `i`'s at index `i`.
pub(crate) fn balancers(balance: &Arc<Balance>) -> Vec<Balancer> {
    let (senders, inboxes): (Vec<_>, Vec<_>) = (0..balance.open.len())
        .map(|_| mpsc::unbounded_channel())
        .unzip();
    let peers: Arc<[mpsc::UnboundedSender<Handed>]> = senders.into();
    inboxes
        .into_iter()
        .enumerate()
        .map(|(index, inbox)| Balancer {
            balance: Arc::clone(balance),
            index,
            peers: Arc::clone(&peers),
            inbox,
        })
        .collect()
}

impl Balancer {
    /// Places a connection this worker accepted: `Some` to serve it here (counted), `None` when it was
    /// handed to a less busy worker.
    pub(crate) fn place(
        &self,
        stream: TcpStream,
        client_addr: SocketAddr,
    ) -> Option<(TcpStream, SocketAddr)> {
        let chosen = self.balance.place(self.index);
        if chosen == self.index {
            return Some((stream, client_addr));
        }
        if self.peers[chosen].is_closed() {
            // That worker serves no listener of this kind, or stopped accepting: serve it here.
            self.balance.moved(chosen, self.index);
            return Some((stream, client_addr));
        }
        // Out of this runtime's reactor, to be registered with the other worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                // The socket is gone with the failed deregistration; nothing to serve.
                self.balance.closed(chosen);
                tracing::debug!(message = "Handing a connection to another worker failed.", %error);
                return None;
            }
        };
        match self.peers[chosen].send(Handed {
            stream,
            client_addr,
        }) {
            Ok(()) => None,
            Err(mpsc::error::SendError(handed)) => {
                // That worker stopped accepting (a shutdown): serve it here after all.
                self.balance.moved(chosen, self.index);
                self.adopt(handed)
            }
        }
    }

    /// The next connection another worker handed this one (counted for this worker already); waits
    /// forever when none will come.
    pub(crate) async fn handed(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let handed = self.inbox.recv().await?;
        self.adopt(handed)
    }

    /// Stops taking connections from other workers and returns those already handed (to be served:
    /// a worker that hands one after this serves it itself).
    pub(crate) fn close(&mut self) -> Vec<(TcpStream, SocketAddr)> {
        self.inbox.close();
        let mut left = Vec::new();
        while let Ok(handed) = self.inbox.try_recv() {
            left.extend(self.adopt(handed));
        }
        left
    }

    fn adopt(&self, handed: Handed) -> Option<(TcpStream, SocketAddr)> {
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => Some((stream, handed.client_addr)),
            Err(error) => {
                self.balance.closed(self.index);
                tracing::debug!(message = "Taking a connection from another worker failed.", %error);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_keeps_what_it_accepts_until_it_serves_two_more_than_the_least_busy() {
        let balance = Balance::new(2);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.open(), [2, 0]);
        // Two more than worker 1: the next goes there.
        assert_eq!(balance.place(0), 1);
        assert_eq!(balance.open(), [2, 1]);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 1);
        // Every accept on one listener still ends even.
        for _ in 0..100 {
            balance.place(0);
        }
        let open = balance.open();
        assert_eq!(open.iter().sum::<usize>(), 105);
        assert!(open[0].abs_diff(open[1]) <= 2 + open[1] / 16, "{open:?}");
        balance.closed(1);
        assert_eq!(balance.open().iter().sum::<usize>(), 104);
    }

    #[test]
    fn with_many_connections_the_slack_grows_with_the_count() {
        let balance = Balance::new(2);
        for _ in 0..64 {
            balance.open[1].0.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..64 {
            balance.open[0].0.fetch_add(1, Ordering::Relaxed);
        }
        // 64 against 64: 64 < 64 + 2 + 4, so worker 0 keeps the next few.
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 0);
        assert_eq!(balance.place(0), 0);
        // 70 >= 64 + 2 + 4: on to worker 1.
        assert_eq!(balance.place(0), 1);
    }

    async fn accepted(listener: &tokio::net::TcpListener) -> (TcpStream, SocketAddr) {
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        // The client end goes away with the test; the proxy's end is what is placed.
        drop(client.expect("connect"));
        accepted.expect("accept")
    }

    #[tokio::test]
    async fn a_worker_that_stops_serves_what_was_handed_to_it_and_takes_no_more() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let balance = Balance::new(2);
        let mut balancers = balancers(&balance).into_iter();
        let (first, mut second) = (
            balancers.next().expect("worker 0"),
            balancers.next().expect("worker 1"),
        );
        balance.open[0].0.fetch_add(2, Ordering::Relaxed);
        let (stream, addr) = accepted(&listener).await;
        assert!(first.place(stream, addr).is_none(), "handed to worker 1");
        assert_eq!(balance.open(), [2, 1]);
        // Worker 1 stops accepting: what it was handed is served, not dropped.
        let left = second.close();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, addr);
        // Worker 0 now serves what it accepts itself, counted for itself.
        balance.open[0].0.fetch_add(2, Ordering::Relaxed);
        let (stream, addr) = accepted(&listener).await;
        assert!(first.place(stream, addr).is_some(), "kept by worker 0");
        assert_eq!(balance.open(), [5, 1]);
    }

    #[test]
    fn one_worker_keeps_everything() {
        let balance = Balance::new(1);
        for _ in 0..10 {
            assert_eq!(balance.place(0), 0);
        }
        assert_eq!(balance.open(), [10]);
    }
}

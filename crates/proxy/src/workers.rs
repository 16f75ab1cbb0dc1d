//! Thread-per-core serving, as nginx's workers do: N threads, each with its own current-thread tokio
//! runtime and its own `SO_REUSEPORT` listener on the one data address, all sharing one `Proxy` (its
//! routing snapshot and counters are lock-free and shared by every thread).
//!
//! A request and the upstream connection it is sent on (the pool keeps a shard per worker, see
//! `upstream::ConnectionPool`; an HTTP/1 connection is driven by the request's own task, an h2c one by its
//! driver task) live on the thread that serves the client, so handing the request to the upstream
//! connection and the answer back never wakes another thread. The kernel spreads new connections over the
//! listeners by a hash; `crate::balance` hands a worker's new connection to a less busy worker when the
//! spread is uneven.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::balance::{self, Balance, Balancer};
use crate::control::Proxy;

pub use crate::shard::default_workers;
use crate::shard::set_worker;

/// The data listener as `workers` sockets bound to one address with `SO_REUSEPORT`.
#[derive(Debug)]
pub struct DataListeners {
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
}

impl DataListeners {
    /// Binds `workers` (at least one) listening sockets to `addr`; with port 0 the first picks the port
    /// and the others join it. Call within a tokio runtime.
    pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<DataListeners> {
        let workers = workers.max(1);
        // SO_REUSEPORT would let a second proxy of the same user bind this port too and silently
        // take half its connections: first make sure nothing listens here, with a plain bind.
        if addr.port() != 0 {
            let probe = std::net::TcpListener::bind(addr).map_err(|error| {
                io::Error::new(error.kind(), format!("`{addr}` is already in use: {error}"))
            })?;
            drop(probe);
        }
        let mut listeners = Vec::with_capacity(workers);
        let mut local_addr = addr;
        for _ in 0..workers {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // As `TcpListener::bind` does, so a restart does not wait for TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(local_addr)?;
            let listener = socket.listen(1024)?;
            local_addr = listener.local_addr()?;
            listeners.push(listener.into_std()?);
        }
        Ok(DataListeners {
            listeners,
            local_addr,
        })
    }

    /// Listeners handed over by another process (`crate::handover`): every descriptor must be a
    /// listening TCP socket, all on one address.
    pub fn from_fds(fds: Vec<OwnedFd>) -> io::Result<DataListeners> {
        let mut listeners = Vec::with_capacity(fds.len());
        let mut local_addr = None;
        for fd in fds {
            let accepting = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
            let listener = std::net::TcpListener::from(fd);
            let addr = listener.local_addr().map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("a handed-over descriptor is not a TCP socket: {error}"),
                )
            })?;
            if !accepting {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the handed-over socket on `{addr}` is not listening"),
                ));
            }
            match local_addr {
                None => local_addr = Some(addr),
                Some(first) if first != addr => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "handed-over listeners are on `{first}` and `{addr}`, not one address"
                        ),
                    ));
                }
                Some(_) => {}
            }
            listener.set_nonblocking(true)?;
            listeners.push(listener);
        }
        let local_addr = local_addr.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no listener was handed over")
        })?;
        Ok(DataListeners {
            listeners,
            local_addr,
        })
    }

    /// Duplicates of the listening sockets, to hand over or to hold while a proxy restarts.
    pub fn duplicate(&self) -> io::Result<Vec<OwnedFd>> {
        self.listeners
            .iter()
            .map(|listener| listener.as_fd().try_clone_to_owned())
            .collect()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many sockets (and so workers) there are.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

/// Running workers. Dropping this cuts them: each runtime is dropped with what it still runs.
#[derive(Debug)]
pub struct Workers {
    done: Vec<oneshot::Receiver<io::Result<()>>>,
    cut: CancellationToken,
    balance: Arc<Balance>,
}

/// Starts one worker thread per listener, each serving plain HTTP (`crate::serve`) on its listener until
/// `shutdown` is cancelled.
pub fn serve(
    listeners: DataListeners,
    proxy: Proxy,
    shutdown: CancellationToken,
) -> io::Result<Workers> {
    serve_with_https(listeners, None, proxy, shutdown)
}

/// As `serve`, and HTTPS (`crate::serve_https`) on `https`: worker `i` serves the `i`-th listener of
/// each, so an HTTPS request's upstream connection stays on its thread too.
pub fn serve_with_https(
    listeners: DataListeners,
    https: Option<DataListeners>,
    proxy: Proxy,
    shutdown: CancellationToken,
) -> io::Result<Workers> {
    let count = listeners
        .listeners
        .len()
        .max(https.as_ref().map_or(0, DataListeners::len));
    // One count of client connections per worker for both listeners; a hand-over channel per listener.
    let balance = Balance::new(count);
    proxy.set_balance(Arc::clone(&balance));
    let mut workers = Workers {
        done: Vec::with_capacity(count),
        cut: CancellationToken::new(),
        balance: Arc::clone(&balance),
    };
    let mut plain = listeners.listeners.into_iter();
    let mut tls = https
        .map(|https| https.listeners)
        .unwrap_or_default()
        .into_iter();
    let mut plain_balancers = balance::balancers(&balance).into_iter();
    let mut tls_balancers = balance::balancers(&balance).into_iter();
    for index in 0..count {
        let (sender, receiver) = oneshot::channel();
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        let cut = workers.cut.clone();
        let plain = plain.next().zip(plain_balancers.next());
        let tls = tls.next().zip(tls_balancers.next());
        let balance = Arc::clone(&balance);
        thread::Builder::new()
            .name(format!("proxy-worker-{index}"))
            .spawn(move || {
                set_worker(index + 1);
                balance::enter(balance, index);
                let _ = sender.send(run_worker(plain, tls, proxy, shutdown, cut));
            })?;
        workers.done.push(receiver);
    }
    Ok(workers)
}

fn run_worker(
    plain: Option<(std::net::TcpListener, Balancer)>,
    tls: Option<(std::net::TcpListener, Balancer)>,
    proxy: Proxy,
    shutdown: CancellationToken,
    cut: CancellationToken,
) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let plain = plain
            .map(|(listener, balancer)| {
                Ok::<_, io::Error>((TcpListener::from_std(listener)?, balancer))
            })
            .transpose()?;
        let tls = tls
            .map(|(listener, balancer)| {
                Ok::<_, io::Error>((TcpListener::from_std(listener)?, balancer))
            })
            .transpose()?;
        // A warm of a new instance (`crate::warm`) opens this thread's connections to it here.
        proxy.register_worker(tokio::runtime::Handle::current());
        // One sweep of this thread's idle upstream connections for both listeners.
        let _sweep = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            crate::server::sweep_idle_upstreams(proxy.clone()),
        ));
        let serve_plain = async {
            match plain {
                Some((listener, balancer)) => {
                    let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
                    crate::server::serve_balanced(listener, proxy, shutdown, false, balancer).await
                }
                None => Ok(()),
            }
        };
        let serve_tls = async {
            match tls {
                Some((listener, balancer)) => {
                    let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
                    crate::server::serve_balanced(listener, proxy, shutdown, true, balancer).await
                }
                None => Ok(()),
            }
        };
        tokio::select! {
            (plain, tls) = async { tokio::join!(serve_plain, serve_tls) } => plain.and(tls),
            () = cut.cancelled() => Ok(()),
        }
    });
    // Ends what is left on this thread: idle upstream connections' tasks, and after a cut, requests.
    drop(runtime);
    result
}

impl Workers {
    /// The client connections each worker serves now (plain and HTTPS), worker `i` at index `i`.
    pub fn connections(&self) -> Vec<usize> {
        self.balance.open()
    }

    /// Waits until every worker has stopped: after `shutdown`, once its last connection closed.
    pub async fn wait(mut self) -> io::Result<()> {
        let mut result = Ok(());
        for done in &mut self.done {
            let outcome = done
                .await
                .unwrap_or_else(|_| Err(io::Error::other("a proxy worker thread panicked")));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::ProxyConfig;

    /// Sends one request on `stream` and reads its answer (the proxy answers 404: no route); returns the
    /// head.
    async fn answered(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: nothing.test\r\n\r\n")
            .await
            .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            assert_eq!(read, 1, "the connection closed before its answer: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |length| length.trim().parse().expect("a length"));
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.expect("the body");
        head
    }

    async fn until(workers: &Workers, expected: &[usize]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while workers.connections() != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the workers' connections stayed {:?}, not {expected:?}",
                workers.connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn connections_the_kernel_gives_one_worker_are_served_by_both() {
        // Two listeners on two ports, as if the kernel's hash put every connection on worker 0's.
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            listener
        };
        let (first, second) = (bind(), bind());
        let addr = first.local_addr().expect("addr");
        let listeners = DataListeners {
            listeners: vec![first, second],
            local_addr: addr,
        };
        let shutdown = CancellationToken::new();
        let proxy = Proxy::new(ProxyConfig::default());
        let workers = serve(listeners, proxy.clone(), shutdown.clone()).expect("workers");

        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let head = answered(&mut client).await;
            assert!(head.starts_with("HTTP/1.1 404"), "{head}");
            clients.push(client);
        }
        // Worker 0 keeps a connection until it serves two more than worker 1 (without the balance:
        // [20, 0]).
        assert_eq!(workers.connections(), [11, 9]);
        let metrics = crate::metrics::render(&proxy);
        assert!(
            metrics.contains("rollway_proxy_worker_connections{worker=\"0\"} 11\n")
                && metrics.contains("rollway_proxy_worker_connections{worker=\"1\"} 9\n"),
            "{metrics}"
        );
        // Each is served on, on whichever worker it went to.
        for client in &mut clients {
            assert!(answered(client).await.starts_with("HTTP/1.1 404"));
        }
        // Counts are given back as connections close, on the worker that served them.
        let kept = clients.split_off(15);
        drop(clients);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while workers.connections().iter().sum::<usize>() != kept.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                workers.connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(kept);
        until(&workers, &[0, 0]).await;
        shutdown.cancel();
        workers.wait().await.expect("the workers stop");
    }
}

//! Handing listening sockets from one process to another over a Unix socket (`SCM_RIGHTS`), so the
//! data listener outlives any one proxy process, as HAProxy's master keeps its listeners across
//! worker restarts.
//!
//! Two places use it: the agent, which holds a copy of the data listeners and gives them to each
//! proxy it starts (on the proxy's stdin, a socket pair: no file descriptor is inherited by anything
//! else the agent starts), and every proxy process, which answers `listeners.sock` in its state
//! directory with its own listeners so a restarted agent can hold them again. While any holder lives,
//! a connection that arrives between one proxy dying and the next one accepting waits in the listen
//! backlog instead of being refused.
//!
//! It does not bind or choose sockets (`workers::DataListeners` does) and knows nothing of the agent.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// The socket in a proxy's state directory that gives out its data listeners.
pub const LISTENERS_FILE_NAME: &str = "listeners.sock";

/// The most sockets one hand-over carries (one per worker; far more cores than any host has).
pub const MAX_LISTENERS: usize = 256;

/// The one byte sent with the descriptors: a message with ancillary data needs a payload.
const TAG: u8 = b'L';

/// Sends `listeners` over `stream` in one message.
pub fn send(stream: &UnixStream, listeners: &[BorrowedFd<'_>]) -> io::Result<()> {
    if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a hand-over carries 1 to {MAX_LISTENERS} listeners, not {}",
                listeners.len()
            ),
        ));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(listeners.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(listeners)) {
        return Err(io::Error::other(
            "the hand-over's control buffer is too small",
        ));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&[TAG])],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != 1 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the hand-over message was not sent",
        ));
    }
    Ok(())
}

/// Receives one hand-over from `stream` (blocking up to `timeout`): the descriptors, close-on-exec.
pub fn receive(stream: &UnixStream, timeout: Duration) -> io::Result<Vec<OwnedFd>> {
    stream.set_read_timeout(Some(timeout))?;
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let received = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.bytes != 1 || byte[0] != TAG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer closed without handing over any listener",
        ));
    }
    if fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the hand-over message carried no descriptor",
        ));
    }
    Ok(fds)
}

/// Connects to the `listeners.sock` at `path` and receives the listeners it hands over.
pub fn fetch(path: &Path, timeout: Duration) -> io::Result<Vec<OwnedFd>> {
    let stream = UnixStream::connect(path)?;
    receive(&stream, timeout)
}

/// Answers every connection on `listener` with `listeners` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    listeners: Arc<Vec<OwnedFd>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(message = "Hand-over socket accept failed.", %error);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let listeners = listeners.clone();
        let handed = stream.into_std().and_then(|stream| {
            stream.set_nonblocking(false)?;
            stream.set_write_timeout(Some(Duration::from_secs(1)))?;
            let borrowed: Vec<BorrowedFd<'_>> = listeners.iter().map(AsFd::as_fd).collect();
            send(&stream, &borrowed)
        });
        if let Err(error) = handed {
            tracing::warn!(message = "Handing the listeners over failed.", %error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_cross_a_socket_pair_and_still_accept() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (left, right) = UnixStream::pair().expect("pair");
        send(&left, &[listener.as_fd()]).expect("send");
        drop(listener);
        let fds = receive(&right, Duration::from_secs(1)).expect("receive");
        assert_eq!(fds.len(), 1);
        let received = std::net::TcpListener::from(fds.into_iter().next().expect("one fd"));
        assert_eq!(received.local_addr().expect("addr"), addr);
        // The socket stayed open in between: a client connects and is accepted.
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        received.accept().expect("accept");
    }

    #[test]
    fn a_peer_that_closes_is_an_error_not_an_empty_list() {
        let (left, right) = UnixStream::pair().expect("pair");
        drop(left);
        let error = receive(&right, Duration::from_secs(1)).expect_err("closed peer");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_empty_hand_over_is_refused() {
        let (left, _right) = UnixStream::pair().expect("pair");
        assert!(send(&left, &[]).is_err());
    }
}

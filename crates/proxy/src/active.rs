//! A request in progress on a downstream connection, as the connection's timers and the request's
//! body see it: shared by `server` (the connection), `forward` and `body` (the request).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use atomic_waker::AtomicWaker;

/// One request in progress on a downstream connection; while any exists, the connection's timers sleep.
#[derive(Debug)]
pub(crate) struct ActiveRequest {
    // Also where the request's interim answers go (`interim`): lent, not cloned, for each request.
    sender: InterimSender,
}

/// Shared between a connection's IO wrapper and the requests it carries.
#[derive(Debug, Default)]
pub(crate) struct ConnectionActivity {
    pub(crate) active: AtomicUsize,
    // Wakes the IO wrapper when the last request ends, so it arms the idle timer even if hyper is not
    // polling the socket for another reason; and when an interim answer is queued.
    pub(crate) reader: AtomicWaker,
    // Interim answers (103 Early Hints), encoded, waiting to be written to an HTTP/1.1 client before the
    // final answer (hyper's server cannot send them). std Mutex: an append or a take, never held across
    // an await.
    pub(crate) interim: Mutex<Vec<u8>>,
    // Whether `interim` may hold bytes: set under its lock by `InterimSender::send`, cleared under it by
    // whoever empties it. Read without the lock by the IO wrapper on every read and write, so that a
    // connection that never gets an interim answer never takes the lock. An interim answer is queued
    // before the final answer it precedes is handed to hyper (the upstream connection parses the 1xx
    // first), so a writer of the final answer always sees the flag set.
    pub(crate) interim_queued: AtomicBool,
    // Set by the IO wrapper when an HTTP/1 keep-alive connection has been idle long enough to release
    // its buffers (`server::h1::ServerConn`). Set from inside the connection's own task (the connection
    // polls the IO wrapper there), which wakes that task itself.
    idle_release: AtomicBool,
    // The connection's wait for the process's shutdown wakes this (`Wake`, below), which sets
    // `shutdown_woken` and wakes the connection's task registered here: the task then polls that wait
    // again only when it woke it (`server::serve_until_shutdown`).
    pub(crate) shutdown_task: AtomicWaker,
    shutdown_woken: AtomicBool,
}

/// The waker of a connection's wait for the process's shutdown (see `shutdown_task`).
impl std::task::Wake for ConnectionActivity {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shutdown_woken.store(true, Ordering::Release);
        self.shutdown_task.wake();
    }
}

impl ConnectionActivity {
    /// Asks the idle connection to release its buffers (see `take_idle_release`); the caller wakes the
    /// connection's task.
    pub(crate) fn release_idle(&self) {
        self.idle_release.store(true, Ordering::Release);
    }

    /// Whether the IO wrapper asked for the idle connection's buffers to be released (and clears it).
    pub(crate) fn take_idle_release(&self) -> bool {
        self.idle_release.load(Ordering::Acquire) && self.idle_release.swap(false, Ordering::AcqRel)
    }

    /// Whether the shutdown's wait woke the connection since this was last asked (and clears it).
    pub(crate) fn take_shutdown_woken(&self) -> bool {
        self.shutdown_woken.load(Ordering::Acquire)
            && self.shutdown_woken.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn start(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveRequest {
            sender: InterimSender {
                activity: Arc::clone(self),
            },
        }
    }
}

impl ActiveRequest {
    /// Where interim answers to this request's client go (see `InterimSender`). Lent: a sender of its
    /// own per request was one more `Arc` to count and to drop, and one more slot of the forwarding
    /// state read again after the upstream's answer (bench/proxy/README.md, "Session 33: 512
    /// connections"); the rare caller that needs one of its own clones it.
    pub(crate) fn interim(&self) -> &InterimSender {
        &self.sender
    }
}

/// Queues interim answers (1xx) for an HTTP/1.1 client; the connection's IO wrapper writes them out
/// before the final answer, or drops them when it cannot keep that order (a hint is safe to lose).
#[derive(Debug, Clone)]
pub(crate) struct InterimSender {
    activity: Arc<ConnectionActivity>,
}

impl InterimSender {
    pub(crate) fn send(&self, status: hyper::StatusCode, headers: &hyper::HeaderMap) {
        let mut encoded = format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Informational")
        )
        .into_bytes();
        for (name, value) in headers {
            encoded.extend_from_slice(name.as_str().as_bytes());
            encoded.extend_from_slice(b": ");
            encoded.extend_from_slice(value.as_bytes());
            encoded.extend_from_slice(b"\r\n");
        }
        encoded.extend_from_slice(b"\r\n");
        {
            let mut queued = self
                .activity
                .interim
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            queued.extend_from_slice(&encoded);
            self.activity.interim_queued.store(true, Ordering::Release);
        }
        self.activity.reader.wake();
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let activity = &self.sender.activity;
        if activity.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.reader.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's interim answers go out through its own reference to the connection's activity:
    /// lending its sender adds none (`forward` made one more per request until session 33), and the
    /// answers are queued for the connection's IO wrapper all the same.
    #[test]
    fn a_request_lends_its_interim_sender_without_a_reference_of_its_own() {
        let activity = Arc::new(ConnectionActivity::default());
        let active = activity.start();
        assert_eq!(Arc::strong_count(&activity), 2);
        let interim = active.interim();
        assert_eq!(Arc::strong_count(&activity), 2);
        let mut headers = hyper::HeaderMap::new();
        headers.insert("link", hyper::header::HeaderValue::from_static("</a.css>"));
        interim.send(hyper::StatusCode::EARLY_HINTS, &headers);
        assert!(activity.interim_queued.load(Ordering::Acquire));
        let queued = std::mem::take(&mut *activity.interim.lock().expect("interim"));
        assert_eq!(
            queued,
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n".to_vec()
        );
        // The rare caller that needs a sender of its own (hyper's interim hook) clones it.
        let owned = interim.clone();
        assert_eq!(Arc::strong_count(&activity), 3);
        drop(owned);
        drop(active);
        assert_eq!(Arc::strong_count(&activity), 1);
        assert_eq!(activity.active.load(Ordering::Acquire), 0);
    }
}

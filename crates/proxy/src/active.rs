//! A request in progress on a downstream connection, as the connection's timers and the request's
//! body see it: shared by `server` (the connection), `forward` and `body` (the request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use atomic_waker::AtomicWaker;

/// One request in progress on a downstream connection; while any exists, the connection's timers sleep.
#[derive(Debug)]
pub(crate) struct ActiveRequest {
    activity: Arc<ConnectionActivity>,
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
}

impl ConnectionActivity {
    pub(crate) fn start(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveRequest {
            activity: Arc::clone(self),
        }
    }
}

impl ActiveRequest {
    /// Where interim answers to this request's client go (see `InterimSender`).
    pub(crate) fn interim_sender(&self) -> InterimSender {
        InterimSender {
            activity: Arc::clone(&self.activity),
        }
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
        self.activity
            .interim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(&encoded);
        self.activity.reader.wake();
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if self.activity.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.activity.reader.wake();
        }
    }
}

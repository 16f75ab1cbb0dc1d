//! The live side of one instance: its state, in-flight count, passive health, cut signal and upstream
//! connection pool, shared by every routing snapshot that lists it.
//!
//! It does not decide life-cycle transitions (the control plane does) and holds no lock on the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ids::{InstanceId, InstanceState, ReleaseId};
use crate::stats::ReleaseStats;
use crate::upstream::ConnectionPool;

/// One instance as the request path sees it.
#[derive(Debug)]
pub struct InstanceLive {
    id: InstanceId,
    release: ReleaseId,
    addr: SocketAddr,
    // `InstanceState` as u8. Written by the control plane, read by the request path. SeqCst together with
    // `in_flight` (see `try_acquire`) so a drain can never miss a request that slipped in.
    state: AtomicU8,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    // Set by passive health; the probe clears it.
    down: AtomicBool,
    // Woken when `in_flight` drops to zero while the instance is not ready (a drain waits on it).
    idle: Notify,
    // Cancelled at the drain timeout or on removal: every upstream connection and tunnel of the instance
    // watches it and closes.
    pub(crate) cut: CancellationToken,
    pub(crate) connections: ConnectionPool,
}

/// Counts one request (or upgraded connection) on an instance and its release until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    instance: Arc<InstanceLive>,
    stats: Arc<ReleaseStats>,
}

impl InstanceLive {
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    pub fn release(&self) -> &ReleaseId {
        &self.release
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> InstanceState {
        state_from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Requests and upgraded connections currently open on this instance.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether passive health has taken the instance out of traffic.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub(crate) fn new(id: InstanceId, release: ReleaseId, addr: SocketAddr) -> InstanceLive {
        InstanceLive {
            id,
            release,
            addr,
            state: AtomicU8::new(InstanceState::Starting as u8),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            down: AtomicBool::new(false),
            idle: Notify::new(),
            cut: CancellationToken::new(),
            connections: ConnectionPool::default(),
        }
    }

    pub(crate) fn set_state(&self, state: InstanceState) {
        self.state.store(state as u8, Ordering::SeqCst);
        if state != InstanceState::Ready {
            // A waiter may already be registered for an instance that was not ready before.
            self.idle.notify_waiters();
        }
    }

    /// Whether new requests may go to this instance.
    pub(crate) fn is_available(&self) -> bool {
        self.state.load(Ordering::Relaxed) == InstanceState::Ready as u8 && !self.is_down()
    }

    /// Counts a request on the instance if it is still ready.
    ///
    /// The increment comes before the state check, and `drain` stores the state before it reads the
    /// count (both SeqCst): either this sees `Draining` and backs out, or the drain sees the request.
    pub(crate) fn try_acquire(
        instance: &Arc<InstanceLive>,
        stats: &Arc<ReleaseStats>,
    ) -> Option<InFlightGuard> {
        instance.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard {
            instance: Arc::clone(instance),
            stats: Arc::clone(stats),
        };
        stats.in_flight_started();
        if instance.state.load(Ordering::SeqCst) != InstanceState::Ready as u8 {
            drop(guard);
            return None;
        }
        Some(guard)
    }

    /// Waits until nothing is in flight on the instance. Only meaningful once it is no longer ready.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Records a failed connection; returns true when it crossed the threshold and took the instance out.
    pub(crate) fn record_connect_failure(&self, threshold: u32) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= threshold && !self.down.swap(true, Ordering::Relaxed)
    }

    pub(crate) fn record_success(&self) {
        // Read first so the common case (no failures) does not write to a shared cache line.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn mark_up(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.down.store(false, Ordering::Relaxed);
    }
}

impl InFlightGuard {
    pub fn instance(&self) -> &Arc<InstanceLive> {
        &self.instance
    }

    pub fn stats(&self) -> &Arc<ReleaseStats> {
        &self.stats
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.stats.in_flight_finished();
        let previous = self.instance.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Only a drain waits for zero, and it stores a non-ready state before it reads the count, so this
        // check cannot miss it; skipping the notify otherwise keeps Notify's lock off the request path.
        if previous == 1 && self.instance.state.load(Ordering::SeqCst) != InstanceState::Ready as u8
        {
            self.instance.idle.notify_waiters();
        }
    }
}

fn state_from_u8(value: u8) -> InstanceState {
    match value {
        0 => InstanceState::Starting,
        1 => InstanceState::Ready,
        2 => InstanceState::Draining,
        _ => InstanceState::Drained,
    }
}

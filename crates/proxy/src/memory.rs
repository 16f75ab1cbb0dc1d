//! Gives memory back to the system after a burst of closed or idle connections. glibc's allocator keeps
//! freed heap pages for reuse: after thousands of connections close, or leave hyper while idle
//! (`server::serve_http1` frees their buffers), the freed memory would stay in the process's RSS,
//! fragmented between longer-lived allocations so the heap top cannot shrink. `malloc_trim(0)` returns
//! every whole free page, wherever it is in the heap.
//!
//! Counts downstream connections process-wide. When, since the last trim, a quarter of the peak of open
//! connections closed, or a quarter of those open freed their buffers (and at least a minimum, so a
//! small server never trims), one trim is scheduled a second later: a burst becomes one trim after it
//! ends, and a steady stream of closes or releases trims at most once a second, each trim's heap walk
//! paid for by a share of the connections it covers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

static OPEN: AtomicUsize = AtomicUsize::new(0);
// The most connections open at once since the last trim.
static PEAK: AtomicUsize = AtomicUsize::new(0);
// Idle connections that freed their buffers since the last trim.
static RELEASES: AtomicUsize = AtomicUsize::new(0);
static TRIM_SCHEDULED: AtomicBool = AtomicBool::new(false);

/// Fewer closes or releases than this are not worth a trim (it walks the whole heap).
const MIN_FREED: usize = 64;
/// How long after the trigger the trim runs, so the rest of a burst is covered by the same trim.
const TRIM_DELAY: Duration = Duration::from_secs(1);

/// Counts a connection from its start to its end (dropped with the connection's task).
pub(crate) struct OpenConnection(());

impl OpenConnection {
    pub(crate) fn new() -> OpenConnection {
        let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(open, Ordering::Relaxed);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let open = OPEN.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let peak = PEAK.load(Ordering::Relaxed);
        if peak.saturating_sub(open) >= MIN_FREED.max(peak / 4) {
            schedule_trim();
        }
    }
}

/// An idle connection freed its buffers.
pub(crate) fn buffers_released() {
    let released = RELEASES.fetch_add(1, Ordering::Relaxed) + 1;
    if released >= MIN_FREED.max(OPEN.load(Ordering::Relaxed) / 4) {
        schedule_trim();
    }
}

fn schedule_trim() {
    if TRIM_SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        TRIM_SCHEDULED.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async {
        tokio::time::sleep(TRIM_DELAY).await;
        PEAK.store(OPEN.load(Ordering::Relaxed), Ordering::Relaxed);
        RELEASES.store(0, Ordering::Relaxed);
        // `malloc_trim` walks the whole heap: off the worker thread that serves requests.
        let _ = tokio::task::spawn_blocking(trim).await;
        TRIM_SCHEDULED.store(false, Ordering::Release);
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointers and is thread-safe (it locks each arena in turn);
    // it only returns free pages to the system.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_closes_schedules_one_trim_that_resets_the_counts() {
        let before = OPEN.load(Ordering::Relaxed);
        let connections: Vec<OpenConnection> = (0..200).map(|_| OpenConnection::new()).collect();
        assert!(PEAK.load(Ordering::Relaxed) >= before + 200);
        drop(connections);
        assert!(TRIM_SCHEDULED.load(Ordering::Acquire));
        tokio::time::sleep(TRIM_DELAY * 2).await;
        assert!(!TRIM_SCHEDULED.load(Ordering::Acquire));
        // The trim took the peak down to what was open then.
        assert!(PEAK.load(Ordering::Relaxed) < before + 200);
    }
}

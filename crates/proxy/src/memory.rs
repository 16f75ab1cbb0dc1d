//! Rollway's allocator, and giving memory back to the system after a burst of closed or idle
//! connections.
//!
//! The allocator is mimalloc (`Allocator`, the `#[global_allocator]` of `rollway` and of `bench_proxy`).
//! With glibc's, the few long-lived bytes of each idle connection (its task, socket registration, timer,
//! activity) sat between the 16 KiB of hyper buffers it had freed (`server::serve_http1`), so every idle
//! connection kept one or two whole pages resident: 6.3 to 13.6 KB each (35.6 to 69.9 MiB for 5,000,
//! depending on when the trim ran). mimalloc keeps allocations of one size class together on their own
//! pages, so freed buffers leave whole pages free and the small state packs densely (3.8 KB each, 24 MiB
//! for 5,000, measured with `bench/proxy/idle.sh`; bench/proxy/README.md has the runs). It is built
//! without asking for transparent huge pages for its arenas (a touched 2 MiB page counts whole in RSS).
//!
//! A free page is returned to the system on a purge, which mimalloc runs lazily, when a thread frees
//! or allocates again after the purge delay, and at once when a thread collects (below). The delay is
//! mimalloc 3's default, a second (`configure_allocator`). It was mimalloc 2's 10 ms while only a trim
//! on a blocking thread collected (then a second's delay left 70 MiB resident for 5,000 idle
//! connections); but under load 10 ms gave back pages the next requests took again: 1.1-1.4 page
//! faults and 0.06 `madvise` per h2c request, ~4 µs of system time per request, against HAProxy's 0.01
//! faults (bench/proxy/README.md, "Session 29: HTTP/2 to clients"). Idle, the workers' own
//! collections give the pages back as before (21 MB with 5,000 idle connections after load, either
//! delay). After a burst, as glibc's `malloc_trim` did before, one collection (`mi_collect(true)`:
//! every pending purge, at once) runs too.
//!
//! mimalloc keeps a heap per thread, and a free page stays in its thread's heap (the last free page of
//! each size class, and pages whose blocks another thread freed, until the owner looks) until that
//! thread allocates again or collects its heap: `mi_collect` collects only the calling thread's heap
//! (and purges the arenas, process-wide). A worker thread that went quiet after traffic allocates
//! nothing, so each worker collects its own heap (`collect_if_due`, on its upstream sweep's tick) when
//! it has freed something (a connection closed, buffers released, upstream connections dropped) and
//! then served no request for a whole tick, or when a trim was asked for process-wide (below). Before,
//! the trim ran `mi_collect` on a blocking thread only, which left the workers' heaps as they were:
//! 17-18 MB before the 5,000 idle connections of `deployed.sh` after its keep-alive run, against 11.9
//! MB fresh (bench/proxy/README.md, "Session 28: idle memory under 30 MB").
//!
//! Counts downstream connections process-wide. When, since the last trim, a quarter of the peak of open
//! connections closed, or a quarter of those open freed their buffers (and at least a minimum, so a
//! small server never trims), one trim is scheduled a second later: a burst becomes one trim after it
//! ends, and a steady stream of closes or releases trims at most once a second, each trim's heap walk
//! paid for by a share of the connections it covers.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static OPEN: AtomicUsize = AtomicUsize::new(0);
// The most connections open at once since the last trim.
static PEAK: AtomicUsize = AtomicUsize::new(0);
// Idle connections that freed their buffers since the last trim.
static RELEASES: AtomicUsize = AtomicUsize::new(0);
static TRIM_SCHEDULED: AtomicBool = AtomicBool::new(false);
// How many trims have run: a worker whose last collection saw fewer collects its heap.
static TRIMS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // What this thread did since it last collected its heap (`collect_if_due`).
    static LOCAL: Local = const { Local::new() };
}

struct Local {
    // Requests started on this thread (wrapping).
    requests: Cell<u64>,
    // `requests` at the previous tick.
    requests_seen: Cell<u64>,
    // Whether this thread freed connections or buffers since it last collected.
    freed: Cell<bool>,
    // `TRIMS` when this thread last collected.
    trims_seen: Cell<u64>,
    // How many times this thread collected its heap.
    collections: Cell<u64>,
    // When the last tick counted (`Local::ticked`).
    last_tick: Cell<Option<Instant>>,
}

impl Local {
    const fn new() -> Local {
        Local {
            requests: Cell::new(0),
            requests_seen: Cell::new(0),
            freed: Cell::new(false),
            trims_seen: Cell::new(0),
            collections: Cell::new(0),
            last_tick: Cell::new(None),
        }
    }

    /// Whether a call at `now` is a tick of its own: a worker runs one sweep (`workers::run_worker`),
    /// but a thread off the workers that serves several listeners (`serve`, `serve_https`) runs one
    /// per listener, each calling every `every`; a call just after another is not a quiet tick.
    fn ticked(&self, now: Instant, every: Duration) -> bool {
        if let Some(last) = self.last_tick.get()
            && now.saturating_duration_since(last) < every / 2
        {
            return false;
        }
        self.last_tick.set(Some(now));
        true
    }

    /// One tick: whether the thread's heap is to be collected now (this thread freed something since
    /// it last collected and started no request since the previous tick, or `trims` moved on since
    /// it last collected); counted as done when it is.
    fn tick(&self, trims: u64) -> bool {
        let requests = self.requests.get();
        let quiet = self.requests_seen.replace(requests) == requests;
        let due = (self.freed.get() && quiet) || self.trims_seen.get() != trims;
        if due {
            self.freed.set(false);
            self.trims_seen.set(trims);
            self.collections.set(self.collections.get() + 1);
        }
        due
    }
}

/// The global allocator of Rollway's binaries (`#[global_allocator] static ALLOCATOR:
/// proxy::memory::Allocator = proxy::memory::ALLOCATOR;`): the memory figures of this module and of
/// bench/proxy assume it.
///
/// mimalloc, asked as `mimalloc::MiMalloc` asks it but for the alignment: `MiMalloc` passes every
/// request's alignment to `mi_malloc_aligned`, whose fast path takes only blocks of up to 1 KiB; a
/// larger block with any alignment (a boxed HTTP/2 stream or request future, a buffer, a growing
/// `Vec`) went through mimalloc's over-allocation path (size + alignment - 1, the block marked as having
/// interior pointers), ~250 instructions instead of ~40: 3.9 of the 11.7 allocations of an h2c request
/// (bench/proxy/README.md, "Session 30: HTTP/2 to clients"). An alignment that mimalloc gives every
/// block of the size anyway (at most 16, `MI_MAX_ALIGN_SIZE`, and at most the size, the rule of Rust's
/// `System` allocator for `malloc`) is now asked of `mi_malloc`, which takes every size's fast path;
/// larger alignments still go to `mi_malloc_aligned`.
pub struct Allocator;
/// The value for the `#[global_allocator]` static.
pub const ALLOCATOR: Allocator = Allocator;

/// The alignment every block of mimalloc has when it is at least as large (`MI_MAX_ALIGN_SIZE`).
const MI_MAX_ALIGN_SIZE: usize = 16;

/// Whether a plain `mi_malloc` block of `size` bytes is aligned to `align`.
fn malloc_aligns(size: usize, align: usize) -> bool {
    align <= MI_MAX_ALIGN_SIZE && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks of any of its
// entry points); a block is given by `mi_malloc`, `mi_zalloc` or `mi_realloc` only when its layout's
// alignment is one mimalloc guarantees for that size (`malloc_aligns`), else by the `_aligned` entry
// points, as `mimalloc::MiMalloc` does.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and a power-of-two alignment.
        unsafe {
            if malloc_aligns(layout.size(), layout.align()) {
                libmimalloc_sys::mi_malloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if malloc_aligns(layout.size(), layout.align()) {
                libmimalloc_sys::mi_zalloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` is a block this allocator gave (the caller's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a block this allocator gave; the new block keeps `layout`'s alignment.
        unsafe {
            if malloc_aligns(new_size, layout.align()) {
                libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc 3's `mi_option_purge_delay` (`c_src/mimalloc/v3/include/mimalloc.h` of libmimalloc-sys
/// 0.1.49, pinned in Cargo.toml; the crate's own constants are mimalloc 2's and stop before it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds a free page waits before it is given back (mimalloc 3's default; set all the same, so
/// another build of mimalloc does not bring back mimalloc 2's 10 ms).
const PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Sets the allocator's options for serving; once per process (called by every listener).
#[allow(unsafe_code)]
pub(crate) fn configure_allocator() {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| {
        // SAFETY: options are plain integers mimalloc reads atomically; any thread may set them.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    });
}

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
        freed_here();
        let open = OPEN.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let peak = PEAK.load(Ordering::Relaxed);
        if peak.saturating_sub(open) >= MIN_FREED.max(peak / 4) {
            schedule_trim();
        }
    }
}

/// An idle connection freed its buffers.
pub(crate) fn buffers_released() {
    released(1);
}

/// `n` idle upstream connections were dropped (`upstream::ConnectionPool::expire`).
pub(crate) fn upstream_connections_dropped(n: usize) {
    released(n);
}

fn released(n: usize) {
    freed_here();
    let released = RELEASES.fetch_add(n, Ordering::Relaxed) + n;
    if released >= MIN_FREED.max(OPEN.load(Ordering::Relaxed) / 4) {
        schedule_trim();
    }
}

/// A request started on this thread: the thread is not quiet.
pub(crate) fn request_started() {
    LOCAL.with(|local| local.requests.set(local.requests.get().wrapping_add(1)));
}

fn freed_here() {
    LOCAL.with(|local| local.freed.set(true));
}

/// This thread freed memory it kept for later (spare buffers): collected when it is quiet.
pub(crate) fn freed() {
    freed_here();
}

/// Collects this thread's heap when it is due: this thread freed something since its last collection
/// and started no request since the previous tick, or a trim ran since its last collection. Called by
/// each worker thread on a tick every `every` (`server::sweep_idle_upstreams`, 0.1 to 1 s; calls closer
/// than half of it are one tick); returns whether it collected.
pub(crate) fn collect_if_due(every: Duration) -> bool {
    let trims = TRIMS.load(Ordering::Acquire);
    let now = Instant::now();
    let due = LOCAL.with(|local| local.ticked(now, every) && local.tick(trims));
    if due {
        collect_this_thread();
    }
    due
}

/// How many times this thread collected its heap (`collect_if_due`).
#[cfg(test)]
pub(crate) fn collections_here() -> u64 {
    LOCAL.with(|local| local.collections.get())
}

#[allow(unsafe_code)]
fn collect_this_thread() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread: with `force` it frees
    // every empty page of this thread's heap and purges every free page pending in any arena.
    unsafe {
        libmimalloc_sys::mi_collect(true);
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
    // Cleared when the task ends, or when its runtime drops it unfinished or unpolled (a runtime that
    // shut down), so a later burst can schedule a trim again.
    let scheduled = ClearOnDrop(&TRIM_SCHEDULED);
    runtime.spawn(async move {
        let _scheduled = scheduled;
        tokio::time::sleep(TRIM_DELAY).await;
        PEAK.store(OPEN.load(Ordering::Relaxed), Ordering::Relaxed);
        RELEASES.store(0, Ordering::Relaxed);
        // `malloc_trim` walks the whole heap: off the worker thread that serves requests.
        let _ = tokio::task::spawn_blocking(trim).await;
        // Each worker collects its own heap on its next tick (`collect_if_due`).
        TRIMS.fetch_add(1, Ordering::AcqRel);
    });
}

/// Held by the scheduled trim's task: its flag is true while it lives.
struct ClearOnDrop(&'static AtomicBool);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn trim() {
    // This (blocking) thread's heap and every arena; when mimalloc is not the global allocator (an
    // embedder's binary) it finds nothing to purge.
    collect_this_thread();
    trim_libc();
}

/// glibc's own heap (what C code or an embedder's binary allocates with `malloc`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_libc() {
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
fn trim_libc() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn blocks_larger_than_a_kib_are_not_over_allocated_and_every_block_is_aligned() {
        use std::alloc::{GlobalAlloc, Layout};
        for (size, align) in [
            (1, 1),
            (8, 8),
            (12, 4),
            (16, 16),
            (24, 8),
            (1_000, 8),
            (2_048, 8),
            // Sizes of a class's exact block size: `size + align - 1` would take the next class.
            (3_072, 8),
            (5_120, 16),
            (6_144, 8),
            (5_000, 16),
            (70_000, 8),
            (8, 16),
            (256, 128),
            (3_000, 64),
            (100, 4_096),
        ] {
            let layout = Layout::from_size_align(size, align).expect("a valid layout");
            // SAFETY: the layout's size is not zero; each block is freed with the allocator it came from.
            unsafe {
                let block = ALLOCATOR.alloc(layout);
                assert!(!block.is_null());
                assert_eq!(block as usize % align, 0, "{size} bytes aligned to {align}");
                if malloc_aligns(size, align) {
                    // mimalloc's over-allocation path takes `size + align - 1` and hands out a pointer
                    // inside the block; the plain path gives a block of the size's class.
                    assert_eq!(
                        libmimalloc_sys::mi_usable_size(block.cast()),
                        libmimalloc_sys::mi_good_size(size),
                        "{size} bytes aligned to {align}"
                    );
                }
                let grown = ALLOCATOR.realloc(block, layout, size * 3);
                assert!(!grown.is_null());
                assert_eq!(
                    grown as usize % align,
                    0,
                    "{size} bytes grown, aligned to {align}"
                );
                ALLOCATOR.dealloc(
                    grown,
                    Layout::from_size_align(size * 3, align).expect("valid"),
                );
                let zeroed = ALLOCATOR.alloc_zeroed(layout);
                assert!(
                    std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0)
                );
                ALLOCATOR.dealloc(zeroed, layout);
            }
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc 3's default for `purge_delay` is 1000 ms and no other option of its enum defaults to
        // 1000: a renumbered enum fails here instead of setting another option.
        // SAFETY: reading an option is a plain atomic load.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(
            before == 1000 || before == PURGE_DELAY_MS,
            "option 15 is {before}"
        );
        configure_allocator();
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, PURGE_DELAY_MS);
    }

    /// Issue 20: a worker that went quiet after freeing collects its own heap (a trim on another thread
    /// does not reach it), once, and not while it serves requests.
    #[test]
    fn a_thread_collects_its_heap_once_quiet_after_freeing() {
        let local = Local::new();
        assert!(!local.tick(0), "nothing freed, nothing to collect");
        local.freed.set(true);
        local.requests.set(1);
        assert!(
            !local.tick(0),
            "a request since the previous tick: not quiet"
        );
        local.requests.set(2);
        assert!(!local.tick(0), "still serving");
        assert!(local.tick(0), "quiet for a tick after freeing");
        assert!(!local.tick(0), "collected once");
        assert_eq!(local.collections.get(), 1);
    }

    #[test]
    fn a_second_sweep_on_the_same_thread_does_not_shorten_the_quiet_tick() {
        let local = Local::new();
        let every = Duration::from_millis(750);
        let start = Instant::now();
        assert!(local.ticked(start, every));
        assert!(!local.ticked(start + Duration::from_millis(10), every));
        assert!(local.ticked(start + every, every));
    }

    #[test]
    fn a_trim_elsewhere_makes_every_thread_collect_once_even_while_serving() {
        let local = Local::new();
        local.requests.set(1);
        assert!(local.tick(1), "a trim ran since this thread last collected");
        local.requests.set(2);
        assert!(!local.tick(1), "that trim is done here");
        assert!(local.tick(2));
    }

    #[test]
    fn closes_and_releases_mark_this_thread_as_having_freed() {
        std::thread::spawn(|| {
            let was = |f: &dyn Fn()| {
                LOCAL.with(|local| local.freed.set(false));
                f();
                LOCAL.with(|local| local.freed.get())
            };
            assert!(was(&|| drop(OpenConnection::new())));
            assert!(was(&buffers_released));
            assert!(was(&|| upstream_connections_dropped(1)));
            assert!(!was(&request_started));
        })
        .join()
        .expect("the test thread");
    }

    #[tokio::test]
    async fn a_burst_of_closes_schedules_one_trim_that_resets_the_counts() {
        // Other tests of this process open and close connections too, and may have scheduled a
        // trim of their own: wait for a trim that ran after the burst, however it was scheduled.
        let before = OPEN.load(Ordering::Relaxed);
        let trims = TRIMS.load(Ordering::Acquire);
        let connections: Vec<OpenConnection> = (0..200).map(|_| OpenConnection::new()).collect();
        assert!(PEAK.load(Ordering::Relaxed) >= before + 200);
        drop(connections);
        let mut waited = Duration::ZERO;
        while TRIMS.load(Ordering::Acquire) == trims && waited < TRIM_DELAY * 10 {
            tokio::time::sleep(TRIM_DELAY / 10).await;
            waited += TRIM_DELAY / 10;
        }
        assert!(TRIMS.load(Ordering::Acquire) > trims, "no trim ran");
        // The trim took the peak down to what was open then.
        assert!(PEAK.load(Ordering::Relaxed) < before + 200);
    }

    #[test]
    fn a_task_its_runtime_dropped_unpolled_clears_its_flag() {
        // The mechanism of `schedule_trim` on a flag of this test's own (the global one is shared
        // with every test of this process that closes connections).
        static FLAG: AtomicBool = AtomicBool::new(true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let scheduled = ClearOnDrop(&FLAG);
        runtime.spawn(async move {
            let _scheduled = scheduled;
            tokio::time::sleep(TRIM_DELAY).await;
        });
        assert!(FLAG.load(Ordering::Acquire));
        drop(runtime);
        assert!(!FLAG.load(Ordering::Acquire));
    }
}

//! Which worker thread this is, and how many there may be: what the upstream pool needs to pick its
//! shard (`upstream::ConnectionPool`), apart from `workers`, which starts the threads.

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread;

thread_local! {
    // 0 on threads that are not workers; worker `i` is `i + 1`.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// This thread's worker number (0 when it is not a worker), used to pick its upstream pool shard.
pub(crate) fn current() -> usize {
    WORKER.with(Cell::get)
}

/// How many shards an upstream pool has: one per default worker, plus one for non-worker threads.
pub(crate) fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| default_workers() + 1)
}

/// One worker per core this process may use (a cgroup CPU quota counts).
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Marks this thread as worker `number` (1-based; `workers` calls it once per thread it starts).
pub(crate) fn set_worker(number: usize) {
    WORKER.with(|worker| worker.set(number));
}

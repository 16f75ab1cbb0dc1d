//! Failed sign-ins per client address: after [`MAX_FAILURES`] failed `POST /login` within
//! [`WINDOW`], that address is refused (429, with when to try again) until the oldest failure
//! leaves the window, whatever token it presents.
//!
//! The address is the TCP peer's (the API is served directly, never behind the proxy; no
//! forwarded header is believed). IPv6 addresses count by their /64, the block one host is
//! usually given. In memory only: a restart forgets, which costs an attacker a restart of the
//! agent they cannot cause. Bounded: at most [`MAX_CLIENTS`] addresses are tracked; past that,
//! new addresses share one count (so a flood from many addresses slows everyone's failed
//! attempts, never lets one through unlimited).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Failed sign-ins an address may make within [`WINDOW`].
pub const MAX_FAILURES: usize = 10;
/// How far back failures count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once.
const MAX_CLIENTS: usize = 4096;

/// Who failed: an address (IPv6 by its /64), or every address beyond [`MAX_CLIENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    Address(IpAddr),
    Overflow,
}

/// The failed sign-ins of the last [`WINDOW`], per client.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    // std Mutex: the critical sections are a map lookup and a few deque operations, never held
    // across an await.
    failures: std::sync::Mutex<HashMap<Client, VecDeque<Instant>>>,
}

impl LoginLimiter {
    /// `Err(wait)` when `peer` may not try now: it failed [`MAX_FAILURES`] times within the
    /// window and may try again after `wait` (at least a second).
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut failures = self.lock();
        let client = client_of(&failures, peer);
        let Some(times) = failures.get_mut(&client) else {
            return Ok(());
        };
        forget_before(times, now);
        if times.len() < MAX_FAILURES {
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        let wait = (oldest + WINDOW).saturating_duration_since(now);
        Err(wait.max(Duration::from_secs(1)))
    }

    /// Counts one failed sign-in of `peer` at `now`.
    pub fn failed(&self, peer: Option<IpAddr>, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= MAX_CLIENTS {
            failures.retain(|_, times| {
                forget_before(times, now);
                !times.is_empty()
            });
        }
        let client = client_of(&failures, peer);
        let times = failures.entry(client).or_default();
        forget_before(times, now);
        times.push_back(now);
        // Only the newest MAX_FAILURES matter for the decision.
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Client, VecDeque<Instant>>> {
        // A panic while holding the lock leaves counts that are still counts.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The key `peer` counts under: its address (IPv6 by /64), or the shared overflow when the map
/// is full and does not know it. No address (a request that did not come over TCP) is overflow.
fn client_of(failures: &HashMap<Client, VecDeque<Instant>>, peer: Option<IpAddr>) -> Client {
    let Some(peer) = peer else {
        return Client::Overflow;
    };
    let address = match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    };
    let client = Client::Address(address);
    if failures.len() >= MAX_CLIENTS && !failures.contains_key(&client) {
        Client::Overflow
    } else {
        client
    }
}

fn forget_before(times: &mut VecDeque<Instant>, now: Instant) {
    while times
        .front()
        .is_some_and(|at| now.saturating_duration_since(*at) >= WINDOW)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests;

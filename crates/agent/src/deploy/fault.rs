//! Test-only fault injection: kill the agent (SIGKILL, as `kill -9` would) right before a chosen
//! transition is written, so tests can prove recovery from every state; slow unpacks down, so tests
//! can prove the API still answers while they run.
//!
//! Variables are read only in debug builds (`cfg(debug_assertions)`); a release binary ignores the variable.

use crate::deploy::state::State;

/// Name of the variable: the state whose transition is never written, e.g. `Shifting`.
pub const CRASH_AT_VAR: &str = "ROLLWAY_TEST_CRASH_BEFORE";

/// Kills the process if the test asked for a crash before `next` is written.
pub fn crash_point(next: State) {
    #[cfg(debug_assertions)]
    if std::env::var(CRASH_AT_VAR).is_ok_and(|wanted| wanted == next.as_str()) {
        tracing::warn!(message = "Killing the agent for a test.", state = %next);
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = next;
}

/// Name of the variable: milliseconds every unpack sleeps first, on the thread that unpacks, so a
/// test can hold several unpacks in progress at once.
pub const UNPACK_DELAY_VAR: &str = "ROLLWAY_TEST_UNPACK_DELAY_MS";

/// Blocks the calling thread for the test's unpack delay, if one was asked for.
pub fn unpack_delay() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(UNPACK_DELAY_VAR)
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Name of the variable: the signal (`promote`, `abort`, `approve`) whose handling kills the
/// agent, after the API stored it and before the executor acts on it.
pub const CRASH_ON_SIGNAL_VAR: &str = "ROLLWAY_TEST_CRASH_ON_SIGNAL";

/// Kills the process if the test asked for a crash when `signal` is about to be acted on.
pub fn crash_on_signal(signal: &crate::store::Signal) {
    #[cfg(debug_assertions)]
    if std::env::var(CRASH_ON_SIGNAL_VAR).is_ok_and(|wanted| wanted == signal.kind()) {
        tracing::warn!(
            message = "Killing the agent for a test.",
            signal = signal.kind()
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = signal;
}

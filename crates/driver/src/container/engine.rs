//! The connection to the container engine: a bollard client on the Unix socket, its error type,
//! and a bridge that lets the `Driver` trait's synchronous methods make engine calls.
//!
//! It knows nothing of instances, labels or env files; it only carries requests.

use std::future::Future;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use bollard::Docker;

/// An error from the container engine (or from talking to it), for [`crate::DriverError::Engine`]
/// and [`super::ContainerError`]. Its `Display` is the engine's own message.
#[derive(Debug)]
pub struct EngineError(bollard::errors::Error);

impl EngineError {
    /// True when the engine answered 404: no such container or image.
    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    /// The HTTP status the engine answered with, when it answered.
    pub fn status_code(&self) -> Option<u16> {
        match &self.0 {
            bollard::errors::Error::DockerResponseServerError { status_code, .. } => {
                Some(*status_code)
            }
            _ => None,
        }
    }

    pub(crate) fn other(message: String) -> EngineError {
        EngineError(bollard::errors::Error::IOError {
            err: std::io::Error::other(message),
        })
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<bollard::errors::Error> for EngineError {
    fn from(error: bollard::errors::Error) -> EngineError {
        EngineError(error)
    }
}

/// Connects to the engine's Unix socket and settles on the API version both sides speak (an
/// older engine refuses a client that asks for a newer version than its own).
pub(crate) async fn connect(
    socket: &Path,
    request_timeout: Duration,
) -> Result<Docker, EngineError> {
    let Some(path) = socket.to_str() else {
        return Err(EngineError::other(format!(
            "the socket path `{}` is not UTF-8",
            socket.display()
        )));
    };
    let docker = Docker::connect_with_unix(
        path,
        request_timeout.as_secs().max(1),
        bollard::API_DEFAULT_VERSION,
    )?;
    Ok(docker.negotiate_version().await?)
}

/// A small runtime of its own, on which the synchronous trait methods (`running`, `logs`,
/// `logs_after`) run their engine calls and wait for the answer.
///
/// `Handle::block_on` cannot be used from inside the agent's runtime (it panics, and would
/// deadlock a current-thread runtime); running the call on this runtime's own worker thread and
/// blocking the caller on a channel works from any context. The caller's thread is blocked for
/// one local socket round trip, like the process driver's file reads in the same methods.
pub(crate) struct Bridge {
    /// Always `Some` until dropped; taken in `Drop` to shut it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> std::io::Result<Bridge> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rollway-container-bridge")
            .enable_all()
            .build()?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on the bridge's runtime and blocks until it resolves. `None` when the task
    /// panicked or the runtime is shutting down.
    pub(crate) fn run<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self.runtime.as_ref()?;
        let (sender, receiver) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            // The receiver only goes away with a caller that stopped waiting.
            let _ = sender.send(future.await);
        });
        receiver.recv().ok()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime blocks, which panics inside an async context (where the agent
            // and the tests drop drivers).
            runtime.shutdown_background();
        }
    }
}

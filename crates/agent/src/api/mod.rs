//! The control API under `/v1`: every route and its role in `router.rs`, one error type, one
//! authentication layer.

pub mod auth;
pub mod error;
pub mod handlers;
pub mod router;
pub mod views;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;

/// Serves the API on `listener` until `shutdown` fires. The caller binds (tests use port 0).
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router::router(engine);
    // Progress events are small writes: without TCP_NODELAY, Nagle and the client's delayed ACK
    // hold each one ~40 ms (measured in bench/deploy).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

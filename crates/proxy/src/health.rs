//! Passive health: an instance taken out after consecutive connection failures is probed with plain TCP
//! connects and put back as soon as one succeeds.
//!
//! Active HTTP health checks are the agent's job (it knows the health path); this only reacts to traffic.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::control::Proxy;
use crate::ids::InstanceState;
use crate::instance::InstanceLive;

/// Starts the probe of an instance passive health has just taken out. Ends when the instance answers,
/// or when it is no longer routable (drained or removed).
pub(crate) fn spawn_probe(proxy: Proxy, instance: Arc<InstanceLive>) {
    tracing::warn!(
        message = "Instance taken out of traffic after connection failures.",
        instance = %instance.id(),
        addr = %instance.addr()
    );
    let config = proxy.config().clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(config.passive_health.probe_interval) => {}
                () = instance.cut.cancelled() => return,
            }
            if matches!(instance.state(), InstanceState::Drained) {
                return;
            }
            let connected = tokio::time::timeout(
                config.upstream_connect_timeout,
                TcpStream::connect(instance.addr()),
            )
            .await;
            if let Ok(Ok(_stream)) = connected {
                instance.mark_up();
                proxy.publish();
                tracing::info!(
                    message = "Instance back in traffic after a successful probe.",
                    instance = %instance.id()
                );
                return;
            }
        }
    });
}

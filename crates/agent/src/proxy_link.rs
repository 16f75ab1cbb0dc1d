//! The agent's link to its proxy: a separate `rollway proxy` process, started by the agent if none
//! answers on the control socket, and outliving the agent (as app instances do).
//!
//! The agent only ever sends the whole desired routing state; the proxy persists it before
//! applying it, so a proxy restarted without the agent still serves the last known routes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy::DesiredState;
use proxy::control_client::ControlClient;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot start the proxy (`{exe} proxy`)")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy did not answer on `{socket}` within {seconds}s; see `{log}`")]
    NotReady {
        socket: String,
        seconds: u64,
        log: String,
    },
    #[error("the proxy refused the routing update: {0}")]
    Control(String),
}

/// Where the proxy process keeps its files, and how to reach it.
#[derive(Clone)]
pub struct ProxyLink {
    pub dir: PathBuf,
    pub socket: PathBuf,
    client: ControlClient,
}

impl ProxyLink {
    pub fn new(dir: PathBuf) -> ProxyLink {
        let socket = dir.join(proxy::control_socket::SOCKET_FILE_NAME);
        ProxyLink {
            client: ControlClient::new(socket.clone()),
            dir,
            socket,
        }
    }

    /// Reuses a proxy that answers, or starts `exe proxy --state DIR --listen ADDR` detached.
    pub async fn ensure_running(
        &self,
        exe: &Path,
        listen: SocketAddr,
        metrics: Option<SocketAddr>,
    ) -> Result<(), LinkError> {
        if self.client.healthz().await.is_ok() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| LinkError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        let log_path = self.dir.join("proxy.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| LinkError::Spawn {
                exe: exe.display().to_string(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| LinkError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        // Its own process group, no pipe to the agent: a kill -9 of the agent leaves it serving.
        #[allow(
            clippy::disallowed_methods,
            reason = "the proxy is Rollway's own process, not an app instance"
        )]
        let mut command = std::process::Command::new(exe);
        command
            .arg("proxy")
            .arg("--state")
            .arg(&self.dir)
            .arg("--listen")
            .arg(listen.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if let Some(metrics) = metrics {
            command.arg("--metrics").arg(metrics.to_string());
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().map_err(|source| LinkError::Spawn {
            exe: exe.display().to_string(),
            source,
        })?;
        // Reap it if it exits while this agent lives; otherwise it is adopted by init.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let wait = Duration::from_secs(15);
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if self.client.healthz().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LinkError::NotReady {
            socket: self.socket.display().to_string(),
            seconds: wait.as_secs(),
            log: log_path.display().to_string(),
        })
    }

    pub async fn put_state(&self, desired: &DesiredState) -> Result<(), LinkError> {
        self.client
            .put_state(desired)
            .await
            .map(|_| ())
            .map_err(|error| LinkError::Control(error.to_string()))
    }

    /// Ids of every instance the proxy still holds (ready or draining).
    pub async fn observed_instances(&self) -> Result<BTreeSet<String>, LinkError> {
        let observed = self
            .client
            .state()
            .await
            .map_err(|error| LinkError::Control(error.to_string()))?;
        Ok(observed
            .routes
            .into_iter()
            .flat_map(|route| route.instances)
            .map(|instance| instance.id)
            .collect())
    }

    pub fn client(&self) -> &ControlClient {
        &self.client
    }
}

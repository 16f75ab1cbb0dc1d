//! The drivers the agent runs instances with: the process driver always, the container driver
//! when a release has `image` or `dockerfile` services, the swarm driver for an environment with
//! `driver = "swarm"` (both connected on first use, so an agent on a host without Docker works
//! as long as nothing asks for containers). A spec with a `cluster` goes to the swarm driver,
//! one with an `image` to the container driver, any other to the process driver.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use driver::container::{ContainerDriver, ContainerDriverConfig};
use driver::process::ProcessDriver;
use driver::swarm::{SwarmDriver, SwarmDriverConfig};
use driver::{Driver, DriverError, InstanceSpec, InstanceStatus, LogCursor, LogLine};

/// Why an instance could not be started or adopted.
#[derive(Debug, thiserror::Error)]
pub enum DriversError {
    #[error("this release needs the container driver, but it is not available")]
    NoContainerDriver {
        #[source]
        source: driver::container::ContainerError,
    },
    #[error(
        "this environment runs on the swarm (`driver = \"swarm\"`), but the swarm driver is not available"
    )]
    NoSwarmDriver {
        #[source]
        source: driver::swarm::SwarmError,
    },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

pub struct Drivers {
    pub process: Arc<ProcessDriver>,
    container: tokio::sync::OnceCell<Arc<ContainerDriver>>,
    /// Instances run by the container driver. std Mutex: set edits only.
    containers: Mutex<BTreeSet<String>>,
    swarm: tokio::sync::OnceCell<Arc<SwarmDriver>>,
    /// Instances run by the swarm driver. std Mutex: set edits only.
    swarm_instances: Mutex<BTreeSet<String>>,
    /// Whoever follows the swarm's task changes (the agent's routing), told once it connects.
    swarm_connected: tokio::sync::watch::Sender<Option<Arc<SwarmDriver>>>,
}

impl Drivers {
    pub fn new(process: Arc<ProcessDriver>) -> Drivers {
        Drivers {
            process,
            container: tokio::sync::OnceCell::new(),
            containers: Mutex::new(BTreeSet::new()),
            swarm: tokio::sync::OnceCell::new(),
            swarm_instances: Mutex::new(BTreeSet::new()),
            swarm_connected: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The swarm driver, connecting to the Engine API of this host (a swarm manager) on first
    /// use.
    pub async fn swarm(&self) -> Result<Arc<SwarmDriver>, DriversError> {
        let swarm = self
            .swarm
            .get_or_try_init(|| async {
                SwarmDriver::connect(SwarmDriverConfig::default())
                    .await
                    .map_err(|source| DriversError::NoSwarmDriver { source })
            })
            .await
            .cloned()?;
        self.swarm_connected.send_if_modified(|connected| {
            let first = connected.is_none();
            if first {
                *connected = Some(Arc::clone(&swarm));
            }
            first
        });
        Ok(swarm)
    }

    /// Resolves with the swarm driver once something connected it.
    pub fn swarm_connected(&self) -> tokio::sync::watch::Receiver<Option<Arc<SwarmDriver>>> {
        self.swarm_connected.subscribe()
    }

    pub fn is_swarm(&self, instance_id: &str) -> bool {
        self.swarm_instances
            .lock()
            .map(|set| set.contains(instance_id))
            .unwrap_or(false)
    }

    /// Where a swarm instance's running task answers now; `None` for other drivers' instances
    /// and while no task of the instance runs.
    pub fn address(&self, instance_id: &str) -> Option<std::net::SocketAddr> {
        if !self.is_swarm(instance_id) {
            return None;
        }
        self.swarm.get()?.address(instance_id)
    }

    /// Why Swarm could not run a swarm instance's task (`docker service ps`'s error); `None` for
    /// other drivers' instances and when Swarm said nothing.
    pub fn task_error(&self, instance_id: &str) -> Option<String> {
        if !self.is_swarm(instance_id) {
            return None;
        }
        self.swarm.get()?.task_error(instance_id)
    }

    /// The container driver, connecting to the Docker Engine API on first use.
    pub async fn container(&self) -> Result<Arc<ContainerDriver>, DriversError> {
        self.container
            .get_or_try_init(|| async {
                let mut config = ContainerDriverConfig::default();
                if let Ok(network) = std::env::var("ROLLWAY_CONTAINER_NETWORK") {
                    config.network = Some(network);
                }
                ContainerDriver::connect(config)
                    .await
                    .map(Arc::new)
                    .map_err(|source| DriversError::NoContainerDriver { source })
            })
            .await
            .cloned()
    }

    fn is_container(&self, instance_id: &str) -> bool {
        self.containers
            .lock()
            .map(|set| set.contains(instance_id))
            .unwrap_or(false)
    }

    fn mark(&self, spec: &InstanceSpec) {
        let set = if spec.cluster.is_some() {
            &self.swarm_instances
        } else if spec.image.is_some() {
            &self.containers
        } else {
            return;
        };
        if let Ok(mut set) = set.lock() {
            set.insert(spec.instance_id.clone());
        }
    }

    pub async fn start(&self, spec: InstanceSpec) -> Result<(), DriversError> {
        if spec.cluster.is_some() {
            self.mark(&spec);
            let swarm = self.swarm().await?;
            Ok(swarm.start(spec).await?)
        } else if spec.image.is_some() {
            self.mark(&spec);
            let container = self.container().await?;
            Ok(container.start(spec).await?)
        } else {
            Ok(self.process.start(spec).await?)
        }
    }

    pub async fn adopt(&self, spec: InstanceSpec) -> Result<bool, DriversError> {
        if spec.cluster.is_some() {
            self.mark(&spec);
            let swarm = self.swarm().await?;
            Ok(swarm.adopt(spec).await?)
        } else if spec.image.is_some() {
            self.mark(&spec);
            let container = self.container().await?;
            Ok(container.adopt(spec).await?)
        } else {
            Ok(self.process.adopt(spec).await?)
        }
    }

    pub async fn stop(&self, instance_id: &str) -> Result<(), DriverError> {
        if self.is_swarm(instance_id) {
            if let Some(swarm) = self.swarm.get() {
                swarm.stop(instance_id).await?;
            }
            if let Ok(mut set) = self.swarm_instances.lock() {
                set.remove(instance_id);
            }
            Ok(())
        } else if self.is_container(instance_id) {
            if let Some(container) = self.container.get() {
                container.stop(instance_id).await?;
            }
            if let Ok(mut set) = self.containers.lock() {
                set.remove(instance_id);
            }
            Ok(())
        } else {
            self.process.stop(instance_id).await
        }
    }

    /// Promotes an instance started below the agent's priority (the process driver's new
    /// instances, `driver::priority`) to the agent's, once it passed its health gate. Containers
    /// and swarm tasks start at their engine's priority: nothing to do.
    pub fn promote(&self, instance_id: &str) {
        if !self.is_swarm(instance_id) && !self.is_container(instance_id) {
            self.process.promote(instance_id);
        }
    }

    pub fn status(&self, instance_id: &str) -> InstanceStatus {
        if self.is_swarm(instance_id) {
            return self
                .swarm
                .get()
                .map_or(InstanceStatus::Unknown, |swarm| swarm.status(instance_id));
        }
        match (self.is_container(instance_id), self.container.get()) {
            (true, Some(container)) => container.status(instance_id),
            (true, None) => InstanceStatus::Unknown,
            (false, _) => self.process.status(instance_id),
        }
    }

    pub fn logs(&self, instance_id: &str, n: usize) -> Result<Vec<LogLine>, DriverError> {
        if self.is_swarm(instance_id) {
            return match self.swarm.get() {
                Some(swarm) => swarm.logs(instance_id, n),
                None => Ok(Vec::new()),
            };
        }
        match (self.is_container(instance_id), self.container.get()) {
            (true, Some(container)) => container.logs(instance_id, n),
            (true, None) => Ok(Vec::new()),
            (false, _) => self.process.logs(instance_id, n),
        }
    }

    /// Lines after `cursor` (`None`: from now on), for following.
    pub fn logs_after(
        &self,
        instance_id: &str,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<LogLine>, LogCursor), DriverError> {
        if self.is_swarm(instance_id) {
            return match self.swarm.get() {
                Some(swarm) => swarm.logs_after(instance_id, cursor),
                None => Err(DriverError::UnknownInstance(instance_id.to_owned())),
            };
        }
        match (self.is_container(instance_id), self.container.get()) {
            (true, Some(container)) => container.logs_after(instance_id, cursor),
            (true, None) => Err(DriverError::UnknownInstance(instance_id.to_owned())),
            (false, _) => self.process.logs_after(instance_id, cursor),
        }
    }
}

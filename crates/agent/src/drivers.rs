//! The drivers the agent runs instances with: the process driver always, the container driver
//! when a release has `image` or `dockerfile` services (connected on first use, so an agent on a
//! host without Docker works as long as nothing asks for containers).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use driver::container::{ContainerDriver, ContainerDriverConfig};
use driver::process::ProcessDriver;
use driver::{Driver, DriverError, InstanceSpec, InstanceStatus, LogCursor, LogLine};

/// Why an instance could not be started or adopted.
#[derive(Debug, thiserror::Error)]
pub enum DriversError {
    #[error("this release needs the container driver, but it is not available")]
    NoContainerDriver {
        #[source]
        source: driver::container::ContainerError,
    },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

pub struct Drivers {
    pub process: Arc<ProcessDriver>,
    container: tokio::sync::OnceCell<Arc<ContainerDriver>>,
    /// Instances run by the container driver. std Mutex: set edits only.
    containers: Mutex<BTreeSet<String>>,
}

impl Drivers {
    pub fn new(process: Arc<ProcessDriver>) -> Drivers {
        Drivers {
            process,
            container: tokio::sync::OnceCell::new(),
            containers: Mutex::new(BTreeSet::new()),
        }
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
        if spec.image.is_some()
            && let Ok(mut set) = self.containers.lock()
        {
            set.insert(spec.instance_id.clone());
        }
    }

    pub async fn start(&self, spec: InstanceSpec) -> Result<(), DriversError> {
        if spec.image.is_some() {
            self.mark(&spec);
            let container = self.container().await?;
            Ok(container.start(spec).await?)
        } else {
            Ok(self.process.start(spec).await?)
        }
    }

    pub async fn adopt(&self, spec: InstanceSpec) -> Result<bool, DriversError> {
        if spec.image.is_some() {
            self.mark(&spec);
            let container = self.container().await?;
            Ok(container.adopt(spec).await?)
        } else {
            Ok(self.process.adopt(spec).await?)
        }
    }

    pub async fn stop(&self, instance_id: &str) -> Result<(), DriverError> {
        if self.is_container(instance_id) {
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

    pub fn status(&self, instance_id: &str) -> InstanceStatus {
        match (self.is_container(instance_id), self.container.get()) {
            (true, Some(container)) => container.status(instance_id),
            (true, None) => InstanceStatus::Unknown,
            (false, _) => self.process.status(instance_id),
        }
    }

    pub fn logs(&self, instance_id: &str, n: usize) -> Result<Vec<LogLine>, DriverError> {
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
        match (self.is_container(instance_id), self.container.get()) {
            (true, Some(container)) => container.logs_after(instance_id, cursor),
            (true, None) => Err(DriverError::UnknownInstance(instance_id.to_owned())),
            (false, _) => self.process.logs_after(instance_id, cursor),
        }
    }
}

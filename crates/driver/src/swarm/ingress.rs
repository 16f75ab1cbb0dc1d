//! The proxy that follows the agent as a global Swarm service on the ingress nodes (issue 17):
//! created or replaced whole by the agent (`agent::swarm_ingress`), which decides what runs; this
//! module only speaks to the engine.
//!
//! The service uses the node's host network: the proxy binds the node's ports itself and reaches
//! each task at `<node address>:<published port>`, the addresses of the desired state the agent
//! streams, and the agent's API at the address it is given. Its token is a Swarm secret (one per
//! token, `<service>-token-<token id>`), mounted at `/run/secrets/<service>-token`: never in the
//! spec, argv or a task's env.

use std::collections::HashMap;

use bollard::models::{
    NetworkAttachmentConfig, SecretSpec, ServiceSpec, ServiceSpecMode, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use bollard::query_parameters::{ListSecretsOptions, UpdateServiceOptions};
use tracing::info;

use super::{RegistryAuth, SwarmDriver, SwarmError, base64};
use crate::container::LABEL_OWNER;
use crate::container::engine::EngineError;

/// The label naming the ingress service a token secret belongs to.
pub const LABEL_INGRESS: &str = "dev.rollway.ingress";

/// What the ingress service runs. `Debug` leaves the token out.
#[derive(Clone)]
pub struct IngressService {
    /// `rollway-proxy`.
    pub name: String,
    /// By digest, from a registry every node can pull from.
    pub image: String,
    /// The proxy's arguments (the image's entrypoint is the binary). No secret.
    pub args: Vec<String>,
    /// `NAME=VALUE`, no secret (Swarm templates such as `{{.Node.Hostname}}` are expanded per task).
    pub env: Vec<String>,
    /// Placement constraints (`node.labels.rollway.ingress == true`).
    pub constraints: Vec<String>,
    /// Labels of the service, such as what the agent compares to decide whether to replace it.
    pub labels: HashMap<String, String>,
    /// The token's id (names the secret) and value (its content).
    pub token_id: String,
    pub token: String,
    pub registry_auth: Option<RegistryAuth>,
}

impl std::fmt::Debug for IngressService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressService")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("args", &self.args)
            .field("constraints", &self.constraints)
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl IngressService {
    /// Where the token is inside each task.
    pub fn token_path(name: &str) -> String {
        format!("/run/secrets/{name}-token")
    }
}

impl SwarmDriver {
    /// The labels of service `name`, or `None` when there is no such service.
    pub async fn service_labels(
        &self,
        name: &str,
    ) -> Result<Option<HashMap<String, String>>, SwarmError> {
        match self.docker.inspect_service(name, None).await {
            Ok(service) => Ok(Some(
                service
                    .spec
                    .and_then(|spec| spec.labels)
                    .unwrap_or_default(),
            )),
            Err(error) => {
                let error = EngineError::from(error);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(ingress_error("cannot inspect", name)(error))
                }
            }
        }
    }

    /// Creates the global service `service.name`, or replaces its spec whole (a rolling update,
    /// stop-first: the new task needs the node's ports). Its token secret is created first; the
    /// secrets of earlier tokens are removed once no task uses them (or left for the next call).
    pub async fn put_ingress(&self, service: &IngressService) -> Result<(), SwarmError> {
        let name = service.name.as_str();
        let secret = format!("{name}-token-{}", service.token_id);
        let secret_id = self
            .create_token_secret(&secret, service)
            .await
            .map_err(ingress_error("cannot create the token secret of", name))?;
        let spec = ingress_spec(service, (&secret, &secret_id), &self.config.owner);
        let auth = service
            .registry_auth
            .as_ref()
            .map(RegistryAuth::credentials);
        let existing = match self.docker.inspect_service(name, None).await {
            Ok(existing) => Some(existing),
            Err(error) => {
                let error = EngineError::from(error);
                if !error.is_not_found() {
                    return Err(ingress_error("cannot inspect", name)(error));
                }
                None
            }
        };
        let put = match existing {
            None => self
                .docker
                .create_service(spec, auth)
                .await
                .map(|_| "created"),
            Some(existing) => {
                let version = existing
                    .version
                    .and_then(|version| version.index)
                    .and_then(|index| i32::try_from(index).ok())
                    .unwrap_or_default();
                let options = UpdateServiceOptions {
                    version,
                    ..UpdateServiceOptions::default()
                };
                self.docker
                    .update_service(name, spec, options, auth)
                    .await
                    .map(|_| "updated")
            }
        };
        let done = match put {
            Ok(done) => done,
            Err(error) => {
                self.remove_secret(&secret).await;
                return Err(ingress_error("cannot create or update", name)(error.into()));
            }
        };
        info!(message = "Ingress service put.", service = %name, image = %service.image, done);
        // Earlier tokens' secrets: removed once the old tasks are gone (bounded wait each).
        let filters =
            HashMap::from([("label".to_owned(), vec![format!("{LABEL_INGRESS}={name}")])]);
        let secrets = self
            .docker
            .list_secrets(Some(ListSecretsOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap_or_default();
        for old in secrets
            .into_iter()
            .filter_map(|found| found.spec.and_then(|spec| spec.name))
            .filter(|old| *old != secret)
        {
            self.remove_secret(&old).await;
        }
        Ok(())
    }

    async fn create_token_secret(
        &self,
        secret: &str,
        service: &IngressService,
    ) -> Result<String, EngineError> {
        let spec = SecretSpec {
            name: Some(secret.to_owned()),
            labels: Some(HashMap::from([
                (LABEL_OWNER.to_owned(), self.config.owner.clone()),
                (LABEL_INGRESS.to_owned(), service.name.clone()),
            ])),
            data: Some(base64(service.token.as_bytes())),
            ..SecretSpec::default()
        };
        Ok(self.docker.create_secret(spec).await?.id)
    }
}

fn ingress_spec(
    service: &IngressService,
    (secret, secret_id): (&str, &str),
    owner: &str,
) -> ServiceSpec {
    let mut labels = service.labels.clone();
    labels.insert(LABEL_OWNER.to_owned(), owner.to_owned());
    labels.insert(LABEL_INGRESS.to_owned(), service.name.clone());
    let container_spec = TaskSpecContainerSpec {
        image: Some(service.image.clone()),
        labels: Some(labels.clone()),
        args: Some(service.args.clone()),
        env: Some(service.env.clone()),
        init: Some(true),
        secrets: Some(vec![TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(format!("{}-token", service.name)),
                uid: Some("0".to_owned()),
                gid: Some("0".to_owned()),
                mode: Some(0o400),
            }),
            secret_name: Some(secret.to_owned()),
            secret_id: Some(secret_id.to_owned()),
        }]),
        ..TaskSpecContainerSpec::default()
    };
    ServiceSpec {
        name: Some(service.name.clone()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container_spec),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(1_000_000_000),
                ..TaskSpecRestartPolicy::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(service.constraints.clone()),
                ..TaskSpecPlacement::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some("host".to_owned()),
                ..NetworkAttachmentConfig::default()
            }]),
            ..TaskSpec::default()
        }),
        mode: Some(ServiceSpecMode {
            global: Some(HashMap::new()),
            ..ServiceSpecMode::default()
        }),
        ..ServiceSpec::default()
    }
}

fn ingress_error(what: &'static str, name: &str) -> impl FnOnce(EngineError) -> SwarmError {
    let name = name.to_owned();
    move |source| SwarmError::Ingress {
        what,
        service: name,
        source,
    }
}

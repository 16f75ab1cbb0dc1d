//! Rollway's proxy on the cluster (issue 17): with `rollway agent --swarm-ingress PORT`, the agent
//! keeps a global Swarm service `rollway-proxy` on the nodes labelled `rollway.ingress == true`,
//! each task a `rollway proxy --follow` of this agent (`commands/proxy_follow.rs`) serving the apps on
//! `PORT` of its node.
//!
//! - Image: the agent's own executable and the shared libraries `ldd` lists, in a build context
//!   of the state directory (`ingress-image/`, `FROM scratch`), built by the engine, pushed to
//!   `ROLLWAY_SWARM_REGISTRY` as `rollway/proxy:<revision>` and deployed by digest.
//! - Token: a token of role proxy minted for the service and given as a Swarm secret; the previous
//!   one is revoked once the service runs with the new one.
//! - Revision: a hash of the executable's identity (device, inode, size, mtime), the port, the
//!   agent's URL and its API fingerprint, kept as a service label. Every 30 s (and at start) the
//!   agent compares it and that the service's token is still valid: a new agent binary, another
//!   port or a revoked token replaces the service (image, token, spec), a service removed by hand
//!   comes back; otherwise nothing is touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use driver::swarm::IngressService;
use sha2::Digest as _;

use crate::engine::Engine;
use crate::store::NewEvent;
use crate::tokens::{self, Role};

/// The service's name.
pub const SERVICE: &str = "rollway-proxy";
/// The node label that makes a node an ingress node.
pub const NODE_CONSTRAINT: &str = "node.labels.rollway.ingress == true";
/// How often the agent checks the service.
const EVERY: Duration = Duration::from_secs(30);
const LABEL_REVISION: &str = "dev.rollway.ingress-revision";
const LABEL_TOKEN: &str = "dev.rollway.ingress-token";

/// `--swarm-ingress PORT` and where the followers reach the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmIngress {
    pub port: u16,
    /// `--swarm-ingress-https PORT`: the nodes serve HTTPS there too, with the agent's
    /// certificates (which reach the followers with the routing, `GET /v1/proxy/state`).
    pub https_port: Option<u16>,
    /// The agent's API as the nodes reach it (`--swarm-ingress-agent`, default the API's own URL).
    pub agent_url: String,
}

/// Why the service could not be put.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("the swarm ingress needs the swarm driver")]
    Drivers(#[source] Box<crate::drivers::DriversError>),
    #[error("the swarm ingress needs a registry every node can pull from")]
    NoRegistry(#[from] crate::registry::NoClusterRegistry),
    #[error("cannot prepare the proxy image's files in `{}`", path.display())]
    Files {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list the shared libraries of `{}` with `ldd`: {reason}", exe.display())]
    Libraries { exe: PathBuf, reason: String },
    #[error("cannot build the proxy image")]
    Build(#[source] Box<driver::container::ContainerError>),
    #[error(transparent)]
    Swarm(Box<driver::swarm::SwarmError>),
    #[error("cannot mint or revoke the proxy's token")]
    Token(#[from] crate::store::StoreError),
}

impl From<driver::swarm::SwarmError> for IngressError {
    fn from(error: driver::swarm::SwarmError) -> IngressError {
        IngressError::Swarm(Box::new(error))
    }
}

impl From<crate::drivers::DriversError> for IngressError {
    fn from(error: crate::drivers::DriversError) -> IngressError {
        IngressError::Drivers(Box::new(error))
    }
}

/// Keeps the service in place until the agent stops.
pub async fn run(engine: Arc<Engine>, ingress: SwarmIngress) {
    let exe = PathBuf::from("/proc/self/exe");
    loop {
        match ensure(&engine, &ingress, &exe).await {
            Ok(false) => {}
            Ok(true) => engine.record(NewEvent {
                app: None,
                environment: None,
                deployment_id: None,
                kind: "ingress.updated".to_owned(),
                message: format!(
                    "the swarm ingress `{SERVICE}` serves port {}{} on the nodes with `{NODE_CONSTRAINT}`",
                    ingress.port,
                    ingress
                        .https_port
                        .map(|port| format!(" and HTTPS on {port}"))
                        .unwrap_or_default(),
                ),
                data_json: serde_json::json!({ "port": ingress.port, "https_port": ingress.https_port }).to_string(),
            }),
            Err(error) => tracing::error!(
                message = "Cannot put the swarm ingress; trying again.",
                error = %crate::report::chain(&error),
            ),
        }
        tokio::select! {
            () = engine.shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// Puts the service when it is missing or differs; `true` when it did.
async fn ensure(
    engine: &Arc<Engine>,
    ingress: &SwarmIngress,
    exe: &Path,
) -> Result<bool, IngressError> {
    let swarm = engine.drivers.swarm().await?;
    let revision = revision(engine, ingress, exe);
    let labels = swarm.service_labels(SERVICE).await?;
    let old_token = labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_TOKEN))
        .cloned();
    let token_valid = match &old_token {
        Some(id) => engine.store.tokens()?.iter().any(|token| {
            token.id == *id && token.revoked_at.is_none() && token.role == Role::Proxy
        }),
        None => false,
    };
    if token_valid
        && labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_REVISION))
            .is_some_and(|current| *current == revision)
    {
        return Ok(false);
    }
    let registry = crate::registry::default_cluster_registry(&engine.registry)?;
    let context = engine.paths.state_dir.join("ingress-image");
    prepare_context(exe, &context).await?;
    let container = engine.drivers.container().await?;
    let image = container
        .build_image(
            &context,
            "Dockerfile",
            &format!("rollway/proxy:{revision}"),
            |_| {},
        )
        .await
        .map_err(|error| IngressError::Build(Box::new(error)))?;
    let image = swarm
        .push_image(
            &image,
            &format!("{}/proxy", registry.prefix),
            &revision,
            registry.push.as_ref(),
            |_| {},
        )
        .await?;
    let _ = tokio::fs::remove_dir_all(&context).await;

    let (record, token) = tokens::create(&engine.store, "swarm-ingress", Role::Proxy)?;
    let args = follower_args(ingress, engine.api_fingerprint);
    let service = IngressService {
        name: SERVICE.to_owned(),
        image,
        args,
        // The host name and the node's id: host names need not differ between nodes (clones of
        // one image, or nodes on one machine), and followers of one id would be taken for one
        // proxy restarting over and over (its counts summed again at each report).
        env: vec!["ROLLWAY_PROXY_ID={{.Node.Hostname}}-{{.Node.ID}}".to_owned()],
        constraints: vec![NODE_CONSTRAINT.to_owned()],
        labels: HashMap::from([
            (LABEL_REVISION.to_owned(), revision),
            (LABEL_TOKEN.to_owned(), record.id.clone()),
        ]),
        token_id: record.id.clone(),
        token: token.expose().to_owned(),
        registry_auth: registry.pull.clone(),
    };
    if let Err(error) = swarm.put_ingress(&service).await {
        let _ = engine.store.revoke_token(&record.id);
        return Err(error.into());
    }
    if let Some(old) = old_token.filter(|old| *old != record.id) {
        let _ = engine.store.revoke_token(&old);
    }
    Ok(true)
}

/// The arguments of each task: `rollway proxy --follow` of this agent on the node's ports.
fn follower_args(
    ingress: &SwarmIngress,
    fingerprint: Option<client::pin::Fingerprint>,
) -> Vec<String> {
    let mut args = vec![
        "proxy".to_owned(),
        "--follow".to_owned(),
        ingress.agent_url.clone(),
        "--state".to_owned(),
        "/var/lib/rollway-proxy".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{}", ingress.port),
        "--token-file".to_owned(),
        IngressService::token_path(SERVICE),
    ];
    if let Some(https_port) = ingress.https_port {
        args.extend(["--https".to_owned(), format!("0.0.0.0:{https_port}")]);
    }
    if let Some(fingerprint) = fingerprint {
        args.extend(["--follow-fingerprint".to_owned(), fingerprint.to_string()]);
    }
    args
}

/// What decides whether the running service is this agent's: its binary, ports, URL, certificate.
fn revision(engine: &Engine, ingress: &SwarmIngress, exe: &Path) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(proxy::process::binary_identity(exe).unwrap_or_default());
    hash.update([0]);
    hash.update(ingress.port.to_string());
    hash.update([0]);
    hash.update(
        ingress
            .https_port
            .map(|port| port.to_string())
            .unwrap_or_default(),
    );
    hash.update([0]);
    hash.update(&ingress.agent_url);
    hash.update([0]);
    hash.update(
        engine
            .api_fingerprint
            .map(|fingerprint| fingerprint.to_string())
            .unwrap_or_default(),
    );
    hex::encode(hash.finalize())[..16].to_owned()
}

/// The build context: the executable at `/usr/local/bin/rollway`, its shared libraries at the
/// paths `ldd` names, and a `FROM scratch` Dockerfile whose entrypoint is the executable.
async fn prepare_context(exe: &Path, context: &Path) -> Result<(), IngressError> {
    let exe = exe.to_path_buf();
    let context = context.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let files_error = |source| IngressError::Files {
            path: context.clone(),
            source,
        };
        let _ = std::fs::remove_dir_all(&context);
        std::fs::create_dir_all(&context).map_err(files_error)?;
        let mut files = vec![(exe.clone(), PathBuf::from("usr/local/bin/rollway"))];
        // `ldd` (a script running the loader on its argument) needs the file's own path: given
        // `/proc/self/exe` it would list the loader's own libraries.
        let path = std::fs::read_link(&exe).unwrap_or_else(|_| exe.clone());
        for library in shared_libraries(&path)? {
            let inside = library.strip_prefix("/").unwrap_or(&library).to_path_buf();
            files.push((library, inside));
        }
        for (source, inside) in files {
            let destination = context.join(&inside);
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent).map_err(files_error)?;
            }
            // `copy` follows symlinks: a library lands as a file at the path `ldd` printed.
            std::fs::copy(&source, &destination).map_err(files_error)?;
        }
        for dir in ["tmp", "var/lib/rollway-proxy", "etc"] {
            std::fs::create_dir_all(context.join(dir)).map_err(files_error)?;
        }
        std::fs::write(
            context.join("Dockerfile"),
            "FROM scratch\nCOPY . /\nENTRYPOINT [\"/usr/local/bin/rollway\"]\n",
        )
        .map_err(files_error)?;
        Ok(())
    })
    .await
    .map_err(|error| IngressError::Files {
        path: PathBuf::from("ingress-image"),
        source: std::io::Error::other(error),
    })?
}

/// The absolute paths of the shared libraries (and the loader) `ldd` lists for `exe`.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, IngressError> {
    let output = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|error| IngressError::Libraries {
            exe: exe.to_path_buf(),
            reason: error.to_string(),
        })?;
    if !output.status.success() {
        return Err(IngressError::Libraries {
            exe: exe.to_path_buf(),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
            let path = match line.split_once("=>") {
                Some((_, after)) => after.trim(),
                None => line.trim(),
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(https_port: Option<u16>) -> SwarmIngress {
        SwarmIngress {
            port: 8080,
            https_port,
            agent_url: "https://10.0.0.5:7443".to_owned(),
        }
    }

    #[test]
    fn the_tasks_serve_https_only_with_an_https_port() {
        let plain = follower_args(&ingress(None), None);
        assert!(!plain.iter().any(|arg| arg == "--https"), "{plain:?}");
        let https = follower_args(&ingress(Some(8443)), None);
        let at = https
            .iter()
            .position(|arg| arg == "--https")
            .expect("--https");
        assert_eq!(https[at + 1], "0.0.0.0:8443");
        assert_eq!(
            https
                .iter()
                .position(|arg| arg == "--listen")
                .map(|at| &https[at + 1]),
            Some(&"0.0.0.0:8080".to_owned())
        );
    }
}

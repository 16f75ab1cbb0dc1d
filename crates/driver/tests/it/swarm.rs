//! The swarm driver against a real single-node swarm and a real registry on loopback: a
//! release's service with its placement, its tasks' addresses, secrets out of every inspect, a
//! task killed by hand and replaced, the release command as a job, and stop.
//!
//! Needs an engine that is a swarm manager (scripts/test runs `docker swarm init` when it is
//! not) and Debian's `docker-registry`. Without them the tests skip with one printed line,
//! unless `CI`, `ROLLWAY_E2E` or `ROLLWAY_REQUIRE_DOCKER` is set: there they fail.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use driver::container::LABEL_OWNER;
use driver::swarm::{ClusterSpec, SwarmDriver, SwarmDriverConfig};
use driver::{Driver, InstanceSpec, InstanceStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::container::{docker, docker_inspect, import_base_image, unique};
use crate::support::eventually;

const OWNER: &str = "rollway-swarm-driver-tests";
const CANARY: &str = "swarm-canary-3f9c1e7b5d";

#[tokio::test]
async fn a_release_runs_as_a_placed_service_whose_tasks_answer_keep_secrets_and_are_replaced() {
    let Some(setup) = Setup::new("svc").await else {
        return;
    };
    let specs: Vec<InstanceSpec> = (1..=2)
        .map(|slot| setup.spec(slot, 2, &[("SECRET_TOKEN", CANARY), ("VERSION", "v1")]))
        .collect();
    for spec in &specs {
        setup.driver.start(spec.clone()).await.expect("start");
    }
    let mut addresses = Vec::new();
    for spec in &specs {
        let address = answering(&setup.driver, &spec.instance_id).await;
        assert_eq!(get(address, "/").await.as_deref(), Some("v1\n"));
        // The secret reached the app through the entrypoint.
        assert_eq!(
            get(address, "/env/SECRET_TOKEN").await.as_deref(),
            Some(CANARY)
        );
        addresses.push(address);
    }
    assert_ne!(addresses[0], addresses[1], "each task has its own port");
    assert!(matches!(
        setup.driver.status(&specs[0].instance_id),
        InstanceStatus::Running { restarts: 0, .. }
    ));
    assert_eq!(
        setup.driver.running(),
        vec![specs[0].instance_id.clone(), specs[1].instance_id.clone()]
    );

    // What the engine holds: the placement, dnsrr on the overlay, the image by digest, and no
    // secret anywhere in the service or its task containers.
    let service = docker_inspect(&setup.service).expect("inspect the service");
    let spec = &service["Spec"];
    assert_eq!(spec["EndpointSpec"]["Mode"], "dnsrr");
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 2);
    let template = &spec["TaskTemplate"];
    assert_eq!(
        template["Placement"]["Constraints"],
        serde_json::json!(["node.role == manager"])
    );
    assert_eq!(template["Placement"]["MaxReplicas"], 2);
    assert_eq!(template["Resources"]["Limits"]["NanoCPUs"], 200_000_000);
    assert_eq!(template["Resources"]["Limits"]["MemoryBytes"], 64 << 20);
    assert_eq!(
        template["Resources"]["Reservations"]["MemoryBytes"],
        64 << 20
    );
    assert!(
        template["ContainerSpec"]["Image"]
            .as_str()
            .is_some_and(|image| image.contains("@sha256:")),
        "{}",
        template["ContainerSpec"]["Image"]
    );
    assert_eq!(
        template["ContainerSpec"]["Env"],
        serde_json::json!([format!("PORT={}", specs[0].port)])
    );
    let network = docker_inspect(&setup.network).expect("inspect the network");
    assert_eq!(network["Driver"], "overlay");
    assert_eq!(network["Attachable"], true);
    let mut inspected = vec![service.to_string()];
    for task in task_ids(&setup.service) {
        inspected.push(docker(&["inspect", &task]).expect("inspect a task"));
        let container =
            docker_inspect(&task).expect("task")["Status"]["ContainerStatus"]["ContainerID"]
                .as_str()
                .expect("container id")
                .to_owned();
        inspected.push(docker(&["inspect", &container]).expect("inspect a task container"));
    }
    inspected
        .push(docker(&["secret", "inspect", &format!("{}-env", setup.service)]).expect("secret"));
    for text in &inspected {
        assert!(
            !text.contains(CANARY),
            "the secret is in an inspect: {text}"
        );
    }

    // A task killed by hand: Swarm replaces it in the same slot, on another port, and the
    // driver says so.
    let mut changes = setup.driver.changes();
    changes.borrow_and_update();
    let container = task_container(&setup.service, 1);
    docker(&["kill", &container]).expect("docker kill");
    let replaced = eventually("slot 1 runs a replacement on a new address", async || {
        let address = setup.driver.address(&specs[0].instance_id)?;
        let restarted = matches!(
            setup.driver.status(&specs[0].instance_id),
            InstanceStatus::Running { restarts: 1.., .. }
        );
        (restarted && address != addresses[0]).then_some(address)
    })
    .await;
    assert!(
        changes.has_changed().expect("driver alive"),
        "a change was announced"
    );
    eventually("the replacement answers", async || get(replaced, "/").await).await;
    assert_eq!(
        get(addresses[1], "/").await.as_deref(),
        Some("v1\n"),
        "slot 2 untouched"
    );

    // Stopping one slot keeps the service for the other; the last one removes it and its secret.
    setup
        .driver
        .stop(&specs[0].instance_id)
        .await
        .expect("stop 1");
    assert!(docker_inspect(&setup.service).is_some());
    setup
        .driver
        .stop(&specs[1].instance_id)
        .await
        .expect("stop 2");
    assert!(
        docker_inspect(&setup.service).is_none(),
        "the service is gone"
    );
    assert!(
        docker(&["secret", "inspect", &format!("{}-env", setup.service)]).is_none(),
        "the env secret is gone"
    );
    assert!(setup.driver.address(&specs[1].instance_id).is_none());
    assert_eq!(
        setup.driver.status(&specs[1].instance_id),
        InstanceStatus::Unknown
    );
}

#[tokio::test]
async fn the_release_command_runs_once_as_a_job_and_leaves_nothing_behind() {
    let Some(setup) = Setup::new("job").await else {
        return;
    };
    let mut spec = setup.spec(1, 1, &[("SECRET_TOKEN", CANARY)]);
    spec.command =
        "echo migrating; test -n \"$SECRET_TOKEN\" && echo has-secret; exit 3".to_owned();
    let mut lines = Vec::new();
    let code = setup
        .driver
        .run_job(&spec, Duration::from_secs(60), |line| {
            lines.push(line.to_owned())
        })
        .await
        .expect("run the job");
    assert_eq!(code, 3, "{lines:?}");
    assert_eq!(lines, ["migrating", "has-secret"]);
    assert!(
        docker_inspect(&setup.service).is_none(),
        "the job is removed"
    );
    assert!(docker(&["secret", "inspect", &format!("{}-env", setup.service)]).is_none());
}

#[tokio::test]
async fn a_spec_without_image_or_cluster_or_with_a_bad_slot_is_refused_before_anything_is_created()
{
    let Some(setup) = Setup::new("bad").await else {
        return;
    };
    let mut no_cluster = setup.spec(1, 1, &[]);
    no_cluster.cluster = None;
    let mut no_image = setup.spec(1, 1, &[]);
    no_image.image = None;
    let bad_slot = setup.spec(3, 2, &[]);
    let bad_env = setup.spec(1, 1, &[("NOT-A-NAME", "x")]);
    for (spec, expected) in [
        (no_cluster, "no cluster placement"),
        (no_image, "no image"),
        (bad_slot, "slot 3 of a service with 2 replicas"),
        (bad_env, "NOT-A-NAME"),
    ] {
        let error = setup.driver.start(spec).await.expect_err("refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
    assert!(docker_inspect(&setup.service).is_none());
    assert!(docker_inspect(&setup.network).is_none());
}

/// One test's driver, image in the registry, and names; dropping it removes every service,
/// secret and network it made (also when the test fails).
struct Setup {
    driver: Arc<SwarmDriver>,
    images: Arc<Images>,
    prefix: String,
    service: String,
    network: String,
}

struct Images {
    /// Held for its `Drop`: the registry stops with the last test using it.
    _registry: testkit::registry::Registry,
    base_tag: String,
    app_tag: String,
    /// `127.0.0.1:PORT/rollway-swarm-tests@sha256:...`
    pushed: String,
}

impl Setup {
    async fn new(name: &str) -> Option<Setup> {
        let required = ["CI", "ROLLWAY_REQUIRE_DOCKER", "ROLLWAY_E2E"]
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        let config = SwarmDriverConfig {
            owner: OWNER.to_owned(),
            reconcile_interval: Duration::from_millis(250),
            ..SwarmDriverConfig::default()
        };
        let driver = match SwarmDriver::connect(config).await {
            Ok(driver) => driver,
            Err(error) => {
                assert!(
                    !required,
                    "no swarm, but CI or ROLLWAY_REQUIRE_DOCKER is set: {error}"
                );
                skip(&error.to_string());
                return None;
            }
        };
        let images = match images(&driver).await {
            Ok(images) => images,
            Err(error) => {
                assert!(
                    !required,
                    "no registry, but CI or ROLLWAY_REQUIRE_DOCKER is set: {error}"
                );
                skip(&error);
                return None;
            }
        };
        let prefix = format!("swt{}{}-{name}", std::process::id(), unique() % 1000);
        Some(Setup {
            driver,
            images,
            service: format!("rollway-{prefix}-r1-web"),
            network: format!("rollway-{prefix}"),
            prefix,
        })
    }

    fn spec(&self, slot: u32, replicas: u32, env: &[(&str, &str)]) -> InstanceSpec {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        env.push(("ROLLWAY_APP".to_owned(), self.prefix.clone()));
        InstanceSpec {
            instance_id: format!("{}-r1-web-{slot}", self.prefix),
            workdir: "/".into(),
            command: String::new(),
            env,
            port: 8080,
            stop_timeout: Duration::from_secs(2),
            image: Some(self.images.pushed.clone()),
            confinement: driver::Confinement::default(),
            cluster: Some(ClusterSpec {
                service: self.service.clone(),
                slot,
                replicas,
                network: self.network.clone(),
                constraints: vec!["node.role == manager".to_owned()],
                max_per_node: Some(2),
                nano_cpus: Some(200_000_000),
                memory_bytes: Some(64 << 20),
                registry_auth: None,
            }),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for kind in ["service", "secret"] {
            if let Some(names) = docker(&[
                kind,
                "ls",
                "-q",
                "--filter",
                &format!("name={}", self.network),
            ]) {
                for name in names.split_whitespace() {
                    let _ = docker(&[kind, "rm", name]);
                }
            }
        }
        // The network goes once the tasks that used it are gone.
        for _ in 0..50 {
            if docker_inspect(&self.network).is_none()
                || docker(&["network", "rm", &self.network]).is_some()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.app_tag, &self.base_tag]);
        if let Some((repository, _)) = self.pushed.split_once('@') {
            let _ = docker(&["rmi", "-f", &format!("{repository}:test")]);
        }
    }
}

fn skip(reason: &str) {
    static SKIPPED: OnceLock<()> = OnceLock::new();
    SKIPPED.get_or_init(|| eprintln!("skipping swarm driver tests: {reason}"));
}

/// The registry and the app image pushed to it, shared by the tests that run at once.
async fn images(driver: &SwarmDriver) -> Result<Arc<Images>, String> {
    // tokio Mutex: held across the build and push so that only one test makes them.
    static IMAGES: tokio::sync::Mutex<std::sync::Weak<Images>> =
        tokio::sync::Mutex::const_new(std::sync::Weak::new());
    let mut held = IMAGES.lock().await;
    if let Some(images) = held.upgrade() {
        return Ok(images);
    }
    let registry = testkit::registry::Registry::start().map_err(|error| error.to_string())?;
    let tag = format!("{}-{}", std::process::id(), unique());
    let base_tag = format!("rollway-swarm-tests-base:{tag}");
    import_base_image(&base_tag);
    let context = tempfile::tempdir().expect("build context");
    // demo-app listens on every address of the task (its published port arrives there).
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {base_tag}\nLABEL {LABEL_OWNER}={OWNER}\nENV HOST=0.0.0.0\nCMD [\"demo-app\"]\n"
        ),
    )
    .expect("write Dockerfile");
    let app_tag = format!("rollway-swarm-tests-app:{tag}");
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &app_tag])
        .arg(context.path())
        .output()
        .expect("run docker build");
    assert!(
        built.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let repository = format!("{}/rollway-swarm-tests", registry.host());
    let mut lines = Vec::new();
    let pushed = driver
        .push_image(&app_tag, &repository, "test", None, |line| {
            lines.push(line.to_owned())
        })
        .await
        .unwrap_or_else(|error| panic!("push the test image: {error:?}\n{lines:#?}"));
    assert!(
        pushed.starts_with(&format!("{repository}@sha256:")),
        "{pushed}"
    );
    let images = Arc::new(Images {
        _registry: registry,
        base_tag,
        app_tag,
        pushed,
    });
    *held = Arc::downgrade(&images);
    Ok(images)
}

/// Waits until the instance's task runs with an address that answers `GET /health`.
async fn answering(driver: &SwarmDriver, instance_id: &str) -> SocketAddr {
    eventually(&format!("`{instance_id}` answers"), async || {
        let address = driver.address(instance_id)?;
        get(address, "/health").await.map(|_| address)
    })
    .await
}

fn task_ids(service: &str) -> Vec<String> {
    docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        service,
    ])
    .unwrap_or_default()
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// The container of the running task in `slot`.
fn task_container(service: &str, slot: u64) -> String {
    task_ids(service)
        .into_iter()
        .filter_map(|task| docker_inspect(&task))
        .find(|task| task["Slot"] == slot)
        .and_then(|task| {
            task["Status"]["ContainerStatus"]["ContainerID"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("the task of the slot has a container")
}

/// The body of a `200` answer to `GET path` at `address`.
async fn get(address: SocketAddr, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

//! The swarm driver on two nodes: a swarm of its own, made by `scripts/swarm-nodes` from two
//! extra Docker engines, each in a network namespace of its own (10.231.N.2, the manager, and
//! 10.231.N.3, a worker), with a registry in the manager's namespace that both pull from. The
//! host's engine and its single-node swarm are left alone; the agent runs on the host and talks
//! to the manager's socket (`DOCKER_HOST`), and its proxy routes to `<node address>:<published
//! port>` over the nodes' bridge.
//!
//! Skipped with one printed line when no Docker engine is reachable, or when the nodes cannot be
//! made (not root, no `ip`/`nsenter`/`dockerd`), unless `ROLLWAY_E2E` or `CI` is set: there it
//! fails with what went wrong. The nodes, their namespaces, processes and folders are removed
//! when the test ends, also when it fails (and leftovers of a killed run by the next run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::agent::{Driver, TestAgent, TestApp};
use testkit::load::Load;

use crate::agent::rollway_bin;
use crate::containers::Images;

const ENV: &str = "production";
/// Bound of the load loop; the test stops it long before.
const LOAD_BOUND: Duration = Duration::from_secs(300);
/// Bound of each wait for Swarm to move tasks and for routing to follow.
const PATIENCE: Duration = Duration::from_secs(90);

/// Two replicas of a release spread over both nodes, under continuous load through the agent's
/// proxy: `rollway logs` shows the output of the task on the worker (read through the manager);
/// node b drained (its task moves to node a and routing follows) with no failed request; a new
/// release spread over both nodes again; then node b's power cut (every process of the node
/// killed with SIGKILL: its dockerd, containerd, shims and the task's own process): Swarm marks
/// the node down and reschedules its task on node a, the instance leaves routing and comes back
/// on the new task, and not one request of the load failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_drain_and_node_loss_under_load_fail_no_request() {
    let Some(images) = Images::get() else {
        return;
    };
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let tags: Vec<String> = ["v1", "v2"]
        .iter()
        .map(|version| format!("{}:{version}", images.repository))
        .collect();
    cluster.load_images(&tags);

    let name = format!("sn{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-nodes-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    let agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("DOCKER_HOST", cluster.manager_socket.as_str()),
            ("ROLLWAY_SWARM_REGISTRY", cluster.registry.as_str()),
        ],
    )
    .await;
    let app = |version: &str| {
        TestApp::new(dir.path().join(version))
            .named(&name)
            .version(version)
            .driver(Driver::Container)
            .image(format!("{}:{{version}}", images.repository))
            .replicas(2)
            .start_timeout("60s")
            .on_swarm(ENV)
    };

    // Release 1: Swarm spreads the two tasks over the two nodes.
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    agent.assert_serves("v1").await;
    let r1 = format!("rollway-{name}-{ENV}-r1-web");
    let placed = cluster.running_slots(&r1);
    assert_eq!(
        placed.values().collect::<std::collections::BTreeSet<_>>(),
        [&cluster.manager_node, &cluster.worker_node].into(),
        "the two tasks are not on the two nodes: {placed:?}"
    );
    let on_worker = |placed: &BTreeMap<u64, String>| {
        placed
            .iter()
            .find(|(_, node)| **node == cluster.worker_node)
            .map(|(slot, _)| *slot)
            .expect("a task on the worker")
    };

    // `rollway logs` reads the worker's task through the manager.
    let worker_instance = format!("{name}-{ENV}-r1-web-{}", on_worker(&placed));
    let logs = agent
        .cli(&["logs", "--env", ENV, "--app", &name, "-n", "100"])
        .await;
    logs.assert_code(0);
    let logs = logs.to_string();
    assert!(
        logs.lines()
            .any(|line| line.contains(&worker_instance) && line.contains("listening")),
        "no output of `{worker_instance}` (on the worker) in:\n{logs}"
    );

    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .duration(LOAD_BOUND)
        .start();

    // Node b drained under load: its task moves to node a, routing follows.
    cluster.manager(&[
        "node",
        "update",
        "--availability",
        "drain",
        &cluster.worker_node,
    ]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let placed = cluster.running_slots(&r1);
        let status = agent.status(&name, ENV).await;
        let serving = status
            .instances()
            .values()
            .filter(|state| *state == "serving")
            .count();
        if placed.len() == 2
            && placed.values().all(|node| *node == cluster.manager_node)
            && serving == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drained node's task did not move and come back into routing: {placed:?} {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = load.snapshot();
    assert_eq!(
        drained.failed, 0,
        "requests failed during the drain: {drained}"
    );
    cluster.manager(&[
        "node",
        "update",
        "--availability",
        "active",
        &cluster.worker_node,
    ]);

    // Release 2 (blue-green): spread over both nodes again.
    agent.deploy(&app("v2"), ENV).await.assert_code(0);
    agent.assert_serves("v2").await;
    let r2 = format!("rollway-{name}-{ENV}-r2-web");
    let placed = cluster.running_slots(&r2);
    assert_eq!(
        placed.values().collect::<std::collections::BTreeSet<_>>(),
        [&cluster.manager_node, &cluster.worker_node].into(),
        "release 2's tasks are not on the two nodes: {placed:?}"
    );
    let slot = on_worker(&placed);
    let lost = format!("{name}-{ENV}-r2-web-{slot}");

    // Node b's power cut under load.
    cluster.kill_worker();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let placed = cluster.running_slots(&r2);
        let state = agent
            .status(&name, ENV)
            .await
            .instances()
            .get(&lost)
            .cloned();
        if placed.get(&slot) == Some(&cluster.manager_node) && state.as_deref() == Some("serving") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost node's task was not rescheduled and routed: {placed:?}, `{lost}` is {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node_state = cluster.manager(&[
        "node",
        "inspect",
        "--format",
        "{{.Status.State}}",
        &cluster.worker_node,
    ]);
    assert_eq!(node_state.trim(), "down");
    agent.assert_serves("v2").await;

    let report = load.stop().await;
    assert!(report.total > 100, "the load ran: {report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.versions.keys().last().map(String::as_str),
        Some("v2")
    );
    let log = agent.log();
    assert!(
        log.contains("A swarm task stopped; its instance left routing."),
        "{log}"
    );
    assert!(
        log.contains(
            "A swarm task was replaced; its instance waits for health checks on the new port."
        ),
        "{log}"
    );
}

/// The two nodes `scripts/swarm-nodes up` made; dropping it runs `scripts/swarm-nodes down`.
struct Cluster {
    dir: PathBuf,
    manager_socket: String,
    registry: String,
    manager_node: String,
    worker_node: String,
}

impl Cluster {
    /// The nodes, made now; `None` (after one printed line) when they cannot be made and neither
    /// `ROLLWAY_E2E` nor `CI` is set (then it panics with why).
    fn up() -> Option<Cluster> {
        let _ = Command::new(script()).arg("sweep").output();
        let dir = tempfile::Builder::new()
            .prefix("rollway-nodes-")
            .tempdir_in("/tmp")
            .expect("a folder for the nodes")
            .keep();
        let output = Command::new(script()).arg("up").arg(&dir).output();
        let failure = match &output {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
            Err(error) => Some(format!("cannot run scripts/swarm-nodes: {error}")),
        };
        if let Some(failure) = failure {
            let _ = Command::new(script()).arg("down").arg(&dir).output();
            let required = ["ROLLWAY_E2E", "CI"]
                .iter()
                .find(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
            if let Some(name) = required {
                panic!("cannot make the two swarm nodes, but {name} is set: {failure}");
            }
            use std::io::Write as _;
            let line = format!("skipping the two-node swarm test: {failure}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            return None;
        }
        let stdout = output
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let values: BTreeMap<&str, &str> = stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let value = |key: &str| {
            values
                .get(key)
                .map(|value| (*value).to_owned())
                .unwrap_or_else(|| panic!("scripts/swarm-nodes up printed no {key}: {stdout}"))
        };
        Some(Cluster {
            manager_socket: value("MANAGER_SOCKET"),
            registry: value("REGISTRY"),
            manager_node: value("MANAGER_NODE"),
            worker_node: value("WORKER_NODE"),
            dir,
        })
    }

    /// `docker ARGS` on the manager; panics with the engine's answer on a failure.
    fn manager(&self, args: &[&str]) -> String {
        let output = Command::new("docker")
            .args(["-H", &self.manager_socket])
            .args(args)
            .output()
            .expect("run docker");
        assert!(
            output.status.success(),
            "`docker {}` on the manager failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Copies the host engine's images `tags` into the manager's engine (the agent pushes them
    /// from there to the nodes' registry).
    fn load_images(&self, tags: &[String]) {
        let archive = self.dir.join("images.tar");
        let saved = Command::new("docker")
            .args(["save", "-o"])
            .arg(&archive)
            .args(tags)
            .status()
            .expect("run docker save");
        assert!(saved.success(), "docker save {tags:?} failed");
        self.manager(&["load", "-q", "-i", &archive.display().to_string()]);
        let _ = std::fs::remove_file(&archive);
    }

    /// Slot → node id of each running task of `service` (as the manager sees it).
    fn running_slots(&self, service: &str) -> BTreeMap<u64, String> {
        let ids = self.manager(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            service,
        ]);
        let mut slots = BTreeMap::new();
        for id in ids.split_whitespace() {
            let text = self.manager(&["inspect", id]);
            let tasks: Vec<serde_json::Value> = serde_json::from_str(&text).expect("task JSON");
            for task in tasks {
                if task["Status"]["State"] == "running"
                    && let (Some(slot), Some(node)) =
                        (task["Slot"].as_u64(), task["NodeID"].as_str())
                {
                    slots.insert(slot, node.to_owned());
                }
            }
        }
        slots
    }

    /// The worker's power cut: every process of node b killed with SIGKILL.
    fn kill_worker(&self) {
        let output = Command::new(script())
            .arg("kill")
            .arg(&self.dir)
            .arg("b")
            .output()
            .expect("run scripts/swarm-nodes kill");
        assert!(
            output.status.success(),
            "scripts/swarm-nodes kill failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(&self.dir).output();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/swarm-nodes")
}

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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
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
    let Some(nodes) = OnNodes::start("sn").await else {
        return;
    };
    let (cluster, agent, name) = (&nodes.cluster, &nodes.agent, &nodes.name);
    let app = |version: &str| nodes.app(version).replicas(2);

    // Release 1: Swarm spreads the two tasks over the two nodes.
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    agent.assert_serves("v1").await;
    let r1 = format!("rollway-{name}-{ENV}-r1-web");
    let placed = cluster.running_slots(&r1);
    assert_eq!(
        placed.values().collect::<BTreeSet<_>>(),
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
        .cli(&["logs", "--env", ENV, "--app", name, "-n", "100"])
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
        let status = agent.status(name, ENV).await;
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
        placed.values().collect::<BTreeSet<_>>(),
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
            .status(name, ENV)
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

/// Every task of the serving release on node b (one replica, placed there while node a was
/// paused), then node b drained under load: Swarm stops the task before its replacement on node a
/// runs, the agent takes the stopping task out of routing at once, and the route has no instance
/// until the replacement passes a health check. The proxy holds the requests of that gap (they were
/// never sent) and sends them to the replacement: not one request of the load fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_drain_of_the_node_with_every_task_of_the_release_fails_no_request() {
    let Some(nodes) = OnNodes::start("sd").await else {
        return;
    };
    let (cluster, agent, name) = (&nodes.cluster, &nodes.agent, &nodes.name);
    nodes.availability(&cluster.manager_node, "pause");
    agent.deploy(&nodes.app("v1"), ENV).await.assert_code(0);
    nodes.availability(&cluster.manager_node, "active");
    agent.assert_serves("v1").await;
    let r1 = format!("rollway-{name}-{ENV}-r1-web");
    let placed = cluster.running_slots(&r1);
    assert_eq!(
        placed.values().collect::<Vec<_>>(),
        [&cluster.worker_node],
        "the release's one task is not on node b: {placed:?}"
    );
    let instance = format!("{name}-{ENV}-r1-web-1");

    // The gap is Swarm's reschedule plus the replacement's first health checks: more than the load's
    // default 5 s answer timeout on a loaded 2-core machine (session 34: 4 of 2,384 requests gave up
    // at 5.0 s, every other answer within 38 ms at p99). The route holds a request up to its `hold`
    // (30 s by default); a client that waits that long is what the promise is about.
    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .timeout(Duration::from_secs(25))
        .duration(LOAD_BOUND)
        .start();
    load.wait_for_more(50, PATIENCE, "the load before the drain")
        .await;
    nodes.availability(&cluster.worker_node, "drain");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let placed = cluster.running_slots(&r1);
        let status = agent.status(name, ENV).await;
        let state = status.instances().get(&instance).cloned();
        if placed.get(&1) == Some(&cluster.manager_node) && state.as_deref() == Some("serving") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drained node's task did not move and come back into routing: {placed:?} {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Answers from the replacement, then the count.
    load.wait_for_more(50, PATIENCE, "answers from the replacement")
        .await;
    let report = load.stop().await;
    assert_eq!(
        report.failed, 0,
        "requests failed during the drain: {report}"
    );
    let log = agent.log();
    assert!(
        log.contains("A swarm task stopped; its instance left routing."),
        "{log}"
    );
    agent.assert_serves("v1").await;
}

/// The swarm ingress (`rollway agent --swarm-ingress PORT`) on two nodes. The agent serves its API
/// over TLS on the host's bridge address, which the followers in the nodes reach (pinned to its
/// certificate). Node a labelled `rollway.ingress=true` first: its follower serves the app on
/// PORT of node a, node b binds nothing. Under load through node a's follower, a blue-green deploy
/// fails no request. Node b labelled later: nothing answers on its PORT until its follower has the
/// current state, and its first answers are the current release's. Both followers report under
/// ids of their own, and their counts reach the agent's `/v1/metrics`. Then node b's power cut
/// under load through node a's follower: no failed request, the lost task rescheduled on node a and
/// node a's follower routes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_ingress_a_node_labelled_later_serves_the_current_state_and_node_loss_fails_no_request()
 {
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

    let name = format!("si{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-nodes-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    // The nodes' namespaces are fresh: any port is free there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let on_a = SocketAddr::from((cluster.manager_addr, port));
    let on_b = SocketAddr::from((cluster.worker_addr, port));
    let agent = TestAgent::start_tls_on(
        rollway_bin(),
        &dir.path().join("state"),
        cluster.host_addr(),
        &["--swarm-ingress".to_owned(), port.to_string()],
        &[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("DOCKER_HOST", cluster.manager_socket.as_str()),
            ("ROLLWAY_SWARM_REGISTRY", cluster.registry.as_str()),
        ],
    )
    .await;
    assert!(
        agent.api_url().starts_with("https://"),
        "{}",
        agent.api_url()
    );
    let header = dir.path().join("authorization");
    std::fs::write(
        &header,
        format!("Authorization: Bearer {}\n", agent.admin_token()),
    )
    .expect("write the header file");
    // The admin token from a file (`-H @FILE`), never in an argv.
    let api = |path: &str| {
        let output = Command::new("curl")
            .args(["-sk", "--max-time", "10", "-H"])
            .arg(format!("@{}", header.display()))
            .arg(format!("{}{path}", agent.api_url()))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
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
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    agent.assert_serves("v1").await;
    let ingress_logs = || {
        format!(
            "{}\n{}",
            cluster
                .try_manager(&["service", "ps", "--no-trunc", "rollway-proxy"])
                .unwrap_or_default(),
            cluster
                .try_manager(&["service", "logs", "--raw", "rollway-proxy"])
                .unwrap_or_default()
        )
    };

    // The service is there, no node is labelled: nothing answers on either node's port.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while cluster
        .try_manager(&["service", "inspect", "rollway-proxy"])
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `rollway-proxy` service:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !accepts(on_a).await,
        "{on_a} answers before node a is an ingress node"
    );
    assert!(
        !accepts(on_b).await,
        "{on_b} answers before node b is an ingress node"
    );

    // Node a becomes an ingress node: its follower serves v1 on node a's port.
    cluster.manager(&[
        "node",
        "update",
        "--label-add",
        "rollway.ingress=true",
        &cluster.manager_node,
    ]);
    wait_serves(on_a, "v1", PATIENCE * 2, &ingress_logs).await;
    assert!(
        !accepts(on_b).await,
        "{on_b} answers, node b is no ingress node"
    );

    // Load through node a's follower across a blue-green deploy.
    let load = Load::new(on_a).concurrency(4).duration(LOAD_BOUND).start();
    agent.deploy(&app("v2"), ENV).await.assert_code(0);
    let probes = wait_serves(on_a, "v2", PATIENCE, &ingress_logs).await;

    // Node b labelled later: it binds its port only once its follower has the current state, so
    // the first answers on it are v2's; nothing failed on node a meanwhile.
    cluster.manager(&[
        "node",
        "update",
        "--label-add",
        "rollway.ingress=true",
        &cluster.worker_node,
    ]);
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    while !accepts(on_b).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b's follower does not listen on {on_b}:\n{}",
            ingress_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = Load::new(on_b)
        .concurrency(1)
        .count(20)
        .start()
        .wait()
        .await;
    assert_eq!(first.failed, 0, "node b's first answers: {first}");
    assert_eq!(
        first.versions.keys().collect::<Vec<_>>(),
        ["v2"],
        "node b's first answers are not all the current release's: {first}"
    );
    let report = load.stop().await;
    assert!(report.total > 100, "the load ran: {report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1", "v2"],
        "{report}"
    );

    // Two followers, one per node, each under an id of its own; their counts are in the agent's
    // `/v1/metrics`, each request once: at least the load's answers of v2, at most those and the
    // probes since the deploy (and the load's last requests in flight when it stopped).
    let through_a = report.versions.get("v2").copied().unwrap_or_default() + first.total;
    let at_most = through_a + probes + 4;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info: serde_json::Value = serde_json::from_str(&api("/v1/agent")).unwrap_or_default();
        let followers: BTreeSet<String> = info["followers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|follower| follower["proxy"].as_str().map(str::to_owned))
            .collect();
        let metrics = api("/v1/metrics");
        let counted: u64 = metrics
            .lines()
            .filter(|line| {
                line.starts_with("rollway_requests_total")
                    && line.contains(&format!("app=\"{name}\""))
                    && line.contains("release=\"2\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        let ids_ok = followers.len() == 2
            && [&cluster.manager_node, &cluster.worker_node]
                .iter()
                .all(|node| followers.iter().any(|id| id.ends_with(node.as_str())));
        if ids_ok && counted >= through_a {
            assert!(
                counted <= at_most,
                "the agent counts {counted} requests of release 2, more than the {at_most} sent \
                 (counted twice?): {followers:?}\n{metrics}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent does not list both followers or count their {through_a} requests of \
             release 2 ({counted}): {followers:?}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Node b's power cut under load through node a's follower.
    let r2 = format!("rollway-{name}-{ENV}-r2-web");
    let placed = cluster.running_slots(&r2);
    let slot = placed
        .iter()
        .find(|(_, node)| **node == cluster.worker_node)
        .map(|(slot, _)| *slot)
        .unwrap_or_else(|| panic!("no task of release 2 on node b: {placed:?}"));
    let lost = format!("{name}-{ENV}-r2-web-{slot}");
    let load = Load::new(on_a).concurrency(4).duration(LOAD_BOUND).start();
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    // Node a's follower routes to both tasks now on node a, the rescheduled one included: the
    // answers' host names (a task's container id) are the two containers of release 2 there.
    let containers: BTreeSet<String> = cluster
        .manager(&[
            "ps",
            "--filter",
            &format!("label=com.docker.swarm.service.name={r2}"),
            "--format",
            "{{.ID}}",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(containers.len(), 2, "{containers:?}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            if let Some(host) = get_body(on_a, "/env/HOSTNAME").await {
                seen.insert(host.trim().to_owned());
            }
        }
        if seen == containers {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node a's follower does not route to release 2's tasks {containers:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = load.stop().await;
    assert!(report.total > 100, "the load ran: {report}");
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v2"],
        "{report}"
    );
}

/// Whether something accepts a connection on `addr` (within a second).
async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Polls `addr` until five requests in a row answer `version`, for at most `patience`; how many
/// requests it sent.
async fn wait_serves(
    addr: SocketAddr,
    version: &str,
    patience: Duration,
    logs: &dyn Fn() -> String,
) -> u64 {
    let deadline = tokio::time::Instant::now() + patience;
    let mut sent = 0;
    loop {
        let report = Load::new(addr).concurrency(1).count(5).start().wait().await;
        sent += report.total;
        if report.failed == 0
            && report
                .records
                .iter()
                .all(|record| record.version.as_deref() == Some(version))
        {
            return sent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} does not serve {version}: {report}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The body of `GET path` on `addr` (a 200 answer read to its end), `None` on anything else.
async fn get_body(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// The two nodes with the test images (`v1`, `v2`) on the manager, and an agent on the host that
/// deploys to them (its proxy routes to the nodes' published ports). Dropped in this order: the
/// agent, its folders, then the nodes.
struct OnNodes {
    agent: TestAgent,
    _runtime_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
    /// The app's name, unique per test process.
    name: String,
    cluster: Cluster,
    images: std::sync::Arc<Images>,
}

impl OnNodes {
    /// `None` (skipped, one printed line) when there is no engine or the nodes cannot be made.
    async fn start(prefix: &str) -> Option<OnNodes> {
        let images = Images::get()?;
        let cluster = Cluster::up()?;
        let tags: Vec<String> = ["v1", "v2"]
            .iter()
            .map(|version| format!("{}:{version}", images.repository))
            .collect();
        cluster.load_images(&tags);
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
        Some(OnNodes {
            agent,
            _runtime_dir: runtime_dir,
            dir,
            name: format!("{prefix}{}", std::process::id()),
            cluster,
            images,
        })
    }

    /// The test app at `version` on the swarm (one replica unless the caller sets more).
    fn app(&self, version: &str) -> TestApp {
        TestApp::new(self.dir.path().join(version))
            .named(&self.name)
            .version(version)
            .driver(Driver::Container)
            .image(format!("{}:{{version}}", self.images.repository))
            .start_timeout("60s")
            .on_swarm(ENV)
    }

    /// `docker node update --availability AVAILABILITY NODE` on the manager.
    fn availability(&self, node: &str, availability: &str) {
        self.cluster
            .manager(&["node", "update", "--availability", availability, node]);
    }
}

/// The two nodes `scripts/swarm-nodes up` made; dropping it runs `scripts/swarm-nodes down`.
struct Cluster {
    dir: PathBuf,
    manager_socket: String,
    registry: String,
    manager_node: String,
    worker_node: String,
    /// The nodes' addresses on their bridge (10.231.N.2 and .3); the host is 10.231.N.1.
    manager_addr: Ipv4Addr,
    worker_addr: Ipv4Addr,
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
        let address = |text: &str| -> Ipv4Addr {
            text.parse()
                .unwrap_or_else(|error| panic!("scripts/swarm-nodes up printed `{text}`: {error}"))
        };
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
            manager_addr: address(&value("MANAGER_ADDR")),
            worker_addr: address(&value("WORKER_ADDR")),
            dir,
        })
    }

    /// The host's own address on the nodes' bridge (10.231.N.1).
    fn host_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.manager_addr.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// `docker ARGS` on the manager, `None` when it fails.
    fn try_manager(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("docker")
            .args(["-H", &self.manager_socket])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
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

/// Removes the `certs.d` entry a test wrote for the agent's registry.
struct CertsDir(PathBuf);

impl Drop for CertsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// No registry named, on two nodes: the agent's API (and so its registry) over TLS on the nodes'
/// bridge. Before the nodes trust its certificate the deploy is refused with the fix (`rollway
/// registry ca` into `/etc/docker/certs.d/<host:port>/ca.crt`) and nothing is created; with the
/// entry the test writes (and removes), the manager pushes and both nodes pull the release by
/// digest from the agent, its two tasks on the two nodes, serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_pull_from_the_agents_own_registry_over_tls() {
    let Some(images) = Images::get() else {
        return;
    };
    let Some(cluster) = Cluster::up() else {
        return;
    };
    cluster.load_images(&[format!("{}:v1", images.repository)]);
    let name = format!("snr{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-nodes-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    let agent = TestAgent::start_tls_on(
        rollway_bin(),
        &dir.path().join("state"),
        cluster.host_addr(),
        &[],
        &[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("DOCKER_HOST", cluster.manager_socket.as_str()),
        ],
    )
    .await;
    let address = agent.api_addr().to_string();
    let app = TestApp::new(dir.path().join("v1"))
        .named(&name)
        .version("v1")
        .driver(Driver::Container)
        .image(format!("{}:{{version}}", images.repository))
        .replicas(2)
        .start_timeout("60s")
        .on_swarm(ENV);

    // The certificate is not trusted yet: refused with the fix, nothing created.
    let refused = agent.deploy(&app, ENV).await;
    refused.assert_code(1);
    crate::agent::assert_contains(&refused, &format!("/etc/docker/certs.d/{address}/ca.crt"));
    crate::agent::assert_contains(&refused, "rollway registry ca");
    assert_eq!(cluster.manager(&["service", "ls", "-q"]).trim(), "");

    let ca = agent.cli(&["registry", "ca"]).await;
    ca.assert_code(0);
    let certs = CertsDir(PathBuf::from(format!("/etc/docker/certs.d/{address}")));
    std::fs::create_dir_all(&certs.0).expect("certs.d folder");
    std::fs::write(certs.0.join("ca.crt"), &ca.stdout).expect("ca.crt");

    agent.deploy(&app, ENV).await.assert_code(0);
    agent.assert_serves("v1").await;
    let service = format!("rollway-{name}-{ENV}-r2-web");
    let image = cluster.manager(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &service,
    ]);
    assert!(
        image
            .trim()
            .starts_with(&format!("{address}/rollway/{name}-{ENV}-web@sha256:")),
        "{image}"
    );
    let placed = cluster.running_slots(&service);
    assert_eq!(
        placed.values().collect::<BTreeSet<_>>(),
        [&cluster.manager_node, &cluster.worker_node].into(),
        "the two tasks are not on the two nodes: {placed:?}"
    );
    drop(agent);
    drop(certs);
}

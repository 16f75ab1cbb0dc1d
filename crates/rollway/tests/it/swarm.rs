//! The swarm driver end to end: `driver = "swarm"` deploys through the same executor as the
//! other drivers, on the real single-node swarm scripts/test makes (`docker swarm init
//! --advertise-addr 127.0.0.1` when the engine has none), with Debian's `docker-registry` on
//! loopback as the cluster's registry, and the container tests' images (nothing is pulled).
//!
//! Skipped with one printed line only when no Docker engine is reachable (and neither
//! `ROLLWAY_E2E` nor `CI` is set); with an engine, a missing swarm or registry fails the test
//! with what to do.

use std::time::Duration;

use testkit::agent::{Driver, TestAgent, TestApp};
use testkit::load::Load;

use crate::agent::rollway_bin;
use crate::containers::{Images, docker};

const ENV: &str = "production";
/// Bound of the load loop; the test stops it long before.
const LOAD_BOUND: Duration = Duration::from_secs(300);
const PATIENCE: Duration = Duration::from_secs(90);
/// A canary that holds 20% for up to a minute: long enough to abort it or judge it.
const CANARY_STEPS: &str = r#"[{ weight = 20, pause = "60s" }, { weight = 100 }]"#;

/// A swarm deploy whose registry cannot be reached refused before anything moves; under continuous load with no
/// failed request: blue-green deploys (one with a release command run as a Swarm job), a warm
/// rollback, a task killed by hand (`docker kill`) that leaves routing, is replaced by Swarm and
/// comes back on its new port, kill -9 of the agent (the services adopted unchanged), a rolling
/// deploy, the agent killed before Shifting (the deploy undone, its service removed), a canary
/// at 20% aborted by `rollway abort`; then a release that never turns healthy fails with nothing
/// moved and nothing left; a canary answering 500s is rolled back by the analysis (only it failed
/// requests); the canary secret is in no `docker service inspect`, no task or container inspect,
/// no log and nowhere in the state directory; the agent killed during a release command's Swarm
/// job removes the job when it starts again; `rollway destroy` removes the environment's
/// services, secrets and overlay network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_deploys_roll_back_and_follow_a_killed_task_under_load_failing_no_request() {
    let Some(images) = Images::get() else {
        return;
    };
    assert_swarm_manager();
    let registry = testkit::registry::Registry::start()
        .unwrap_or_else(|error| panic!("the swarm tests need a registry: {error}"));
    let name = format!("sw{}", std::process::id());
    let cleanup = Cleanup {
        app: name.clone(),
        registry: registry.host(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-swarm-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    let registry_host = registry.host();
    // Day one: an agent whose registry the engine cannot reach (its own, at an address where
    // nothing listens) refuses a swarm deploy before anything moves.
    let mut agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("ROLLWAY_REGISTRY_ADDRESS", "127.0.0.1:1"),
        ],
    )
    .await;
    let secret = format!("canary-{}", testkit::agent::random_hex(16));
    agent
        .set_secret(&name, ENV, "DB_PASSWORD", &secret)
        .await
        .assert_code(0);
    let app = |version: &str| {
        TestApp::new(dir.path().join(version))
            .named(&name)
            .version(version)
            .driver(Driver::Container)
            .image(format!("{}:{{version}}", images.repository))
            .replicas(2)
            .secrets(ENV, &["DB_PASSWORD"])
            .start_timeout("60s")
            .on_swarm(ENV)
    };

    let ran = agent.deploy(&app("v1"), ENV).await;
    ran.assert_code(1);
    crate::agent::assert_contains(&ran, "cannot push the image of service `web`");
    assert_eq!(
        app_services(&name),
        Vec::<String>::new(),
        "nothing was created"
    );
    agent
        .restart_with_env(&[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("ROLLWAY_SWARM_REGISTRY", registry_host.as_str()),
        ])
        .await;

    // Release 2, then the load, then release 3 (blue-green) and a warm rollback to 2.
    let ran = agent.deploy(&app("v1"), ENV).await;
    ran.assert_code(0);
    agent.assert_serves("v1").await;
    let seen = agent.get(None, "/env/DB_PASSWORD").await;
    assert_eq!((seen.status, seen.body.as_str()), (200, secret.as_str()));
    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .duration(LOAD_BOUND)
        .start();
    // Release 2 has a release command: a one-off Swarm job, which sees the secret.
    let with_command = app("v2").release(
        r#"echo "migrating for release $ROLLWAY_RELEASE"; test -n "$DB_PASSWORD" && echo "the job saw the secret""#,
        None,
    );
    let ran = agent.deploy(&with_command, ENV).await;
    ran.assert_code(0);
    crate::agent::assert_contains(&ran, "migrating for release 3");
    crate::agent::assert_contains(&ran, "the job saw the secret");
    assert!(
        docker(&[
            "service",
            "inspect",
            &format!("rollway-{name}-{ENV}-r3-release-command")
        ])
        .is_none(),
        "the release command's job is left behind"
    );
    agent.assert_serves("v2").await;
    // Each release's service is a Swarm service with its replicas, dnsrr, the image by digest.
    let spec = service_spec(&format!("rollway-{name}-{ENV}-r3-web"));
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 2, "{spec}");
    assert_eq!(spec["EndpointSpec"]["Mode"], "dnsrr", "{spec}");
    let image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or_default();
    assert!(
        image.starts_with(&format!("{registry_host}/rollway/{name}-{ENV}-web"))
            && image.contains("@sha256:"),
        "{image}"
    );
    let ran = agent.rollback(&name, ENV, Some(2)).await;
    ran.assert_code(0);
    agent.assert_serves("v1").await;
    let status = agent.status(&name, ENV).await;
    assert_eq!(status.weights(), vec![(2, 100)], "{status}");
    let events = agent.events().await;
    let rollback_started = events
        .iter()
        .filter(|event| event["kind"] == "instance.started")
        .count();
    assert_eq!(
        rollback_started, 4,
        "the rollback was one switch: no instance started for it"
    );

    // A task of the serving release killed by hand: Swarm replaces it, routing follows.
    let instance = format!("{name}-{ENV}-r2-web-1");
    let port_before = instance_port(&agent, &name, &instance).await;
    let service = format!("rollway-{name}-{ENV}-r2-web");
    let container = slot_container(&service, 1);
    docker(&["kill", &container]).expect("docker kill");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let port = instance_port(&agent, &name, &instance).await;
        let state = agent
            .status(&name, ENV)
            .await
            .instances()
            .get(&instance)
            .cloned();
        if port != port_before && state.as_deref() == Some("serving") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance `{instance}` did not come back on a new port (port {port}, state {state:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sample = agent.sample(40).await;
    assert_eq!(sample.failed, 0, "{sample}");
    // The agent followed the task itself: out of routing when it stopped, then moved to the
    // replacement's port (the health watch let it back in).
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

    // A task of the warm release 3 killed by hand: its instance follows the replacement's
    // address, so the warm rollback to 3 checks and routes the task that runs.
    let warm = format!("{name}-{ENV}-r3-web-1");
    let warm_before = instance_port(&agent, &name, &warm).await;
    docker(&[
        "kill",
        &slot_container(&format!("rollway-{name}-{ENV}-r3-web"), 1),
    ])
    .expect("docker kill");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while instance_port(&agent, &name, &warm).await == warm_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "warm `{warm}` did not follow its task"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ran = agent.rollback(&name, ENV, Some(3)).await;
    ran.assert_code(0);
    agent.assert_serves("v2").await;
    let status = agent.status(&name, ENV).await;
    assert_eq!(status.weights(), vec![(3, 100)], "{status}");
    assert_eq!(
        status.instances().get(&warm).map(String::as_str),
        Some("serving"),
        "{status}"
    );

    // kill -9 of the agent: the proxy serves on, and the restarted agent adopts the services
    // as they are (no service created or removed, every instance back as it was).
    let services_before = app_services(&name);
    let instances_before = agent.status(&name, ENV).await.instances();
    agent
        .restart_with_env(&[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("ROLLWAY_SWARM_REGISTRY", registry_host.as_str()),
        ])
        .await;
    agent.assert_serves("v2").await;
    assert_eq!(app_services(&name), services_before);
    assert_eq!(agent.status(&name, ENV).await.instances(), instances_before);

    // A rolling deploy (release 4), instance by instance, under the same load.
    let ran = agent.deploy(&app("v2").strategy("rolling"), ENV).await;
    ran.assert_code(0);
    agent.assert_serves("v2").await;
    let status = agent.status(&name, ENV).await;
    assert_eq!(status.weights(), vec![(4, 100)], "{status}");

    // The agent kills itself (kill -9) before Shifting a deploy of release 5 whose tasks run and
    // passed their health gate: the restarted agent undoes it, removes release 5's service,
    // and release 4 serves all along.
    let agent_env = [
        ("RUNTIME_DIRECTORY", runtime.as_str()),
        ("ROLLWAY_SWARM_REGISTRY", registry_host.as_str()),
    ];
    let mut crashing = agent_env.to_vec();
    crashing.push(("ROLLWAY_TEST_CRASH_BEFORE", "Shifting"));
    agent.restart_with_env(&crashing).await;
    let token = agent.admin_token().to_owned();
    let deploy = agent
        .deploy_command(&app("v1"), ENV, Some(&token))
        .spawn()
        .expect("spawn rollway deploy");
    assert!(
        agent.wait_exit(PATIENCE).await,
        "the agent did not kill itself before Shifting:\n{}",
        agent.log()
    );
    let r5 = format!("rollway-{name}-{ENV}-r5-web");
    assert!(
        docker(&["service", "inspect", &r5]).is_some(),
        "release 5 runs while no agent does"
    );
    agent.restart_with_env(&agent_env).await;
    let status = agent.wait_deployment_finished(&name, ENV, PATIENCE).await;
    let _ = tokio::time::timeout(PATIENCE, deploy.wait_with_output()).await;
    assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
    assert_eq!(status.weights(), vec![(4, 100)], "{status}");
    agent.assert_serves("v2").await;
    assert!(
        docker(&["service", "inspect", &r5]).is_none(),
        "release 5's service is left behind"
    );

    // A canary (release 6) takes 20% under the load, then `rollway abort`: traffic goes back to
    // release 4 in one routing change and the canary's service goes.
    let canary = app("v3").canary(CANARY_STEPS);
    let mut deploy = agent.deploy_command(&canary, ENV, Some(&token));
    deploy.kill_on_drop(true);
    let deploy = deploy.spawn().expect("spawn rollway deploy");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = agent.status(&name, ENV).await;
        if status.weights().contains(&(6, 20)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the canary never took 20%: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The canary answers (bounded: 20% of each sample).
    let mut seen_canary = false;
    for _ in 0..10 {
        if agent.sample(20).await.versions.contains_key("v3") {
            seen_canary = true;
            break;
        }
    }
    assert!(seen_canary, "no request reached the canary at 20%");
    agent
        .cli(&["abort", "--env", ENV, "--app", &name])
        .await
        .assert_code(0);
    let output = tokio::time::timeout(PATIENCE, deploy.wait_with_output())
        .await
        .expect("the aborted deploy ends")
        .expect("deploy output");
    assert_eq!(output.status.code(), Some(1), "the aborted deploy fails");
    let status = agent.status(&name, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    assert_eq!(status.weights(), vec![(4, 100)], "{status}");
    agent.assert_serves("v2").await;
    wait_service_gone(&format!("rollway-{name}-{ENV}-r6-web")).await;

    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.total > 0, "the load loop sent nothing");
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1", "v2", "v3"],
        "{report}"
    );

    // A release that never turns healthy (7): the deploy fails, release 4 keeps all traffic,
    // and the failed release's service is gone.
    let never = app("v3").env("HEALTH_DELAY_S", "1000").start_timeout("5s");
    let ran = agent.deploy(&never, ENV).await;
    ran.assert_code(1);
    agent.assert_serves("v2").await;
    let status = agent.status(&name, ENV).await;
    assert_eq!(status.weights(), vec![(4, 100)], "{status}");
    assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
    assert!(
        docker(&[
            "service",
            "inspect",
            &format!("rollway-{name}-{ENV}-r7-web")
        ])
        .is_none(),
        "the failed release's service is left behind"
    );

    // A canary (release 8) whose release answers 500s is rolled back by the analysis itself:
    // only the canary failed requests, release 4 serves all along, the canary's service goes.
    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .rate(200)
        .duration(LOAD_BOUND)
        .start();
    let bad = app("v3")
        .canary(CANARY_STEPS)
        .analysis(r#"interval = "200ms""#)
        .analysis("min_requests = 20")
        .env("ERROR_RATE", "0.5");
    let ran = agent.deploy(&bad, ENV).await;
    ran.assert_code(1);
    agent.assert_serves("v2").await;
    let report = load.stop().await;
    let status = agent.status(&name, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    let reason = status.deployment_reason().unwrap_or_default();
    assert!(
        reason.contains("the canary analysis failed: 5xx share"),
        "{status}"
    );
    assert_eq!(status.weights(), vec![(4, 100)], "{status}");
    assert!(
        report.failed > 0,
        "the bad canary answered nothing: {report}"
    );
    for record in report.failures() {
        assert!(
            record.outcome == testkit::load::Outcome::Status(500)
                && record.version.as_deref() == Some("v3"),
            "a failed request not answered 500 by the canary: {record}\n{report}"
        );
    }
    wait_service_gone(&format!("rollway-{name}-{ENV}-r8-web")).await;

    // The canary secret: nowhere in the engine's view, the logs, or the state directory.
    // `rollway logs` reads the tasks' output through the swarm driver.
    let logs = agent
        .cli(&["logs", "--env", ENV, "--app", &name, "-n", "100"])
        .await
        .assert_code(0)
        .to_string();
    assert!(logs.contains("listening"), "no task output in:\n{logs}");
    let mut places: Vec<(String, String)> = vec![
        ("`rollway logs`".into(), logs),
        ("the agent's log".into(), agent.log()),
        (
            "`rollway events`".into(),
            serde_json::to_string(&agent.events().await).expect("events JSON"),
        ),
    ];
    let services = docker(&[
        "service",
        "ls",
        "-q",
        "--filter",
        &format!("name=rollway-{name}-"),
    ])
    .unwrap_or_default();
    for service in services.split_whitespace() {
        places.push((
            format!("`docker service inspect {service}`"),
            docker(&["service", "inspect", service]).expect("service inspect"),
        ));
        let tasks = docker(&["service", "ps", "-q", service]).unwrap_or_default();
        for task in tasks.split_whitespace() {
            places.push((
                format!("`docker inspect {task}`"),
                docker(&["inspect", task]).expect("task inspect"),
            ));
        }
    }
    let containers = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.rollway.app={name}"),
    ])
    .unwrap_or_default();
    for container in containers.split_whitespace() {
        places.push((
            format!("`docker inspect {container}`"),
            docker(&["inspect", container]).expect("container inspect"),
        ));
        places.push((
            format!("`docker logs {container}`"),
            crate::containers::docker_all_output(&["logs", container]),
        ));
    }
    assert!(
        places.len() > 6,
        "the services, tasks and containers were found: {}",
        places.len()
    );
    for (place, text) in &places {
        assert!(!text.contains(&secret), "the secret is in {place}:\n{text}");
    }
    assert_eq!(
        testkit::agent::files_containing(agent.state_dir(), &secret),
        Vec::<std::path::PathBuf>::new(),
        "the secret is written in the state directory"
    );

    // The agent killed (kill -9) while the release command of release 9 runs as a Swarm job:
    // the restarted agent undoes the deploy and removes the job and its env secret.
    let job = format!("rollway-{name}-{ENV}-r9-release-command");
    let slow = app("v1").release("echo started; sleep 600", None);
    let mut deploy = agent.deploy_command(&slow, ENV, Some(&token));
    deploy.kill_on_drop(true);
    let deploy = deploy.spawn().expect("spawn rollway deploy");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while docker(&["service", "inspect", &job]).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the release command's job never started:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.kill9().await;
    drop(deploy);
    assert!(
        docker(&["service", "inspect", &job]).is_some(),
        "the job runs on while no agent does"
    );
    agent.restart_with_env(&agent_env).await;
    let status = agent.wait_deployment_finished(&name, ENV, PATIENCE).await;
    assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
    assert_eq!(status.weights(), vec![(4, 100)], "{status}");
    assert!(
        docker(&["service", "inspect", &job]).is_none(),
        "the killed agent's release-command job is left behind"
    );
    assert!(
        docker(&["secret", "inspect", &format!("{job}-env")]).is_none(),
        "the job's env secret is left behind"
    );
    agent.assert_serves("v2").await;

    // `rollway destroy` of the swarm environment: its services (release 4's and the warm ones),
    // their secrets and its overlay network are gone.
    let network = format!("rollway-{name}-{ENV}");
    assert!(
        docker(&["network", "inspect", &network]).is_some(),
        "the environment's overlay network exists before the destroy"
    );
    assert!(
        !app_services(&name).is_empty(),
        "services run before the destroy"
    );
    agent
        .cli(&["destroy", "--app", &name, "--env", ENV, "--confirm", &name])
        .await
        .assert_code(0);
    assert_eq!(app_services(&name), Vec::<String>::new(), "services left");
    let secrets = docker(&["secret", "ls", "--format", "{{.Name}}"]).unwrap_or_default();
    let left: Vec<&str> = secrets
        .lines()
        .filter(|secret| secret.starts_with(&format!("rollway-{name}-")))
        .collect();
    assert_eq!(left, Vec::<&str>::new(), "secrets left");
    assert!(
        docker(&["network", "inspect", &network]).is_none(),
        "the overlay network `{network}` is left behind"
    );
    drop(agent);
    drop(cleanup);
}

/// `[build] registry` in the manifest, with its credentials as secrets of the environment: a
/// wrong password fails the push with nothing created; the right one pushes, creates the
/// service and runs the release command's job with the registry's auth, with no
/// `ROLLWAY_SWARM_REGISTRY`. The password is in no output, inspect, log, event, the state
/// directory or the app's env.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_pushes_to_the_manifests_registry_logged_in_with_secrets() {
    let Some(images) = Images::get() else {
        return;
    };
    assert_swarm_manager();
    let password = format!("registry-canary-{}", testkit::agent::random_hex(16));
    let registry = testkit::registry::Registry::start_with_auth("deployer", &password)
        .unwrap_or_else(|error| panic!("the swarm tests need a registry: {error}"));
    let name = format!("swr{}", std::process::id());
    let _cleanup = Cleanup {
        app: name.clone(),
        registry: registry.host(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-swarm-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    let agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[("RUNTIME_DIRECTORY", runtime.as_str())],
    )
    .await;
    let registry_host = registry.host();
    let app = TestApp::new(dir.path().join("v1"))
        .named(&name)
        .version("v1")
        .driver(Driver::Container)
        .image(format!("{}:{{version}}", images.repository))
        .secrets(ENV, &["REGISTRY_USER", "REGISTRY_PASSWORD"])
        .release("echo the job ran", None)
        .start_timeout("60s")
        .on_swarm(ENV)
        .extra(format!(
            "[build]\nregistry = \"{registry_host}/team\"\nregistry_user = \"REGISTRY_USER\"\nregistry_password = \"REGISTRY_PASSWORD\"\n"
        ));
    agent
        .set_secret(&name, ENV, "REGISTRY_USER", "deployer")
        .await
        .assert_code(0);

    // Day one: a wrong password. The push fails, nothing is created on the swarm.
    agent
        .set_secret(&name, ENV, "REGISTRY_PASSWORD", "not-the-password")
        .await
        .assert_code(0);
    let refused = agent.deploy(&app, ENV).await;
    refused.assert_code(1);
    crate::agent::assert_contains(&refused, "cannot push the image of service `web`");
    assert_eq!(
        app_services(&name),
        Vec::<String>::new(),
        "nothing was created"
    );

    agent
        .set_secret(&name, ENV, "REGISTRY_PASSWORD", &password)
        .await
        .assert_code(0);
    let ran = agent.deploy(&app, ENV).await;
    ran.assert_code(0);
    crate::agent::assert_contains(&ran, "the job ran");
    agent.assert_serves("v1").await;
    let spec = service_spec(&format!("rollway-{name}-{ENV}-r2-web"));
    let image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or_default();
    assert!(
        image.starts_with(&format!("{registry_host}/team/{name}-{ENV}-web"))
            && image.contains("@sha256:"),
        "{image}"
    );
    // The credentials are the agent's: the app does not get them.
    let seen = agent.get(None, "/env/REGISTRY_PASSWORD").await;
    assert!(!seen.body.contains(&password), "the app sees the password");

    let mut places: Vec<(String, String)> = vec![
        ("the refused deploy's output".into(), refused.to_string()),
        ("the deploy's output".into(), ran.to_string()),
        ("the agent's log".into(), agent.log()),
        (
            "`rollway events`".into(),
            serde_json::to_string(&agent.events().await).expect("events JSON"),
        ),
    ];
    places.extend(service_and_task_inspects(&name));
    let containers = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.rollway.app={name}"),
    ])
    .unwrap_or_default();
    for container in containers.split_whitespace() {
        places.push((
            format!("`docker inspect {container}`"),
            docker(&["inspect", container]).expect("container inspect"),
        ));
    }
    assert!(places.len() > 5, "the service and its task were found");
    for (place, text) in &places {
        assert!(
            !text.contains(&password),
            "the registry password is in {place}:\n{text}"
        );
    }
    assert_eq!(
        testkit::agent::files_containing(agent.state_dir(), &password),
        Vec::<std::path::PathBuf>::new(),
        "the password is written in the state directory"
    );
}

/// No registry named: the agent pushes release images to its own registry (on its API's
/// address, loopback here) and Swarm pulls them by digest with the pull credential; a deploy
/// after a kill -9 of the agent pushes and pulls again with the same credentials. Neither
/// credential (`rwr_` and 64 hex digits) is in any output, inspect, log, event, the app's
/// env or the state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_deploys_through_the_agents_own_registry_by_default() {
    let Some(images) = Images::get() else {
        return;
    };
    assert_swarm_manager();
    let name = format!("swo{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-swarm-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    let mut agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[("RUNTIME_DIRECTORY", runtime.as_str())],
    )
    .await;
    let registry_host = agent.api_addr().to_string();
    let _cleanup = Cleanup {
        app: name.clone(),
        registry: registry_host.clone(),
    };
    let app = |version: &str| {
        TestApp::new(dir.path().join(version))
            .named(&name)
            .version(version)
            .driver(Driver::Container)
            .image(format!("{}:{{version}}", images.repository))
            .release("echo the job ran", None)
            .start_timeout("60s")
            .on_swarm(ENV)
    };
    let first = agent.deploy(&app("v1"), ENV).await;
    first.assert_code(0);
    crate::agent::assert_contains(&first, "the job ran");
    agent.assert_serves("v1").await;
    let image_of = |release: u64| {
        let spec = service_spec(&format!("rollway-{name}-{ENV}-r{release}-web"));
        spec["TaskTemplate"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let image = image_of(1);
    assert!(
        image.starts_with(&format!("{registry_host}/rollway/{name}-{ENV}-web@sha256:")),
        "{image}"
    );

    agent.kill9().await;
    agent
        .restart_with_env(&[("RUNTIME_DIRECTORY", runtime.as_str())])
        .await;
    let second = agent.deploy(&app("v2"), ENV).await;
    second.assert_code(0);
    agent.assert_serves("v2").await;
    let image = image_of(2);
    assert!(
        image.starts_with(&format!("{registry_host}/rollway/{name}-{ENV}-web@sha256:")),
        "{image}"
    );

    let mut places: Vec<(String, String)> = vec![
        ("the first deploy's output".into(), first.to_string()),
        ("the second deploy's output".into(), second.to_string()),
        ("the agent's log".into(), agent.log()),
        (
            "`rollway events`".into(),
            serde_json::to_string(&agent.events().await).expect("events JSON"),
        ),
    ];
    for variable in [
        "ROLLWAY_REGISTRY_PASSWORD",
        "REGISTRY_AUTH",
        "DOCKER_AUTH_CONFIG",
    ] {
        let seen = agent.get(None, &format!("/env/{variable}")).await;
        places.push((format!("the app's `{variable}`"), seen.body));
    }
    places.extend(service_and_task_inspects(&name));
    assert!(places.len() > 8, "the services and their tasks were found");
    for (place, text) in &places {
        assert!(
            !holds_registry_password(text),
            "a registry credential is in {place}:\n{text}"
        );
    }
    let files: Vec<_> = testkit::agent::files_containing(agent.state_dir(), "rwr_")
        .into_iter()
        .filter(|path| {
            holds_registry_password(&String::from_utf8_lossy(
                &std::fs::read(path).unwrap_or_default(),
            ))
        })
        .collect();
    assert_eq!(
        files,
        Vec::<std::path::PathBuf>::new(),
        "a registry credential is written in the state directory"
    );
}

/// `docker service inspect` of every service of `app` and `docker inspect` of each of their
/// tasks, each with where it came from: where a canary must not be.
fn service_and_task_inspects(app: &str) -> Vec<(String, String)> {
    let mut places = Vec::new();
    for service in app_services(app) {
        let service = service
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        places.push((
            format!("`docker service inspect {service}`"),
            docker(&["service", "inspect", &service]).expect("service inspect"),
        ));
        let tasks = docker(&["service", "ps", "-q", &service]).unwrap_or_default();
        for task in tasks.split_whitespace() {
            places.push((
                format!("`docker inspect {task}`"),
                docker(&["inspect", task]).expect("task inspect"),
            ));
        }
    }
    places
}

/// Whether `text` holds a password of the agent's registry: `rwr_` and 64 lowercase hex digits.
fn holds_registry_password(text: &str) -> bool {
    text.match_indices("rwr_").any(|(at, _)| {
        let rest = &text.as_bytes()[at + 4..];
        rest.len() >= 64
            && rest[..64]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    })
}

/// Fails the test, saying what to do, unless the engine is a swarm manager.
fn assert_swarm_manager() {
    let swarm = docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ])
    .unwrap_or_default();
    assert_eq!(
        swarm.trim(),
        "active true",
        "the Docker engine is not a swarm manager: run scripts/test, or `docker swarm init --advertise-addr 127.0.0.1`"
    );
}

/// Waits (bounded) until the Swarm service `service` is removed.
async fn wait_service_gone(service: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while docker(&["service", "inspect", service]).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service `{service}` is left behind"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Swarm services of the test's app, by name.
fn app_services(app: &str) -> Vec<String> {
    let names = docker(&["service", "ls", "--format", "{{.Name}} {{.ID}}"]).unwrap_or_default();
    let mut names: Vec<String> = names
        .lines()
        .filter(|line| line.starts_with(&format!("rollway-{app}-")))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// `Spec` of a Swarm service, from `docker service inspect`.
fn service_spec(service: &str) -> serde_json::Value {
    let text = docker(&["service", "inspect", service]).expect("service inspect");
    let mut values: Vec<serde_json::Value> = serde_json::from_str(&text).expect("JSON");
    values.pop().expect("one service")["Spec"].take()
}

/// The port the agent routes `instance` to (`rollway status --json`).
async fn instance_port(agent: &TestAgent, app: &str, instance: &str) -> u64 {
    let status = agent.status(app, ENV).await;
    status.0["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|view| view["id"] == instance)
        .and_then(|view| view["port"].as_u64())
        .unwrap_or_else(|| panic!("no instance `{instance}` in {status}"))
}

/// The container of the running task in `slot` of `service`.
fn slot_container(service: &str, slot: u64) -> String {
    let tasks = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        service,
    ])
    .unwrap_or_default();
    tasks
        .split_whitespace()
        .filter_map(|task| {
            let text = docker(&["inspect", task])?;
            let mut values: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
            values.pop()
        })
        .find(|task| task["Slot"] == slot)
        .and_then(|task| {
            task["Status"]["ContainerStatus"]["ContainerID"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no running task in slot {slot} of `{service}`"))
}

/// Removes every Swarm service, secret and network of the test's app, and the images the agent
/// pushed, also when the test fails.
struct Cleanup {
    app: String,
    registry: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = format!("rollway-{}-", self.app);
        for kind in ["service", "secret"] {
            let names = docker(&[kind, "ls", "--format", "{{.Name}}"]).unwrap_or_default();
            for name in names.lines().filter(|name| name.starts_with(&prefix)) {
                let _ = docker(&[kind, "rm", name]);
            }
        }
        // Secrets and the network stay in use until the services' tasks are gone.
        for _ in 0..100 {
            let mut left = 0;
            for kind in ["secret", "network"] {
                let names = docker(&[kind, "ls", "--format", "{{.Name}}"]).unwrap_or_default();
                for name in names
                    .lines()
                    .filter(|name| name.starts_with(&prefix[..prefix.len() - 1]))
                {
                    if docker(&[kind, "rm", name]).is_none() {
                        left += 1;
                    }
                }
            }
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let images =
            docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).unwrap_or_default();
        for image in images
            .lines()
            .filter(|image| image.starts_with(&self.registry))
        {
            let _ = docker(&["rmi", image]);
        }
    }
}

/// The swarm ingress (issue 17 item 4): `rollway agent --swarm-ingress PORT` keeps the global
/// service `rollway-proxy` (the agent's own binary, pushed to the cluster's registry, deployed by
/// digest), placed only on nodes labelled `rollway.ingress=true`: before the label no task runs and
/// the port is refused; once the node is labelled, its task follows the agent and serves the app
/// on PORT of the node (another port than the agent's own proxy), with no failed request under
/// load across a blue-green deploy and a warm rollback. Its proxy token is a Swarm secret: in no
/// `docker service inspect` of the service or its tasks' containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_ingress_serves_the_app_on_labelled_nodes_through_a_deploy_and_a_rollback() {
    let Some(images) = Images::get() else {
        return;
    };
    assert_swarm_manager();
    let registry = testkit::registry::Registry::start()
        .unwrap_or_else(|error| panic!("the swarm tests need a registry: {error}"));
    let name = format!("si{}", std::process::id());
    let _cleanup = Cleanup {
        app: name.clone(),
        registry: registry.host(),
    };
    let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"])
        .expect("the node's id")
        .trim()
        .to_owned();
    let _ingress = IngressCleanup { node: node.clone() };
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_dir = tempfile::Builder::new()
        .prefix("rollway-e2e-swarm-")
        .tempdir_in("/dev/shm")
        .expect("temporary directory on /dev/shm");
    let runtime = runtime_dir.path().display().to_string();
    let registry_host = registry.host();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let ingress: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port()
    };
    let tls_port = free_port();
    let ingress_tls: std::net::SocketAddr = ([127, 0, 0, 1], tls_port).into();
    let agent = TestAgent::start_with_args(
        rollway_bin(),
        &dir.path().join("state"),
        &[
            "--swarm-ingress".to_owned(),
            port.to_string(),
            "--swarm-ingress-https".to_owned(),
            tls_port.to_string(),
            "--https".to_owned(),
            format!("127.0.0.1:{}", free_port()),
        ],
        &[
            ("RUNTIME_DIRECTORY", runtime.as_str()),
            ("ROLLWAY_SWARM_REGISTRY", registry_host.as_str()),
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
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    agent.assert_serves("v1").await;

    // The service is there (the agent puts it at start), global, on ingress nodes only; no node
    // is labelled yet, so no task runs and nothing answers on the port.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while docker(&["service", "inspect", "rollway-proxy"]).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `rollway-proxy` service:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let spec = service_spec("rollway-proxy");
    assert!(spec["Mode"]["Global"].is_object(), "{spec:#}");
    assert_eq!(
        spec["TaskTemplate"]["Placement"]["Constraints"],
        serde_json::json!(["node.labels.rollway.ingress == true"]),
        "{spec:#}"
    );
    let image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        image.starts_with(&format!("{registry_host}/rollway/proxy@sha256:")),
        "deployed by digest from the registry: {image}"
    );
    let args = &spec["TaskTemplate"]["ContainerSpec"]["Args"];
    let args: Vec<&str> = args
        .as_array()
        .map(|args| args.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    let https_at = args.iter().position(|arg| *arg == "--https");
    assert_eq!(
        https_at.and_then(|at| args.get(at + 1)).copied(),
        Some(format!("0.0.0.0:{tls_port}").as_str()),
        "the tasks serve HTTPS on --swarm-ingress-https: {args:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tasks = docker(&["service", "ps", "rollway-proxy", "-q"]).unwrap_or_default();
    assert_eq!(tasks.trim(), "", "a task runs on a node without the label");
    assert!(
        tokio::net::TcpStream::connect(ingress).await.is_err(),
        "something answers on the ingress port before any node is an ingress node"
    );

    // The node becomes an ingress node: its task serves v1 on the port, routed like the agent's.
    docker(&[
        "node",
        "update",
        "--label-add",
        "rollway.ingress=true",
        &node,
    ])
    .expect("label the node");
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let report = Load::new(ingress)
            .concurrency(1)
            .count(5)
            .start()
            .wait()
            .await;
        if report.failed == 0
            && report
                .records
                .iter()
                .all(|record| record.version.as_deref() == Some("v1"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ingress task does not serve v1 on {ingress}: {report}\n{}\n{}",
            docker(&["service", "ps", "--no-trunc", "rollway-proxy"]).unwrap_or_default(),
            crate::containers::docker_all_output(&["service", "logs", "rollway-proxy"])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Its HTTPS listener is bound too (the certificates come with the routing; the HTTPS itself is
    // tested with a process follower in `ingress.rs`).
    assert!(
        tokio::net::TcpStream::connect(ingress_tls).await.is_ok(),
        "the ingress task does not listen on its HTTPS port {ingress_tls}"
    );

    // Load on the ingress node only, across a blue-green deploy and a warm rollback.
    let load = Load::new(ingress)
        .concurrency(4)
        .duration(LOAD_BOUND)
        .start();
    agent.deploy(&app("v2"), ENV).await.assert_code(0);
    wait_ingress_serves(ingress, "v2").await;
    agent.rollback(&name, ENV, None).await.assert_code(0);
    wait_ingress_serves(ingress, "v1").await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report}");
    let versions: std::collections::BTreeSet<&str> = report
        .records
        .iter()
        .filter_map(|record| record.version.as_deref())
        .collect();
    assert_eq!(versions, ["v1", "v2"].into_iter().collect());

    // The proxy's token: minted by the agent, only in the Swarm secret.
    let tokens = agent.cli(&["tokens", "list", "--json"]).await;
    tokens.assert_code(0);
    assert!(
        tokens.stdout.contains("swarm-ingress") && tokens.stdout.contains("\"proxy\""),
        "the agent minted a proxy token: {}",
        tokens.stdout
    );
    let inspected = docker(&["service", "inspect", "rollway-proxy"]).unwrap_or_default();
    assert!(!inspected.contains("rwy_"), "a token in the service's spec");
    let containers = docker(&[
        "ps",
        "-q",
        "--filter",
        "label=com.docker.swarm.service.name=rollway-proxy",
    ])
    .unwrap_or_default();
    assert!(
        !containers.trim().is_empty(),
        "no task container on the node"
    );
    for container in containers.lines() {
        let inspected = docker(&["inspect", container]).unwrap_or_default();
        assert!(!inspected.contains("rwy_"), "a token in a task's inspect");
    }
}

/// Polls the ingress port until five requests answer `version`.
async fn wait_ingress_serves(ingress: std::net::SocketAddr, version: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = Load::new(ingress)
            .concurrency(1)
            .count(5)
            .start()
            .wait()
            .await;
        if report
            .records
            .iter()
            .all(|record| record.version.as_deref() == Some(version))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ingress does not serve {version}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the ingress service, its secrets and the node's label when the test ends.
struct IngressCleanup {
    node: String,
}

impl Drop for IngressCleanup {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", "rollway-proxy"]);
        let _ = docker(&[
            "node",
            "update",
            "--label-rm",
            "rollway.ingress",
            &self.node,
        ]);
        for _ in 0..100 {
            let names = docker(&[
                "secret",
                "ls",
                "--filter",
                "label=dev.rollway.ingress=rollway-proxy",
                "--format",
                "{{.Name}}",
            ])
            .unwrap_or_default();
            let mut left = 0;
            for name in names.lines() {
                if docker(&["secret", "rm", name]).is_none() {
                    left += 1;
                }
            }
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

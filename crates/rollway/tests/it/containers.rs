//! The agent's end-to-end deploy scenarios, each written once and run with both drivers: the
//! demo app as a process (`run = ...`) and as a container (`image = ...` or
//! `dockerfile = "Dockerfile"`, through the real Docker engine).
//!
//! Nothing can be pulled here, so the first container test of a run makes the images itself: a
//! root file system holding the demo app, `/bin/sh` and the shared libraries `ldd` lists, packed
//! with `tar` and `docker import`ed as `rollway-e2e-<pid>-<n>:base` (its command the demo app,
//! `HOST=0.0.0.0` so it listens on the container's interface). `:v1` ... `:v5` are built `FROM`
//! it with `TAGGED=<tag>` (so a test sees which tag `image = "...:{version}"` ran), and so are
//! the images the agent builds for `dockerfile` apps.
//! Every image, and every container of one (labels are inherited), carries the labels
//! `dev.rollway.e2e=containers` and `dev.rollway.e2e-run=<pid of the test process>`: leftovers
//! of runs whose process is gone are removed when a run starts, this run's containers when each
//! test ends, its images (by `dev.rollway.e2e-images=<repository>`) when the last test holding
//! them ends; the next test to need images imports them again as `<n + 1>`. Each test's agent keeps its env
//! files in a directory of its own on /dev/shm (`RUNTIME_DIRECTORY`), and each test deploys an
//! app of its own name, so tests running side by side never share a container name.
//!
//! Without a reachable Docker engine the container variants skip with one printed line, unless
//! `ROLLWAY_E2E` or `CI` is set: there they fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use testkit::agent::{Driver, TestAgent, TestApp};
use testkit::load::{Load, LoadHandle};

use crate::agent::{assert_contains, assert_current_and_one_warm, rollway_bin};

const ENV: &str = "production";
const CRASH_BEFORE: &str = "ROLLWAY_TEST_CRASH_BEFORE";
/// Bound of every load loop; tests stop theirs long before.
const LOAD_BOUND: Duration = Duration::from_secs(240);
/// Bound of waits for a deployment to end.
const PATIENCE: Duration = Duration::from_secs(60);
/// Label of every image and container these tests make.
const LABEL_E2E: &str = "dev.rollway.e2e=containers";
/// Label naming the test process that made an image (and, inherited, a container).
const LABEL_RUN: &str = "dev.rollway.e2e-run";
/// Label naming the repository of the images (one per import) an image or container comes from.
const LABEL_IMAGES: &str = "dev.rollway.e2e-images";
/// Versions the app image is tagged with (`image = "...:{version}"`).
const VERSIONS: [&str; 5] = ["v1", "v2", "v3", "v4", "v5"];

// a. Deploys and rollbacks under continuous load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_deploy_and_roll_back_under_load_failing_no_request() {
    deploys_and_rollbacks_under_load(Driver::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_deploy_and_roll_back_under_load_failing_no_request() {
    deploys_and_rollbacks_under_load(Driver::Container).await;
}

/// Blue-green deploys (`image`), rolling deploys of two replicas (`dockerfile`), then rollbacks,
/// all under four clients of load: no request fails, every step serves its version, and every
/// release's instances run exactly once.
async fn deploys_and_rollbacks_under_load(driver: Driver) {
    let Some(setup) = Setup::start(driver, "load").await else {
        return;
    };
    let agent = setup.agent();
    // Version of release N at index N - 1.
    let mut versions: Vec<&str> = vec!["v1"];
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    agent.assert_serves("v1").await;
    let load = setup.load();

    for step in 1..8 {
        let version = ["v1", "v2"][step % 2];
        let app = if step < 5 {
            setup.app("app", version)
        } else {
            setup
                .dockerfile_app("built", version)
                .strategy("rolling")
                .replicas(2)
        };
        let ran = agent.deploy(&app, ENV).await;
        ran.assert_code(0);
        versions.push(version);
        assert_contains(&ran, &format!("{}@{}", setup.name, versions.len()));
        agent.assert_serves(version).await;
        if driver == Driver::Container {
            // `image = "...:{version}"` ran the image tagged with the version, or the agent
            // built the uploaded folder's Dockerfile.
            let (variable, expected) = if step < 5 {
                ("TAGGED", version)
            } else {
                ("BUILT", "dockerfile")
            };
            let answer = agent.get(None, &format!("/env/{variable}")).await;
            assert_eq!((answer.status, answer.body.as_str()), (200, expected));
        }
    }

    // Releases 1..=8 alternate v1/v2: `--to 3` (v1) from 8 (v2), then back to 8 and to 7.
    for (to, current) in [(3, 3), (8, 8), (7, 7), (6, 6)] {
        agent
            .rollback(&setup.name, ENV, Some(to))
            .await
            .assert_code(0);
        agent.assert_serves(versions[current - 1]).await;
        let status = agent.status(&setup.name, ENV).await;
        assert_eq!(status.current_release(), Some(current as u64), "{status}");
        assert_eq!(status.weights(), vec![(current as u64, 100)], "{status}");
    }

    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.total > 0, "the load loop sent nothing");
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1", "v2"],
        "{report}"
    );
    // Only the release that served before the last rollback stays warm (keep_warm keeps one
    // earlier release); every instance the agent reports runs exactly once.
    let instances = agent.status(&setup.name, ENV).await.instances();
    assert_current_and_one_warm(&instances, 6);
    let ids: Vec<&str> = instances.keys().map(String::as_str).collect();
    setup.assert_instances_match(&ids);
    if driver == Driver::Container {
        // Each deploy recorded its image once; rollbacks ran the recorded ones.
        let images = agent
            .events()
            .await
            .iter()
            .filter(|event| event["kind"] == "deployment.image")
            .count();
        assert_eq!(images, 8, "one image recorded per release");
        // Promise 9: apps in containers run as their app's own non-root user, and the engine's
        // socket is mounted into none of them.
        for id in &ids {
            let seen = docker(&[
                "inspect",
                "--format",
                "{{.Config.User}} {{json .Mounts}}",
                &format!("rollway-{id}"),
            ])
            .unwrap_or_else(|| panic!("cannot inspect the container of `{id}`"));
            let (user, mounts) = seen.trim().split_once(' ').unwrap_or((seen.trim(), ""));
            let uid: u32 = user
                .split(':')
                .next()
                .and_then(|uid| uid.parse().ok())
                .unwrap_or(0);
            assert!((61184..=65519).contains(&uid), "`{id}` runs as `{user}`");
            assert!(!mounts.contains(".sock"), "`{id}` mounts {mounts}");
        }
    }
}

// b. Releases that never become healthy, or crash, or cannot start never receive traffic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_that_never_become_healthy_fail_the_deploy_with_traffic_untouched() {
    unhealthy_releases_never_get_traffic(Driver::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_that_never_become_healthy_fail_the_deploy_with_traffic_untouched() {
    unhealthy_releases_never_get_traffic(Driver::Container).await;
}

pub(crate) async fn unhealthy_releases_never_get_traffic(driver: Driver) {
    let Some(setup) = Setup::start(driver, "unhealthy").await else {
        return;
    };
    let agent = setup.agent();
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let load = setup.load();

    let unhealthy = setup
        .app("app", "v2")
        .health_delay(Duration::from_secs(600))
        .start_timeout("1s");
    let crashing = setup.app("app", "v3").env("CRASH_AFTER_S", "0");
    // What cannot even start: a missing program, or an image the engine has not and cannot pull.
    let (missing, named) = match driver {
        Driver::Process => (
            setup.app("app", "v4").run("/nonexistent/demo-app"),
            setup.instance(4, 1),
        ),
        Driver::Container => {
            let image = format!("rollway-e2e-missing-{}:none", std::process::id());
            (setup.app("app", "v4").image(&image), image)
        }
    };
    for (release, app, named) in [
        (2, unhealthy, setup.instance(2, 1)),
        (3, crashing, setup.instance(3, 1)),
        (4, missing, named),
    ] {
        let ran = agent.deploy(&app, ENV).await;
        ran.assert_code(1);
        assert_contains(&ran, &named);
        agent.assert_serves("v1").await;
        let status = agent.status(&setup.name, ENV).await;
        assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
        assert_eq!(status.current_release(), Some(1), "{status}");
        assert_eq!(
            status.weights(),
            vec![(1, 100)],
            "release {release}: {status}"
        );
    }

    let report = load.stop().await;
    report.assert_no_failures();
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1"],
        "{report}"
    );
    let status = agent.status(&setup.name, ENV).await;
    let expected = setup.instance(1, 1);
    assert_eq!(
        status.instances().into_iter().collect::<Vec<_>>(),
        [(expected.clone(), "serving".to_owned())],
        "{status}"
    );
    setup.assert_instances_match(&[&expected]);
}

// c. kill -9 of the agent mid-deploy: on restart it adopts what runs and finishes or undoes.

/// Where traffic must end after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ends {
    /// The deployment is undone: `Failed`, v1 serves.
    Undone,
    /// The deployment is finished: `Succeeded`, v2 serves, v1 stays warm.
    Finished,
}

/// How the app of a crash test deploys: blue-green with one instance (`image`), or rolling with
/// two (`dockerfile`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    BlueGreen,
    Rolling,
}

impl Shape {
    fn app(self, setup: &Setup, version: &str) -> TestApp {
        match self {
            Shape::BlueGreen => setup.app(version, version),
            Shape::Rolling => setup
                .dockerfile_app(version, version)
                .strategy("rolling")
                .replicas(2),
        }
    }

    /// `(instance id, state)` of every instance of `release`.
    fn instances(self, setup: &Setup, release: u64, state: &str) -> Vec<(String, String)> {
        let replicas = match self {
            Shape::BlueGreen => 1,
            Shape::Rolling => 2,
        };
        (1..=replicas)
            .map(|replica| (setup.instance(release, replica), state.to_owned()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_an_agent_kill_are_stopped_when_it_undoes_the_deploy() {
    agent_killed_before(Driver::Process, "Verifying", Shape::BlueGreen, Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_started_before_an_agent_kill_are_stopped_when_it_undoes_the_deploy() {
    agent_killed_before(
        Driver::Container,
        "Verifying",
        Shape::BlueGreen,
        Ends::Undone,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_are_adopted_when_the_agent_finishes_a_rolling_deploy_after_a_kill() {
    agent_killed_before(Driver::Process, "Succeeded", Shape::Rolling, Ends::Finished).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_adopted_when_the_agent_finishes_a_rolling_deploy_after_a_kill() {
    agent_killed_before(
        Driver::Container,
        "Succeeded",
        Shape::Rolling,
        Ends::Finished,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_a_rolling_deploy_killed_before_shifting_are_stopped_on_restart() {
    agent_killed_before(Driver::Process, "Shifting", Shape::Rolling, Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_rolling_deploy_killed_before_shifting_are_stopped_on_restart() {
    agent_killed_before(Driver::Container, "Shifting", Shape::Rolling, Ends::Undone).await;
}

/// Deploys v1, restarts the agent so that it kills itself (SIGKILL) before writing `state`,
/// deploys v2, restarts the agent normally and checks where the deployment and the traffic
/// ended, and that every instance runs exactly once; a load loop runs the whole time, the
/// agent's downtime included.
pub(crate) async fn agent_killed_before(driver: Driver, state: &str, shape: Shape, ends: Ends) {
    let Some(mut setup) = Setup::start(driver, "kill").await else {
        return;
    };
    setup
        .agent()
        .deploy(&shape.app(&setup, "v1"), ENV)
        .await
        .assert_code(0);
    let load = setup.load();

    setup.restart_agent(&[(CRASH_BEFORE, state)]).await;
    let token = setup.agent().admin_token().to_owned();
    let deploy = setup
        .agent()
        .deploy_command(&shape.app(&setup, "v2"), ENV, Some(&token))
        .spawn()
        .expect("spawn rollway deploy");
    assert!(
        setup.agent_mut().wait_exit(PATIENCE).await,
        "the agent did not kill itself before {state}:\n{}",
        setup.agent().log()
    );
    wait_answers_while_down(&load).await;
    let running_while_down = match driver {
        Driver::Process => BTreeMap::new(),
        Driver::Container => setup.containers(),
    };
    setup.restart_agent(&[]).await;
    let agent = setup.agent();
    let status = agent
        .wait_deployment_finished(&setup.name, ENV, PATIENCE)
        .await;
    let ran = tokio::time::timeout(PATIENCE, deploy.wait_with_output())
        .await
        .expect("rollway deploy ended")
        .expect("rollway deploy output");
    let code = ran.status.code();
    let ran = format!("exit {code:?}\n{}", String::from_utf8_lossy(&ran.stderr));

    let (current, serves, instances) = match ends {
        Ends::Undone => {
            assert_eq!(status.deployment_state(), Some("Failed"), "{status}\n{ran}");
            assert!(
                status
                    .deployment_reason()
                    .is_some_and(|reason| reason.contains("agent restarted")),
                "{status}"
            );
            assert!(matches!(code, Some(1 | 3)), "{ran}");
            (1, "v1", shape.instances(&setup, 1, "serving"))
        }
        Ends::Finished => {
            assert_eq!(
                status.deployment_state(),
                Some("Succeeded"),
                "{status}\n{ran}"
            );
            assert!(matches!(code, Some(0 | 3)), "{ran}");
            let mut instances = shape.instances(&setup, 1, "warm");
            instances.extend(shape.instances(&setup, 2, "serving"));
            (2, "v2", instances)
        }
    };
    assert_eq!(status.current_release(), Some(current), "{status}");
    assert_eq!(status.weights(), vec![(current, 100)], "{status}");
    agent.assert_serves(serves).await;
    assert_eq!(
        status.instances().into_iter().collect::<Vec<_>>(),
        instances,
        "{status}"
    );
    let ids: Vec<&str> = instances.iter().map(|(id, _)| id.as_str()).collect();
    setup.assert_instances_match(&ids);
    // The containers that ran while no agent did are the ones that run now: adopted, never
    // replaced (the ones of an undone release are gone).
    for id in ids.iter().filter(|_| driver == Driver::Container) {
        let before = running_while_down.get(*id).map(|found| &found[0].id);
        let now = setup.containers().get(*id).map(|found| found[0].id.clone());
        assert_eq!(before, now.as_ref(), "the container of `{id}` was replaced");
    }

    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.total > 0, "the load loop sent nothing");
}

/// The proxy serves on its own while no agent runs: waits until some requests were answered.
pub(crate) async fn wait_answers_while_down(load: &LoadHandle) {
    let answered = load.snapshot().ok;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while load.snapshot().ok < answered + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answers while the agent was down: {}",
            load.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// d. Secrets reach the app and its release command, and nothing else.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_given_to_processes_is_in_no_log() {
    secret_reaches_the_app_and_no_log(Driver::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_given_to_containers_is_neither_in_docker_inspect_nor_in_any_log() {
    secret_reaches_the_app_and_no_log(Driver::Container).await;
}

/// A secret set with `rollway secrets set` and listed by the environment reaches the instances
/// and the release command (a one-off container with containers), and is found neither in
/// `rollway logs`, the events, the agent's log, the state directory, nor (containers) in
/// `docker inspect` or `docker logs` of any container of the app.
async fn secret_reaches_the_app_and_no_log(driver: Driver) {
    let Some(setup) = Setup::start(driver, "secret").await else {
        return;
    };
    let agent = setup.agent();
    let secret = format!("canary-{}", testkit::agent::random_hex(16));
    agent
        .set_secret(&setup.name, ENV, "DB_PASSWORD", &secret)
        .await
        .assert_code(0);
    // The release command proves it got the secret without printing it.
    let app = setup
        .dockerfile_app("app", "v1")
        .secrets(ENV, &["DB_PASSWORD"])
        // And a line of 16,376 bytes and then the secret: the engine's logs split a line at 16 KiB,
        // in the middle of the secret, and the two pieces must be joined before scrubbing.
        .release(
            r#"test "$DB_PASSWORD" = "$EXPECTED" || { echo "release command: wrong secret"; exit 9; }; echo "release command saw the secret"; a=xxxxxxxx; p=; for i in 1 2 3 4 5 6 7 8 9 10 11; do p=$p$a; a=$a$a; done; printf '%s%s long line ends\n' "$p" "$DB_PASSWORD""#,
            None,
        )
        .env("EXPECTED", "${DB_PASSWORD}");
    let ran = agent.deploy(&app, ENV).await;
    ran.assert_code(0);
    assert_contains(&ran, "release command saw the secret");
    agent.assert_serves("v1").await;
    let seen = agent.get(None, "/env/DB_PASSWORD").await;
    assert_eq!((seen.status, seen.body.as_str()), (200, secret.as_str()));

    let mut places: Vec<(String, String)> = vec![
        ("the deploy's output".into(), ran.to_string()),
        (
            "`rollway logs`".into(),
            agent
                .cli(&["logs", "--env", ENV, "--app", &setup.name, "-n", "1000"])
                .await
                .assert_code(0)
                .to_string(),
        ),
        (
            "`rollway events`".into(),
            serde_json::to_string(&agent.events().await).expect("events JSON"),
        ),
        ("the agent's log".into(), agent.log()),
    ];
    let logs = &places[1].1;
    assert!(logs.contains("listening"), "no app output in:\n{logs}");
    if driver == Driver::Container {
        let ids = docker(&["ps", "-aq", "--filter", &setup.app_filter()]).expect("docker ps");
        let ids: Vec<&str> = ids.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "one container: {ids:?}");
        let mut inspect = vec!["inspect"];
        inspect.extend(&ids);
        places.push((
            "`docker inspect`".into(),
            docker(&inspect).expect("docker inspect"),
        ));
        let logs = docker_all_output(&["logs", ids[0]]);
        assert!(logs.contains("listening"), "{logs}");
        places.push(("`docker logs`".into(), logs));
        // The release command's one-off container is gone (this is the run's only test with one).
        let one_off = docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=dev.rollway.run-once",
            "--filter",
            &run_filter(),
        ])
        .expect("docker ps");
        assert_eq!(one_off.trim(), "", "one-off containers left behind");
    }
    assert_contains(&ran, "*** long line ends");
    // The secret's random half, whole or as the piece after a split.
    let random_half = &secret[secret.len() - 16..];
    for (place, text) in &places {
        assert!(!text.contains(&secret), "the secret is in {place}:\n{text}");
        assert!(
            !text.contains(random_half),
            "a piece of the secret is in {place}"
        );
    }
    assert_eq!(
        testkit::agent::files_containing(agent.state_dir(), &secret),
        Vec::<PathBuf>::new(),
        "the secret is written in the state directory"
    );
}

/// The agent is killed (kill -9, not a crash point) while the release command runs in its
/// one-off container: the restarted agent undoes the deploy and removes that container and its
/// env file, v1 serving all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_container_running_when_the_agent_is_killed_is_removed_on_restart() {
    let Some(mut setup) = Setup::start(Driver::Container, "oneoff").await else {
        return;
    };
    setup
        .agent()
        .deploy(&setup.app("v1", "v1"), ENV)
        .await
        .assert_code(0);
    let load = setup.load();
    let token = setup.agent().admin_token().to_owned();
    let slow = setup
        .app("v2", "v2")
        .release("echo migrating; sleep 600", None);
    let deploy = setup
        .agent()
        .deploy_command(&slow, ENV, Some(&token))
        .spawn()
        .expect("spawn rollway deploy");
    let app_filter = setup.app_filter();
    let one_off = || {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &app_filter,
            "--filter",
            "label=dev.rollway.run-once",
        ])
        .expect("docker ps")
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while one_off().trim().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no one-off container of the app runs the release command:\n{}",
            setup.agent().log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.agent_mut().kill9().await;
    wait_answers_while_down(&load).await;
    setup.restart_agent(&[]).await;
    let agent = setup.agent();
    let status = agent
        .wait_deployment_finished(&setup.name, ENV, PATIENCE)
        .await;
    assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
    assert_eq!(status.current_release(), Some(1), "{status}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !one_off().trim().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the one-off container was left behind:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    setup.assert_instances_match(&[&setup.instance(1, 1)]);
    agent.assert_serves("v1").await;
    let ran = tokio::time::timeout(PATIENCE, deploy.wait_with_output())
        .await
        .expect("rollway deploy ended")
        .expect("rollway deploy output");
    assert!(matches!(ran.status.code(), Some(1 | 3)), "{ran:?}");
    load.stop().await.assert_no_failures();
}

// e. A release runs the image recorded for it, whatever its tag points at now.

/// `image = "<repository>:moving"`: release 1 records the image the tag names then; the tag
/// moves to another image and release 2 runs that one; release 1's instance stops (keep_warm
/// 0s), so the rollback to it is cold and must start the recorded image, not the tag's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_rollback_runs_the_recorded_image_after_its_tag_moved() {
    let Some(setup) = Setup::start(Driver::Container, "tag").await else {
        return;
    };
    let agent = setup.agent();
    let images = setup.images.as_ref().expect("test images");
    let moving = format!("{}:moving", images.repository);
    let app = |version: &str| setup.app(version, version).image(&moving).keep_warm("0s");
    let flavor = async || {
        let answer = agent.get(None, "/env/FLAVOR").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    };
    images.build(&moving, "FLAVOR=first");
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    assert_eq!(flavor().await, "first");
    let load = setup.load();

    images.build(&moving, "FLAVOR=second");
    agent.deploy(&app("v2"), ENV).await.assert_code(0);
    agent.assert_serves("v2").await;
    assert_eq!(flavor().await, "second");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = agent.status(&setup.name, ENV).await;
        if status.instances().len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "release 1 is still warm: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.assert_instances_match(&[&setup.instance(2, 1)]);

    agent
        .rollback(&setup.name, ENV, Some(1))
        .await
        .assert_code(0);
    agent.assert_serves("v1").await;
    assert_eq!(flavor().await, "first", "the rollback ran the moved tag");
    let report = load.stop().await;
    report.assert_no_failures();
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1", "v2"],
        "{report}"
    );
}

// The test's agent, app and images.

/// One test's agent in a fresh temporary directory, deploying an app named after the test (so
/// tests side by side never share container names).
struct Setup {
    name: String,
    driver: Driver,
    /// `Some` until dropped; dropped first, so nothing restarts containers while they are removed.
    agent: Option<TestAgent>,
    /// The agent's `RUNTIME_DIRECTORY` (container env files), on /dev/shm.
    runtime_dir: PathBuf,
    images: Option<Arc<Images>>,
    dir: tempfile::TempDir,
}

impl Setup {
    /// `None` (after one printed line) for a container test where no Docker engine is
    /// reachable, unless `ROLLWAY_E2E` or `CI` is set.
    async fn start(driver: Driver, scenario: &str) -> Option<Setup> {
        let images = match driver {
            Driver::Process => None,
            Driver::Container => Some(Images::get()?),
        };
        let letter = match driver {
            Driver::Process => "p",
            Driver::Container => "c",
        };
        // Container names are global to the engine: every setup gets its own app name, even
        // when tests of one scenario run at the same time.
        static SETUPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SETUPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{scenario}-{letter}{}-{n}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime_dir = tempfile::Builder::new()
            .prefix("rollway-e2e-")
            .tempdir_in("/dev/shm")
            .expect("temporary directory on /dev/shm")
            .keep();
        let mut setup = Setup {
            name,
            driver,
            agent: None,
            runtime_dir,
            images,
            dir,
        };
        let env = setup.agent_env(&[]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        setup.agent = Some(
            TestAgent::start_with_env(rollway_bin(), &setup.dir.path().join("state"), &env).await,
        );
        Some(setup)
    }

    fn agent(&self) -> &TestAgent {
        self.agent.as_ref().expect("the agent")
    }

    fn agent_mut(&mut self) -> &mut TestAgent {
        self.agent.as_mut().expect("the agent")
    }

    fn agent_env<'a>(&self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
        let mut env = vec![("RUNTIME_DIRECTORY", self.runtime_dir.display().to_string())];
        env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
        env
    }

    /// Kills the agent and starts it again with `extra` (and its runtime directory).
    async fn restart_agent(&mut self, extra: &[(&str, &str)]) {
        let env = self.agent_env(extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.agent_mut().restart_with_env(&env).await;
    }

    /// The demo app in folder `folder`: `run = demo-app`, or `image = "<test image>:{version}"`.
    fn app(&self, folder: &str, version: &str) -> TestApp {
        let app = TestApp::new(self.dir.path().join(folder))
            .named(&self.name)
            .version(version)
            .driver(self.driver);
        match &self.images {
            Some(images) => app.image(format!("{}:{{version}}", images.repository)),
            None => app,
        }
    }

    /// The demo app in folder `folder`: `run = demo-app`, or `dockerfile = "Dockerfile"` built
    /// `FROM` the test image by the agent.
    fn dockerfile_app(&self, folder: &str, version: &str) -> TestApp {
        let app = TestApp::new(self.dir.path().join(folder))
            .named(&self.name)
            .version(version)
            .driver(self.driver);
        match &self.images {
            Some(images) => app.file(
                "Dockerfile",
                format!("FROM {}:base\nENV BUILT=dockerfile\n", images.repository),
            ),
            None => app,
        }
    }

    fn instance(&self, release: u64, replica: u32) -> String {
        format!("{}-{ENV}-r{release}-web-{replica}", self.name)
    }

    /// Four clients through the proxy until stopped.
    fn load(&self) -> LoadHandle {
        Load::new(self.agent().proxy_addr())
            .concurrency(4)
            .duration(LOAD_BOUND)
            .start()
    }

    /// `--filter` of this test's containers.
    fn app_filter(&self) -> String {
        format!("label=dev.rollway.app={}", self.name)
    }

    /// Asserts that the instances the agent reports are exactly the ones running, once each:
    /// processes (one live pid file and one process group per instance, nothing else in the
    /// state directory), or containers (one running container `rollway-<id>` labelled
    /// `dev.rollway.instance=<id>` per instance, published on 127.0.0.1 only, one env file each,
    /// and no other container of the app).
    #[track_caller]
    fn assert_instances_match(&self, reported: &[&str]) {
        let agent = self.agent();
        let mut reported: Vec<String> = reported.iter().map(|id| (*id).to_owned()).collect();
        reported.sort();
        match self.driver {
            Driver::Process => {
                let pid_files: Vec<String> = agent.instance_pid_files().into_keys().collect();
                assert_eq!(
                    pid_files, reported,
                    "live pid files vs. the agent's instances"
                );
                let processes = agent.instance_processes();
                let running: Vec<String> = processes.keys().cloned().collect();
                assert_eq!(
                    running, reported,
                    "running instances vs. the agent's instances"
                );
                for (id, groups) in &processes {
                    assert_eq!(groups.len(), 1, "instance `{id}` runs in {groups:?}");
                }
            }
            Driver::Container => {
                let containers = self.containers();
                let ids: Vec<String> = containers.keys().cloned().collect();
                assert_eq!(ids, reported, "containers vs. the agent's instances");
                for (id, found) in &containers {
                    assert_eq!(found.len(), 1, "instance `{id}` runs in {found:?}");
                    let Container {
                        name, state, ports, ..
                    } = &found[0];
                    assert_eq!(name, &format!("rollway-{id}"));
                    assert_eq!(state, "running", "{id}: {found:?}");
                    assert!(
                        ports.starts_with("127.0.0.1:") && !ports.contains(','),
                        "{id} is published elsewhere than on 127.0.0.1: {ports}"
                    );
                }
                let mut env_files: Vec<String> =
                    std::fs::read_dir(self.runtime_dir.join("container-env"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .collect();
                env_files.sort();
                let expected: Vec<String> = reported
                    .iter()
                    .map(|id| format!("rollway-{id}.env"))
                    .collect();
                assert_eq!(env_files, expected, "env files vs. the agent's instances");
            }
        }
    }

    /// Instance id → every container of this test's app labelled with it (`docker ps -a`).
    fn containers(&self) -> BTreeMap<String, Vec<Container>> {
        let listed = docker(&[
            "ps",
            "-a",
            "--filter",
            &self.app_filter(),
            "--filter",
            "label=dev.rollway.instance",
            "--format",
            r#"{{.Label "dev.rollway.instance"}}|{{.ID}}|{{.Names}}|{{.State}}|{{.Ports}}"#,
        ])
        .expect("docker ps");
        let mut found: BTreeMap<String, Vec<Container>> = BTreeMap::new();
        for line in listed.lines().filter(|line| !line.is_empty()) {
            let fields: Vec<&str> = line.split('|').collect();
            let [instance, id, name, state, ports] = fields[..] else {
                panic!("unexpected `docker ps` line `{line}`");
            };
            found
                .entry(instance.to_owned())
                .or_default()
                .push(Container {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    state: state.to_owned(),
                    ports: ports.to_owned(),
                });
        }
        found
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The agent first (its Drop kills it, its proxy and any process instances), so nothing
        // starts a container again while they are removed.
        drop(self.agent.take());
        if self.images.is_some() {
            remove_containers(&[&self.app_filter(), &run_filter()]);
        }
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// One container as `docker ps` lists it.
#[derive(Debug)]
struct Container {
    id: String,
    name: String,
    state: String,
    ports: String,
}

/// The test images of this run: `<repository>:base`, and `:v1` ... `:v5` built from it. Removed
/// (with every image built from them) when the last test holding them ends.
pub(crate) struct Images {
    pub(crate) repository: String,
}

impl Images {
    /// The images, imported now when no test holds them; `None` when no engine is reachable
    /// (and neither `ROLLWAY_E2E` nor `CI` is set: then it panics).
    pub(crate) fn get() -> Option<Arc<Images>> {
        if let Err(error) = engine_reachable() {
            let required = ["ROLLWAY_E2E", "CI"]
                .iter()
                .find(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
            if let Some(name) = required {
                panic!("no Docker engine is reachable, but {name} is set: {error}");
            }
            static SKIPPED: OnceLock<()> = OnceLock::new();
            SKIPPED.get_or_init(|| {
                // Straight to stderr, past the test harness's capture of `eprintln!`, so the
                // line shows in a passing run too.
                use std::io::Write as _;
                let line = format!(
                    "skipping the container driver's e2e tests: no Docker engine reachable ({error})\n"
                );
                let _ = std::io::stderr().write_all(line.as_bytes());
            });
            return None;
        }
        // std Mutex held across the (blocking) import so that only one test imports.
        static IMAGES: Mutex<Weak<Images>> = Mutex::new(Weak::new());
        static FIRST: OnceLock<()> = OnceLock::new();
        let mut held = IMAGES.lock().unwrap_or_else(|error| error.into_inner());
        if let Some(images) = held.upgrade() {
            return Some(images);
        }
        FIRST.get_or_init(remove_leftovers);
        let images = Arc::new(Images::import());
        *held = Arc::downgrade(&images);
        Some(images)
    }

    fn import() -> Images {
        static GENERATION: AtomicU32 = AtomicU32::new(0);
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let repository = format!("rollway-e2e-{}-{generation}", std::process::id());
        let root = tempfile::tempdir().expect("image root");
        let binaries = [
            (testkit::demo::demo_app_path(), "usr/local/bin/demo-app"),
            (find_binary(&["/bin/sh", "/usr/bin/sh"]), "bin/sh"),
        ];
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for (source, target) in binaries {
            files.extend(shared_libraries(&source).into_iter().map(|library| {
                let target = library.display().to_string();
                (library, target)
            }));
            files.push((source, target.to_owned()));
        }
        for (source, target) in &files {
            let destination = root.path().join(target.trim_start_matches('/'));
            std::fs::create_dir_all(destination.parent().expect("a parent"))
                .expect("create a directory of the image root");
            // `copy` follows symlinks: the libraries land as files at the paths `ldd` printed.
            std::fs::copy(source, &destination).unwrap_or_else(|error| {
                panic!("copy `{}` into the image: {error}", source.display())
            });
        }
        for dir in ["etc", "tmp", "run"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("create a directory");
        }
        let tarball = root.path().with_extension("tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .arg("-cf")
            .arg(&tarball)
            .arg("."));
        let base = format!("{repository}:base");
        run(Command::new("docker")
            .arg("import")
            .args([
                "--change",
                &format!(
                    "LABEL {LABEL_E2E} {LABEL_RUN}={} {LABEL_IMAGES}={repository}",
                    std::process::id()
                ),
            ])
            .args([
                "--change",
                "ENV PATH=/usr/local/bin:/usr/bin:/bin HOST=0.0.0.0",
            ])
            .args(["--change", r#"CMD ["demo-app"]"#])
            .arg(&tarball)
            .arg(&base));
        let _ = std::fs::remove_file(&tarball);
        let images = Images { repository };
        for version in VERSIONS {
            images.build(
                &format!("{}:{version}", images.repository),
                &format!("TAGGED={version}"),
            );
        }
        images
    }
}

impl Images {
    /// Builds `tag` `FROM` the imported image with `ENV {env}` (labels inherited).
    fn build(&self, tag: &str, env: &str) {
        let context = tempfile::tempdir().expect("build context");
        std::fs::write(
            context.path().join("Dockerfile"),
            format!("FROM {}:base\nENV {env}\n", self.repository),
        )
        .expect("write the Dockerfile");
        run(Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(context.path()));
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        // By this generation's label: a test may already be importing the next one.
        let filter = format!("label={LABEL_IMAGES}={}", self.repository);
        remove_containers(&[&filter]);
        remove_images(&[&filter]);
    }
}

/// `--filter` of everything this test process made.
fn run_filter() -> String {
    format!("label={LABEL_RUN}={}", std::process::id())
}

/// `Err` with the reason when `docker version` cannot reach an engine.
pub(crate) fn engine_reachable() -> Result<(), String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        Err(error) => Err(format!("cannot run `docker`: {error}")),
    }
}

/// Containers and images of earlier runs whose test process is gone.
fn remove_leftovers() {
    let filter = format!("label={LABEL_E2E}");
    let gone = |run: &str| {
        run.parse::<u32>()
            .map_or(true, |pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        &format!(r#"{{{{.ID}}}} {{{{.Label "{LABEL_RUN}"}}}}"#),
    ])
    .unwrap_or_default();
    for line in listed.lines() {
        if let Some((id, run)) = line.split_once(' ')
            && gone(run)
        {
            let _ = docker(&["rm", "-f", id]);
        }
    }
    let ids = docker(&["images", "-aq", "--filter", &filter]).unwrap_or_default();
    let mut runs: Vec<String> = Vec::new();
    for id in ids.split_whitespace() {
        let run = docker(&[
            "image",
            "inspect",
            "--format",
            &format!(r#"{{{{index .Config.Labels "{LABEL_RUN}"}}}}"#),
            id,
        ])
        .unwrap_or_default();
        let run = run.trim().to_owned();
        if gone(&run) && !runs.contains(&run) {
            runs.push(run);
        }
    }
    for run in runs {
        remove_images(&[&format!("label={LABEL_RUN}={run}")]);
    }
}

/// `docker rm -f` of every container matching all `filters`.
fn remove_containers(filters: &[&str]) {
    let mut args = vec!["ps", "-aq"];
    for filter in filters {
        args.extend(["--filter", filter]);
    }
    let ids = docker(&args).unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids);
        let _ = docker(&rm);
    }
}

/// `docker rmi -f` of every image matching all `filters` (children before parents: repeated
/// while something is left and removing makes progress).
fn remove_images(filters: &[&str]) {
    let mut left = usize::MAX;
    loop {
        let mut args = vec!["images", "-aq"];
        for filter in filters {
            args.extend(["--filter", filter]);
        }
        let ids = docker(&args).unwrap_or_default();
        let mut ids: Vec<&str> = ids.split_whitespace().collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() || ids.len() >= left {
            return;
        }
        left = ids.len();
        for id in ids {
            let _ = docker(&["rmi", "-f", id]);
        }
    }
}

fn find_binary(candidates: &[&str]) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("none of {candidates:?} exists; the test image needs one"))
}

/// The absolute paths of the shared libraries (and the loader) `ldd` lists for `binary`.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("run `ldd`");
    // A static binary: `ldd` says "not a dynamic executable" and fails.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, after)) => after.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Runs `command`, panicking with its output unless it succeeds.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The docker CLI's stdout, `None` when it fails.
pub(crate) fn docker(args: &[&str]) -> Option<String> {
    let output = Command::new("docker").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The docker CLI's stdout and stderr together (`docker logs` writes the container's stderr to
/// its own).
pub(crate) fn docker_all_output(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run `docker {args:?}`: {error}"));
    assert!(output.status.success(), "`docker {args:?}` failed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

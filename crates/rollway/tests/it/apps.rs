//! One app's mistake never blocks another (DESIGN.md promise 11): a route conflict is refused
//! before anything moves, artifacts unpack safely and concurrently, a failure keeps its cause
//! from the OS, and only the release that served just before stays warm.
//!
//! Assertions are about exit codes, messages, states, counts and folders, never about speed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::agent::{APP, TestAgent};

use crate::agent::{Setup, assert_contains, rollway_bin};

const ENV: &str = "production";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_app_claiming_a_host_is_refused_before_anything_moves() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let shop = |version| setup.app("shop", version).named("shop");
    agent.deploy(&shop("v1"), ENV).await.assert_code(0);
    agent.deploy(&shop("v2"), ENV).await.assert_code(0);

    // `blog` has no hosts either, as `rollway init` used to write: it claims what `shop` serves.
    let marker = setup.shared_dir("shared").join("blog-release-ran");
    let blog = setup
        .app("blog", "v1")
        .named("blog")
        .release(format!("touch {}", marker.display()), None);
    let ran = agent.deploy(&blog, ENV).await;
    ran.assert_code(2);
    assert_contains(
        &ran,
        "route `web` of `blog` in `production` answers any host on path `/`, which `web` of `shop` in `production` already routes; add `hosts = [\"blog.localhost\"]` under [routes.web]",
    );
    assert!(!marker.exists(), "the release command ran:\n{ran}");
    let releases = agent
        .api("GET", "/v1/apps/blog/environments/production/releases", "")
        .await;
    assert_eq!(
        (releases.status, releases.body.trim()),
        (200, "[]"),
        "no release is recorded for a refused deploy"
    );
    assert!(agent.backups("blog", ENV).await.is_empty());
    agent.assert_serves("v2").await;

    // Nothing of the refusal stays behind: a third app (with its own host) deploys, and the first
    // one rolls back, right after.
    let news = setup
        .app("news", "n1")
        .named("news")
        .hosts(&["news.localhost"]);
    agent.deploy(&news, ENV).await.assert_code(0);
    let answer = agent.get(Some("news.localhost"), "/").await;
    assert!(answer.body.contains("n1"), "{answer:?}");
    agent.rollback("shop", ENV, None).await.assert_code(0);
    agent.assert_serves("v1").await;

    // With a host of its own, `blog` deploys beside the others.
    let blog = blog.hosts(&["blog.localhost"]);
    agent.deploy(&blog, ENV).await.assert_code(0);
    assert!(
        marker.exists(),
        "the release command of the accepted deploy ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_artifact_deploys_to_two_environments_at_once() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = setup
        .app("app", "v1")
        .env_hosts("staging", &["staging.localhost"])
        .env_hosts("production", &["production.localhost"])
        .build("sleep 1");
    // Written once: both deploys pack the same folder, so they send one artifact.
    let dir = app.write();
    let (staging, production) = tokio::join!(
        agent.deploy_dir(&dir, "staging"),
        agent.deploy_dir(&dir, "production")
    );
    staging.assert_code(0);
    production.assert_code(0);
    for host in ["staging.localhost", "production.localhost"] {
        let answer = agent.get(Some(host), "/").await;
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
    }
    // One release folder per environment: each environment runs as its own user and owns its
    // folder, so environments never share one (promise 9).
    for env in ["staging", "production"] {
        let builds = agent
            .apps_dir()
            .join(testkit::agent::APP)
            .join(env)
            .join("builds");
        let names = names_in(&builds);
        assert_eq!(names.len(), 1, "one release folder in {env}: {names:?}");
        assert!(
            names.iter().all(|name| !name.starts_with('.')),
            "no temporary folder is left: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_three_large_artifacts_unpack() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every unpack holds its thread for a while, as a large artifact on a slow disk does. The
    // agent has one async worker per core (2 here): unpacks on them would stall the API.
    let agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[("ROLLWAY_TEST_UNPACK_DELAY_MS", "8000")],
    )
    .await;
    let mut deploys = Vec::new();
    for name in ["one", "two", "three"] {
        let app = testkit::agent::TestApp::new(dir.path().join(name))
            .named(name)
            .hosts(&[&format!("{name}.localhost")])
            // Its own bytes: three artifacts, not one shared by three deploys.
            .file("data.bin", format!("{name}\n").repeat(1 << 20));
        let mut command = agent.deploy_command(&app, ENV, Some(agent.admin_token()));
        command.kill_on_drop(true);
        deploys.push(command.spawn().expect("rollway deploy starts"));
    }
    // Once two deployments are unpacking, ask for a status.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while agent.log().matches("Pending → Preparing").count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "two deployments never reached Preparing:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = tokio::time::timeout(
        Duration::from_secs(4),
        agent.api("GET", "/v1/apps/one/environments/production/status", ""),
    )
    .await
    .expect("the API answers while artifacts unpack");
    assert_eq!(status.status, 200, "{status:?}");
    for deploy in deploys {
        let output = tokio::time::timeout(Duration::from_secs(120), deploy.wait_with_output())
            .await
            .expect("the deploy ends")
            .expect("deploy output");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_names_its_cause_and_exits_1() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs to fill needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // The release folders (in the apps directory beside the state directory) and the artifacts
    // each on a small filesystem of their own.
    let apps = Mounted::tmpfs(&dir.path().join("state-apps"), "8m");
    let builds = apps.0.join(testkit::agent::APP).join(ENV).join("builds");
    let artifacts = Mounted::tmpfs(&state.join("artifacts"), "2m");
    let agent = TestAgent::start(rollway_bin(), &state).await;

    // A small artifact that unpacks to more than the release folders' filesystem holds.
    let unpacks_big = testkit::agent::TestApp::new(dir.path().join("zeros"))
        .file("zeros.bin", "\0".repeat(16 << 20));
    let ran = agent.deploy(&unpacks_big, ENV).await;
    ran.assert_code(1);
    assert_contains(&ran, "No space left on device (os error 28)");
    assert!(
        names_in(&builds).iter().all(|name| !name.starts_with('.')),
        "a failed unpack leaves nothing: {:?}",
        names_in(&builds)
    );

    // An artifact larger than the artifacts' filesystem: the upload says why, and exits 1.
    let noise: String = pseudo_random_text(4 << 20);
    let big_upload =
        testkit::agent::TestApp::new(dir.path().join("noise")).file("noise.txt", noise);
    let ran = agent.deploy(&big_upload, ENV).await;
    ran.assert_code(1);
    assert_contains(&ran, "No space left on device (os error 28)");
    drop(agent);
    drop(artifacts);
    drop(apps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_warm_holds_only_the_release_that_served_just_before() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    for version in ["v1", "v2", "v3"] {
        agent
            .deploy(&setup.app("app", version).keep_warm("10m"), ENV)
            .await
            .assert_code(0);
    }
    let status = agent.status(APP, ENV).await;
    let instances: Vec<(String, String)> = status.instances().into_iter().collect();
    assert_eq!(
        instances,
        [
            (format!("{APP}-{ENV}-r2-web-1"), "warm".to_owned()),
            (format!("{APP}-{ENV}-r3-web-1"), "serving".to_owned()),
        ],
        "{status}"
    );
    assert_eq!(agent.instance_pid_files().len(), 2, "running instances");
    // The warm one is still a rollback of one switch.
    agent.rollback(APP, ENV, None).await.assert_code(0);
    agent.assert_serves("v2").await;
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
    })
}

/// Names in `dir`, sorted; none when it does not exist.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Printable text that zstd cannot shrink much (a xorshift stream over 64 letters).
fn pseudo_random_text(len: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(LETTERS[(state % 64) as usize])
        })
        .collect()
}

/// A tmpfs of `size` mounted at a folder for the test's life (root only); unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(path: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(path).expect("mount point");
        #[allow(
            clippy::disallowed_methods,
            reason = "the test mounts its own small filesystem"
        )]
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "cannot mount a tmpfs at `{}`",
            path.display()
        );
        Mounted(path.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        #[allow(
            clippy::disallowed_methods,
            reason = "the test unmounts its own small filesystem"
        )]
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_workers_stop_at_the_switch() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = |version| setup.app("app", version).worker().keep_warm("10m");
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    agent.deploy(&app("v2"), ENV).await.assert_code(0);
    let id = |release: u64, service: &str| format!("{APP}-{ENV}-r{release}-{service}-1");
    let running: Vec<String> = agent.instance_pid_files().into_keys().collect();
    assert_eq!(
        running,
        [id(1, "web"), id(2, "web"), id(2, "worker")],
        "the old worker stopped; the old web instance stays warm"
    );
    // A warm rollback is one switch for the web service and starts its worker again.
    agent.rollback(APP, ENV, None).await.assert_code(0);
    let running: Vec<String> = agent.instance_pid_files().into_keys().collect();
    assert_eq!(running, [id(1, "web"), id(1, "worker"), id(2, "web")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_webhook_secret_is_said_by_check_and_by_the_deploy() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = setup.app("app", "v1").alerts_webhook("SLACK_WEBHOOK_URL");
    let dir = app.write();
    let manifest = dir.join("rollway.toml").display().to_string();
    let check = agent
        .cli(&["check", "--env", ENV, "--file", &manifest])
        .await;
    check.assert_code(0);
    let said = "alerts are off in `production`: the webhook secret `SLACK_WEBHOOK_URL` is not set; set it with `rollway secrets set SLACK_WEBHOOK_URL --env production`";
    assert_contains(&check, said);
    assert_contains(&check, "route `web` in `production` answers every host");
    let deploy = agent.deploy_dir(&dir, ENV).await;
    deploy.assert_code(0);
    assert_contains(&deploy, said);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_observation_is_said_in_the_last_line() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    // No traffic at all while observing: the verdict cannot be a pass.
    let ran = agent
        .deploy(&setup.app("app", "v1").observe("2s"), ENV)
        .await;
    ran.assert_code(0);
    // The line that gives the outcome (only the URL follows it).
    let finished = ran
        .stderr
        .lines()
        .find(|line| line.trim_start().starts_with("Finished"))
        .unwrap_or_default();
    assert!(
        finished.contains("is live") && finished.contains("not verified under traffic: the observation window ended without enough evidence (inconclusive: 0 of 50 requests needed)"),
        "{ran}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_in_flight_holds_its_routes() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    // `shop`'s first deploy waits for approval: its routes serve nothing yet, but are claimed.
    let shop = setup.app("shop", "v1").named("shop").approval(ENV);
    let mut held = agent.deploy_command(&shop, ENV, Some(agent.admin_token()));
    held.kill_on_drop(true);
    let _held = held.spawn().expect("rollway deploy starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = agent
            .api("GET", "/v1/apps/shop/environments/production/status", "")
            .await;
        if status.body.contains("AwaitingApproval") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shop never waited for approval: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let blog = setup.app("blog", "v1").named("blog");
    let ran = agent.deploy(&blog, ENV).await;
    ran.assert_code(2);
    assert_contains(&ran, "which `web` of `shop` in `production` already routes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_killed_unpack_are_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // What an agent killed while unpacking leaves behind, in an app environment's folder.
    let builds = dir.path().join("state-apps/demo/production/builds");
    let leftover = builds.join(".0123456789ab-0123456789ab.5f3a.unpacking");
    std::fs::create_dir_all(leftover.join("lib")).expect("leftover");
    std::fs::write(leftover.join("lib/half.py"), "print(").expect("leftover file");
    let _agent = TestAgent::start(rollway_bin(), &state).await;
    assert_eq!(
        names_in(&builds),
        Vec::<String>::new(),
        "the leftover unpack folder is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waiting_for_approval_is_an_alert() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let receiver = setup.webhook(ENV, "ALERTS_URL").await;
    let app = |version| setup.app("app", version).alerts_webhook("ALERTS_URL");
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    let mut held = agent.deploy_command(&app("v2").approval(ENV), ENV, Some(agent.admin_token()));
    held.kill_on_drop(true);
    let _held = held.spawn().expect("rollway deploy starts");
    let received = receiver.wait_for(1, Duration::from_secs(60)).await;
    let texts: Vec<&str> = received
        .iter()
        .map(|request| request.body.as_str())
        .collect();
    assert!(
        texts.iter().any(|text| text.contains(
            "[rollway] demo in production: waiting for approval: release 2 is prepared and waits for `rollway approve"
        )),
        "{texts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_gives_back_the_earlier_routes() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = |version| setup.app("app", version);
    agent
        .deploy(&app("v1").hosts(&["first.localhost"]), ENV)
        .await
        .assert_code(0);
    // v2 moves to another host, then is aborted while observing: traffic goes back to v1.
    let moved = app("v2").hosts(&["second.localhost"]).observe("60s");
    let mut deploy = agent.deploy_command(&moved, ENV, Some(agent.admin_token()));
    deploy.kill_on_drop(true);
    let deploy = deploy.spawn().expect("rollway deploy starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while agent.status(APP, ENV).await.deployment_state() != Some("Observing") {
        assert!(tokio::time::Instant::now() < deadline, "v2 never observed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent
        .cli(&["abort", "--env", ENV, "--app", APP])
        .await
        .assert_code(0);
    let output = tokio::time::timeout(Duration::from_secs(60), deploy.wait_with_output())
        .await
        .expect("the deploy ends")
        .expect("deploy output");
    assert_eq!(output.status.code(), Some(1));
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    let answer = agent.get(Some("first.localhost"), "/").await;
    assert_eq!(answer.status, 200, "v1's host serves again: {answer:?}");
    assert!(answer.body.contains("v1"), "{answer:?}");
    // The host v2 took is free again for another app.
    let other = setup
        .app("other", "o1")
        .named("other")
        .hosts(&["second.localhost"]);
    agent.deploy(&other, ENV).await.assert_code(0);
}

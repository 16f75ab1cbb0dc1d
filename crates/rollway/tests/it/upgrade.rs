//! Upgrading Rollway's own processes costs no request (issue 16, part 1): a proxy hands its listening
//! sockets, routing and counters to a successor and drains; an agent restarted from a new binary
//! upgrades the proxy it finds running the old one.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{APP, TestAgent};
use testkit::load::Load;

use crate::agent::{Setup, assert_contains, rollway_bin};

const ENV: &str = "production";

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["kind"] == kind)
        .collect()
}

/// Requests the proxy counted for release 1 of the demo app (every status class).
async fn counted(agent: &TestAgent) -> u64 {
    let client = proxy::control_client::ControlClient::new(
        agent.state_dir().join("proxy").join("proxy.sock"),
    );
    let stats = client.stats().await.expect("the proxy's stats");
    let name = format!("{APP}/{ENV}@1");
    let release = stats
        .iter()
        .find(|release| release.release == name)
        .unwrap_or_else(|| panic!("no stats for `{name}`: {stats:?}"));
    let classes = &release.requests;
    classes.informational
        + classes.success
        + classes.redirection
        + classes.client_error
        + classes.server_error
}

async fn proxy_pid(agent: &TestAgent) -> u64 {
    agent.status(APP, ENV).await.0["proxy"]["pid"]
        .as_u64()
        .expect("a proxy pid")
}

/// Installs a copy of the test binary at `path` the way a package upgrade does (a new file renamed
/// over the old one): another inode and mtime, so another build as `binary_identity` sees it.
fn install_build(path: &Path) {
    let staged = path.with_extension("staged");
    std::fs::copy(rollway_bin(), &staged).expect("copy the binary");
    std::fs::rename(&staged, path).expect("install the binary");
}

/// The inode of the executable a process runs (`/proc/PID/exe` names it even once replaced).
fn exe_inode(pid: u64) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .expect("the proxy's executable")
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_proxy_upgrades_between_two_builds_under_load_fail_no_request_keep_websockets_and_counters()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    // The agent runs from its own installed file, which each round replaces with another build.
    let installed = dir.path().join("bin").join("rollway");
    std::fs::create_dir_all(installed.parent().expect("bin dir")).expect("bin dir");
    install_build(&installed);
    let agent = TestAgent::start(&installed, &dir.path().join("state")).await;
    let app = testkit::agent::TestApp::new(dir.path().join("app")).replicas(2);
    agent.deploy(&app, ENV).await.assert_code(0);
    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .duration(Duration::from_secs(120))
        .start();
    // 100 websockets, each echoing twice a second, opened before the first upgrade.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut websockets = Vec::new();
    for _ in 0..100 {
        let websocket = testkit::source::hold_websocket(
            agent.proxy_addr(),
            "demo.test",
            Duration::from_millis(500),
            stopped.clone(),
        )
        .await
        .expect("a websocket through the proxy");
        websockets.push(websocket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counted(&agent).await;
    assert!(before > 0);
    let mut pids = vec![proxy_pid(&agent).await];
    let mut inodes = vec![exe_inode(pids[0])];
    for _ in 0..5 {
        install_build(&installed);
        let ran = agent.cli(&["proxy", "upgrade"]).await;
        ran.assert_code(0);
        assert_contains(&ran, "took the listeners");
        let pid = proxy_pid(&agent).await;
        pids.push(pid);
        inodes.push(exe_inode(pid));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Past the route's drain time (2 s): every websocket of an old proxy has been closed by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send(true).expect("websockets listen");
    let mut ends: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for websocket in websockets {
        let end = websocket.await.expect("websocket task");
        *ends.entry(format!("{end:?}")).or_insert(0) += 1;
    }
    let report = load.stop().await;
    report.assert_no_failures();
    let broken: u64 = ends
        .iter()
        .filter(|(end, _)| end.starts_with("Broken"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        broken, 0,
        "every websocket kept or closed with a close frame: {ends:?}"
    );
    assert_eq!(ends.values().sum::<u64>(), 100, "{ends:?}");
    let mut distinct = pids.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        6,
        "every upgrade is a new process: {pids:?}"
    );
    assert!(
        inodes.windows(2).all(|pair| pair[0] != pair[1]),
        "every upgrade runs another build than the one before: {inodes:?}"
    );
    // The counters went on from where they were: no reset for the analysis to misread.
    let after = counted(&agent).await;
    assert!(
        after > before,
        "counted {before} before the upgrades and {after} after"
    );
    let events = agent.events().await;
    assert_eq!(of_kind(&events, "proxy.upgraded").len(), 5, "{events:#?}");
    assert_eq!(of_kind(&events, "proxy.exited").len(), 0, "{events:#?}");
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.0["proxy"]["restarts"], 0, "{status}");
    assert_eq!(status.0["proxy"]["state"], "serving", "{status}");
}

/// How an agent is stopped for its upgrade.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `kill -9`: no chance to do anything.
    Kill9,
    /// `systemctl restart` with `KillMode=process`: SIGTERM to the agent only.
    Sigterm,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_upgraded_by_kill_9_in_the_middle_of_a_deployment_resolves_it_without_a_failed_request()
 {
    agent_upgrade_in_the_middle_of_a_deployment(Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_upgraded_by_a_systemd_restart_in_the_middle_of_a_deployment_resolves_it_without_a_failed_request()
 {
    agent_upgrade_in_the_middle_of_a_deployment(Stop::Sigterm).await;
}

async fn agent_upgrade_in_the_middle_of_a_deployment(stop: Stop) {
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&setup.app("app", "v1").replicas(2), ENV)
        .await
        .assert_code(0);
    let new_binary = setup.dir.path().join("rollway-new");
    std::fs::copy(rollway_bin(), &new_binary).expect("copy the binary");
    let load = Load::new(setup.agent.proxy_addr())
        .concurrency(4)
        .duration(Duration::from_secs(120))
        .start();
    // v2 takes a while to become healthy: the agent is replaced while the deployment waits for it.
    let slow = setup
        .app("app", "v2")
        .replicas(2)
        .health_delay(Duration::from_secs(2));
    let token = setup.agent.admin_token().to_owned();
    let mut deploy = setup.agent.deploy_command(&slow, ENV, Some(&token));
    let deploy = tokio::spawn(async move { deploy.output().await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    if let Stop::Sigterm = stop {
        assert!(
            setup.agent.terminate(Duration::from_secs(30)).await,
            "the agent did not exit on SIGTERM"
        );
    }
    setup.agent.restart_with_binary(&new_binary).await;
    let _ = deploy.await;
    let status = setup
        .agent
        .wait_deployment_finished(APP, ENV, Duration::from_secs(60))
        .await;
    // The deployment in flight is not lost: the new agent finishes it or undoes it, as after any
    // kill -9 (before traffic moved, it is undone and says why), and what serves matches the record.
    match status.deployment_state() {
        Some("Succeeded") => {
            assert_eq!(status.current_release(), Some(2), "{status}");
            setup.agent.assert_serves("v2").await;
        }
        Some("Failed") => {
            assert_eq!(status.current_release(), Some(1), "{status}");
            assert!(
                status
                    .deployment_reason()
                    .is_some_and(|reason| reason.contains("the agent restarted")),
                "{status}"
            );
            setup.agent.assert_serves("v1").await;
            // Nothing is left behind that the next deploy trips over.
            setup.agent.deploy(&slow, ENV).await.assert_code(0);
            setup.agent.assert_serves("v2").await;
        }
        other => panic!("deployment ended as {other:?}: {status}"),
    }
    let report = load.stop().await;
    report.assert_no_failures();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_from_a_new_binary_upgrades_the_proxy_without_a_failed_request() {
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&setup.app("app", "v1").replicas(2), ENV)
        .await
        .assert_code(0);
    // Another file is another build as far as the agent can tell (a package upgrade replaces it).
    let new_binary = setup.dir.path().join("rollway-new");
    std::fs::copy(rollway_bin(), &new_binary).expect("copy the binary");
    let before = proxy_pid(&setup.agent).await;
    let load = Load::new(setup.agent.proxy_addr())
        .concurrency(4)
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    setup.agent.restart_with_binary(&new_binary).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    report.assert_no_failures();
    let agent = &setup.agent;
    assert_ne!(proxy_pid(agent).await, before);
    let events = agent.events().await;
    let upgraded = of_kind(&events, "proxy.upgraded");
    assert_eq!(upgraded.len(), 1, "{events:#?}");
    assert!(
        upgraded[0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("the agent's binary changed")),
        "{upgraded:#?}"
    );
    // The next agent restart from the same binary changes nothing.
    setup.agent.restart_with_binary(&new_binary).await;
    let events = setup.agent.events().await;
    assert_eq!(of_kind(&events, "proxy.upgraded").len(), 1, "{events:#?}");
}

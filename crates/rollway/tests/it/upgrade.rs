//! Upgrading Rollway's own processes costs no request (issue 16, part 1): a proxy hands its listening
//! sockets, routing and counters to a successor and drains; an agent restarted from a new binary
//! upgrades the proxy it finds running the old one.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_proxy_upgrades_under_load_fail_no_request_and_keep_the_counters() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1").replicas(2), ENV)
        .await
        .assert_code(0);
    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = counted(agent).await;
    assert!(before > 0);
    let mut pids = vec![proxy_pid(agent).await];
    for _ in 0..5 {
        let ran = agent.cli(&["proxy", "upgrade"]).await;
        ran.assert_code(0);
        assert_contains(&ran, "took the listeners");
        pids.push(proxy_pid(agent).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = load.stop().await;
    report.assert_no_failures();
    let mut distinct = pids.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        6,
        "every upgrade is a new process: {pids:?}"
    );
    // The counters went on from where they were: no reset for the analysis to misread.
    let after = counted(agent).await;
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

//! The first fault or mistake does not stop the agent (issue 11): the proxy is supervised and its
//! listening sockets outlive it, an agent whose proxy address is taken says so and exits, the watch
//! never takes out the last instances, and `status` tells the truth (instances, proxy, unknown
//! environments).
//!
//! Assertions are about counts, states and events, never about how long anything took.

use std::time::Duration;

use serde_json::Value;
use testkit::agent::{APP, TestAgent};
use testkit::load::{Load, Outcome};

use crate::agent::{Setup, assert_contains, rollway_bin};

const ENV: &str = "production";
const PATIENCE: Duration = Duration::from_secs(60);

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["kind"] == kind)
        .collect()
}

fn proxy_pid(agent: &TestAgent) -> i32 {
    let text =
        std::fs::read_to_string(agent.state_dir().join("proxy/proxy.pid")).expect("proxy.pid");
    text.trim().parse().expect("a pid in proxy.pid")
}

/// Polls `status` until `done` holds, bounded by `PATIENCE`.
async fn wait_status(agent: &TestAgent, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = agent.status(APP, ENV).await.0;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never got there: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// 1. A kill -9 of the proxy under load: restarted on the same sockets, no connection refused, only
// what was in flight (one connection per client at most) fails; an event and an alert say so.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_proxy_is_restarted_and_refuses_no_connection() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let receiver = setup.webhook(ENV, "ALERTS_URL").await;
    let app = setup
        .app("app", "v1")
        .replicas(2)
        .alerts_webhook("ALERTS_URL");
    agent.deploy(&app, ENV).await.assert_code(0);
    // The proxy leads its own session: apart from the agent's and the instances' (a Ctrl-C to
    // the agent's terminal, or a busy app's session, does not reach it).
    let session = |pid: i32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // pid (comm) state ppid pgrp session ...: fields after the comm's closing parenthesis.
        let after = stat.rsplit_once(')').expect("comm").1;
        after
            .split_whitespace()
            .nth(3)
            .expect("session")
            .parse()
            .expect("a session id")
    };
    let proxy = proxy_pid(agent);
    assert_eq!(session(proxy), proxy, "the proxy leads a session");
    let instances = agent.instance_pid_files();
    assert_eq!(instances.len(), 2, "{instances:?}");
    for pid in instances.values() {
        assert_ne!(session(i32::try_from(*pid).expect("pid")), proxy);
    }
    let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let own: i32 = own
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .nth(3)
        .expect("session")
        .parse()
        .expect("session id");
    assert_ne!(
        own, proxy,
        "the test's (and the agent's) session is not the proxy's"
    );
    // Where no cgroup weights it, the proxy runs raised (nice -5, and its session's autogroup);
    // the instances, once they serve, keep the agent's (this test's) priority: a new one starts
    // lowered (the deploy's own work) and is promoted after its health gate.
    let observe = |pid: u32| driver::priority::observe(pid).expect("the priority of a process");
    let own_nice = observe(std::process::id()).nice;
    for pid in instances.values() {
        assert_eq!(observe(*pid).nice, own_nice);
    }
    let weighted = std::fs::read_to_string(format!("/proc/{proxy}/cgroup"))
        .expect("cgroup")
        .lines()
        .any(|line| line.starts_with("0::") && line.ends_with("/proxy"));
    let proxy_priority = observe(u32::try_from(proxy).expect("pid"));
    if driver::priority::may_raise() && !weighted {
        assert_eq!(proxy_priority.nice, -5, "the proxy runs raised");
        if let Some(group) = proxy_priority.autogroup_nice {
            assert_eq!(group, -5, "the proxy's autogroup runs raised");
        }
    } else {
        assert!(proxy_priority.nice <= own_nice);
    }

    const CLIENTS: usize = 4;
    let load = Load::new(agent.proxy_addr())
        .concurrency(CLIENTS)
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = kill9_proxy(agent).await;

    let status = wait_status(agent, |status| {
        status["proxy"]["restarts"] == 1 && status["proxy"]["state"] == "serving"
    })
    .await;
    assert_ne!(status["proxy"]["pid"], killed, "{status:#}");
    assert_eq!(status["proxy"]["holds_listeners"], true, "{status:#}");
    assert_contains_value(&status["proxy"]["last_exit"], "killed by signal 9");
    // Serving again through the new proxy, then a little more load on it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;

    eprintln!("outcomes across the proxy kill: {:?}", report.outcomes);
    let refused = report
        .outcomes
        .get(&Outcome::ConnectError)
        .copied()
        .unwrap_or(0);
    assert_eq!(
        refused, 0,
        "connections were refused: {:?}",
        report.outcomes
    );
    assert!(
        report.failed <= CLIENTS as u64,
        "more failed than one in flight per client: {:?}",
        report.outcomes
    );
    assert!(report.ok > 0, "{:?}", report.outcomes);
    let after_kill = report
        .records
        .iter()
        .rev()
        .take(20)
        .filter(|record| record.outcome == Outcome::Status(200))
        .count();
    assert_eq!(after_kill, 20, "the last requests did not all succeed");

    let events = agent.events().await;
    let exited = of_kind(&events, "proxy.exited");
    assert_eq!(exited.len(), 1, "{events:#?}");
    assert_contains_value(&exited[0]["message"], &format!("pid {killed}"));
    assert_eq!(of_kind(&events, "proxy.restarted").len(), 1, "{events:#?}");

    let received = receiver.wait_for(2, PATIENCE).await;
    let texts: Vec<String> = received
        .iter()
        .map(|request| request.body.clone())
        .collect();
    assert!(
        texts.iter().any(|text| text.contains("the proxy (pid")),
        "no alert for the proxy's exit: {texts:#?}"
    );

    // The CLI shows it too.
    let ran = agent.cli(&["status", "--app", APP, "--env", ENV]).await;
    ran.assert_code(0);
    assert_contains(&ran, "proxy     serving on");
    assert_contains(&ran, "restarted once");
}

// 2. An agent whose proxy address is taken says so and exits non-zero, instead of running on
// without a proxy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_proxy_address_is_taken_exits_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let mut command = tokio::process::Command::new(rollway_bin());
    command
        .arg("agent")
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--api")
        .arg("127.0.0.1:0")
        .arg("--proxy")
        .arg(addr.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the agent exits")
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on `{addr}` for the apps")),
        "{stderr}"
    );
    assert!(stderr.contains("--proxy ADDR"), "{stderr}");
    // No proxy was left behind on the state directory.
    assert!(
        !dir.path().join("state/proxy/proxy.pid").exists() || {
            let text = std::fs::read_to_string(dir.path().join("state/proxy/proxy.pid"))
                .unwrap_or_default();
            text.trim().is_empty()
        }
    );
    drop(taken);
}

// 3. Status tells the truth: an unknown environment is an error, not `release none`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_an_unknown_environment_is_an_error_naming_the_known_ones() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let ran = agent
        .cli(&["status", "--app", APP, "--env", "staging"])
        .await;
    assert_ne!(ran.code, Some(0), "{ran}");
    assert_contains(&ran, "has no environment `staging`");
    assert_contains(&ran, "`production`");
    let ran = agent
        .cli(&["status", "--app", "nosuchapp", "--env", ENV])
        .await;
    assert_ne!(ran.code, Some(0), "{ran}");
    assert_contains(&ran, "no app `nosuchapp`");
}

#[track_caller]
fn assert_contains_value(value: &Value, needle: &str) {
    let text = value.as_str().unwrap_or_default();
    assert!(text.contains(needle), "expected `{needle}` in {value}");
}

/// `kill SIGNAL TARGET`; whether it reached a process.
async fn kill(signal: &str, target: &str) -> bool {
    tokio::process::Command::new("kill")
        .args([signal, "--", target])
        .status()
        .await
        .expect("run kill")
        .success()
}

async fn signal_group(pid: u32, signal: &str) {
    assert!(
        kill(signal, &format!("-{pid}")).await,
        "kill {signal} -{pid} failed"
    );
}

/// SIGKILLs the agent's proxy process; its pid.
async fn kill9_proxy(agent: &TestAgent) -> i32 {
    let pid = proxy_pid(agent);
    assert!(kill("-9", &pid.to_string()).await, "kill -9 {pid} failed");
    pid
}

// 4. Every replica failing /health: they stay in traffic (fail open), requests keep being answered,
// and one alert says so; when they pass again, the watch says they recovered.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_failing_health_stay_routed_and_alert() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let receiver = setup.webhook(ENV, "ALERTS_URL").await;
    let fail_file = setup.dir.path().join("health-fails");
    let app = setup
        .app("app", "v1")
        .replicas(2)
        .env("HEALTH_FAIL_FILE", fail_file.display().to_string())
        .alerts_webhook("ALERTS_URL");
    agent.deploy(&app, ENV).await.assert_code(0);
    let load = setup.load();

    std::fs::write(&fail_file, "").expect("make health fail");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while of_kind(&agent.events().await, "watch.all_unhealthy").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no fail-open event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more watch ticks: nobody is taken out meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = agent.status(APP, ENV).await;
    let states: Vec<String> = status.instances().into_values().collect();
    assert_eq!(states, ["serving", "serving"], "{status}");
    let events = agent.events().await;
    assert_eq!(
        of_kind(&events, "watch.all_unhealthy").len(),
        1,
        "{events:#?}"
    );
    assert_eq!(
        of_kind(&events, "instance.unhealthy").len(),
        0,
        "{events:#?}"
    );

    std::fs::remove_file(&fail_file).expect("health passes again");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while of_kind(&agent.events().await, "watch.recovered").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no recovery event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = load.stop().await;
    report.assert_no_failures();

    let received = receiver.wait_for(1, PATIENCE).await;
    assert!(
        received
            .iter()
            .any(|request| request.body.contains("fail open")),
        "no fail-open alert: {received:#?}"
    );
}

// 5. A new release frozen (SIGSTOP) while it is observed sends no errors to count; its failing
// health checks roll it back to the warm release that served before.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_release_is_rolled_back_while_observed() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1").replicas(2), ENV)
        .await
        .assert_code(0);
    let v2 = setup.app("app", "v2").replicas(2).observe("60s");
    let deploy = tokio::spawn(testkit::agent::run(agent.deploy_command(
        &v2,
        ENV,
        Some(agent.admin_token()),
    )));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while agent.status(APP, ENV).await.deployment_state() != Some("Observing") {
        assert!(tokio::time::Instant::now() < deadline, "never observing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frozen: Vec<u32> = agent
        .instance_pid_files()
        .into_iter()
        .filter(|(id, _)| id.contains("-r2-"))
        .map(|(_, pid)| pid)
        .collect();
    assert_eq!(frozen.len(), 2, "{frozen:?}");
    for pid in &frozen {
        signal_group(*pid, "-STOP").await;
    }
    let ran = tokio::time::timeout(PATIENCE * 2, deploy)
        .await
        .expect("the deploy ends")
        .expect("the deploy task");
    // Thawed if still there (the rollback stops them: SIGKILL after the drain works on them too).
    for pid in &frozen {
        kill("-CONT", &format!("-{pid}")).await;
    }
    ran.assert_code(1);
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    let reason = status.deployment_reason().unwrap_or_default();
    assert!(
        reason.contains("every instance of release 2") && reason.contains("release 1 is warm"),
        "{status}"
    );
    assert_eq!(status.weights(), vec![(1, 100)], "{status}");
    agent.assert_serves("v1").await;
}

// 6. A deploy whose instances never become healthy leaves no ghost: status lists only what runs,
// before and after an agent restart.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_no_starting_ghost() {
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let fail_file = setup.dir.path().join("never-healthy");
    std::fs::write(&fail_file, "").expect("write");
    let v2 = setup
        .app("app", "v2")
        .env("HEALTH_FAIL_FILE", fail_file.display().to_string())
        .start_timeout("2s");
    setup.agent.deploy(&v2, ENV).await.assert_code(1);
    let expected = [(format!("{APP}-{ENV}-r1-web-1"), "serving".to_owned())];
    let status = setup.agent.status(APP, ENV).await;
    assert_eq!(
        status.instances().into_iter().collect::<Vec<_>>(),
        expected,
        "{status}"
    );
    setup.agent.kill9().await;
    setup.agent.restart_with_env(&[]).await;
    let status = setup.agent.status(APP, ENV).await;
    assert_eq!(
        status.instances().into_iter().collect::<Vec<_>>(),
        expected,
        "{status}"
    );
    assert_eq!(status.0["proxy"]["state"], "serving", "{status}");
}

// 7. An observation window that ends without evidence says so in `status`, not only in the events.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_observation_is_shown_in_status() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    agent
        .deploy(&setup.app("app", "v2").observe("2s"), ENV)
        .await
        .assert_code(0);
    let status = agent.status(APP, ENV).await;
    assert_contains_value(&status.0["inconclusive"], "without enough evidence");
    let ran = agent.cli(&["status", "--app", APP, "--env", ENV]).await;
    assert_contains(&ran, "verdict   inconclusive:");
}

// 8. After an agent restart the proxy it adopts is supervised the same way: the new agent holds its
// listeners again (taken from the proxy), so killing the proxy refuses no connection.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_proxy_is_supervised_with_its_listeners_held() {
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&setup.app("app", "v1").replicas(2), ENV)
        .await
        .assert_code(0);
    setup.agent.kill9().await;
    setup.agent.restart_with_env(&[]).await;
    let agent = &setup.agent;
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.0["proxy"]["holds_listeners"], true, "{status}");
    let load = Load::new(agent.proxy_addr())
        .concurrency(2)
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill9_proxy(agent).await;
    wait_status(agent, |status| status["proxy"]["restarts"] == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.stop().await;
    assert_eq!(
        report.outcomes.get(&Outcome::ConnectError),
        None,
        "{:?}",
        report.outcomes
    );
    assert!(report.failed <= 2, "{:?}", report.outcomes);
}

// 8. The only instance of the serving release killed (kill -9 of its process group) under load: the
// driver restarts it, and the proxy holds the requests it could not send (the instance refuses
// connections, then answers again) instead of failing them: not one GET fails. One client, so that
// no other request's refused connections take the instance out of routing first: its request meets
// the dead instance on every attempt (before the hold, its request got a 502).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_instance_killed_under_load_fails_no_request() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let before = agent.instance_pid_files();
    assert_eq!(before.len(), 1, "{before:?}");
    let (id, pid) = before.into_iter().next().expect("one instance");
    let load = Load::new(agent.proxy_addr())
        .concurrency(1)
        .duration(PATIENCE)
        .start();
    // Some answers first, so the kill lands in the middle of the load.
    load.wait_for_more(50, PATIENCE, "the load before the kill")
        .await;
    signal_group(pid, "-KILL").await;
    // Restarted by the driver (a new process for the same instance), then answering through the
    // proxy again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = agent.instance_pid_files();
        if now.get(&id).is_some_and(|new_pid| *new_pid != pid) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{id}` was not restarted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.wait_for_more(50, PATIENCE, "answers after the restart")
        .await;
    let report = load.stop().await;
    report.assert_no_failures();
    agent.assert_serves("v1").await;
}

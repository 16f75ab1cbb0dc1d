//! Start, crash-restart, stop (graceful and forced), process groups and secrets of instances.

use std::time::Duration;

use driver::process::{ProcessDriver, ProcessDriverConfig};
use driver::{Driver, InstanceStatus};

use crate::support::{
    answers, demo_spec, eventually, files_below, get, process_alive, running_pid, shell_quote,
    spec, thread_nices,
};

#[tokio::test]
async fn start_serves_with_its_env_and_logs_then_stops() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let driver = ProcessDriver::new(state_dir.clone()).expect("driver");
    let spec = demo_spec(
        "demo-web-1",
        temporary.path(),
        &[("VERSION", "v1"), ("GREETING", "hello")],
    );

    driver.start(spec.clone()).await.expect("start");

    assert_eq!(answers(&spec).await, "v1\n");
    assert_eq!(
        get(spec.port, "/env/GREETING").await.as_deref(),
        Some("hello")
    );
    assert_eq!(
        get(spec.port, "/env/PORT").await,
        Some(spec.port.to_string())
    );
    let pid = running_pid(&driver, "demo-web-1");
    assert_eq!(
        driver.status("demo-web-1"),
        InstanceStatus::Running { pid, restarts: 0 }
    );
    assert_eq!(driver.running(), ["demo-web-1"]);
    let logs = driver.logs("demo-web-1", 10).expect("logs");
    assert!(
        logs.iter()
            .any(|log_line| log_line.line.contains(r#""event":"starting""#)),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .all(|log_line| log_line.instance_id == "demo-web-1")
    );
    assert!(matches!(
        driver.start(spec.clone()).await,
        Err(driver::DriverError::AlreadyRunning { pid: running, .. }) if running == pid
    ));

    driver.stop("demo-web-1").await.expect("stop");

    assert_eq!(
        driver.status("demo-web-1"),
        InstanceStatus::Stopped { last_exit: Some(0) }
    );
    assert!(!process_alive(pid));
    assert!(get(spec.port, "/").await.is_none());
    assert!(driver.running().is_empty());
    assert!(!state_dir.join("demo-web-1/pid").exists());
    let logs = driver.logs("demo-web-1", 1).expect("logs after stop");
    assert!(logs[0].line.contains(r#""event":"stopped""#), "{logs:?}");
}

#[tokio::test]
async fn a_crashed_instance_is_restarted_and_reaped() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    let spec = demo_spec("crashy-web-1", temporary.path(), &[("CRASH_AFTER_S", "1")]);
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    let first_pid = running_pid(&driver, "crashy-web-1");

    let (pid, restarts) = eventually("the instance is restarted", async || {
        match driver.status("crashy-web-1") {
            InstanceStatus::Running { pid, restarts } if restarts >= 1 => Some((pid, restarts)),
            _ => None,
        }
    })
    .await;

    assert_ne!(pid, first_pid);
    assert!(restarts >= 1);
    // The crashed process was waited for: no zombie is left behind.
    assert!(!process_alive(first_pid));
    assert!(!std::path::Path::new(&format!("/proc/{first_pid}")).exists());
    answers(&spec).await;
    let logs = driver.logs("crashy-web-1", 100).expect("logs");
    assert!(
        logs.iter()
            .any(|log_line| log_line.line.contains(r#""event":"crash""#)),
        "{logs:?}"
    );

    driver.stop("crashy-web-1").await.expect("stop");
    assert!(matches!(
        driver.status("crashy-web-1"),
        InstanceStatus::Stopped { .. }
    ));
}

#[tokio::test]
async fn an_instance_waiting_to_restart_shows_it_and_can_be_stopped() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let config = ProcessDriverConfig {
        // Long enough that the instance is still waiting when the test stops it.
        backoff_initial: Duration::from_secs(3600),
        ..ProcessDriverConfig::default()
    };
    let driver =
        ProcessDriver::with_config(temporary.path().join("state"), config).expect("driver");
    driver
        .start(spec(
            "failing-worker-1",
            temporary.path(),
            "exit 3".to_owned(),
            &[],
        ))
        .await
        .expect("start");

    eventually("the instance waits to restart", async || {
        (driver.status("failing-worker-1")
            == InstanceStatus::Restarting {
                restarts: 0,
                last_exit: Some(3),
            })
        .then_some(())
    })
    .await;
    assert!(driver.running().is_empty());

    driver.stop("failing-worker-1").await.expect("stop");
    assert_eq!(
        driver.status("failing-worker-1"),
        InstanceStatus::Stopped { last_exit: Some(3) }
    );
}

#[tokio::test]
async fn stop_kills_an_instance_that_ignores_sigterm_and_does_not_restart_it() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let driver = ProcessDriver::new(state_dir.clone()).expect("driver");
    let mut spec = demo_spec(
        "stubborn-web-1",
        temporary.path(),
        &[("IGNORE_SIGTERM_S", "600")],
    );
    spec.stop_timeout = Duration::from_secs(1);
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    let pid = running_pid(&driver, "stubborn-web-1");

    driver.stop("stubborn-web-1").await.expect("stop");

    assert!(!process_alive(pid));
    // 128 + SIGKILL: it was killed, not restarted, and did not exit on its own.
    assert_eq!(
        driver.status("stubborn-web-1"),
        InstanceStatus::Stopped {
            last_exit: Some(137)
        }
    );
    let logs = driver.logs("stubborn-web-1", 10).expect("logs");
    assert!(
        logs.iter()
            .any(|log_line| log_line.line.contains(r#""event":"sigterm""#)),
        "the instance was asked first: {logs:?}"
    );
    assert!(get(spec.port, "/").await.is_none());
    assert!(driver.running().is_empty());
    assert!(!state_dir.join("stubborn-web-1/pid").exists());
}

#[tokio::test]
async fn stop_ends_the_whole_process_group() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    // The shell stays the group leader; demo-app is its child in the same group.
    let command = format!("{} & wait", shell_quote(&testkit::demo::demo_app_path()));
    let mut spec = spec(
        "grouped-web-1",
        temporary.path(),
        command,
        &[("IGNORE_SIGTERM_S", "600")],
    );
    spec.stop_timeout = Duration::from_secs(1);
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    let shell_pid = running_pid(&driver, "grouped-web-1");
    let app_pid = app_pid(&driver, "grouped-web-1");
    assert_ne!(app_pid, shell_pid);
    assert!(process_alive(app_pid));

    driver.stop("grouped-web-1").await.expect("stop");

    assert!(!process_alive(shell_pid));
    // demo-app is the shell's child, so it may linger as a zombie until init reaps it.
    assert!(!process_alive(app_pid), "demo-app survived its group");
    assert!(get(spec.port, "/").await.is_none());
}

#[tokio::test]
async fn a_secret_reaches_the_env_but_no_file_and_no_argv() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let driver = ProcessDriver::new(state_dir.clone()).expect("driver");
    let secret = format!("canary-secret-{}-a9f3c1", std::process::id());
    let spec = demo_spec(
        "secretive-web-1",
        temporary.path(),
        &[("DATABASE_URL", secret.as_str())],
    );
    assert!(!format!("{spec:?}").contains(&secret));
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    assert_eq!(
        get(spec.port, "/env/DATABASE_URL").await.as_deref(),
        Some(secret.as_str())
    );
    let pid = running_pid(&driver, "secretive-web-1");

    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("read cmdline");
    assert!(!contains(&cmdline, secret.as_bytes()), "secret in argv");
    let files = files_below(&state_dir);
    assert!(!files.is_empty());
    for path in &files {
        let bytes = std::fs::read(path).expect("read state file");
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "secret in `{}`",
            path.display()
        );
    }

    driver.stop("secretive-web-1").await.expect("stop");
    for path in files_below(&state_dir) {
        let bytes = std::fs::read(&path).expect("read state file");
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "secret in `{}`",
            path.display()
        );
    }
}

#[tokio::test]
async fn only_a_few_agent_variables_reach_the_instance() {
    let passed_through = ["PATH", "HOME", "LANG", "TZ"];
    let Some((name, _)) = std::env::vars().find(|(name, _)| {
        !passed_through.contains(&name.as_str())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }) else {
        eprintln!("notice: skipped, the test process has no variable to leak");
        return;
    };
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    let spec = demo_spec("clean-web-1", temporary.path(), &[]);
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    assert_eq!(
        get(spec.port, &format!("/env/{name}")).await,
        None,
        "`{name}` leaked from the agent"
    );
    driver.stop("clean-web-1").await.expect("stop");
}

#[tokio::test]
async fn a_command_that_cannot_start_is_an_error_naming_it() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    let spec = demo_spec("nowhere-web-1", &temporary.path().join("missing"), &[]);
    let error = driver.start(spec).await.expect_err("missing workdir");
    let message = error.to_string();
    assert!(message.contains("nowhere-web-1"), "{message}");
    assert!(message.contains("missing"), "{message}");
    assert!(matches!(
        driver.status("nowhere-web-1"),
        InstanceStatus::Stopped { .. }
    ));
    assert!(driver.running().is_empty());
}

/// The pid demo-app printed in its `starting` event.
fn app_pid(driver: &ProcessDriver, instance_id: &str) -> u32 {
    let logs = driver.logs(instance_id, 100).expect("logs");
    logs.iter()
        .filter_map(|log_line| serde_json::from_str::<serde_json::Value>(&log_line.line).ok())
        .find(|event| event["event"] == "starting")
        .and_then(|event| event["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("no starting event in {logs:?}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn a_confined_instance_runs_as_its_user_with_a_private_home_and_restarts_so() {
    if !std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|line| line.starts_with("Uid:\t0\t")))
    {
        eprintln!("skipped: switching users needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let temporary = tempfile::tempdir().expect("temporary directory");
    // The app's user must reach its folders, like the agent's apps directory allows.
    std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod");
    let workdir = temporary.path().join("release");
    std::fs::create_dir_all(&workdir).expect("release folder");
    std::os::unix::fs::chown(&workdir, Some(61777), Some(61777)).expect("chown");
    let temp_dir = temporary.path().join("tmp-web-1");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    let mut spec = demo_spec("confined-web-1", &workdir, &[("VERSION", "v1")]);
    spec.confinement = driver::Isolation::Users.confinement(
        driver::AppUser {
            uid: 61777,
            gid: 61777,
        },
        temp_dir.clone(),
    );

    driver.start(spec.clone()).await.expect("start");
    assert_eq!(answers(&spec).await, "v1\n");
    let home = temp_dir.display().to_string();
    assert_eq!(get(spec.port, "/env/HOME").await, Some(home.clone()));
    assert_eq!(get(spec.port, "/env/TMPDIR").await, Some(home));
    let ids = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .filter(|line| line.starts_with("Uid:") || line.starts_with("Groups:"))
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    let first = running_pid(&driver, "confined-web-1");
    assert_eq!(ids(first), ["Uid: 61777 61777 61777 61777", "Groups:"]);

    // A crash restart is confined the same way.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    let second = eventually("the instance restarted", async || {
        match driver.status("confined-web-1") {
            InstanceStatus::Running { pid, restarts } if restarts >= 1 && pid != first => Some(pid),
            _ => None,
        }
    })
    .await;
    assert_eq!(ids(second), ["Uid: 61777 61777 61777 61777", "Groups:"]);
    driver.stop("confined-web-1").await.expect("stop");
}

/// The deploy's own work starts below the serving instances (`Confinement::nice`): a new instance
/// runs lowered, every thread of it, until the agent promotes it after its health gate; then it and
/// every restart of it run at the agent's priority.
#[tokio::test]
async fn an_instance_started_lowered_is_promoted_with_every_thread_and_restarts_promoted() {
    let own = driver::priority::own_nice();
    let Some(lowered) = driver::priority::deploy_nice() else {
        eprintln!("this test runs at the lowest priority already: nothing to lower");
        return;
    };
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    let mut spec = demo_spec("lowered-web-1", temporary.path(), &[("CRASH_AFTER_S", "3")]);
    spec.confinement.nice = Some(lowered);
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    let first_pid = running_pid(&driver, "lowered-web-1");
    let nices = thread_nices(first_pid);
    assert!(nices.len() > 1, "the demo app runs threads: {nices:?}");
    assert!(nices.iter().all(|nice| *nice == lowered), "{nices:?}");

    driver.promote("lowered-web-1");
    let nices = thread_nices(first_pid);
    if driver::priority::may_restore(own) {
        assert!(nices.iter().all(|nice| *nice == own), "{nices:?}");
    } else {
        // Without the right to raise, the promotion is refused and logged; the instance serves.
        assert!(nices.iter().all(|nice| *nice == lowered), "{nices:?}");
    }

    // It crashes after 3 s: the restart runs at the agent's priority from its start.
    let pid = eventually("the instance is restarted", async || {
        match driver.status("lowered-web-1") {
            InstanceStatus::Running { pid, restarts } if restarts >= 1 => Some(pid),
            _ => None,
        }
    })
    .await;
    assert_ne!(pid, first_pid);
    answers(&spec).await;
    let nices = thread_nices(pid);
    assert!(nices.iter().all(|nice| *nice == own), "{nices:?}");
    driver.stop("lowered-web-1").await.expect("stop");
}

/// Without a promotion (an instance whose gate is still running), a restart keeps the lower start
/// priority of its spec.
#[tokio::test]
async fn an_instance_not_promoted_restarts_lowered() {
    let Some(lowered) = driver::priority::deploy_nice() else {
        return;
    };
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    let mut spec = demo_spec("lowered-web-2", temporary.path(), &[("CRASH_AFTER_S", "1")]);
    spec.confinement.nice = Some(lowered);
    driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    let pid = eventually("the instance is restarted", async || {
        match driver.status("lowered-web-2") {
            InstanceStatus::Running { pid, restarts } if restarts >= 1 => Some(pid),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        driver::priority::observe(pid).expect("observe").nice,
        lowered
    );
    driver.stop("lowered-web-2").await.expect("stop");
}

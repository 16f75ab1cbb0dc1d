use std::process::{Child, Command, Stdio};

use super::*;
use crate::{AppUser, Confinement};

/// A cgroup subtree this test makes under the cgroup v2 mount and removes again (after killing
/// what it started in it), whatever the test's outcome.
struct Subtree {
    base: PathBuf,
    children: Vec<Child>,
    pids: Vec<u32>,
}

impl Drop for Subtree {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Some(pid) = i32::try_from(*pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed process leaves its cgroup once reaped; give the kernel a moment.
        for name in ["agent", PROXY_GROUP, APPS_GROUP, ""] {
            let dir = self.base.join(name);
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup v2 path of `pid`, from its `0::` line.
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("read /proc/PID/cgroup")
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        .expect("a 0:: line")
}

fn sleeper() -> Command {
    let mut command = Command::new("sleep");
    command.arg("30").stdin(Stdio::null());
    command
}

#[test]
fn split_fails_naming_the_file_when_the_parent_is_not_a_cgroup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = dir.path().join("agent");

    let error = Placement::split(&agent).expect_err("not a cgroup");

    let message = error.to_string();
    assert!(
        message.contains("cannot read") && message.contains("cgroup.controllers"),
        "{message}"
    );
    assert!(!dir.path().join(PROXY_GROUP).exists());
    assert!(!dir.path().join(APPS_GROUP).exists());
}

#[test]
fn a_group_that_is_gone_says_which_file_it_cannot_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let group = Group {
        dir: dir.path().join("gone"),
    };

    let error = group.joiner().expect_err("no such group");

    assert!(error.to_string().contains("gone/cgroup.procs"), "{error}");
}

#[test]
fn detect_outside_a_delegated_cgroup_places_nothing_and_says_why() {
    // This test process runs in no systemd unit with `Delegate=yes` (on a machine where it
    // does, the placement must be a split instead).
    let placement = Placement::detect();

    match &placement {
        Placement::Off { reason } => {
            let own = std::fs::read_to_string("/proc/self/cgroup").expect("read");
            if cgroup2_mount().is_some() && own.lines().any(|line| line == "0::/") {
                assert!(reason.contains("runs in the root cgroup"), "{reason}");
            }
            assert!(placement.describe().starts_with("off, "));
            assert_eq!(placement.proxy(), None);
            assert_eq!(placement.apps(), None);
        }
        Placement::Split { .. } => {
            let own = std::fs::read_to_string("/proc/self/cgroup").expect("read");
            panic!("split outside a delegated cgroup: {own}");
        }
    }
}

#[tokio::test]
async fn split_puts_the_proxy_and_app_processes_beside_the_agent_with_weights() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to make cgroups");
        return;
    }
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup v2 hierarchy is mounted");
        return;
    };
    let name = format!("rollway-test-{}", std::process::id());
    let base = mount.join(&name);
    std::fs::create_dir(&base).expect("make the test's cgroup");
    let mut subtree = Subtree {
        base: base.clone(),
        children: Vec::new(),
        pids: Vec::new(),
    };
    // Stands in for the agent that systemd placed in `<unit>/agent` (`DelegateSubgroup=agent`).
    std::fs::create_dir(base.join("agent")).expect("make agent/");
    let agent = sleeper().spawn().expect("spawn the stand-in agent");
    let agent_pid = agent.id();
    subtree.children.push(agent);
    std::fs::write(base.join("agent/cgroup.procs"), agent_pid.to_string()).expect("place it");

    let placement = Placement::split(&base.join("agent")).expect("split");
    // Twice, as a restarted agent does: the groups are reused.
    let again = Placement::split(&base.join("agent")).expect("split again");

    assert_eq!(placement, again);
    let (Some(proxy), Some(apps)) = (placement.proxy(), placement.apps()) else {
        panic!("expected a split, got {placement:?}");
    };
    assert_eq!(proxy.dir(), base.join(PROXY_GROUP));
    assert_eq!(apps.dir(), base.join(APPS_GROUP));

    // The proxy joins at exec, as proxy_link starts it (setsid first).
    let joiner = proxy.joiner().expect("open proxy/cgroup.procs");
    let mut command = sleeper();
    // SAFETY: as in proxy_link: setsid(2) and one write(2) to a descriptor opened before fork.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            rustix::process::setsid()
                .map(drop)
                .map_err(io::Error::from)?;
            joiner.join()
        });
    }
    let proxy_child = command.spawn().expect("spawn the proxy stand-in");
    let proxy_pid = proxy_child.id();
    subtree.children.push(proxy_child);

    // An app process, as its own user, forks a child at once: both are in `apps`.
    let confinement = Confinement {
        user: Some(AppUser {
            uid: 61998,
            gid: 61998,
        }),
        cgroup: Some(apps.clone()),
        ..Confinement::default()
    };
    let mut app = confinement
        .command("sleep 30 & echo $!; wait", Path::new("/"))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the app");
    let app_pid = app.id().expect("pid");
    subtree.pids.push(app_pid);
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt as _;
        let stdout = app.stdout.take().expect("stdout");
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("read the forked pid");
    }
    let forked: u32 = line.trim().parse().expect("a pid");
    subtree.pids.push(forked);

    // A running process moved by pid (a proxy adopted from an older agent).
    let late = sleeper().spawn().expect("spawn");
    let late_pid = late.id();
    subtree.children.push(late);
    proxy.add(late_pid).expect("move by pid");

    assert_eq!(cgroup_of(agent_pid), format!("/{name}/agent"));
    assert_eq!(cgroup_of(proxy_pid), format!("/{name}/{PROXY_GROUP}"));
    assert_eq!(cgroup_of(late_pid), format!("/{name}/{PROXY_GROUP}"));
    assert_eq!(cgroup_of(app_pid), format!("/{name}/{APPS_GROUP}"));
    assert_eq!(cgroup_of(forked), format!("/{name}/{APPS_GROUP}"));
    let controllers = std::fs::read_to_string(base.join("cgroup.controllers")).expect("read");
    let cpu_here = controllers.split_whitespace().any(|name| name == "cpu");
    let weight = |group: &str| std::fs::read_to_string(base.join(group).join("cpu.weight")).ok();
    if cpu_here {
        assert!(matches!(placement, Placement::Split { weighted: true, .. }));
        assert_eq!(weight(PROXY_GROUP).as_deref(), Some("1000\n"));
        assert_eq!(weight(APPS_GROUP).as_deref(), Some("100\n"));
        assert_eq!(weight("agent").as_deref(), Some("100\n"));
        assert!(placement.describe().contains("cpu.weight 1000"));
    } else {
        // A hybrid host (the cpu controller is bound to cgroup v1): placed, but unweighted,
        // and the log line says so.
        eprintln!("the cpu controller is not available in cgroup v2 here: weights not checked");
        assert!(matches!(
            placement,
            Placement::Split {
                weighted: false,
                ..
            }
        ));
        assert_eq!(weight(PROXY_GROUP), None);
        assert!(placement.describe().contains("without CPU weights"));
    }
    let _ = app.start_kill();
    let _ = app.wait().await;
    drop(subtree);
    assert!(!base.exists(), "the test's cgroup is removed");
}

use std::process::{Command, Stdio};

use super::*;

#[test]
fn the_autogroup_text_is_the_nice_value() {
    assert_eq!(PROXY_NICE_TEXT, PROXY_NICE.to_string().as_bytes());
}

#[test]
fn parses_the_nice_field_after_a_command_with_spaces_and_parentheses() {
    let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 15 -5 3 0 123 456 789";
    assert_eq!(parse_stat_nice(stat), Some(-5));
    assert_eq!(parse_stat_nice("4242 (x) S 1"), None);
}

#[test]
fn parses_the_autogroup_nice() {
    assert_eq!(parse_autogroup_nice("/autogroup-42 nice -5\n"), Some(-5));
    assert_eq!(parse_autogroup_nice("/autogroup-7 nice 0\n"), Some(0));
    assert_eq!(parse_autogroup_nice("garbage"), None);
}

#[test]
fn raised_is_judged_where_it_counts() {
    let observed = |nice, autogroup_nice, autogroups_on| Observed {
        nice,
        autogroup_nice,
        autogroups_on,
    };
    assert!(observed(-5, Some(-5), true).raised());
    // With autogroups on, a raised task in a group at nice 0 weighs only inside that group.
    assert!(!observed(-5, Some(0), true).raised());
    assert!(observed(-5, Some(0), false).raised());
    assert!(observed(-5, None, false).raised());
    assert!(!observed(0, None, false).raised());
}

/// A child that leads its own session and raises itself as the agent's proxy does, observed from
/// here. Without the right to raise (no `CAP_SYS_NICE`), it must run at this process's priority, and
/// its spawn must still succeed.
#[test]
fn a_child_raised_before_exec_runs_at_the_proxy_nice_in_its_own_autogroup() {
    let ours = observe(std::process::id()).expect("observe this process");
    let mut command = Command::new("sleep");
    command.arg("30").stdin(Stdio::null());
    // SAFETY: setsid(2) and `raise_proxy` (setpriority(2), open(2), write(2), close(2) on constants)
    // are async-signal-safe; nothing allocates or locks.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            rustix::process::setsid()
                .map(drop)
                .map_err(std::io::Error::from)?;
            raise_proxy();
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn sleep");
    let observed = observe(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let observed = observed.expect("observe the child");
    let may_raise = may_raise();
    if may_raise {
        assert_eq!(observed.nice, PROXY_NICE, "{observed:?}");
        if ours.autogroup_nice.is_some() {
            assert_eq!(observed.autogroup_nice, Some(PROXY_NICE), "{observed:?}");
        }
        assert!(observed.raised(), "{observed:?}");
    } else {
        assert_eq!(observed.nice, ours.nice, "{observed:?}");
    }
    // The agent's own priority is never touched.
    assert_eq!(observe(std::process::id()).expect("observe again"), ours);
}

/// The agent's unpacking runs lowered on its thread and leaves the thread as it found it: a pool
/// thread must not run later work lowered. Where the restoring would be refused, nothing is lowered.
#[test]
fn a_lowered_thread_is_restored_when_the_guard_drops() {
    std::thread::spawn(|| {
        let own = own_nice();
        let expected = deploy_nice();
        {
            let guard = LoweredThread::new();
            match expected {
                Some(lowered) if may_restore(own) => {
                    assert!(guard.lowered());
                    assert_eq!(own_nice(), lowered);
                }
                _ => {
                    assert!(!guard.lowered());
                    assert_eq!(own_nice(), own);
                }
            }
        }
        assert_eq!(own_nice(), own);
    })
    .join()
    .expect("the thread");
}

#[test]
fn the_deploy_nice_is_below_the_agent_within_range() {
    let own = own_nice();
    match deploy_nice() {
        Some(nice) => {
            assert!(nice > own && nice <= NICE_MAX);
            assert_eq!(nice, (own + DEPLOY_LOWER).min(NICE_MAX));
        }
        None => assert_eq!(own, NICE_MAX),
    }
}

/// A child started with `Confinement::nice` (a build command) runs at that value; this process
/// does not change.
#[tokio::test]
async fn a_command_with_a_start_nice_runs_lowered() {
    let own = observe(std::process::id()).expect("observe this process");
    let Some(lowered) = deploy_nice() else {
        return;
    };
    let confinement = crate::Confinement {
        nice: Some(lowered),
        ..crate::Confinement::default()
    };
    let output = confinement
        .command("cat /proc/self/stat", std::path::Path::new("/"))
        .output()
        .await
        .expect("run the command");
    let stat = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(parse_stat_nice(&stat), Some(lowered), "{stat}");
    assert_eq!(observe(std::process::id()).expect("observe again"), own);
}

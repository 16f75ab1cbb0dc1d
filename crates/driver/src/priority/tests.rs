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

//! Instances outlive the agent: a new driver on the same state dir adopts and supervises them.

use driver::process::ProcessDriver;
use driver::{Driver, InstanceStatus};

use crate::support::{answers, demo_spec, eventually, process_alive, running_pid, thread_nices};

/// Simulates an agent killed with kill -9: driver A and every task of its runtime vanish
/// without stopping anything; driver B, on the same state dir, adopts the instance.
#[test]
fn a_new_driver_adopts_a_running_instance_and_restarts_it_when_it_dies() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let spec = demo_spec("adopted-web-1", temporary.path(), &[("VERSION", "v7")]);

    let runtime_a = runtime();
    let driver_a = ProcessDriver::new(state_dir.clone()).expect("driver A");
    let pid = runtime_a.block_on(async {
        driver_a.start(spec.clone()).await.expect("start");
        answers(&spec).await;
        running_pid(&driver_a, "adopted-web-1")
    });
    drop(driver_a);
    drop(runtime_a);
    assert!(process_alive(pid), "the instance died with its driver");

    let runtime_b = runtime();
    runtime_b.block_on(async {
        let driver_b = ProcessDriver::new(state_dir.clone()).expect("driver B");
        assert_eq!(driver_b.running(), ["adopted-web-1"]);
        assert_eq!(driver_b.status("adopted-web-1"), InstanceStatus::Unknown);

        assert!(driver_b.adopt(spec.clone()).await.expect("adopt"));

        assert_eq!(
            driver_b.status("adopted-web-1"),
            InstanceStatus::Running { pid, restarts: 0 }
        );
        assert_eq!(answers(&spec).await, "v7\n");
        assert!(driver_b.adopt(spec.clone()).await.expect("adopt again"));

        let raw_pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"))
            .expect("positive pid");
        rustix::process::kill_process(raw_pid, rustix::process::Signal::KILL).expect("kill -9");

        let new_pid = eventually("the adopted instance is restarted", async || match driver_b
            .status("adopted-web-1")
        {
            InstanceStatus::Running {
                pid: new_pid,
                restarts,
            } if new_pid != pid => {
                assert!(restarts >= 1);
                Some(new_pid)
            }
            _ => None,
        })
        .await;
        assert_eq!(answers(&spec).await, "v7\n");
        assert_eq!(driver_b.running(), ["adopted-web-1"]);

        driver_b.stop("adopted-web-1").await.expect("stop");
        assert!(!process_alive(new_pid));
        assert!(driver_b.running().is_empty());
        assert!(
            !driver_b
                .adopt(spec.clone())
                .await
                .expect("adopt a stopped instance")
        );
    });
}

/// An instance left by an earlier agent can be stopped without being adopted (orphan cleanup).
#[test]
fn an_orphan_is_stopped_without_adoption() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let spec = demo_spec("orphan-web-1", temporary.path(), &[]);

    let runtime_a = runtime();
    let driver_a = ProcessDriver::new(state_dir.clone()).expect("driver A");
    let pid = runtime_a.block_on(async {
        driver_a.start(spec.clone()).await.expect("start");
        answers(&spec).await;
        running_pid(&driver_a, "orphan-web-1")
    });
    drop(driver_a);
    drop(runtime_a);

    runtime().block_on(async {
        let driver_b = ProcessDriver::new(state_dir.clone()).expect("driver B");
        assert_eq!(driver_b.running(), ["orphan-web-1"]);
        assert!(matches!(
            driver_b.start(spec.clone()).await,
            Err(driver::DriverError::AlreadyRunning { pid: running, .. }) if running == pid
        ));
        driver_b.stop("orphan-web-1").await.expect("stop orphan");
        eventually("the orphan is gone", async || {
            (!process_alive(pid)).then_some(())
        })
        .await;
        assert!(driver_b.running().is_empty());
        assert!(!state_dir.join("orphan-web-1/pid").exists());
    });
}

/// An agent killed between a new instance's start (lowered, the deploy's own work:
/// `driver::priority`) and its health gate never promoted it: the next agent adopts it to serve at
/// its own priority, every thread, instead of leaving it lowered until its next restart.
#[test]
fn an_instance_left_lowered_by_a_killed_agent_is_promoted_on_adoption() {
    let own = driver::priority::own_nice();
    let Some(lowered) = driver::priority::deploy_nice() else {
        eprintln!("this test runs at the lowest priority already: nothing to lower");
        return;
    };
    if !driver::priority::may_restore(own) {
        eprintln!("this test may not raise a priority back: nothing to promote");
        return;
    }
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let spec = demo_spec("left-lowered-web-1", temporary.path(), &[]);
    let mut lowered_spec = spec.clone();
    lowered_spec.confinement.nice = Some(lowered);

    let runtime_a = runtime();
    let driver_a = ProcessDriver::new(state_dir.clone()).expect("driver A");
    let pid = runtime_a.block_on(async {
        driver_a.start(lowered_spec).await.expect("start");
        answers(&spec).await;
        running_pid(&driver_a, "left-lowered-web-1")
    });
    let nices = thread_nices(pid);
    assert!(nices.len() > 1, "the demo app runs threads: {nices:?}");
    assert!(nices.iter().all(|nice| *nice == lowered), "{nices:?}");
    drop(driver_a);
    drop(runtime_a);

    runtime().block_on(async {
        let driver_b = ProcessDriver::new(state_dir.clone()).expect("driver B");
        assert!(driver_b.adopt(spec.clone()).await.expect("adopt"));
        let nices = thread_nices(pid);
        assert!(nices.iter().all(|nice| *nice == own), "{nices:?}");
        driver_b.stop("left-lowered-web-1").await.expect("stop");
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

//! Output capture: rotation bounds, following with a cursor.

use std::time::Duration;

use driver::process::{ProcessDriver, ProcessDriverConfig};
use driver::{Driver, LogLine};

use crate::support::{eventually, file_names, spec};

#[tokio::test]
async fn rotation_keeps_two_bounded_files() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let state_dir = temporary.path().join("state");
    let limit = 4096;
    let config = ProcessDriverConfig {
        log_limit_bytes: limit,
        log_check_interval: Duration::from_millis(20),
        ..ProcessDriverConfig::default()
    };
    let driver = ProcessDriver::with_config(state_dir.clone(), config).expect("driver");
    // About 20 KiB at once, then (once rotation has caught up) one last line.
    let command =
        "i=0; while [ $i -lt 400 ]; do echo \"line $i: some padding to make it longer\"; \
                   i=$((i+1)); done; sleep 1; echo done-marker; exec sleep 600"
            .to_owned();
    driver
        .start(spec("chatty-worker-1", temporary.path(), command, &[]))
        .await
        .expect("start");
    let instance_dir = state_dir.join("chatty-worker-1");
    let size = |name: &str| {
        std::fs::metadata(instance_dir.join(name))
            .expect("log file")
            .len()
    };

    // The last line, once a rotation has run after the burst: the `sleep 1` gives it the time on
    // a quiet machine, but a loaded one can stall the 20 ms checks past it, and the last line
    // then lands in a live file still over the limit until the next check.
    let lines = eventually(
        "the last line is logged and rotation caught up",
        async || {
            let lines = driver.logs("chatty-worker-1", 3).ok()?;
            let caught_up =
                instance_dir.join("output.log.1").exists() && size("output.log") <= limit;
            (lines.last()?.line == "done-marker" && caught_up).then_some(lines)
        },
    )
    .await;

    assert_eq!(
        file_names(&instance_dir),
        ["output.log", "output.log.1", "pid"]
    );
    assert!(size("output.log.1") <= limit, "{}", size("output.log.1"));
    assert!(size("output.log") <= limit, "{}", size("output.log"));
    // The tail spans both files when the live one holds fewer lines than asked for.
    assert_eq!(lines.len(), 3);
    assert!(
        lines[..2]
            .iter()
            .all(|log_line| log_line.line.starts_with("line ")),
        "{lines:?}"
    );

    driver.stop("chatty-worker-1").await.expect("stop");
    assert_eq!(file_names(&instance_dir), ["output.log", "output.log.1"]);
}

#[tokio::test]
async fn a_cursor_follows_new_lines() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let driver = ProcessDriver::new(temporary.path().join("state")).expect("driver");
    // Prints `first`, then `second` only once the test creates the file `go` in the workdir.
    let command = "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second; exec sleep 600"
        .to_owned();
    driver
        .start(spec("follow-worker-1", temporary.path(), command, &[]))
        .await
        .expect("start");
    eventually("the first line is logged", async || {
        let lines = driver.logs("follow-worker-1", 1).ok()?;
        (lines.first()?.line == "first").then_some(())
    })
    .await;

    let (lines, cursor) = driver
        .logs_after("follow-worker-1", None)
        .expect("cursor at the end");
    assert!(lines.is_empty());
    std::fs::write(temporary.path().join("go"), "").expect("create go");

    let lines = eventually("the second line is followed", async || {
        let (lines, _) = driver.logs_after("follow-worker-1", Some(cursor)).ok()?;
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(
        lines,
        [LogLine {
            instance_id: "follow-worker-1".into(),
            line: "second".into()
        }]
    );

    driver.stop("follow-worker-1").await.expect("stop");
}

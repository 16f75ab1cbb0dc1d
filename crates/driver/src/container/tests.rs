//! Unit tests of the container driver's pure parts: env file text, create bodies, states,
//! timestamps, references (the engine itself is covered in `tests/it/container.rs`).

use std::path::Path;
use std::time::Duration;

use bollard::models::{
    ContainerInspectResponse, ContainerState, ContainerStateStatusEnum, ImageConfig,
    RestartPolicyNameEnum,
};

use super::create::{container_name, entrypoint_and_cmd, instance_body, run_once_body};
use super::env_file::{self, Reader};
use super::image::split_reference;
use super::logs::{LineJoiner, parse_rfc3339_nanos, parse_timed};
use super::monitor::status_of;
use super::timeout_seconds;
use crate::{InstanceSpec, InstanceStatus};

fn spec(env: &[(&str, &str)]) -> InstanceSpec {
    InstanceSpec {
        instance_id: "shop-production-r3-web-1".into(),
        workdir: "/nowhere".into(),
        command: String::new(),
        env: env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect(),
        port: 4321,
        stop_timeout: Duration::from_secs(5),
        image: Some("sha256:abc".into()),
        confinement: crate::Confinement::default(),
        cluster: None,
    }
}

#[test]
fn env_file_quotes_every_value_and_leaves_port_to_the_engine() {
    let env = [
        ("PLAIN", "value"),
        ("QUOTE", "it's"),
        ("SHELL", "$HOME `id` \\n"),
        ("LINES", "one\ntwo"),
        ("PORT", "1"),
    ];
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    assert_eq!(
        env_file::render(&env),
        "export PLAIN='value'\n\
         export QUOTE='it'\\''s'\n\
         export SHELL='$HOME `id` \\n'\n\
         export LINES='one\ntwo'\n"
    );
}

#[test]
fn env_file_round_trips_through_a_real_shell() {
    let temporary = tempfile::tempdir().expect("temporary directory");
    let path = temporary.path().join("env");
    let value = "a'b\"c$d`e\\f\ng h";
    env_file::write(
        &path,
        &[("TRICKY".to_owned(), value.to_owned())],
        Reader::Root,
    )
    .expect("write env file");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path)
            .expect("stat env file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#". "$0" && printf '%s' "$TRICKY""#)
        .arg(&path)
        .env_clear()
        .output()
        .expect("run /bin/sh");
    assert_eq!(String::from_utf8_lossy(&output.stdout), value);
}

#[test]
fn env_names_must_be_shell_identifiers() {
    let env: Vec<(String, String)> = ["GOOD_1", "_ok", "1BAD", "BAD-NAME", "", "É"]
        .iter()
        .map(|name| ((*name).to_owned(), String::new()))
        .collect();
    assert_eq!(env_file::invalid_names(&env), ["1BAD", "BAD-NAME", "", "É"]);
}

#[test]
fn readers_of_image_users() {
    for (user, reader) in [
        (None, Reader::Root),
        (Some(""), Reader::Root),
        (Some("root"), Reader::Root),
        (Some("0:0"), Reader::Root),
        (Some("1000"), Reader::Uid(1000)),
        (Some("1000:1000"), Reader::Uid(1000)),
        (Some("app"), Reader::Named),
        (Some("app:staff"), Reader::Named),
    ] {
        assert_eq!(Reader::of_image_user(user), reader, "{user:?}");
    }
}

#[test]
fn the_engine_sees_port_only_and_the_port_is_published_on_loopback() {
    let mut spec = spec(&[
        ("DATABASE_URL", "postgres://secret"),
        ("ROLLWAY_APP", "shop"),
        ("ROLLWAY_RELEASE", "3"),
    ]);
    spec.command = "exec app".into();
    let body = instance_body(
        &spec,
        "sha256:abc",
        None,
        "rollway",
        Some("apps"),
        Path::new("/dev/shm/x/rollway-shop.env"),
    )
    .unwrap_or_else(|reason| panic!("{reason}"));
    assert_eq!(body.env, Some(vec!["PORT=4321".to_owned()]));
    assert!(!format!("{body:?}").contains("secret"));
    let labels = body.labels.expect("labels");
    assert_eq!(labels["dev.rollway.instance"], "shop-production-r3-web-1");
    assert_eq!(labels["dev.rollway.app"], "shop");
    assert_eq!(labels["dev.rollway.release"], "3");
    assert!(!labels.contains_key("dev.rollway.environment"));
    let host_config = body.host_config.expect("host config");
    let bindings = host_config.port_bindings.expect("port bindings");
    let binding = &bindings["4321/tcp"].as_ref().expect("binding")[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(binding.host_port.as_deref(), Some("4321"));
    assert_eq!(
        host_config.restart_policy.and_then(|policy| policy.name),
        Some(RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    assert_eq!(host_config.network_mode.as_deref(), Some("apps"));
    let mount = &host_config.mounts.expect("mounts")[0];
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(mount.target.as_deref(), Some("/run/rollway/env"));
    assert_eq!(
        container_name(&spec.instance_id),
        "rollway-shop-production-r3-web-1"
    );
}

#[test]
fn one_off_containers_carry_app_environment_and_release_labels_but_no_secret() {
    let env = [
        ("DATABASE_URL", "postgres://secret"),
        ("ROLLWAY_APP", "shop"),
        ("ROLLWAY_ENVIRONMENT", "production"),
        ("ROLLWAY_RELEASE", "3"),
    ]
    .map(|(name, value)| (name.to_owned(), value.to_owned()));
    let body = run_once_body(
        "sha256:abc",
        "migrate",
        &crate::Confinement::default(),
        &env,
        None,
        "rollway",
        None,
        Path::new("/dev/shm/x/rollway-run-1.env"),
    )
    .unwrap_or_else(|reason| panic!("{reason}"));
    assert_eq!(body.env, Some(Vec::new()));
    assert!(!format!("{body:?}").contains("secret"));
    let labels = body.labels.expect("labels");
    assert_eq!(labels["dev.rollway.run-once"], "true");
    assert_eq!(labels["dev.rollway.app"], "shop");
    assert_eq!(labels["dev.rollway.environment"], "production");
    assert_eq!(labels["dev.rollway.release"], "3");
    assert!(!labels.contains_key("dev.rollway.instance"));
    assert!(
        body.host_config
            .expect("host config")
            .restart_policy
            .is_none()
    );
}

#[test]
fn the_command_replaces_the_image_command_or_defaults_to_it() {
    let image = ImageConfig {
        entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
        cmd: Some(vec!["serve".into(), "--fast".into()]),
        ..ImageConfig::default()
    };
    let (entrypoint, cmd) = entrypoint_and_cmd("", Some(&image)).expect("image command");
    assert_eq!(entrypoint[..2], ["/bin/sh", "-c"]);
    assert_eq!(cmd, ["/docker-entrypoint.sh", "serve", "--fast"]);
    let (_, cmd) = entrypoint_and_cmd("exec app --port $PORT", Some(&image)).expect("command");
    assert_eq!(cmd, ["/bin/sh", "-c", "exec app --port $PORT"]);
    assert!(entrypoint_and_cmd(" ", Some(&ImageConfig::default())).is_err());
}

#[test]
fn container_states_map_to_instance_states() {
    let inspected =
        |status, running, restarting, pid, exit_code, restart_count| ContainerInspectResponse {
            restart_count: Some(restart_count),
            state: Some(ContainerState {
                status: Some(status),
                running: Some(running),
                restarting: Some(restarting),
                pid: Some(pid),
                exit_code: Some(exit_code),
                ..ContainerState::default()
            }),
            ..ContainerInspectResponse::default()
        };
    use ContainerStateStatusEnum::{EXITED, RESTARTING, RUNNING};
    assert_eq!(
        status_of(&inspected(RUNNING, true, false, 42, 0, 0)),
        InstanceStatus::Running {
            pid: 42,
            restarts: 0
        }
    );
    assert_eq!(
        status_of(&inspected(RUNNING, true, false, 43, 1, 2)),
        InstanceStatus::Running {
            pid: 43,
            restarts: 2
        }
    );
    assert_eq!(
        status_of(&inspected(RESTARTING, true, true, 0, 1, 1)),
        InstanceStatus::Restarting {
            restarts: 1,
            last_exit: Some(1)
        }
    );
    assert_eq!(
        status_of(&inspected(EXITED, false, false, 0, 137, 0)),
        InstanceStatus::Stopped {
            last_exit: Some(137)
        }
    );
}

#[test]
fn engine_timestamps_parse_to_nanoseconds() {
    assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339_nanos("2000-03-01T00:00:01.5Z"),
        Some(951_868_801_500_000_000)
    );
    assert_eq!(
        parse_rfc3339_nanos("2026-11-23T04:10:32.123456789Z"),
        Some(1_795_407_032_123_456_789)
    );
    assert_eq!(parse_rfc3339_nanos("2026-11-23 04:10:32Z"), None);
    assert_eq!(parse_rfc3339_nanos("not a time"), None);
    let line = parse_timed("2026-11-23T04:10:32.000000001Z hello world");
    assert_eq!(line.line, "hello world");
    assert_eq!(line.nanos, 1_795_407_032_000_000_001);
    assert_eq!(parse_timed("no stamp here").line, "no stamp here");
}

#[test]
fn references_split_into_repository_and_tag() {
    assert_eq!(split_reference("app"), ("app", "latest"));
    assert_eq!(split_reference("app:v1"), ("app", "v1"));
    assert_eq!(
        split_reference("registry:5000/team/app"),
        ("registry:5000/team/app", "latest")
    );
    assert_eq!(
        split_reference("registry:5000/team/app:v2"),
        ("registry:5000/team/app", "v2")
    );
    assert_eq!(split_reference("app@sha256:ab"), ("app", "sha256:ab"));
}

#[test]
fn stop_timeouts_round_up_to_whole_seconds() {
    assert_eq!(timeout_seconds(Duration::ZERO), 1);
    assert_eq!(timeout_seconds(Duration::from_millis(1500)), 2);
    assert_eq!(timeout_seconds(Duration::from_secs(30)), 30);
}

#[test]
fn a_container_runs_as_the_app_user_unless_its_image_names_a_non_root_user() {
    use super::create::run_as;
    let app = Some(crate::AppUser {
        uid: 61300,
        gid: 61300,
    });
    let of = |user| crate::Confinement {
        user,
        ..crate::Confinement::default()
    };
    assert_eq!(run_as(&of(app), None).as_deref(), Some("61300:61300"));
    assert_eq!(
        run_as(&of(app), Some("root")).as_deref(),
        Some("61300:61300")
    );
    assert_eq!(
        run_as(&of(app), Some("0:0")).as_deref(),
        Some("61300:61300")
    );
    assert_eq!(run_as(&of(app), Some("1000")).as_deref(), Some("1000"));
    assert_eq!(run_as(&of(app), Some("app")).as_deref(), Some("app"));
    assert_eq!(run_as(&of(None), None), None);
    let manifest_says = crate::Confinement {
        container_user: Some("0".to_owned()),
        ..of(app)
    };
    assert_eq!(
        run_as(&manifest_says, None).as_deref(),
        Some("0"),
        "the manifest wins"
    );
    let mut with_user = spec(&[]);
    with_user.command = "exec app".into();
    with_user.confinement.user = app;
    let body = instance_body(
        &with_user,
        "sha256:abc",
        None,
        "rollway",
        None,
        Path::new("/dev/shm/x/rollway-a.env"),
    )
    .unwrap_or_else(|reason| panic!("{reason}"));
    assert_eq!(body.user.as_deref(), Some("61300:61300"));
    let mounts = body
        .host_config
        .and_then(|host| host.mounts)
        .unwrap_or_default();
    assert!(
        mounts
            .iter()
            .all(|mount| !mount.source.as_deref().unwrap_or("").contains(".sock")),
        "no engine socket is mounted: {mounts:?}"
    );
}

fn out(text: &str) -> bollard::container::LogOutput {
    bollard::container::LogOutput::StdOut {
        message: bytes::Bytes::copy_from_slice(text.as_bytes()),
    }
}

fn err(text: &str) -> bollard::container::LogOutput {
    bollard::container::LogOutput::StdErr {
        message: bytes::Bytes::copy_from_slice(text.as_bytes()),
    }
}

#[test]
fn a_line_split_over_frames_is_joined_per_stream_before_it_is_handed_out() {
    // The engine splits a line over 16 KiB into frames: the secret straddling them comes out whole.
    let mut joiner = LineJoiner::new(false);
    let long = "x".repeat(16_380);
    assert_eq!(
        joiner.push(&out(&format!("{long}cana"))),
        Vec::<String>::new()
    );
    assert_eq!(joiner.push(&err("stderr line\n")), ["stderr line"]);
    assert_eq!(
        joiner.push(&out("ry-secret tail\r\nnext\nunfinished")),
        [format!("{long}canary-secret tail"), "next".to_owned()]
    );
    assert_eq!(joiner.finish(), ["unfinished"]);
    assert_eq!(joiner.finish(), Vec::<String>::new());
    // An empty line stays a line.
    assert_eq!(joiner.push(&out("\n")), [""]);
}

#[test]
fn a_continuation_frame_loses_its_timestamp_and_the_line_keeps_the_first() {
    let mut joiner = LineJoiner::new(true);
    assert_eq!(
        joiner.push(&out("2026-11-23T04:10:32.000000001Z first half ")),
        Vec::<String>::new()
    );
    let lines = joiner.push(&out("2026-11-23T04:10:32.000000002Z second half\n"));
    assert_eq!(lines.len(), 1);
    let line = parse_timed(&lines[0]);
    assert_eq!(line.line, "first half second half");
    assert_eq!(
        line.nanos,
        parse_rfc3339_nanos("2026-11-23T04:10:32.000000001Z").expect("stamp")
    );
}

#[test]
fn an_endless_line_is_handed_out_in_bounded_pieces() {
    let mut joiner = LineJoiner::new(false);
    let chunk = "y".repeat(64 * 1024);
    let mut lines = Vec::new();
    for _ in 0..20 {
        lines.extend(joiner.push(&out(&chunk)));
    }
    lines.extend(joiner.finish());
    assert!(
        lines
            .iter()
            .all(|line| line.len() <= 1024 * 1024 + 64 * 1024)
    );
    assert_eq!(lines.iter().map(String::len).sum::<usize>(), 20 * 64 * 1024);
}

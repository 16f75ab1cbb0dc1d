//! What a person sees of a whole `rollway deploy` against a real agent: insta transcripts of a
//! deploy that goes through (with a build command, a release command and a smoke command) and of
//! one whose release command fails. Timings, ports, digests, sizes and ids are redacted; the rest
//! is exactly what the CLI printed, rendered from the agent's typed events.

use testkit::agent::{Ran, TestApp};

use crate::agent::Setup;

const ENV: &str = "production";

fn transcript(ran: &Ran) -> String {
    format!(
        "exit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        ran.code
            .map_or_else(|| "signal".to_owned(), |code| code.to_string()),
        ran.stdout,
        ran.stderr
    )
}

/// The volatile parts of a deploy's output.
fn redacted(run: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    for (pattern, replacement) in [
        (r"\(\d+\.\d+s\)", "([time])"),
        (r"in \d+\.\d+s", "in [time]"),
        (r"sha256:[0-9a-f]{12}", "sha256:[digest]"),
        (r"\d+ files, \d+(\.\d+)? (B|KiB|MiB)", "[n] files, [size]"),
        (r"deployment [0-9A-Za-z_-]{6,}\)", "deployment [id])"),
        (r"port \d+", "port [port]"),
        (r"http://[^\s]+", "[url]"),
        (r"\d+(\.\d+)? (B|KiB|MiB)\b", "[size]"),
    ] {
        settings.add_filter(pattern, replacement);
    }
    settings.bind(run);
}

fn app(setup: &Setup, version: &str) -> TestApp {
    setup
        .app("app", version)
        .build("echo building")
        .smoke("echo smoke test passed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_deploy_as_the_user_sees_it() {
    let setup = Setup::start().await;
    let first = setup.agent.deploy(&app(&setup, "v1"), ENV).await;
    first.assert_code(0);
    let second = setup
        .agent
        .deploy(&app(&setup, "v2").release("echo migrating", None), ENV)
        .await;
    second.assert_code(0);
    redacted(|| {
        insta::assert_snapshot!("first_deploy", transcript(&first));
        insta::assert_snapshot!("second_deploy", transcript(&second));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_deploy_as_the_user_sees_it() {
    let setup = Setup::start().await;
    setup
        .agent
        .deploy(&app(&setup, "v1"), ENV)
        .await
        .assert_code(0);
    let failed = setup
        .agent
        .deploy(
            &app(&setup, "v2").release("echo the migration breaks; exit 3", None),
            ENV,
        )
        .await;
    failed.assert_code(1);
    redacted(|| insta::assert_snapshot!("failing_deploy", transcript(&failed)));
}

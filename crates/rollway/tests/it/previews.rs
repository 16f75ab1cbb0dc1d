//! End-to-end tests of preview environments (issue 19, item 4): `rollway deploy --env preview-N
//! --from staging --ttl D` side by side on their own hosts, `rollway env list | destroy`, expiry
//! by the agent, the base's secret reaching a preview's app and nowhere else.
//!
//! Assertions are about answers, states and records; the one wait (for the expiry pass) is bounded.

use std::time::Duration;

use testkit::agent::{APP, Ran, TestAgent, TestApp};

use crate::agent::rollway_bin;

const BASE: &str = "staging";
/// Bound of the wait for the agent to destroy an expired preview.
const PATIENCE: Duration = Duration::from_secs(60);

/// The demo app with `staging` on its own host and a preview layer: each preview answers on
/// `{env}.preview.localhost` and sees its own name in `PREVIEW`.
fn app(dir: &std::path::Path) -> TestApp {
    TestApp::new(dir.join("app"))
        .version("v1")
        .env_hosts(BASE, &["staging.localhost"])
        .env_hosts("production", &["production.localhost"])
        .secrets(BASE, &["CANARY_SECRET"])
        .extra(
            r#"[environments.preview]
routes = { web = { hosts = ["{env}.preview.localhost"] } }
env = { PREVIEW = "{env}" }"#,
        )
}

async fn deploy_preview(agent: &TestAgent, app: &TestApp, args: &[&str]) -> Ran {
    let dir = app.write().display().to_string();
    let mut all = vec!["deploy", "--dir", dir.as_str()];
    all.extend_from_slice(args);
    agent.cli(&all).await
}

fn host(name: &str) -> String {
    format!("{name}.preview.localhost")
}

async fn env_list(agent: &TestAgent) -> Vec<serde_json::Value> {
    let ran = agent.cli(&["env", "list", "--app", APP, "--json"]).await;
    ran.assert_code(0);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|error| panic!("{error}: {ran}"))
}

async fn token(agent: &TestAgent, role: &str) -> String {
    let ran = agent
        .cli(&["tokens", "create", "--role", role, "--name", role, "--json"])
        .await;
    ran.assert_code(0);
    let created: serde_json::Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    created["token"].as_str().expect("token value").to_owned()
}

fn find<'a>(list: &'a [serde_json::Value], env: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|view| view["environment"] == env)
        .unwrap_or_else(|| panic!("no `{env}` in {list:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_run_side_by_side_one_is_destroyed_one_expires_and_both_see_the_base_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[("ROLLWAY_PREVIEW_CHECK_INTERVAL_MS", "200")],
    )
    .await;
    let canary = format!("canary-{}", testkit::agent::random_hex(12));
    let app = app(dir.path());
    let mut outputs: Vec<Ran> = Vec::new();
    agent
        .set_secret(APP, BASE, "CANARY_SECRET", &canary)
        .await
        .assert_code(0);
    agent.deploy(&app, BASE).await.assert_code(0);

    // Day-one mistakes: each refused with what would be accepted, nothing deployed.
    let refusals: [(&[&str], &str); 8] = [
        (&["--env", "preview-1", "--ttl", "1h"], "--from"),
        (
            &["--env", BASE, "--from", BASE],
            "is an environment of the manifest",
        ),
        (&["--env", "preview-1", "--from", "qa"], "`qa` is not one"),
        (&["--env", "preview-1", "--from", "preview-2"], "is not one"),
        (&["--env", "pr-1", "--from", BASE], "not a preview name"),
        (
            &["--env", "preview-1", "--from", BASE, "--ttl", "91d"],
            "out of bounds",
        ),
        (
            &["--env", "preview-1", "--from", BASE, "--ttl", "soon"],
            "not a duration",
        ),
        (&["--env", "preview-1"], "--from BASE"),
    ];
    for (args, expected) in refusals {
        let ran = deploy_preview(&agent, &app, args).await;
        ran.assert_code(2);
        assert!(ran.stderr.contains(expected), "{args:?}: {ran}");
        outputs.push(ran);
    }
    let listed = env_list(&agent).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");

    // Two previews side by side, each on its own host, each with its own releases.
    for name in ["preview-1", "preview-2"] {
        let ran = deploy_preview(
            &agent,
            &app,
            &["--env", name, "--from", BASE, "--ttl", "1h"],
        )
        .await;
        ran.assert_code(0);
        outputs.push(ran);
    }
    let staging_hash = agent
        .get(Some("staging.localhost"), "/sha256/CANARY_SECRET")
        .await;
    assert_eq!(staging_hash.status, 200, "{}", staging_hash.body);
    for name in ["preview-1", "preview-2"] {
        let answer = agent.get(Some(&host(name)), "/").await;
        assert_eq!((answer.status, answer.body.trim()), (200, "v1"), "{name}");
        let answer = agent.get(Some(&host(name)), "/env/PREVIEW").await;
        assert_eq!((answer.status, answer.body.trim()), (200, name));
        // The base's secret reached the preview's app (its hash, never the value, travels here).
        let answer = agent.get(Some(&host(name)), "/sha256/CANARY_SECRET").await;
        assert_eq!(
            (answer.status, &answer.body),
            (200, &staging_hash.body),
            "{name}"
        );
    }
    let listed = env_list(&agent).await;
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|view| view["environment"].as_str())
        .collect();
    assert_eq!(names, ["preview-1", "preview-2", BASE]);
    assert!(find(&listed, BASE).get("preview").is_none(), "{listed:#?}");
    for name in ["preview-1", "preview-2"] {
        let view = find(&listed, name);
        assert_eq!(view["preview"]["base"], BASE, "{view:#}");
        assert_eq!(view["current_release"], 1, "{view:#}");
        assert!(view["preview"]["expires_at"].as_i64().is_some(), "{view:#}");
    }
    let table = agent.cli(&["env", "list", "--app", APP]).await;
    table.assert_code(0);
    assert!(
        table.stdout.contains("preview-1") && table.stdout.contains(BASE),
        "{table}"
    );
    outputs.push(table);

    // A declared environment is not destroyed by `env destroy`; a preview is, and only it.
    let ran = agent.cli(&["env", "destroy", BASE, "--app", APP]).await;
    ran.assert_code(2);
    assert!(
        ran.stderr.contains("rollway destroy --env staging"),
        "{ran}"
    );
    // A deployer destroys previews only; a viewer none; without a token, nobody.
    let (deployer, viewer) = (
        token(&agent, "deployer").await,
        token(&agent, "viewer").await,
    );
    let staging_path = format!("/v1/apps/{APP}/previews/{BASE}");
    let preview_path = format!("/v1/apps/{APP}/previews/preview-1");
    assert_eq!(
        agent
            .api_status("DELETE", &staging_path, Some(&deployer))
            .await,
        422
    );
    assert_eq!(
        agent
            .api_status("DELETE", &preview_path, Some(&viewer))
            .await,
        403
    );
    assert_eq!(agent.api_status("DELETE", &preview_path, None).await, 401);
    assert_eq!(agent.get(Some(&host("preview-1")), "/").await.status, 200);
    assert_eq!(agent.get(Some("staging.localhost"), "/").await.status, 200);
    let ran = agent
        .cli_as(
            Some(&deployer),
            &["env", "destroy", "preview-1", "--app", APP],
        )
        .await;
    ran.assert_code(0);
    outputs.push(ran);
    assert_eq!(agent.get(Some(&host("preview-1")), "/").await.status, 404);
    assert_eq!(agent.get(Some(&host("preview-2")), "/").await.status, 200);
    assert_eq!(agent.get(Some("staging.localhost"), "/").await.status, 200);
    let running: Vec<String> = agent.instance_pid_files().into_keys().collect();
    assert!(
        running.iter().all(|id| !id.contains("preview-1")),
        "{running:?}"
    );
    // Deploying it again from another base is refused; the preview keeps its base.
    let ran = deploy_preview(
        &agent,
        &app,
        &["--env", "preview-2", "--from", "production"],
    )
    .await;
    ran.assert_code(2);
    assert!(ran.stderr.contains("is a preview of `staging`"), "{ran}");
    assert_eq!(agent.get(Some(&host("preview-2")), "/").await.status, 200);

    // A short-lived preview: the agent destroys it once it expires; its records stay.
    let ran = deploy_preview(
        &agent,
        &app,
        &["--env", "preview-3", "--from", BASE, "--ttl", "2s"],
    )
    .await;
    ran.assert_code(0);
    outputs.push(ran);
    // The route leaves first, the instances stop after their drain, and the event that says
    // so comes last: wait for the event, not for the 404.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let destroyed = agent.events().await.iter().any(|event| {
            event["kind"] == "environment.destroyed" && event["environment"] == "preview-3"
        });
        if destroyed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "preview-3 was not destroyed past its expiry:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(agent.get(Some(&host("preview-3")), "/").await.status, 404);
    let listed = env_list(&agent).await;
    let view = find(&listed, "preview-3");
    assert_eq!(
        (view["active"].as_bool(), view["instances"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(view["current_release"], 1, "records kept: {view:#}");
    assert_eq!(find(&listed, "preview-2")["active"], true, "{listed:#?}");
    assert_eq!(agent.get(Some(&host("preview-2")), "/").await.status, 200);
    let events = agent.events().await;
    let destroyed: Vec<(String, bool)> = events
        .iter()
        .filter(|event| event["kind"] == "environment.destroyed")
        .map(|event| {
            let data: serde_json::Value = event["data"].clone();
            (
                event["environment"].as_str().unwrap_or_default().to_owned(),
                data["expired"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        destroyed,
        [
            ("preview-1".to_owned(), false),
            ("preview-3".to_owned(), true)
        ],
        "{events:#?}"
    );

    // The canary never left the app: not in events, API answers or anything the CLI printed.
    let text = serde_json::to_string(&events).expect("events JSON");
    assert!(!text.contains(&canary), "the canary is in the events");
    assert!(
        !serde_json::to_string(&listed)
            .expect("json")
            .contains(&canary)
    );
    for ran in &outputs {
        assert!(
            !ran.stdout.contains(&canary) && !ran.stderr.contains(&canary),
            "{ran}"
        );
    }
    assert!(
        !agent.log().contains(&canary),
        "the canary is in the agent's log"
    );
}

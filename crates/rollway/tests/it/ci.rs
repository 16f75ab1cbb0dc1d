//! Deploys from CI (issue 15, item 5): the GitHub Actions workflow `rollway init --ci github`
//! writes, read back as YAML (jobs, triggers, environments, where the token and the fingerprint
//! come from), never over an existing one without `--force`; and the markdown summary `rollway
//! deploy` appends to `$GITHUB_STEP_SUMMARY`, with no secret in it.

use serde_norway::Value;
use testkit::agent::{APP, random_hex};

use crate::agent::Setup;
use crate::rollway;

const WORKFLOW: &str = ".github/workflows/deploy.yml";

fn get<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(value, |value, key| {
        value
            .get(*key)
            .unwrap_or_else(|| panic!("no `{key}` in {value:?} (path {path:?})"))
    })
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    get(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("`{path:?}` is not a string"))
}

#[test]
fn init_ci_github_writes_a_workflow_that_tests_every_push_and_deploys_through_environments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = dir.path().join("shipping-api");
    std::fs::create_dir(&app).expect("app dir");
    std::fs::write(app.join("app.py"), "print('hi')\n").expect("app.py");
    std::fs::write(app.join("requirements.txt"), "flask\n").expect("requirements");

    let output = rollway(&app, &["init", "--ci", "github"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        app.join("rollway.toml").is_file(),
        "the manifest comes along"
    );
    let written = std::fs::read_to_string(app.join(WORKFLOW)).expect("workflow written");
    let workflow: Value = serde_norway::from_str(&written).expect("the workflow is YAML");

    // Triggers: every branch push (tests), and v* tags (production).
    let push = get(&workflow, &["on", "push"]);
    assert_eq!(
        get(push, &["branches"]),
        &serde_norway::from_str::<Value>("['**']").expect("yaml")
    );
    assert_eq!(
        get(push, &["tags"]),
        &serde_norway::from_str::<Value>("['v*']").expect("yaml")
    );
    assert_eq!(text(&workflow, &["permissions", "contents"]), "read");

    let jobs = get(&workflow, &["jobs"])
        .as_mapping()
        .expect("jobs is a mapping");
    let names: Vec<&str> = jobs.keys().filter_map(Value::as_str).collect();
    assert_eq!(names, ["test", "deploy-staging", "deploy-production"]);

    // The tests run on every push: no condition, no environment.
    let test = get(&workflow, &["jobs", "test"]);
    assert!(
        test.get("if").is_none() && test.get("environment").is_none(),
        "{test:?}"
    );
    let test_runs: Vec<&str> = get(test, &["steps"])
        .as_sequence()
        .expect("steps")
        .iter()
        .filter_map(|step| step.get("run").and_then(Value::as_str))
        .collect();
    assert!(
        test_runs
            .iter()
            .any(|run| run.contains("pip install -r requirements.txt")),
        "{test_runs:?}"
    );

    for (job, env, condition) in [
        (
            "deploy-staging",
            "staging",
            "github.ref == 'refs/heads/main'",
        ),
        (
            "deploy-production",
            "production",
            "startsWith(github.ref, 'refs/tags/v')",
        ),
    ] {
        let job = get(&workflow, &["jobs", job]);
        assert_eq!(text(job, &["needs"]), "test");
        assert_eq!(text(job, &["if"]), condition);
        // The GitHub environment: `production`'s required reviewers are the manual approval.
        assert_eq!(text(job, &["environment"]), env);
        assert_eq!(
            text(job, &["env", "ROLLWAY_TOKEN"]),
            "${{ secrets.ROLLWAY_TOKEN }}"
        );
        assert_eq!(
            text(job, &["env", "ROLLWAY_AGENT_FINGERPRINT"]),
            "${{ secrets.ROLLWAY_AGENT_FINGERPRINT }}"
        );
        assert_eq!(
            text(job, &["env", "ROLLWAY_AGENT"]),
            "${{ vars.ROLLWAY_AGENT }}"
        );
        assert_eq!(
            get(job, &["concurrency", "cancel-in-progress"]),
            &Value::Bool(false)
        );
        let runs: Vec<&str> = get(job, &["steps"])
            .as_sequence()
            .expect("steps")
            .iter()
            .filter_map(|step| step.get("run").and_then(Value::as_str))
            .collect();
        assert!(
            runs.iter()
                .any(|run| run.contains(&format!("rollway deploy --env {env}"))),
            "{runs:?}"
        );
        // What a push controls reaches the shell through env only (no script injection).
        assert!(runs.iter().all(|run| !run.contains("${{")), "{runs:?}");
    }

    // Never over an existing workflow without --force; the manifest is left alone.
    std::fs::write(app.join(WORKFLOW), "# mine\n").expect("edited");
    std::fs::write(app.join("rollway.toml"), "# my manifest\n").expect("edited");
    let again = rollway(&app, &["init", "--ci", "github"]);
    assert_eq!(again.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(app.join(WORKFLOW)).expect("kept"),
        "# mine\n"
    );
    let forced = rollway(&app, &["init", "--ci", "github", "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(app.join(WORKFLOW)).expect("replaced"),
        written
    );
    assert_eq!(
        std::fs::read_to_string(app.join("rollway.toml")).expect("kept"),
        "# my manifest\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_appends_a_markdown_step_summary_without_secrets() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let canary = format!("canary-{}", random_hex(16));
    let app = setup
        .app("app", "v1")
        .secrets("production", &["CANARY_SECRET"])
        .release("echo \"release sees $CANARY_SECRET\"", None);
    agent
        .set_secret(APP, "production", "CANARY_SECRET", &canary)
        .await
        .assert_code(0);
    let summary = setup.dir.path().join("step-summary.md");
    std::fs::write(&summary, "earlier step\n").expect("summary file");

    let mut command = agent.deploy_command(&app, "production", Some(agent.admin_token()));
    command.env("GITHUB_STEP_SUMMARY", &summary);
    let output = command.output().await.expect("rollway deploy runs");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let markdown = std::fs::read_to_string(&summary).expect("summary written");
    assert!(
        markdown.starts_with("earlier step\n"),
        "appended, not replaced:\n{markdown}"
    );
    for needle in [
        "Rollway: deploy `demo@1` to `production` succeeded",
        "| Release | 1 (from none) |",
        "| Strategy | blue-green |",
        "| Outcome | succeeded |",
        "#### Timings",
        "| Releasing |",
        "| Starting |",
        "| Verifying |",
        "#### Verdicts",
    ] {
        assert!(markdown.contains(needle), "no `{needle}` in:\n{markdown}");
    }
    assert!(
        !markdown.contains(&canary),
        "a secret in the summary:\n{markdown}"
    );
    assert!(!markdown.contains(agent.admin_token()));

    // Without the variable, nothing is written anywhere.
    let before = std::fs::read_to_string(&summary).expect("summary");
    let app = setup
        .app("app", "v2")
        .secrets("production", &["CANARY_SECRET"]);
    let mut command = agent.deploy_command(&app, "production", Some(agent.admin_token()));
    command.env_remove("GITHUB_STEP_SUMMARY");
    let output = command.output().await.expect("rollway deploy runs");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&summary).expect("summary"), before);
}

//! The GitHub Actions workflow `rollway init --ci github` writes: tests on every push, a deploy to
//! `staging` from `main`, a deploy to `production` from a `v*` tag through a GitHub environment
//! whose required reviewers are the manual approval.
//!
//! It holds no secret: the token and the certificate fingerprint come from the repository's
//! secrets, the agent's URL from a variable; values that a push controls (the tag's name) reach a
//! shell through `env`, never spliced into a script.

/// Where the workflow goes, relative to the app folder.
pub const WORKFLOW_PATH: &str = ".github/workflows/deploy.yml";

/// The steps that set up and run the tests of an app of this `kind` (as `scaffold::detect` names
/// it), indented for a job's `steps:`.
fn test_steps(kind: &str, has_requirements: bool) -> String {
    match kind {
        "Rust" => "      - name: Test\n        run: cargo test --locked\n".to_owned(),
        "Node" => "      - uses: actions/setup-node@v4\n        with:\n          node-version: lts/*\n      - name: Test\n        run: |\n          npm ci\n          npm test\n".to_owned(),
        "Python" => {
            let install = if has_requirements {
                "          python -m pip install -r requirements.txt\n"
            } else {
                ""
            };
            format!("      - uses: actions/setup-python@v5\n        with:\n          python-version: \"3.x\"\n      - name: Test\n        run: |\n{install}          python -m unittest discover -v\n")
        }
        "Go" => "      - uses: actions/setup-go@v5\n        with:\n          go-version: stable\n      - name: Test\n        run: go test ./...\n".to_owned(),
        _ => "      - name: Test\n        # Replace with this app's test command.\n        run: echo \"::error::set the test command in .github/workflows/deploy.yml\" && exit 1\n".to_owned(),
    }
}

/// One deploy job: `needs: test`, only when `condition` holds, in GitHub environment `env`.
fn deploy_job(name: &str, env: &str, condition: &str, what: &str) -> String {
    format!(
        r#"  {name}:
    # {what}
    needs: test
    if: {condition}
    runs-on: ubuntu-latest
    environment: {env}
    # One deploy per environment at a time; a newer push waits instead of cancelling one midway.
    concurrency:
      group: rollway-{env}
      cancel-in-progress: false
    env:
      ROLLWAY_AGENT: ${{{{ vars.ROLLWAY_AGENT }}}}
      ROLLWAY_TOKEN: ${{{{ secrets.ROLLWAY_TOKEN }}}}
      ROLLWAY_AGENT_FINGERPRINT: ${{{{ secrets.ROLLWAY_AGENT_FINGERPRINT }}}}
      DEPLOY_MESSAGE: ${{{{ github.ref_name }}}} ${{{{ github.sha }}}}
    steps:
      - uses: actions/checkout@v4
      - name: Install rollway
        env:
          ROLLWAY_INSTALL: ${{{{ vars.ROLLWAY_INSTALL }}}}
        run: |
          if [ -z "$ROLLWAY_INSTALL" ]; then
            echo "::error::set the repository variable ROLLWAY_INSTALL to the command that puts rollway on PATH"
            exit 1
          fi
          sh -c "$ROLLWAY_INSTALL"
          rollway --version
      - name: Deploy to {env}
        # Live progress in the log; a markdown summary on the run's page ($GITHUB_STEP_SUMMARY).
        run: rollway deploy --env {env} -m "$DEPLOY_MESSAGE"
"#
    )
}

/// The whole workflow for an app of `kind`.
pub fn workflow(kind: &str, has_requirements: bool) -> String {
    let mut out = String::from(
        r#"# Written by `rollway init --ci github`.
# Tests on every push; a push to `main` deploys to staging; a `v*` tag deploys to production once
# a reviewer approves (the `production` environment's required reviewers are the manual approval).
#
# Set up once, in the repository's settings:
# - Environments: `staging`, and `production` with "Required reviewers" (and, if you like,
#   "Deployment branches and tags" limited to `v*` tags).
# - Secrets (Actions): ROLLWAY_TOKEN, a deployer token (`rollway tokens create --role deployer`),
#   and ROLLWAY_AGENT_FINGERPRINT, the `api certificate: sha256:...` line `rollway agent` printed
#   on the server (the CLI refuses any other certificate). Per-environment secrets of the same
#   names override these, for separate staging and production agents.
# - Variables (Actions): ROLLWAY_AGENT, the agent's API (`https://HOST:7443`), and
#   ROLLWAY_INSTALL, the command that puts the `rollway` binary on PATH on the runner.
name: deploy

on:
  push:
    branches: ["**"]
    tags: ["v*"]

permissions:
  contents: read

jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
"#,
    );
    out.push_str(&test_steps(kind, has_requirements));
    out.push('\n');
    out.push_str(&deploy_job(
        "deploy-staging",
        "staging",
        "github.ref == 'refs/heads/main'",
        "Every push to main, once the tests pass.",
    ));
    out.push('\n');
    out.push_str(&deploy_job(
        "deploy-production",
        "production",
        "startsWith(github.ref, 'refs/tags/v')",
        "Every v* tag, once the tests pass and a reviewer approved the `production` environment.",
    ));
    out
}

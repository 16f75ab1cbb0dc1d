//! Layering, required config and parity, asserted on values rather than text.

use manifest::StrategyKind;

fn environments_manifest() -> manifest::Manifest {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/test_data/ok/environments.toml"
    ))
    .expect("test data is readable");
    manifest::parse(&source, "environments.toml").expect("valid manifest")
}

#[test]
fn environments_layer_over_shared_settings() {
    let manifest = environments_manifest();
    let production = manifest.resolve("production").expect("declared");
    let web = production.config.service("web").expect("web exists");
    assert_eq!(web.replicas, 4);
    let health = web.health.as_ref().expect("web has health");
    assert_eq!(health.timeout.as_std(), std::time::Duration::from_secs(5));
    // Keys the override does not touch keep their shared values.
    assert_eq!(health.path, "/up");
    assert_eq!(health.host.as_deref(), Some("shop.internal"));
    assert_eq!(production.config.strategy.kind, StrategyKind::BlueGreen);
    assert_eq!(
        production.config.strategy.keep_warm.as_std(),
        std::time::Duration::from_secs(300)
    );

    let staging = manifest.resolve("staging").expect("declared");
    assert_eq!(
        staging.config.service("web").map(|web| web.replicas),
        Some(2)
    );
    assert_eq!(staging.config.strategy.kind, StrategyKind::Rolling);
    assert_eq!(
        staging.config.routes[0].hosts,
        vec!["staging.shop.example.com".to_owned()]
    );
    assert_eq!(
        staging.config.routes[0].paths,
        vec!["/".to_owned(), "/api".to_owned()]
    );
}

#[test]
fn unknown_environment_names_the_declared_ones() {
    let manifest = environments_manifest();
    let error = manifest.resolve("prodution").expect_err("not declared");
    assert_eq!(error.suggestion.as_deref(), Some("production"));
    assert_eq!(
        error.to_string(),
        "no environment `prodution` in the manifest; declared: `staging`, `production`"
    );
}

#[test]
fn required_config_collects_secrets_and_references() {
    let manifest = environments_manifest();
    let production = manifest.resolve("production").expect("declared");
    let required = production.required_config();
    assert_eq!(
        required.names(),
        vec!["DB_PASSWORD".to_owned(), "SESSION_KEY".to_owned()]
    );
    assert_eq!(
        required.references[0].used_by,
        vec!["env.DATABASE_URL".to_owned()]
    );
    assert_eq!(
        required.missing(|name| name == "DB_PASSWORD"),
        vec!["SESSION_KEY".to_owned()]
    );
}

#[test]
fn parity_lists_only_what_differs() {
    let report = environments_manifest().parity();
    assert_eq!(
        report.environments,
        vec!["staging".to_owned(), "production".to_owned()]
    );
    let settings: Vec<&str> = report
        .differences
        .iter()
        .map(|difference| difference.setting.as_str())
        .collect();
    assert_eq!(
        settings,
        vec![
            "flags.NEW_CHECKOUT",
            "routes.web.hosts",
            "secrets",
            "services.web.health.timeout",
            "services.web.replicas",
            "strategy.kind",
        ]
    );
    let replicas = report
        .differences
        .iter()
        .find(|difference| difference.setting == "services.web.replicas");
    assert_eq!(
        replicas.map(|difference| difference.values.clone()),
        Some(vec![Some("2".to_owned()), Some("4".to_owned())])
    );
}

#[test]
fn a_manifest_without_environments_serves_any_name() {
    let manifest = manifest::parse(
        "[app]\nname = \"a\"\n[services.web]\nrun = \"x\"\nhealth = { path = \"/up\" }\n",
        "rollway.toml",
    )
    .expect("valid");
    let resolved = manifest
        .resolve("anything")
        .expect("no environments declared");
    assert_eq!(
        resolved.config.routes.len(),
        1,
        "`web` is routed by default"
    );
    assert!(manifest.parity().is_empty());
}

#[test]
fn diagnostics_carry_line_and_column() {
    let source = "[app]\nname = \"a\"\n[services.web]\nrun = \"x\"\nhelth = { path = \"/up\" }\nhealth = { path = \"/up\" }\n";
    let diagnostics = manifest::parse(source, "rollway.toml").expect_err("unknown key");
    let located = diagnostics.located();
    assert_eq!(located.len(), 1);
    assert_eq!((located[0].line, located[0].column), (5, 1));
    assert_eq!(located[0].help.as_deref(), Some("did you mean `health`?"));
}

#[test]
fn a_route_answering_every_host_and_an_unset_webhook_are_warnings() {
    let source = r#"
[app]
name = "shop"

[services.web]
run = "./server"
health = { path = "/up" }

[alerts]
webhook = "SLACK_WEBHOOK_URL"

[environments.development]

[environments.production]
routes = { web = { hosts = ["shop.example.com"] } }
"#;
    let manifest = manifest::parse(source, "rollway.toml").expect("valid manifest");
    let development = manifest.resolve("development").expect("declared");
    let warnings: Vec<String> = development
        .warnings("shop")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "route `web` in `development` answers every host, so no other app or environment can be routed beside it on the same agent; add `hosts = [\"shop.localhost\"]` under [routes.web] (or under [environments.development])"
        ]
    );
    let production = manifest.resolve("production").expect("declared");
    assert!(production.warnings("shop").is_empty());
    assert_eq!(
        production
            .webhook_warning(|_| false)
            .map(|warning| warning.to_string())
            .as_deref(),
        Some(
            "alerts are off in `production`: the webhook secret `SLACK_WEBHOOK_URL` is not set; set it with `rollway secrets set SLACK_WEBHOOK_URL --env production`"
        )
    );
    assert_eq!(production.webhook_warning(|_| true), None);
}

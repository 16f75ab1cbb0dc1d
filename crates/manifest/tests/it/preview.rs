//! Preview environments: a preview layers over its base, then over `[environments.preview]`.

const MANIFEST: &str = r#"
[app]
name = "shop"

[services.web]
run = "./server"
health = { path = "/up" }

[routes.web]
hosts = ["shop.example.com"]

[env]
LOG_LEVEL = "info"

[environments.staging]
secrets = ["DB_PASSWORD"]
env = { LOG_LEVEL = "debug", TIER = "staging" }
routes = { web = { hosts = ["staging.shop.example.com"] } }

[environments.production]
secrets = ["DB_PASSWORD", "SESSION_KEY"]
approval = true

[environments.preview]
secrets = ["PREVIEW_TOKEN"]
routes = { web = { hosts = ["{env}.preview.shop.example.com"] } }
env = { PREVIEW = "{env}" }
"#;

#[test]
fn a_preview_layers_over_its_base_then_the_preview_layer() {
    let resolved = manifest::parse_preview(MANIFEST, "rollway.toml", "preview-42", "staging")
        .expect("resolves");
    assert_eq!(resolved.environment, "preview-42");
    assert_eq!(resolved.secrets, ["DB_PASSWORD", "PREVIEW_TOKEN"]);
    assert!(!resolved.approval);
    let env: Vec<(&str, &str)> = resolved
        .config
        .env
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    assert!(env.contains(&("LOG_LEVEL", "debug")), "{env:?}");
    assert!(env.contains(&("TIER", "staging")), "{env:?}");
    assert!(env.contains(&("PREVIEW", "preview-42")), "{env:?}");
    assert_eq!(
        resolved.config.routes[0].hosts,
        ["preview-42.preview.shop.example.com"]
    );
    // Over production, it keeps production's approval and secrets.
    let over_production =
        manifest::parse_preview(MANIFEST, "rollway.toml", "preview-7", "production")
            .expect("resolves");
    assert!(over_production.approval);
    assert_eq!(
        over_production.secrets,
        ["DB_PASSWORD", "SESSION_KEY", "PREVIEW_TOKEN"]
    );
}

#[test]
fn the_preview_layer_is_not_an_environment() {
    let manifest = manifest::parse(MANIFEST, "rollway.toml").expect("valid");
    assert_eq!(manifest.environment_names(), ["staging", "production"]);
    assert!(manifest.resolve("preview").is_err());
}

#[test]
fn bad_names_and_bases_are_refused_with_what_is_accepted() {
    let cases = [
        ("preview", "staging", "not a preview name"),
        ("pr-42", "staging", "not a preview name"),
        ("preview-42", "qa", "`qa` is not one"),
        ("preview-42", "preview", "`preview` is not one"),
    ];
    for (name, base, expected) in cases {
        let error = manifest::parse_preview(MANIFEST, "rollway.toml", name, base)
            .expect_err("refused")
            .to_string();
        assert!(error.contains(expected), "{name} from {base}: {error}");
    }
    let declared = MANIFEST.replace("[environments.production]", "[environments.preview-9]");
    let error = manifest::parse_preview(&declared, "rollway.toml", "preview-9", "staging")
        .expect_err("a declared environment is no preview")
        .to_string();
    assert!(
        error.contains("is an environment of the manifest"),
        "{error}"
    );
}

#[test]
fn without_a_layer_a_preview_runs_its_base_settings() {
    let source = MANIFEST
        .split("[environments.preview]")
        .next()
        .expect("head")
        .to_owned();
    let resolved =
        manifest::parse_preview(&source, "rollway.toml", "preview-1", "staging").expect("ok");
    assert_eq!(
        resolved.config.routes[0].hosts,
        ["staging.shop.example.com"]
    );
    assert_eq!(resolved.secrets, ["DB_PASSWORD"]);
}

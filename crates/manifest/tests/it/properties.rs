//! Any generated valid manifest parses, and every environment resolves with its overrides applied.

use proptest::prelude::*;

#[derive(Debug, Clone)]
struct GeneratedService {
    name: String,
    replicas: Option<u32>,
    health: Option<(String, u64, u64)>,
}

#[derive(Debug, Clone)]
struct GeneratedEnvironment {
    name: String,
    replicas: Option<u32>,
    secrets: Vec<String>,
    log_level: Option<String>,
}

fn slug() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,12}"
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Z][A-Z0-9_]{0,10}".prop_filter("PORT is reserved", |name| name != "PORT")
}

fn service() -> impl Strategy<Value = GeneratedService> {
    (
        "[a-z][a-z0-9_-]{0,8}",
        proptest::option::of(1u32..=100),
        proptest::option::of(("/[a-z]{0,8}", 1u64..=5000, 1u64..=120)),
    )
        .prop_map(|(name, replicas, health)| GeneratedService {
            name,
            replicas,
            health,
        })
}

fn environment() -> impl Strategy<Value = GeneratedEnvironment> {
    (
        slug(),
        proptest::option::of(1u32..=100),
        proptest::collection::vec(env_name(), 0..3),
        proptest::option::of("[a-z]{1,8}"),
    )
        .prop_map(|(name, replicas, mut secrets, log_level)| {
            secrets.sort();
            secrets.dedup();
            GeneratedEnvironment {
                name,
                replicas,
                secrets,
                log_level,
            }
        })
}

fn strategy_section() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("[strategy]\nkind = \"blue-green\"\n".to_owned()),
        (1u64..=3600).prop_map(|minutes| format!(
            "[strategy]\nkind = \"rolling\"\nkeep_warm = \"{minutes}m\"\n"
        )),
        proptest::collection::btree_set(1u8..100, 0..4).prop_map(|weights| {
            let mut steps: Vec<String> = weights
                .into_iter()
                .map(|weight| format!("{{ weight = {weight}, pause = \"{weight}s\" }}"))
                .collect();
            steps.push("{ weight = 100 }".to_owned());
            format!(
                "[strategy]\nkind = \"canary\"\nsteps = [{}]\n",
                steps.join(", ")
            )
        }),
    ]
}

fn render(
    app: &str,
    services: &[GeneratedService],
    strategy: &str,
    environments: &[GeneratedEnvironment],
    error_rate: f64,
) -> String {
    let mut out = format!("[app]\nname = \"{app}\"\n\n");
    for service in services {
        out.push_str(&format!(
            "[services.{}]\nrun = \"./{} --serve\"\n",
            service.name, service.name
        ));
        if let Some(replicas) = service.replicas {
            out.push_str(&format!("replicas = {replicas}\n"));
        }
        // `web` is routed by default, so it always needs a health check.
        let health = service
            .health
            .clone()
            .or_else(|| (service.name == "web").then(|| ("/up".to_owned(), 1000, 30)));
        if let Some((path, interval_ms, start_s)) = health {
            out.push_str(&format!(
                "health = {{ path = \"{path}\", interval = \"{interval_ms}ms\", start_timeout = \"{start_s}s\" }}\n"
            ));
        }
        out.push('\n');
    }
    out.push_str(strategy);
    out.push_str(&format!(
        "\n[analysis]\nmax_error_rate = {error_rate:?}\n\n[env]\nLOG_LEVEL = \"info\"\n\n"
    ));
    for environment in environments {
        out.push_str(&format!("[environments.{}]\n", environment.name));
        let secrets: Vec<String> = environment
            .secrets
            .iter()
            .map(|secret| format!("\"{secret}\""))
            .collect();
        out.push_str(&format!("secrets = [{}]\n", secrets.join(", ")));
        if let Some(level) = &environment.log_level {
            out.push_str(&format!("env = {{ LOG_LEVEL = \"{level}\" }}\n"));
        }
        if let Some(replicas) = environment.replicas {
            out.push_str(&format!(
                "services = {{ {} = {{ replicas = {replicas} }} }}\n",
                services[0].name
            ));
        }
        out.push('\n');
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_valid_manifests_parse_and_resolve(
        app in slug(),
        services in proptest::collection::vec(service(), 1..4),
        strategy in strategy_section(),
        environments in proptest::collection::vec(environment(), 0..4),
        error_rate in 0.0f64..=1.0,
    ) {
        let mut services = services;
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services.dedup_by(|a, b| a.name == b.name);
        let mut environments = environments;
        environments.sort_by(|a, b| a.name.cmp(&b.name));
        environments.dedup_by(|a, b| a.name == b.name);

        let source = render(&app, &services, &strategy, &environments, error_rate);
        let manifest = match manifest::parse(&source, "rollway.toml") {
            Ok(manifest) => manifest,
            Err(diagnostics) => panic!("valid manifest refused:\n{source}\n{diagnostics}"),
        };
        prop_assert_eq!(manifest.environments.len(), environments.len());
        for environment in &environments {
            let resolved = manifest.resolve(&environment.name).expect("declared environment resolves");
            let first = resolved.config.service(&services[0].name).expect("service present");
            let expected = environment.replicas.or(services[0].replicas).unwrap_or(1);
            prop_assert_eq!(first.replicas, expected);
            let level = resolved.config.env.iter().find(|(key, _)| key == "LOG_LEVEL").map(|(_, value)| value.clone());
            prop_assert_eq!(level, Some(environment.log_level.clone().unwrap_or_else(|| "info".to_owned())));
            prop_assert_eq!(&resolved.required_config().names(), &environment.secrets);
        }
        let parity = manifest.parity();
        prop_assert_eq!(parity.environments.len(), environments.len());
    }

    #[test]
    fn arbitrary_text_never_panics(source in "\\PC{0,400}") {
        let _ = manifest::parse(&source, "rollway.toml");
    }
}

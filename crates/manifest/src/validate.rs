//! Turning one spanned TOML table (the shared settings, or one environment's layered settings)
//! into a checked [`Config`].
//!
//! Every rule that can be checked without IO lives here; all problems are collected in the
//! [`Reader`]. Nothing here knows about environments: layering happens before (see `resolve`).

use std::collections::BTreeSet;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use crate::interpolate::{is_env_name, references};
use crate::read::{Reader, Value, list, suggest};
use crate::schema::{
    Alerts, Analysis, App, BackupPolicy, BackupRemote, Build, Config, Health, HealthCommand,
    Protocol, Registry, RegistryCredentials, Release, Route, Schedule, Service, ServiceSource,
    Step, Strategy, StrategyKind, defaults,
};

/// Top-level sections of `rollway.toml`.
pub(crate) const ROOT_KEYS: &[&str] = &[
    "app",
    "build",
    "services",
    "release",
    "strategy",
    "analysis",
    "routes",
    "env",
    "environments",
    "alerts",
    "flags",
    "backup",
    "cron",
];

pub(crate) const SERVICE_KEYS: &[&str] = &[
    "run",
    "image",
    "dockerfile",
    "replicas",
    "health",
    "drain",
    "stop_timeout",
    "env",
    "user",
    "protocol",
    "placement",
    "max_per_node",
    "resources",
];
const ROUTE_KEYS: &[&str] = &[
    "hosts",
    "paths",
    "timeout",
    "idle_timeout",
    "max_body",
    "max_header_fields",
    "hold",
    "slow_start",
    "tls",
    "hsts",
    "rate_limit",
    "allow",
];
const HEALTH_KEYS: &[&str] = &[
    "path",
    "command",
    "interval",
    "timeout",
    "healthy",
    "unhealthy",
    "start_timeout",
    "host",
];
const STRATEGY_KINDS: &[&str] = &["blue-green", "rolling", "canary"];

/// Variables Rollway itself gives every instance; the manifest may not set them.
pub const RESERVED_ENV: &[&str] = &["PORT"];

/// Reads a whole config; `None` when a required section is missing or malformed.
pub(crate) fn config(
    reader: &mut Reader,
    root: &DeTable<'_>,
    root_span: Range<usize>,
) -> Option<Config> {
    let app = app(reader, root, root_span.clone());
    let build = root.get("build").and_then(|value| build(reader, value));
    let services = services(reader, root, root_span);
    let release = root.get("release").and_then(|value| release(reader, value));
    let strategy = match root.get("strategy") {
        Some(value) => strategy(reader, value),
        None => Some(Strategy {
            kind: StrategyKind::BlueGreen,
            steps: Vec::new(),
            keep_warm: defaults::KEEP_WARM,
        }),
    };
    let analysis = analysis(reader, root.get("analysis"));
    let env = match root.get("env") {
        Some(value) => env_table(reader, value, "env"),
        None => Vec::new(),
    };
    let alerts = root.get("alerts").and_then(|value| alerts(reader, value));
    let backup = backup_policy(reader, root.get("backup"));
    let flags = match root.get("flags") {
        Some(value) => flags(reader, value),
        None => Vec::new(),
    };
    let services = services?;
    let routes = routes(reader, root.get("routes"), &services);
    require_health(reader, root, &services, &routes);
    let cron = crate::cron::cron_jobs(reader, root.get("cron"), &services);
    Some(Config {
        app: app?,
        build,
        services,
        release,
        strategy: strategy?,
        analysis: analysis?,
        routes,
        env,
        alerts,
        backup,
        flags,
        cron,
    })
}

fn backup_policy(reader: &mut Reader, value: Option<&Value<'_>>) -> BackupPolicy {
    let mut policy = BackupPolicy {
        schedule: None,
        keep: defaults::BACKUPS_KEPT,
        remote: None,
        verify: None,
        verify_schedule: None,
    };
    let Some(value) = value else { return policy };
    let Some(table) = reader.table(
        value,
        "backup",
        "write `[backup]` followed by `schedule = \"daily 03:00\"`",
    ) else {
        return policy;
    };
    reader.known_keys(
        table,
        &[
            "schedule",
            "keep",
            "remote",
            "endpoint",
            "region",
            "access_key_id",
            "secret_access_key",
            "verify",
            "verify_schedule",
        ],
        "backup",
    );
    policy.schedule = schedule(reader, table, "schedule");
    policy.verify_schedule = schedule(reader, table, "verify_schedule");
    if let Some(keep) = table
        .get("keep")
        .and_then(|value| reader.integer_in(value, "backup.keep", 1..=1000))
    {
        policy.keep = keep as u32;
    }
    policy.verify = table
        .get("verify")
        .and_then(|value| reader.nonempty_string(value, "backup.verify"));
    policy.remote = backup_remote(reader, value.span(), table);
    policy
}

fn schedule(reader: &mut Reader, table: &DeTable<'_>, key: &str) -> Option<Schedule> {
    let value = table.get(key)?;
    let text = reader.string(value, &format!("backup.{key}"))?;
    match Schedule::parse(&text) {
        Ok(schedule) => Some(schedule),
        Err(reason) => {
            reader.invalid(
                value.span(),
                format!("`backup.{key}` is not a schedule: {reason}"),
                "not a schedule",
                "accepted: `\"daily HH:MM\"` (UTC), `\"hourly\"` or `\"hourly :MM\"`",
            );
            None
        }
    }
}

/// `remote`, `endpoint`, `region` and the two credential secrets' names of `[backup]`.
fn backup_remote(
    reader: &mut Reader,
    span: Range<usize>,
    table: &DeTable<'_>,
) -> Option<BackupRemote> {
    let Some(remote_value) = table.get("remote") else {
        for key in ["endpoint", "region", "access_key_id", "secret_access_key"] {
            if let Some(value) = table.get(key) {
                reader.invalid(
                    value.span(),
                    format!("`backup.{key}` is set without `backup.remote`"),
                    "needs `remote`",
                    "add `remote = \"s3://BUCKET/PREFIX\"` to `[backup]`, or remove this key",
                );
            }
        }
        return None;
    };
    let url = reader.string(remote_value, "backup.remote")?;
    let parsed = match BackupRemote::parse_url(&url) {
        Ok(parsed) => Some(parsed),
        Err(reason) => {
            reader.invalid(
                remote_value.span(),
                format!("`backup.remote` is not an S3 location: {reason}"),
                "not an S3 location",
                "accepted: `\"s3://BUCKET\"` or `\"s3://BUCKET/PREFIX\"`",
            );
            None
        }
    };
    let region = match table.get("region") {
        Some(value) => reader.nonempty_string(value, "backup.region"),
        None => Some("us-east-1".to_owned()),
    };
    let endpoint = match table.get("endpoint") {
        Some(value) => reader.string(value, "backup.endpoint").and_then(|endpoint| {
            let ok = (endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                && !endpoint.contains(['@', '?', '#', ' ']);
            if ok {
                Some(endpoint.trim_end_matches('/').to_owned())
            } else {
                reader.invalid(
                    value.span(),
                    format!("`backup.endpoint` is not an endpoint URL: `{endpoint}`"),
                    "not an endpoint",
                    "accepted: `\"https://HOST[:PORT]\"` or `\"http://HOST[:PORT]\"` (no credentials in it: they are secrets)",
                );
                None
            }
        }),
        None => region.as_deref().map(BackupRemote::aws_endpoint),
    };
    let mut secret_name = |key: &str| match table.get(key) {
        Some(value) => {
            let name = reader.string(value, &format!("backup.{key}"))?;
            if is_env_name(&name) {
                Some(name)
            } else {
                reader.invalid(
                    value.span(),
                    format!("`backup.{key}` must name a secret, found `{name}`"),
                    "not a secret name",
                    format!("write the name of the secret that holds it, such as `{key} = \"S3_{}\"`, and set it with `rollway secrets set`", key.to_uppercase()),
                );
                None
            }
        }
        None => {
            reader.missing(
                span.clone(),
                &format!("backup.{key}"),
                &format!("a remote needs credentials: add `{key} = \"SECRET_NAME\"` to `[backup]` and list the secret in the environment's `secrets`"),
            );
            None
        }
    };
    let access_key_id = secret_name("access_key_id");
    let secret_access_key = secret_name("secret_access_key");
    let (bucket, prefix) = parsed?;
    Some(BackupRemote {
        bucket,
        prefix,
        endpoint: endpoint?,
        region: region?,
        access_key_id: access_key_id?,
        secret_access_key: secret_access_key?,
    })
}

/// `[flags]`: names usable in a variable name, boolean values.
fn flags(reader: &mut Reader, value: &Value<'_>) -> Vec<(String, bool)> {
    let Some(table) = reader.table(
        value,
        "flags",
        "write `[flags]` followed by `NEW_CHECKOUT = true`",
    ) else {
        return Vec::new();
    };
    let mut flags = Vec::with_capacity(table.len());
    for (key, flag_value) in table.iter() {
        let name: &str = key.get_ref();
        if !is_env_name(name) {
            reader.invalid(
                key.span(),
                format!("`{name}` is not a valid flag name"),
                "invalid name",
                "flags reach the app as `FLAG_<NAME>`: letters, digits and `_`, not starting with a digit",
            );
            continue;
        }
        match flag_value.get_ref() {
            DeValue::Boolean(on) => flags.push((name.to_owned(), *on)),
            _ => reader.invalid(
                flag_value.span(),
                format!("flag `{name}` must be `true` or `false`"),
                "expected a boolean",
                format!("write `{name} = true`"),
            ),
        }
    }
    flags
}

fn app(reader: &mut Reader, root: &DeTable<'_>, root_span: Range<usize>) -> Option<App> {
    let Some(value) = root.get("app") else {
        reader.missing(
            root_span.start..root_span.start,
            "app",
            "add an `[app]` section with `name = \"your-app\"`",
        );
        return None;
    };
    let table = reader.table(
        value,
        "app",
        "write `[app]` followed by `name = \"your-app\"`",
    )?;
    reader.known_keys(table, &["name"], "app");
    let Some(name_value) = table.get("name") else {
        reader.missing(
            value.span(),
            "app.name",
            "add `name = \"your-app\"` under `[app]`",
        );
        return None;
    };
    let name = reader.nonempty_string(name_value, "app.name")?;
    if !is_slug(&name) {
        reader.invalid(
            name_value.span(),
            format!("`app.name` is not a valid name: `{name}`"),
            "invalid name",
            "accepted: lowercase letters, digits and `-`, starting with a letter, at most 63 characters",
        );
        return None;
    }
    Some(App { name })
}

fn build(reader: &mut Reader, value: &Value<'_>) -> Option<Build> {
    let table = reader.table(
        value,
        "build",
        "write `[build]` followed by `command = \"...\"` or `registry = \"HOST:PORT/PREFIX\"`",
    )?;
    reader.known_keys(
        table,
        &["command", "registry", "registry_user", "registry_password"],
        "build",
    );
    let command = table
        .get("command")
        .and_then(|command| reader.nonempty_string(command, "build.command"));
    let registry = build_registry(reader, value.span(), table);
    if !table.contains_key("command") && !table.contains_key("registry") {
        reader.missing(
            value.span(),
            "build.command",
            "add `command = \"...\"` (or `registry = \"HOST:PORT/PREFIX\"`) under `[build]`, or remove the section",
        );
        return None;
    }
    (command.is_some() || registry.is_some()).then_some(Build { command, registry })
}

/// `registry`, `registry_user` and `registry_password` of `[build]`.
fn build_registry(
    reader: &mut Reader,
    span: Range<usize>,
    table: &DeTable<'_>,
) -> Option<Registry> {
    const CREDENTIALS: [&str; 2] = ["registry_user", "registry_password"];
    let Some(address_value) = table.get("registry") else {
        for key in CREDENTIALS {
            if let Some(value) = table.get(key) {
                reader.invalid(
                    value.span(),
                    format!("`build.{key}` is set without `build.registry`"),
                    "needs `registry`",
                    "add `registry = \"HOST:PORT/PREFIX\"` to `[build]`, or remove this key",
                );
            }
        }
        return None;
    };
    let address = reader.string(address_value, "build.registry")?;
    let parsed = match Registry::parse_address(&address) {
        Ok(parsed) => Some(parsed),
        Err(reason) => {
            reader.invalid(
                address_value.span(),
                format!("`build.registry` is not a registry address: {reason}"),
                "not a registry address",
                "accepted: `\"HOST[:PORT][/PREFIX]\"`, such as `\"registry.example.com:5000/shop\"`",
            );
            None
        }
    };
    let mut secret_name = |key: &str| {
        let value = table.get(key)?;
        let name = reader.string(value, &format!("build.{key}"))?;
        if is_env_name(&name) {
            Some(name)
        } else {
            reader.invalid(
                value.span(),
                format!("`build.{key}` must name a secret, found `{name}`"),
                "not a secret name",
                format!(
                    "write the name of the secret that holds it, such as `{key} = \"{}\"`, and set it with `rollway secrets set`",
                    key.to_uppercase()
                ),
            );
            None
        }
    };
    let user = secret_name("registry_user");
    let password = secret_name("registry_password");
    let credentials = match (
        table.contains_key("registry_user"),
        table.contains_key("registry_password"),
    ) {
        (false, false) => None,
        (true, true) => Some(RegistryCredentials {
            user: user?,
            password: password?,
        }),
        (has_user, _) => {
            let (set, unset) = if has_user {
                ("registry_user", "registry_password")
            } else {
                ("registry_password", "registry_user")
            };
            reader.missing(
                span,
                &format!("build.{unset}"),
                &format!("`{set}` needs `{unset}` too: add `{unset} = \"SECRET_NAME\"` to `[build]` and list the secret in the environment's `secrets`"),
            );
            return None;
        }
    };
    let (host, prefix) = parsed?;
    Some(Registry {
        host,
        prefix,
        credentials,
    })
}

fn services(
    reader: &mut Reader,
    root: &DeTable<'_>,
    root_span: Range<usize>,
) -> Option<Vec<Service>> {
    const HELP: &str =
        "add a service, for example `[services.web]` with `run = \"python3 app.py\"`";
    let Some(value) = root.get("services") else {
        reader.missing(root_span.start..root_span.start, "services", HELP);
        return None;
    };
    let table = reader.table(value, "services", HELP)?;
    if table.is_empty() {
        reader.invalid(value.span(), "`services` is empty", "no service", HELP);
        return None;
    }
    let mut services = Vec::with_capacity(table.len());
    let mut ok = true;
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        if !is_name(name) {
            reader.invalid(
                key.span(),
                format!("`{name}` is not a valid service name"),
                "invalid name",
                "accepted: lowercase letters, digits, `-` and `_`, starting with a letter",
            );
            ok = false;
            continue;
        }
        match service(reader, name, value) {
            Some(service) => services.push(service),
            None => ok = false,
        }
    }
    ok.then_some(services)
}

fn service(reader: &mut Reader, name: &str, value: &Value<'_>) -> Option<Service> {
    let section = format!("services.{name}");
    let table = reader.table(
        value,
        &section,
        &format!("write `[{section}]` followed by `run = \"...\"`"),
    )?;
    reader.known_keys(table, SERVICE_KEYS, &section);

    let mut text = |key: &str| {
        table
            .get(key)
            .and_then(|value| reader.nonempty_string(value, &format!("{section}.{key}")))
    };
    let run = text("run");
    let image = text("image");
    let dockerfile = text("dockerfile");
    let source = match (run, image, dockerfile) {
        (run, Some(image), None) => Some(ServiceSource::Image { image, run }),
        (run, None, Some(dockerfile)) => Some(ServiceSource::Dockerfile { dockerfile, run }),
        (Some(run), None, None) => Some(ServiceSource::Run { run }),
        (_, Some(_), Some(_)) => {
            reader.invalid(
                value.span(),
                format!("`{section}` has both `image` and `dockerfile`"),
                "two image sources",
                "keep `image` to run an existing image, or `dockerfile` to build one from the app folder",
            );
            None
        }
        (None, None, None) => {
            let present = ["run", "image", "dockerfile"]
                .iter()
                .any(|key| table.contains_key(*key));
            if !present {
                reader.missing(
                    value.span(),
                    &format!("{section}.run"),
                    &format!("add `run = \"...\"` (the command that starts `{name}`), or `image = \"...\"` for the container driver"),
                );
            }
            None
        }
    };

    let replicas = table
        .get("replicas")
        .and_then(|value| reader.integer_in(value, &format!("{section}.replicas"), 1..=100))
        .map_or(defaults::REPLICAS, |n| n as u32);
    let health = table
        .get("health")
        .and_then(|value| health(reader, value, &section));
    let health_failed = table.contains_key("health") && health.is_none();
    let (health, health_command) = match health {
        Some(HealthCheck::Http(health)) => (Some(health), None),
        Some(HealthCheck::Command(command)) => (None, Some(command)),
        None => (None, None),
    };
    let drain = table
        .get("drain")
        .and_then(|value| reader.duration(value, &format!("{section}.drain")))
        .unwrap_or(defaults::DRAIN);
    let stop_timeout = table
        .get("stop_timeout")
        .and_then(|value| reader.positive_duration(value, &format!("{section}.stop_timeout")))
        .unwrap_or(defaults::STOP_TIMEOUT);
    let env = table
        .get("env")
        .map(|value| env_table(reader, value, &format!("{section}.env")))
        .unwrap_or_default();
    let user = match table.get("user") {
        None => None,
        Some(value) => {
            let key_path = format!("{section}.user");
            let user = reader.nonempty_string(value, &key_path)?;
            if matches!(source, Some(ServiceSource::Run { .. })) {
                reader.invalid(
                    value.span(),
                    format!("`{key_path}` is for containers"),
                    "not a container service",
                    "remove it: a `run` service runs as its app's own user, which Rollway chooses",
                );
                return None;
            }
            if !is_container_user(&user) {
                reader.invalid(
                    value.span(),
                    format!("`{user}` is not a container user"),
                    "invalid user",
                    "accepted: `uid`, `uid:gid` or a user name of the image, such as `1000:1000` or `app`",
                );
                return None;
            }
            Some(user)
        }
    };
    let protocol = table
        .get("protocol")
        .and_then(|value| protocol(reader, value, &format!("{section}.protocol")))
        .unwrap_or_default();
    let placement = crate::swarm::placement(reader, table, &section);
    if health_failed {
        return None;
    }
    Some(Service {
        name: name.to_owned(),
        source: source?,
        replicas,
        health,
        health_command,
        drain,
        stop_timeout,
        env,
        user,
        protocol,
        placement: placement?,
    })
}

/// `uid`, `uid:gid`, `name` or `name:group`: letters, digits, `_`, `.` and `-`, one colon at most.
fn is_container_user(user: &str) -> bool {
    let part = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    match user.split_once(':') {
        Some((name, group)) => part(name) && part(group),
        None => part(user),
    }
}

/// `health`: an HTTP path, or a command (for workers).
enum HealthCheck {
    Http(Health),
    Command(HealthCommand),
}

fn health(reader: &mut Reader, value: &Value<'_>, section: &str) -> Option<HealthCheck> {
    let key_path = format!("{section}.health");
    let table = reader.table(value, &key_path, "write `health = { path = \"/health\" }`")?;
    reader.known_keys(table, HEALTH_KEYS, &key_path);
    if let Some(command_value) = table.get("command") {
        if let Some(path_value) = table.get("path") {
            reader.invalid(
                path_value.span(),
                format!("`{key_path}` has both `path` and `command`"),
                "one check only",
                "keep `path` for a service that gets traffic, `command` for a worker",
            );
            return None;
        }
        for key in ["host"] {
            if let Some(extra) = table.get(key) {
                reader.invalid(
                    extra.span(),
                    format!("`{key_path}.{key}` is for HTTP checks"),
                    "not for a command",
                    format!("remove `{key}`, or check a path instead of a command"),
                );
                return None;
            }
        }
        let command = reader.nonempty_string(command_value, &format!("{key_path}.command"))?;
        let mut duration = |key: &str, default| {
            table
                .get(key)
                .and_then(|value| reader.positive_duration(value, &format!("{key_path}.{key}")))
                .unwrap_or(default)
        };
        let interval = duration("interval", defaults::HEALTH_INTERVAL);
        let timeout = duration("timeout", defaults::HEALTH_TIMEOUT);
        let start_timeout = duration("start_timeout", defaults::START_TIMEOUT);
        let healthy = table
            .get("healthy")
            .and_then(|value| reader.integer_in(value, &format!("{key_path}.healthy"), 1..=100))
            .map_or(defaults::HEALTHY, |n| n as u32);
        return Some(HealthCheck::Command(HealthCommand {
            command,
            interval,
            timeout,
            healthy,
            start_timeout,
        }));
    }
    let path = match table.get("path") {
        Some(path_value) => {
            let path = reader.nonempty_string(path_value, &format!("{key_path}.path"));
            match path {
                Some(path) if !path.starts_with('/') => {
                    reader.invalid(
                        path_value.span(),
                        format!("`{key_path}.path` must start with `/`: `{path}`"),
                        "not an absolute path",
                        format!("write `path = \"/{path}\"`"),
                    );
                    None
                }
                other => other,
            }
        }
        None => {
            reader.missing(
                value.span(),
                &format!("{key_path}.path"),
                "add `path = \"/health\"` (the path that answers 200 when the instance can serve)",
            );
            None
        }
    };
    let mut duration = |key: &str, default| {
        table
            .get(key)
            .and_then(|value| reader.positive_duration(value, &format!("{key_path}.{key}")))
            .unwrap_or(default)
    };
    let interval = duration("interval", defaults::HEALTH_INTERVAL);
    let timeout = duration("timeout", defaults::HEALTH_TIMEOUT);
    let start_timeout = duration("start_timeout", defaults::START_TIMEOUT);
    let mut count = |key: &str, default: u32| {
        table
            .get(key)
            .and_then(|value| reader.integer_in(value, &format!("{key_path}.{key}"), 1..=100))
            .map_or(default, |n| n as u32)
    };
    let healthy = count("healthy", defaults::HEALTHY);
    let unhealthy = count("unhealthy", defaults::UNHEALTHY);
    let host = table
        .get("host")
        .and_then(|value| reader.nonempty_string(value, &format!("{key_path}.host")));
    Some(HealthCheck::Http(Health {
        path: path?,
        interval,
        timeout,
        healthy,
        unhealthy,
        start_timeout,
        host,
    }))
}

fn release(reader: &mut Reader, value: &Value<'_>) -> Option<Release> {
    let table = reader.table(
        value,
        "release",
        "write `[release]` followed by `command = \"...\"`",
    )?;
    reader.known_keys(table, &["command", "backup", "smoke"], "release");
    let smoke = table
        .get("smoke")
        .and_then(|value| reader.nonempty_string(value, "release.smoke"));
    let command = table
        .get("command")
        .and_then(|value| reader.nonempty_string(value, "release.command"));
    let backup = table.get("backup").and_then(|value| {
        let name = reader.string(value, "release.backup")?;
        if !is_env_name(&name) {
            reader.invalid(
                value.span(),
                format!("`release.backup` must name a variable, found `{name}`"),
                "not a variable name",
                "write the name of the variable that holds the database URL, such as `backup = \"DATABASE_URL\"`",
            );
            return None;
        }
        Some(name)
    });
    Some(Release {
        command,
        backup,
        smoke,
    })
}

fn strategy(reader: &mut Reader, value: &Value<'_>) -> Option<Strategy> {
    let table = reader.table(
        value,
        "strategy",
        "write `[strategy]` followed by `kind = \"blue-green\"`",
    )?;
    reader.known_keys(table, &["kind", "steps", "keep_warm"], "strategy");
    let kind = match table.get("kind") {
        None => StrategyKind::BlueGreen,
        Some(kind_value) => {
            let text = reader.string(kind_value, "strategy.kind")?;
            match StrategyKind::ALL.iter().find(|(name, _)| *name == text) {
                Some((_, kind)) => *kind,
                None => {
                    let help = match suggest(&text, STRATEGY_KINDS.iter().copied()) {
                        Some(close) => format!("did you mean `{close}`?"),
                        None => format!("accepted: {}", list(STRATEGY_KINDS)),
                    };
                    reader.invalid(
                        kind_value.span(),
                        format!(
                            "`strategy.kind` must be one of {}, found `{text}`",
                            list(STRATEGY_KINDS)
                        ),
                        "unknown strategy",
                        help,
                    );
                    return None;
                }
            }
        }
    };
    let keep_warm = table
        .get("keep_warm")
        .and_then(|value| reader.duration(value, "strategy.keep_warm"))
        .unwrap_or(defaults::KEEP_WARM);
    let steps = match (kind, table.get("steps")) {
        (StrategyKind::Canary, Some(steps_value)) => steps(reader, steps_value)?,
        (StrategyKind::Canary, None) => {
            reader.missing(
                value.span(),
                "strategy.steps",
                "a canary moves traffic in steps: add `steps = [{ weight = 5, pause = \"30s\" }, { weight = 100 }]`",
            );
            return None;
        }
        (_, Some(steps_value)) => {
            reader.invalid(
                steps_value.span(),
                format!(
                    "`strategy.steps` only applies to `kind = \"canary\"`, not `{}`",
                    kind.as_str()
                ),
                "not used by this strategy",
                "remove `steps`, or set `kind = \"canary\"`",
            );
            return None;
        }
        (_, None) => Vec::new(),
    };
    Some(Strategy {
        kind,
        steps,
        keep_warm,
    })
}

fn steps(reader: &mut Reader, value: &Value<'_>) -> Option<Vec<Step>> {
    const HELP: &str = "write `steps = [{ weight = 5, pause = \"30s\" }, { weight = 100 }]`";
    let DeValue::Array(items) = value.get_ref() else {
        reader.invalid(
            value.span(),
            "`strategy.steps` must be an array of steps",
            "expected an array",
            HELP,
        );
        return None;
    };
    if items.is_empty() {
        reader.invalid(value.span(), "`strategy.steps` is empty", "no step", HELP);
        return None;
    }
    let mut steps = Vec::with_capacity(items.len());
    let mut ok = true;
    let mut previous: Option<u8> = None;
    for (idx, item) in items.iter().enumerate() {
        let key_path = format!("strategy.steps[{idx}]");
        let Some(table) = reader.table(item, &key_path, HELP) else {
            ok = false;
            continue;
        };
        reader.known_keys(table, &["weight", "pause"], &key_path);
        let weight = match table.get("weight") {
            Some(weight_value) => reader
                .weight(weight_value, &format!("{key_path}.weight"))
                .and_then(|weight| {
                    if let Some(previous) = previous
                        && weight.get() <= previous
                    {
                        reader.invalid(
                            weight_value.span(),
                            format!(
                                "`{key_path}.weight` must be above the previous step's `{previous}`"
                            ),
                            "weights must increase",
                            "each step sends more traffic to the new release than the one before",
                        );
                        return None;
                    }
                    if weight.get() == 0 {
                        reader.invalid(
                            weight_value.span(),
                            format!("`{key_path}.weight` is `0`"),
                            "a step with no traffic",
                            "accepted: a weight from 1 to 100",
                        );
                        return None;
                    }
                    previous = Some(weight.get());
                    Some(weight)
                }),
            None => {
                reader.missing(
                    item.span(),
                    &format!("{key_path}.weight"),
                    "add `weight = N` (percent of traffic, 1-100)",
                );
                None
            }
        };
        let pause = match table.get("pause") {
            Some(pause_value) => match reader.duration(pause_value, &format!("{key_path}.pause")) {
                Some(pause) => Some(pause),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        match weight {
            Some(weight) => steps.push(Step { weight, pause }),
            None => ok = false,
        }
    }
    if ok && steps.last().is_some_and(|step| step.weight.get() != 100) {
        reader.invalid(
            value.span(),
            "the last of `strategy.steps` must have `weight = 100`",
            "never reaches all traffic",
            "end with `{ weight = 100 }`",
        );
        return None;
    }
    ok.then_some(steps)
}

fn analysis(reader: &mut Reader, value: Option<&Value<'_>>) -> Option<Analysis> {
    let mut analysis = Analysis {
        interval: defaults::ANALYSIS_INTERVAL,
        window: defaults::ANALYSIS_WINDOW,
        min_requests: defaults::MIN_REQUESTS,
        max_error_rate: defaults::max_error_rate(),
        max_p99: None,
        observe: defaults::OBSERVE,
        baseline_margin: defaults::baseline_margin(),
        latency_margin: defaults::LATENCY_MARGIN,
    };
    let Some(value) = value else {
        return Some(analysis);
    };
    let table = reader.table(
        value,
        "analysis",
        "write `[analysis]` followed by `max_error_rate = 0.01`",
    )?;
    reader.known_keys(
        table,
        &[
            "interval",
            "window",
            "min_requests",
            "max_error_rate",
            "max_p99",
            "observe",
            "baseline_margin",
            "latency_margin",
        ],
        "analysis",
    );
    if let Some(observe) = table
        .get("observe")
        .and_then(|value| reader.duration(value, "analysis.observe"))
    {
        analysis.observe = observe;
    }
    if let Some(margin) = table
        .get("baseline_margin")
        .and_then(|value| reader.ratio(value, "analysis.baseline_margin"))
    {
        analysis.baseline_margin = margin;
    }
    if let Some(margin_value) = table.get("latency_margin") {
        let margin = match margin_value.get_ref() {
            DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(integer) => integer.as_str().parse::<f64>().ok(),
            _ => None,
        };
        match margin {
            Some(margin) if (1.0..=100.0).contains(&margin) => analysis.latency_margin = margin,
            _ => reader.invalid(
                margin_value.span(),
                "`analysis.latency_margin` must be a number from 1 to 100",
                "not a latency margin",
                "write `latency_margin = 2.0` (a p99 over twice the baseline's fails)",
            ),
        }
    }
    if let Some(interval) = table
        .get("interval")
        .and_then(|value| reader.positive_duration(value, "analysis.interval"))
    {
        analysis.interval = interval;
    }
    if let Some(window_value) = table.get("window")
        && let Some(window) = reader.positive_duration(window_value, "analysis.window")
    {
        if window < analysis.interval {
            reader.invalid(
                window_value.span(),
                format!(
                    "`analysis.window` ({window}) is shorter than `analysis.interval` ({})",
                    analysis.interval
                ),
                "shorter than the interval",
                "the window must hold at least one interval of traffic",
            );
        }
        analysis.window = window;
    }
    if let Some(min_requests) = table
        .get("min_requests")
        .and_then(|value| reader.integer_in(value, "analysis.min_requests", 1..=1_000_000))
    {
        analysis.min_requests = min_requests as u64;
    }
    if let Some(ratio) = table
        .get("max_error_rate")
        .and_then(|value| reader.ratio(value, "analysis.max_error_rate"))
    {
        analysis.max_error_rate = ratio;
    }
    analysis.max_p99 = table
        .get("max_p99")
        .and_then(|value| reader.positive_duration(value, "analysis.max_p99"));
    Some(analysis)
}

fn routes(reader: &mut Reader, value: Option<&Value<'_>>, services: &[Service]) -> Vec<Route> {
    let Some(value) = value else {
        // Without `[routes]`, a service named `web` serves every host, as in a Procfile.
        return services
            .iter()
            .filter(|service| service.name == "web")
            .map(|service| Route {
                service: service.name.clone(),
                hosts: Vec::new(),
                paths: vec!["/".to_owned()],
                timeout: defaults::ROUTE_TIMEOUT,
                idle_timeout: defaults::ROUTE_IDLE_TIMEOUT,
                max_body: defaults::ROUTE_MAX_BODY,
                max_header_fields: defaults::ROUTE_MAX_HEADER_FIELDS,
                hold: defaults::ROUTE_HOLD,
                slow_start: defaults::ROUTE_SLOW_START,
                tls: crate::schema::RouteTls::Off,
                hsts: None,
                rate_limit: None,
                allow: Vec::new(),
            })
            .collect();
    };
    let Some(table) = reader.table(
        value,
        "routes",
        "write `[routes.web]` followed by `hosts = [\"example.com\"]`",
    ) else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for (key, route_value) in table.iter() {
        let name: &str = key.get_ref();
        let section = format!("routes.{name}");
        if !services.iter().any(|service| service.name == name) {
            let names: Vec<&str> = services
                .iter()
                .map(|service| service.name.as_str())
                .collect();
            let help = match suggest(name, names.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!(
                    "routes are named after the service they serve: {}",
                    list(&names)
                ),
            };
            reader.invalid(
                key.span(),
                format!("`[{section}]` names no service"),
                "unknown service",
                help,
            );
            continue;
        }
        let Some(route_table) =
            reader.table(route_value, &section, "write `hosts = [\"example.com\"]`")
        else {
            continue;
        };
        reader.known_keys(route_table, ROUTE_KEYS, &section);
        let timeout = route_table
            .get("timeout")
            .and_then(|value| reader.positive_duration(value, &format!("{section}.timeout")))
            .unwrap_or(defaults::ROUTE_TIMEOUT);
        let idle_timeout = route_table
            .get("idle_timeout")
            .and_then(|value| reader.positive_duration(value, &format!("{section}.idle_timeout")))
            .unwrap_or(defaults::ROUTE_IDLE_TIMEOUT);
        let max_body = route_table
            .get("max_body")
            .and_then(|value| reader.byte_size(value, &format!("{section}.max_body")))
            .unwrap_or(defaults::ROUTE_MAX_BODY);
        let max_header_fields = route_table
            .get("max_header_fields")
            .and_then(|value| {
                reader.integer_in(value, &format!("{section}.max_header_fields"), 1..=10_000)
            })
            .map_or(defaults::ROUTE_MAX_HEADER_FIELDS, |n| n as u32);
        let hold = route_table
            .get("hold")
            .and_then(|value| {
                reader.duration_at_most(value, &format!("{section}.hold"), defaults::ROUTE_HOLD_MAX)
            })
            .unwrap_or(defaults::ROUTE_HOLD);
        let slow_start = route_table
            .get("slow_start")
            .and_then(|value| {
                reader.duration_at_most(
                    value,
                    &format!("{section}.slow_start"),
                    defaults::ROUTE_SLOW_START_MAX,
                )
            })
            .unwrap_or(defaults::ROUTE_SLOW_START);
        let rate_limit = route_table
            .get("rate_limit")
            .and_then(|value| crate::edge::rate_limit(reader, value, &section));
        let allow = route_table
            .get("allow")
            .map(|value| crate::edge::allow(reader, value, &section))
            .unwrap_or_default();
        let hosts = route_table
            .get("hosts")
            .and_then(|value| reader.string_array(value, &format!("{section}.hosts")))
            .unwrap_or_default();
        for host in &hosts {
            if let Err(reason) = check_host(host.get_ref()) {
                reader.invalid(
                    host.span(),
                    format!("`{}` is not a host name: {reason}", host.get_ref()),
                    "invalid host",
                    "write the host only, such as `logistix.example.com`",
                );
            }
        }
        let paths = match route_table.get("paths") {
            Some(value) => reader
                .string_array(value, &format!("{section}.paths"))
                .unwrap_or_default(),
            None => vec![toml::Spanned::new(route_value.span(), "/".to_owned())],
        };
        for path in &paths {
            if !path.get_ref().starts_with('/') {
                reader.invalid(
                    path.span(),
                    format!("route path `{}` must start with `/`", path.get_ref()),
                    "not a path prefix",
                    format!("write `\"/{}\"`", path.get_ref()),
                );
            }
        }
        let host_keys: Vec<String> = if hosts.is_empty() {
            vec!["*".to_owned()]
        } else {
            hosts
                .iter()
                .map(|host| host.get_ref().to_ascii_lowercase())
                .collect()
        };
        for host in &host_keys {
            for path in &paths {
                if !seen.insert((host.clone(), path.get_ref().clone())) {
                    reader.invalid(
                        path.span(),
                        format!(
                            "host `{host}` and path `{}` are routed twice",
                            path.get_ref()
                        ),
                        "duplicate route",
                        "each host and path prefix belongs to one route",
                    );
                }
            }
        }
        let (tls, hsts) = crate::route_tls::read(reader, route_table, &section, hosts.is_empty());
        routes.push(Route {
            tls,
            hsts,
            service: name.to_owned(),
            hosts: hosts
                .into_iter()
                .map(|host| host.into_inner().to_ascii_lowercase())
                .collect(),
            paths: paths.into_iter().map(toml::Spanned::into_inner).collect(),
            timeout,
            idle_timeout,
            max_body,
            max_header_fields,
            hold,
            slow_start,
            rate_limit,
            allow,
        });
    }
    routes
}

fn protocol(reader: &mut Reader, value: &Value<'_>, key_path: &str) -> Option<Protocol> {
    let text = reader.string(value, key_path)?;
    let parsed = Protocol::parse(&text);
    if parsed.is_none() {
        let help = match suggest(&text, Protocol::NAMES.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("accepted: {}", list(&Protocol::NAMES)),
        };
        reader.invalid(
            value.span(),
            format!("`{key_path}` is not a protocol: `{text}`"),
            "unknown protocol",
            help,
        );
    }
    parsed
}

/// A routed service without a health check would make zero-downtime switching a guess: refuse it.
fn require_health(reader: &mut Reader, root: &DeTable<'_>, services: &[Service], routes: &[Route]) {
    for service in services {
        if service.health.is_some() || !routes.iter().any(|route| route.service == service.name) {
            continue;
        }
        let service_value = root
            .get("services")
            .and_then(|value| value.get_ref().get(service.name.as_str()));
        // A misspelt `health` key is already reported with its suggestion; one error is enough.
        let misspelt = service_value
            .and_then(|value| value.get_ref().as_table())
            .is_some_and(|table| {
                table.keys().any(|key| {
                    key.get_ref() != "health"
                        && suggest(key.get_ref(), ["health"].into_iter()).is_some()
                })
            });
        if misspelt {
            continue;
        }
        let span = service_value.map_or(0..0, |value| value.span());
        let name = &service.name;
        if service.health_command.is_some() {
            reader.invalid(
                span,
                format!("service `{name}` receives traffic but its health check is a command"),
                "routed with a command check",
                format!("check a path that answers 200 instead, `health = {{ path = \"/health\" }}` under `[services.{name}]`: traffic follows what the proxy can check"),
            );
            continue;
        }
        reader.invalid(
            span,
            format!("service `{name}` receives traffic but has no health check"),
            "routed without a health check",
            format!("add `health = {{ path = \"/health\" }}` under `[services.{name}]`: Rollway only sends traffic to instances that pass it"),
        );
    }
}

/// Reads an `env` table: valid names, scalar values, well-formed `${NAME}` references.
pub(crate) fn env_table(
    reader: &mut Reader,
    value: &Value<'_>,
    key_path: &str,
) -> Vec<(String, String)> {
    let Some(table) = reader.table(value, key_path, "write `env = { NAME = \"value\" }`") else {
        return Vec::new();
    };
    let mut env = Vec::with_capacity(table.len());
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        if !is_env_name(name) {
            reader.invalid(
                key.span(),
                format!("`{name}` is not a valid variable name"),
                "invalid name",
                "accepted: letters, digits and `_`, not starting with a digit",
            );
            continue;
        }
        if RESERVED_ENV.contains(&name) {
            reader.invalid(
                key.span(),
                format!("`{name}` is set by Rollway for each instance"),
                "reserved variable",
                format!("remove `{name}`: each instance gets its own"),
            );
            continue;
        }
        let Some(text) = reader.scalar_text(value, &format!("{key_path}.{name}")) else {
            continue;
        };
        if let Err(reason) = references(&text) {
            reader.invalid(
                value.span(),
                format!("`{key_path}.{name}` has a broken reference: {reason}"),
                "broken reference",
                "write references as `${NAME}`, and a literal `$` as `$$`",
            );
            continue;
        }
        env.push((name.to_owned(), text));
    }
    env
}

fn alerts(reader: &mut Reader, value: &Value<'_>) -> Option<Alerts> {
    let table = reader.table(
        value,
        "alerts",
        "write `[alerts]` followed by `webhook = \"SLACK_WEBHOOK_URL\"`",
    )?;
    reader.known_keys(table, &["webhook"], "alerts");
    let webhook = table.get("webhook").and_then(|webhook_value| {
        let name = reader.string(webhook_value, "alerts.webhook")?;
        if name.contains("://") {
            reader.invalid(
                webhook_value.span(),
                "`alerts.webhook` holds a URL; it must name the secret that holds it",
                "a secret value in the manifest",
                "store the URL with `rollway secrets set SLACK_WEBHOOK_URL` and write `webhook = \"SLACK_WEBHOOK_URL\"`",
            );
            return None;
        }
        if !is_env_name(&name) {
            reader.invalid(webhook_value.span(), format!("`alerts.webhook` must name a secret, found `{name}`"), "not a secret name", "accepted: letters, digits and `_`, such as `SLACK_WEBHOOK_URL`");
            return None;
        }
        Some(name)
    });
    Some(Alerts { webhook })
}

/// Lowercase letters, digits and `-`, starting with a letter, at most 63 characters: the rule
/// for app and environment names (the agent's API checks names in paths with it too).
pub fn is_slug(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A slug that may also hold `_`.
pub(crate) fn is_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn check_host(host: &str) -> Result<(), &'static str> {
    if host.contains("://") {
        return Err("it has a scheme");
    }
    if host.is_empty() || host.len() > 253 {
        return Err("it must be 1 to 253 characters");
    }
    if host.contains('/') {
        return Err("it has a path; put paths in `paths`");
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err("its port is not a number from 0 to 65535");
    }
    if !name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    }) {
        return Err("labels use letters, digits and `-`, separated by dots");
    }
    Ok(())
}

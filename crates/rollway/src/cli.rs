//! The command line as clap sees it: every command, flag and help text, and nothing else.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand};
use client::wire::{ReleaseNumber, Strategy};

/// Boring deploys for small teams: health-gated, zero failed requests, rolled back by itself.
#[derive(Debug, Parser)]
#[command(
    name = "rollway",
    version,
    about,
    long_about = None,
    after_help = "Start with `rollway init` in your app folder, then `rollway check`.\nExit codes: 0 success, 1 deploy failed or rolled back, 2 usage or manifest error, 3 agent unreachable or token refused."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// How to reach an agent: flags, then environment, then the local agent of this user.
#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// The agent's API, such as `https://10.0.0.5:7443` (default: the local agent); plain
    /// `http://` only to a loopback address.
    #[arg(long, env = "ROLLWAY_AGENT", global = true)]
    pub agent: Option<String>,
    /// The agent's API certificate, `sha256:HEX` as `rollway agent` prints it: trusted and pinned
    /// (for CI, where no terminal can ask).
    #[arg(
        long,
        env = "ROLLWAY_AGENT_FINGERPRINT",
        global = true,
        value_name = "SHA256"
    )]
    pub agent_fingerprint: Option<String>,
    /// The API token (default: the local agent's admin token).
    #[arg(long, env = "ROLLWAY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented rollway.toml for the app in this folder.
    Init(InitArgs),
    /// Validate the manifest, show what differs between environments and what each one requires.
    Check(CheckArgs),
    /// Start a local agent if none runs, deploy this folder, print its URL.
    Up(DeployArgs),
    /// Deploy this folder, with live progress until it is done.
    Deploy(DeployArgs),
    /// Current release, instances and their state, traffic weights.
    Status(EnvArgs),
    /// Numbered release history.
    Releases(EnvArgs),
    /// Make an earlier release current again (the previous good one by default).
    Rollback(RollbackArgs),
    /// Move a canary on to its next step now.
    Promote(EnvArgs),
    /// Stop the running deployment; a canary leaves traffic at once.
    Abort(EnvArgs),
    /// Release a deployment held at its approval gate.
    Approve {
        /// The deployment's id (`rollway status` shows it).
        deployment: String,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Output of the app's instances.
    Logs(LogsArgs),
    /// The audit log.
    Events(EventsArgs),
    /// Database backups: list, create now, restore one.
    Backups {
        #[command(subcommand)]
        command: Option<BackupsCommand>,
        #[command(flatten)]
        target: EnvArgs,
    },
    /// The HTTPS routes' certificates: hosts, issuer, expiry, last renewal error; `renew HOST`.
    Certs(CertsArgs),
    /// The deploy lock: who holds it and since when; release a stale one (admin).
    Lock {
        #[command(subcommand)]
        command: Option<LockCommand>,
        #[command(flatten)]
        target: EnvArgs,
    },
    /// Maintenance mode: 503 and a page, except to `--allow` networks and the health check.
    #[command(subcommand)]
    Maintenance(MaintenanceCommand),
    /// Hold new requests (a database failover) until `rollway resume` or `--max`.
    Pause(PauseArgs),
    /// End a pause: the held requests go on.
    Resume(EnvArgs),
    /// Secrets of an environment: set (value from stdin), list (never values), unset.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// API tokens and their roles.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The registry the agent runs for the cluster: `ca` prints the certificate nodes trust.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Run the agent in the foreground.
    Agent(Box<AgentRunArgs>),
    /// Run the proxy in the foreground (the agent starts it; you rarely need this), or `upgrade` it.
    Proxy(ProxyRunArgs),
    /// Cron jobs of the current release: `list` (next runs), `runs NAME` (history), `run NAME`.
    Cron {
        #[command(subcommand)]
        command: Option<CronCommand>,
        #[command(flatten)]
        target: EnvArgs,
    },
    /// Run a command once in the current release's code, config and secrets; exits with its code.
    Run(RunArgs),
    /// Every app and environment the agent runs.
    Apps(AppsArgs),
    /// Stop an environment's instances and routes (admin); its releases, events and backups stay.
    Destroy(DestroyArgs),
    /// The environments of the app, previews with their base and expiry; destroy a preview.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
        #[command(flatten)]
        target: AppArgs,
    },
    /// Confine this process with Landlock, then run the command (how a non-root agent starts
    /// apps; not for people).
    #[command(hide = true)]
    Sandbox(SandboxArgs),
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The environment to deploy to (default: `development` for `up`, `production` for `deploy`).
    #[arg(long, short)]
    pub env: Option<String>,
    /// Override the manifest's strategy for this deploy.
    #[arg(long, value_parser = strategy_parser())]
    pub strategy: Option<Strategy>,
    /// A note kept with the release.
    #[arg(long, short)]
    pub message: Option<String>,
    /// Make (or deploy again) a preview environment over this declared environment; `--env`
    /// must be `preview-<slug>`.
    #[arg(long, value_name = "BASE", requires = "env")]
    pub from: Option<String>,
    /// How long the preview lives from this deploy (1m to 90d; default 72h).
    #[arg(long, value_name = "DURATION", requires = "from")]
    pub ttl: Option<String>,
    /// Return once the deployment has started.
    #[arg(long)]
    pub detach: bool,
    /// The app folder.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Print the final deployment as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[arg(long, short, default_value = "production", global = true)]
    pub env: String,
    /// The app (default: `app.name` of ./rollway.toml).
    #[arg(long, global = true)]
    pub app: Option<String>,
    /// Print data as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The release to go back to.
    #[arg(long)]
    pub to: Option<ReleaseNumber>,
    /// Return once the rollback has started.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// Lines per instance.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub lines: usize,
    /// Keep printing new lines.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events.
    #[arg(long, short)]
    pub follow: bool,
    /// How many of the latest events.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub lines: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Backups of the environment, newest first (the default).
    List {
        /// The sealed copies on `[backup] remote` instead of the agent's records.
        #[arg(long)]
        remote: bool,
    },
    /// A restore drill: the backup (default: the newest) restored into a scratch database,
    /// checked (integrity, row counts) and handed to `[backup] verify`; the live database is
    /// not touched.
    Verify {
        /// The backup's id, as `rollway backups` lists it (fetched from the remote if gone here).
        id: Option<String>,
    },
    /// Back up the current release's database now.
    Create,
    /// Restore a backup into the current release's database (admin; traffic is held meanwhile,
    /// and the live database is backed up first).
    Restore {
        /// The backup's id, as `rollway backups` lists it.
        id: String,
        /// Restore without asking (needed when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: Option<CertsCommand>,
    /// Only this environment's hosts (default: every environment).
    #[arg(long, short, global = true)]
    pub env: Option<String>,
    /// Print data as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Every certificate (the default).
    List,
    /// Renew a host's ACME certificate now; new connections get the new one, open ones keep theirs.
    Renew {
        /// The host, as `rollway certs` lists it.
        host: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceCommand {
    /// Answer 503 with the page (again: replaces the page and networks of a running maintenance).
    On {
        /// Shown on the default page (HTML-escaped).
        #[arg(long, conflicts_with = "page")]
        message: Option<String>,
        /// The app's own page: an `.html` file inside the app folder, at most 256 KiB.
        #[arg(long)]
        page: Option<PathBuf>,
        /// The app folder `--page` is inside of.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// A client network that still reaches the app, such as `203.0.113.0/24` (repeatable).
        #[arg(long)]
        allow: Vec<String>,
        /// `Retry-After` of the 503 (default 60s).
        #[arg(long, value_parser = duration_parser)]
        retry_after: Option<manifest::units::Duration>,
        #[command(flatten)]
        target: EnvArgs,
    },
    /// Serve the app again.
    Off {
        #[command(flatten)]
        target: EnvArgs,
    },
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The pause ends by itself after this (at most 5m); requests wait at most the proxy's queue
    /// bound (30s by default), then get 503.
    #[arg(long, default_value = "30s", value_parser = duration_parser)]
    pub max: manifest::units::Duration,
    #[command(flatten)]
    pub target: EnvArgs,
}

fn duration_parser(text: &str) -> Result<manifest::units::Duration, String> {
    text.parse()
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the lock, since when, until when (the default).
    Status,
    /// Clear the lock (admin); for a stale lock whose deployment is gone.
    Release,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Set a secret; the value is read from stdin, never from the command line.
    Set {
        /// The variable name the app reads, such as `JWT_SECRET`.
        name: String,
        #[command(flatten)]
        target: EnvArgs,
    },
    /// Names, versions and dates of the secrets set for an environment.
    List {
        #[command(flatten)]
        target: EnvArgs,
    },
    /// Unset a secret (earlier versions stay, for rollbacks).
    Unset {
        name: String,
        #[command(flatten)]
        target: EnvArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Print the agent's API certificate (PEM), checked against the pinned fingerprint, for
    /// `/etc/docker/certs.d/HOST:PORT/ca.crt` on every node.
    Ca {
        #[command(flatten)]
        agent: AgentArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; its value is shown once.
    Create {
        /// viewer < deployer < approver < admin, or `proxy`: a proxy that follows the agent
        /// (`rollway proxy --follow`), allowed nothing else.
        #[arg(long, value_parser = ["viewer", "deployer", "approver", "admin", "proxy"])]
        role: String,
        /// A name saying who or what uses it (`ci`, `alice`).
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// List tokens (never their values).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        agent: AgentArgs,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentRunArgs {
    /// `backup` or `restore` the agent's own state instead of running the agent.
    #[command(subcommand)]
    pub action: Option<AgentAction>,
    /// State directory (default: $ROLLWAY_STATE_DIR, else $XDG_STATE_HOME/rollway, else
    /// ~/.local/state/rollway; /var/lib/rollway for root).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Address of the control API. Beyond loopback it serves TLS only.
    #[arg(long, default_value = "127.0.0.1:7440")]
    pub api: std::net::SocketAddr,
    /// Serve the API over TLS on a loopback address too (beyond loopback it always is).
    #[arg(long)]
    pub api_tls: bool,
    /// The API's certificate chain (PEM, leaf first) instead of the self-signed one.
    #[arg(long, value_name = "FILE", requires = "api_key")]
    pub api_cert: Option<PathBuf>,
    /// The private key (PEM) of `--api-cert`.
    #[arg(long, value_name = "FILE", requires = "api_cert")]
    pub api_key: Option<PathBuf>,
    /// Address the proxy serves the apps on.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub proxy: std::net::SocketAddr,
    /// Where the proxy serves its own `/metrics` (Prometheus text), if anywhere.
    #[arg(long)]
    pub proxy_metrics: Option<std::net::SocketAddr>,
    /// Address the proxy serves the apps on over HTTPS (certificates per route: `tls` in the
    /// manifest); none by default.
    #[arg(long, value_name = "ADDR")]
    pub https: Option<std::net::SocketAddr>,
    /// The ACME directory for `tls = "auto"` routes: a URL, or `production` / `staging` (Let's
    /// Encrypt's).
    #[arg(long, value_name = "URL", default_value = "production")]
    pub acme_directory: String,
    /// The contact address given to the ACME server (expiry notices).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// Extra trust roots (PEM) for the ACME server's own HTTPS, for a private one (step-ca, Pebble).
    #[arg(long, value_name = "FILE")]
    pub acme_ca: Option<PathBuf>,
    /// The master key file, kept apart from the state directory (made when missing; default:
    /// `ROLLWAY_MASTER_KEY`, else `$CREDENTIALS_DIRECTORY/master.key`, else
    /// `/etc/rollway/master.key` as root or `$XDG_CONFIG_HOME/rollway/master.key`).
    #[arg(long, value_name = "FILE")]
    pub master_key: Option<PathBuf>,
    /// Back up the agent's own state on this schedule (`@daily`, `@hourly`, or five fields:
    /// minute hour day month weekday, in UTC), like `rollway agent backup`: to
    /// `ROLLWAY_BACKUP_REMOTE` (`ROLLWAY_BACKUP_ENDPOINT`, `ROLLWAY_BACKUP_REGION`) with the
    /// credentials in `ROLLWAY_BACKUP_ACCESS_KEY_ID` and `ROLLWAY_BACKUP_SECRET_ACCESS_KEY`;
    /// 14 kept.
    #[arg(long, value_name = "SCHEDULE")]
    pub state_backup_schedule: Option<String>,
    /// Run Rollway's proxy on the swarm too: a global service on the nodes labelled
    /// `rollway.ingress=true`, each serving the apps on this port of its node (needs
    /// `ROLLWAY_SWARM_REGISTRY`).
    #[arg(long, value_name = "PORT", env = "ROLLWAY_SWARM_INGRESS")]
    pub swarm_ingress: Option<u16>,
    /// With `--swarm-ingress`: the ingress nodes serve HTTPS on this port too, with the
    /// certificates of the agent's `--https` (followed with the routing; keys in memory only).
    #[arg(
        long,
        value_name = "PORT",
        env = "ROLLWAY_SWARM_INGRESS_HTTPS",
        requires = "swarm_ingress"
    )]
    pub swarm_ingress_https: Option<u16>,
    /// With `--swarm-ingress`: the agent's API as the ingress nodes reach it (default: `--api`'s URL).
    #[arg(long, value_name = "URL", env = "ROLLWAY_SWARM_INGRESS_AGENT")]
    pub swarm_ingress_agent: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AgentAction {
    /// Snapshot the agent's state (store, artifacts, API certificate) to an S3-compatible remote,
    /// sealed with the master key. Credentials come from `ROLLWAY_BACKUP_ACCESS_KEY_ID` and
    /// `ROLLWAY_BACKUP_SECRET_ACCESS_KEY`, never arguments.
    Backup(AgentStateArgs),
    /// Restore the newest (or `--id`) snapshot into a new, empty state directory, given the
    /// master key; then start the agent on it.
    Restore {
        #[command(flatten)]
        state: AgentStateArgs,
        /// The snapshot's id (default: the newest).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AgentStateArgs {
    /// State directory (default: $ROLLWAY_STATE_DIR, else $XDG_STATE_HOME/rollway, else
    /// ~/.local/state/rollway; /var/lib/rollway for root).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Where snapshots go: `s3://BUCKET/PREFIX`.
    #[arg(long, value_name = "S3_URL", env = "ROLLWAY_BACKUP_REMOTE")]
    pub remote: String,
    /// The S3 endpoint (default: AWS S3's for `--region`).
    #[arg(long, value_name = "URL", env = "ROLLWAY_BACKUP_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, default_value = "us-east-1", env = "ROLLWAY_BACKUP_REGION")]
    pub region: String,
    /// The master key file (same default as `rollway agent`); never made by these commands.
    #[arg(long, value_name = "FILE")]
    pub master_key: Option<PathBuf>,
    /// Print data as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProxyRunArgs {
    #[command(subcommand)]
    pub action: Option<ProxyAction>,
    /// The proxy's state directory (routes.json, control socket).
    #[arg(long, required = true)]
    pub state: Option<PathBuf>,
    /// Address to serve the apps on.
    #[arg(long, required = true)]
    pub listen: Option<std::net::SocketAddr>,
    /// Take over from the proxy running on `--state` (a hot restart): its listeners, counters and
    /// sockets; it finishes what it has in flight and exits.
    #[arg(long)]
    pub takeover: bool,
    /// Where to serve `/metrics` (Prometheus text), if anywhere.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Address to serve the apps on over HTTPS (certificates come from the agent).
    #[arg(long, value_name = "ADDR")]
    pub https: Option<std::net::SocketAddr>,
    /// Take the data listeners from the Unix socket on stdin instead of binding `--listen` (the agent
    /// holds them, so they outlive this process).
    #[arg(long, hide = true)]
    pub listeners_on_stdin: bool,
    /// A proxy in front whose forwarding headers are believed (`10.0.0.0/8`, `::1`); repeatable, or a
    /// comma-separated list in the environment (which the proxy an agent starts inherits). From any other
    /// peer, `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are dropped.
    #[arg(
        long = "trusted-proxy",
        value_name = "ADDR_OR_NETWORK",
        env = "ROLLWAY_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<proxy::TrustedProxy>,
    /// Follow the agent at this URL (`https://HOST:PORT`, or `http://` on loopback): take its
    /// desired routing, report counters to it, keep serving the last routing while it is away. Serves
    /// nothing before it has a routing (the agent's, or the one saved in `--state`).
    #[arg(long, value_name = "AGENT_URL", env = "ROLLWAY_PROXY_FOLLOW")]
    pub follow: Option<String>,
    /// With `--follow`: the file holding a token of role `proxy` (a Swarm secret such as
    /// `/run/secrets/rollway-proxy-token`); never on the command line.
    #[arg(long, value_name = "FILE", env = "ROLLWAY_PROXY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With `--follow https://…`: the SHA-256 fingerprint of the agent's API certificate.
    #[arg(long, value_name = "SHA256", env = "ROLLWAY_FOLLOW_FINGERPRINT")]
    pub follow_fingerprint: Option<String>,
    /// With `--follow`: this proxy's name in its reports (default: the host name).
    #[arg(long, value_name = "ID", env = "ROLLWAY_PROXY_ID")]
    pub id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProxyAction {
    /// Hand the listening sockets to a new proxy of the agent's binary and drain the old one: no
    /// connection is refused and no request in flight is cut (admin).
    Upgrade {
        /// Print the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentArgs,
    },
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// A folder the command may read, write and run files in (repeatable).
    #[arg(long = "allow-rw", value_name = "DIR")]
    pub allow_rw: Vec<PathBuf>,
    /// A folder or file the command may read and run, not change (repeatable).
    #[arg(long = "allow-ro", value_name = "PATH")]
    pub allow_ro: Vec<PathBuf>,
    /// A folder or file to cover up for the command, best effort (repeatable).
    #[arg(long = "hide", value_name = "PATH")]
    pub hide: Vec<PathBuf>,
    /// Only try the confinement and print what works (`abi N`, `hiding ok|REASON`).
    #[arg(long)]
    pub probe: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The app folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Replace an existing rollway.toml (with `--ci`: the existing workflow instead).
    #[arg(long)]
    pub force: bool,
    /// Write a CI workflow that tests every push and deploys (`github`:
    /// `.github/workflows/deploy.yml`); the manifest too when there is none.
    #[arg(long, value_enum, value_name = "PROVIDER")]
    pub ci: Option<Ci>,
}

/// `rollway init --ci`: the CI systems a workflow can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ci {
    /// GitHub Actions.
    Github,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check one environment (default: every declared environment).
    #[arg(long, short)]
    pub env: Option<String>,
    /// The manifest to check.
    #[arg(long, short, default_value = "rollway.toml")]
    pub file: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `--strategy`: the wire's strategies, by the names the manifest and the API use.
fn strategy_parser() -> impl clap::builder::TypedValueParser<Value = Strategy> {
    PossibleValuesParser::new(Strategy::ALL.map(Strategy::as_str))
        .try_map(|text| text.parse::<Strategy>())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn rollback_to(to: &str) -> Result<Option<ReleaseNumber>, clap::Error> {
        let to = format!("--to={to}");
        let cli = Cli::try_parse_from(["rollway", "rollback", "--app", "demo", to.as_str()])?;
        match cli.command {
            Command::Rollback(args) => Ok(args.to),
            other => panic!("`rollback` parsed as {other:?}"),
        }
    }

    #[test]
    fn rollback_to_takes_a_release_number_and_refuses_anything_else() {
        assert_eq!(rollback_to("3").expect("3"), Some(ReleaseNumber::new(3)));
        for wrong in ["0", "r3", "-1", "three"] {
            let error = rollback_to(wrong).expect_err(wrong).to_string();
            assert!(
                error.contains("whole number of at least 1"),
                "{wrong}: {error}"
            );
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// The jobs, their schedules and next runs (the default).
    List,
    /// A job's runs, newest first: tick, trigger, release, state, exit code, duration.
    Runs {
        name: String,
        /// Print each run's output too.
        #[arg(long)]
        output: bool,
        /// How many runs, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Run a job now, in the current release.
    Run { name: String },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The service whose environment the command gets (default: the first service).
    #[arg(long, short)]
    pub service: Option<String>,
    /// An interactive terminal (`python manage.py shell`): needs one here.
    #[arg(long, short)]
    pub interactive: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Every environment of the app on the agent, previews with their base and expiry.
    List,
    /// Destroy a preview now (what `rollway destroy` does; deployer role); releases and events stay.
    Destroy { name: String },
}

#[derive(Debug, Args)]
pub struct AppArgs {
    /// The app (default: `app.name` of ./rollway.toml).
    #[arg(long, global = true)]
    pub app: Option<String>,
    /// Print data as JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct AppsArgs {
    /// Print data as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The app's name, to destroy without being asked (needed when stdin is not a terminal).
    #[arg(long, value_name = "APP")]
    pub confirm: Option<String>,
}

//! One module per command, each with `run(args, printer) -> anyhow::Result<ExitStatus>`.

pub mod agent;
pub mod agent_state;
pub mod backups;
pub mod backups_remote;
pub mod certs;
pub mod check;
pub mod connect;
pub mod deploy;
pub mod edge;
pub mod environments;
pub mod init;
pub mod inspect;
pub mod lock;
pub mod proxy;
pub mod proxy_follow;
pub mod registry;
pub mod rollback;
pub mod sandbox;
pub mod secrets;
pub mod signal;
pub mod tokens;
pub mod up;
pub mod workloads;

use client::ClientError;

use crate::ExitStatus;
use crate::printer::Printer;

/// Prints an agent error and chooses its exit code: 3 when the agent is unreachable or refuses the
/// token, 2 when it refused the request as invalid, 1 otherwise.
pub fn client_error(printer: &Printer, error: ClientError) -> anyhow::Result<ExitStatus> {
    printer.error(&error.to_string());
    let status = match &error {
        ClientError::Unreachable { .. } => {
            printer.hint("is the agent running? `rollway up` starts a local one");
            ExitStatus::Unreachable
        }
        ClientError::Unauthorized { .. } | ClientError::Forbidden { .. } => {
            printer.hint(
                "pass a token with `--token` or `ROLLWAY_TOKEN`; `rollway tokens create` makes one",
            );
            ExitStatus::Unreachable
        }
        ClientError::Api { status, code, .. } => {
            if code == "locked" {
                printer.hint("wait for it to finish, or watch it with `rollway events -f`");
            }
            if (400..500).contains(status) {
                ExitStatus::Usage
            } else {
                ExitStatus::Failure
            }
        }
        ClientError::CertificateChanged { url, .. } => {
            let authority = client::http::AgentUrl::parse(url)
                .map(|target| target.authority)
                .unwrap_or_else(|_| url.clone());
            printer.hint(&format!(
                "check on the agent's server which certificate it serves (`rollway agent` prints it as `api certificate:`); if it was replaced on purpose (new `--api-cert`, a new state directory), update the pin: remove the line `{authority}` from `{}` or pass `--agent-fingerprint` with the new one; if not, something between you and the agent is intercepting the connection",
                client::pin::KnownAgents::default_path().display()
            ));
            ExitStatus::Unreachable
        }
        ClientError::NotPinned { .. } => {
            printer
                .hint("pass `--agent-fingerprint sha256:...` or set `ROLLWAY_AGENT_FINGERPRINT`");
            ExitStatus::Unreachable
        }
        ClientError::PlainHttpBeyondLoopback { .. } => {
            printer.hint("an agent beyond loopback serves TLS only: use `https://HOST:PORT`");
            ExitStatus::Usage
        }
        ClientError::Decode { .. }
        | ClientError::InvalidUrl(_)
        | ClientError::Tls { .. }
        | ClientError::LineTooLong { .. }
        | ClientError::CertificateUnchecked { .. } => ExitStatus::Failure,
    };
    Ok(status)
}

/// `--app`, else `app.name` of ./rollway.toml.
pub fn app_name(explicit: Option<&str>, printer: &Printer) -> Option<String> {
    if let Some(app) = explicit {
        return Some(app.to_owned());
    }
    match manifest::load(std::path::Path::new(manifest::FILE_NAME)) {
        Ok(manifest) => Some(manifest.shared.app.name),
        Err(_) => {
            printer.error("no app given and no valid `rollway.toml` here");
            printer.hint("pass `--app NAME`, or run the command in the app folder");
            None
        }
    }
}

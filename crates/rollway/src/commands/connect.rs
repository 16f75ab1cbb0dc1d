//! Finding the agent: `--agent`/`ROLLWAY_AGENT` and `--token`/`ROLLWAY_TOKEN`, else the local
//! agent of this user (its `agent.json` and `admin.token`); and trusting it: an `https://` agent
//! by the fingerprint pinned in `known_agents` (or given, or accepted on a terminal), plain
//! `http://` to a loopback address only.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

use client::Client;
use client::http::AgentUrl;
use client::local;
use client::pin::{Fingerprint, KnownAgents};

use crate::cli::AgentArgs;

/// An agent could not be found or reached: exit code 3, with a hint.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NoAgent {
    pub message: String,
    pub hint: String,
}

pub fn client(args: &AgentArgs) -> Result<Client, NoAgent> {
    let state_dir = local::default_state_dir();
    let local_agent = local::read_agent(&state_dir);
    let url = match (&args.agent, &local_agent) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(agent)) => agent.api.clone(),
        (None, None) => {
            return Err(NoAgent {
                message: format!("no agent runs for this user (nothing in `{}`)", state_dir.display()),
                hint: "start one with `rollway up` in your app folder, or `rollway agent`; or pass `--agent URL`".to_owned(),
            });
        }
    };
    let token = args
        .token
        .clone()
        .or_else(|| local::read_admin_token(&state_dir));
    let url_error = |error: client::ClientError| NoAgent {
        message: error.to_string(),
        hint: "pass `--agent https://HOST:PORT` (plain `http://` only to a loopback address)"
            .to_owned(),
    };
    let target = AgentUrl::parse(&url).map_err(url_error)?;
    if !target.tls {
        return Client::new(&url, token).map_err(|error| NoAgent {
            message: error.to_string(),
            hint: format!(
                "an agent beyond loopback serves TLS only: use `--agent https://{}`",
                target.authority
            ),
        });
    }
    let local_pin = local_agent
        .filter(|agent| agent.api.trim_end_matches('/') == url)
        .and_then(|agent| agent.fingerprint);
    let pin = match local_pin {
        Some(pin) => pin,
        None => pin_for(args, &url, &target)?,
    };
    Client::with_pin(&url, token, Some(pin)).map_err(url_error)
}

/// The fingerprint to trust for `url`: `--agent-fingerprint` (pinned when nothing was), else the
/// pin in `known_agents`, else the one the agent presents, accepted by a person on a terminal.
fn pin_for(args: &AgentArgs, url: &str, target: &AgentUrl) -> Result<Fingerprint, NoAgent> {
    let path = KnownAgents::default_path();
    let mut known = KnownAgents::load(&path).map_err(|error| NoAgent {
        message: error.to_string(),
        hint: format!(
            "fix or remove that line of `{}` (one `HOST:PORT sha256:HEX` per line)",
            path.display()
        ),
    })?;
    if let Some(given) = &args.agent_fingerprint {
        let given = given.parse::<Fingerprint>().map_err(|error| NoAgent {
            message: error.to_string(),
            hint: "copy the `api certificate:` line `rollway agent` printed on the server, or `api_fingerprint` of `GET /v1/agent`".to_owned(),
        })?;
        if known.get(&target.authority).is_none() {
            // Best effort: a read-only config folder (some CI runners) must not fail the command.
            let _ = known.insert(&target.authority, given);
        }
        return Ok(given);
    }
    if let Some(pinned) = known.get(&target.authority) {
        return Ok(pinned);
    }
    let not_known = || {
        NoAgent {
        message: format!(
            "the agent at `{url}` is not known yet: no certificate fingerprint is pinned for `{}` in `{}`",
            target.authority,
            path.display()
        ),
        hint: "pass `--agent-fingerprint sha256:...` or set `ROLLWAY_AGENT_FINGERPRINT` (`rollway agent` prints it on the server as `api certificate:`); on a terminal, rollway shows it and asks".to_owned(),
    }
    };
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Err(not_known());
    }
    let presented = probe(url).map_err(|error| NoAgent {
        message: error.to_string(),
        hint: "is the agent running, and is the address right?".to_owned(),
    })?;
    let mut stderr = std::io::stderr().lock();
    let _ = write!(
        stderr,
        "The agent at `{url}` presents the certificate\n  {presented}\nCompare it with the `api certificate:` line `rollway agent` printed on the server.\nTrust it and remember it in `{}`? [y/N] ",
        path.display()
    );
    let _ = stderr.flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        return Err(NoAgent {
            message: format!("the certificate of `{url}` was not trusted"),
            hint: "pin it with `--agent-fingerprint sha256:...` once you have checked it on the server".to_owned(),
        });
    }
    known
        .insert(&target.authority, presented)
        .map_err(|error| NoAgent {
            message: error.to_string(),
            hint: "pass `--agent-fingerprint` instead of pinning it in a file".to_owned(),
        })?;
    Ok(presented)
}

/// The fingerprint the agent at `url` presents (a refused handshake: nothing is sent). Runs on a
/// runtime of its own, in a thread, since callers may already be inside one.
fn probe(url: &str) -> Result<Fingerprint, client::ClientError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| client::ClientError::Unreachable {
                        url: url.to_owned(),
                        source: Box::new(error),
                    })?;
                runtime.block_on(Client::probe_fingerprint(url))
            })
            .join()
            .unwrap_or_else(|_| Err(client::ClientError::InvalidUrl(url.to_owned())))
    })
}

/// The client, or `None` after telling the user why there is none and what to do.
pub fn client_or_report(args: &AgentArgs, printer: &crate::printer::Printer) -> Option<Client> {
    match client(args) {
        Ok(client) => Some(client),
        Err(no_agent) => {
            printer.error(&no_agent.message);
            printer.hint(&no_agent.hint);
            None
        }
    }
}

pub fn state_dir() -> PathBuf {
    local::default_state_dir()
}

//! Finding the agent: `--agent`/`ROLLWAY_AGENT` and `--token`/`ROLLWAY_TOKEN`, else the local
//! agent of this user (its `agent.json` and `admin.token`).

use std::path::PathBuf;

use client::Client;
use client::local;

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
        (Some(url), _) => url.clone(),
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
    Client::new(&url, token).map_err(|error| NoAgent {
        message: error.to_string(),
        hint: "pass `--agent http://HOST:PORT`".to_owned(),
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

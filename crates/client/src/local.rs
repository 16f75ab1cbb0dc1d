//! The local agent of this user: where its state lives and how a CLI on the same machine finds it.
//!
//! The agent writes `agent.json` (its API and proxy addresses) and `admin.token` (0600) into its
//! state directory; `rollway` commands without `--agent` read them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File names inside the state directory.
pub const AGENT_FILE: &str = "agent.json";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What the running agent tells local clients about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAgent {
    /// `http://127.0.0.1:7440` (or `https://` when the API serves TLS)
    pub api: String,
    /// `127.0.0.1:7480`
    pub proxy: String,
    pub pid: u32,
    /// The API certificate's fingerprint when it serves TLS: a CLI of the same user trusts it
    /// from this file (which only this user can read) without asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::pin::Fingerprint>,
}

/// `$ROLLWAY_STATE_DIR`, else `$XDG_STATE_HOME/rollway`, else `~/.local/state/rollway`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROLLWAY_STATE_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("rollway");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/rollway")
}

/// The agent file of `state_dir`, when present and readable.
pub fn read_agent(state_dir: &Path) -> Option<LocalAgent> {
    let text = std::fs::read_to_string(state_dir.join(AGENT_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The admin token of `state_dir`, when present.
pub fn read_admin_token(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state_dir.join(ADMIN_TOKEN_FILE)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

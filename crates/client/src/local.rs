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

/// `$ROLLWAY_STATE_DIR`, else `$XDG_STATE_HOME/rollway`, else `~/.local/state/rollway`; for root,
/// [`ROOT_STATE_DIR`] instead of the home folder (unless an agent's state is already there).
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROLLWAY_STATE_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("rollway");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let in_home = home.join(".local/state/rollway");
    if runs_as_root() && !in_home.exists() {
        return PathBuf::from(ROOT_STATE_DIR);
    }
    in_home
}

/// Where root's agent keeps its state by default. An agent run by root runs each app as a user of
/// its own, which must reach the app's release folder inside the state folder: root's home is private
/// (mode 0700 on Debian and most systems), so a state folder there made every release command and
/// instance fail with "Permission denied".
pub const ROOT_STATE_DIR: &str = "/var/lib/rollway";

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn runs_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
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

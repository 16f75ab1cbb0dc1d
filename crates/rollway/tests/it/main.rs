//! End-to-end tests of the `rollway` binary: what a user types and what they see.

mod agent;
mod agent_state_schedule;
mod api_tls;
mod apps;
mod backup_remote;
mod check;
mod ci;
mod containers;
mod dashboard;
mod edge;
mod frame;
mod grpc;
mod ingress;
mod init;
mod isolation;
mod monitoring;
mod previews;
mod progressive;
mod release_phase;
mod robust;
mod swarm;
mod swarm_nodes;
mod tls;
mod transcripts;
mod upgrade;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::Output;

pub fn rollway(dir: &Path, args: &[&str]) -> Output {
    testkit::cli::run(Path::new(env!("CARGO_BIN_EXE_rollway")), dir, args)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A transcript with the temporary directory replaced by `[TEMP]`.
pub fn transcript(output: &Output, temp: &Path) -> String {
    let temp = temp.display().to_string();
    testkit::cli::transcript(output, &[(&temp, "[TEMP]")])
}

//! Running the real `rollway` binary in a test and rendering what it did as one transcript.
//!
//! The transcript (`exit_code` / stdout / stderr) is what CLI snapshot tests compare; volatile
//! parts (temporary directories) are replaced so that snapshots stay stable.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `binary` with `args` in `dir`, without colour and with stdin closed.
pub fn run(binary: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("ROLLWAY_AGENT")
        .env_remove("ROLLWAY_TOKEN")
        // Never the developer's own local agent: a state dir of the test's own, empty.
        .env("ROLLWAY_STATE_DIR", dir.join(".rollway-test-state"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run `{}`: {error}", binary.display()))
}

/// `exit_code: N` then stdout and stderr, with each `(from, to)` replacement applied.
pub fn transcript(output: &Output, replacements: &[(&str, &str)]) -> String {
    let mut text = format!(
        "exit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        output
            .status
            .code()
            .map_or_else(|| "signal".to_owned(), |code| code.to_string()),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    for (from, to) in replacements {
        if !from.is_empty() {
            text = text.replace(from, to);
        }
    }
    text
}

//! `rollway up`: the embedded default. Starts a local agent for this user when none answers, then
//! deploys the folder like `rollway deploy`.

use std::time::Duration;

use client::Client;
use client::local;

use crate::commands::connect::NoAgent;
use crate::printer::Printer;

/// The local agent's client, starting `rollway agent` in the background when none answers.
pub async fn ensure_local_agent(printer: &Printer) -> Result<Client, NoAgent> {
    let state_dir = local::default_state_dir();
    if let Some(agent) = local::read_agent(&state_dir)
        && let Ok(client) = Client::with_pin(
            &agent.api,
            local::read_admin_token(&state_dir),
            agent.fingerprint,
        )
        && client.healthz().await.is_ok()
    {
        return Ok(client);
    }
    let fail = |message: String| NoAgent {
        message,
        hint: format!(
            "run `rollway agent --state {}` in a terminal to see why",
            state_dir.display()
        ),
    };
    std::fs::create_dir_all(&state_dir)
        .map_err(|error| fail(format!("cannot create `{}`: {error}", state_dir.display())))?;
    let exe = std::env::current_exe()
        .map_err(|error| fail(format!("cannot find the rollway binary: {error}")))?;
    let log_path = state_dir.join("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| fail(format!("cannot open `{}`: {error}", log_path.display())))?;
    let log_err = log.try_clone().map_err(|error| fail(error.to_string()))?;
    let _ = std::fs::remove_file(state_dir.join(local::AGENT_FILE));
    let mut command = std::process::Command::new(exe);
    command
        .arg("agent")
        .arg("--state")
        .arg(&state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // Its own process group, so it outlives this command and the terminal's Ctrl-C.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .map_err(|error| fail(format!("cannot start the agent: {error}")))?;
    drop(child);
    printer.status(
        "Starting",
        &format!(
            "a local agent (state in `{}`, log in `{}`)",
            state_dir.display(),
            log_path.display()
        ),
    );
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(agent) = local::read_agent(&state_dir)
            && let Ok(client) = Client::with_pin(
                &agent.api,
                local::read_admin_token(&state_dir),
                agent.fingerprint,
            )
            && client.healthz().await.is_ok()
        {
            printer.status(
                "Started",
                &format!(
                    "agent at {} serving apps on http://{}",
                    agent.api, agent.proxy
                ),
            );
            return Ok(client);
        }
    }
    Err(fail(format!(
        "the local agent did not start within 30s; see `{}`",
        log_path.display()
    )))
}

//! `rollway proxy upgrade`: asks the agent to hand its proxy's listening sockets to a new proxy of the
//! agent's binary (a hot restart). Running the proxy itself is `agent::run_proxy`.

use crate::ExitStatus;
use crate::cli::AgentArgs;
use crate::commands::{client_error, connect};
use crate::printer::Printer;

pub fn upgrade(agent: &AgentArgs, json: bool, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(client) = connect::client_or_report(agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let upgraded = match client.upgrade_proxy().await {
            Ok(upgraded) => upgraded,
            Err(error) => return client_error(&printer, error),
        };
        if json {
            printer.data(&serde_json::to_string_pretty(&upgraded)?)?;
            return Ok(ExitStatus::Success);
        }
        let previous = upgraded
            .previous_pid
            .map(|pid| format!("pid {pid}"))
            .unwrap_or_else(|| "the previous proxy".to_owned());
        let now = upgraded
            .proxy
            .pid
            .map(|pid| format!("pid {pid}"))
            .unwrap_or_else(|| "a new proxy".to_owned());
        printer.status(
            "Upgraded",
            &format!(
                "the proxy on {}: {now} took the listeners; {previous} finishes what it has in flight and exits",
                upgraded.proxy.listen
            ),
        );
        Ok(ExitStatus::Success)
    })
}

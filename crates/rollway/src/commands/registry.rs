//! `rollway registry ca`: the certificate the nodes' engines trust to pull from the agent's
//! registry, printed only after it was checked to be the one the agent presented (and the pin
//! vouched for). It installs nothing: the nodes are the user's.

use crate::ExitStatus;
use crate::cli::RegistryCommand;
use crate::commands::{client_error, connect};
use crate::printer::Printer;

pub fn run(command: &RegistryCommand, printer: Printer) -> anyhow::Result<ExitStatus> {
    let RegistryCommand::Ca { agent } = command;
    let Some(client) = connect::client_or_report(agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let pem = match client.api_certificate().await {
            Ok(pem) => pem,
            Err(error) => return client_error(&printer, error),
        };
        printer.data(pem.trim_end())?;
        let authority = client::http::AgentUrl::parse(client.base())
            .map(|target| target.authority)
            .unwrap_or_else(|_| "HOST:PORT".to_owned());
        printer.hint(&format!(
            "on every node: `mkdir -p /etc/docker/certs.d/{authority}` and save this as `/etc/docker/certs.d/{authority}/ca.crt` (the registry's address, `ROLLWAY_REGISTRY_ADDRESS` if set)"
        ));
        Ok(ExitStatus::Success)
    })
}

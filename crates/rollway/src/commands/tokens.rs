//! `rollway tokens create|list|revoke`.

use client::wire::TokenRequest;

use crate::ExitStatus;
use crate::cli::TokensCommand;
use crate::commands::{client_error, connect};
use crate::printer::Printer;

pub fn run(command: &TokensCommand, printer: Printer) -> anyhow::Result<ExitStatus> {
    let agent = match command {
        TokensCommand::Create { agent, .. }
        | TokensCommand::List { agent, .. }
        | TokensCommand::Revoke { agent, .. } => agent,
    };
    let Some(client) = connect::client_or_report(agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        match command {
            TokensCommand::Create {
                role, name, json, ..
            } => {
                let created = match client
                    .create_token(&TokenRequest {
                        name: name.clone(),
                        role: role.clone(),
                    })
                    .await
                {
                    Ok(created) => created,
                    Err(error) => return client_error(&printer, error),
                };
                if *json {
                    printer.data(&serde_json::to_string_pretty(&created)?)?;
                } else {
                    printer.status(
                        "Created",
                        &format!(
                            "token `{}` ({}, id {}); its value is shown once:",
                            created.name, created.role, created.id
                        ),
                    );
                    printer.data(&created.token)?;
                }
            }
            TokensCommand::List { json, .. } => {
                let tokens = match client.tokens().await {
                    Ok(tokens) => tokens,
                    Err(error) => return client_error(&printer, error),
                };
                if *json {
                    printer.data(&serde_json::to_string_pretty(&tokens)?)?;
                } else {
                    let mut out = format!(
                        "{:<24} {:<16} {:<9} {:<24} state\n",
                        "id", "name", "role", "created"
                    );
                    for token in &tokens {
                        out.push_str(&format!(
                            "{:<24} {:<16} {:<9} {:<24} {}\n",
                            token.id,
                            token.name,
                            token.role,
                            agent::deploy::start::format_time(token.created_at),
                            if token.revoked { "revoked" } else { "active" }
                        ));
                    }
                    printer.data(&out)?;
                }
            }
            TokensCommand::Revoke { id, .. } => {
                if let Err(error) = client.revoke_token(id).await {
                    return client_error(&printer, error);
                }
                printer.status("Revoked", &format!("token {id}"));
            }
        }
        Ok(ExitStatus::Success)
    })
}

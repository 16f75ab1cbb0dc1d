//! `rollway certs [--env E]` and `rollway certs renew HOST`.

use crate::ExitStatus;
use crate::cli::{CertsArgs, CertsCommand};
use crate::commands::{client_error, connect};
use crate::printer::Printer;

pub fn run(args: &CertsArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(client) = connect::client_or_report(&args.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        match args.command.as_ref().unwrap_or(&CertsCommand::List) {
            CertsCommand::List => {
                let certs = match client.certs(args.env.as_deref()).await {
                    Ok(certs) => certs,
                    Err(error) => return client_error(&printer, error),
                };
                if args.json {
                    printer.data(&serde_json::to_string_pretty(&certs)?)?;
                    return Ok(ExitStatus::Success);
                }
                if certs.is_empty() {
                    printer.status(
                        "Certificates",
                        "none yet (routes with `tls` get them at deploy)",
                    );
                    return Ok(ExitStatus::Success);
                }
                let mut out = format!(
                    "{:<32} {:<20} {:<6} {:<24} {:<21} last renewal error\n",
                    "host", "app/env", "source", "issuer", "expires"
                );
                for cert in &certs {
                    out.push_str(&format!(
                        "{:<32} {:<20} {:<6} {:<24} {:<21} {}\n",
                        cert.host,
                        format!("{}/{}", cert.app, cert.environment),
                        match cert.source {
                            client::wire::CertSourceView::Acme => "acme",
                            client::wire::CertSourceView::Given => "given",
                        },
                        cert.issuer,
                        agent::certs::format_ms(cert.not_after),
                        cert.last_error.as_deref().unwrap_or("-")
                    ));
                }
                printer.data(&out)?;
            }
            CertsCommand::Renew { host } => match client.renew_cert(host).await {
                Ok(cert) => {
                    if args.json {
                        printer.data(&serde_json::to_string_pretty(&cert)?)?;
                    }
                    printer.status(
                        "Renewed",
                        &format!(
                            "the certificate for {} (from {}, valid until {})",
                            cert.host,
                            cert.issuer,
                            agent::certs::format_ms(cert.not_after)
                        ),
                    );
                }
                Err(error) => return client_error(&printer, error),
            },
        }
        Ok(ExitStatus::Success)
    })
}

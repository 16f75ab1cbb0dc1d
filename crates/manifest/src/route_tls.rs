//! A route's `tls` and `hsts` keys: `tls = "auto" | "off" | { cert = "SECRET", key = "SECRET" }`,
//! `hsts = "1y"`.

use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;
use crate::read::Reader;
use crate::schema::RouteTls;
use crate::units::Duration;

const GIVEN_KEYS: &[&str] = &["cert", "key"];
const HELP: &str = "write `tls = \"auto\"` (a certificate from ACME), `tls = \"off\"`, or `tls = { cert = \"CERT_SECRET\", key = \"KEY_SECRET\" }` (PEMs in secrets of the environment)";

/// Reads `tls` and `hsts` of `[section]`; `any_host` when the route has no `hosts` (a certificate
/// needs a host name).
pub(crate) fn read(
    reader: &mut Reader,
    table: &DeTable<'_>,
    section: &str,
    any_host: bool,
) -> (RouteTls, Option<Duration>) {
    let key_path = format!("{section}.tls");
    let tls = match table.get("tls") {
        None => RouteTls::Off,
        Some(value) => match value.get_ref() {
            DeValue::String(text) => match text.as_ref() {
                "auto" => RouteTls::Auto,
                "off" => RouteTls::Off,
                other => {
                    reader.error(
                        Diagnostic::new(
                            value.span(),
                            format!("`{key_path}` is not `auto` or `off`: `{other}`"),
                        )
                        .label("unknown TLS mode")
                        .help(HELP),
                    );
                    RouteTls::Off
                }
            },
            DeValue::Table(given) => {
                reader.known_keys(given, GIVEN_KEYS, &key_path);
                let mut name = |key: &str| -> Option<String> {
                    match given.get(key) {
                        Some(value) => reader.nonempty_string(value, &format!("{key_path}.{key}")),
                        None => {
                            reader.error(
                                Diagnostic::new(
                                    value.span(),
                                    format!("`{key_path}` has no `{key}`"),
                                )
                                .label(format!("`{key}` missing"))
                                .help(HELP),
                            );
                            None
                        }
                    }
                };
                let (cert, key) = (name("cert"), name("key"));
                match (cert, key) {
                    (Some(cert), Some(key)) => RouteTls::Given { cert, key },
                    _ => RouteTls::Off,
                }
            }
            _ => {
                reader.error(
                    Diagnostic::new(
                        value.span(),
                        format!("`{key_path}` must be a string or a table"),
                    )
                    .label("wrong type")
                    .help(HELP),
                );
                RouteTls::Off
            }
        },
    };
    if tls.is_on()
        && any_host
        && let Some(value) = table.get("tls")
    {
        reader.error(
            Diagnostic::new(
                value.span(),
                format!("`{key_path}` needs `hosts`: a certificate is for named hosts"),
            )
            .label("no host to certify")
            .help(format!("add `hosts = [\"example.com\"]` under [{section}]")),
        );
    }
    let hsts = table.get("hsts").and_then(|value| {
        let hsts = reader.positive_duration(value, &format!("{section}.hsts"))?;
        if !tls.is_on() {
            reader.error(
                Diagnostic::new(
                    value.span(),
                    format!("`{section}.hsts` needs TLS on the route"),
                )
                .label("HSTS without HTTPS")
                .help(format!(
                    "add `tls = \"auto\"` under [{section}], or remove `hsts`"
                )),
            );
            return None;
        }
        Some(hsts)
    });
    (tls, hsts)
}

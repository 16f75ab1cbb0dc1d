//! Reading a route's edge controls: `rate_limit = { per_ip = "20/s", burst = 40 }` and
//! `allow = ["10.0.0.0/8"]`.
//!
//! Syntax and ranges only: the proxy enforces them, and the agent maps them onto the proxy's terms.

use std::net::IpAddr;

use serde::Serialize;
use toml::de::DeTable;

use crate::read::{Reader, Value};
use crate::units::Duration;

/// Requests per client address on a route; past it the proxy answers 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Invariant: from 1 to `MAX_REQUESTS`.
    pub requests: u32,
    /// One second, minute or hour.
    pub per: Duration,
    /// Requests a client may send at once before the rate applies. Defaults to `requests`.
    /// Invariant: from 1 to `MAX_REQUESTS`.
    pub burst: u32,
}

const RATE_LIMIT_KEYS: &[&str] = &["per_ip", "burst"];
const MAX_REQUESTS: i64 = 1_000_000;
const RATE_HELP: &str = "write a count per unit, such as `\"20/s\"`, `\"600/m\"` or `\"10000/h\"`";

/// Reads `rate_limit` of `[routes.X]` (`section` is `routes.X`).
pub(crate) fn rate_limit(
    reader: &mut Reader,
    value: &Value<'_>,
    section: &str,
) -> Option<RateLimit> {
    let key_path = format!("{section}.rate_limit");
    let table: &DeTable<'_> = reader.table(
        value,
        &key_path,
        "write `rate_limit = { per_ip = \"20/s\", burst = 40 }`",
    )?;
    reader.known_keys(table, RATE_LIMIT_KEYS, &key_path);
    // Both keys are read before either failure returns, so every mistake is reported at once.
    let burst = table.get("burst").map(|burst| {
        reader
            .integer_in(burst, &format!("{key_path}.burst"), 1..=MAX_REQUESTS)
            .and_then(|burst| u32::try_from(burst).ok())
    });
    let Some(per_ip) = table.get("per_ip") else {
        reader.invalid(
            value.span(),
            format!("`{key_path}` has no `per_ip`"),
            "missing `per_ip`",
            "write `rate_limit = { per_ip = \"20/s\", burst = 40 }`",
        );
        return None;
    };
    let per_ip_path = format!("{key_path}.per_ip");
    let text = reader.string(per_ip, &per_ip_path)?;
    let Some((requests, per)) = parse_rate(&text) else {
        reader.invalid(
            per_ip.span(),
            format!("`{per_ip_path}` is not a rate: `{text}`"),
            "not a rate",
            RATE_HELP,
        );
        return None;
    };
    let burst = match burst {
        Some(burst) => burst?,
        None => requests,
    };
    Some(RateLimit {
        requests,
        per,
        burst,
    })
}

/// Reads `allow` of `[routes.X]`: IP addresses or networks in CIDR notation.
pub(crate) fn allow(reader: &mut Reader, value: &Value<'_>, section: &str) -> Vec<String> {
    let key_path = format!("{section}.allow");
    let Some(networks) = reader.string_array(value, &key_path) else {
        return Vec::new();
    };
    if networks.is_empty() {
        reader.invalid(
            value.span(),
            format!("`{key_path}` is empty, so no client could use the route"),
            "empty allow list",
            "list the networks that may use the route, such as `[\"10.0.0.0/8\"]`, or remove `allow` to let every client in",
        );
    }
    let mut allowed = Vec::new();
    for network in networks {
        if is_network(network.get_ref()) {
            allowed.push(network.into_inner());
        } else {
            reader.invalid(
                network.span(),
                format!("`{}` is not an IP address or network", network.get_ref()),
                "not a network",
                "write an address or a network in CIDR notation, such as `\"10.0.0.0/8\"` or `\"2001:db8::/32\"`",
            );
        }
    }
    allowed
}

/// `20/s` → (20, one second); the count is from 1 to `MAX_REQUESTS`, the unit `s`, `m` or `h`.
fn parse_rate(text: &str) -> Option<(u32, Duration)> {
    let (count, unit) = text.split_once('/')?;
    let count: u32 = count.trim().parse().ok()?;
    if count == 0 || i64::from(count) > MAX_REQUESTS {
        return None;
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return None,
    };
    Some((count, per))
}

/// `10.0.0.0/8`, `::1`, `2001:db8::/32`: an address with an optional prefix length in range.
fn is_network(text: &str) -> bool {
    let (address, prefix_len) = match text.split_once('/') {
        Some((address, prefix_len)) => (address, Some(prefix_len)),
        None => (text, None),
    };
    let Ok(address) = address.parse::<IpAddr>() else {
        return false;
    };
    let max_len = if address.is_ipv4() { 32 } else { 128 };
    prefix_len.is_none_or(|prefix_len| prefix_len.parse::<u8>().is_ok_and(|len| len <= max_len))
}

//! Unit tests of trusted proxy networks.

use std::net::IpAddr;

use super::*;

fn trusted(text: &str) -> TrustedProxy {
    text.parse().expect("a trusted proxy")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

#[test]
fn networks_contain_their_addresses_and_no_others() {
    let cases = [
        ("10.0.0.0/8", "10.1.2.3", true),
        ("10.0.0.0/8", "11.0.0.1", false),
        ("192.0.2.7", "192.0.2.7", true),
        ("192.0.2.7", "192.0.2.8", false),
        ("0.0.0.0/0", "203.0.113.9", true),
        ("::1", "::1", true),
        ("2001:db8::/32", "2001:db8:1::5", true),
        ("2001:db8::/32", "2001:db9::5", false),
        // An IPv4 peer on a dual-stack socket is seen as an IPv4-mapped IPv6 address.
        ("127.0.0.0/8", "::ffff:127.0.0.1", true),
        ("::1", "127.0.0.1", false),
    ];
    for (network, addr, expected) in cases {
        assert_eq!(
            trusted(network).contains(ip(addr)),
            expected,
            "{network} contains {addr}"
        );
    }
}

#[test]
fn bad_networks_are_refused_with_the_text() {
    for text in ["", "bogus", "10.0.0.0/33", "::1/129", "10.0.0.0/x"] {
        let error = text.parse::<TrustedProxy>().expect_err(text);
        assert_eq!(
            error.to_string(),
            format!("`{text}` is not an IP address or network (`10.0.0.0/8`)")
        );
    }
    assert_eq!(trusted("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(trusted("::1").to_string(), "::1/128");
}

#[test]
fn nothing_is_trusted_by_default() {
    let config = ProxyConfig::default();
    assert!(!config.trusts(ip("127.0.0.1")));
}

//! Unit tests of header rewriting and URI handling.

use super::*;

#[test]
fn hop_by_hop_headers_are_removed_including_those_named_in_connection() {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("close, x-private"),
    );
    headers.insert("x-private", HeaderValue::from_static("1"));
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert("x-kept", HeaderValue::from_static("1"));
    let mut upgrade = headers.clone();
    strip_hop_by_hop(&mut headers, false);
    let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["x-kept"]);

    strip_hop_by_hop(&mut upgrade, true);
    assert_eq!(upgrade[header::UPGRADE], "websocket");
    assert_eq!(upgrade[header::CONNECTION], "upgrade");
    assert!(!upgrade.contains_key("x-private"));
}

#[test]
fn upstream_requests_use_origin_form() {
    let check = |uri: &str, expected: &str| {
        assert_eq!(
            origin_form(&uri.parse().expect("uri")).to_string(),
            expected
        )
    };
    check("/a/b?c=1", "/a/b?c=1");
    check("http://demo.test/a?b", "/a?b");
    check("https://demo.test", "/");
}

#[test]
fn upgrade_needs_both_headers() {
    let mut headers = HeaderMap::new();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    assert!(!is_upgrade(&headers));
    headers.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, Upgrade"),
    );
    assert!(is_upgrade(&headers));
}

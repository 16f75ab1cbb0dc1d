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
fn the_common_keep_alive_answer_takes_the_short_path_and_loses_exactly_its_hop_by_hop_fields() {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("x-kept", HeaderValue::from_static("1"));
    assert_eq!(
        hop_by_hop_kind(&headers),
        HopByHop::KeepAlive {
            keep_alive_field: true
        }
    );
    strip_hop_by_hop(&mut headers, false);
    let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["x-kept"]);

    let mut plain = HeaderMap::new();
    plain.insert("x-kept", HeaderValue::from_static("1"));
    assert_eq!(hop_by_hop_kind(&plain), HopByHop::None);
}

#[test]
fn anything_beyond_keep_alive_in_connection_takes_the_general_path() {
    // An option naming another field, a field named by `close`, another hop-by-hop field, or a
    // `Keep-Alive` without `Connection`: each must still be removed.
    let cases: [&[(&str, &str)]; 4] = [
        &[("connection", "keep-alive, x-private"), ("x-private", "1")],
        &[("connection", "close"), ("close", "1")],
        &[
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
        ],
        &[("keep-alive", "timeout=5")],
    ];
    for fields in cases {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(hop_by_hop_kind(&headers), HopByHop::Other, "{fields:?}");
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"], "{fields:?}");
    }
}

#[test]
fn upstream_requests_use_origin_form_for_http1_and_absolute_form_for_http2() {
    let host = HeaderValue::from_static("demo.test");
    let check = |uri: &str, protocol: UpstreamProtocol, expected: &str| {
        assert_eq!(
            upstream_uri(&uri.parse().expect("uri"), &host, protocol).to_string(),
            expected
        )
    };
    check("/a/b?c=1", UpstreamProtocol::Http1, "/a/b?c=1");
    check("http://demo.test/a?b", UpstreamProtocol::Http1, "/a?b");
    check("https://demo.test", UpstreamProtocol::Http1, "/");
    check(
        "/a/b?c=1",
        UpstreamProtocol::H2c,
        "http://demo.test/a/b?c=1",
    );
    check(
        "https://other.test/x",
        UpstreamProtocol::Grpc,
        "http://demo.test/x",
    );
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

#[test]
fn request_ids_are_kept_out_of_the_hpack_table_and_a_client_s_usable_one_is_kept() {
    let made = request_id(&HeaderMap::new());
    assert_eq!(made.len(), 32);
    assert!(made.is_sensitive());

    let mut headers = HeaderMap::new();
    headers.insert(&X_REQUEST_ID, HeaderValue::from_static("client-id-1"));
    let kept = request_id(&headers);
    assert_eq!(kept, "client-id-1");
    assert!(kept.is_sensitive());

    headers.insert(&X_REQUEST_ID, HeaderValue::from_static(""));
    assert_eq!(request_id(&headers).len(), 32);
}

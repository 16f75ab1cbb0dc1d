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
            upstream_uri(uri.parse().expect("uri"), &host, protocol).to_string(),
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
    let made = request_id(&HeaderMap::new(), false);
    assert_eq!(made.len(), 32);
    assert!(made.is_sensitive());

    let mut headers = HeaderMap::new();
    headers.insert(&X_REQUEST_ID, HeaderValue::from_static("client-id-1"));
    let kept = request_id(&headers, request_fields(&headers, false).request_id);
    assert_eq!(kept, "client-id-1");
    assert!(kept.is_sensitive());

    headers.insert(&X_REQUEST_ID, HeaderValue::from_static(""));
    assert_eq!(
        request_id(&headers, request_fields(&headers, false).request_id).len(),
        32
    );
}

/// A thread's new ids are slices of one block (one allocation per 32 ids, not one per id): of three made
/// one after another, at least two lie side by side (the block may end after the first).
#[test]
fn new_request_ids_of_a_thread_are_cut_from_one_block() {
    let ids: Vec<HeaderValue> = (0..3)
        .map(|_| request_id(&HeaderMap::new(), false))
        .collect();
    let start = |id: &HeaderValue| id.as_bytes().as_ptr() as usize;
    let adjacent = ids
        .windows(2)
        .filter(|pair| start(&pair[1]) == start(&pair[0]) + 32)
        .count();
    assert!(adjacent >= 1, "{ids:?}");
    for id in &ids {
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
}

/// The id HPACK keeps (a connection's first answer's) is a copy of its own, not a slice that would keep
/// its thread's whole block of ids for the connection's life; later answers' ids stay slices.
#[test]
fn the_request_id_an_http2_connection_s_table_keeps_is_a_copy_of_its_own() {
    let named = AtomicBool::new(false);
    for first in [true, false] {
        let id = request_id(&HeaderMap::new(), false);
        let mut response = Response::new(ProxyBody::empty());
        request_id_for_http2(&mut response, id.clone(), &named);
        let sent = &response.headers()[&X_REQUEST_ID];
        assert_eq!(sent, &id);
        assert_eq!(
            sent.as_bytes().as_ptr() != id.as_bytes().as_ptr(),
            first,
            "first answer: {first}"
        );
        assert_eq!(sent.is_sensitive(), !first);
    }
}

#[test]
fn a_new_request_id_is_32_hex_digits_and_its_clones_are_the_same_value() {
    let made = request_id(&HeaderMap::new(), false);
    assert!(made.as_bytes().iter().all(u8::is_ascii_hexdigit));
    assert_ne!(made, request_id(&HeaderMap::new(), false));
    let clone = made.clone();
    assert_eq!(clone, made);
    assert!(clone.is_sensitive());
    assert_eq!(clone.as_bytes().as_ptr(), made.as_bytes().as_ptr());
}

#[test]
fn hex_digits_are_the_value_in_lower_case_hex_most_significant_first() {
    for value in [
        0,
        1,
        9,
        10,
        15,
        0x0123_4567_89ab_cdef,
        0xfedc_ba98_7654_3210,
        u64::MAX,
        0x8000_0000_0000_0001,
    ] {
        assert_eq!(
            hex_digits(value),
            format!("{value:016x}").as_bytes(),
            "{value:#x}"
        );
    }
    for _ in 0..1000 {
        let value = crate::routing::random_u64();
        assert_eq!(hex_digits(value), format!("{value:016x}").as_bytes());
    }
}

fn context(trusted_peer: bool) -> ConnectionContext {
    let client_addr: SocketAddr = "192.0.2.7:40000".parse().expect("address");
    ConnectionContext {
        proxy: Proxy::new(crate::config::ProxyConfig::default()),
        client_addr,
        client_ip: client_ip_value(client_addr),
        trusted_peer,
        scheme: Scheme::Http,
        tracker: TaskTracker::new(),
        closing: AtomicBool::new(false),
        request_id_named: AtomicBool::new(false),
    }
}

fn prepared(
    fields: &[(&'static str, &'static str)],
    host: &'static str,
    host_is_field: bool,
    protocol: UpstreamProtocol,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        headers.append(*name, HeaderValue::from_static(value));
    }
    let host = HeaderValue::from_static(host);
    let context = context(false);
    let request_id = HeaderValue::from_static("id-1");
    let fields = request_fields(&headers, false);
    let added = prepare_request_headers(
        &mut headers,
        &fields,
        &host,
        host_is_field,
        &context,
        &request_id,
        false,
        protocol,
    );
    // The fields `upstream::h1::start` writes after the map's, as the instance gets them.
    if let Some(added) = added {
        for (name, value) in added.pairs() {
            headers.append(name, HeaderValue::from_bytes(value).expect("value"));
        }
    }
    headers
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().unwrap_or("?").to_owned())
        .collect()
}

// `prepare_request_headers` looks names up only for the fields one pass found (session 28): each
// rewrite still happens whenever its field is there, and the `Host` field is left in place only when
// it is the routed host and nothing removes it.
#[tokio::test]
async fn request_headers_are_rewritten_from_one_pass_over_the_fields() {
    let http1 = UpstreamProtocol::Http1;
    // The common request: its `Host` stays, the proxy's fields are added once each.
    let plain = prepared(&[("host", "demo.test")], "demo.test", true, http1);
    assert_eq!(values(&plain, "host"), ["demo.test"]);
    assert_eq!(values(&plain, "x-forwarded-for"), ["192.0.2.7"]);
    assert_eq!(values(&plain, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&plain, "x-forwarded-host"), ["demo.test"]);
    assert_eq!(values(&plain, "x-request-id"), ["id-1"]);
    assert_eq!(plain.len(), 5);
    // A client's `X-Request-Id` is replaced by the proxy's.
    let client_id = prepared(
        &[("host", "demo.test"), ("x-request-id", "client-id")],
        "demo.test",
        true,
        http1,
    );
    assert_eq!(values(&client_id, "x-request-id"), ["id-1"]);
    // `Connection: host` removes the field; the routed host is put back.
    let named = prepared(
        &[("host", "demo.test"), ("connection", "host")],
        "demo.test",
        true,
        http1,
    );
    assert_eq!(values(&named, "host"), ["demo.test"]);
    assert!(named.get("connection").is_none());
    // A host from the target's authority replaces the field.
    let absolute = prepared(&[("host", "other.test")], "demo.test", false, http1);
    assert_eq!(values(&absolute, "host"), ["demo.test"]);
    // An HTTP/2 instance gets the host as `:authority` only.
    let h2c = prepared(
        &[("host", "demo.test")],
        "demo.test",
        true,
        UpstreamProtocol::H2c,
    );
    assert!(h2c.get("host").is_none());
    // Cookies split over fields are joined; a client's forwarding fields are replaced.
    let split = prepared(
        &[
            ("host", "demo.test"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "203.0.113.9"),
        ],
        "demo.test",
        true,
        http1,
    );
    assert_eq!(values(&split, "cookie"), ["a=1; b=2"]);
    assert_eq!(values(&split, "x-forwarded-for"), ["192.0.2.7"]);
    assert_eq!(values(&split, "x-forwarded-proto"), ["http"]);
    assert!(split.get("x-real-ip").is_none());
    // `TE: trailers` is the one `TE` an instance gets.
    let trailers = prepared(
        &[("host", "demo.test"), ("te", "trailers, deflate")],
        "demo.test",
        true,
        http1,
    );
    assert_eq!(values(&trailers, "te"), ["trailers"]);
    let gzip = prepared(
        &[("host", "demo.test"), ("te", "gzip")],
        "demo.test",
        true,
        http1,
    );
    assert!(gzip.get("te").is_none());
}

// Session 30: for an HTTP/1 instance the proxy's own fields are written by `upstream::h1::start`, not
// hashed into the map; a client's fields of those names still go (the instance sees the proxy's only).
// An HTTP/2 instance, an upgrade and a trusted proxy's request keep them in the map.
#[tokio::test]
async fn an_http1_instance_gets_the_proxys_own_fields_from_the_writer_not_the_map() {
    let host = HeaderValue::from_static("demo.test");
    let request_id = HeaderValue::from_static("id-1");
    let untrusted = context(false);
    let prepare = |fields: &[(&'static str, &'static str)],
                   context: &ConnectionContext,
                   upgrade: bool,
                   protocol: UpstreamProtocol| {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        let request_fields = request_fields(&headers, false);
        let written = prepare_request_headers(
            &mut headers,
            &request_fields,
            &host,
            true,
            context,
            &request_id,
            upgrade,
            protocol,
        )
        .map(|added| {
            added
                .pairs()
                .iter()
                .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value)))
                .collect::<Vec<_>>()
        });
        (headers, written)
    };
    let (map, written) = prepare(
        &[("host", "demo.test"), ("x-request-id", "client-id")],
        &untrusted,
        false,
        UpstreamProtocol::Http1,
    );
    assert_eq!(map.len(), 1, "{map:?}");
    assert_eq!(values(&map, "host"), ["demo.test"]);
    assert_eq!(
        written.expect("written by the h1 writer"),
        [
            "x-forwarded-for: 192.0.2.7",
            "x-forwarded-proto: http",
            "x-forwarded-host: demo.test",
            "x-request-id: id-1",
        ]
    );
    for (context, upgrade, protocol) in [
        (&untrusted, false, UpstreamProtocol::H2c),
        (&untrusted, true, UpstreamProtocol::Http1),
        (&context(true), false, UpstreamProtocol::Http1),
    ] {
        let (map, written) = prepare(&[("host", "demo.test")], context, upgrade, protocol);
        assert!(written.is_none());
        assert_eq!(values(&map, "x-request-id"), ["id-1"]);
        assert_eq!(values(&map, "x-forwarded-for"), ["192.0.2.7"]);
    }
}

#[test]
fn http_dates_are_imf_fixdates() {
    let date = |seconds| String::from_utf8_lossy(&http_date(seconds)).into_owned();
    assert_eq!(date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_eq!(date(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    // 2100 is not a leap year.
    assert_eq!(date(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
}

// hyper's HTTP/2 server no longer adds the date (session 28, one lookup per answer instead of two):
// an answer without one gets the current time, an instance's is kept; both are never indexed in HPACK.
#[test]
fn every_http2_answer_has_a_date_kept_out_of_the_hpack_table() {
    let mut own = Response::new(ProxyBody::empty());
    date_for_http2(&mut own);
    let date = own.headers().get(header::DATE).expect("a date");
    assert!(date.is_sensitive());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        [now - 1, now, now + 1]
            .iter()
            .any(|seconds| date.as_bytes() == http_date(*seconds)),
        "{date:?}"
    );
    let mut instance = Response::new(ProxyBody::empty());
    instance.headers_mut().insert(
        header::DATE,
        HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
    );
    date_for_http2(&mut instance);
    let kept = instance.headers().get(header::DATE).expect("a date");
    assert_eq!(kept, "Sun, 06 Nov 1994 08:49:37 GMT");
    assert!(kept.is_sensitive());
    assert_eq!(instance.headers().get_all(header::DATE).iter().count(), 1);
}

/// A host is `name[:port]` (RFC 9110 section 7.2): a registered name or a bracketed IP literal, then
/// digits after one `:`.
#[test]
fn a_host_is_a_name_or_ip_literal_and_an_optional_port_of_digits() {
    let cases: &[(&str, bool)] = &[
        ("demo.test", true),
        ("DEMO.test.", true),
        ("demo.test:8080", true),
        ("demo.test:", true),
        ("127.0.0.1:80", true),
        ("[::1]", true),
        ("[2001:db8::1]:443", true),
        ("xn--bcher-kva.example", true),
        ("a_b.test", true),
        ("evil@demo.test", false),
        ("demo.test:80@evil.test", false),
        ("demo.test:x", false),
        ("demo.test:80:81", false),
        ("demo.test/evil", false),
        ("demo.test evil", false),
        ("demo.test\\evil", false),
        ("demo.test?", false),
        ("demo.test#", false),
        ("[::1", false),
        ("[::1]x", false),
        ("[v1.x]", false),
    ];
    for (host, valid) in cases {
        assert_eq!(is_host(host.as_bytes()), *valid, "{host:?}");
    }
}

// An HTTP/2 request's `Host` value is made once per authority on a thread, not per request (issue 20,
// session 31): the same authority hands out the same shared bytes, another authority its own, and an
// authority pushed out by `AUTHORITY_VALUES` newer ones is made anew.
#[test]
fn a_threads_recent_authorities_are_made_into_host_values_once() {
    fn host_of(authority: &str) -> HeaderValue {
        let request = Request::get(format!("http://{authority}/"))
            .version(Version::HTTP_2)
            .body(())
            .expect("request");
        let (host, from_field) = request_host(&request, 0).expect("a host");
        assert!(!from_field);
        assert_eq!(host, authority);
        host
    }
    // A thread of its own: the cache starts empty.
    std::thread::spawn(|| {
        let first = host_of("app.test");
        let again = host_of("app.test");
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        let other = host_of("app.test:8080");
        assert_ne!(first.as_bytes().as_ptr(), other.as_bytes().as_ptr());
        // Only checked values are kept (one found is not checked again): an authority that is not
        // `name[:port]` is refused every time, and takes no place of a kept one.
        for _ in 0..AUTHORITY_VALUES + 1 {
            let request = Request::get("http://demo.test:80@evil.test/")
                .version(Version::HTTP_2)
                .body(())
                .expect("request");
            assert!(matches!(
                request_host(&request, 0),
                Err(ProxyError::BadRequest {
                    reason: BadRequestReason::InvalidHost
                })
            ));
        }
        let kept = host_of("app.test");
        assert_eq!(first.as_bytes().as_ptr(), kept.as_bytes().as_ptr());
        for index in 0..AUTHORITY_VALUES {
            host_of(&format!("app{index}.test"));
        }
        let made_anew = host_of("app.test");
        assert_ne!(first.as_bytes().as_ptr(), made_anew.as_bytes().as_ptr());
    })
    .join()
    .expect("the test thread");
}

/// The forwarding state (in every HTTP/1 connection's exchange, every HTTP/2 stream's box) holds the
/// request once: in `handle`'s state, where `forward` rewrites it into the upstream request and sends it
/// from. Until session 31 `handle` and `forward` were `async fn`s that each kept it twice (four copies of
/// 264 bytes); until session 32 it was still written into three places of the state per request
/// (`handle`'s argument, `forward`'s, the upstream request), each a few cache lines that are cold again
/// by the connection's next request at 512 connections (bench/proxy/README.md, "Session 32: the HTTP/1
/// exchange").
// See: issue 20 (ka512).
#[test]
fn issue_20_the_forwarding_state_holds_the_request_once() {
    let client_request = || Request::new(ClientBody::Http1(crate::server::h1::H1Body::empty()));
    let request_size = std::mem::size_of::<Request<RequestBody>>();
    let context = Arc::new(context(false));
    let activity = Arc::new(crate::active::ConnectionActivity::default());
    let request_id = HeaderValue::from_static("id-1");
    let mut active = Some(activity.start());
    let mut hsts = None;
    let mut request = client_request().map(RequestBody::client);
    let fields = request_fields(request.headers(), false);
    let forwarding = forward(
        &mut request,
        &fields,
        &context,
        &request_id,
        &mut active,
        &mut hsts,
    );
    let forward_size = std::mem::size_of_val(&forwarding);
    drop(forwarding);
    let handling = handle(client_request(), Arc::clone(&context), activity.start());
    let handle_size = std::mem::size_of_val(&handling);
    // `handle` keeps the request, its context, the request id and a few small locals beside
    // `forward`'s state, which holds no request of its own.
    assert!(
        handle_size < forward_size + request_size + 160,
        "handle's state {handle_size} bytes, forward's {forward_size}, a request {request_size}"
    );
    // 2,928 bytes in a stable debug build before session 32, 2,056 since.
    assert!(handle_size < 2300, "handle's state {handle_size} bytes");
}

/// Each check of `check_http2_request` on its own: a `:scheme` (seen with `:authority`), a target
/// that is neither a path nor `*` of OPTIONS, and whitespace at either end of any value (found by the
/// pass over the fields, `request_fields`, for an HTTP/2 request only).
#[test]
fn an_http2_request_is_checked_for_scheme_target_and_value_whitespace() {
    let request = |method: Method, uri: &str, value: &'static str| {
        let request = Request::builder()
            .version(Version::HTTP_2)
            .method(method)
            .uri(uri)
            .header("accept", "*/*")
            .header("x-a", HeaderValue::from_static(value))
            .body(())
            .expect("request");
        let fields = request_fields(request.headers(), true);
        check_http2_request(&request, fields.edge_whitespace)
    };
    assert_eq!(request(Method::GET, "http://demo.test/a?b", "1"), Ok(()));
    assert_eq!(request(Method::GET, "https://demo.test/a", "1 2"), Ok(()));
    assert_eq!(request(Method::GET, "HTTPS://demo.test/a", ""), Ok(()));
    assert_eq!(request(Method::GET, "/a", "1"), Ok(()));
    assert_eq!(request(Method::OPTIONS, "*", "1"), Ok(()));
    assert_eq!(
        request(Method::GET, "gopher://demo.test/a", "1"),
        Err(BadRequestReason::InvalidScheme)
    );
    assert_eq!(
        request(Method::GET, "httpx://demo.test/a", "1"),
        Err(BadRequestReason::InvalidScheme)
    );
    assert_eq!(
        request(Method::GET, "*", "1"),
        Err(BadRequestReason::InvalidTarget)
    );
    for value in [" 1", "1 ", "\t1", "1\t", " "] {
        assert_eq!(
            request(Method::GET, "/a", value),
            Err(BadRequestReason::FieldValueWhitespace),
            "{value:?}"
        );
        // Found whatever the field's name: one the pass counts (`Host`, `Cookie`, a forwarding header,
        // `X-Request-Id`, a hop-by-hop one) as well as any other.
        for name in [
            "host",
            "cookie",
            "x-forwarded-for",
            "x-request-id",
            "te",
            "x-other",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("accept", HeaderValue::from_static("*/*"));
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            assert!(
                request_fields(&headers, true).edge_whitespace,
                "{name}: {value:?}"
            );
        }
    }
    // An HTTP/1 request's values are not looked at (its parsers trim them).
    let mut headers = HeaderMap::new();
    headers.insert("x-a", HeaderValue::from_static(" 1"));
    assert!(!request_fields(&headers, false).edge_whitespace);
}

/// An HTTP/2 `OPTIONS *` (h2 builds its URI from `:scheme`, `:authority` and `:path` `*`) stays `*` to
/// either kind of instance: `OPTIONS * HTTP/1.1`, or `:path` `*` to an h2c one.
#[test]
fn options_star_stays_star_to_every_instance() {
    let host = HeaderValue::from_static("demo.test");
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
    parts.authority = Some(hyper::http::uri::Authority::from_static("demo.test"));
    parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static("*"));
    let uri = Uri::from_parts(parts).expect("uri");
    for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::H2c] {
        let upstream = upstream_uri(uri.clone(), &host, protocol);
        assert_eq!(
            upstream.path_and_query().map(|path| path.as_str()),
            Some("*"),
            "{protocol:?}"
        );
    }
}

/// Across the upstream wait `forward` keeps the route's locals beside the send's state, and no request:
/// the request it sends is `handle`'s (see above).
#[test]
fn issue_20_the_forwarding_state_holds_no_request_across_the_upstream_wait() {
    let context = Arc::new(context(false));
    let activity = Arc::new(crate::active::ConnectionActivity::default());
    let request_id = HeaderValue::from_static("id-1");
    let mut active = Some(activity.start());
    let mut hsts = None;
    let mut request = Request::new(RequestBody::empty());
    let fields = request_fields(request.headers(), false);
    let forwarding = forward(
        &mut request,
        &fields,
        &context,
        &request_id,
        &mut active,
        &mut hsts,
    );
    let forward_size = std::mem::size_of_val(&forwarding);
    drop(forwarding);
    let instance = Arc::new(crate::instance::InstanceLive::new(
        crate::ids::InstanceId::new("i"),
        crate::ids::ReleaseId::new("r"),
        std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
    ));
    let mut upstream_request = Request::new(RequestBody::empty());
    let config = crate::config::ProxyConfig::default();
    let settings = crate::config::RouteSettings::default();
    let sending = upstream::send_with(
        &instance,
        &mut upstream_request,
        &config,
        &settings,
        false,
        None,
        None,
    );
    let sending_size = std::mem::size_of_val(&sending);
    drop(sending);
    let own = forward_size - sending_size;
    // It kept the client's head and the upstream target besides until session 31 (1,640 bytes of its own
    // in a stable debug build), its own copy of the request and the upstream request until session 32
    // (1,536; 576 since).
    assert!(
        own < 700,
        "forward's state {forward_size} bytes, the send's {sending_size}: {own} of its own"
    );
}

/// `handle` reads `closing` after the upstream's answer and ends its clone of the context's `Arc` then:
/// both are in the allocation's first cache line (the `Arc`'s counts are its first 16 bytes, and a
/// 128-byte block is 128-aligned by mimalloc, which sizes it to a power of two here).
#[test]
fn issue_20_the_flags_read_after_the_answer_share_the_arc_counts_line() {
    let counts = 2 * std::mem::size_of::<usize>();
    assert!(counts + std::mem::offset_of!(ConnectionContext, closing) < 64);
    let allocation = counts + std::mem::size_of::<ConnectionContext>();
    assert!(
        (65..=128).contains(&allocation),
        "the context's allocation is {allocation} bytes"
    );
}

/// The pass over the fields says whether `Content-Length` came, so that `forward` looks up the
/// announced length only then (most requests have no body).
#[test]
fn the_pass_over_the_fields_says_whether_a_content_length_came() {
    let mut headers = HeaderMap::new();
    headers.insert("accept", HeaderValue::from_static("*/*"));
    for http2 in [false, true] {
        assert!(!request_fields(&headers, http2).content_length, "{http2}");
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    for http2 in [false, true] {
        assert!(request_fields(&headers, http2).content_length, "{http2}");
    }
}

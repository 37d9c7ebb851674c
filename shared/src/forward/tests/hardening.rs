//! Contract tests for the findings of the adversarial review (issue 13):
//! redirects, `Connection`-named headers, framing, origin-wide headers,
//! strict `Host`/`Origin` parsing and odd paths under an endpoint list.

use super::*;

fn redirecting(status: u16, location: &'static str) -> FakeFal {
    FakeFal::replying(move || {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(location));
        Ok(response)
    })
}

#[test]
fn a_redirect_off_the_allow_list_becomes_a_502() {
    let proxy = proxy(&[
        ("FAL_KEY_ID", "id"),
        ("FAL_KEY_SECRET", "secret"),
        ("FAL_PROXY_KEY_MODE", "user-or-server"),
    ]);
    let refused = [
        "https://evil.example/steal",
        "//evil.example/steal",
        "http://queue.fal.run/fal-ai/flux/requests/1",
        "https://fal.run@evil.example/",
        "https://fal.run.evil.example/fal-ai/flux",
        "https://api.fal.ai/v1/keys",
        "https://rest.fal.ai/users/me",
        "https://fal.run:8443/fal-ai/flux",
        "https://127.0.0.1/fal-ai/flux",
        "javascript:alert(1)",
        "",
        "https://fal.run/fal-ai/flux#x",
    ];
    for status in [301, 302, 303, 307, 308] {
        for location in refused {
            let fal = redirecting(status, location);
            let response = run(
                &proxy,
                &fal,
                request(
                    "POST",
                    Some("https://queue.fal.run/fal-ai/flux/dev"),
                    &[("x-fal-user-key", "visitor:key")],
                ),
            );
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{location:?}");
            assert_eq!(
                error_of(&response).map(ProxyError::error_type),
                Some("upstream_redirect"),
                "{location:?}"
            );
            assert!(response.headers().get(header::LOCATION).is_none());
            let body: serde_json::Value = serde_json::from_str(&body_text(&response)).unwrap();
            assert_eq!(body["error_type"], "upstream_redirect");
            let line = response.extensions().get::<Exchange>().unwrap().log_line(
                response.status(),
                Duration::ZERO,
                0,
            );
            assert!(line.ends_with("error=upstream_redirect"), "{line}");
        }
    }
    // Two `Location` headers: refused too.
    let fal = FakeFal::replying(|| {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        headers.append(
            header::LOCATION,
            HeaderValue::from_static("https://fal.run/a"),
        );
        headers.append(
            header::LOCATION,
            HeaderValue::from_static("https://evil.example/"),
        );
        Ok(response)
    });
    let response = run(
        &proxy,
        &fal,
        request("GET", Some("https://fal.run/fal-ai/flux"), &[]),
    );
    assert_eq!(
        error_of(&response).map(ProxyError::error_type),
        Some("upstream_redirect")
    );
}

#[test]
fn a_redirect_to_an_allowed_target_passes() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    for (location, status) in [
        ("https://queue.fal.run/fal-ai/flux/requests/1", 303),
        ("/fal-ai/flux/requests/1/status", 307),
        ("requests/1", 302),
    ] {
        let fal = redirecting(status, location);
        let response = run(
            &proxy,
            &fal,
            request("GET", Some("https://queue.fal.run/fal-ai/flux/dev"), &[]),
        );
        assert_eq!(response.status().as_u16(), status, "{location}");
        assert_eq!(response.headers()[header::LOCATION], location);
    }
    // Not a redirect: no `Location`.
    let fal = FakeFal::replying(|| {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        Ok(response)
    });
    let response = run(&proxy, &fal, request("GET", Some("https://fal.run/x"), &[]));
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    // Under an endpoint list, the redirect must name an allowed endpoint.
    let listed = self::proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOW_ENDPOINTS", "fal-ai/flux/**"),
    ]);
    let fal = redirecting(307, "https://fal.run/fal-ai/other");
    let response = run(
        &listed,
        &fal,
        request("POST", Some("https://fal.run/fal-ai/flux/dev"), &[]),
    );
    assert_eq!(
        error_of(&response).map(ProxyError::error_type),
        Some("upstream_redirect")
    );
}

#[test]
fn headers_named_in_connection_are_removed_both_ways() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::replying(|| {
        let mut response = Response::new(Bytes::from_static(b"{}"));
        let headers = response.headers_mut();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-fal-back, close"),
        );
        headers.insert("x-fal-back", HeaderValue::from_static("1"));
        headers.insert("x-fal-request-id", HeaderValue::from_static("r1"));
        Ok(response)
    });
    let response = run(
        &proxy,
        &fal,
        request(
            "POST",
            Some("https://fal.run/fal-ai/flux"),
            &[
                ("connection", "x-fal-hop"),
                ("connection", "X-Fal-Queue-Priority , keep-alive"),
                ("x-fal-hop", "1"),
                ("x-fal-queue-priority", "low"),
                ("x-fal-request-id", "kept"),
                ("content-type", "application/json"),
            ],
        ),
    );
    assert_eq!(response.status(), StatusCode::OK);
    let seen = fal.seen.borrow();
    let sent = seen[0].headers();
    assert!(sent.get("x-fal-hop").is_none(), "{sent:?}");
    assert!(sent.get("x-fal-queue-priority").is_none(), "{sent:?}");
    assert!(sent.get(header::CONNECTION).is_none(), "{sent:?}");
    assert_eq!(sent["x-fal-request-id"], "kept");
    assert_eq!(sent[header::CONTENT_TYPE], "application/json");
    assert!(response.headers().get("x-fal-back").is_none());
    assert_eq!(response.headers()["x-fal-request-id"], "r1");
}

#[test]
fn a_content_length_that_does_not_frame_the_body_is_dropped() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let cases: &[&[(&str, &str)]] = &[
        &[("content-length", "3"), ("transfer-encoding", "chunked")],
        &[("transfer-encoding", "chunked"), ("content-length", "3")],
        &[("content-length", "3"), ("content-length", "5")],
        &[("content-length", "3, 5")],
        &[("content-length", "-1")],
        &[("content-length", "+5")],
    ];
    for pairs in cases {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        let fal = FakeFal::replying(move || {
            let mut response = Response::new(Bytes::from_static(b"hello"));
            for (name, value) in &owned {
                response.headers_mut().append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            Ok(response)
        });
        let response = run(&proxy, &fal, request("GET", Some("https://fal.run/x"), &[]));
        assert!(
            response.headers().get(header::CONTENT_LENGTH).is_none(),
            "{pairs:?}: {:?}",
            response.headers()
        );
        assert!(response.headers().get(header::TRANSFER_ENCODING).is_none());
    }
    // A single, valid length stays.
    let fal = FakeFal::replying(|| {
        let mut response = Response::new(Bytes::from_static(b"hello"));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        Ok(response)
    });
    let response = run(&proxy, &fal, request("GET", Some("https://fal.run/x"), &[]));
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "5");
}

#[test]
fn origin_wide_headers_from_upstream_are_dropped() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::replying(|| {
        let mut response = Response::new(Bytes::from_static(b"{}"));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert("clear-site-data", HeaderValue::from_static("\"*\""));
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains; preload"),
        );
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fal\""),
        );
        headers.insert("x-fal-request-id", HeaderValue::from_static("r1"));
        Ok(response)
    });
    let response = run(&proxy, &fal, request("GET", Some("https://fal.run/x"), &[]));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let headers = response.headers();
    for name in [
        "clear-site-data",
        "strict-transport-security",
        "www-authenticate",
    ] {
        assert!(headers.get(name).is_none(), "{name}: {headers:?}");
    }
    assert_eq!(headers["x-fal-request-id"], "r1");
}

#[test]
fn host_is_parsed_strictly() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]"),
    ]);
    let cases: &[(&str, bool)] = &[
        ("localhost", true),
        ("localhost:3000", true),
        ("localhost:65535", true),
        ("[::1]", true),
        ("[::1]:3000", true),
        ("127.0.0.1:1", true),
        ("localhost:evil", false),
        ("localhost:", false),
        ("localhost:3000:3000", false),
        ("localhost:99999", false),
        ("localhost:+80", false),
        ("localhost:3000 ", false),
        ("localhost@evil.example", false),
        ("localhost/evil", false),
        ("[::1]evil.example", false),
        ("[::1]:evil", false),
        ("[::1]:", false),
        ("[::1", false),
        ("[localhost]", false),
        ("[::1]]", false),
        ("", false),
        (":3000", false),
    ];
    for (host, allowed) in cases {
        let fal = FakeFal::ok();
        let response = run(
            &proxy,
            &fal,
            request("POST", Some("https://fal.run/x"), &[("host", host)]),
        );
        if *allowed {
            assert_eq!(response.status(), StatusCode::OK, "{host:?}");
        } else {
            assert_eq!(
                error_of(&response),
                Some(ProxyError::HostNotAllowed),
                "{host:?}"
            );
            assert_eq!(fal.count(), 0, "{host:?}");
        }
    }
    // `*` opts out explicitly: any host.
    let any = self::proxy(&[("FAL_KEY", SERVER_KEY), ("FAL_PROXY_ALLOWED_HOSTS", "*")]);
    let fal = FakeFal::ok();
    let response = run(
        &any,
        &fal,
        request(
            "POST",
            Some("https://fal.run/x"),
            &[("host", "whatever.example")],
        ),
    );
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn the_same_origin_exemption_parses_origin_strictly() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
    ]);
    // (request URI, Host, Origin, exempt)
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example",
            true,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "http://proxy.example",
            true,
        ),
        (
            "/api/fal/proxy",
            "127.0.0.1:3000",
            "http://127.0.0.1:3000",
            true,
        ),
        ("/api/fal/proxy", "[::1]:3000", "http://[::1]:3000", true),
        (
            "/api/fal/proxy",
            "PROXY.example",
            "https://proxy.EXAMPLE",
            true,
        ),
        // the scheme, where the target knows it, must agree
        (
            "https://proxy.example/api/fal/proxy",
            "proxy.example",
            "https://proxy.example",
            true,
        ),
        (
            "https://proxy.example/api/fal/proxy",
            "proxy.example",
            "http://proxy.example",
            false,
        ),
        (
            "http://127.0.0.1:3000/api/fal/proxy",
            "127.0.0.1:3000",
            "https://127.0.0.1:3000",
            false,
        ),
        // only http(s) origins, and only scheme://host[:port]
        (
            "/api/fal/proxy",
            "proxy.example",
            "ftp://proxy.example",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "ws://proxy.example",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example/",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example/path",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example?x",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example#x",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://user@proxy.example",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://user:pw@proxy.example",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example:443",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example.",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://PROXY.example ",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example:8080",
            "https://proxy.example",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example",
            "https://proxy.example:8080",
            false,
        ),
        (
            "/api/fal/proxy",
            "proxy.example:evil",
            "https://proxy.example:evil",
            false,
        ),
        ("/api/fal/proxy", "proxy.example", "null", false),
    ];
    for (uri, host, origin, exempt) in cases {
        let fal = FakeFal::ok();
        let mut request = request(
            "POST",
            Some("https://fal.run/x"),
            &[("host", host), ("origin", origin)],
        );
        *request.uri_mut() = uri.parse().unwrap();
        let response = run(&proxy, &fal, request);
        if *exempt {
            assert_eq!(response.status(), StatusCode::OK, "{uri} {host} {origin}");
            assert!(
                response
                    .headers()
                    .get("access-control-allow-origin")
                    .is_none()
            );
        } else {
            assert_eq!(
                error_of(&response),
                Some(ProxyError::OriginNotAllowed),
                "{uri} {host} {origin}"
            );
            assert_eq!(fal.count(), 0);
        }
    }
}

#[test]
fn odd_paths_never_pass_an_endpoint_list() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOW_ENDPOINTS", "fal-ai/flux/**"),
    ]);
    for target in [
        "https://fal.run/fal-ai/flux/..;/..;/evil/app",
        "https://fal.run/fal-ai/flux/dev;x=1",
        "https://fal.run/fal-ai/flux/%c0%ae%c0%ae/evil",
        "https://fal.run/fal-ai/flux/%252e%252e/evil",
        "https://fal.run/fal-ai/flux/%25",
        "https://fal.run/fal-ai/flux/%u002e%u002e/evil",
        "https://fal.run/fal-ai/flux/%2e%2e/x",
        "https://fal.run/fal-ai/flux/dev%00",
        "https://fal.run/fal-ai/flux/dev%20",
        "https://fal.run/fal-ai/flux/dev!",
        "https://fal.run/fal-ai/flux/d'ev",
        "https://fal.run/fal-ai/flux/dev:x",
        "https://fal.run/fal-ai/flux/dev@x",
        "https://fal.run//fal-ai/flux/dev",
        "https://fal.run/fal-ai//flux/dev",
        "https://queue.fal.run/fal-ai/flux/requests/..;/..;/evil/app/requests/1/status",
        "https://queue.fal.run/fal-ai/flux/requests/%252e%252e/status",
    ] {
        let fal = FakeFal::ok();
        let method = if target.contains("/requests/") {
            "GET"
        } else {
            "POST"
        };
        let response = run(&proxy, &fal, request(method, Some(target), &[]));
        assert_eq!(
            error_of(&response),
            Some(ProxyError::EndpointNotAllowed),
            "{target}"
        );
        assert_eq!(fal.count(), 0, "{target}");
    }
    // Without an endpoint list the allow-list alone decides (fal.run/**).
    let open = self::proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::ok();
    let response = run(
        &open,
        &fal,
        request("POST", Some("https://fal.run/fal-ai/flux/dev;x=1"), &[]),
    );
    assert_eq!(response.status(), StatusCode::OK);
    // Ordinary ids and names still pass.
    for target in [
        "https://fal.run/fal-ai/flux/dev",
        "https://fal.run/fal-ai/flux/v1.1-pro_ultra~x",
        "https://queue.fal.run/fal-ai/flux/requests/0b8e4a5e-1f2a-4c3d-9e8f-7a6b5c4d3e2f/status",
    ] {
        let fal = FakeFal::ok();
        let method = if target.contains("/requests/") {
            "GET"
        } else {
            "POST"
        };
        let response = run(&proxy, &fal, request(method, Some(target), &[]));
        assert_eq!(response.status(), StatusCode::OK, "{target}");
    }
}

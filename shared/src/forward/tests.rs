//! Contract tests: the phases against a recording, scripted fake upstream.

use super::*;
use std::cell::RefCell;
use std::collections::HashMap;

const SERVER_KEY: &str = "server-id:server-secret";

/// Records every request it is sent and answers as scripted.
struct FakeFal {
    seen: RefCell<Vec<Request<Bytes>>>,
    reply: Box<dyn Fn() -> Result<Response<Bytes>, UpstreamError>>,
}

impl FakeFal {
    fn ok() -> Self {
        Self::replying(|| {
            let mut response = Response::new(Bytes::from_static(b"{\"ok\":true}"));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok(response)
        })
    }

    fn replying(reply: impl Fn() -> Result<Response<Bytes>, UpstreamError> + 'static) -> Self {
        Self {
            seen: RefCell::new(Vec::new()),
            reply: Box::new(reply),
        }
    }

    fn count(&self) -> usize {
        self.seen.borrow().len()
    }
}

/// The auth contract tests sign with the HMAC secret: no key set needed.
impl KeySetSource for FakeFal {
    async fn fetch_key_set(&self, _url: &str) -> Result<crate::KeySetDocument, crate::KeySetError> {
        Err(crate::KeySetError::Unreachable)
    }
}

impl Upstream<Bytes> for FakeFal {
    type Body = Bytes;

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, UpstreamError> {
        self.seen.borrow_mut().push(request);
        (self.reply)()
    }
}

fn proxy(pairs: &[(&str, &str)]) -> Proxy {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Proxy::new(
        Config::from_lookup(|name| map.get(name).cloned()).unwrap(),
        "test",
    )
}

fn request(method: &str, target: Option<&str>, headers: &[(&str, &str)]) -> Request<Bytes> {
    let mut builder = Request::builder().method(method).uri("/api/fal/proxy");
    if let Some(target) = target {
        builder = builder.header("x-fal-target-url", target);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Bytes::from_static(b"{\"prompt\":\"a cat\"}"))
        .unwrap()
}

fn run(proxy: &Proxy, fal: &FakeFal, request: Request<Bytes>) -> Response<ProxyBody<Bytes>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(proxy.forward(fal, &crate::limits::MemoryStore::new(), request))
}

fn error_of(response: &Response<ProxyBody<Bytes>>) -> Option<ProxyError> {
    response
        .extensions()
        .get::<Exchange>()
        .and_then(Exchange::error)
}

fn body_text(response: &Response<ProxyBody<Bytes>>) -> String {
    match response.body() {
        ProxyBody::Upstream(bytes) | ProxyBody::Full(bytes) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

#[test]
fn forwards_with_the_server_key_and_the_allowed_headers() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::ok();
    let response = run(
        &proxy,
        &fal,
        request(
            "POST",
            Some("https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fhook.example"),
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                ("authorization", "Bearer browser-token"),
                ("cookie", "session=1"),
                ("x-fal-user-key", "user:key"),
                ("x-fal-queue-priority", "low"),
                ("user-agent", "browser"),
            ],
        ),
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_text(&response), "{\"ok\":true}");
    let seen = fal.seen.borrow();
    assert_eq!(seen.len(), 1);
    let sent = &seen[0];
    assert_eq!(sent.method(), Method::POST);
    assert_eq!(
        sent.uri(),
        "https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fhook.example"
    );
    assert_eq!(sent.body(), "{\"prompt\":\"a cat\"}");
    let h = sent.headers();
    assert_eq!(h["authorization"], format!("Key {SERVER_KEY}"));
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-fal-queue-priority"], "low");
    assert_eq!(h["user-agent"], "browser");
    assert!(
        h["x-fal-client-proxy"]
            .to_str()
            .unwrap()
            .starts_with("fal-proxy/")
    );
    for absent in ["cookie", "x-fal-user-key", "x-fal-target-url", "host"] {
        assert!(!h.contains_key(absent), "{absent} forwarded");
    }
    assert_eq!(h.get_all("authorization").iter().count(), 1);
}

#[test]
fn upstream_override_keeps_host_path_and_query() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_UPSTREAM", "http://127.0.0.1:9/base/"),
    ]);
    let fal = FakeFal::ok();
    run(
        &proxy,
        &fal,
        request(
            "GET",
            Some("https://queue.fal.run/a/b/requests/1/status?logs=1"),
            &[],
        ),
    );
    assert_eq!(
        fal.seen.borrow()[0].uri(),
        "http://127.0.0.1:9/base/queue.fal.run/a/b/requests/1/status?logs=1"
    );
}

#[test]
fn refused_requests_reach_nothing_upstream() {
    use ProxyError::*;
    let server = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
        ("FAL_PROXY_MAX_BODY_BYTES", "100"),
    ]);
    let user = proxy(&[]);
    let endpoints = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOW_ENDPOINTS", "fal-ai/flux/**"),
    ]);
    let cases: Vec<(&Proxy, Request<Bytes>, ProxyError)> = vec![
        (&server, request("POST", None, &[]), MissingTargetUrl),
        (&server, request("POST", Some(""), &[]), InvalidTargetUrl),
        (
            &server,
            request("POST", Some("not a url"), &[]),
            InvalidTargetUrl,
        ),
        (
            &server,
            request("POST", Some("https://evil.example/x"), &[]),
            TargetNotAllowed,
        ),
        (
            &server,
            request("POST", Some("http://fal.run/x"), &[]),
            TargetNotAllowed,
        ),
        (
            &server,
            request("POST", Some("https://fal.run@evil.example/"), &[]),
            TargetNotAllowed,
        ),
        (
            &server,
            request("POST", Some("https://api.fal.ai/v1/keys"), &[]),
            TargetNotAllowed,
        ),
        (
            &server,
            request("TRACE", Some("https://fal.run/x"), &[]),
            MethodNotAllowed,
        ),
        (
            &server,
            request("CONNECT", Some("https://fal.run/x"), &[]),
            MethodNotAllowed,
        ),
        (
            &server,
            request(
                "POST",
                Some("https://fal.run/x"),
                &[("origin", "https://evil.example")],
            ),
            OriginNotAllowed,
        ),
        (
            &server,
            request(
                "OPTIONS",
                Some("https://fal.run/x"),
                &[("origin", "https://evil.example")],
            ),
            OriginNotAllowed,
        ),
        (
            &server,
            request(
                "POST",
                Some("https://fal.run/x"),
                &[("content-length", "101")],
            ),
            BodyTooLarge,
        ),
        (
            &server,
            request(
                "POST",
                Some("https://fal.run/x"),
                &[("content-length", "abc")],
            ),
            InvalidRequest,
        ),
        (
            &user,
            request("POST", Some("https://fal.run/x"), &[]),
            MissingUserKey,
        ),
        (
            &user,
            request(
                "POST",
                Some("https://fal.run/x"),
                &[("x-fal-user-key", "has space")],
            ),
            InvalidUserKey,
        ),
        (
            &endpoints,
            request("POST", Some("https://fal.run/fal-ai/other"), &[]),
            EndpointNotAllowed,
        ),
        (
            &endpoints,
            request(
                "GET",
                Some("https://queue.fal.run/fal-ai/other/requests/1/status"),
                &[],
            ),
            EndpointNotAllowed,
        ),
        (
            &endpoints,
            request(
                "PUT",
                Some("https://queue.fal.run/fal-ai/other/requests/1/cancel"),
                &[],
            ),
            EndpointNotAllowed,
        ),
        (
            &endpoints,
            request("POST", Some("https://rest.fal.ai/tokens/"), &[]),
            EndpointNotAllowed,
        ),
    ];
    for (proxy, request, expected) in cases {
        let described = format!("{} {:?}", request.method(), request.headers());
        let fal = FakeFal::ok();
        let response = run(proxy, &fal, request);
        assert_eq!(fal.count(), 0, "{described} reached upstream");
        assert_eq!(error_of(&response), Some(expected), "{described}");
        assert_eq!(response.status(), expected.status(), "{described}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert!(!body_text(&response).contains("secret"));
    }
}

#[test]
fn other_paths_are_not_found() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    for path in ["/", "/api/fal", "/api/fal/proxyx", "/api/fal/other"] {
        let fal = FakeFal::ok();
        let mut req = request("POST", Some("https://fal.run/x"), &[]);
        *req.uri_mut() = path.parse().unwrap();
        let response = run(&proxy, &fal, req);
        assert_eq!(error_of(&response), Some(ProxyError::NotFound), "{path}");
        assert_eq!(fal.count(), 0);
    }
    for path in [
        "/api/fal/proxy/",
        "/api/fal/proxy/fal-ai/flux",
        "/api/fal/proxy?x=1",
    ] {
        let fal = FakeFal::ok();
        let mut req = request("POST", Some("https://fal.run/x"), &[]);
        *req.uri_mut() = path.parse().unwrap();
        assert_eq!(run(&proxy, &fal, req).status(), StatusCode::OK, "{path}");
    }
}

#[test]
fn key_modes() {
    let cases: &[(&[(&str, &str)], &[(&str, &str)], Option<&str>)] = &[
        (&[("FAL_KEY", SERVER_KEY)], &[], Some(SERVER_KEY)),
        (
            &[("FAL_KEY", SERVER_KEY)],
            &[("x-fal-user-key", "user:key")],
            Some(SERVER_KEY),
        ),
        (&[], &[("x-fal-user-key", "user:key")], Some("user:key")),
        (&[], &[], None),
        (
            &[("FAL_KEY", SERVER_KEY), ("FAL_PROXY_KEY_MODE", "user")],
            &[],
            None,
        ),
        (
            &[
                ("FAL_KEY", SERVER_KEY),
                ("FAL_PROXY_KEY_MODE", "user-or-server"),
            ],
            &[],
            Some(SERVER_KEY),
        ),
        (
            &[
                ("FAL_KEY", SERVER_KEY),
                ("FAL_PROXY_KEY_MODE", "user-or-server"),
            ],
            &[("x-fal-user-key", "user:key")],
            Some("user:key"),
        ),
        (
            &[
                ("FAL_KEY_ID", "split-id"),
                ("FAL_KEY_SECRET", "split-secret"),
            ],
            &[],
            Some("split-id:split-secret"),
        ),
    ];
    for (config, headers, expected) in cases {
        let proxy = proxy(config);
        let fal = FakeFal::ok();
        let response = run(
            &proxy,
            &fal,
            request("POST", Some("https://fal.run/fal-ai/flux"), headers),
        );
        match expected {
            Some(key) => {
                assert_eq!(
                    fal.seen.borrow()[0].headers()["authorization"],
                    format!("Key {key}")
                );
                assert_eq!(response.status(), StatusCode::OK);
            }
            None => {
                assert_eq!(fal.count(), 0);
                assert_eq!(error_of(&response), Some(ProxyError::MissingUserKey));
            }
        }
    }
}

#[test]
fn body_less_put_and_every_forwarded_method() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"] {
        let fal = FakeFal::ok();
        let req = Request::builder()
            .method(method)
            .uri("/api/fal/proxy")
            .header(
                "x-fal-target-url",
                "https://queue.fal.run/fal-ai/flux/requests/1/cancel",
            )
            .body(Bytes::new())
            .unwrap();
        let response = run(&proxy, &fal, req);
        assert_eq!(response.status(), StatusCode::OK, "{method}");
        assert_eq!(fal.seen.borrow()[0].method().as_str(), method);
        assert!(fal.seen.borrow()[0].body().is_empty());
    }
}

#[test]
fn cors_preflight_and_decoration() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
    ]);
    let fal = FakeFal::ok();
    let preflight = run(
        &proxy,
        &fal,
        request(
            "OPTIONS",
            None,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type, x-fal-target-url",
                ),
            ],
        ),
    );
    assert_eq!(fal.count(), 0);
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    let fal = FakeFal::replying(|| {
        let mut response = Response::new(Bytes::new());
        response
            .headers_mut()
            .insert("access-control-allow-origin", HeaderValue::from_static("*"));
        response
            .headers_mut()
            .insert("set-cookie", HeaderValue::from_static("a=b"));
        response
            .headers_mut()
            .insert("x-fal-request-id", HeaderValue::from_static("r1"));
        Ok(response)
    });
    let response = run(
        &proxy,
        &fal,
        request(
            "POST",
            Some("https://fal.run/x"),
            &[("origin", "https://app.example")],
        ),
    );
    let h = response.headers();
    assert_eq!(
        h.get_all("access-control-allow-origin")
            .iter()
            .collect::<Vec<_>>(),
        ["https://app.example"]
    );
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-fal-request-id")
    );
    assert!(h.get_all("vary").iter().any(|v| v == "origin"));
    assert!(!h.contains_key("set-cookie"));
    assert_eq!(h["x-fal-request-id"], "r1");

    // Errors carry CORS headers too, so the page can read them.
    let fal = FakeFal::ok();
    let refused = run(
        &proxy,
        &fal,
        request(
            "POST",
            Some("https://evil.example/"),
            &[("origin", "https://app.example")],
        ),
    );
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // CORS off: a preflight gets no CORS headers, and no origin is refused.
    let off = self::proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::ok();
    let preflight = run(
        &off,
        &fal,
        request("OPTIONS", None, &[("origin", "https://app.example")]),
    );
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert!(
        !preflight
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let response = run(
        &off,
        &fal,
        request(
            "POST",
            Some("https://fal.run/x"),
            &[("origin", "https://other.example")],
        ),
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[test]
fn upstream_failures_map_to_gateway_errors() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let cases = [
        (
            UpstreamError::Unreachable(Cause::Connect),
            ProxyError::UpstreamUnreachable,
            502,
        ),
        (UpstreamError::Broken, ProxyError::UpstreamBroken, 502),
        (UpstreamError::Timeout, ProxyError::UpstreamTimeout, 504),
        (UpstreamError::BodyTooLarge, ProxyError::BodyTooLarge, 413),
    ];
    for (failure, expected, status) in cases {
        let fal = FakeFal::replying(move || Err(failure));
        let response = run(
            &proxy,
            &fal,
            request("POST", Some("https://fal.run/x"), &[]),
        );
        assert_eq!(fal.count(), 1);
        assert_eq!(error_of(&response), Some(expected));
        assert_eq!(response.status().as_u16(), status);
        assert!(!body_text(&response).contains("secret"));
    }
}

#[test]
fn upstream_statuses_and_bodies_pass_through() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    for status in [200u16, 202, 400, 401, 404, 422, 500, 503] {
        let fal = FakeFal::replying(move || {
            let mut response =
                Response::new(Bytes::from(format!("{{\"detail\":\"status {status}\"}}")));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok(response)
        });
        let response = run(
            &proxy,
            &fal,
            request("POST", Some("https://fal.run/x"), &[]),
        );
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            body_text(&response),
            format!("{{\"detail\":\"status {status}\"}}")
        );
        assert_eq!(error_of(&response), None);
    }
}

#[test]
fn log_line_has_no_query_and_no_key() {
    let proxy = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::ok();
    let response = run(
        &proxy,
        &fal,
        request(
            "POST",
            Some("https://queue.fal.run/fal-ai/flux?token=abc"),
            &[("x-fal-user-key", "user:secret")],
        ),
    );
    let exchange = response.extensions().get::<Exchange>().unwrap();
    let line = exchange.log_line(response.status(), Duration::from_millis(12), 34);
    assert_eq!(
        line,
        "fal-proxy: method=POST target=queue.fal.run/fal-ai/flux status=200 duration_ms=12 bytes=34"
    );
    let refused = run(
        &proxy,
        &fal,
        request("POST", Some("https://evil.example/x"), &[]),
    );
    let line = refused.extensions().get::<Exchange>().unwrap().log_line(
        refused.status(),
        Duration::ZERO,
        0,
    );
    assert!(line.ends_with("error=target_not_allowed"), "{line}");
    assert!(!format!("{:?}", refused.extensions().get::<Exchange>()).contains("secret"));
}

#[test]
fn host_allow_list_stops_dns_rebinding() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]"),
    ]);
    let cases: &[(Option<&str>, bool)] = &[
        (Some("localhost:3000"), true),
        (Some("LOCALHOST"), true),
        (Some("127.0.0.1:3000"), true),
        (Some("[::1]:3000"), true),
        (Some("rebind.attacker.example:3000"), false),
        (Some("localhost.attacker.example"), false),
        (Some("127.0.0.2:3000"), false),
        (None, false),
    ];
    for (host, allowed) in cases {
        let fal = FakeFal::ok();
        let headers: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        let response = run(
            &proxy,
            &fal,
            request("POST", Some("https://fal.run/x"), &headers),
        );
        if *allowed {
            assert_eq!(response.status(), StatusCode::OK, "{host:?}");
        } else {
            assert_eq!(
                error_of(&response),
                Some(ProxyError::HostNotAllowed),
                "{host:?}"
            );
            assert_eq!(fal.count(), 0);
        }
    }
    // Unset: any host.
    let any = self::proxy(&[("FAL_KEY", SERVER_KEY)]);
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
fn vary_origin_on_every_answer_when_cors_is_on() {
    let cors = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
    ]);
    let off = proxy(&[("FAL_KEY", SERVER_KEY)]);
    let fal = FakeFal::ok();
    let varies = |response: &Response<ProxyBody<Bytes>>| {
        response
            .headers()
            .get_all("vary")
            .iter()
            .any(|v| v == "origin")
    };
    assert!(varies(&run(
        &cors,
        &fal,
        request("POST", Some("https://fal.run/x"), &[])
    )));
    assert!(varies(&run(
        &cors,
        &fal,
        request("POST", Some("https://evil.example/"), &[])
    )));
    assert!(varies(&run(
        &cors,
        &fal,
        request(
            "POST",
            Some("https://fal.run/x"),
            &[("origin", "https://evil.example")]
        )
    )));
    assert!(!varies(&run(
        &off,
        &fal,
        request("POST", Some("https://fal.run/x"), &[])
    )));
}

const AUTH_SECRET: &str = "contract-test-secret-at-least-32-bytes";

/// An HS256 token for `sub`, valid for an hour from now.
fn hs256_token(sub: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{KeyInit, Mac};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"sub": sub, "exp": now + 3600});
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = hmac::Hmac::<sha2::Sha256>::new_from_slice(AUTH_SECRET.as_bytes())
        .unwrap()
        .chain_update(message.as_bytes())
        .finalize()
        .into_bytes();
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn with_context(mut request: Request<Bytes>) -> Request<Bytes> {
    request
        .extensions_mut()
        .insert(RequestContext::new(std::time::SystemTime::now(), None));
    request
}

#[test]
fn authentication_gates_every_forwarded_request() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_AUTH_JWT_SECRET", AUTH_SECRET),
        ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
    ]);
    let fal = FakeFal::ok();
    let target = Some("https://fal.run/fal-ai/flux/dev");
    let token = hs256_token("user-1");
    let bearer = format!("Bearer {token}");

    // No token, a bad one, a Basic header: 401 with `www-authenticate` and
    // CORS, nothing upstream.
    let expired_or_bad = format!("Bearer {}x", &token[..token.len() - 1]);
    for headers in [
        vec![("origin", "https://app.example")],
        vec![
            ("origin", "https://app.example"),
            ("authorization", "Basic dTpw"),
        ],
        vec![
            ("origin", "https://app.example"),
            ("authorization", expired_or_bad.as_str()),
        ],
    ] {
        let response = run(
            &proxy,
            &fal,
            with_context(request("POST", target, &headers)),
        );
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(error_of(&response), Some(ProxyError::Unauthenticated));
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(body_text(&response).contains("unauthenticated"));
    }
    assert_eq!(fal.count(), 0);

    // A preflight never needs a token.
    let preflight = run(
        &proxy,
        &fal,
        with_context(request(
            "OPTIONS",
            None,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
        )),
    );
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);

    // A valid token passes; it is not forwarded, and the log line names the
    // user by tag only.
    let response = run(
        &proxy,
        &fal,
        with_context(request("POST", target, &[("authorization", &bearer)])),
    );
    assert_eq!(response.status(), StatusCode::OK);
    let seen = fal.seen.borrow();
    assert_eq!(
        seen[0].headers()["authorization"],
        format!("Key {SERVER_KEY}")
    );
    let forwarded = format!("{:?}", seen[0].headers());
    assert!(!forwarded.contains(&token), "the token went upstream");
    let exchange = response.extensions().get::<Exchange>().unwrap();
    let line = exchange.log_line(StatusCode::OK, std::time::Duration::ZERO, 0);
    let tag = exchange.identity().unwrap().tag();
    assert!(line.contains(&format!("user={tag}")), "{line}");
    assert!(!line.contains(&token) && !line.contains("user-1"), "{line}");
    assert!(!format!("{exchange:?}").contains(&token));
}

#[test]
fn authentication_with_user_keys_and_without_a_clock() {
    // A BYOK playground that also requires sign-in.
    let proxy = proxy(&[
        ("FAL_PROXY_KEY_MODE", "user"),
        ("FAL_PROXY_AUTH_JWT_SECRET", AUTH_SECRET),
    ]);
    let fal = FakeFal::ok();
    let target = Some("https://fal.run/fal-ai/flux/dev");
    let bearer = format!("Bearer {}", hs256_token("user-2"));
    let response = run(
        &proxy,
        &fal,
        with_context(request(
            "POST",
            target,
            &[
                ("authorization", &bearer),
                ("x-fal-user-key", "visitor:key"),
            ],
        )),
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        fal.seen.borrow()[0].headers()["authorization"],
        "Key visitor:key"
    );
    let response = run(
        &proxy,
        &fal,
        with_context(request(
            "POST",
            target,
            &[("x-fal-user-key", "visitor:key")],
        )),
    );
    assert_eq!(error_of(&response), Some(ProxyError::Unauthenticated));

    // A target that forgot the request context fails closed.
    let response = run(
        &proxy,
        &fal,
        request(
            "POST",
            target,
            &[
                ("authorization", &bearer),
                ("x-fal-user-key", "visitor:key"),
            ],
        ),
    );
    assert_eq!(error_of(&response), Some(ProxyError::Internal));
    assert_eq!(fal.count(), 1);
}
mod hardening;

/// A store that cannot be reached.
struct DownStore;

impl crate::limits::CounterStore for DownStore {
    async fn hit(
        &self,
        _hit: &crate::limits::Hit,
    ) -> Result<crate::limits::Counted, crate::limits::StoreError> {
        Err(crate::limits::StoreError::Unreachable)
    }
}

fn at(request: Request<Bytes>, secs: u64, ip: &str) -> Request<Bytes> {
    let mut request = request;
    request.extensions_mut().insert(RequestContext::new(
        std::time::UNIX_EPOCH + Duration::from_secs(secs),
        Some(ip.parse().unwrap()),
    ));
    request
}

fn run_with<S: crate::limits::CounterStore>(
    proxy: &Proxy,
    fal: &FakeFal,
    store: &S,
    request: Request<Bytes>,
) -> Response<ProxyBody<Bytes>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(proxy.forward(fal, store, request))
}

#[test]
fn over_the_limit_is_a_429_with_retry_after_and_nothing_goes_upstream() {
    let proxy = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_RATE_LIMIT", "2/min,10/day"),
        ("FAL_PROXY_ENDPOINT_COSTS", "fal-ai/kling-video/**=2"),
        ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
    ]);
    let fal = FakeFal::ok();
    let store = crate::limits::MemoryStore::new();
    let now = 1_800_000_040; // 20 s before a minute ends
    let submit = || {
        at(
            request(
                "POST",
                Some("https://queue.fal.run/fal-ai/flux/dev"),
                &[("origin", "https://app.example")],
            ),
            now,
            "203.0.113.5",
        )
    };
    let first = run_with(&proxy, &fal, &store, submit());
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.headers()["ratelimit"],
        "\"2/min\";r=1;t=20, \"10/day\";r=9;t=57560"
    );
    assert_eq!(
        first.headers()["ratelimit-policy"],
        "\"2/min\";q=2;w=60, \"10/day\";q=10;w=86400"
    );
    let exposed = first.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for name in ["ratelimit", "ratelimit-policy", "retry-after"] {
        assert!(exposed.split(", ").any(|n| n == name), "{exposed}");
    }
    assert_eq!(
        run_with(&proxy, &fal, &store, submit()).status(),
        StatusCode::OK
    );
    let refused = run_with(&proxy, &fal, &store, submit());
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_of(&refused), Some(ProxyError::RateLimited));
    assert_eq!(refused.headers()["retry-after"], "20");
    assert_eq!(
        refused.headers()["ratelimit"],
        "\"2/min\";r=0;t=20, \"10/day\";r=8;t=57560"
    );
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let body: serde_json::Value = serde_json::from_str(&body_text(&refused)).unwrap();
    assert_eq!(body["error_type"], "rate_limited");
    assert!(
        body["detail"].as_str().unwrap().contains("20 seconds"),
        "{body}"
    );
    assert_eq!(fal.count(), 2);
    // A poll of the submitted request still passes, uncounted.
    let poll = run_with(
        &proxy,
        &fal,
        &store,
        at(
            request(
                "GET",
                Some("https://queue.fal.run/fal-ai/flux/requests/r1/status"),
                &[],
            ),
            now,
            "203.0.113.5",
        ),
    );
    assert_eq!(poll.status(), StatusCode::OK);
    assert!(poll.headers().get("ratelimit").is_none());
    // Another address has its own budget; the same /64 shares one.
    let other = at(
        request("POST", Some("https://fal.run/fal-ai/kling-video/v2"), &[]),
        now,
        "2001:db8:0:1::1",
    );
    assert_eq!(
        run_with(&proxy, &fal, &store, other).status(),
        StatusCode::OK
    );
    let neighbour = at(
        request("POST", Some("https://fal.run/fal-ai/flux/dev"), &[]),
        now,
        "2001:db8:0:1:ffff::2",
    );
    assert_eq!(
        run_with(&proxy, &fal, &store, neighbour).status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(fal.count(), 4);
}

#[test]
fn a_store_that_cannot_answer_fails_closed_or_open() {
    let closed = proxy(&[("FAL_KEY", SERVER_KEY), ("FAL_PROXY_RATE_LIMIT", "5/min")]);
    let fal = FakeFal::ok();
    let submit = || {
        at(
            request("POST", Some("https://queue.fal.run/fal-ai/flux/dev"), &[]),
            1_800_000_000,
            "127.0.0.1",
        )
    };
    let response = run_with(&closed, &fal, &DownStore, submit());
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(&response), Some(ProxyError::RateStoreUnavailable));
    assert!(body_text(&response).contains("rate_store_unavailable"));
    assert_eq!(fal.count(), 0);
    let exchange = response.extensions().get::<Exchange>().unwrap();
    let line = exchange.log_line(response.status(), Duration::ZERO, 0);
    assert!(line.contains("rate_store=unavailable"), "{line}");
    // Polls never ask the store.
    let poll = at(
        request(
            "GET",
            Some("https://queue.fal.run/fal-ai/flux/requests/r1"),
            &[],
        ),
        1_800_000_000,
        "127.0.0.1",
    );
    assert_eq!(
        run_with(&closed, &fal, &DownStore, poll).status(),
        StatusCode::OK
    );

    let open = proxy(&[
        ("FAL_KEY", SERVER_KEY),
        ("FAL_PROXY_RATE_LIMIT", "5/min"),
        ("FAL_PROXY_RATE_STORE_FAILURE", "open"),
    ]);
    let response = run_with(&open, &fal, &DownStore, submit());
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("ratelimit").is_none());
    assert_eq!(fal.count(), 2);
}

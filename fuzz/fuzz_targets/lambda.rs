//! The Lambda function's request translation: any function-URL event
//! (structured from the input on the shape AWS sends, or raw bytes),
//! deserialised by `lambda_http` as the binary's runtime does, prepared by
//! `lambda/src/translate.rs` (compiled here from the binary's own file),
//! then the core's request phase. Never a panic; the client address is
//! exactly the event's `requestContext.http.sourceIp` when that parses as
//! an IP address (else none: the limits' fallback); a non-empty body's
//! length is stated, so an oversized one never goes upstream; whatever is
//! forwarded is allowed by the reference models (URL allow-list, endpoint
//! list, header allow-list), and no key shows in any answer.
//!
//! Events `lambda_http` itself panics on (a host, scheme, path or query
//! that make no URL, a body flagged base64 that is not, see [`converts`])
//! are skipped: that happens before the
//! function's code, in a dependency, and is recorded in the README.

#![no_main]

#[path = "../../lambda/src/translate.rs"]
mod translate;

use arbitrary::Arbitrary;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fal_proxy_core::{Decision, Proxy, RequestContext};
use fal_proxy_fuzz::{
    SERVER_KEY, USER_KEY, assert_no_key_in_answer, endpoint_model, leaks, proxy, url_model,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

/// The event the fixtures of the Lambda tests use, as the base.
const FIXTURE: &str = include_str!("../../lambda/fixtures/post-binary.json");
/// A body limit the fuzzer can reach.
const MAX_BODY: usize = 64;
const ENDPOINTS: &str = "fal-ai/flux/**";

/// Server mode, and user-or-server mode under an endpoint list; built once.
static PROXIES: LazyLock<[Proxy; 2]> = LazyLock::new(|| {
    let max = MAX_BODY.to_string();
    [
        proxy(&[("FAL_PROXY_MAX_BODY_BYTES", &max)]).expect("server mode"),
        proxy(&[
            ("FAL_PROXY_MAX_BODY_BYTES", &max),
            ("FAL_PROXY_KEY_MODE", "user-or-server"),
            ("FAL_PROXY_ALLOW_ENDPOINTS", ENDPOINTS),
        ])
        .expect("user-or-server mode"),
    ]
});

static BASE: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(FIXTURE).expect("the fixture"));

const METHODS: &[&str] = &[
    "POST", "GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "post", "",
    "P OST",
];
const PATHS: &[&str] = &[
    "/api/fal/proxy",
    "/api/fal/proxy/",
    "/api/fal/proxy/info",
    "/",
    "",
    "//api/fal/proxy",
    "/api/fal/proxy/../proxy",
    "/api/fal/proxy?x=1",
    "api/fal/proxy",
    "/api/fal/proxy%2f",
];
const NAMES: &[&str] = &[
    "x-fal-target-url",
    "X-Fal-Target-Url",
    "x-fal-user-key",
    "content-type",
    "content-length",
    "transfer-encoding",
    "authorization",
    "cookie",
    "host",
    "origin",
    "connection",
    "x-fal-queue-priority",
    "x-forwarded-for",
    "accept",
    "user-agent",
    "x-fal-",
    "bad name",
    "",
];
const VALUES: &[&str] = &[
    "https://fal.run/fal-ai/flux/dev",
    "https://queue.fal.run/fal-ai/flux/dev/requests/r1/status",
    "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
    "https://fal.run.evil.example/x",
    "https://fal.run/fal-ai/flux/dev,https://evil.example/",
    "http://fal.run/fal-ai/flux/dev",
    "https://fal.run/other/app",
    "",
    "0",
    "65",
    "64",
    "1, 2",
    "chunked",
    "application/json",
];
const IPS: &[&str] = &[
    "198.51.100.23",
    " 198.51.100.23",
    "198.51.100.23 ",
    "::ffff:198.51.100.23",
    "[::1]",
    "::1",
    "01.2.3.4",
    "1.2.3.4:80",
    "fe80::1%eth0",
    "",
    "unknown",
    "1.2.3",
    "198.51.100.23, 10.0.0.1",
];

#[derive(Arbitrary, Debug)]
enum SourceIp {
    V4([u8; 4]),
    V6([u16; 8]),
    Pick(u8),
    Text(String),
    Absent,
    Null,
    Number,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Pick(u8),
    Any(String),
    Number,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Text(String),
    /// Base64 of these bytes, flagged `isBase64Encoded`.
    Base64(Vec<u8>),
    /// Text flagged `isBase64Encoded` (which need not be base64).
    Flagged(String),
}

#[derive(Arbitrary, Debug)]
struct Event {
    setup: bool,
    method: Text,
    path: Text,
    query: Option<String>,
    /// Instead of the fixture's headers.
    headers: Option<Vec<(u8, Text)>>,
    cookies: Option<Vec<String>>,
    source_ip: SourceIp,
    body: Option<Body>,
    /// The whole event as these bytes, instead of all of the above.
    raw: Option<Vec<u8>>,
}

fn text(spec: &Text, picks: &[&str]) -> Value {
    match spec {
        Text::Pick(pick) => picks[usize::from(*pick) % picks.len()].into(),
        Text::Any(text) => text.as_str().into(),
        Text::Number => json!(1),
    }
}

fn event_json(event: &Event) -> String {
    if let Some(raw) = &event.raw {
        return String::from_utf8_lossy(raw).into_owned();
    }
    let mut json = BASE.clone();
    json["requestContext"]["http"]["method"] = text(&event.method, METHODS);
    let path = text(&event.path, PATHS);
    json["rawPath"] = path.clone();
    json["requestContext"]["http"]["path"] = path;
    if let Some(query) = &event.query {
        json["rawQueryString"] = query.as_str().into();
    }
    if let Some(headers) = &event.headers {
        let mut map = serde_json::Map::new();
        for (pick, value) in headers.iter().take(16) {
            let name = NAMES[usize::from(*pick) % NAMES.len()];
            // The visitor's key only where a browser sends it: a key the
            // browser puts in another header is its own doing (a refused
            // `Origin` is even logged, sanitised).
            let value = match value {
                Text::Pick(_) if name == "x-fal-user-key" => USER_KEY.into(),
                value => text(value, VALUES),
            };
            map.insert(name.to_owned(), value);
        }
        json["headers"] = Value::Object(map);
    }
    if let Some(cookies) = &event.cookies {
        json["cookies"] = cookies.iter().take(4).map(String::as_str).collect();
    }
    let http = &mut json["requestContext"]["http"];
    match &event.source_ip {
        SourceIp::V4(octets) => http["sourceIp"] = Ipv4Addr::from(*octets).to_string().into(),
        SourceIp::V6(segments) => http["sourceIp"] = Ipv6Addr::from(*segments).to_string().into(),
        SourceIp::Pick(pick) => http["sourceIp"] = IPS[usize::from(*pick) % IPS.len()].into(),
        SourceIp::Text(text) => http["sourceIp"] = text.as_str().into(),
        SourceIp::Absent => {
            if let Some(http) = http.as_object_mut() {
                http.remove("sourceIp");
            }
        }
        SourceIp::Null => http["sourceIp"] = Value::Null,
        SourceIp::Number => http["sourceIp"] = json!(7),
    }
    match &event.body {
        None => {
            json["body"] = Value::Null;
            json["isBase64Encoded"] = false.into();
        }
        Some(Body::Text(text)) => {
            json["body"] = text.as_str().into();
            json["isBase64Encoded"] = false.into();
        }
        Some(Body::Base64(bytes)) => {
            json["body"] = STANDARD.encode(bytes).into();
            json["isBase64Encoded"] = true.into();
        }
        Some(Body::Flagged(text)) => {
            json["body"] = text.as_str().into();
            json["isBase64Encoded"] = true.into();
        }
    }
    json.to_string()
}

/// The event's `requestContext.http.sourceIp`, when it is a string.
fn source_ip(json: &str) -> Option<String> {
    let json: Value = serde_json::from_str(json).ok()?;
    Some(
        json["requestContext"]["http"]["sourceIp"]
            .as_str()?
            .to_owned(),
    )
}

/// Whether `lambda_http` (1.3.2) turns this event into a request without
/// panicking. Its conversion unwraps the URL it builds from the `Host`
/// header (else `requestContext.domainName`), `x-forwarded-proto`, the stage
/// and `rawPath`, then expects `http` to take it with `rawQueryString`
/// appended, and decodes a body flagged base64 with an `expect`; an event
/// where any of these fails makes it panic, before the
/// function's code runs (`lambda_runtime` turns the panic into an invocation
/// error: the function URL answers 502). This restates that URL building,
/// so that the target skips those events and fuzzes what follows.
fn converts(json: &str) -> bool {
    use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequest;
    let Ok(event) = serde_json::from_str::<ApiGatewayV2httpRequest>(json) else {
        // Not an event `from_str` accepts either: it answers an error.
        return true;
    };
    let raw_path = event.raw_path.clone().unwrap_or_default();
    let path = match event.request_context.stage.as_deref() {
        None | Some("$default") => raw_path,
        Some(stage) if raw_path.starts_with(&format!("/{stage}/")) => raw_path,
        Some(stage) => format!("/{stage}{raw_path}"),
    };
    let host = event
        .headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or(event.request_context.domain_name.as_deref());
    let url = match host {
        None => {
            url::Url::parse(&format!("http://localhost{path}")).map(|url| url.path().to_owned())
        }
        Some(host) => {
            let scheme = event
                .headers
                .get("x-forwarded-proto")
                .and_then(|proto| proto.to_str().ok())
                .unwrap_or("https");
            url::Url::parse(&format!("{scheme}://{host}{path}")).map(String::from)
        }
    };
    let Ok(mut uri) = url else {
        return false;
    };
    if let Some(query) = event.raw_query_string.as_deref().filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(query);
    }
    // The body, flagged base64, is decoded with an `expect` too.
    let body = match (&event.body, event.is_base64_encoded) {
        (Some(body), true) => STANDARD.decode(body).is_ok(),
        _ => true,
    };
    body && http::Uri::try_from(uri).is_ok()
}

/// `FUZZ_SHOW=1`: what became of each input, on stderr (to pick seeds, to
/// check that inputs get through at all).
static SHOW: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FUZZ_SHOW").is_some());

fuzz_target!(|event: Event| {
    let json = event_json(&event);
    if !converts(&json) {
        return;
    }
    let Ok(request) = lambda_http::request::from_str(&json) else {
        return;
    };
    let received_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let request = translate::prepare(request, received_at);

    let context = request
        .extensions()
        .get::<RequestContext>()
        .copied()
        .expect("a request context");
    assert_eq!(context.received_at, received_at);
    let expected_ip = source_ip(&json).and_then(|ip| ip.parse::<IpAddr>().ok());
    assert_eq!(context.client_ip, expected_ip, "{json}");

    let body_len = request.body().len();
    let lengths: Vec<_> = request.headers().get_all("content-length").iter().collect();
    if body_len > 0 {
        assert_eq!(lengths.len(), 1, "{json}");
        assert_eq!(lengths[0], body_len.to_string().as_str());
    }

    let incoming = request.headers().clone();
    let method = request.method().as_str().to_owned();
    let listed = event.setup;
    let proxy = &PROXIES[usize::from(listed)];
    let decision = proxy.request_filter(request);
    assert_no_key_in_answer(&decision);
    if *SHOW {
        let forwarded = matches!(decision, Decision::Forward(..));
        let ip = context
            .client_ip
            .map(|ip| if ip.is_ipv4() { "v4" } else { "v6" });
        eprintln!(
            "outcome forwarded={forwarded} body={} ip={ip:?}",
            body_len > 0
        );
    }
    let Decision::Forward(sent, _) = decision else {
        return;
    };
    assert!(body_len <= MAX_BODY, "a {body_len}-byte body went upstream");
    let mut targets = incoming.get_all("x-fal-target-url").iter();
    let (Some(target), None) = (targets.next(), targets.next()) else {
        panic!("forwarded without exactly one target: {json}");
    };
    assert!(
        url_model::allows(target.as_bytes()),
        "{target:?} went upstream"
    );
    let target = url::Url::parse(target.to_str().expect("an allowed target is ASCII"))
        .expect("an allowed target parses");
    if listed && matches!(target.host_str(), Some("fal.run" | "queue.fal.run")) {
        let queue = target.host_str() == Some("queue.fal.run");
        assert!(
            endpoint_model::allows(&[ENDPOINTS.to_owned()], queue, &method, target.path()),
            "{method} {target} went upstream past the endpoint list"
        );
    }
    let headers = sent.headers();
    for (name, value) in headers {
        let name = name.as_str();
        let allowed = matches!(
            name,
            "content-type"
                | "content-length"
                | "accept"
                | "user-agent"
                | "authorization"
                | "x-fal-client-proxy"
        ) || (name.starts_with("x-fal-")
            && name != "x-fal-target-url"
            && name != "x-fal-user-key");
        assert!(allowed, "{name} went upstream");
        // The proxy adds a key nowhere but `authorization`: any other
        // header is the browser's own (a key in it is the browser's doing).
        if name != "authorization" && name != "x-fal-client-proxy" {
            assert!(
                incoming.get_all(name).iter().any(|sent| sent == value),
                "{name} was changed or added"
            );
        } else if name == "x-fal-client-proxy" {
            assert!(!leaks(value.as_bytes()), "a key in {name}");
        }
    }
    let authorizations: Vec<_> = headers.get_all("authorization").iter().collect();
    assert_eq!(authorizations.len(), 1);
    let server = format!("Key {SERVER_KEY}");
    let user = incoming
        .get("x-fal-user-key")
        .map(|key| format!("Key {}", String::from_utf8_lossy(key.as_bytes())));
    assert!(
        authorizations[0] == server.as_str()
            || (listed && user.as_deref() == Some(authorizations[0].to_str().unwrap_or_default())),
        "authorization {:?}",
        authorizations[0]
    );
});

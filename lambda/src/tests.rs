//! Function-URL events, as Lambda delivers them, through the handler with a
//! fake upstream that records what it got and replies as scripted.

use super::*;
use bytes::Bytes;
use fal_proxy_core::{BoxError, UpstreamError};
use http::HeaderValue;
use http_body_util::BodyExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

const SERVER_KEY: &str = "test-id:test-secret";
const POST_BODY: [u8; 16] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xff, 0xfe, 0x80, 0x7f, 0x00, 0x10, 0x20,
];

/// A scripted upstream body: chunks, or an error where it breaks off.
#[derive(Debug, Clone, Default)]
struct FakeBody(VecDeque<Result<Bytes, &'static str>>);

impl http_body::Body for FakeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let next = self.get_mut().0.pop_front();
        std::task::Poll::Ready(
            next.map(|item| item.map(http_body::Frame::data).map_err(Into::into)),
        )
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: http::Method,
    uri: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

/// Records every request; answers 200 with a repeated header and `chunks`.
#[derive(Debug, Clone, Default)]
struct FakeFal {
    seen: Arc<Mutex<Vec<Recorded>>>,
    chunks: Vec<Result<Bytes, &'static str>>,
}

impl FakeFal {
    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

impl fal_proxy_core::KeySetSource for FakeFal {
    async fn fetch_key_set(
        &self,
        _url: &str,
    ) -> Result<fal_proxy_core::KeySetDocument, fal_proxy_core::KeySetError> {
        Err(fal_proxy_core::KeySetError::Unreachable)
    }
}

impl Upstream<Body> for FakeFal {
    type Body = FakeBody;

    async fn send(&self, request: Request<Body>) -> Result<Response<FakeBody>, UpstreamError> {
        self.seen.lock().unwrap().push(Recorded {
            method: request.method().clone(),
            uri: request.uri().to_string(),
            headers: request.headers().clone(),
            body: request.body().to_vec(),
        });
        let body = FakeBody(self.chunks.iter().cloned().collect());
        Ok(Response::builder()
            .header("content-type", "application/json")
            .header("content-length", "17")
            .header("x-fal-request-id", "req-1")
            .header("x-fal-multi", "first")
            .header("x-fal-multi", "second")
            .header("set-cookie", "fal=1")
            .body(body)
            .unwrap())
    }
}

fn function(pairs: &[(&str, &str)], fal: &FakeFal) -> Function<FakeFal, NativeStore> {
    let env: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    cold_start(
        |name| env.get(name).cloned(),
        |_| Ok::<_, Infallible>(fal.clone()),
    )
}

fn event(name: &str) -> Request<Body> {
    let json = match name {
        "post-binary" => include_str!("../fixtures/post-binary.json"),
        "get-status" => include_str!("../fixtures/get-status.json"),
        "preflight" => include_str!("../fixtures/preflight.json"),
        _ => unreachable!("no fixture {name}"),
    };
    lambda_http::request::from_str(json).expect("a function-URL event")
}

/// The post fixture with another body, base64-encoded as a function URL does.
fn post_with_body(body: &[u8]) -> Request<Body> {
    let mut json: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/post-binary.json")).unwrap();
    json["body"] = base64(body).into();
    lambda_http::request::from_str(&json.to_string()).unwrap()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn body_of<B>(response: Response<LoggedBody<B>>) -> Bytes
where
    LoggedBody<B>: http_body::Body<Data = Bytes, Error = BoxError>,
{
    response.into_body().collect().await.unwrap().to_bytes()
}

fn json_of(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("a JSON body")
}

#[tokio::test]
async fn binary_body_is_decoded_and_forwarded_with_the_server_key() {
    let fal = FakeFal {
        chunks: vec![Ok(Bytes::from_static(b"{\"images\":[]}"))],
        ..FakeFal::default()
    };
    let function = function(
        &[
            ("FAL_KEY", SERVER_KEY),
            ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
        ],
        &fal,
    );
    let response = handle(&function, event("post-binary")).await;
    assert_eq!(response.status(), 200);

    let [sent] = &fal.seen()[..] else {
        panic!("expected one upstream request, got {:?}", fal.seen())
    };
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.uri, "https://fal.run/fal-ai/flux/dev");
    assert_eq!(sent.body, POST_BODY);
    assert_eq!(sent.headers["content-length"], "16");
    assert_eq!(sent.headers["content-type"], "image/png");
    assert_eq!(sent.headers["x-fal-queue-priority"], "low");
    assert_eq!(sent.headers["authorization"], format!("Key {SERVER_KEY}"));
    assert_eq!(sent.headers.get_all("authorization").iter().count(), 1);
    for dropped in [
        "cookie",
        "x-fal-target-url",
        "host",
        "x-forwarded-for",
        "x-amzn-trace-id",
    ] {
        assert!(!sent.headers.contains_key(dropped), "{dropped} forwarded");
    }

    let headers = response.headers();
    let multi: Vec<_> = headers.get_all("x-fal-multi").iter().collect();
    assert_eq!(multi, ["first", "second"], "repeated headers are kept");
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        !headers.contains_key("content-length"),
        "the body is re-framed"
    );
    assert!(!headers.contains_key("set-cookie"));
    assert_eq!(body_of(response).await, "{\"images\":[]}");
}

#[tokio::test]
async fn query_reaches_upstream_and_a_bodyless_get_stays_bodyless() {
    let fal = FakeFal::default();
    let function = function(&[("FAL_KEY", SERVER_KEY)], &fal);
    let response = handle(&function, event("get-status")).await;
    assert_eq!(response.status(), 200);
    let [sent] = &fal.seen()[..] else {
        panic!("expected one upstream request")
    };
    assert_eq!(sent.method, "GET");
    assert_eq!(
        sent.uri,
        "https://queue.fal.run/fal-ai/flux/requests/0b9f2f4e-1111-4222-8333-444455556666/status?logs=1"
    );
    assert!(sent.body.is_empty());
    assert!(!sent.headers.contains_key("content-length"));
}

#[tokio::test]
async fn the_proxy_answers_the_preflight() {
    let fal = FakeFal::default();
    let function = function(
        &[
            ("FAL_KEY", SERVER_KEY),
            ("FAL_PROXY_ALLOWED_ORIGINS", "https://app.example"),
        ],
        &fal,
    );
    let response = handle(&function, event("preflight")).await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(fal.seen().is_empty());
}

#[tokio::test]
async fn refused_requests_are_answered_not_errors() {
    let fal = FakeFal::default();
    let function = function(&[("FAL_KEY", SERVER_KEY)], &fal);
    let mut request = event("post-binary");
    request.headers_mut().insert(
        "x-fal-target-url",
        HeaderValue::from_static("https://fal.run.evil.example/steal"),
    );
    let response = handle(&function, request).await;
    assert_eq!(response.status(), 403);
    assert_eq!(
        json_of(&body_of(response).await)["error_type"],
        "target_not_allowed"
    );
    assert!(fal.seen().is_empty());
}

#[tokio::test]
async fn body_limit_is_capped_at_what_a_function_url_accepts() {
    let fal = FakeFal::default();
    let function = function(
        &[
            ("FAL_KEY", SERVER_KEY),
            ("FAL_PROXY_MAX_BODY_BYTES", "20000000"),
        ],
        &fal,
    );
    let Function::Ready { proxy, .. } = &function else {
        panic!("configured")
    };
    assert_eq!(proxy.config().max_body_bytes(), MAX_BODY_BYTES);

    // The event carries no content-length (the browser sent it chunked):
    // the decoded length is what the limit is checked against.
    let limit = usize::try_from(MAX_BODY_BYTES).unwrap();
    let over = handle(&function, post_with_body(&vec![7; limit + 1])).await;
    assert_eq!(over.status(), 413);
    assert_eq!(
        json_of(&body_of(over).await)["error_type"],
        "body_too_large"
    );
    assert!(fal.seen().is_empty(), "nothing goes upstream");

    let at = handle(&function, post_with_body(&vec![7; limit])).await;
    assert_eq!(at.status(), 200);
    assert_eq!(fal.seen()[0].body.len(), limit);
}

#[tokio::test]
async fn a_lower_configured_limit_stays() {
    let fal = FakeFal::default();
    let function = function(
        &[("FAL_KEY", SERVER_KEY), ("FAL_PROXY_MAX_BODY_BYTES", "10")],
        &fal,
    );
    let response = handle(&function, event("post-binary")).await;
    assert_eq!(response.status(), 413);
    assert!(fal.seen().is_empty());
}

#[tokio::test]
async fn a_bad_setting_answers_every_request_naming_the_variable() {
    for (pairs, var, value) in [
        (
            &[
                ("FAL_KEY", SERVER_KEY),
                ("FAL_PROXY_KEY_MODE", "sekrit-mode"),
            ][..],
            "FAL_PROXY_KEY_MODE",
            "sekrit-mode",
        ),
        (
            &[("FAL_KEY", "id:with a space-sekrit")][..],
            "FAL_KEY",
            "sekrit",
        ),
    ] {
        let fal = FakeFal::default();
        let function = function(pairs, &fal);
        assert!(matches!(function, Function::Misconfigured(_)));
        for _ in 0..2 {
            let response = handle(&function, event("post-binary")).await;
            assert_eq!(response.status(), 500);
            assert_eq!(response.headers()["content-type"], "application/json");
            let body = body_of(response).await;
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains(value), "the value leaks: {text}");
            let json = json_of(&body);
            assert_eq!(json["error_type"], "invalid_configuration");
            assert!(json["detail"].as_str().unwrap().contains(var), "{text}");
        }
        assert!(fal.seen().is_empty());
    }
}

#[tokio::test]
async fn no_http_client_answers_an_internal_error() {
    let function: Function<FakeFal, NativeStore> = cold_start(|_| None, |_| Err("no TLS roots"));
    let response = handle(&function, event("post-binary")).await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        json_of(&body_of(response).await)["error_type"],
        "internal_error"
    );
}

#[tokio::test]
async fn an_upstream_body_that_breaks_off_ends_the_stream() {
    let fal = FakeFal {
        chunks: vec![
            Ok(Bytes::from_static(b"data: {\"step\":0}\n\n")),
            Err("connection reset"),
            Ok(Bytes::from_static(b"never sent")),
        ],
        ..FakeFal::default()
    };
    let function = function(&[("FAL_KEY", SERVER_KEY)], &fal);
    let response = handle(&function, event("post-binary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body_of(response).await, "data: {\"step\":0}\n\n");
}

/// The post fixture from another client address.
fn post_from(source_ip: &str) -> Request<Body> {
    let mut json: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/post-binary.json")).unwrap();
    json["requestContext"]["http"]["sourceIp"] = source_ip.into();
    lambda_http::request::from_str(&json.to_string()).unwrap()
}

#[tokio::test]
async fn limits_count_per_source_ip_of_the_function_url() {
    let fal = FakeFal::default();
    let function = function(
        &[("FAL_KEY", SERVER_KEY), ("FAL_PROXY_RATE_LIMIT", "1/min")],
        &fal,
    );
    let first = handle(&function, event("post-binary")).await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().contains_key("ratelimit"));
    // A spoofed forwarding header changes nothing: the event's sourceIp counts.
    let mut again = event("post-binary");
    again
        .headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("192.0.2.99"));
    let refused = handle(&function, again).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        handle(&function, post_from("192.0.2.99")).await.status(),
        200
    );
    assert_eq!(fal.seen().len(), 2);
}

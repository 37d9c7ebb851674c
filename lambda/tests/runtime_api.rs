//! The real compiled binary, driven through a fake of the Lambda Runtime API.
//!
//! The test plays Lambda: it hands function-URL events out at
//! `/2018-06-01/runtime/invocation/next` and reads what the binary streams
//! to `/invocation/{id}/response`, chunk by chunk, as Lambda's front end
//! would. A mock fal on 127.0.0.1 stands behind `FAL_PROXY_UPSTREAM`, and
//! the test decides when each of its stream chunks is sent. Nothing here
//! reaches the internet or needs a real key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test: any failure is a panic"
)]

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const SERVER_KEY: &str = "runtime-id:runtime-secret";
/// Generous: the machine running the tests may be busy.
const WAIT: Duration = Duration::from_secs(30);

/// A body fed through a channel, so the test decides when each chunk goes.
struct ChannelBody(UnboundedReceiver<Bytes>);

impl ChannelBody {
    fn full(bytes: impl Into<Bytes>) -> Self {
        let (tx, rx) = unbounded_channel();
        let _ = tx.send(bytes.into());
        Self(rx)
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Serves HTTP/1.1 on a free 127.0.0.1 port with `handler`.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ChannelBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    address
}

/// What the binary posted for one invocation.
#[derive(Debug)]
enum Posted {
    Chunk(Bytes),
    End,
}

/// The Lambda side of the Runtime API.
#[derive(Clone)]
struct FakeRuntime {
    address: SocketAddr,
    events: UnboundedSender<(String, String)>,
    invocations: Arc<Mutex<HashMap<String, UnboundedSender<Posted>>>>,
    /// Paths of every `/error` and `/init/error` the binary reported.
    errors: Arc<Mutex<Vec<String>>>,
}

impl FakeRuntime {
    async fn start() -> Self {
        let (events, pending) = unbounded_channel::<(String, String)>();
        let pending = Arc::new(tokio::sync::Mutex::new(pending));
        let invocations: Arc<Mutex<HashMap<String, UnboundedSender<Posted>>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (inv, errs) = (Arc::clone(&invocations), Arc::clone(&errors));
        let address = serve(move |request: Request<Incoming>| {
            let (pending, invocations, errors) =
                (Arc::clone(&pending), Arc::clone(&inv), Arc::clone(&errs));
            async move {
                let path = request.uri().path().to_owned();
                if path == "/2018-06-01/runtime/invocation/next" {
                    // Long-polls, as Lambda does, until the test invokes.
                    let Some((id, event)) = pending.lock().await.recv().await else {
                        return status(StatusCode::GONE);
                    };
                    let deadline = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        + Duration::from_secs(300);
                    return Response::builder()
                        .header("lambda-runtime-aws-request-id", id)
                        .header(
                            "lambda-runtime-deadline-ms",
                            deadline.as_millis().to_string(),
                        )
                        .header(
                            "lambda-runtime-invoked-function-arn",
                            "arn:aws:lambda:eu-west-1:123456789012:function:fal-proxy",
                        )
                        .header(
                            "lambda-runtime-trace-id",
                            "Root=1-00000000-000000000000000000000000",
                        )
                        .body(ChannelBody::full(event))
                        .unwrap();
                }
                let id = path
                    .strip_prefix("/2018-06-01/runtime/invocation/")
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                let posted = invocations.lock().unwrap().get(&id).cloned();
                if path.ends_with("/response")
                    && let Some(posted) = posted
                {
                    let mut body = request.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data() {
                            let _ = posted.send(Posted::Chunk(data));
                        }
                    }
                    let _ = posted.send(Posted::End);
                } else {
                    errors.lock().unwrap().push(path);
                    if let Some(posted) = posted {
                        let _ = posted.send(Posted::End);
                    }
                }
                status(StatusCode::ACCEPTED)
            }
        })
        .await;
        Self {
            address,
            events,
            invocations,
            errors,
        }
    }

    /// Hands `event` to the function; the invocation's response follows.
    fn invoke(&self, event: Value) -> Invocation {
        static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let id = format!(
            "invocation-{}",
            NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = unbounded_channel();
        self.invocations.lock().unwrap().insert(id.clone(), tx);
        self.events.send((id, event.to_string())).unwrap();
        Invocation {
            posted: rx,
            bytes: Vec::new(),
            body_start: None,
            ended: false,
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

fn status(status: StatusCode) -> Response<ChannelBody> {
    let mut response = Response::new(ChannelBody::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// One invocation's streamed response: a JSON prelude, eight NUL bytes,
/// then the body.
struct Invocation {
    posted: UnboundedReceiver<Posted>,
    bytes: Vec<u8>,
    body_start: Option<usize>,
    ended: bool,
}

impl Invocation {
    async fn next_chunk(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let posted = tokio::time::timeout(WAIT, self.posted.recv())
            .await
            .expect("the function answers in time");
        match posted {
            Some(Posted::Chunk(data)) => {
                self.bytes.extend_from_slice(&data);
                true
            }
            Some(Posted::End) | None => {
                self.ended = true;
                false
            }
        }
    }

    /// The status and headers of the response.
    async fn prelude(&mut self) -> Value {
        const DELIMITER: [u8; 8] = [0; 8];
        loop {
            if let Some(at) = self.bytes.windows(8).position(|w| w == DELIMITER) {
                self.body_start = Some(at + 8);
                return serde_json::from_slice(&self.bytes[..at]).expect("a JSON prelude");
            }
            assert!(
                self.next_chunk().await,
                "the response ended before its prelude"
            );
        }
    }

    fn body_so_far(&self) -> &[u8] {
        &self.bytes[self.body_start.expect("prelude read first")..]
    }

    /// Reads until the body contains `needle`; the body so far must not end.
    async fn read_until(&mut self, needle: &[u8]) {
        while !self
            .body_so_far()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            assert!(
                self.next_chunk().await,
                "the response ended without {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    async fn body(mut self) -> Vec<u8> {
        while self.next_chunk().await {}
        self.body_so_far().to_vec()
    }
}

/// A request as the mock fal received it.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A mock fal: `/fal.run/echo` answers with the body it got and a repeated
/// header; `/fal.run/stream` answers SSE whose chunks the test sends.
struct MockFal {
    origin: String,
    received: UnboundedReceiver<Received>,
    streams: UnboundedReceiver<UnboundedSender<Bytes>>,
}

impl MockFal {
    async fn start() -> Self {
        let (record, received) = unbounded_channel();
        let (open_stream, streams) = unbounded_channel();
        let address = serve(move |request: Request<Incoming>| {
            let (record, open_stream) = (record.clone(), open_stream.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let path = parts.uri.path().to_owned();
                let _ = record.send(Received {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts.headers,
                    body: body.clone(),
                });
                let response = Response::builder().header("x-fal-request-id", "mock-1");
                if path == "/fal.run/stream" {
                    let (chunks, rx) = unbounded_channel();
                    let _ = open_stream.send(chunks);
                    return response
                        .header("content-type", "text/event-stream")
                        .body(ChannelBody(rx))
                        .unwrap();
                }
                response
                    .header("content-type", "application/octet-stream")
                    .header("x-fal-multi", "first")
                    .header("x-fal-multi", "second")
                    .body(ChannelBody::full(body))
                    .unwrap()
            }
        })
        .await;
        Self {
            origin: format!("http://{address}"),
            received,
            streams,
        }
    }

    fn nothing_received(&mut self) -> bool {
        self.received.try_recv().is_err()
    }
}

/// The compiled `fal-proxy-lambda`, talking to `runtime`; killed on drop.
struct Function {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl Function {
    fn spawn(runtime: &FakeRuntime, env: &[(&str, &str)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_fal-proxy-lambda"));
        command
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", runtime.address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "fal-proxy")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the binary starts");
        let mut stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<String>> = Arc::default();
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buffer).await {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// A function-URL event: the fixture with this method, target and body.
fn event(method: &str, target: &str, body: Option<&[u8]>) -> Value {
    let mut event: Value =
        serde_json::from_str(include_str!("../fixtures/post-binary.json")).unwrap();
    event["requestContext"]["http"]["method"] = method.into();
    event["headers"]["x-fal-target-url"] = target.into();
    match body {
        Some(bytes) => {
            event["body"] = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
            event["isBase64Encoded"] = true.into();
        }
        None => {
            event.as_object_mut().unwrap().remove("body");
            event["isBase64Encoded"] = false.into();
        }
    }
    event
}

fn proxy_env(upstream: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FAL_KEY", SERVER_KEY.to_owned()),
        ("FAL_PROXY_UPSTREAM", upstream.to_owned()),
        (
            "FAL_PROXY_ALLOWED_ORIGINS",
            "https://app.example".to_owned(),
        ),
    ]
}

fn as_pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn binary_bodies_and_repeated_headers_round_trip() {
    let runtime = FakeRuntime::start().await;
    let mut fal = MockFal::start().await;
    let env = proxy_env(&fal.origin);
    let function = Function::spawn(&runtime, &as_pairs(&env));

    // Every byte value, invalid UTF-8 included, both ways.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let mut invocation = runtime.invoke(event("POST", "https://fal.run/echo", Some(&bytes)));
    let prelude = invocation.prelude().await;
    assert_eq!(prelude["statusCode"], 200, "{prelude}");
    assert_eq!(
        prelude["headers"]["x-fal-multi"],
        json!(["first", "second"])
    );
    assert_eq!(
        prelude["headers"]["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(prelude["headers"].get("content-length").is_none());
    assert_eq!(invocation.body().await, bytes);

    let received = fal.received.recv().await.unwrap();
    assert_eq!(received.method, "POST");
    assert_eq!(received.path, "/fal.run/echo");
    assert_eq!(received.body, bytes);
    assert_eq!(
        received.headers["authorization"],
        format!("Key {SERVER_KEY}")
    );
    assert!(
        received.headers["x-fal-client-proxy"]
            .to_str()
            .unwrap()
            .ends_with("(lambda)")
    );
    assert!(!received.headers.contains_key("cookie"));

    assert!(runtime.errors().is_empty(), "{:?}", runtime.errors());
    let log = function.log();
    assert!(
        log.contains("method=POST target=fal.run/echo status=200"),
        "{log}"
    );
    assert!(!log.contains("runtime-secret"), "the key is logged: {log}");
}

#[tokio::test]
async fn sse_streams_through_the_runtime_api_event_by_event() {
    let runtime = FakeRuntime::start().await;
    let mut fal = MockFal::start().await;
    let env = proxy_env(&fal.origin);
    let _function = Function::spawn(&runtime, &as_pairs(&env));

    let mut invocation = runtime.invoke(event(
        "POST",
        "https://fal.run/stream",
        Some(b"{\"prompt\":\"live\"}"),
    ));
    let upstream = tokio::time::timeout(WAIT, fal.streams.recv())
        .await
        .unwrap()
        .unwrap();
    upstream
        .send(Bytes::from_static(b"data: {\"step\":0}\n\n"))
        .unwrap();
    let prelude = invocation.prelude().await;
    assert_eq!(prelude["statusCode"], 200);
    assert_eq!(prelude["headers"]["content-type"], "text/event-stream");
    // The first event reaches Lambda while the upstream still holds the rest.
    invocation.read_until(b"{\"step\":0}").await;
    upstream
        .send(Bytes::from_static(b"data: {\"step\":1}\n\n"))
        .unwrap();
    invocation.read_until(b"{\"step\":1}").await;
    upstream
        .send(Bytes::from_static(b"data: {\"done\":true}\n\n"))
        .unwrap();
    drop(upstream);
    let body = invocation.body().await;
    assert_eq!(
        body,
        b"data: {\"step\":0}\n\ndata: {\"step\":1}\n\ndata: {\"done\":true}\n\n"
    );
    assert!(runtime.errors().is_empty(), "{:?}", runtime.errors());
}

#[tokio::test]
async fn refusals_are_responses_never_invocation_errors() {
    let runtime = FakeRuntime::start().await;
    let mut fal = MockFal::start().await;
    let env = proxy_env(&fal.origin);
    let _function = Function::spawn(&runtime, &as_pairs(&env));

    let cases = [
        (
            event("POST", "https://fal.run.evil.example/x", Some(b"{}")),
            403,
            "target_not_allowed",
        ),
        (
            event("PROPFIND", "https://fal.run/echo", None),
            405,
            "method_not_allowed",
        ),
        (
            event("POST", "not a url", Some(b"{}")),
            400,
            "invalid_target_url",
        ),
        (
            event("POST", "https://fal.run/echo", Some(&vec![0; 4_500_001])),
            413,
            "body_too_large",
        ),
    ];
    for (event, expected, error_type) in cases {
        let mut invocation = runtime.invoke(event);
        let prelude = invocation.prelude().await;
        assert_eq!(prelude["statusCode"], expected, "{prelude}");
        assert_eq!(prelude["headers"]["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&invocation.body().await).unwrap();
        assert_eq!(body["error_type"], error_type);
    }
    assert!(fal.nothing_received(), "a refused request went upstream");
    assert!(runtime.errors().is_empty(), "{:?}", runtime.errors());
}

#[tokio::test]
async fn a_bad_setting_is_answered_on_every_request_without_crashing() {
    let runtime = FakeRuntime::start().await;
    let mut fal = MockFal::start().await;
    let mut env = proxy_env(&fal.origin);
    env.push(("FAL_PROXY_MAX_BODY_BYTES", "lots-and-lots".to_owned()));
    let mut function = Function::spawn(&runtime, &as_pairs(&env));

    for _ in 0..2 {
        let mut invocation = runtime.invoke(event("POST", "https://fal.run/echo", Some(b"{}")));
        let prelude = invocation.prelude().await;
        assert_eq!(prelude["statusCode"], 500, "{prelude}");
        let body = invocation.body().await;
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("lots-and-lots"), "{text}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error_type"], "invalid_configuration");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("FAL_PROXY_MAX_BODY_BYTES")
        );
    }
    assert!(function.still_running(), "the function exited");
    assert!(fal.nothing_received());
    assert!(runtime.errors().is_empty(), "{:?}", runtime.errors());
    let log = function.log();
    assert_eq!(
        log.matches("FAL_PROXY_MAX_BODY_BYTES").count(),
        1,
        "logged once: {log}"
    );
    assert!(!log.contains("runtime-secret"), "the key is logged: {log}");
}

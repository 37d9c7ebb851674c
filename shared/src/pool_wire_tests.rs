//! The pool's HTTP/1.1 wire behaviour, black box: what a correct, strict
//! client must do (RFC 9112), seen only through `Pool::send`, against
//! scripted upstreams on loopback that write exact bytes and record exactly
//! the bytes they receive. The acceptance test of any replacement of the
//! client codec under the pool; every case passes against hyper's.
//!
//! Where hyper's behaviour is one of several a correct client may have, the
//! test asserts only what all of them share (said so at the case).

// Test code throughout; clippy takes only a bare `cfg(test)` for that, and
// this module's is `cfg(all(test, feature = "reqwest"))`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::body::BoxError;
use crate::pool::{Pool, PoolBody};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Every await on the pool is bounded: a regression fails, it does not hang.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------
// The scripted upstream.

/// One step of a connection's script.
enum Step {
    /// Reads one whole request: its head and the body the head announces.
    Read,
    /// Reads one request head, and none of its body.
    ReadHead,
    /// Writes these bytes at once.
    Write(Vec<u8>),
    /// Writes these bytes one per write, a millisecond apart.
    Trickle(Vec<u8>),
    /// Sleeps this many milliseconds.
    Pause(u64),
    /// Waits for the test's signal.
    Wait(Arc<Notify>),
    /// Signals the test.
    Signal(Arc<Notify>),
    /// Closes the write side (FIN). The script goes on reading.
    Fin,
}

fn w(bytes: impl AsRef<[u8]>) -> Step {
    Step::Write(bytes.as_ref().to_vec())
}

/// A script that reads a request and answers `200` with `body`.
fn answer(body: &str) -> Vec<Step> {
    vec![Step::Read, w(ok(body))]
}

/// `200 OK` with a content-length body.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A fake response that must never reach a caller.
const INJECTED: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED";

type Received = Arc<Mutex<Vec<Vec<u8>>>>;

struct Upstream {
    origin: String,
    accepted: Arc<AtomicUsize>,
    /// The bytes received on each connection, in the order accepted.
    received: Received,
}

impl Upstream {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    fn authority(&self) -> &str {
        self.origin.trim_start_matches("http://")
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn raw(&self, connection: usize) -> Vec<u8> {
        self.received.lock().unwrap()[connection].clone()
    }

    /// The whole requests received on `connection`, parsed.
    fn requests(&self, connection: usize) -> Vec<Req> {
        let raw = self.raw(connection);
        let mut at = 0;
        let mut requests = Vec::new();
        while let Some(request) = parse_request(&raw[at..]) {
            at += request.len;
            requests.push(request);
        }
        requests
    }
}

/// An upstream on loopback: connection `i` (in the order accepted) runs
/// `scripts[i]`, and any further one no script; after its script each reads
/// (and records) until the peer closes.
async fn upstream(scripts: Vec<Vec<Step>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let received = Received::default();
    let (count, record) = (Arc::clone(&accepted), Arc::clone(&received));
    tokio::spawn(async move {
        let mut scripts = scripts.into_iter();
        while let Ok((stream, _)) = listener.accept().await {
            let index = count.fetch_add(1, Ordering::SeqCst);
            record.lock().unwrap().push(Vec::new());
            let script = scripts.next().unwrap_or_default();
            tokio::spawn(run(stream, script, Arc::clone(&record), index));
        }
    });
    Upstream {
        origin,
        accepted,
        received,
    }
}

async fn run(mut stream: TcpStream, script: Vec<Step>, record: Received, index: usize) {
    let _ = stream.set_nodelay(true);
    let mut buffer = vec![0u8; 64 * 1024];
    // How much of what was received the `Read` steps have taken.
    let mut taken = 0;
    for step in script {
        let done = match step {
            Step::Read | Step::ReadHead => loop {
                let end = {
                    let all = record.lock().unwrap();
                    let rest = &all[index][taken..];
                    match step {
                        Step::Read => parse_request(rest).map(|request| request.len),
                        _ => head_end(rest),
                    }
                };
                if let Some(end) = end {
                    taken += end;
                    break Ok(());
                }
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => record.lock().unwrap()[index].extend_from_slice(&buffer[..n]),
                }
            },
            Step::Write(bytes) => stream.write_all(&bytes).await,
            Step::Trickle(bytes) => {
                let mut written = Ok(());
                for byte in bytes {
                    written = stream.write_all(&[byte]).await;
                    if written.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                written
            }
            Step::Pause(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            Step::Wait(signal) => {
                signal.notified().await;
                Ok(())
            }
            Step::Signal(signal) => {
                signal.notify_one();
                Ok(())
            }
            Step::Fin => stream.shutdown().await,
        };
        if done.is_err() {
            return;
        }
    }
    while let Ok(n @ 1..) = stream.read(&mut buffer).await {
        record.lock().unwrap()[index].extend_from_slice(&buffer[..n]);
    }
}

/// A request as the upstream received it.
#[derive(Debug)]
struct Req {
    line: String,
    /// Names in lower case, values trimmed, in the order received.
    headers: Vec<(String, String)>,
    /// Decoded (de-chunked).
    body: Vec<u8>,
    /// The length of the head (its final CRLF included).
    head_len: usize,
    /// The length of the whole request on the wire.
    len: usize,
}

impl Req {
    fn all(&self, name: &str) -> Vec<&str> {
        let named = self.headers.iter().filter(|(n, _)| n == name);
        named.map(|(_, value)| value.as_str()).collect()
    }

    /// The only value of `name`, if any (two are a failure).
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {self:?}", all.len());
        all.first().copied()
    }

    fn chunked(&self) -> bool {
        self.one("transfer-encoding") == Some("chunked")
    }
}

/// Where the head ends (after its empty line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    // Heads are small: no need to search a whole upload again on each read.
    let window = &bytes[..bytes.len().min(64 * 1024)];
    let at = window.windows(4).position(|four| four == b"\r\n\r\n")?;
    Some(at + 4)
}

fn line_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|two| two == b"\r\n")
}

/// The first whole request in `bytes`, if they hold one.
fn parse_request(bytes: &[u8]) -> Option<Req> {
    let head_len = head_end(bytes)?;
    let head = std::str::from_utf8(&bytes[..head_len - 4]).unwrap();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap().to_owned();
    let headers = lines.map(|header| {
        let (name, value) = header.split_once(':').unwrap();
        (name.to_ascii_lowercase(), value.trim().to_owned())
    });
    let mut request = Req {
        line,
        headers: headers.collect(),
        body: Vec::new(),
        head_len,
        len: head_len,
    };
    if request.chunked() {
        loop {
            let rest = &bytes[request.len..];
            let end = line_end(rest)?;
            let size = std::str::from_utf8(&rest[..end]).unwrap();
            let size = size.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(size, 16).unwrap();
            request.len += end + 2;
            if size == 0 {
                // The trailer section, to its empty line.
                loop {
                    let end = line_end(&bytes[request.len..])?;
                    request.len += end + 2;
                    if end == 0 {
                        return Some(request);
                    }
                }
            }
            let data = bytes.get(request.len..request.len + size + 2)?;
            assert_eq!(&data[size..], b"\r\n", "chunk data without its CRLF");
            request.body.extend_from_slice(&data[..size]);
            request.len += size + 2;
        }
    } else if let Some(length) = request.one("content-length") {
        let length: usize = length.parse().unwrap();
        request.body = bytes.get(head_len..head_len + length)?.to_vec();
        request.len += length;
    }
    Some(request)
}

// ---------------------------------------------------------------------------
// The caller's side.

fn pool() -> Pool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::upstream_reqwest::direct_client().unwrap()
}

fn empty() -> PoolBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(bytes: impl Into<Bytes>) -> PoolBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body of these data frames that does not know its length.
fn stream(chunks: Vec<Bytes>) -> PoolBody {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, BoxError>(Frame::data(c)));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// A body that sends `abc`, then whatever comes through the sender.
async fn slow_body() -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    PoolBody,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
        .await
        .unwrap();
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, StreamBody::new(frames).boxed())
}

fn request(method: &str, url: &str, headers: &[(&str, &str)], body: PoolBody) -> Request<PoolBody> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).unwrap()
}

fn get(url: &str) -> Request<PoolBody> {
    request("GET", url, &[], empty())
}

/// A whole answer: head, body read out, and trailers if any were given.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// Sends `request` and reads its body out; `Err` says which failed.
async fn fetch(pool: &Pool, request: Request<PoolBody>) -> Result<Answer, String> {
    within("the exchange", async {
        let response = pool
            .send(request)
            .await
            .map_err(|e| format!("send: {e:?}"))?;
        let (head, body) = response.into_parts();
        let collected = body.collect().await.map_err(|e| format!("body: {e:?}"))?;
        let trailers = collected.trailers().cloned();
        Ok(Answer {
            status: head.status,
            headers: head.headers,
            body: collected.to_bytes(),
            trailers,
        })
    })
    .await
}

/// `fetch`, which must succeed.
async fn fetch_ok(pool: &Pool, request: Request<PoolBody>) -> Answer {
    fetch(pool, request).await.unwrap()
}

/// 1 MiB of a pattern that does not repeat at any power of two.
fn mebibyte() -> Vec<u8> {
    (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// 1. Request encoding.

#[tokio::test]
async fn a_get_goes_in_origin_form_with_host_and_no_body_framing() {
    let mut script = Vec::new();
    for _ in 0..3 {
        script.extend(answer("ok"));
    }
    let up = upstream(vec![script]).await;
    let pool = pool();
    let headers = [
        ("x-custom", "value 1"),
        ("accept", "*/*"),
        ("x-multi", "a"),
        ("x-multi", "b"),
    ];
    let url = up.url("/path/a%2Fb?q=1&r=%20s");
    fetch_ok(&pool, request("GET", &url, &headers, empty())).await;
    // No path: `/`; a query without a path: `/?query`.
    fetch_ok(&pool, get(&up.origin)).await;
    fetch_ok(&pool, get(&up.url("?x=1"))).await;
    let requests = up.requests(0);
    let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET /path/a%2Fb?q=1&r=%20s HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /?x=1 HTTP/1.1",
        ]
    );
    let first = &requests[0];
    assert_eq!(first.one("host"), Some(up.authority()));
    assert_eq!(first.one("x-custom"), Some("value 1"));
    assert_eq!(first.one("accept"), Some("*/*"));
    assert_eq!(first.all("x-multi"), ["a", "b"], "in the caller's order");
    // Nothing else: no framing headers for an empty GET, no body bytes.
    let mut names: Vec<&str> = first.headers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["accept", "host", "x-custom", "x-multi", "x-multi"]);
    for request in &requests {
        assert_eq!(request.len, request.head_len, "{request:?}");
        assert_eq!(request.one("host"), Some(up.authority()));
        assert_eq!(request.one("content-length"), None);
        assert_eq!(request.one("transfer-encoding"), None);
    }
    let total: usize = requests.iter().map(|r| r.len).sum();
    assert_eq!(total, up.raw(0).len(), "bytes beyond the requests");
}

#[tokio::test]
async fn a_post_with_content_length_sends_exactly_that_body() {
    let mut script = answer("one");
    script.extend(answer("two"));
    let up = upstream(vec![script]).await;
    let pool = pool();
    let url = up.url("/upload");
    let length = [("content-length", "11")];
    fetch_ok(&pool, request("POST", &url, &length, full("hello world"))).await;
    // The same from a body that does not know its length itself.
    let parts = vec![Bytes::from("hello"), Bytes::from(" world")];
    let answer = fetch_ok(&pool, request("POST", &url, &length, stream(parts))).await;
    assert_eq!(answer.body, "two");
    let requests = up.requests(0);
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.line, "POST /upload HTTP/1.1");
        assert_eq!(request.one("content-length"), Some("11"));
        assert_eq!(request.one("transfer-encoding"), None);
        assert_eq!(request.body, b"hello world");
    }
    assert_eq!(requests[0].len + requests[1].len, up.raw(0).len());
}

#[tokio::test]
async fn a_post_of_unknown_length_is_sent_chunked() {
    let up = upstream(vec![answer("ok")]).await;
    let pool = pool();
    // An empty frame in the middle must not end the chunked body early.
    let parts = ["abc", "", "defgh", "\r\n0\r\n\r\n"]
        .map(Bytes::from)
        .to_vec();
    let url = up.url("/stream");
    fetch_ok(&pool, request("POST", &url, &[("x-a", "b")], stream(parts))).await;
    let requests = up.requests(0);
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.line, "POST /stream HTTP/1.1");
    assert!(request.chunked(), "{request:?}");
    assert_eq!(request.one("content-length"), None);
    assert_eq!(request.one("x-a"), Some("b"));
    assert_eq!(request.body, b"abcdefgh\r\n0\r\n\r\n");
    assert_eq!(request.len, up.raw(0).len(), "bytes beyond the request");
    assert!(up.raw(0).ends_with(b"\r\n0\r\n\r\n"));
}

#[tokio::test]
async fn a_post_with_content_length_zero_keeps_it() {
    let up = upstream(vec![answer("ok")]).await;
    let pool = pool();
    let zero = [("content-length", "0")];
    fetch_ok(&pool, request("POST", &up.url("/z"), &zero, empty())).await;
    let requests = up.requests(0);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].one("content-length"), Some("0"));
    assert_eq!(requests[0].one("transfer-encoding"), None);
    assert_eq!(requests[0].len, up.raw(0).len(), "bytes beyond the head");
}

// ---------------------------------------------------------------------------
// 2. Response framing.

/// Status lines and fields as sent, and a content-length body; the
/// connection serves every exchange.
#[tokio::test]
async fn response_heads_and_content_length_bodies_parse_as_sent() {
    let answers = [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\nset-cookie: 1\r\nset-cookie: 2\r\n\r\nhello",
        "HTTP/1.1 200 \r\ncontent-length: 0\r\nx-tight:v\r\nx-empty:\r\n\r\n",
        "HTTP/1.1 599 Some Reason Of Its Own\r\nContent-Length: 3\r\nX-Case: Kept\r\n\r\nabc",
        // Leading zeros are still 1*DIGIT.
        "HTTP/1.1 201 Created\r\ncontent-length: 005\r\n\r\nhello",
    ];
    let mut script = Vec::new();
    for bytes in answers {
        script.extend([Step::Read, w(bytes)]);
    }
    let up = upstream(vec![script]).await;
    let pool = pool();
    let url = up.url("/x");
    let first = fetch_ok(&pool, get(&url)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "hello");
    assert_eq!(first.headers["x-a"], "b");
    let cookies: Vec<_> = first.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["1", "2"]);
    let second = fetch_ok(&pool, get(&url)).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "");
    assert_eq!(second.headers["x-tight"], "v");
    assert_eq!(second.headers["x-empty"], "");
    let third = fetch_ok(&pool, get(&url)).await;
    assert_eq!(third.status, 599);
    assert_eq!(third.headers["x-case"], "Kept");
    assert_eq!(third.body, "abc");
    let fourth = fetch_ok(&pool, get(&url)).await;
    assert_eq!(fourth.status, 201);
    assert_eq!(fourth.body, "hello");
    assert_eq!(up.accepted(), 1, "the connection was not reused");
}

/// Up to 100 fields is a response like any other.
#[tokio::test]
async fn a_response_with_100_fields_parses() {
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for i in 0..99 {
        head.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    let up = upstream(vec![vec![Step::Read, w(format!("{head}\r\nok"))]]).await;
    let answer = fetch_ok(&pool(), get(&up.url("/"))).await;
    assert_eq!(answer.headers.len(), 100);
    assert_eq!(answer.headers["x-h98"], "98");
    assert_eq!(answer.body, "ok");
}

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_decodes() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        5;foo=bar\r\nhello\r\n1\r\n \r\nA;a=b;c=\"d e\"\r\n0123456789\r\n\
        0\r\nx-trailer: t\r\nx-other: u\r\n\r\n";
    let up = upstream(vec![vec![
        Step::Read,
        w(chunked),
        Step::Read,
        w(ok("again")),
    ]])
    .await;
    let pool = pool();
    let answer = fetch_ok(&pool, get(&up.url("/c"))).await;
    assert_eq!(answer.body, "hello 0123456789");
    // Trailers may be handed on or dropped (RFC 9110 6.5.1); if handed on,
    // they are the ones sent.
    if let Some(trailers) = answer.trailers {
        assert_eq!(trailers["x-trailer"], "t");
        assert_eq!(trailers["x-other"], "u");
    }
    // Everything up to the trailers' empty line was consumed.
    assert_eq!(fetch_ok(&pool, get(&up.url("/c"))).await.body, "again");
    assert_eq!(up.accepted(), 1, "the connection was not reused");
}

/// No length: the body ends where the upstream closes the connection,
/// which then serves no other request.
#[tokio::test]
async fn a_close_delimited_body_is_read_to_the_close_and_not_reused() {
    let cases = [
        "HTTP/1.1 200 OK\r\nx-a: b\r\n\r\n",
        "HTTP/1.0 200 OK\r\n\r\n",
        // Not ending in chunked, on HTTP/1.1: read until close (RFC 9112 6.3).
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
    ];
    for head in cases {
        let first = vec![
            Step::Read,
            w(format!("{head}part one, ")),
            Step::Pause(20),
            w("5\r\npart two"),
            Step::Fin,
            Step::Read,
            w(ok("reused")),
        ];
        let up = upstream(vec![first, answer("second")]).await;
        let pool = pool();
        let answer = fetch(&pool, get(&up.url("/"))).await;
        let answer = answer.unwrap_or_else(|e| panic!("{head:?}: {e}"));
        assert_eq!(answer.body, "part one, 5\r\npart two", "{head:?}");
        let next = fetch(&pool, get(&up.url("/"))).await;
        assert_eq!(next.unwrap().body, "second", "{head:?}");
        assert_eq!(up.accepted(), 2, "{head:?}");
    }
}

/// A HEAD response, and 204 and 304 to a GET, have no body whatever their
/// framing fields say; the connection goes on.
#[tokio::test]
async fn responses_without_a_body_ignore_their_framing_and_keep_the_connection() {
    let cases = [
        ("HEAD", "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"),
        (
            "HEAD",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
        (
            "GET",
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
        ),
        (
            "GET",
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        ),
        (
            "GET",
            "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
        ),
    ];
    let mut script = Vec::new();
    for (_, bytes) in cases {
        script.extend([Step::Read, w(bytes)]);
    }
    script.extend(answer("last"));
    let up = upstream(vec![script]).await;
    let pool = pool();
    for (method, bytes) in cases {
        let answer = fetch(&pool, request(method, &up.url("/"), &[], empty())).await;
        let answer = answer.unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
        assert_eq!(answer.body, "", "{bytes:?}");
    }
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "last");
    assert_eq!(up.accepted(), 1, "a connection was not reused");
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let interim = "HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n";
    let last = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone";
    let script = vec![
        // All in one write.
        Step::Read,
        w(format!("{interim}{last}")),
        // Each in its own.
        Step::Read,
        w("HTTP/1.1 100 Continue\r\n\r\n"),
        Step::Pause(10),
        w("HTTP/1.1 103 Early Hints\r\nlink: </a.js>; rel=preload\r\n\r\n"),
        Step::Pause(10),
        w("HTTP/1.1 102 Processing\r\n\r\n"),
        Step::Pause(10),
        w(last),
        Step::Read,
        w(ok("after")),
    ];
    let up = upstream(vec![script]).await;
    let pool = pool();
    for _ in 0..2 {
        let answer = fetch_ok(&pool, get(&up.url("/"))).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "done");
        assert!(answer.headers.get("link").is_none(), "an interim's field");
    }
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "after");
    assert_eq!(up.accepted(), 1);
}

/// Both framings: chunked wins (RFC 9112 6.3). The RFC says such a message
/// "ought to be handled as an error", but requires no client to close the
/// connection: hyper keeps it (and hands `content-length: 3` on to the
/// caller). So the test asserts only the body, and that the next request
/// gets its own answer on whichever connection.
#[tokio::test]
async fn chunked_wins_over_content_length() {
    let both = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n";
    let first = vec![Step::Read, w(both), Step::Read, w(ok("second"))];
    let up = upstream(vec![first, answer("second")]).await;
    let pool = pool();
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "hello");
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "second");
}

/// HTTP/1.0 without keep-alive, and `connection: close` in any form: the
/// connection serves no other request (even though the upstream keeps it
/// open and would answer one).
#[tokio::test]
async fn a_connection_the_response_closes_is_not_reused() {
    let cases = [
        "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello",
        "HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for bytes in cases {
        let first = vec![Step::Read, w(bytes), Step::Read, w(ok("reused"))];
        let up = upstream(vec![first, answer("second")]).await;
        let pool = pool();
        let answer = fetch(&pool, get(&up.url("/"))).await;
        assert_eq!(answer.unwrap().body, "hello", "{bytes:?}");
        let next = fetch(&pool, get(&up.url("/"))).await;
        assert_eq!(next.unwrap().body, "second", "{bytes:?}");
        assert_eq!(up.accepted(), 2, "{bytes:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. Errors.

/// The answer `bad` (after the request is read) must fail the exchange, at
/// `send` or in the body; the next request then gets its own answer on a
/// new connection (were the first reused, it would answer `reused`).
async fn assert_fails(bad: &str, fin: bool) {
    let mut first = vec![Step::Read, w(bad)];
    if fin {
        first.push(Step::Fin);
    }
    first.extend([Step::Read, w(ok("reused"))]);
    let up = upstream(vec![first, answer("second")]).await;
    let pool = pool();
    let outcome = fetch(&pool, get(&up.url("/bad"))).await;
    assert!(outcome.is_err(), "accepted {bad:?}: {outcome:?}");
    let next = fetch(&pool, get(&up.url("/next"))).await;
    let next = next.unwrap_or_else(|e| panic!("after {bad:?}: {e}"));
    assert_eq!(next.body, "second", "after {bad:?}");
    assert_eq!(up.accepted(), 2, "after {bad:?}");
}

#[tokio::test]
async fn a_malformed_or_missing_head_is_an_error() {
    let mut too_many = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for i in 0..100 {
        too_many.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    too_many.push_str("\r\nok");
    let cases = [
        ("garbage\r\n\r\n", false),
        ("HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n", false),
        ("HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (
            "HTTP/1.1 200 OK\r\nbad header\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        // Nothing at all, then the close.
        ("", true),
        // The head cut short.
        ("HTTP/1.1 200 OK\r\ncontent-le", true),
        (&too_many, false),
    ];
    for (bad, fin) in cases {
        assert_fails(bad, fin).await;
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let cases = [
        "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_owned(),
        format!("{chunked}5\r\nhello\r\n"),
        format!("{chunked}5\r\nhel"),
        format!("{chunked}5\r\nhello\r\n0\r\n"),
        format!("{chunked}5\r\nhello\r\n0\r\nx-trailer: t\r\n"),
    ];
    for bad in cases {
        assert_fails(&bad, true).await;
    }
}

#[tokio::test]
async fn invalid_chunked_framing_is_an_error() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let cases = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        // No CRLF after the chunk's data.
        "5\r\nhelloXX0\r\n\r\n",
        "5\r\nhello0\r\n\r\n",
        // No size at all.
        "\r\nhello\r\n0\r\n\r\n",
    ];
    for bad in cases {
        assert_fails(&format!("{chunked}{bad}"), false).await;
    }
}

#[tokio::test]
async fn an_invalid_content_length_is_an_error() {
    let cases = [
        "abc",
        "+5",
        "-5",
        "5, 6",
        "5,",
        "",
        "5 5",
        "99999999999999999999999",
        "5\r\ncontent-length: 6",
    ];
    for value in cases {
        let bad = format!("HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\nhello!");
        assert_fails(&bad, false).await;
    }
}

/// Repeated identical values: RFC 9110 8.6 lets a recipient take them as
/// one or reject the message; hyper takes them, and so must its successor.
#[tokio::test]
async fn repeated_identical_content_lengths_are_one() {
    let cases = [
        "content-length: 5, 5",
        "content-length: 5\r\ncontent-length: 5",
    ];
    let mut script = Vec::new();
    for fields in cases {
        script.extend([
            Step::Read,
            w(format!("HTTP/1.1 200 OK\r\n{fields}\r\n\r\nhello")),
        ]);
    }
    script.extend(answer("last"));
    let up = upstream(vec![script]).await;
    let pool = pool();
    for fields in cases {
        let answer = fetch(&pool, get(&up.url("/"))).await;
        assert_eq!(answer.unwrap().body, "hello", "{fields:?}");
    }
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "last");
    assert_eq!(up.accepted(), 1);
}

/// Framing a client cannot trust: the exchange may fail, or end with what
/// the case allows (hyper hands a 101 to a plain request on with an empty
/// body, and rejects HTTP/1.0 with transfer-encoding); either way nothing
/// after it on that connection reaches anyone, and the next request gets
/// its own answer on a new connection.
#[tokio::test]
async fn untrustworthy_framing_never_reaches_the_next_request() {
    let upgrade = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n{INJECTED}"
    );
    // RFC 9112 6.1: faulty framing; close after the message.
    let old = format!(
        "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{INJECTED}"
    );
    for (bad, allowed) in [(upgrade, (101, "")), (old, (200, "hello"))] {
        let first = vec![Step::Read, w(&bad), Step::Read, w(ok("reused"))];
        let up = upstream(vec![first, answer("second")]).await;
        let pool = pool();
        if let Ok(answer) = fetch(&pool, get(&up.url("/"))).await {
            assert_eq!(
                (answer.status.as_u16(), &answer.body[..]),
                (allowed.0, allowed.1.as_bytes()),
                "{bad:?}"
            );
        }
        let next = fetch(&pool, get(&up.url("/"))).await;
        assert_eq!(next.unwrap().body, "second", "{bad:?}");
        assert_eq!(up.accepted(), 2, "{bad:?}");
    }
}

// ---------------------------------------------------------------------------
// 4. Safety of reuse.

/// Bytes beyond the end of a response (here a whole fake response) are
/// never the answer to the next request: that gets its own answer (on a new
/// connection or, should the client find a way, the same one) or an error.
#[tokio::test]
async fn bytes_beyond_a_response_never_answer_the_next_request() {
    let cases = [
        (
            "GET",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "hello",
        ),
        (
            "GET",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "hello",
        ),
        ("HEAD", "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", ""),
        ("GET", "HTTP/1.1 204 No Content\r\n\r\n", ""),
    ];
    for (method, bytes, body) in cases {
        let first = vec![
            Step::Read,
            w(format!("{bytes}{INJECTED}")),
            Step::Read,
            w(ok("second")),
        ];
        let up = upstream(vec![first, answer("second")]).await;
        let pool = pool();
        let answer = fetch(&pool, request(method, &up.url("/"), &[], empty())).await;
        assert_eq!(answer.unwrap().body, body, "{bytes:?}");
        if let Ok(next) = fetch(&pool, get(&up.url("/"))).await {
            assert_eq!(next.body, "second", "{bytes:?}");
        }
    }
}

/// Bytes the upstream sends on an idle connection: the next request goes on
/// a new connection and gets its own answer.
#[tokio::test]
async fn unsolicited_bytes_on_an_idle_connection_retire_it() {
    let (go, sent) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let first = vec![
        Step::Read,
        w(ok("first")),
        Step::Wait(Arc::clone(&go)),
        w(INJECTED),
        Step::Signal(Arc::clone(&sent)),
        Step::Read,
        w(ok("second")),
    ];
    let up = upstream(vec![first, answer("second")]).await;
    let pool = pool();
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "first");
    go.notify_one();
    within("the unsolicited bytes", sent.notified()).await;
    // Were the request sent before those bytes reached the client, no client
    // could tell them from its answer: give them time to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "second");
    assert_eq!(up.accepted(), 2);
}

/// (pool.rs tests this with content-length answers closed at once.)
#[tokio::test]
async fn an_idle_connection_closed_after_a_chunked_answer_is_replaced() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let first = vec![Step::Read, w(chunked), Step::Pause(20), Step::Fin];
    let up = upstream(vec![first, answer("second")]).await;
    let pool = pool();
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "ok");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "second");
    assert_eq!(up.accepted(), 2);
}

// ---------------------------------------------------------------------------
// 5. Streaming.

/// Reads frames until `n` bytes have come, within the time limit.
async fn read_at_least(body: &mut crate::pool::PooledBody, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = within("a frame", body.frame()).await;
        let frame = frame.expect("the body ended early").unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    got
}

/// The first part of a body reaches the caller before the upstream has
/// sent the rest (it sends the rest only once the caller has the first).
#[tokio::test]
async fn a_body_streams_before_the_upstream_finishes_it() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            "6\r\nsecond\r\n0\r\n\r\n",
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nfirst",
            "second",
        ),
    ];
    for (start, rest) in cases {
        let go = Arc::new(Notify::new());
        let script = vec![Step::Read, w(start), Step::Wait(Arc::clone(&go)), w(rest)];
        let up = upstream(vec![script]).await;
        let pool = pool();
        let response = within("the head", pool.send(get(&up.url("/")))).await;
        let mut body = response.unwrap().into_body();
        assert_eq!(read_at_least(&mut body, 5).await, b"first", "{start:?}");
        go.notify_one();
        let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
        assert_eq!(rest, "second", "{start:?}");
    }
}

#[tokio::test]
async fn a_mebibyte_response_arrives_intact() {
    let data = mebibyte();
    let mut plain =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", data.len()).into_bytes();
    plain.extend_from_slice(&data);
    let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in data.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let up = upstream(vec![vec![Step::Read, w(plain), Step::Read, w(chunked)]]).await;
    let pool = pool();
    for _ in 0..2 {
        let answer = fetch_ok(&pool, get(&up.url("/big"))).await;
        assert!(answer.body == data, "the body differs");
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_mebibyte_upload_arrives_intact() {
    let data = Bytes::from(mebibyte());
    let mut script = answer("one");
    script.extend(answer("two"));
    let up = upstream(vec![script]).await;
    let pool = pool();
    let parts: Vec<Bytes> = data.chunks(64 * 1024).map(|c| data.slice_ref(c)).collect();
    let length = data.len().to_string();
    let sized = request(
        "PUT",
        &up.url("/u"),
        &[("content-length", length.as_str())],
        stream(parts.clone()),
    );
    fetch_ok(&pool, sized).await;
    fetch_ok(&pool, request("PUT", &up.url("/u"), &[], stream(parts))).await;
    let requests = up.requests(0);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].one("content-length"), Some(length.as_str()));
    assert!(requests[1].chunked());
    for request in &requests {
        assert!(request.body == data, "the upload differs");
    }
}

/// Every byte of the answers in its own write: the head, a content-length
/// body, and a chunked body with an extension and a trailer.
#[tokio::test]
async fn an_answer_trickled_one_byte_at_a_time_parses() {
    let script = vec![
        Step::Read,
        Step::Trickle(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: bc\r\n\r\nhello".to_vec()),
        Step::Read,
        Step::Trickle(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nworld\r\n0\r\nt: v\r\n\r\n"
                .to_vec(),
        ),
        Step::Read,
        w(ok("after")),
    ];
    let up = upstream(vec![script]).await;
    let pool = pool();
    let first = fetch_ok(&pool, get(&up.url("/"))).await;
    assert_eq!(
        (first.headers["x-a"].as_bytes(), &first.body[..]),
        (&b"bc"[..], &b"hello"[..])
    );
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "world");
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "after");
    assert_eq!(up.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 6. Early answers.

/// The upstream refuses the upload as soon as it has the request's head;
/// the caller's body is still coming. `send` returns the refusal and its
/// body reads out (with a known and an unknown upload length, and with the
/// upstream closing after it).
#[tokio::test]
async fn an_early_413_reaches_the_caller_while_the_upload_goes_on() {
    let refusal = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n";
    let cases = [
        (Some("1000"), format!("{refusal}\r\ntoo large"), false),
        (None, format!("{refusal}\r\ntoo large"), false),
        (
            Some("1000"),
            format!("{refusal}connection: close\r\n\r\ntoo large"),
            true,
        ),
    ];
    for (length, bytes, fin) in cases {
        let mut script = vec![Step::ReadHead, w(&bytes)];
        if fin {
            script.push(Step::Fin);
        }
        let up = upstream(vec![script]).await;
        let pool = pool();
        let (tx, body) = slow_body().await;
        let headers: Vec<(&str, &str)> =
            length.map(|l| ("content-length", l)).into_iter().collect();
        let upload = request("POST", &up.url("/upload"), &headers, body);
        let response = within("the refusal", pool.send(upload)).await.unwrap();
        assert_eq!(response.status(), 413, "{bytes:?}");
        let body = within("its body", response.into_body().collect()).await;
        assert_eq!(body.unwrap().to_bytes(), "too large", "{bytes:?}");
        drop(tx);
    }
}

// ---------------------------------------------------------------------------
// 7. Attacks (review branch h1-attack).

/// A body that yields `frames` (data or an error) and then ends, as
/// `StreamBody` over an iterator does after an error (and as `Limited`,
/// `Watched` and hyper's `Incoming` pass on whatever comes after theirs).
fn frames_then_end(frames: Vec<Result<&'static str, &'static str>>) -> PoolBody {
    let frames = frames.into_iter().map(|frame| {
        frame
            .map(|data| Frame::data(Bytes::from_static(data.as_bytes())))
            .map_err(|error| -> BoxError { error.into() })
    });
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// Whether `error`'s Debug output (the whole chain) names `what`.
fn names(error: &str, what: &str) -> bool {
    error.contains(what)
}

/// The request body fails before a byte of the request went out on a
/// pooled connection (its first frames and its error were all ready at
/// once). The pool must fail the request with the body's error. Instead it
/// takes "nothing written" for "fal closed the idle connection", drops the
/// connection, polls the failed body again on a new connection, takes its
/// end for the end of the upload, and sends fal a complete chunked request
/// with the truncated body: the browser gets fal's 200, not a 400.
#[tokio::test]
async fn a_request_body_error_before_the_first_write_is_not_retried_as_complete() {
    let first = vec![Step::Read, w(ok("first")), Step::Read, w(ok("reused"))];
    let up = upstream(vec![first, answer("second")]).await;
    let pool = pool();
    // One idle connection to the origin.
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "first");
    let body = frames_then_end(vec![Ok("abc"), Err("the browser's body broke")]);
    let outcome = fetch(&pool, request("POST", &up.url("/upload"), &[], body)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let complete: Vec<Req> = (0..up.accepted())
        .flat_map(|connection| up.requests(connection))
        .filter(|request| request.line.starts_with("POST"))
        .collect();
    assert!(
        complete.is_empty(),
        "fal received a complete request from a failed body: {complete:?} (outcome {outcome:?})"
    );
    let error = outcome.expect_err("a failed request body was answered");
    assert!(names(&error, "the browser's body broke"), "{error}");
}

/// The same with a declared content-length: the retry polls the failed
/// body, takes its end for "shorter than the content-length", keeps that as
/// a *write* failure and waits for a response head on a connection on
/// which nothing was written: the exchange hangs until the head timeout
/// (classified Timeout, not RequestBodyBroken).
#[tokio::test]
async fn a_request_body_error_before_the_first_write_with_a_length_fails_at_once() {
    let first = vec![Step::Read, w(ok("first")), Step::Read, w(ok("reused"))];
    let up = upstream(vec![first, answer("second")]).await;
    let pool = pool();
    assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "first");
    let body = frames_then_end(vec![Ok("abc"), Err("the browser's body broke")]);
    let length = [("content-length", "10")];
    let outcome = fetch(&pool, request("POST", &up.url("/upload"), &length, body)).await;
    let error = outcome.expect_err("a failed request body was answered");
    assert!(
        names(&error, "the browser's body broke"),
        "not the body's error: {error}"
    );
}

/// 204 and 304 (and any answer to HEAD) have no body by their status alone
/// (RFC 9112 6.3 rules 1-2, before the framing fields are looked at); the
/// usual 204 has no framing fields at all. h1 takes "no framing fields" for
/// a close-delimited body first (keep_alive = false) and so never reuses the
/// connection after such an answer; hyper's client did (its `decoder`
/// returns a zero length for them before looking at the fields).
/// Not a safety issue: a new connection (and TLS handshake) per such answer.
#[tokio::test]
async fn a_bare_204_or_304_or_head_answer_keeps_the_connection() {
    let cases = [
        ("GET", "HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n"),
        ("HEAD", "HTTP/1.1 200 OK\r\n\r\n"),
    ];
    let mut script = Vec::new();
    for (_, bytes) in cases {
        script.extend([Step::Read, w(bytes)]);
    }
    script.extend(answer("last"));
    // Should a connection not be reused, the next ones answer anything.
    let spare = || (0..4).flat_map(|_| answer("spare")).collect::<Vec<_>>();
    let up = upstream(vec![script, spare(), spare(), spare()]).await;
    let pool = pool();
    for (method, _) in cases {
        fetch_ok(&pool, request(method, &up.url("/"), &[], empty())).await;
    }
    fetch_ok(&pool, get(&up.url("/"))).await;
    assert_eq!(up.accepted(), 1, "a connection was not reused");
}

/// The server-level case (`server/tests/h1_attack.rs`): the body's first
/// poll is its error (hyper's server `Incoming` when the browser's first
/// chunk is malformed), on a pooled connection. hyper's client wrote the
/// head first and failed with the body's error (400 to the browser); h1
/// polls the body before writing, sees nothing written, retries on a new
/// connection, polls the failed body again, takes its end for the end of
/// the upload and sends fal a complete empty chunked request (fal's 200 to
/// the browser).
#[tokio::test]
async fn a_request_body_failing_on_its_first_poll_on_a_pooled_connection_is_its_error() {
    for length in [None, Some("10")] {
        let first = vec![Step::Read, w(ok("first")), Step::Read, w(ok("reused"))];
        let up = upstream(vec![first, answer("second")]).await;
        let pool = pool();
        assert_eq!(fetch_ok(&pool, get(&up.url("/"))).await.body, "first");
        let body = frames_then_end(vec![Err("the browser's body broke")]);
        let headers: Vec<(&str, &str)> =
            length.map(|l| ("content-length", l)).into_iter().collect();
        let outcome = fetch(&pool, request("POST", &up.url("/upload"), &headers, body)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let complete: Vec<Req> = (0..up.accepted())
            .flat_map(|connection| up.requests(connection))
            .filter(|request| request.line.starts_with("POST"))
            .collect();
        assert!(
            complete.is_empty(),
            "{length:?}: fal received a complete request from a failed body: {complete:?} (outcome {outcome:?})"
        );
        let error = outcome.expect_err("a failed request body was answered");
        assert!(
            names(&error, "the browser's body broke"),
            "{length:?}: {error}"
        );
    }
}

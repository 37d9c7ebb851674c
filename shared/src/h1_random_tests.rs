//! Randomized and differential tests of the pool's HTTP/1.1 client's
//! response framing ([`crate::h1`]). Each case is a generated response (heads
//! with content-length / transfer-encoding / connection variants, interim
//! responses, chunked bodies with extensions and trailers, random byte
//! mutations) followed by a sentinel response (`299`), delivered through a
//! duplex pipe of random capacity (so reads split at random places).
//!
//! Oracle 1 (ours alone): when h1 reads a response to its end and would
//! keep the connection, the next head it reads must be the sentinel;
//! anything else means it misplaced the end of the response.
//! Oracle 2 (against hyper's client on the same bytes): status, body and
//! success agree; disagreements are counted by kind and printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::h1::{self, Conn, Decoder, Framing, PoolBody, Upload};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SENTINEL: &[u8] = b"HTTP/1.1 299 NEXT\r\ncontent-length: 0\r\n\r\n";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// `Upload::new` as of d7ed82b (method, URI and fields apart).
fn make_upload(request: Request<PoolBody>) -> Upload {
    let (parts, body) = request.into_parts();
    Upload::new(&parts.method, &parts.uri, &parts.headers, body, "h")
}

fn empty() -> PoolBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A generated response: bytes, whether it is for a HEAD request, and
/// whether its framing fields tell its true end (no mutation, no body where
/// none may be, a body framed as its fields say).
fn generate(rng: &mut Rng) -> (Vec<u8>, bool, bool) {
    let head_request = rng.chance(10);
    let mut out = String::new();
    if rng.chance(15) {
        out.push_str(rng.pick(&[
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
            "HTTP/1.1 100 Continue\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 102 Processing\r\ntransfer-encoding: chunked\r\n\r\n",
        ]));
    }
    let status_line = rng.pick(&[
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 413 Too Large",
        "HTTP/1.1 500 ",
        "HTTP/1.1 101 Switching Protocols",
    ]);
    out.push_str(status_line);
    out.push_str("\r\n");
    let no_body = head_request || status_line.contains(" 204 ") || status_line.contains(" 304 ");
    let (mut cl_ok, mut cl_bad, mut te, mut te_chunked) = (false, false, false, false);
    let data_len = if rng.chance(20) { 0 } else { rng.below(40) };
    let data: String = (0..data_len)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    // Framing fields.
    let mut chunked = false;
    let fields = rng.below(4);
    for _ in 0..fields {
        match rng.below(8) {
            0..=2 => {
                let variant = rng.below(10);
                let value = match variant {
                    0 => format!("{}, {}", data_len, data_len),
                    1 => format!("0{data_len}"),
                    2 => format!(" {data_len} "),
                    3 => format!("{}", data_len + 1),
                    4 => format!("{}", data_len.saturating_sub(1)),
                    5 => format!("+{data_len}"),
                    6 => format!("{data_len},{}", data_len + 2),
                    _ => format!("{data_len}"),
                };
                if (3..=6).contains(&variant) && !(variant == 4 && data_len == 0) {
                    cl_bad = true;
                } else {
                    cl_ok = true;
                }
                let name = rng.pick(&["content-length", "Content-Length", "CONTENT-LENGTH"]);
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            3..=5 => {
                let value = rng.pick(&[
                    "chunked",
                    "chunked",
                    "Chunked",
                    "gzip, chunked",
                    "chunked, gzip",
                    "gzip",
                    "identity",
                    "chunked,",
                    "chunked , chunked",
                    "",
                ]);
                // The last field's last coding decides.
                chunked = value
                    .to_ascii_lowercase()
                    .rsplit(',')
                    .next()
                    .unwrap()
                    .trim()
                    == "chunked";
                te = true;
                te_chunked = chunked;
                let name = rng.pick(&["transfer-encoding", "Transfer-Encoding"]);
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            6 => {
                let value = rng.pick(&[
                    "close",
                    "keep-alive",
                    "Close",
                    "keep-alive, close",
                    "upgrade",
                ]);
                out.push_str(&format!("connection: {value}\r\n"));
            }
            _ => out.push_str("x-a: b\r\n"),
        }
    }
    out.push_str("\r\n");
    // The body, chunked or raw, whatever the fields said (often agreeing);
    // often none where none may be.
    let encode_chunked = if rng.chance(80) { chunked } else { !chunked };
    let bodiless = no_body && rng.chance(70);
    let honest_body = if bodiless {
        true
    } else if no_body {
        false
    } else if te {
        te_chunked && encode_chunked
    } else if cl_ok || cl_bad {
        !cl_bad && !encode_chunked
    } else {
        !encode_chunked
    };
    if bodiless {
    } else if encode_chunked {
        let mut rest = data.as_str();
        while !rest.is_empty() {
            let take = 1 + rng.below(rest.len());
            let (piece, after) = rest.split_at(take);
            let size = match rng.below(6) {
                0 => format!("{take:X}"),
                1 => format!("0{take:x}"),
                _ => format!("{take:x}"),
            };
            out.push_str(&size);
            if rng.chance(15) {
                out.push_str(rng.pick(&[";a=b", " ;x", ";q=\"a b\"", "\t", " "]));
            }
            out.push_str("\r\n");
            out.push_str(piece);
            out.push_str("\r\n");
            rest = after;
        }
        out.push_str(rng.pick(&["0", "0", "00", "0;end"]));
        out.push_str("\r\n");
        if rng.chance(20) {
            out.push_str(rng.pick(&["x-t: 1\r\n", "x-t: 1\r\nx-u: 2\r\n", "bad trailer\r\n"]));
        }
        out.push_str("\r\n");
    } else {
        out.push_str(&data);
    }
    let mut bytes = out.into_bytes();
    let mutated = rng.chance(25);
    // Mutations.
    if mutated {
        for _ in 0..1 + rng.below(2) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.below(bytes.len());
            let interesting = [
                b'\r', b'\n', b'0', b' ', b';', b'\t', b':', b'a', b'\0', 0x80,
            ];
            match rng.below(3) {
                0 => bytes[at] = interesting[rng.below(interesting.len())],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, interesting[rng.below(interesting.len())]),
            }
        }
    }
    (bytes, head_request, honest_body && !mutated)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct First {
    status: u16,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Ours {
    first: Result<First, String>,
    keep_alive: bool,
    /// The next head read on the connection, when it would be reused.
    next: Option<Result<u16, String>>,
}

/// Delivers `bytes` then the sentinel, then closes, through a pipe of
/// `capacity` bytes; drains what the client writes.
fn serve(server: tokio::io::DuplexStream, bytes: Vec<u8>) {
    let (mut read, mut write) = tokio::io::split(server);
    let (headed, head_seen) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut headed = Some(headed);
        let mut sink = [0u8; 1024];
        while let Ok(n @ 1..) = read.read(&mut sink).await {
            seen.extend_from_slice(&sink[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n")
                && let Some(headed) = headed.take()
            {
                let _ = headed.send(());
            }
        }
    });
    tokio::spawn(async move {
        // After the request head, as a server would (hyper's client takes
        // bytes on an idle connection for an error).
        if head_seen.await.is_err() {
            return;
        }
        let _ = write.write_all(&bytes).await;
        let _ = write.write_all(SENTINEL).await;
        let _ = write.shutdown().await;
    });
}

fn request(method: &str) -> Request<PoolBody> {
    Request::builder()
        .method(method)
        .uri("http://h/")
        .body(empty())
        .unwrap()
}

async fn ours(bytes: Vec<u8>, capacity: usize, head_request: bool) -> Ours {
    let (client, server) = tokio::io::duplex(capacity);
    serve(server, bytes);
    let mut conn = Conn::new(client);
    let method = if head_request { "HEAD" } else { "GET" };
    let mut upload = Some(make_upload(request(method)));
    let mut failed = None;
    let head =
        std::future::poll_fn(|cx| h1::poll_exchange(&mut conn, &mut upload, &mut failed, cx)).await;
    let head = match head {
        Ok(head) => head,
        Err(error) => {
            return Ours {
                first: Err(error.to_string()),
                keep_alive: false,
                next: None,
            };
        }
    };
    let status = head.response.status();
    let keep_alive = head.keep_alive(h1::has_no_body(head_request, status));
    let mut decoder = if h1::has_no_body(head_request, status) {
        Decoder::new(Framing::Length(0))
    } else {
        Decoder::new(head.framing)
    };
    let mut body = Vec::new();
    let mut error = None;
    while !decoder.is_done() {
        match std::future::poll_fn(|cx| h1::poll_body(&mut conn, &mut decoder, cx)).await {
            Some(Ok(data)) => body.extend_from_slice(&data),
            Some(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            None => break,
        }
    }
    if let Some(error) = error {
        return Ours {
            first: Err(error),
            keep_alive: false,
            next: None,
        };
    }
    // As the pool: kept only if keep-alive and nothing read past the end.
    let reused = keep_alive && h1::read_nothing_more(&conn);
    let ends_exactly = keep_alive;
    let mut next = None;
    if ends_exactly {
        // Whether or not bytes were read past the end (the pool checks
        // that too, but only for what has arrived): what follows must be
        // the sentinel.
        let mut upload = Some(make_upload(request("GET")));
        let mut failed = None;
        let head =
            std::future::poll_fn(|cx| h1::poll_exchange(&mut conn, &mut upload, &mut failed, cx))
                .await;
        next = Some(
            head.map(|head| head.response.status().as_u16())
                .map_err(|e| e.to_string()),
        );
    }
    let _ = reused;
    Ours {
        first: Ok(First {
            status: status.as_u16(),
            body,
        }),
        keep_alive,
        next,
    }
}

async fn hypers(
    bytes: Vec<u8>,
    capacity: usize,
    head_request: bool,
) -> (Result<First, String>, Option<u16>) {
    let mut next = None;
    let first = hypers_inner(bytes, capacity, head_request, &mut next).await;
    (first, next)
}

async fn hypers_inner(
    bytes: Vec<u8>,
    capacity: usize,
    head_request: bool,
    next: &mut Option<u16>,
) -> Result<First, String> {
    let (client, server) = tokio::io::duplex(capacity);
    serve(server, bytes);
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(client),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let method = if head_request { "HEAD" } else { "GET" };
    let request = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "h")
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    // The next exchange, if hyper keeps the connection.
    if tokio::time::timeout(Duration::from_millis(200), sender.ready())
        .await
        .is_ok_and(|r| r.is_ok())
    {
        let again = Request::builder()
            .uri("/")
            .header("host", "h")
            .body(Empty::new())
            .unwrap();
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_millis(500), sender.send_request(again)).await
        {
            *next = Some(response.status().as_u16());
        }
    }
    Ok(First { status, body })
}

#[tokio::test(flavor = "current_thread")]
async fn randomized_framing_never_misplaces_a_response_end() {
    let cases: usize = std::env::var("H1_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("H1_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let mut rng = Rng(seed);
    let mut misplaced = Vec::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    let mut reused = 0usize;
    let mut honest_count = 0usize;
    for case in 0..cases {
        let (bytes, head_request, honest) = generate(&mut rng);
        let capacity = [1, 2, 3, 7, 16, 64, 4096][rng.below(7)];
        let limit = Duration::from_secs(3);
        let mine = tokio::time::timeout(limit, ours(bytes.clone(), capacity, head_request)).await;
        let theirs =
            tokio::time::timeout(limit, hypers(bytes.clone(), capacity, head_request)).await;
        let shown = String::from_utf8_lossy(&bytes).into_owned();
        honest_count += usize::from(honest);
        let Ok(mine) = mine else {
            misplaced.push(format!("case {case}: ours hung on {shown:?}"));
            continue;
        };
        let (theirs, hyper_next) = theirs.unwrap_or_else(|_| (Err("hung".into()), None));
        if let Some(next) = &mine.next {
            reused += 1;
            let ours_next = next.as_ref().ok().copied();
            if hyper_next.is_some() && ours_next != hyper_next {
                *kinds
                    .entry(format!(
                        "next differs (ours {ours_next:?}, hyper {hyper_next:?})"
                    ))
                    .or_default() += 1;
            }
            if honest && next.as_ref().ok() != Some(&299) {
                misplaced.push(format!(
                    "case {case} (head {head_request}, capacity {capacity}): kept alive but the next head was {next:?} after {shown:?}; first {:?}",
                    mine.first
                ));
            }
        }
        let kind = match (&mine.first, &theirs) {
            (Ok(a), Ok(b)) if a == b => continue,
            (Err(_), Err(_)) => continue,
            (Ok(a), Ok(b)) if a.status != b.status => {
                format!("status differs (ours {} hyper {})", a.status, b.status)
            }
            (Ok(_), Ok(_)) => "body differs".to_owned(),
            (Ok(_), Err(e)) => format!("ours ok, hyper err: {e}"),
            (Err(e), Ok(_)) => format!("ours err: {e}; hyper ok"),
        };
        *kinds.entry(kind.clone()).or_default() += 1;
        examples.entry(kind).or_insert_with(|| {
            format!(
                "head={head_request} cap={capacity} {shown:?}\n    ours {:?} keep_alive {}\n    hyper {theirs:?}",
                mine.first, mine.keep_alive
            )
        });
    }
    eprintln!(
        "{cases} cases (seed {seed:#x}), {honest_count} honestly framed; {reused} kept alive and checked against the sentinel"
    );
    for (kind, count) in &kinds {
        eprintln!("DIFF {count:5} x {kind}\n    e.g. {}", examples[kind]);
    }
    assert!(misplaced.is_empty(), "{}", misplaced.join("\n"));
}

/// Every byte a `Uri` lets into a path or a query, and every header value
/// byte a `HeaderValue` lets in: the head h1 writes must parse (strictly,
/// httparse) as one request with that exact target and that exact value,
/// and nothing after its end.
#[tokio::test(flavor = "current_thread")]
async fn every_accepted_byte_in_target_and_header_keeps_the_request_line_whole() {
    let mut accepted_target = Vec::new();
    let mut accepted_value = Vec::new();
    for byte in 0..=255u8 {
        for at_query in [false, true] {
            let mut uri = b"http://h/a".to_vec();
            if at_query {
                uri.extend_from_slice(b"?q");
            }
            uri.push(byte);
            uri.extend_from_slice(b"z");
            let Ok(uri) = http::Uri::from_maybe_shared(Bytes::from(uri)) else {
                continue;
            };
            accepted_target.push((byte, at_query));
            let request = Request::builder()
                .method("GET")
                .uri(uri.clone())
                .body(empty())
                .unwrap();
            let (line, headers) = written(request).await;
            let expected = uri.path_and_query().unwrap().as_str().to_owned();
            assert_eq!(line, expected, "byte {byte:#x}");
            assert_eq!(headers.len(), 1, "byte {byte:#x}: {headers:?}");
        }
        let Ok(value) = http::HeaderValue::from_bytes(&[b'a', byte, b'z']) else {
            continue;
        };
        accepted_value.push(byte);
        let request = Request::builder()
            .method("POST")
            .uri("http://h/x")
            .header("x-fal-v", value.clone())
            .body(empty())
            .unwrap();
        let (_, headers) = written(request).await;
        let got = headers
            .iter()
            .find(|(name, _)| name == "x-fal-v")
            .map(|(_, v)| v.clone());
        // httparse trims nothing inside; a tab or space inside stays.
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "byte {byte:#x}: {headers:?}"
        );
    }
    eprintln!(
        "target bytes accepted by Uri: {}; header value bytes accepted: {}",
        accepted_target.len(),
        accepted_value.len()
    );
}

/// The head h1 writes for `request`, parsed by httparse (strict):
/// the target, and the fields.
async fn written(request: Request<PoolBody>) -> (String, Vec<(String, Vec<u8>)>) {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let mut conn = Conn::new(client);
    let mut upload = Some(make_upload(request));
    let mut failed = None;
    // Written at once (the body is empty); the head never comes.
    let _ = tokio::time::timeout(
        Duration::from_millis(1),
        std::future::poll_fn(|cx| h1::poll_exchange(&mut conn, &mut upload, &mut failed, cx)),
    )
    .await;
    drop(conn);
    let mut raw = Vec::new();
    server.read_to_end(&mut raw).await.unwrap();
    let mut fields = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Request::new(&mut fields);
    let status = parsed
        .parse(&raw)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)));
    let httparse::Status::Complete(length) = status else {
        panic!("partial: {:?}", String::from_utf8_lossy(&raw));
    };
    assert_eq!(
        length,
        raw.len(),
        "bytes after the head: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let headers = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    (parsed.path.unwrap().to_owned(), headers)
}

//! The native targets' connections to fal: HTTP/1.1 client connections
//! ([`crate::h1`]), kept open between requests, per origin.
//!
//! hyper-util's pooled client did the same through a hash map keyed by
//! origin (SipHash over the host, byte by byte, on every checkout and
//! return), a race between checkout and connect, and a `Host` header built
//! with `format!`: about a sixth of the proxy's instructions per request.
//! A deployment talks to three or four origins at most, so a short list
//! under a mutex does.
//!
//! A connection is in the list only while nothing is on it: it goes back
//! when its response has been read to the end and its request written
//! whole (when fal answered before the browser's upload ended, a task
//! finishes the upload first), and never when either was cut short. It
//! comes out only if nothing has arrived on it since (fal closing it, most
//! often). A request none of whose bytes could be written on a pooled
//! connection goes again on another idle connection or a new one; nothing
//! that was written is ever sent twice.
//!
//! HTTP/1.1 sends the path alone on the request line, and the origin in
//! `Host`: the pool writes both from the absolute URI it is given.

use crate::h1::{self, Conn, Decoder, Head, Upload, WireError};
use bytes::Bytes;
use http::uri::{Authority, Uri};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

pub(crate) use crate::h1::PoolBody;

/// After how long an idle connection is no longer reused: it is closed at
/// the next checkout (there is no timer; fal may close it sooner).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most idle connections kept, all origins together.
const MAX_IDLE: usize = 256;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connection's stream: TCP, or TLS over it.
type Stream = TokioIo<hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>;

/// A connection and its origin, boxed: with TLS's state it is large, and
/// it moves from the pool to a request, into its response body and back.
type Connection = Box<Pooled>;

/// A connection, the origin it was opened to, and its timer for the
/// response head.
///
/// The timer stays set between requests and is moved to each request's
/// deadline. tokio moves a set timer to a later time with one atomic
/// operation, where a new timer per request (`tokio::time::timeout`) is
/// put into the timer wheel and taken out again, under its lock: about
/// 1,400 instructions a request. A timer left set on an idle connection
/// may wake the task of its last request once, harmlessly.
struct Pooled {
    conn: Conn<Stream>,
    origin: Origin,
    head_timer: Pin<Box<tokio::time::Sleep>>,
}

/// Why a request failed: while connecting, or on an open connection.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// Opening the connection (TCP, TLS) failed.
    Connect(crate::body::BoxError),
    /// The exchange on an open connection failed.
    Request(WireError),
    /// No response head by the deadline.
    Timeout,
}

/// One idle connection.
struct Idle {
    conn: Connection,
    since: Instant,
}

/// `scheme://authority`, as the request URI has it: what a connection was
/// opened to.
struct Origin {
    https: bool,
    authority: Authority,
}

/// A request's origin, borrowed from its URI (an [`Origin`] without the
/// allocation a copy of the authority would cost on every request).
struct Endpoint<'a> {
    https: bool,
    authority: &'a str,
    /// `Host`: the host, and the port when it is not the scheme's default.
    host: &'a str,
}

/// Whether an absolute http(s) URI without user-info (no target and no
/// `FAL_PROXY_UPSTREAM` has any) is `https`, and its authority.
fn origin_of(uri: &Uri) -> Option<(bool, &Authority)> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return None,
    };
    let authority = uri.authority()?;
    (!authority.as_str().contains('@')).then_some((https, authority))
}

/// The `Host` header for an origin: the host, and the port when it is not
/// the scheme's default (as hyper-util wrote it, without its `format!`).
fn host_of(https: bool, authority: &Authority) -> &str {
    let default_port = if https { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => authority.as_str(),
        _ => authority.host(),
    }
}

impl<'a> Endpoint<'a> {
    /// The origin of `uri` (see [`origin_of`]); `None` also when `Host`
    /// would not be a valid header value.
    fn of(uri: &'a Uri) -> Option<Self> {
        let (https, authority) = origin_of(uri)?;
        let host = host_of(https, authority);
        host.bytes()
            .all(|byte| byte.is_ascii_graphic())
            .then_some(Self {
                https,
                authority: authority.as_str(),
                host,
            })
    }

    /// Byte for byte (`Authority`'s own comparison ignores case, byte by
    /// byte): every URI here was written by the proxy, in lower case.
    fn is(&self, origin: &Origin) -> bool {
        self.https == origin.https && self.authority == origin.authority.as_str()
    }
}

impl Origin {
    /// The origin of `uri` (see [`origin_of`]), copied.
    fn of(uri: &Uri) -> Option<Self> {
        let (https, authority) = origin_of(uri)?;
        Some(Self {
            https,
            authority: authority.clone(),
        })
    }

    /// The `Host` header (see [`host_of`]).
    #[cfg(test)]
    fn host(&self) -> &str {
        host_of(self.https, &self.authority)
    }

    /// [`Origin::host`] as a header value, when it is a valid one.
    #[cfg(test)]
    fn host_header(&self) -> Option<http::HeaderValue> {
        http::HeaderValue::from_str(self.host()).ok()
    }
}

/// The pool: a connector and the idle connections of every origin.
#[derive(Clone)]
pub(crate) struct Pool {
    connector: Connector,
    /// Oldest first: connections go back at the end and are taken from
    /// the end (the most recently used, which stay warm); the front expires.
    idle: Arc<Mutex<VecDeque<Idle>>>,
    /// How long a request may wait for its response head, connecting
    /// included.
    head_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            idle: Arc::new(Mutex::new(VecDeque::new())),
            head_timeout: crate::config::DEFAULT_TIMEOUT,
        }
    }

    /// The pool with `head_timeout` for the response head of each request.
    pub(crate) fn with_head_timeout(mut self, head_timeout: Duration) -> Self {
        self.head_timeout = head_timeout;
        self
    }

    /// Sends `request` (absolute URI) on an idle connection to its origin,
    /// or on a new one, and returns the response head, or
    /// [`PoolError::Timeout`] when it has not come within the pool's head
    /// timeout (connecting included).
    pub(crate) async fn send(
        &self,
        request: Request<PoolBody>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let deadline = tokio::time::Instant::now() + self.head_timeout;
        let (parts, body) = request.into_parts();
        let head_request = parts.method == http::Method::HEAD;
        let uri = parts.uri;
        let endpoint = Endpoint::of(&uri)
            .ok_or_else(|| PoolError::Connect("the upstream URL has no http(s) origin".into()))?;
        let mut upload = Some(Upload::new(
            &parts.method,
            &uri,
            &parts.headers,
            body,
            endpoint.host,
        ));
        drop(parts.headers);
        while let Some(mut conn) = self.checkout(&endpoint) {
            let mut failed = None;
            match exchange(&mut conn, &mut upload, &mut failed, deadline).await {
                Ok(head) => {
                    return Ok(self.pooled(head, head_request, upload, failed.is_some(), conn));
                }
                // Nothing written: fal closed the idle connection first.
                // Not when the browser's body failed: that ends the request.
                Err(PoolError::Request(error))
                    if !error.is_request_body()
                        && upload.as_ref().is_some_and(Upload::is_unstarted) => {}
                Err(error) => return Err(error),
            }
        }
        // Boxed: the connect path's state is large and rarely needed, and
        // it would otherwise make every request's future (moved about
        // several times per request) that much larger.
        let connect = Box::pin(tokio::time::timeout_at(
            deadline,
            self.connect(uri, deadline),
        ));
        let mut conn = connect.await.map_err(|_elapsed| PoolError::Timeout)??;
        let mut failed = None;
        let head = exchange(&mut conn, &mut upload, &mut failed, deadline).await?;
        Ok(self.pooled(head, head_request, upload, failed.is_some(), conn))
    }

    /// The most recently used idle connection to `endpoint` on which
    /// nothing has arrived since its last response. Those on which
    /// something has (fal closed it, most often) are dropped, and expired
    /// ones from the front on the way.
    fn checkout(&self, endpoint: &Endpoint<'_>) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|entry| now.duration_since(entry.since) >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            if !endpoint.is(&idle[index].conn.origin) {
                continue;
            }
            let mut entry = idle.remove(index)?;
            if entry.conn.conn.is_open_and_quiet() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Opens a connection to `uri`'s origin, its head timer set to `deadline`.
    async fn connect(
        &self,
        uri: Uri,
        deadline: tokio::time::Instant,
    ) -> Result<Connection, PoolError> {
        let origin = Origin::of(&uri)
            .ok_or_else(|| PoolError::Connect("the upstream URL has no http(s) origin".into()))?;
        let mut connector = self.connector.clone();
        let io = connector.call(uri).await.map_err(PoolError::Connect)?;
        Ok(Box::new(Pooled {
            conn: Conn::new(TokioIo::new(io)),
            origin,
            head_timer: Box::pin(tokio::time::sleep_until(deadline)),
        }))
    }

    /// The response, with a body reading the rest from `conn`. A request
    /// whose writing failed (fal answered and closed) is not written on.
    fn pooled(
        &self,
        head: Head,
        head_request: bool,
        upload: Option<Upload>,
        write_failed: bool,
        conn: Connection,
    ) -> Response<PooledBody> {
        // A body read to the close leaves nothing to reuse; an answer with
        // no body at all (to `HEAD`, a 204, a 304) needs no framing.
        let no_body = h1::has_no_body(head_request, head.response.status());
        let keep_alive = head.keep_alive(no_body);
        let decoder = Decoder::new(if no_body {
            h1::Framing::Length(0)
        } else {
            head.framing
        });
        let response = head.response;
        let mut body = PooledBody {
            decoder,
            upload: if write_failed { None } else { upload },
            keep_alive: keep_alive && !write_failed,
            conn: Some(conn),
            pool: Some(self.clone()),
        };
        if body.decoder.is_done() {
            body.finish();
        }
        response.map(|()| body)
    }

    fn put_back(&self, mut conn: Connection) {
        conn.conn.shrink_while_idle();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= MAX_IDLE {
            // The oldest goes: it is the likeliest to be closed by now.
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// Writes the request on `conn` and reads the response head, by
/// `deadline` (the connection's timer, moved to it).
async fn exchange(
    conn: &mut Connection,
    upload: &mut Option<Upload>,
    failed: &mut Option<WireError>,
    deadline: tokio::time::Instant,
) -> Result<Head, PoolError> {
    let Pooled {
        conn, head_timer, ..
    } = &mut **conn;
    head_timer.as_mut().reset(deadline);
    std::future::poll_fn(|cx| match h1::poll_exchange(conn, upload, failed, cx) {
        Poll::Ready(done) => Poll::Ready(done.map_err(PoolError::Request)),
        // Outside tokio's per-task budget, as `tokio::time::timeout` does:
        // an exchange that keeps the connection busy (an upload always
        // ready, fal sending interim answers without end) uses the budget
        // up, and a timer polled within it would then never go off.
        Poll::Pending => {
            match std::pin::pin!(tokio::task::unconstrained(head_timer.as_mut())).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(PoolError::Timeout)),
                Poll::Pending => Poll::Pending,
            }
        }
    })
    .await
}

/// A response body, read from its connection; the connection goes back to
/// the pool when the body has been read to its end (and the request
/// written whole), and is closed when the body is dropped before.
pub struct PooledBody {
    decoder: Decoder,
    /// The rest of the request, when fal answered before it was written.
    upload: Option<Upload>,
    keep_alive: bool,
    conn: Option<Connection>,
    pool: Option<Pool>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("decoder", &self.decoder)
            .field("upload", &self.upload)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    /// The body has ended: the connection goes back to the pool if it
    /// can carry another request, once the request is written whole.
    fn finish(&mut self) {
        let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take()) else {
            return;
        };
        if !self.keep_alive || !h1::read_nothing_more(&conn.conn) {
            return;
        }
        match self.upload.take() {
            None => pool.put_back(conn),
            Some(mut upload) => {
                // As hyper's connection task did: the upload goes on, and
                // the connection is reused only once it is whole.
                let mut conn = conn;
                tokio::spawn(async move {
                    let written =
                        std::future::poll_fn(|cx| h1::poll_upload(&mut conn.conn, &mut upload, cx))
                            .await;
                    if written.is_ok() && h1::read_nothing_more(&conn.conn) {
                        pool.put_back(conn);
                    }
                });
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = WireError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(upload) = this.upload.as_mut() {
            match h1::poll_upload(&mut conn.conn, upload, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(_)) => {
                    // The answer stands; the connection is not reused.
                    this.upload = None;
                    this.keep_alive = false;
                }
            }
        }
        match h1::poll_body(&mut conn.conn, &mut this.decoder, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                if this.decoder.is_done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(error))) => {
                this.conn = None;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BoxError;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// What the test upstream does after answering a request.
    #[derive(Clone, Copy)]
    enum After {
        KeepOpen,
        /// Closes the connection without saying so (a keep-alive timeout).
        Close,
    }

    /// An HTTP/1.1 upstream on loopback answering every GET with `body`,
    /// counting connections, and recording the `host` of each request.
    async fn upstream(
        body: &'static str,
        after: After,
    ) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (Arc::clone(&accepted), Arc::clone(&hosts));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(host) = line.strip_prefix("host: ") {
                                seen.lock().unwrap().push(host.trim().to_owned());
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if matches!(after, After::Close) {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted, hosts)
    }

    fn get(url: &str) -> Request<PoolBody> {
        Request::get(url)
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    async fn body_of(response: Response<PooledBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn pool() -> Pool {
        let _ = rustls::crypto::ring::default_provider().install_default();
        crate::upstream_reqwest::direct_client().unwrap()
    }

    /// `Host` is the host, with the port only when it is not the scheme's
    /// default; IPv6 keeps its brackets; user-info is refused.
    #[test]
    fn host_header_table() {
        let host = |url: &str| {
            Origin::of(&url.parse::<Uri>().unwrap())
                .and_then(|origin| origin.host_header())
                .map(|value| value.to_str().unwrap().to_owned())
        };
        assert_eq!(host("https://fal.run/x").as_deref(), Some("fal.run"));
        assert_eq!(host("https://fal.run:443/x").as_deref(), Some("fal.run"));
        assert_eq!(
            host("https://fal.run:8443/x").as_deref(),
            Some("fal.run:8443")
        );
        assert_eq!(host("http://127.0.0.1:80/x").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            host("http://127.0.0.1:9000/x").as_deref(),
            Some("127.0.0.1:9000")
        );
        assert_eq!(host("http://h:443/x").as_deref(), Some("h:443"));
        assert_eq!(host("http://[::1]:9000/x").as_deref(), Some("[::1]:9000"));
        assert_eq!(host("https://[::1]/x").as_deref(), Some("[::1]"));
        assert_eq!(host("https://user@fal.run/x"), None);
        assert_eq!(host("ftp://fal.run/x"), None);
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (origin, accepted, hosts) = upstream("ok", After::KeepOpen).await;
        let pool = pool();
        for _ in 0..3 {
            let response = pool.send(get(&format!("{origin}/a?b=c"))).await.unwrap();
            assert_eq!(body_of(response).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let authority = origin.trim_start_matches("http://");
        assert_eq!(*hosts.lock().unwrap(), vec![authority; 3]);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_both_are_kept() {
        let (origin, accepted, _) = upstream("ok", After::KeepOpen).await;
        let pool = pool();
        let url = format!("{origin}/x");
        let (first, second) = tokio::join!(pool.send(get(&url)), pool.send(get(&url)));
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(body_of(first).await, "ok");
        assert_eq!(body_of(second).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        for _ in 0..4 {
            body_of(pool.send(get(&url)).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "both were reused");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let (origin, accepted, _) = upstream("ok", After::Close).await;
        let pool = pool();
        let url = format!("{origin}/x");
        for round in 1..=3 {
            let response = pool.send(get(&url)).await.unwrap();
            assert_eq!(body_of(response).await, "ok");
            // Give the connection's task time to see the close, sometimes.
            if round == 2 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_break_the_next_request() {
        let long = "x".repeat(256 * 1024).leak();
        let (origin, _, _) = upstream(long, After::KeepOpen).await;
        let pool = pool();
        let url = format!("{origin}/x");
        let response = pool.send(get(&url)).await.unwrap();
        drop(response);
        let response = pool.send(get(&url)).await.unwrap();
        assert_eq!(body_of(response).await.len(), long.len());
    }

    #[tokio::test]
    async fn an_unreachable_origin_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = pool()
            .send(get(&format!("http://{address}/x")))
            .await
            .err()
            .unwrap();
        assert!(matches!(error, PoolError::Connect(_)), "{error:?}");
    }

    /// An upstream that answers as soon as it has a request's head (as fal
    /// does when it refuses a request early), then reads the body it was
    /// announced; counts connections.
    async fn early_answering_upstream() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        let mut length = 0usize;
                        loop {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(value) = line.strip_prefix("content-length: ") {
                                length = value.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut rest = vec![0u8; length];
                        if stream.read_exact(&mut rest).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (origin, accepted)
    }

    /// An upload of `length` bytes that sends `abc` and then waits for more
    /// through the returned sender (a slow browser).
    async fn slow_upload(
        origin: &str,
        length: usize,
    ) -> (
        tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
        Request<PoolBody>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let upload = Request::post(format!("{origin}/upload"))
            .header(http::header::CONTENT_LENGTH, length)
            .body(http_body_util::StreamBody::new(stream).boxed())
            .unwrap();
        (tx, upload)
    }

    /// The answered connection goes back to the pool while the request body
    /// is still being written on it; the next request to the origin must
    /// not wait for it (hyper's `ready` is pending until the upload ends)
    /// but use another connection.
    #[tokio::test]
    async fn an_upload_still_in_progress_does_not_hold_up_the_next_request() {
        let (origin, _) = early_answering_upstream().await;
        let pool = pool();
        let (tx, upload) = slow_upload(&origin, 1000).await;
        let response = pool.send(upload).await.unwrap();
        assert_eq!(body_of(response).await, "ok");
        // The upload is still open; another request to the same origin.
        let next = tokio::time::timeout(
            Duration::from_secs(2),
            pool.send(get(&format!("{origin}/next"))),
        )
        .await;
        drop(tx);
        let next = next.expect("the next request waited on the connection still uploading");
        assert_eq!(body_of(next.unwrap()).await, "ok");
    }

    /// A connection passed over while its upload was still being written is
    /// taken again once the upload has ended.
    #[tokio::test]
    async fn a_busy_connection_is_reused_after_its_upload_ends() {
        let (origin, accepted) = early_answering_upstream().await;
        let pool = pool();
        let (tx, upload) = slow_upload(&origin, 6).await;
        let response = pool.send(upload).await.unwrap();
        assert_eq!(body_of(response).await, "ok");
        // Busy: a second connection (and no wait for the first).
        let second = tokio::time::timeout(
            Duration::from_secs(2),
            pool.send(get(&format!("{origin}/b"))),
        )
        .await
        .expect("the request waited on the connection still uploading")
        .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // End the upload; give the first connection's task a turn.
        tx.send(Ok(Frame::data(Bytes::from_static(b"def"))))
            .await
            .unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // `second` is still held (its body unread): the first serves this.
        let third = tokio::time::timeout(
            Duration::from_secs(2),
            pool.send(get(&format!("{origin}/c"))),
        )
        .await
        .expect("no connection was ready")
        .unwrap();
        assert_eq!(body_of(third).await, "ok");
        assert_eq!(body_of(second).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the first was reused");
        for _ in 0..4 {
            body_of(pool.send(get(&format!("{origin}/d"))).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream on one connection that answers `/ok` at once and never
    /// answers `/hang`.
    async fn answers_ok_only() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let hang = line.starts_with("GET /hang ");
                        while line != "\r\n" {
                            line.clear();
                            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        if hang {
                            // Holds the connection open, unanswered.
                            std::future::pending::<()>().await;
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (origin, accepted)
    }

    /// The head timer a connection keeps between requests is moved to each
    /// request's deadline: a reused connection still times out, and a timer
    /// that went off while the connection sat idle does not cut the next
    /// request short.
    #[tokio::test]
    async fn the_head_timeout_holds_on_reused_connections() {
        let (origin, accepted) = answers_ok_only().await;
        let pool = pool().with_head_timeout(Duration::from_millis(300));
        assert_eq!(
            body_of(pool.send(get(&format!("{origin}/ok"))).await.unwrap()).await,
            "ok"
        );
        // Idle past the deadline of the first request: its timer goes off.
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(
            body_of(pool.send(get(&format!("{origin}/ok"))).await.unwrap()).await,
            "ok"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused");
        // Well within the deadline again, on the same connection.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            body_of(pool.send(get(&format!("{origin}/ok"))).await.unwrap()).await,
            "ok"
        );
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(3),
            pool.send(get(&format!("{origin}/hang"))),
        )
        .await
        .expect("the head timeout did not fire");
        let waited = started.elapsed();
        assert!(matches!(outcome, Err(PoolError::Timeout)), "{outcome:?}");
        assert!(waited >= Duration::from_millis(290), "{waited:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the hung request was on the reused connection"
        );
    }

    /// Reads grow for a long body; the connection that goes back idle keeps
    /// a small buffer, not the one the body grew.
    #[tokio::test]
    async fn an_idle_connection_keeps_a_small_read_buffer_after_a_long_body() {
        let long = "x".repeat(4 << 20).leak();
        let (origin, accepted, _) = upstream(long, After::KeepOpen).await;
        let pool = pool();
        let response = pool.send(get(&format!("{origin}/long"))).await.unwrap();
        assert_eq!(body_of(response).await.len(), long.len());
        let kept = {
            let idle = pool.idle.lock().unwrap();
            assert_eq!(idle.len(), 1, "the connection went back");
            idle[0].conn.conn.read_capacity()
        };
        assert!(kept <= 2 * 8192, "an idle connection keeps {kept} bytes");
        // And it still serves.
        let response = pool.send(get(&format!("{origin}/again"))).await.unwrap();
        assert_eq!(body_of(response).await.len(), long.len());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}

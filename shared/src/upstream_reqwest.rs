//! The upstream of the native targets: the crate's own HTTP/1.1 client
//! connections ([`crate::h1`]) over rustls, in its own pool
//! ([`crate::pool`]), for fal requests; reqwest (same TLS settings) for an
//! egress proxy from the environment and for the auth provider's key set.

use crate::auth::{KEY_SET_TIMEOUT, KeySetDocument, KeySetError, KeySetSource, MAX_KEY_SET_BYTES};
use crate::body::{BoxError, is_body_limit_error, limit_body};
use crate::config::Config;
use crate::error::{Cause, UpstreamError};
use crate::forward::Upstream;
use crate::pool::{Pool, PoolBody, PoolError};
use crate::progress::{RequestBodyError, Watched};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// After how long an idle pooled connection is no longer reused (both clients).
const POOL_IDLE_TIMEOUT: Duration = crate::pool::IDLE_TIMEOUT;

/// The HTTP clients, built once per process and shared by every request:
/// rustls with the platform's verifier, no redirects, a connect timeout,
/// and a time limit on the response head (never on the body, which may be a
/// long stream). No proxy from the environment, unless the configuration
/// says `FAL_PROXY_USE_ENV_PROXY=1`: then the `HTTPS_PROXY`, `HTTP_PROXY`
/// and `NO_PROXY` it read.
///
/// fal requests go through HTTP/1.1 client connections and a pool of our
/// own ([`crate::h1`], [`crate::pool`]): reqwest's layers (a URL parsed
/// from the request's URI and again for its redirect policy, default
/// headers, boxed futures) cost about a quarter of the proxy's own
/// instructions per request, hyper-util's pool a sixth of what was left,
/// and hyper's client connections (a task each, channels for the request,
/// the response and both bodies) about a sixth again. reqwest stays for
/// what the pool does not do (egress through an environment proxy) and for
/// the auth key set.
#[derive(Clone)]
pub struct ReqwestUpstream {
    client: reqwest::Client,
    /// `None` when an egress proxy is configured: then reqwest sends.
    direct: Option<Pool>,
    head_timeout: Duration,
    body_idle_timeout: Duration,
    max_body_bytes: u64,
}

impl std::fmt::Debug for ReqwestUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqwestUpstream")
            .field("client", &self.client)
            .field("direct", &self.direct.is_some())
            .field("head_timeout", &self.head_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The pool's connector, with the same settings as the reqwest client:
/// rustls (ring) with the platform's verifier, `http://` allowed (the test
/// seam), a 10 s connect timeout, `TCP_NODELAY`. HTTP/1.1 only (ALPN
/// offers nothing else), as the official Node proxy's `fetch` speaks.
pub(crate) fn direct_client() -> Result<Pool, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Pool::new(https))
}

impl ReqwestUpstream {
    /// Builds the clients for `config`.
    pub fn new(config: &Config) -> Result<Self, BoxError> {
        // reqwest is built without a default crypto provider; use ring's.
        // An `Err` means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `no_proxy` first: reqwest would otherwise read the environment itself.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        let direct = match config.egress_proxy() {
            None => Some(direct_client()?.with_head_timeout(config.timeout())),
            Some(egress) => {
                let except = egress.no_proxy().and_then(reqwest::NoProxy::from_string);
                if let Some(url) = egress.https() {
                    builder = builder.proxy(reqwest::Proxy::https(url)?.no_proxy(except.clone()));
                }
                if let Some(url) = egress.http() {
                    builder = builder.proxy(reqwest::Proxy::http(url)?.no_proxy(except));
                }
                None
            }
        };
        Ok(Self {
            client: builder.build()?,
            direct,
            head_timeout: config.timeout(),
            body_idle_timeout: config.body_idle_timeout(),
            max_body_bytes: config.max_body_bytes(),
        })
    }

    /// Sends through the pool: the same request reqwest would send (it
    /// adds `accept: */*` when there is none, so this does too).
    async fn send_direct(
        &self,
        pool: &Pool,
        request: Request<PoolBody>,
    ) -> Result<Response<reqwest::Body>, UpstreamError> {
        let mut request = request;
        if !request.headers().contains_key(http::header::ACCEPT) {
            request
                .headers_mut()
                .insert(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
        }
        match pool.send(request).await {
            Err(PoolError::Timeout) => Err(UpstreamError::Timeout),
            Err(PoolError::Connect(error)) => Err(classify(&*error, true, false)),
            Err(PoolError::Request(error)) => Err(classify(&error, false, false)),
            Ok(response) => Ok(response.map(reqwest::Body::wrap)),
        }
    }
}

impl<B> Upstream<B> for ReqwestUpstream
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Body = reqwest::Body;

    async fn send(&self, request: Request<B>) -> Result<Response<reqwest::Body>, UpstreamError> {
        // The limit outside the watch, so its own error is not taken for the browser's.
        if let Some(pool) = &self.direct {
            let request = request.map(|body| {
                let watched = Watched::new(body, self.body_idle_timeout);
                limit_body(watched, self.max_body_bytes)
                    .map_frame(|frame| frame.map_data(Into::into))
                    .map_err(Into::into)
                    .boxed()
            });
            return self.send_direct(pool, request).await;
        }
        let request = request.map(|body| {
            let watched = Watched::new(body, self.body_idle_timeout);
            reqwest::Body::wrap(limit_body(watched, self.max_body_bytes))
        });
        let request = reqwest::Request::try_from(request).map_err(|_| UpstreamError::Broken)?;
        match tokio::time::timeout(self.head_timeout, self.client.execute(request)).await {
            Err(_elapsed) => Err(UpstreamError::Timeout),
            Ok(Err(error)) => Err(classify(&error, error.is_connect(), error.is_timeout())),
            Ok(Ok(response)) => Ok(Response::from(response)),
        }
    }
}

/// The auth provider's key set, with the same client: no redirects, no
/// proxy from the environment, the whole exchange within
/// [`KEY_SET_TIMEOUT`], at most [`MAX_KEY_SET_BYTES`] read.
impl KeySetSource for ReqwestUpstream {
    async fn fetch_key_set(&self, url: &str) -> Result<KeySetDocument, KeySetError> {
        let fetch = async {
            let mut response = self
                .client
                .get(url)
                .header(http::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|_| KeySetError::Unreachable)?;
            if response.status() != http::StatusCode::OK {
                return Err(KeySetError::Status);
            }
            if response
                .content_length()
                .is_some_and(|length| length > MAX_KEY_SET_BYTES as u64)
            {
                return Err(KeySetError::TooLarge);
            }
            let cache_control = response
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|_| KeySetError::Unreachable)?
            {
                if body.len() + chunk.len() > MAX_KEY_SET_BYTES {
                    return Err(KeySetError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(KeySetDocument {
                body: Bytes::from(body),
                cache_control,
            })
        };
        tokio::time::timeout(KEY_SET_TIMEOUT, fetch)
            .await
            .unwrap_or(Err(KeySetError::Timeout))
    }
}

/// What a failed exchange was, from either client's error: whether it
/// failed connecting, whether the client called it a timeout, and the
/// causes in its source chain.
fn classify(error: &(dyn Error + 'static), is_connect: bool, is_timeout: bool) -> UpstreamError {
    if let Some(body_error) = find_in_chain::<RequestBodyError>(error) {
        return match body_error {
            RequestBodyError::Stalled => UpstreamError::RequestBodyStalled,
            RequestBodyError::Broken(_) => UpstreamError::RequestBodyBroken,
        };
    }
    if is_body_limit_error(error) {
        return UpstreamError::BodyTooLarge;
    }
    let cause = cause_in_chain(error);
    if is_connect {
        // A connect timeout is a connect error that is also a timeout
        // (reqwest says so; hyper's connector says so in an I/O error).
        let cause = if is_timeout {
            Cause::Timeout
        } else {
            cause.unwrap_or(Cause::Connect)
        };
        UpstreamError::Unreachable(cause)
    } else if is_timeout {
        UpstreamError::Timeout
    } else if let Some(cause) = cause {
        // A refused or reset connection that the client does not call a
        // connect error (a pooled connection, a reset before the answer).
        UpstreamError::Unreachable(cause)
    } else {
        UpstreamError::Broken
    }
}

/// The network cause named in an error's source chain, outermost first.
fn cause_in_chain(error: &(dyn Error + 'static)) -> Option<Cause> {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<rustls::Error>() {
            return Some(Cause::Tls);
        }
        // hyper-util's connector says "dns error: ..." for a failed lookup;
        // its error type is private, its message is the stable part.
        if error.to_string().starts_with("dns error") {
            return Some(Cause::Dns);
        }
        if let Some(cause) = error.downcast_ref::<std::io::Error>().and_then(io_cause) {
            return Some(cause);
        }
        current = error.source();
    }
    None
}

/// The first error of type `E` in `error`'s source chain.
fn find_in_chain<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// The cause an I/O error names. rustls reports a failed handshake as an
/// I/O error around its own, and reqwest wraps that in another I/O error,
/// whose `source()` skips the one inside: so look inside by hand.
fn io_cause(io: &std::io::Error) -> Option<Cause> {
    if let Some(inner) = io.get_ref() {
        if inner.is::<rustls::Error>() {
            return Some(Cause::Tls);
        }
        if let Some(cause) = inner.downcast_ref::<std::io::Error>().and_then(io_cause) {
            return Some(cause);
        }
    }
    use std::io::ErrorKind;
    match io.kind() {
        ErrorKind::ConnectionRefused => Some(Cause::Connect),
        ErrorKind::TimedOut => Some(Cause::Timeout),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Some(Cause::Reset)
        }
        _ => None,
    }
}

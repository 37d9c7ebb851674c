//! The upstream of the native targets: reqwest over rustls.

use crate::auth::{KEY_SET_TIMEOUT, KeySetDocument, KeySetError, KeySetSource, MAX_KEY_SET_BYTES};
use crate::body::{BoxError, is_body_limit_error, limit_body};
use crate::config::Config;
use crate::error::{Cause, UpstreamError};
use crate::forward::Upstream;
use crate::progress::{RequestBodyError, Watched};
use bytes::Bytes;
use http::{Request, Response};
use std::error::Error;
use std::time::Duration;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One reqwest client, built once per process and shared by every request:
/// rustls with the platform's roots, no redirects, a connect timeout, and a
/// time limit on the response head (never on the body, which may be a long
/// stream). No proxy from the environment, unless the configuration says
/// `FAL_PROXY_USE_ENV_PROXY=1`: then the `HTTPS_PROXY`, `HTTP_PROXY` and
/// `NO_PROXY` it read.
#[derive(Debug, Clone)]
pub struct ReqwestUpstream {
    client: reqwest::Client,
    head_timeout: Duration,
    body_idle_timeout: Duration,
    max_body_bytes: u64,
}

impl ReqwestUpstream {
    /// Builds the client for `config`.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default crypto provider; use ring's.
        // An `Err` means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // `no_proxy` first: reqwest would otherwise read the environment itself.
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(egress) = config.egress_proxy() {
            let except = egress.no_proxy().and_then(reqwest::NoProxy::from_string);
            if let Some(url) = egress.https() {
                builder = builder.proxy(reqwest::Proxy::https(url)?.no_proxy(except.clone()));
            }
            if let Some(url) = egress.http() {
                builder = builder.proxy(reqwest::Proxy::http(url)?.no_proxy(except));
            }
        }
        Ok(Self {
            client: builder.build()?,
            head_timeout: config.timeout(),
            body_idle_timeout: config.body_idle_timeout(),
            max_body_bytes: config.max_body_bytes(),
        })
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
        let request = request.map(|body| {
            let watched = Watched::new(body, self.body_idle_timeout);
            reqwest::Body::wrap(limit_body(watched, self.max_body_bytes))
        });
        let request = reqwest::Request::try_from(request).map_err(|_| UpstreamError::Broken)?;
        match tokio::time::timeout(self.head_timeout, self.client.execute(request)).await {
            Err(_elapsed) => Err(UpstreamError::Timeout),
            Ok(Err(error)) => Err(classify(&error)),
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

fn classify(error: &reqwest::Error) -> UpstreamError {
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
    if error.is_connect() {
        // reqwest's connect timeout is a connect error that is also a timeout.
        let cause = if error.is_timeout() {
            Cause::Timeout
        } else {
            cause.unwrap_or(Cause::Connect)
        };
        UpstreamError::Unreachable(cause)
    } else if error.is_timeout() {
        UpstreamError::Timeout
    } else if let Some(cause) = cause {
        // A refused or reset connection that reqwest does not call a connect
        // error (a pooled connection, a reset before the answer).
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

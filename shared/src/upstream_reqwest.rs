//! The upstream of the native targets: reqwest over rustls.

use crate::body::{BoxError, is_body_limit_error, limit_body};
use crate::config::Config;
use crate::error::UpstreamError;
use crate::forward::Upstream;
use bytes::Bytes;
use http::{Request, Response};
use std::error::Error;
use std::time::Duration;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One reqwest client, built once per process and shared by every request:
/// rustls with the platform's roots, no redirects, no proxy from the
/// environment, a connect timeout, and a time limit on the response head
/// (never on the body, which may be a long stream).
#[derive(Debug, Clone)]
pub struct ReqwestUpstream {
    client: reqwest::Client,
    head_timeout: Duration,
    max_body_bytes: u64,
}

impl ReqwestUpstream {
    /// Builds the client for `config`.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        // reqwest is built without a default crypto provider; use ring's.
        // An `Err` means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            client,
            head_timeout: config.timeout(),
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
        let request =
            request.map(|body| reqwest::Body::wrap(limit_body(body, self.max_body_bytes)));
        let request = reqwest::Request::try_from(request).map_err(|_| UpstreamError::Broken)?;
        match tokio::time::timeout(self.head_timeout, self.client.execute(request)).await {
            Err(_elapsed) => Err(UpstreamError::Timeout),
            Ok(Err(error)) => Err(classify(&error)),
            Ok(Ok(response)) => Ok(Response::from(response)),
        }
    }
}

fn classify(error: &reqwest::Error) -> UpstreamError {
    if is_body_limit_error(error) {
        UpstreamError::BodyTooLarge
    } else if error.is_timeout() {
        UpstreamError::Timeout
    } else if error.is_connect() {
        UpstreamError::Unreachable
    } else {
        // Let a chain that ends in a refused connection still say so.
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return UpstreamError::Unreachable;
            }
            source = cause.source();
        }
        UpstreamError::Broken
    }
}

//! What the client experiences when the proxy answers by itself.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Every answer the proxy makes itself instead of forwarding.
///
/// The `Display` text is the short, fixed sentence that goes into the JSON
/// body; it never contains a key, a header value or anything else the caller
/// sent. Tests match on the variant, never on the wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The request is not for the proxy route.
    #[error("Not found: the fal proxy is served at /api/fal/proxy.")]
    NotFound,
    /// A method the proxy does not forward.
    #[error("Method not allowed: the fal proxy forwards GET, POST, PUT, DELETE, PATCH and HEAD.")]
    MethodNotAllowed,
    /// No `x-fal-target-url` header.
    #[error("Missing the x-fal-target-url header: configure the fal client with proxyUrl.")]
    MissingTargetUrl,
    /// `x-fal-target-url` is empty, repeated, not ASCII, or not an absolute URL.
    #[error("The x-fal-target-url header is not a single, valid, absolute URL.")]
    InvalidTargetUrl,
    /// The target URL is well formed but not on the allow-list.
    #[error("The target URL is not allowed by this proxy.")]
    TargetNotAllowed,
    /// The target names a fal app this proxy does not serve.
    #[error("This fal endpoint is not allowed by this proxy.")]
    EndpointNotAllowed,
    /// The request's `Host` is not one this proxy serves (DNS rebinding).
    #[error("This host name is not served by this proxy.")]
    HostNotAllowed,
    /// The browser's `Origin` is not allowed.
    #[error("This origin is not allowed to use this proxy.")]
    OriginNotAllowed,
    /// Bring-your-own-key mode and no key was sent.
    #[error(
        "Add your fal API key: this app sends your own fal key with each request (x-fal-user-key)."
    )]
    MissingUserKey,
    /// The `x-fal-user-key` value cannot be a fal key.
    #[error("The x-fal-user-key header is not a valid fal API key.")]
    InvalidUserKey,
    /// App-user authentication is on and the request has no valid bearer
    /// token.
    #[error(
        "Sign in first: this proxy needs a valid token of a signed-in user (Authorization: Bearer <token>)."
    )]
    Unauthenticated,
    /// App-user authentication is on and the provider's keys could not be
    /// fetched (and none are cached).
    #[error("The sign-in provider's keys could not be fetched; try again shortly.")]
    AuthUnavailable,
    /// The request itself is malformed (for example a bad `content-length`).
    #[error("The request is malformed.")]
    InvalidRequest,
    /// The request body is over the configured limit.
    #[error("The request body is larger than this proxy accepts.")]
    BodyTooLarge,
    /// The upstream could not be reached (connection refused, DNS, TLS).
    #[error("The fal API could not be reached.")]
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    #[error("The fal API did not answer in time.")]
    UpstreamTimeout,
    /// The upstream answered with something that is not valid HTTP, or the
    /// exchange broke off.
    #[error("The fal API answered with a broken response.")]
    UpstreamBroken,
    /// The identity's rate limit is used up (the 429 itself is made by the
    /// limits phase, with when to retry).
    #[error("Rate limit reached: try again later.")]
    RateLimited,
    /// The rate-limit store could not answer and the proxy fails closed.
    #[error("The proxy's rate-limit store is unavailable; try again shortly.")]
    RateStoreUnavailable,
    /// A fault of the proxy itself.
    #[error("The proxy failed to handle this request.")]
    Internal,
    /// The upstream answered with a redirect to a URL the proxy would not
    /// send a request to (a browser would follow it with the same headers).
    #[error("The fal API answered with a redirect to a URL this proxy does not allow.")]
    UpstreamRedirect,
    /// The browser stopped sending its request body.
    #[error("The request body stopped arriving before it was complete.")]
    RequestBodyTimeout,
}

impl ProxyError {
    /// The HTTP status of this error.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::MissingTargetUrl
            | Self::InvalidTargetUrl
            | Self::InvalidUserKey
            | Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::MissingUserKey | Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::AuthUnavailable | Self::RateStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::TargetNotAllowed
            | Self::EndpointNotAllowed
            | Self::OriginNotAllowed
            | Self::HostNotAllowed => StatusCode::FORBIDDEN,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamUnreachable | Self::UpstreamBroken | Self::UpstreamRedirect => {
                StatusCode::BAD_GATEWAY
            }
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable snake_case name sent as `error_type`.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MissingTargetUrl => "missing_target_url",
            Self::InvalidTargetUrl => "invalid_target_url",
            Self::TargetNotAllowed => "target_not_allowed",
            Self::EndpointNotAllowed => "endpoint_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::HostNotAllowed => "host_not_allowed",
            Self::MissingUserKey => "missing_user_key",
            Self::InvalidUserKey => "invalid_user_key",
            Self::Unauthenticated => "unauthenticated",
            Self::AuthUnavailable => "auth_unavailable",
            Self::InvalidRequest => "invalid_request",
            Self::BodyTooLarge => "body_too_large",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBroken => "upstream_error",
            Self::RateLimited => "rate_limited",
            Self::RateStoreUnavailable => "rate_store_unavailable",
            Self::Internal => "internal_error",
            Self::UpstreamRedirect => "upstream_redirect",
            Self::RequestBodyTimeout => "request_body_timeout",
        }
    }

    /// The error as a response: fal's error shape, so the fal client shows it.
    pub fn to_response(self) -> Response<Bytes> {
        let mut response = json_error(self.status(), &self.to_string(), self.error_type());
        match self {
            Self::MethodNotAllowed => {
                response.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS"),
                );
            }
            Self::Unauthenticated => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// `{"detail": ..., "error_type": ...}` as JSON, never cached.
pub(crate) fn json_error(status: StatusCode, detail: &str, error_type: &str) -> Response<Bytes> {
    let body = serde_json::json!({ "detail": detail, "error_type": error_type });
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Why the upstream exchange failed, as reported by a target's HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No answer could be had: the cause says why, as far as the client can
    /// tell (logged as `cause=`, never sent to the browser).
    #[error("upstream unreachable ({0})")]
    Unreachable(Cause),
    /// No response head within the configured time.
    #[error("upstream timed out")]
    Timeout,
    /// The exchange broke off or the response was not valid HTTP.
    #[error("upstream exchange broken")]
    Broken,
    /// The request body turned out larger than the limit while streaming.
    #[error("request body over the limit")]
    BodyTooLarge,
    /// The browser's request body was malformed (for example bad chunked
    /// framing) or broke off: the browser's fault, not the upstream's.
    #[error("request body malformed")]
    RequestBodyBroken,
    /// The browser's request body made no progress for too long.
    #[error("request body stalled")]
    RequestBodyStalled,
}

impl UpstreamError {
    /// Why an unreachable upstream could not be reached.
    pub fn cause(self) -> Option<Cause> {
        match self {
            Self::Unreachable(cause) => Some(cause),
            _ => None,
        }
    }
}

/// The class of network failure behind [`UpstreamError::Unreachable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// The host name did not resolve.
    #[error("dns")]
    Dns,
    /// The connection was refused or could not be opened (or a proxy in
    /// between refused the tunnel).
    #[error("connect")]
    Connect,
    /// The TLS handshake failed (an untrusted certificate, a TLS-inspecting
    /// proxy whose root is not trusted, not TLS at all).
    #[error("tls")]
    Tls,
    /// Connecting took too long.
    #[error("timeout")]
    Timeout,
    /// The connection was reset before an answer arrived.
    #[error("reset")]
    Reset,
    /// The client could not tell.
    #[error("unknown")]
    Unknown,
}

impl From<UpstreamError> for ProxyError {
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Unreachable(_) => Self::UpstreamUnreachable,
            UpstreamError::Timeout => Self::UpstreamTimeout,
            UpstreamError::Broken => Self::UpstreamBroken,
            UpstreamError::BodyTooLarge => Self::BodyTooLarge,
            UpstreamError::RequestBodyBroken => Self::InvalidRequest,
            UpstreamError::RequestBodyStalled => Self::RequestBodyTimeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_fal_shaped_json() {
        let all = [
            ProxyError::NotFound,
            ProxyError::MethodNotAllowed,
            ProxyError::MissingTargetUrl,
            ProxyError::InvalidTargetUrl,
            ProxyError::TargetNotAllowed,
            ProxyError::EndpointNotAllowed,
            ProxyError::OriginNotAllowed,
            ProxyError::HostNotAllowed,
            ProxyError::MissingUserKey,
            ProxyError::InvalidUserKey,
            ProxyError::Unauthenticated,
            ProxyError::AuthUnavailable,
            ProxyError::InvalidRequest,
            ProxyError::BodyTooLarge,
            ProxyError::UpstreamUnreachable,
            ProxyError::UpstreamTimeout,
            ProxyError::UpstreamBroken,
            ProxyError::Internal,
            ProxyError::UpstreamRedirect,
            ProxyError::RequestBodyTimeout,
        ];
        for error in all {
            let response = error.to_response();
            assert_eq!(response.status(), error.status());
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body: serde_json::Value =
                serde_json::from_slice(response.body()).expect("valid JSON");
            assert_eq!(body["error_type"], error.error_type());
            assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }
}

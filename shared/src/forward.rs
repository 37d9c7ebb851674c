//! The proxy's phases, and the seam to a target's HTTP client.

use crate::config::Config;
use crate::cors::Cors;
use crate::error::{ProxyError, UpstreamError};
use crate::headers::{filter_response_headers, upstream_request_headers};
use crate::info;
use crate::key;
use crate::target::Target;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

/// The route the proxy serves, and every path below it.
pub const PROXY_PATH: &str = "/api/fal/proxy";

/// A target's HTTP client: sends one upstream request.
///
/// No `Send` bound, so the Worker's JS-backed fetch fits as well as reqwest.
/// Implementations must not follow redirects (the key must not travel on).
pub trait Upstream<B> {
    /// The upstream response's body, moved to the browser untouched.
    type Body;

    /// Sends `request` and returns the response head as soon as it arrives.
    fn send(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<Self::Body>, UpstreamError>>;
}

/// A response body: the upstream's, streamed, or one the proxy made.
#[derive(Debug)]
pub enum ProxyBody<B> {
    /// The upstream's body, untouched.
    Upstream(B),
    /// A body the proxy made itself (errors, preflights).
    Full(Bytes),
}

/// What one request was, for the target's log line and the response phase.
/// Holds no key and no header value other than the allowed CORS origin.
#[derive(Debug, Clone)]
pub struct Exchange {
    method: Method,
    target: Option<(String, String)>,
    cors_origin: Option<HeaderValue>,
    error: Option<ProxyError>,
}

impl Exchange {
    fn new(method: Method) -> Self {
        Self {
            method,
            target: None,
            cors_origin: None,
            error: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self::new(Method::GET)
    }

    /// The error the proxy answered with, if it answered by itself.
    pub fn error(&self) -> Option<ProxyError> {
        self.error
    }

    /// The one structured log line of a finished request: method, target
    /// host and path (no query), status, duration, body bytes sent back.
    pub fn log_line(&self, status: StatusCode, duration: Duration, bytes: u64) -> String {
        let mut line = format!("method={}", self.method);
        match &self.target {
            Some((host, path)) => {
                let _ = write!(line, " target={host}{path}");
            }
            None => line.push_str(" target=-"),
        }
        let _ = write!(
            line,
            " status={} duration_ms={} bytes={bytes}",
            status.as_u16(),
            duration.as_millis()
        );
        if let Some(error) = self.error {
            let _ = write!(line, " error={}", error.error_type());
        }
        line
    }
}

/// What the request phase decided.
#[derive(Debug)]
pub enum Decision<B> {
    /// Send this request upstream.
    Forward(Request<B>, Exchange),
    /// Answer with this response; nothing goes upstream.
    Respond(Response<Bytes>, Exchange),
}

/// The proxy: a validated configuration and the phases that apply it.
#[derive(Debug, Clone)]
pub struct Proxy {
    config: Config,
    client_proxy: HeaderValue,
}

impl Proxy {
    /// A proxy for `config`, naming itself to fal as running on `platform`
    /// (`native`, `vercel`, `lambda`, `worker`).
    pub fn new(config: Config, platform: &str) -> Self {
        let client_proxy = HeaderValue::try_from(format!(
            "fal-proxy/{} ({platform})",
            env!("CARGO_PKG_VERSION")
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("fal-proxy"));
        Self {
            config,
            client_proxy,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Runs every phase: the request filter, the upstream exchange, the
    /// response filter. Never fails: every error becomes a response. The
    /// [`Exchange`] is in the response's extensions for the target's log.
    pub async fn forward<B, U>(
        &self,
        upstream: &U,
        request: Request<B>,
    ) -> Response<ProxyBody<U::Body>>
    where
        U: Upstream<B>,
    {
        let (response, exchange) = match self.request_filter(request) {
            Decision::Respond(response, exchange) => (response.map(ProxyBody::Full), exchange),
            Decision::Forward(request, mut exchange) => match upstream.send(request).await {
                Ok(response) => (
                    self.response_filter(&exchange, response)
                        .map(ProxyBody::Upstream),
                    exchange,
                ),
                Err(error) => {
                    let error = ProxyError::from(error);
                    exchange.error = Some(error);
                    (
                        self.error_response(&exchange, error).map(ProxyBody::Full),
                        exchange,
                    )
                }
            },
        };
        let mut response = response;
        response.extensions_mut().insert(exchange);
        response
    }

    /// Phase 1: validates the browser's request and builds the upstream one,
    /// or decides the answer. Nothing is sent upstream for a `Respond`.
    pub fn request_filter<B>(&self, request: Request<B>) -> Decision<B> {
        let mut exchange = Exchange::new(request.method().clone());
        match self.check_request(&request, &mut exchange) {
            Ok(Checked::Forward(uri, authorization)) => {
                let (parts, body) = request.into_parts();
                let headers =
                    upstream_request_headers(&parts.headers, &authorization, &self.client_proxy);
                let mut upstream = Request::new(body);
                *upstream.method_mut() = parts.method;
                *upstream.uri_mut() = uri;
                *upstream.headers_mut() = headers;
                Decision::Forward(upstream, exchange)
            }
            Ok(Checked::Info) => {
                let mut response = info::info_response(&self.config);
                self.cors_headers(&exchange, response.headers_mut());
                Decision::Respond(response, exchange)
            }
            Ok(Checked::Preflight) => {
                let mut response =
                    Cors::preflight(exchange.cors_origin.as_ref(), request.headers());
                // An allowed origin's preflight carries its own `vary`.
                if exchange.cors_origin.is_none() {
                    self.cors_headers(&exchange, response.headers_mut());
                }
                Decision::Respond(response, exchange)
            }
            Err(error) => {
                exchange.error = Some(error);
                let response = self.error_response(&exchange, error);
                Decision::Respond(response, exchange)
            }
        }
    }

    /// What to do with a request that passed every check.
    fn check_request<B>(
        &self,
        request: &Request<B>,
        exchange: &mut Exchange,
    ) -> Result<Checked, ProxyError> {
        let path = request.uri().path();
        let on_route = path
            .strip_prefix(PROXY_PATH)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if !on_route {
            return Err(ProxyError::NotFound);
        }
        if let Some(hosts) = &self.config.allowed_hosts
            && !host_is_allowed(request.headers(), hosts)
        {
            return Err(ProxyError::HostNotAllowed);
        }
        if let Some(cors) = &self.config.cors {
            exchange.cors_origin = cors.check(request.headers())?;
        }
        let method = request.method();
        if method == Method::OPTIONS {
            return Ok(Checked::Preflight);
        }
        if info::is_info_request(request) {
            return Ok(Checked::Info);
        }
        let forwarded = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::HEAD,
        ];
        if !forwarded.contains(method) {
            return Err(ProxyError::MethodNotAllowed);
        }

        let target = Target::from_headers(request.headers())?;
        exchange.target = Some((target.host().to_owned(), target.path().to_owned()));
        self.config.allow_urls.check(&target)?;
        if let Some(endpoints) = &self.config.allow_endpoints {
            endpoints.check(request.method(), &target)?;
        }
        let key = key::select(
            self.config.key_mode,
            self.config.server_key.as_ref(),
            request.headers(),
        )?;

        let mut lengths = request.headers().get_all(header::CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            if lengths.any(|other| other != first) {
                return Err(ProxyError::InvalidRequest);
            }
            let length: u64 = first
                .to_str()
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(ProxyError::InvalidRequest)?;
            if length > self.config.max_body_bytes {
                return Err(ProxyError::BodyTooLarge);
            }
        }

        let uri = match &self.config.upstream {
            None => target.as_str().parse::<Uri>(),
            Some(origin) => {
                format!("{origin}/{}{}", target.host(), target.path_and_query()).parse()
            }
        }
        .map_err(|_| ProxyError::InvalidTargetUrl)?;
        Ok(Checked::Forward(uri, key.authorization().clone()))
    }

    /// Phase 3: maps the upstream response for the browser. The body is
    /// moved through untouched; `content-length` and `content-encoding` stay,
    /// and a target that re-frames or decodes the body drops them.
    pub fn response_filter<B>(
        &self,
        exchange: &Exchange,
        mut response: Response<B>,
    ) -> Response<B> {
        filter_response_headers(response.headers_mut());
        self.cors_headers(exchange, response.headers_mut());
        response
    }

    /// CORS headers for an allowed origin (never set for a refused one);
    /// with CORS on, `vary: origin` on every answer, so a shared cache never
    /// serves one origin's answer to another.
    fn cors_headers(&self, exchange: &Exchange, headers: &mut http::HeaderMap) {
        match &exchange.cors_origin {
            Some(origin) => Cors::decorate(origin, headers),
            _ if self.config.cors.is_some() => {
                headers.append(header::VARY, HeaderValue::from_static("origin"));
            }
            _ => {}
        }
    }

    /// An error as the browser sees it: fal's JSON error shape, with CORS
    /// headers when the origin is allowed, so the page can read it.
    pub fn error_response(&self, exchange: &Exchange, error: ProxyError) -> Response<Bytes> {
        let mut response = error.to_response();
        self.cors_headers(exchange, response.headers_mut());
        response
    }
}

/// The outcome of a request's checks.
enum Checked {
    /// Send it upstream to this URI with this `Authorization`.
    Forward(Uri, HeaderValue),
    /// A CORS preflight, answered by the proxy.
    Preflight,
    /// The proxy's self-description ([`info::INFO_PATH`]), answered by the proxy.
    Info,
}

/// Whether the request's `Host` (its name, without the port or an IPv6
/// literal's brackets) is listed.
fn host_is_allowed(headers: &http::HeaderMap, hosts: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:3000`.
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    hosts
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests;

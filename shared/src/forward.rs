//! The proxy's phases, and the seam to a target's HTTP client.

use crate::auth::{self, Bearer, Identity, KeySetSource};
use crate::config::Config;
use crate::cors::Cors;
use crate::error::{Cause, ProxyError, UpstreamError};
use crate::headers::{filter_response_headers, upstream_request_headers};
use crate::host;
use crate::info;
use crate::key;
use crate::limits::{self, Charge, CounterStore, Failure, RateNote};
use crate::log::{Hint, Level, LogFormat, LogLine, untrusted};
use crate::redirect;
use crate::target::Target;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

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

/// What the platform knows of a request beyond its HTTP head. A target
/// puts one in each request's extensions; the core has no clock of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestContext {
    /// When the request arrived, by the platform's wall clock.
    pub received_at: SystemTime,
    /// The client's address as the platform reports it, when it does.
    pub client_ip: Option<IpAddr>,
}

impl RequestContext {
    /// A request that arrived at `received_at` from `client_ip`.
    pub fn new(received_at: SystemTime, client_ip: Option<IpAddr>) -> Self {
        Self {
            received_at,
            client_ip,
        }
    }

    fn unix_secs(&self) -> u64 {
        self.received_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }
}

/// What one request was, for the target's log line and the response phase.
/// Holds no key, no token and no header value other than the allowed CORS
/// origin and, sanitised for the log, a refused `Origin` or `Host`.
#[derive(Debug, Clone)]
pub struct Exchange {
    method: Method,
    /// The target URL, query included (the log shows its host and path; a
    /// redirect resolves against all of it).
    target: Option<Target>,
    cors_origin: Option<HeaderValue>,
    error: Option<ProxyError>,
    /// Why the upstream was unreachable.
    cause: Option<Cause>,
    /// A refused request's `Origin` (or a CORS-off preflight's), sanitised.
    origin: Option<String>,
    /// A refused request's `Host`, sanitised.
    host: Option<String>,
    hint: Option<Hint>,
    log_format: LogFormat,
    context: Option<RequestContext>,
    /// The bearer token, between the request phase and authentication.
    bearer: Option<Bearer>,
    identity: Option<Identity>,
    /// A counted request's rate-limit headers.
    rate: Option<RateNote>,
    /// The rate store could not answer (the request failed open or closed).
    store_down: bool,
}

impl Exchange {
    fn new(method: Method, log_format: LogFormat) -> Self {
        Self {
            method,
            target: None,
            cors_origin: None,
            error: None,
            cause: None,
            origin: None,
            host: None,
            hint: None,
            log_format,
            context: None,
            bearer: None,
            identity: None,
            rate: None,
            store_down: false,
        }
    }

    /// The verified app user, when authentication is on and passed.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self::new(Method::GET, LogFormat::Text)
    }

    /// The error the proxy answered with, if it answered by itself.
    pub fn error(&self) -> Option<ProxyError> {
        self.error
    }

    /// Why the upstream was unreachable, when it was.
    pub fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// What a developer should be told about this request, if anything
    /// (a target writes it through its [`Hints`](crate::Hints)).
    pub fn hint(&self) -> Option<&Hint> {
        self.hint.as_ref()
    }

    /// The format the configuration asks log lines to be written in.
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The fields of a finished request's log line: method, target host and
    /// path (no query), status, duration, body bytes sent back, then, when
    /// there are, the error, the unreachable upstream's cause, and the
    /// refused origin or host. Never a key or a query.
    pub fn log_record(&self, status: StatusCode, duration: Duration, bytes: u64) -> LogLine {
        let target = match &self.target {
            Some(target) => {
                let (host, path) = (target.host(), target.path());
                let mut text = String::with_capacity(host.len() + path.len());
                text.push_str(host);
                text.push_str(path);
                text
            }
            None => "-".to_owned(),
        };
        let mut line = LogLine::fields(Level::Info)
            .text("method", self.method.as_str())
            .text("target", target);
        if let Some(identity) = &self.identity {
            line = line.text("user", identity.tag());
        }
        line = line
            .number("status", u64::from(status.as_u16()))
            .number(
                "duration_ms",
                u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            )
            .number("bytes", bytes);
        if let Some(error) = self.error {
            line = line.text("error", error.error_type());
        }
        if let Some(cause) = self.cause {
            line = line.text("cause", cause.to_string());
        }
        if let Some(origin) = &self.origin {
            line = line.text("origin", origin.as_str());
        }
        if let Some(host) = &self.host {
            line = line.text("host", host.as_str());
        }
        if self.store_down {
            line = line.text("rate_store", "unavailable");
        }
        line
    }

    /// [`Exchange::log_record`] written in the configured format: the line a
    /// target prints as it is.
    pub fn log_line(&self, status: StatusCode, duration: Duration, bytes: u64) -> String {
        self.log_record(status, duration, bytes)
            .render(self.log_format)
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

    /// Runs every phase: the request filter, authentication, the upstream
    /// exchange, the response filter. Never fails: every error becomes a
    /// response. The [`Exchange`] is in the response's extensions for the
    /// target's log, and the [`RequestContext`] is read from the request's.
    /// `upstream` also fetches the auth provider's key set; `store` keeps the
    /// rate-limit counters (unused without a limit).
    pub async fn forward<B, U, S>(
        &self,
        upstream: &U,
        store: &S,
        request: Request<B>,
    ) -> Response<ProxyBody<U::Body>>
    where
        U: Upstream<B> + KeySetSource,
        S: CounterStore,
    {
        let context = request.extensions().get::<RequestContext>().copied();
        let (mut response, exchange) = self.exchange(upstream, store, request, context).await;
        response.extensions_mut().insert(exchange);
        response
    }

    /// [`Proxy::forward`] with the context passed and the [`Exchange`]
    /// returned beside the response, not in extensions (which cost the
    /// native server a few allocations per request).
    pub async fn exchange<B, U, S>(
        &self,
        upstream: &U,
        store: &S,
        request: Request<B>,
        context: Option<RequestContext>,
    ) -> (Response<ProxyBody<U::Body>>, Exchange)
    where
        U: Upstream<B> + KeySetSource,
        S: CounterStore,
    {
        match self.request_filter_in(request, context) {
            Decision::Respond(response, exchange) => (response.map(ProxyBody::Full), exchange),
            Decision::Forward(request, mut exchange) => {
                let checked = match self.authenticate(upstream, &mut exchange).await {
                    Ok(()) => self.limit(store, &mut exchange).await,
                    Err(error) => Err(error),
                };
                match checked {
                    Ok(()) => self.send(upstream, request, exchange).await,
                    Err(error) => {
                        exchange.error = Some(error);
                        let response = self.error_response(&exchange, error);
                        (response.map(ProxyBody::Full), exchange)
                    }
                }
            }
        }
    }

    /// Sends a decided request and maps the outcome.
    async fn send<B, U>(
        &self,
        upstream: &U,
        request: Request<B>,
        mut exchange: Exchange,
    ) -> (Response<ProxyBody<U::Body>>, Exchange)
    where
        U: Upstream<B>,
    {
        match upstream.send(request).await {
            Ok(response) => match self.response_filter(&exchange, response) {
                Ok(response) => (response.map(ProxyBody::Upstream), exchange),
                Err(error) => {
                    exchange.error = Some(error);
                    (
                        self.error_response(&exchange, error).map(ProxyBody::Full),
                        exchange,
                    )
                }
            },
            Err(error) => {
                exchange.cause = error.cause();
                let error = ProxyError::from(error);
                exchange.error = Some(error);
                (
                    self.error_response(&exchange, error).map(ProxyBody::Full),
                    exchange,
                )
            }
        }
    }

    /// Phase 2, when app-user authentication is on: verifies the bearer
    /// token the request phase took, fetching the provider's key set
    /// through `keys` when needed, and records the user in the exchange.
    /// A `Forward` decision must pass this before it is sent.
    pub async fn authenticate<S: KeySetSource>(
        &self,
        keys: &S,
        exchange: &mut Exchange,
    ) -> Result<(), ProxyError> {
        let Some(auth) = &self.config.auth else {
            return Ok(());
        };
        let bearer = exchange.bearer.take().ok_or(ProxyError::Unauthenticated)?;
        let now = exchange
            .context
            .as_ref()
            .ok_or(ProxyError::Internal)?
            .unix_secs();
        exchange.identity = Some(auth.authenticate(&bearer, now, keys).await?);
        Ok(())
    }

    /// Phase 3, when a rate limit is set: charges a counted request's cost
    /// to its identity through `store` (one atomic hit), or refuses it with
    /// [`ProxyError::RateLimited`]. Polls of submitted requests pass
    /// uncounted. Runs after [`Proxy::authenticate`], whose user it counts.
    pub async fn limit<S: CounterStore>(
        &self,
        store: &S,
        exchange: &mut Exchange,
    ) -> Result<(), ProxyError> {
        let Some(limits) = &self.config.limits else {
            return Ok(());
        };
        let target = exchange.target.as_ref().ok_or(ProxyError::Internal)?;
        let cost = match limits.charge(&exchange.method, target.host(), target.path()) {
            Charge::Free => return Ok(()),
            Charge::Cost(0) => return Ok(()),
            Charge::Cost(cost) => cost,
        };
        let context = exchange.context.as_ref().ok_or(ProxyError::Internal)?;
        let identity = limits::identity_key(exchange.identity.as_ref(), context.client_ip);
        let hit = limits.hit(&identity, cost, context.unix_secs());
        match store.hit(&hit).await {
            Ok(counted) => {
                let note = limits.note(&hit, &counted);
                let refused = note.refused();
                exchange.rate = Some(note);
                if refused {
                    Err(ProxyError::RateLimited)
                } else {
                    Ok(())
                }
            }
            Err(_) => {
                exchange.store_down = true;
                match limits.failure() {
                    Failure::Open => Ok(()),
                    Failure::Closed => Err(ProxyError::RateStoreUnavailable),
                }
            }
        }
    }

    /// Phase 1: validates the browser's request and builds the upstream one,
    /// or decides the answer. Nothing is sent upstream for a `Respond`.
    pub fn request_filter<B>(&self, request: Request<B>) -> Decision<B> {
        let context = request.extensions().get::<RequestContext>().copied();
        self.request_filter_in(request, context)
    }

    fn request_filter_in<B>(
        &self,
        request: Request<B>,
        context: Option<RequestContext>,
    ) -> Decision<B> {
        let mut exchange = Exchange::new(request.method().clone(), self.config.log_format);
        exchange.context = context;
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
                self.note_preflight(request.headers(), &mut exchange);
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
                self.note_refusal(request.headers(), &mut exchange);
                let response = self.error_response(&exchange, error);
                Decision::Respond(response, exchange)
            }
        }
    }

    /// A cross-origin preflight while CORS is off: the browser will block
    /// the page, so the log names the origin and the setting to add.
    fn note_preflight(&self, headers: &http::HeaderMap, exchange: &mut Exchange) {
        if self.config.cors.is_some() {
            return;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return;
        };
        if origin
            .to_str()
            .is_ok_and(|text| crate::cors::is_same_origin(text, headers, None))
        {
            return;
        }
        let origin = untrusted(origin.as_bytes());
        exchange.hint = Some(Hint::CorsOff {
            origin: origin.clone(),
        });
        exchange.origin = Some(origin);
    }

    /// A refused origin or host is named in the log line (sanitised: both
    /// headers are the caller's to forge).
    fn note_refusal(&self, headers: &http::HeaderMap, exchange: &mut Exchange) {
        match exchange.error {
            Some(ProxyError::OriginNotAllowed) => {
                let origin = headers
                    .get(header::ORIGIN)
                    .map(|origin| untrusted(origin.as_bytes()));
                if let Some(origin) = &origin {
                    let loopback_alias = self
                        .config
                        .cors
                        .as_ref()
                        .and_then(|cors| cors.loopback_alias(origin));
                    exchange.hint = Some(Hint::OriginRefused {
                        origin: origin.clone(),
                        loopback_alias,
                    });
                }
                exchange.origin = origin;
            }
            Some(ProxyError::HostNotAllowed) => {
                exchange.host = headers
                    .get(header::HOST)
                    .map(|host| untrusted(host.as_bytes()));
            }
            _ => {}
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
            && !host::is_allowed(request.headers(), hosts)
        {
            return Err(ProxyError::HostNotAllowed);
        }
        if let Some(cors) = &self.config.cors {
            exchange.cors_origin = cors.check(request.headers(), request.uri().scheme_str())?;
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
        if self.config.auth.is_some() {
            exchange.bearer = Some(auth::bearer(request.headers())?);
        }

        let target = &*exchange
            .target
            .insert(Target::from_headers(request.headers())?);
        self.config.allow_urls.check(target)?;
        if let Some(endpoints) = &self.config.allow_endpoints {
            endpoints.check(request.method(), target)?;
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
            None => Uri::try_from(target.as_str()),
            Some(origin) => {
                // Pieces pushed, not `format!`: this runs on every request.
                let (host, rest) = (target.host(), target.path_and_query());
                let mut url = String::with_capacity(origin.len() + 1 + host.len() + rest.len());
                url.push_str(origin);
                url.push('/');
                url.push_str(host);
                url.push_str(rest);
                Uri::try_from(url)
            }
        }
        .map_err(|_| ProxyError::InvalidTargetUrl)?;
        Ok(Checked::Forward(uri, key.authorization().clone()))
    }

    /// Phase 3: maps the upstream response for the browser. The body is
    /// moved through untouched; `content-length` and `content-encoding` stay,
    /// and a target that re-frames or decodes the body drops them. A
    /// redirect whose `Location` is not itself an allowed target is refused
    /// ([`ProxyError::UpstreamRedirect`]): the browser would follow it with
    /// the same headers.
    pub fn response_filter<B>(
        &self,
        exchange: &Exchange,
        mut response: Response<B>,
    ) -> Result<Response<B>, ProxyError> {
        redirect::check(
            &self.config,
            &exchange.method,
            exchange.target.as_ref().map(Target::as_str),
            response.status(),
            response.headers(),
        )?;
        filter_response_headers(response.headers_mut());
        if let Some(rate) = &exchange.rate {
            rate.decorate(response.headers_mut());
        }
        self.cors_headers(exchange, response.headers_mut());
        Ok(response)
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
        let mut response = match (&exchange.rate, error) {
            (Some(rate), ProxyError::RateLimited) => rate.refusal(),
            _ => error.to_response(),
        };
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

#[cfg(test)]
mod tests;

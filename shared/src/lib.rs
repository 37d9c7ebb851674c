//! The forwarding core of fal-proxy.
//!
//! A browser app configured with `fal.config({ proxyUrl: "/api/fal/proxy" })`
//! sends every fal request to the proxy with the real fal URL in the
//! `x-fal-target-url` header. This crate decides everything about such a
//! request, identically for every deploy target (native server, Vercel,
//! AWS Lambda, Cloudflare Workers):
//!
//! 1. [`Proxy::request_filter`] validates the incoming request (route,
//!    origin, method, target URL, endpoint, key, body size) and either
//!    builds the upstream request or answers by itself;
//! 2. the target sends the upstream request with its own HTTP client, an
//!    [`Upstream`];
//! 3. [`Proxy::response_filter`] maps the upstream response for the browser,
//!    or [`Proxy::error_response`] turns a failed exchange into fal's JSON
//!    error shape.
//!
//! [`Proxy::forward`] runs the three phases and never fails: every error
//! becomes a response. The request phase also answers [`INFO_PATH`], the key
//! mode a page on the same site (the playground) reads before it asks for a key.
//!
//! What is logged is decided here too, the same for every target: each
//! request's [`Exchange`] renders its one line ([`LogLine`], `key=value`
//! text or JSON per [`LogFormat`]), naming a refused origin and an
//! unreachable upstream's [`Cause`], and carries a [`Hint`] for a developer
//! (a page blocked by CORS), which a target writes through the [`Hints`] it
//! owns, once per origin.
//!
//! This crate performs no I/O whatsoever: it reads no environment (settings
//! come through [`Config::from_lookup`]), opens no socket, starts no timer,
//! and never collects a body. Bodies are generic and moved through untouched,
//! so a Server-Sent-Events stream stays a stream on every target. Nothing it
//! returns, logs or panics with contains a key. With the `reqwest` feature it
//! also provides [`ReqwestUpstream`], the upstream of the native targets.
//!
//! ```
//! use bytes::Bytes;
//! use fal_proxy_core::{
//!     Config, KeySetDocument, KeySetError, KeySetSource, MemoryStore, Proxy, ProxyBody, Upstream,
//!     UpstreamError,
//! };
//! use http::{Request, Response};
//!
//! /// An in-memory fal that answers every request with its own URL.
//! struct EchoFal;
//!
//! impl Upstream<Bytes> for EchoFal {
//!     type Body = Bytes;
//!     async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, UpstreamError> {
//!         assert_eq!(request.headers()["authorization"], "Key id:secret");
//!         Ok(Response::new(Bytes::from(request.uri().to_string())))
//!     }
//! }
//!
//! /// No app-user authentication here, so no key set is ever fetched.
//! impl KeySetSource for EchoFal {
//!     async fn fetch_key_set(&self, _url: &str) -> Result<KeySetDocument, KeySetError> {
//!         Err(KeySetError::Unreachable)
//!     }
//! }
//!
//! let config = Config::from_lookup(|name| (name == "FAL_KEY").then(|| "id:secret".to_owned()))?;
//! let proxy = Proxy::new(config, "doctest");
//! // Rate-limit counters (none are kept: no FAL_PROXY_RATE_LIMIT here).
//! let store = MemoryStore::new();
//! let request = Request::post("/api/fal/proxy")
//!     .header("x-fal-target-url", "https://fal.run/fal-ai/flux/dev")
//!     .body(Bytes::from_static(b"{}"))?;
//! let response = futures_lite_block_on(proxy.forward(&EchoFal, &store, request));
//! assert_eq!(response.status(), 200);
//! match response.into_body() {
//!     ProxyBody::Upstream(body) => assert_eq!(body, "https://fal.run/fal-ai/flux/dev"),
//!     ProxyBody::Full(_) => unreachable!("forwarded"),
//! }
//!
//! let refused = Request::post("/api/fal/proxy")
//!     .header("x-fal-target-url", "https://fal.run.evil.example/steal")
//!     .body(Bytes::new())?;
//! let response = futures_lite_block_on(proxy.forward(&EchoFal, &store, refused));
//! assert_eq!(response.status(), 403);
//! # fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod auth;
mod config;
mod cors;
mod egress;
mod error;
mod forward;
mod function;
mod headers;
mod host;
mod info;
mod key;
mod limits;
mod log;
mod pattern;
mod progress;
mod redirect;
mod target;

#[cfg(feature = "http-body")]
mod body;
#[cfg(feature = "reqwest")]
mod drain;
#[cfg(feature = "reqwest")]
mod h1;
#[cfg(all(test, feature = "reqwest"))]
mod h1_random_tests;
#[cfg(feature = "reqwest")]
mod pool;
#[cfg(all(test, feature = "reqwest"))]
mod pool_review_tests;
#[cfg(all(test, feature = "reqwest"))]
mod pool_wire_tests;
#[cfg(test)]
mod test_support;
#[cfg(feature = "reqwest")]
mod upstream_reqwest;

/// The fuzz targets' way to what is not public otherwise (`fuzz/`). Not an
/// API: hidden from the docs, no stability promised, unused by the targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::auth::authenticate_token;

    /// `Target::parse` without its fast path, to check the fast path against.
    pub fn target_without_fast_path(raw: &[u8]) -> Result<crate::Target, crate::ProxyError> {
        crate::Target::parse_without_fast_path(raw)
    }
}

pub use auth::{
    Identity, KEY_SET_TIMEOUT, KeySetDocument, KeySetError, KeySetSource, MAX_KEY_SET_BYTES,
};
pub use config::{Config, ConfigError, DEFAULT_MAX_BODY_BYTES, DEFAULT_TIMEOUT, vars};
pub use egress::EgressProxy;
pub use error::{Cause, ProxyError, UpstreamError};
pub use forward::{Decision, Exchange, PROXY_PATH, Proxy, ProxyBody, RequestContext, Upstream};
pub use function::Function;
pub use headers::CLIENT_PROXY_HEADER;
pub use info::INFO_PATH;
pub use key::{KeyMode, USER_KEY_HEADER};
#[cfg(feature = "reqwest")]
pub use limits::ReqwestPost;
pub use limits::{
    Counted, CounterStore, Counters, Failure, Hit, Limits, MAX_ANSWER_BYTES, MemoryStore, PostJson,
    REDIS_SCRIPT, STORE_TIMEOUT, StoreError, StoreKind, UpstashStore, Window, forwarded_client_ip,
};
#[cfg(feature = "redis")]
pub use limits::{NativeStore, RedisStore};
pub use log::{Hint, Hints, Level, LogFormat, LogLine};
pub use progress::DEFAULT_BODY_IDLE_TIMEOUT;
pub use target::{TARGET_URL_HEADER, Target};

#[cfg(feature = "http-body")]
pub use body::{BoxError, LoggedBody, is_body_limit_error, limit_body};
#[cfg(feature = "reqwest")]
pub use drain::DrainOnDrop;
/// The body of a response from [`ReqwestUpstream`].
#[cfg(feature = "reqwest")]
pub use reqwest::Body as ReqwestBody;
#[cfg(feature = "reqwest")]
pub use upstream_reqwest::ReqwestUpstream;

//! The function-URL request as the core wants it, given `lambda_http`'s
//! translation of the event: the client address and the arrival time in a
//! [`RequestContext`], and the body's length stated.
//!
//! Its own file, with no dependency beyond `lambda_http`, `http` and the
//! core, so that the fuzz crate (`fuzz/`, target `lambda`) compiles this
//! very file, without the binary's HTTP client and runtime.

use fal_proxy_core::RequestContext;
use http::Request;
use http::header::{CONTENT_LENGTH, HeaderValue};
use lambda_http::request::RequestContext as EventContext;
use lambda_http::{Body, RequestExt};
use std::net::IpAddr;
use std::time::SystemTime;

/// `request`, received at `received_at`, ready for the core.
pub fn prepare(request: Request<Body>, received_at: SystemTime) -> Request<Body> {
    let client_ip = source_ip(&request);
    let mut request = with_known_length(request);
    request
        .extensions_mut()
        .insert(RequestContext::new(received_at, client_ip));
    request
}

/// The client's address as the function URL reports it
/// (`requestContext.http.sourceIp`): the peer of AWS's front end, which no
/// header the client sends can change.
fn source_ip(request: &Request<Body>) -> Option<IpAddr> {
    match request.request_context_ref()? {
        EventContext::ApiGatewayV2(context) => context.http.source_ip.as_deref()?.parse().ok(),
        _ => None,
    }
}

/// Lambda hands over the whole body, already decoded, so its length is a
/// fact even when the browser sent it chunked: stating it lets the core
/// refuse an oversized body before anything goes upstream.
fn with_known_length(mut request: Request<Body>) -> Request<Body> {
    if !request.body().is_empty() {
        let length = HeaderValue::from(request.body().len());
        request.headers_mut().insert(CONTENT_LENGTH, length);
    }
    request
}

//! fal-proxy as an AWS Lambda function behind a function URL.
//!
//! Deployed with `sam deploy` (`template.yaml`: runtime `provided.al2023`,
//! the function URL in `RESPONSE_STREAM` mode; see the README). Each
//! invocation is one browser request, and this binary only translates it:
//! `lambda_http` turns the function-URL event into an `http::Request` (a
//! base64 body decoded), the core decides and forwards it with reqwest, and
//! the answer streams back through the Runtime API as it arrives, so
//! Server-Sent Events reach the browser event by event.
//!
//! Configuration is parsed once, at cold start, and one HTTP client serves
//! every invocation the execution environment handles. A bad setting does
//! not crash-loop the function: it is logged once, and every request gets a
//! JSON 500 (`error_type: "invalid_configuration"`) naming the variable,
//! never its value. The handler never returns an `Err`, which Lambda would
//! turn into a bare 502. It logs one line per request and never a key.

// The handler's future nests the core's phases and the Redis client's.
#![recursion_limit = "256"]

mod translate;

use fal_proxy_core::{
    Function, Hints, KeySetSource, LoggedBody, NativeStore, ReqwestUpstream, Upstream,
};
use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use lambda_http::{Body, service_fn};
use std::convert::Infallible;
use std::fmt::Display;
use std::time::{Instant, SystemTime};

/// The largest request body the function accepts, in bytes.
///
/// Lambda takes at most 6 MiB (6,291,456 bytes) of event per invocation, and
/// a function URL puts a binary body in the event base64-encoded: 4.5 MB
/// becomes 6,000,000 bytes, leaving about 290 KB for headers and the rest of
/// the event. A larger body the function gets to see is refused with the
/// proxy's 413; one over Lambda's own limit never reaches the function.
pub const MAX_BODY_BYTES: u64 = 4_500_000;

/// Hints already written by this execution environment (once per origin,
/// rate-limited).
static HINTS: Hints = Hints::new();

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    let function = cold_start(|name| std::env::var(name).ok(), ReqwestUpstream::new);
    // One value for the life of the execution environment, shared by every
    // invocation.
    let function: &'static Function<ReqwestUpstream, NativeStore> = Box::leak(Box::new(function));
    lambda_http::run_with_streaming_response(service_fn(move |request| async move {
        Ok::<_, Infallible>(handle(function, request).await)
    }))
    .await
}

/// Parses the configuration and builds the upstream client and the rate
/// store, once; the outcome is logged, and a bad setting is answered on
/// every request.
fn cold_start<U, E: Display>(
    env: impl Fn(&str) -> Option<String>,
    client: impl FnOnce(&fal_proxy_core::Config) -> Result<U, E>,
) -> Function<U, NativeStore> {
    Function::start(
        env,
        "lambda",
        MAX_BODY_BYTES,
        client,
        NativeStore::new,
        |line| {
            eprintln!("{line}");
        },
    )
}

/// Answers one function-URL request. Never fails.
async fn handle<U>(
    function: &Function<U, NativeStore>,
    request: Request<Body>,
) -> Response<LoggedBody<U::Body>>
where
    U: Upstream<Body> + KeySetSource,
{
    let started = Instant::now();
    let request = translate::prepare(request, SystemTime::now());
    let response = function.handle(request).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if let Some(hint) = HINTS.line(&response, now) {
        eprintln!("{hint}");
    }
    // lambda_runtime 1.5 would write an upstream body error's text (which
    // names the upstream URL) into the body: end the stream there instead.
    let mut response = LoggedBody::wrap(response, started, |line| eprintln!("{line}"))
        .map(LoggedBody::ending_on_error);
    // The body is re-framed on its way through the Runtime API.
    response.headers_mut().remove(CONTENT_LENGTH);
    response
}

#[cfg(test)]
mod tests;

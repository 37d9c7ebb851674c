//! fal-proxy as a Vercel Rust function.
//!
//! Vercel builds this file (the root package's `[[bin]]`) with its Rust
//! builder and runs it under `vercel_runtime`, which serves HTTP/1.1 on
//! 127.0.0.1:`$VERCEL_DEV_PORT` and reports to the platform over the Unix
//! socket at `$VERCEL_IPC_PATH`. `vercel.json` sends `/api/fal/proxy` and
//! every path below it here; the core decides everything else.
//!
//! Settings are the project's environment variables (see the README), parsed
//! once per process. The body limit is lowered to Vercel's 4.5 MB request
//! limit, and the wait for fal's response head defaults to 290 s, under the
//! function's `maxDuration` of 300 s. A bad setting does not crash-loop the
//! function: it is logged once, and every request is answered with a JSON
//! 500 `invalid_configuration` naming the variable, never its value.
//!
//! Rate limits count per user, or per client address as Vercel reports it
//! in `x-forwarded-for`; with `FAL_PROXY_RATE_STORE=memory` each instance
//! counts alone (the start-up log says so).
//!
//! One reqwest client serves every request. Response bodies stream through
//! untouched, so Server-Sent Events arrive event by event. Each request logs
//! one line (method, target host and path, status, duration, bytes) and never
//! a key. The handler never returns an error, so Vercel never answers with
//! its bare 500.

// The handler's future nests the core's phases and the Redis client's.
#![recursion_limit = "256"]

use fal_proxy_core::{
    DrainOnDrop, Function, Hints, LoggedBody, NativeStore, RequestContext, ReqwestUpstream,
    forwarded_client_ip, vars,
};
use http::Response;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::oneshot;
use vercel_runtime::{AppState, Request, ResponseBody};

/// Vercel's limit on a function's request body.
const VERCEL_MAX_BODY_BYTES: u64 = 4_500_000;

/// The default wait for fal's response head: under `maxDuration` (300 s in
/// vercel.json), so a slow fal gets the proxy's JSON 504, not Vercel's own.
const DEFAULT_TIMEOUT_SECS: &str = "290";

/// Hints already written by this instance (once per origin, rate-limited).
static HINTS: Hints = Hints::new();

#[tokio::main]
async fn main() -> Result<(), vercel_runtime::Error> {
    let lookup = |name: &str| {
        let value = std::env::var(name).ok();
        if name == vars::TIMEOUT_SECS && value.as_deref().is_none_or(|v| v.trim().is_empty()) {
            return Some(DEFAULT_TIMEOUT_SECS.to_owned());
        }
        value
    };
    let function = Function::start(
        lookup,
        "vercel",
        VERCEL_MAX_BODY_BYTES,
        ReqwestUpstream::new,
        NativeStore::new,
        |line| eprintln!("{line}"),
    );
    let function = Arc::new(function);
    vercel_runtime::run(vercel_runtime::service_fn(
        move |request: Request, state: AppState| {
            let function = Arc::clone(&function);
            async move { handle(&function, request, &state).await }
        },
    ))
    .await
}

/// Answers one request. Never fails.
async fn handle(
    function: &Function<ReqwestUpstream, NativeStore>,
    request: Request,
    state: &AppState,
) -> Response<ResponseBody> {
    let started = Instant::now();
    // A refused request's unread body is read out, so the answer is not lost to a reset.
    // Vercel's edge overwrites `x-forwarded-for` with the client's address
    // (a client's own value never reaches the function).
    let client_ip = forwarded_client_ip(request.headers(), "x-forwarded-for");
    let mut request = request.map(DrainOnDrop::new);
    request
        .extensions_mut()
        .insert(RequestContext::new(SystemTime::now(), client_ip));
    let response = function.handle(request).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if let Some(hint) = HINTS.line(&response, now) {
        state.log_context.warn(&hint);
    }
    // The log line goes to the runtime's log for this request, and the
    // request stays open (`wait_until`) until the body has ended, so the
    // runtime reports it finished only after a stream's last byte.
    let (sender, receiver) = oneshot::channel::<String>();
    let context = state.log_context.clone();
    state.wait_until(async move {
        if let Ok(line) = receiver.await {
            context.info(&line);
        }
    });
    LoggedBody::wrap(response, started, move |line| {
        let _ = sender.send(line);
    })
    .map(|body| ResponseBody(body.boxed()))
}

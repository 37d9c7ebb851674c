//! fal-proxy as a Cloudflare Worker.
//!
//! Built for `wasm32-unknown-unknown` by `scripts/build-worker.sh`
//! (worker-build) and run by `wrangler dev` or `wrangler deploy` with the
//! top-level `wrangler.toml`. It serves `/api/fal/proxy` and every path below
//! it on whatever route the Worker is given.
//!
//! Each request reads the configuration from the Worker's `Env` (`FAL_KEY`
//! as a secret, the other settings as vars), lets the core decide, and sends
//! the upstream request with `worker::Fetch` ([`fetch::FetchUpstream`]).
//! Bodies stay the runtime's own `ReadableStream`s in both directions, so
//! uploads and Server-Sent Events stream through without passing through
//! Rust ([`translate`]).
//!
//! It never answers with an uncaught error or a panic: a bad configuration
//! is a JSON 500 naming the variable, every other failure is the core's JSON
//! error. It never logs or returns a key.

mod fetch;
mod translate;

use fal_proxy_core::{Config, ConfigError, Exchange, Proxy, ProxyBody, ProxyError};
use fetch::FetchUpstream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use worker::{Context, Env, console_error, console_log, console_warn, event, js_sys, web_sys};

/// Set once this isolate has logged its configuration summary.
static SUMMARY_LOGGED: AtomicBool = AtomicBool::new(false);

#[event(fetch)]
async fn main(
    request: web_sys::Request,
    env: Env,
    _ctx: Context,
) -> worker::Result<web_sys::Response> {
    // `Instant` does not exist on wasm32-unknown-unknown; the JS clock does.
    let started = js_sys::Date::now();
    let config = match Config::from_lookup(|name| lookup(&env, name)) {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    if !SUMMARY_LOGGED.swap(true, Ordering::Relaxed) {
        log_summary(&config);
    }
    let upstream = FetchUpstream::new(&config);
    let proxy = Proxy::new(config, "worker");

    let response = match translate::request_from_js(&request) {
        Some(request) => proxy.forward(&upstream, request).await,
        None => ProxyError::InvalidRequest
            .to_response()
            .map(ProxyBody::Full),
    };
    // A float-to-int `as` saturates (and maps NaN to 0): it cannot panic.
    let elapsed = Duration::from_millis((js_sys::Date::now() - started) as u64);
    if let Some(exchange) = response.extensions().get::<Exchange>() {
        let bytes = translate::known_length(&response);
        console_log!(
            "fal-proxy: {}",
            exchange.log_line(response.status(), elapsed, bytes)
        );
    }
    translate::response_to_js(response)
}

/// A setting from the Worker's environment: a secret (`wrangler secret put`)
/// or a var (`[vars]` in wrangler.toml, `.dev.vars` locally).
fn lookup(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .or_else(|_| env.var(name))
        .ok()
        .map(|value| value.to_string())
}

fn log_summary(config: &Config) {
    console_log!("fal-proxy: {}", config.summary());
    if let Some(warning) = config.upstream_warning() {
        console_warn!("{warning}");
    }
}

/// A bad setting: the core's JSON 500 naming the variable, never its value.
/// The full reason (which never holds a key) goes to the Worker's log.
fn config_error(error: &ConfigError) -> worker::Result<web_sys::Response> {
    console_error!("fal-proxy: {error}");
    translate::response_to_js(
        error
            .to_response()
            .map(ProxyBody::<translate::JsBody>::Full),
    )
}

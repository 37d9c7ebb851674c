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
//! error. It never logs or returns a key. Log lines are the core's, as text
//! or (`FAL_PROXY_LOG_FORMAT=json`) one JSON object per line, which Workers
//! Logs index. `FAL_PROXY_USE_ENV_PROXY` has no effect here: the runtime's
//! `fetch` has no proxy setting, and the summary says so.

mod fetch;
mod translate;

use fal_proxy_core::{
    Config, ConfigError, Exchange, Hints, Level, LogFormat, LogLine, Proxy, ProxyBody, ProxyError,
    vars,
};
use fetch::FetchUpstream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use worker::{Context, Env, console_error, console_log, console_warn, event, js_sys, web_sys};

/// Set once this isolate has logged its configuration summary.
static SUMMARY_LOGGED: AtomicBool = AtomicBool::new(false);

/// Hints already written by this isolate (once per origin, rate-limited).
static HINTS: Hints = Hints::new();

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
        Err(error) => {
            return config_error(&error, LogFormat::from_lookup(|name| lookup(&env, name)));
        }
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
    let now = js_sys::Date::now();
    let elapsed = Duration::from_millis((now - started) as u64);
    if let Some(hint) = HINTS.line(&response, Duration::from_millis(now as u64)) {
        console_warn!("{hint}");
    }
    if let Some(exchange) = response.extensions().get::<Exchange>() {
        let bytes = translate::known_length(&response);
        console_log!("{}", exchange.log_line(response.status(), elapsed, bytes));
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
    let format = config.log_format();
    let line = |level, message: String| LogLine::message(level, message).render(format);
    console_log!("{}", line(Level::Info, config.summary()));
    console_log!("{}", line(Level::Info, config.browser_summary(None, None)));
    if let Some(warning) = config.upstream_warning() {
        console_warn!("{}", warning.render(format));
    }
    if config.egress_proxy().is_some() {
        console_warn!(
            "{}",
            line(
                Level::Warn,
                format!(
                    "{} has no effect on Workers: fetch goes straight out",
                    vars::USE_ENV_PROXY
                )
            )
        );
    }
}

/// A bad setting: the core's JSON 500 naming the variable, never its value.
/// The full reason (which never holds a key) goes to the Worker's log.
fn config_error(error: &ConfigError, format: LogFormat) -> worker::Result<web_sys::Response> {
    console_error!(
        "{}",
        LogLine::message(Level::Error, error.to_string()).render(format)
    );
    translate::response_to_js(
        error
            .to_response()
            .map(ProxyBody::<translate::JsBody>::Full),
    )
}

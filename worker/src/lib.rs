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
//! Rate limits count per user, or per `CF-Connecting-IP`, in the store
//! `FAL_PROXY_RATE_STORE` names ([`limits`]): the [`limits::RateLimiter`]
//! Durable Object, Upstash's REST API, or this isolate's memory.
//!
//! It never answers with an uncaught error or a panic: a bad configuration
//! is a JSON 500 naming the variable, every other failure is the core's JSON
//! error. It never logs or returns a key. Log lines are the core's, as text
//! or (`FAL_PROXY_LOG_FORMAT=json`) one JSON object per line, which Workers
//! Logs index. `FAL_PROXY_USE_ENV_PROXY` has no effect here: the runtime's
//! `fetch` has no proxy setting, and the summary says so.

mod fetch;
mod limits;
mod translate;

use fal_proxy_core::{
    Config, ConfigError, Exchange, Hints, Level, LogFormat, LogLine, Proxy, ProxyBody, ProxyError,
    RequestContext, vars,
};
use fetch::FetchUpstream;
use limits::WorkerStore;
use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};
use worker::{Context, Env, console_error, console_log, console_warn, event, js_sys, web_sys};

/// The proxy this isolate built, and the settings it was built from.
struct Built {
    settings: Vec<Option<String>>,
    proxy: Proxy,
    upstream: FetchUpstream,
    store: WorkerStore,
}

thread_local! {
    /// Kept for the isolate's life (and its JWKS cache with it); built again
    /// only when a setting's value changes.
    static BUILT: RefCell<Option<Rc<Built>>> = const { RefCell::new(None) };
}

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
    let built = match built(&env) {
        Ok(built) => built,
        Err(error) => {
            return config_error(&error, LogFormat::from_lookup(|name| lookup(&env, name)));
        }
    };
    let (proxy, upstream) = (&built.proxy, &built.upstream);

    let response = match translate::request_from_js(&request) {
        Some(mut request) => {
            // A float-to-int `as` saturates (and maps NaN to 0): it cannot panic.
            let now = SystemTime::UNIX_EPOCH + Duration::from_millis(started as u64);
            let client_ip = request
                .headers()
                .get("cf-connecting-ip")
                .and_then(|ip| ip.to_str().ok())
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            request
                .extensions_mut()
                .insert(RequestContext::new(now, client_ip));
            proxy.forward(upstream, &built.store, request).await
        }
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

/// This isolate's proxy: the one built before while every setting has the
/// value it was built from, else a new one (its summary logged).
fn built(env: &Env) -> Result<Rc<Built>, ConfigError> {
    let settings: Vec<Option<String>> = vars::ALL.iter().map(|name| lookup(env, name)).collect();
    if let Some(built) = BUILT.with_borrow(|built| {
        built
            .as_ref()
            .filter(|built| built.settings == settings)
            .map(Rc::clone)
    }) {
        return Ok(built);
    }
    let config = Config::from_lookup(|name| lookup(env, name))?;
    let store = WorkerStore::new(&config, env)?;
    log_summary(&config);
    let built = Rc::new(Built {
        settings,
        store,
        upstream: FetchUpstream::new(&config),
        proxy: Proxy::new(config, "worker"),
    });
    BUILT.set(Some(Rc::clone(&built)));
    Ok(built)
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
    if config
        .limits()
        .is_some_and(|limits| *limits.store() == fal_proxy_core::StoreKind::Memory)
    {
        console_warn!(
            "{}",
            line(
                Level::Warn,
                "FAL_PROXY_RATE_STORE=memory: each Worker isolate counts alone; use durable-object (or Upstash's REST API) to share the counts".to_owned()
            )
        );
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
